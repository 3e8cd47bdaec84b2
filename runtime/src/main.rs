//! `millrace-runtime`: runs a StreamApp's pipeline exactly once.
//!
//! - `millrace-runtime run --manifest app.yaml [--bootstrap HOST:PORT]`:
//!   standalone, this worker owns every task;
//! - `millrace-runtime validate app.yaml`: compile the pipeline, print errors;
//! - `millrace-runtime worker`: in a pod, reads the configuration the
//!   operator rendered (`MILLRACE_CONFIG`).
//!
//! Exit codes: 0 after SIGTERM/SIGINT (the open transaction committed), 2 for
//! a configuration error (one line), 3 for a record that failed under
//! `onError: Stop`, 1 otherwise.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::{Parser, Subcommand};
use millrace_runtime::config::{WorkerConfig, CONFIG_DIR, CONFIG_FILE};
use millrace_runtime::engine::clients::{loop_id, MAX_LOOPS};
use millrace_runtime::engine::kube_tasks::{KubeTasks, PlacementView};
use millrace_runtime::engine::tasks::{OrdinalZero, Share, Standalone, TaskSource};
use millrace_runtime::engine::{Engine, EngineError};
use millrace_runtime::metrics::{Metrics, Status};
use millrace_runtime::pipeline::eval::Evaluator;
use millrace_runtime::{admin, manifest, pipeline};

#[derive(Parser)]
#[command(version, about = "The Millrace stream-processing runtime")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a StreamApp manifest's pipeline on this machine (all tasks).
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
        /// Processing loops (default: one per core; at most 8).
        #[arg(long, env = "MILLRACE_LOOPS")]
        loops: Option<usize>,
    },
    /// Compile a manifest's pipeline and report every error.
    Validate { manifest: PathBuf },
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

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Validate { manifest } => validate(&manifest),
        Command::Run {
            manifest: path,
            bootstrap,
            worker_id,
            admin_addr,
            loops,
        } => {
            init_logs();
            match manifest::load(&path).and_then(|app| {
                manifest::worker_config(&app, bootstrap.as_deref(), admin_addr.port())
            }) {
                Ok(config) => serve(
                    loops.unwrap_or_else(default_loops),
                    config,
                    worker_id,
                    admin_addr,
                    Tasks::Standalone,
                ),
                Err(e) => config_error(e),
            }
        }
        Command::Worker {
            config,
            pod_name,
            pod_namespace,
            pod_ip,
            loops,
        } => {
            init_logs();
            let path = config.unwrap_or_else(|| PathBuf::from(CONFIG_DIR).join(CONFIG_FILE));
            match read_config(&path) {
                Ok(config) => match format!("{pod_ip}:{}", config.admin_port).parse() {
                    Ok(addr) => serve(
                        loops.unwrap_or_else(default_loops),
                        config.clone(),
                        pod_name,
                        addr,
                        match config.placement_config_map {
                            Some(config_map) => Tasks::Placement {
                                namespace: pod_namespace,
                                config_map,
                            },
                            None => Tasks::OrdinalZero,
                        },
                    ),
                    Err(e) => config_error(anyhow::anyhow!("MILLRACE_POD_IP '{pod_ip}': {e}")),
                },
                Err(e) => config_error(e),
            }
        }
    };
    std::process::exit(code);
}

fn init_logs() {
    tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
}

fn config_error(e: anyhow::Error) -> i32 {
    eprintln!("millrace-runtime: {e:#}");
    2
}

