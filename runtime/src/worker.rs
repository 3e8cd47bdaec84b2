//! The worker: the admin endpoint, the lag watcher and one processing loop
//! per core, each with its own consumer, transactional producer, share of
//! the tasks and [`Processor`]. The `millrace-runtime` binary runs the
//! pipeline evaluator in it; a custom image calls [`main`] with its own
//! processor and gets the same worker.
//!
//! Exit codes: 0 after SIGTERM/SIGINT (the open transactions committed), 2
//! for a configuration error (one line), 1 otherwise. A record that fails
//! under `onError: Stop` stops its task only (`/tasks` reports it); the
//! worker goes on.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::{Parser, Subcommand};
use millrace_crds::identity::{loop_id, MAX_LOOPS};
pub use millrace_crds::worker_config::WorkerConfig;
use millrace_crds::worker_config::{CONFIG_DIR, CONFIG_FILE};
use millrace_crds::ProcessingGuarantee;

use crate::engine::rate_limit::RateLimit;
use crate::engine::{clients, Engine, EngineError, Shared};
use crate::metrics::{Metrics, Status};
use crate::placement::watch::{PlacedTasks, PlacementView};
use crate::placement::{OrdinalZero, Share, Standalone, TaskSource};
use crate::processor::{Io, Processor};
use crate::state::{State, DEFAULT_MEMORY_MB};
use crate::{admin, lag, manifest};

/// How a worker binary turns its configuration into work: the topics it
/// reads and writes, and one processor per loop. An `Err` is a configuration
/// error (exit 2 with the message).
pub type Start<'a, P> = dyn Fn(&WorkerConfig, usize) -> Result<(Io, Vec<P>), String> + 'a;

/// The worker's subcommands, shared by `millrace-runtime` and custom images.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a StreamApp manifest on this machine, without Kubernetes (this
    /// worker owns every task).
    Run {
        #[arg(long)]
        manifest: PathBuf,
        /// Override spec.kafka.bootstrapServers.
        #[arg(long, env = "KAFKA_BOOTSTRAP")]
        bootstrap: Option<String>,
        /// Worker identity: the suffix of the transactional id.
        #[arg(long, default_value = "standalone")]
        worker_id: String,
        #[arg(long, default_value = "127.0.0.1:8080")]
        admin_addr: SocketAddr,
        /// Port of the query API, on the admin address's interface
        /// (default: spec.query.port, 8081).
        #[arg(long)]
        query_port: Option<u16>,
        /// Processing loops (default: one per core; at most 8).
        #[arg(long, env = "MILLRACE_LOOPS")]
        loops: Option<usize>,
        /// Where the state stores live, for an app with stateful steps
        /// (default: `millrace-state/<applicationId>` in the current
        /// directory). Kept across restarts: a restart replays only the
        /// changelog's tail.
        #[arg(long, env = "MILLRACE_STATE_DIR")]
        state_dir: Option<PathBuf>,
        /// Where `spec.kafka.tls`'s Secrets are, laid out as Kubernetes
        /// mounts them: key `k` of Secret `s` is the file `DIR/s/k`.
        #[arg(long, env = "MILLRACE_SECRETS_DIR")]
        secrets_dir: Option<PathBuf>,
    },
    /// Run as a worker pod of the operator.
    Worker {
        #[arg(long, env = "MILLRACE_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long, env = "MILLRACE_POD_NAME")]
        pod_name: String,
        #[arg(long, env = "MILLRACE_POD_NAMESPACE", default_value = "default")]
        pod_namespace: String,
        #[arg(long, env = "MILLRACE_POD_IP", default_value = "0.0.0.0")]
        pod_ip: String,
        /// Processing loops (default: one per core; at most 8).
        #[arg(long, env = "MILLRACE_LOOPS")]
        loops: Option<usize>,
    },
}

#[derive(Parser)]
#[command(about = "A Millrace worker with a custom processor")]
struct CustomCli {
    /// `worker` when absent: an image's entrypoint needs no arguments.
    #[command(subcommand)]
    command: Option<Command>,
}

/// The whole `main` of a custom image: parses the worker's command line
/// (`worker`, or nothing, in a pod; `run --manifest app.yaml` on a laptop),
/// reads the topics from the StreamApp's `spec.source`, `spec.outputs` and
/// `spec.onError`, and runs `make_processor` once per processing loop.
///
/// ```no_run
/// use millrace_runtime::processor::{InputRecord, Processed, Processor, RecordError};
///
/// struct Upper;
/// impl Processor for Upper {
///     fn process(&mut self, r: &InputRecord<'_>) -> Result<Processed, RecordError> {
///         Ok(Processed::default()) // drop everything
///     }
/// }
///
/// fn main() {
///     millrace_runtime::worker::main(|_config| Ok(Upper))
/// }
/// ```
pub fn main<P, F>(make_processor: F) -> !
where
    P: Processor,
    F: Fn(&WorkerConfig) -> Result<P, String>,
{
    let command = match CustomCli::parse().command {
        Some(command) => command,
        None => {
            let program = std::env::args().next().unwrap_or_default();
            let worker = CustomCli::parse_from([program.as_str(), "worker"]).command;
            worker.expect("the worker subcommand parses")
        }
    };
    let start = |config: &WorkerConfig, loops: usize| -> Result<(Io, Vec<P>), String> {
        let io = Io::of_custom(config)?;
        let processors = (0..loops)
            .map(|_| make_processor(config))
            .collect::<Result<_, _>>()?;
        Ok((io, processors))
    };
    std::process::exit(command.execute(&start))
}

impl Command {
    /// Runs the worker until it stops; returns the exit code.
    pub fn execute<P: Processor>(self, start: &Start<'_, P>) -> i32 {
        init_logs();
        match self {
            Command::Run {
                manifest: path,
                bootstrap,
                worker_id,
                admin_addr,
                query_port,
                loops,
                state_dir,
                secrets_dir,
            } => match manifest::load(&path).and_then(|app| {
                manifest::worker_config(
                    &app,
                    bootstrap.as_deref(),
                    admin_addr.port(),
                    secrets_dir.as_deref(),
                )
            }) {
                Ok(mut config) => serve(
                    Setup {
                        loops: loops.unwrap_or_else(default_loops),
                        config: {
                            let dir = state_dir.unwrap_or_else(|| {
                                PathBuf::from("millrace-state").join(&config.application_id)
                            });
                            config.state_dir = Some(dir.display().to_string());
                            if let (Some(query), Some(port)) = (&mut config.query, query_port) {
                                query.port = port;
                            }
                            config
                        },
                        worker_id,
                        admin_addr,
                        tasks: Tasks::Standalone,
                    },
                    start,
                ),
                Err(e) => config_error(e),
            },
            Command::Worker {
                config,
                pod_name,
                pod_namespace,
                pod_ip,
                loops,
            } => {
                let path = config.unwrap_or_else(|| PathBuf::from(CONFIG_DIR).join(CONFIG_FILE));
                let config = match read_config(&path) {
                    Ok(config) => config,
                    Err(e) => return config_error(e),
                };
                let admin_addr = match format!("{pod_ip}:{}", config.admin_port).parse() {
                    Ok(addr) => addr,
                    Err(e) => {
                        return config_error(anyhow::anyhow!("MILLRACE_POD_IP '{pod_ip}': {e}"))
                    }
                };
                let tasks = match config.placement_config_map.clone() {
                    Some(config_map) => Tasks::Placement {
                        namespace: pod_namespace,
                        config_map,
                    },
                    None => Tasks::OrdinalZero,
                };
                serve(
                    Setup {
                        loops: loops.unwrap_or_else(default_loops),
                        config,
                        worker_id: pod_name,
                        admin_addr,
                        tasks,
                    },
                    start,
                )
            }
        }
    }
}

fn init_logs() {
    // A second call (a test running two workers) keeps the first subscriber.
    let _ = tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .try_init();
}