fn read_config(path: &std::path::Path) -> anyhow::Result<WorkerConfig> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn validate(path: &std::path::Path) -> i32 {
    let app = match manifest::load(path) {
        Ok(app) => app,
        Err(e) => return config_error(e),
    };
    let Some(spec) = &app.spec.pipeline else {
        return config_error(anyhow::anyhow!(
            "spec.pipeline: the manifest has no pipeline to validate"
        ));
    };
    match pipeline::compile(spec) {
        Ok(compiled) => {
            println!("{}: ok ({} steps)", path.display(), compiled.steps.len());
            0
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{}: {e}", path.display());
            }
            2
        }
    }
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
/// loops retry until then.
fn fence_unused_loops(config: &WorkerConfig, worker_id: &str, loops: usize) -> anyhow::Result<()> {
    if config.processing_guarantee != millrace_crds::ProcessingGuarantee::ExactlyOnce {
        return Ok(());
    }
    use rdkafka::producer::{BaseProducer, Producer};
    for index in loops..MAX_LOOPS {
        let producer: BaseProducer =
            millrace_runtime::engine::clients::producer(config, &loop_id(worker_id, index))?
                .create()?;
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

/// Runs the admin endpoint and `loops` processing loops (each with its own
/// consumer, transactional producer and share of the tasks, so one loop
/// processes while another commits) until SIGTERM/SIGINT or an error.
fn serve(
    loops: usize,
    config: WorkerConfig,
    worker_id: String,
    admin_addr: SocketAddr,
    tasks: Tasks,
) -> i32 {
    let loops = loops.clamp(1, MAX_LOOPS);
    let mut config = config;
    config.loops = loops;
    let compiled = match config.pipeline.as_ref().map(pipeline::compile) {
        Some(Ok(p)) => Arc::new(p),
        Some(Err(errors)) => return config_error(anyhow::anyhow!("{errors}")),
        None => {
            return config_error(anyhow::anyhow!(
                "the configuration has no pipeline; custom images run their own binary"
            ))
        }
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
    {
        let (metrics, status, shutdown) = (metrics.clone(), status.clone(), shutdown.clone());
        runtime.spawn(async move {
            if let Err(e) = admin::serve(admin_addr, metrics, status).await {
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
                return Box::new(KubeTasks::new(view.clone(), index, loops))
            }
            (Tasks::OrdinalZero, _) => Box::new(OrdinalZero::from_pod_name(&worker_id)),
            _ => Box::new(Standalone),
        };
        Box::new(Share {
            inner,
            index,
            of: loops,
        })
    };
    if let Err(e) = fence_unused_loops(&config, &worker_id, loops) {
        return config_error(anyhow::anyhow!("fencing earlier processing loops: {e}"));
    }
    if let Err(e) =
        millrace_runtime::lag::spawn(&config, metrics.clone(), status.clone(), shutdown.clone())
    {
        return config_error(e);
    }
    let rate_limit = config
        .pipeline
        .as_ref()
        .and_then(|p| p.max_records_per_second)
        .map(|n| {
            Arc::new(millrace_runtime::engine::rate_limit::RateLimit::new(
                n.max(1) as u64,
            ))
        });
    // The engines are blocking (librdkafka's poll loop): a thread each.
    let handles: Vec<_> = (0..loops)
        .map(|index| {
            let (config, compiled, metrics, status, shutdown) = (
                config.clone(),
                compiled.clone(),
                metrics.clone(),
                status.clone(),
                shutdown.clone(),
            );
            let id = loop_id(&worker_id, index);
            let limit = rate_limit.clone();
            let share = source(index);
            std::thread::spawn(move || {
                let result = Engine::start(
                    config,
                    id,
                    Evaluator::new(compiled),
                    share,
                    metrics,
                    status,
                    shutdown.clone(),
                )
                .and_then(|mut e| {
                    e.stagger(index, loops);
                    e.limit(limit);
                    e.run()
                });
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
            .unwrap_or_else(|_| Err(EngineError::Config("a processing loop panicked".into())));
        let this = match result {
            Ok(()) => 0,
            Err(EngineError::Config(m)) => config_error(anyhow::anyhow!(m)),
            Err(e @ EngineError::RecordFailed { .. }) => {
                eprintln!("millrace-runtime: {e}");
                3
            }
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