/// Prints a configuration error on one line; its exit code.
fn listen(
    runtime: &tokio::runtime::Runtime,
    addr: SocketAddr,
    what: &str,
) -> anyhow::Result<tokio::net::TcpListener> {
    runtime
        .block_on(tokio::net::TcpListener::bind(addr))
        .map_err(|e| anyhow::anyhow!("binding the {what} port {addr}: {e}"))
}

pub fn config_error(e: anyhow::Error) -> i32 {
    eprintln!("millrace-runtime: {e:#}");
    2
}

fn read_config(path: &Path) -> anyhow::Result<WorkerConfig> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Default loops: one per core (Kafka Streams' one stream thread per
/// core). An exactly-once loop goes on processing while its batch commits
/// (`engine::closing`), so it needs no extra loop to keep the cores busy.
fn default_loops() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(MAX_LOOPS)
}

/// Fences the unused loop ids in the background, one thread each. The loops
/// need not wait: a partition whose offsets sit in such an old transaction
/// reads as unstable (require_stable) until the fence aborts it, and the
/// loops retry until then. Placed at-least-once loops commit their offsets
/// in transactions too (`engine::fence`).
fn fence_unused_loops(config: &WorkerConfig, worker_id: &str, loops: usize) -> anyhow::Result<()> {
    let transactional = config.processing_guarantee == ProcessingGuarantee::ExactlyOnce
        || config.placement_config_map.is_some();
    if !transactional {
        return Ok(());
    }
    use rdkafka::producer::{BaseProducer, Producer};
    for index in loops..MAX_LOOPS {
        let producer: BaseProducer =
            clients::offset_fence(config, &loop_id(worker_id, index))?.create()?;
        std::thread::spawn(move || {
            if let Err(e) = producer.init_transactions(std::time::Duration::from_secs(60)) {
                tracing::warn!("fencing an unused loop id: {e}");
            }
        });
    }
    Ok(())
}

/// Where a worker's tasks come from.
enum Tasks {
    Standalone,
    OrdinalZero,
    /// The operator's placement ConfigMap.
    Placement {
        namespace: String,
        config_map: String,
    },
}

struct Setup {
    loops: usize,
    config: WorkerConfig,
    worker_id: String,
    admin_addr: SocketAddr,
    tasks: Tasks,
}

/// Runs the admin endpoint and the processing loops (each with its own
/// consumer, transactional producer and share of the tasks, so one loop
/// processes while another commits) until SIGTERM/SIGINT or an error.
fn serve<P: Processor>(setup: Setup, start: &Start<'_, P>) -> i32 {
    let Setup {
        loops,
        mut config,
        worker_id,
        admin_addr,
        tasks,
    } = setup;
    let loops = loops.clamp(1, MAX_LOOPS);
    config.loops = loops;
    let (io, processors) = match start(&config, loops) {
        Ok(started) => started,
        Err(e) => return config_error(anyhow::anyhow!(e)),
    };
    // Tasks, placement acknowledgements and fencing are all per loop id:
    // one processor per loop, no more and no fewer.
    if processors.len() != loops {
        return config_error(anyhow::anyhow!(
            "{} processors for {loops} processing loops: start must return one per loop",
            processors.len()
        ));
    }
    let state = match open_state(&config, &io) {
        Ok(state) => state,
        Err(e) => return config_error(e),
    };
    let metrics = Arc::new(Metrics::default());
    let status = Arc::new(Status::default());
    status.detail.lock().unwrap().loops = loops as u32;
    let shutdown = Arc::new(AtomicBool::new(false));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    // Bound here, not in the spawned task: a port already taken ends the
    // worker with the port named, instead of a worker nobody can probe.
    let admin_listener = match listen(&runtime, admin_addr, "admin") {
        Ok(listener) => listener,
        Err(e) => return config_error(e),
    };
    {
        let (metrics, status, shutdown) = (metrics.clone(), status.clone(), shutdown.clone());
        runtime.spawn(async move {
            if let Err(e) = admin::serve(admin_listener, metrics, status).await {
                tracing::error!("{e:#}");
            }
        });
        runtime.spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("stopping: committing the open transactions");
            shutdown.store(true, Ordering::Relaxed);
        });
    }
    let view = match &tasks {
        Tasks::Placement {
            namespace,
            config_map,
        } => match runtime.block_on(kube::Client::try_default()) {
            Ok(client) => Some(PlacementView::start(
                kube::Api::namespaced(client, namespace),
                config_map,
                &worker_id,
                loops,
                status.clone(),
                shutdown.clone(),
                runtime.handle().clone(),
            )),
            Err(e) => {
                return config_error(anyhow::anyhow!("connecting to the Kubernetes API: {e}"))
            }
        },
        _ => None,
    };
    let source = |index: usize| -> Box<dyn TaskSource> {
        let inner: Box<dyn TaskSource> = match (&tasks, &view) {
            (Tasks::Placement { .. }, Some(view)) => {
                return Box::new(PlacedTasks::new(view.clone(), index, loops))
            }
            (Tasks::OrdinalZero, _) => Box::new(OrdinalZero::from_pod_name(&worker_id)),
            _ => Box::new(Standalone),
        };
        Box::new(Share::new(inner, index, loops))
    };
    match crate::brokers::wait_until_reachable(&config, &shutdown) {
        Ok(true) => {}
        Ok(false) => return 0,
        Err(e) => return config_error(anyhow::anyhow!("the Kafka client settings: {e}")),
    }
    if let Err(e) = fence_unused_loops(&config, &worker_id, loops) {
        return config_error(anyhow::anyhow!("fencing earlier processing loops: {e}"));
    }
    if let (Some(state), Some(settings)) = (&state, config.query.clone()) {
        let queries = Arc::new(crate::query::Queries::new(
            io.queryables.clone(),
            io.partitioner,
            state.store.clone(),
            status.clone(),
            view.clone(),
            worker_id.clone(),
            settings.clone(),
        ));
        let addr = SocketAddr::new(admin_addr.ip(), settings.port);
        let listener = match listen(&runtime, addr, "query") {
            Ok(listener) => listener,
            Err(e) => return config_error(e),
        };
        runtime.spawn(async move {
            if let Err(e) = crate::query::serve(listener, queries).await {
                tracing::error!("{e:#}");
            }
        });
    }
    if let (Some(state), Some(view)) = (&state, &view) {
        let view = view.clone();
        let standby = crate::state::standby::Standby {
            config: config.clone(),
            state: state.clone(),
            wanted: Box::new(move || view.standby_tasks()),
            status: status.clone(),
            shutdown: shutdown.clone(),
        };
        if let Err(e) = standby.spawn() {
            return config_error(anyhow::anyhow!("starting the standby thread: {e}"));
        }
    }
    if let Err(e) = lag::spawn(&config, metrics.clone(), status.clone(), shutdown.clone()) {
        return config_error(e);
    }
    let repartitions = io.repartition_names();
    if let Err(e) = crate::purge::spawn(&config, repartitions, status.clone(), shutdown.clone()) {
        return config_error(e);
    }
    let rate_limit = io
        .max_records_per_second
        .map(|n| Arc::new(RateLimit::new(n)));
    // The engines are blocking (librdkafka's poll loop): a thread each.
    let handles: Vec<_> = processors
        .into_iter()
        .enumerate()
        .map(|(index, processor)| {
            let (config, io) = (config.clone(), io.clone());
            let shared = Shared {
                metrics: metrics.clone(),
                status: status.clone(),
                shutdown: shutdown.clone(),
                state: state.clone(),
            };
            let id = loop_id(&worker_id, index);
            let limit = rate_limit.clone();
            let share = source(index);
            std::thread::spawn(move || {
                let shutdown = shared.shutdown.clone();
                // A panic (a custom processor's unwrap, say) is this loop's
                // error like any other: without this, the other loops would
                // go on while its tasks stalled, unacknowledged.
                let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    Engine::start(config, id, (io, processor), share, shared).and_then(|mut e| {
                        e.stagger(index, loops);
                        e.limit(limit);
                        e.run()
                    })
                }));
                let result =
                    run.unwrap_or_else(|panic| Err(EngineError::Panicked(panic_message(&*panic))));
                if result.is_err() {
                    // One loop failing stops the worker: the others commit and exit.
                    shutdown.store(true, Ordering::Relaxed);
                }
                result
            })
        })
        .collect();
    let mut code = 0;
    for handle in handles {
        let result = handle
            .join()
            .unwrap_or_else(|panic| Err(EngineError::Panicked(panic_message(&*panic))));
        let this = match result {
            Ok(()) => 0,
            Err(EngineError::Config(m)) => config_error(anyhow::anyhow!(m)),
            Err(e) => {
                eprintln!("millrace-runtime: {e}");
                1
            }
        };
        if code == 0 {
            code = this;
        }
    }
    code
}

/// The worker's state store, for an app with stateful steps: in its state
/// directory, sized by `MILLRACE_STATE_MEMORY_MB` (docs/state-store.md).
fn open_state(config: &WorkerConfig, io: &Io) -> anyhow::Result<Option<State>> {
    if io.stores.is_empty() {
        return Ok(None);
    }
    if config.processing_guarantee != ProcessingGuarantee::ExactlyOnce {
        anyhow::bail!(
            "spec.processingGuarantee: the stateful steps {:?} need ExactlyOnce",
            io.stores
        );
    }
    let Some(dir) = &config.state_dir else {
        anyhow::bail!(
            "spec.state: the stateful steps {:?} need a state volume, and the worker has none;              add `state: {{}}` to the StreamApp",
            io.stores
        );
    };
    let dir = Path::new(dir).join("stores");
    std::fs::create_dir_all(&dir)
        .map_err(|e| anyhow::anyhow!("creating the state directory {}: {e}", dir.display()))?;
    let memory_mb = match std::env::var("MILLRACE_STATE_MEMORY_MB") {
        Ok(v) => v.parse().map_err(|_| {
            anyhow::anyhow!("MILLRACE_STATE_MEMORY_MB: '{v}' is not a number of megabytes")
        })?,
        Err(_) => DEFAULT_MEMORY_MB,
    };
    tracing::info!(dir = %dir.display(), memory_mb, stores = ?io.stores, "opening the state stores");
    Ok(Some(State::open(
        &dir,
        &config.application_id,
        &io.stores,
        &io.store_tables,
        memory_mb,
    )?))
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processor::{InputRecord, Processed, RecordError};

    struct Drop;
    impl Processor for Drop {
        fn process(&mut self, _: &InputRecord<'_>) -> Result<Processed, RecordError> {
            Ok(Processed::default())
        }
    }

    fn run_with(start: &Start<'_, Drop>) -> i32 {
        let manifest =
            std::env::temp_dir().join(format!("worker-test-{}.yaml", std::process::id()));
        std::fs::write(
            &manifest,
            "apiVersion: millrace.dev/v1alpha1\nkind: StreamApp\nmetadata: {name: t}\nspec:\n  kafka: {bootstrapServers: '127.0.0.1:1'}\n  image: x\n  source: {topics: [in]}\n",
        )
        .unwrap();
        Command::Run {
            manifest,
            bootstrap: None,
            worker_id: "w".into(),
            admin_addr: "127.0.0.1:0".parse().unwrap(),
            query_port: None,
            loops: Some(2),
            state_dir: None,
            secrets_dir: None,
        }
        .execute(start)
    }

    #[test]
    fn a_start_that_does_not_give_one_processor_per_loop_is_a_configuration_error() {
        let io = |c: &WorkerConfig| Io::of_custom(c).unwrap();
        assert_eq!(
            run_with(&|c, _| Ok((io(c), vec![Drop]))),
            2,
            "one for two loops"
        );
        assert_eq!(
            run_with(&|c, _| Ok((io(c), vec![Drop, Drop, Drop]))),
            2,
            "three for two loops"
        );
        assert_eq!(run_with(&|_, _| Err("no".into())), 2, "a refused start");
    }
}
