//! `millrace-bench state`: the stateful benchmark. Millrace and Kafka
//! Streams run the same topologies on the same broker, exactly once, state
//! in a local store with a changelog, every update written out:
//! `running`, a count and sum per record key; `windowed`, records keyed by
//! id regrouped by a value field through a repartition topic and counted
//! per one-minute tumbling window of event time; `join`, each record
//! enriched from a table topic by its key (a left join). They are measured
//! for:
//!
//! - throughput, CPU and peak RSS of each topology, rounds interleaved;
//! - recovery with a large state (one key per record): the time from a
//!   restart after SIGKILL until new input is committed (Kafka Streams wipes
//!   its state after an unclean exactly-once shutdown; Millrace keeps it),
//!   and from a restart with the state directory lost (both restore in
//!   full), with the records each restored, as each reports them.
//!
//! Every run's output is counted under read_committed and must be exactly
//! one record per input record, or the run fails. See bench/README.md.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::drain::{self, Usage};
use crate::harness::{self, Setup, PARTITIONS};
use crate::{jvm, kafka, process};

/// Records appended before each restart of the recovery runs: new input
/// the restarted contender must commit.
pub(crate) const TAIL: u64 = 16_000;

#[derive(clap::Args)]
pub struct Args {
    /// Input records of the throughput rounds.
    #[arg(long, default_value_t = 2_000_000)]
    pub records: u64,
    /// Distinct keys among them.
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// Distinct groups of the windowed topology (its records all have
    /// distinct keys).
    #[arg(long, default_value_t = 1_000)]
    pub groups: u64,
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    #[arg(long, default_value_t = 1)]
    pub warmup_rounds: usize,
    /// Keys of state for the recovery runs (one record each).
    #[arg(long, default_value_t = 1_000_000)]
    pub recovery_keys: u64,
    /// Where the report goes.
    #[arg(long, default_value = "bench/results")]
    pub results: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Contender {
    Millrace,
    KafkaStreams,
    /// Kafka Streams with `enable.transactional.statestores=true` (4.4):
    /// stores that buffer a transaction's writes until its commit, which
    /// should let an exactly-once instance keep its state after a crash.
    /// Only in the recovery runs.
    KafkaStreamsTransactionalStores,
}

impl Contender {
    pub const ALL: [Contender; 2] = [Contender::Millrace, Contender::KafkaStreams];
    pub const RECOVERY: [Contender; 3] = [
        Contender::Millrace,
        Contender::KafkaStreams,
        Contender::KafkaStreamsTransactionalStores,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Contender::Millrace => "millrace exactly-once",
            Contender::KafkaStreams => "kafka-streams exactly_once_v2",
            Contender::KafkaStreamsTransactionalStores => {
                "kafka-streams exactly_once_v2, transactional stores"
            }
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Contender::Millrace => "mr",
            Contender::KafkaStreams => "ks",
            Contender::KafkaStreamsTransactionalStores => "kst",
        }
    }

    /// Settings beyond the Java app's own (bench/kstreams `RunningCount`).
    fn kstreams_settings(self, setup: &Setup) -> Vec<(String, String)> {
        let own = match self {
            Contender::KafkaStreamsTransactionalStores => vec![(
                "enable.transactional.statestores".to_string(),
                "true".to_string(),
            )],
            _ => Vec::new(),
        };
        jvm::with_overrides(own, &setup.kstreams.settings)
    }
}

/// A topology both contenders run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Workload {
    /// A running count and sum per record key.
    Running,
    /// Regrouped by `g` (a repartition) and counted per minute of `at`.
    Windowed,
    /// Each record joined (left) with a table topic by its key.
    Join,
}

impl Workload {
    pub const ALL: [Workload; 3] = [Workload::Running, Workload::Windowed, Workload::Join];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Running => "running count per key",
            Workload::Windowed => "regrouped, per 1-minute window",
            Workload::Join => "stream–table join",
        }
    }

    /// The store (and so the changelog's name) of both contenders.
    fn store(self) -> &'static str {
        match self {
            Workload::Running => "totals",
            Workload::Windowed => "per-window",
            Workload::Join => "customers",
        }
    }

    fn java_class(self) -> &'static str {
        match self {
            Workload::Running => "dev.millrace.bench.RunningCount",
            Workload::Windowed => "dev.millrace.bench.WindowedCount",
            Workload::Join => "dev.millrace.bench.StreamTableJoin",
        }
    }

    /// The table topic a join over `input` reads.
    fn table(input: &str) -> String {
        format!("{input}-table")
    }

    /// The topics the topology reads: `input`, and a join's table.
    fn inputs(self, input: &str) -> Vec<String> {
        let mut topics = vec![input.to_string()];
        if self == Workload::Join {
            topics.push(Self::table(input));
        }
        topics
    }

    /// Millrace's stateful step over `input` (and its `map` for a join),
    /// under `steps:`.
    pub(crate) fn step(self, input: &str) -> String {
        let (group, window) = match self {
            Workload::Join => {
                return format!(
                    "    - name: {}\n      join: {{table: {}, as: customer, type: Left}}\n    - map:\n        value: \"{{'id': value.id, 'n': value.n, 'name': customer == null ? null : customer.name}}\"\n",
                    self.store(),
                    Self::table(input)
                )
            }
            Workload::Running => ("key", ""),
            Workload::Windowed => (
                "value.g",
                "\n        window: {tumbling: 1m}\n        grace: 1h\n        timestamp: value.at",
            ),
        };
        format!(
            "    - name: {}\n      aggregate:\n        groupBy: {group}{window}\n        aggregations:\n          count: {{count: {{}}}}\n          total: {{sum: value.n}}\n",
            self.store()
        )
    }

    fn fill(self, setup: &Setup, input: &str, args: &Args) -> anyhow::Result<()> {
        match self {
            Workload::Running => {
                kafka::fill_keyed(&setup.bootstrap, input, 0..args.records, args.keys)
            }
            Workload::Windowed => {
                kafka::fill_grouped(&setup.bootstrap, input, 0..args.records, args.groups)
            }
            Workload::Join => {
                // Compacted, as a table topic should be; written first, so
                // its records are older than every order.
                let table = Self::table(input);
                kafka::create_topics_with(
                    &setup.bootstrap,
                    std::slice::from_ref(&table),
                    PARTITIONS,
                    &[("cleanup.policy", "compact")],
                )?;
                kafka::fill_table(&setup.bootstrap, &table, args.keys)?;
                kafka::fill_keyed(&setup.bootstrap, input, 0..args.records, args.keys)
            }
        }
    }
}

/// One contender's app over one input: its ids, output, state directory,
/// and where it reports its restores.
pub(crate) struct App {
    contender: Contender,
    workload: Workload,
    id: String,
    input: String,
    output: String,
    state_dir: PathBuf,
    /// Millrace's admin port (`/tasks` reports restores).
    admin_port: u16,
    /// Millrace's query API port.
    pub query_port: u16,
    /// The contender's output, per launch (Kafka Streams writes a line per
    /// finished restore there).
    log: PathBuf,
}

impl App {
    pub(crate) fn new(
        setup: &Setup,
        (c, workload): (Contender, Workload),
        label: &str,
        input: &str,
    ) -> anyhow::Result<Self> {
        let id = format!("{}-{}-{label}", setup.run_id, c.slug());
        let tmp = std::env::temp_dir();
        kafka::create_topics(&setup.bootstrap, &[format!("{id}-out")], PARTITIONS)?;
        Ok(Self {
            contender: c,
            workload,
            output: format!("{id}-out"),
            state_dir: tmp.join(format!("{id}-state")),
            log: tmp.join(format!("{id}.log")),
            admin_port: free_port()?,
            query_port: free_port()?,
            input: input.to_string(),
            id,
        })
    }

    /// Both name their store (and repartition topic) alike, so their
    /// internal topics are named alike.
    fn internal_topics(&self) -> Vec<String> {
        let store = self.workload.store();
        let mut topics = vec![
            self.output.clone(),
            format!("{}-{store}-changelog", self.id),
        ];
        if self.workload == Workload::Windowed {
            topics.push(format!("{}-{store}-repartition", self.id));
        }
        topics
    }

    fn launch(&self, setup: &Setup) -> anyhow::Result<Child> {
        let mut cmd = match self.contender {
            Contender::Millrace => {
                let manifest = std::env::temp_dir().join(format!("{}.yaml", self.id));
                std::fs::write(&manifest, self.manifest(&setup.bootstrap))?;
                let mut cmd = Command::new(process::binary(&setup.target, "millrace-runtime")?);
                cmd.arg("run")
                    .arg("--manifest")
                    .arg(&manifest)
                    .arg("--state-dir")
                    .arg(&self.state_dir)
                    .args(["--admin-addr", &format!("127.0.0.1:{}", self.admin_port)])
                    .args(["--query-port", &self.query_port.to_string()])
                    .env("RUST_LOG", "warn");
                cmd
            }
            Contender::KafkaStreams | Contender::KafkaStreamsTransactionalStores => {
                let threads = setup.threads.to_string();
                let state_dir = self.state_dir.to_string_lossy();
                // A join's table comes after the fixed arguments.
                let inputs = self.workload.inputs(&self.input);
                let mut args = vec![
                    setup.bootstrap.as_str(),
                    &self.id,
                    &self.input,
                    &self.output,
                    &threads,
                    &state_dir,
                ];
                args.extend(inputs[1..].iter().map(String::as_str));
                jvm::command(
                    setup,
                    self.workload.java_class(),
                    &args,
                    &self.contender.kstreams_settings(setup),
                )?
            }
        };
        let log = std::fs::File::create(&self.log)?;
        cmd.stderr(log.try_clone()?).stdout(log);
        Ok(cmd.spawn()?)
    }

    fn manifest(&self, bootstrap: &str) -> String {
        format!(
            r#"apiVersion: millrace.dev/v1alpha1
kind: StreamApp
metadata: {{name: bench-state}}
spec:
  kafka: {{bootstrapServers: "{bootstrap}"}}
  applicationId: {id}
  processingGuarantee: ExactlyOnce
  commitInterval: 100ms
  state: {{}}
  pipeline:
    source: {{topics: [{input}]}}
    steps:
{step}    - route: {{default: {output}}}
"#,
            step = self.workload.step(&self.input),
            id = self.id,
            input = self.input,
            output = self.output,
        )
    }

    /// Changelog records the running contender restored since its launch,
    /// as it reports them: Millrace's `/tasks` (updated while it restores),
    /// Kafka Streams' finished restores (`restored` lines), or with
    /// `batches` its restored batches so far (`batch` lines).
    fn restored(&self, batches: bool) -> anyhow::Result<u64> {
        match self.contender {
            Contender::Millrace => {
                let tasks: serde_json::Value =
                    serde_json::from_str(&http_get(self.admin_port, "/tasks")?)?;
                Ok(tasks["restores"]
                    .as_object()
                    .into_iter()
                    .flat_map(|r| r.values())
                    .filter_map(|r| r["recordsRestored"].as_u64())
                    .sum())
            }
            Contender::KafkaStreams | Contender::KafkaStreamsTransactionalStores => {
                let prefix = if batches { "batch " } else { "restored " };
                Ok(std::fs::read_to_string(&self.log)?
                    .lines()
                    .filter_map(|l| {
                        l.strip_prefix(prefix)?
                            .split(' ')
                            .next()?
                            .parse::<u64>()
                            .ok()
                    })
                    .sum())
            }
        }
    }

    /// Starts the contender and waits for it to commit the input's end.
    pub(crate) fn run_to_end(&self, setup: &Setup) -> anyhow::Result<(Child, Usage)> {
        let broker = process::broker_before();
        let started = Instant::now();
        let mut child = self.launch(setup)?;
        let repartitions: Vec<String> = self
            .internal_topics()
            .into_iter()
            .filter(|t| t.ends_with("-repartition"))
            .collect();
        match drain::until_drained(
            setup,
            self.contender.name(),
            &mut child,
            (
                &self.input,
                drain::Finish::Committed {
                    group: &self.id,
                    then: &repartitions,
                },
            ),
            started,
            broker,
        ) {
            Ok(usage) => Ok((child, usage)),
            Err(e) => {
                process::stop(child);
                Err(e)
            }
        }
    }

    /// The output holds exactly one committed record per input record;
    /// returns how many of them a join found no table value for (keys
    /// missing from the table, [`kafka::in_table`], and records a
    /// contender processed before it had read their key's table record).
    pub(crate) fn check_output(&self, setup: &Setup, expected: u64) -> anyhow::Result<u64> {
        let (seen, unmatched) =
            kafka::count_committed_matching(&setup.bootstrap, &self.output, PARTITIONS, |v| {
                const NO_NAME: &[u8] = br#""name":null"#;
                self.workload == Workload::Join && v.windows(NO_NAME.len()).any(|w| w == NO_NAME)
            })?;
        anyhow::ensure!(
            seen == expected,
            "{}: {seen} committed outputs for {expected} input records (a run that fails the count is not timed)",
            self.contender.name()
        );
        Ok(unmatched)
    }

    pub(crate) fn clean_up(&self, setup: &Setup) -> anyhow::Result<()> {
        let _ = std::fs::remove_dir_all(&self.state_dir);
        harness::clean_up(setup, &self.internal_topics())
    }
}

/// One throughput run.
pub(crate) struct Measured {
    pub contender: Contender,
    pub workload: Workload,
    pub usage: Usage,
    /// Join outputs without a table value.
    pub unmatched: u64,
}

/// One recovery run: the initial load, then the two restarts.
pub(crate) struct Recovery {
    pub contender: Contender,
    pub load: Usage,
    pub after_kill: Restart,
    pub after_loss: Restart,
}

impl Recovery {
    /// The restart after SIGKILL, or with `lost` the one after the state
    /// directory was lost.
    pub fn restart(&self, lost: bool) -> &Restart {
        if lost {
            &self.after_loss
        } else {
            &self.after_kill
        }
    }
}

pub(crate) struct Restart {
    /// Restart → the new input committed.
    pub seconds: f64,
    pub restored: u64,
    /// (s after the restart, records restored by then), every 100 ms.
    pub timeline: Vec<(f64, u64)>,
}

impl Restart {
    /// Restarts `app` and waits until it has committed its input, sampling
    /// its restore progress meanwhile.
    fn timed(app: &App, setup: &Setup) -> anyhow::Result<Self> {
        // The last launch's log would read as restores at t = 0 until this
        // launch truncates it.
        let _ = std::fs::remove_file(&app.log);
        let done = std::sync::atomic::AtomicBool::new(false);
        let (run, timeline) = std::thread::scope(|scope| {
            let sampler = scope.spawn(|| {
                let started = Instant::now();
                let mut timeline = Vec::new();
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    // Nothing to read before the contender answers.
                    if let Ok(n) = app.restored(true) {
                        timeline.push((started.elapsed().as_secs_f64(), n));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                timeline
            });
            let run = app.run_to_end(setup);
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            (run, sampler.join().expect("the restore sampler panicked"))
        });
        let (child, usage) = run?;
        let restored = app.restored(false);
        process::stop(child);
        Ok(Restart {
            seconds: usage.seconds,
            restored: restored?,
            timeline,
        })
    }
}

pub fn run(setup: &Setup, args: &Args) -> anyhow::Result<()> {
    let mut measured = Vec::new();
    for workload in Workload::ALL {
        measured.extend(throughput(setup, args, workload)?);
    }

    let mut recoveries = Vec::new();
    for c in Contender::RECOVERY {
        let recovery = recover(setup, c, args.recovery_keys)?;
        eprintln!(
            "recovery {:30} after SIGKILL {:.1} s ({} restored), after losing its state {:.1} s ({} restored)",
            c.name(),
            recovery.after_kill.seconds,
            recovery.after_kill.restored,
            recovery.after_loss.seconds,
            recovery.after_loss.restored
        );
        recoveries.push(recovery);
    }

    std::fs::create_dir_all(&args.results)?;
    let report = super::state_report::report(setup, args, &measured, &recoveries)?;
    println!("{report}");
    let file = args.results.join(format!("{}-state.md", setup.run_id));
    std::fs::write(&file, &report)?;
    eprintln!("written to {}", file.display());
    Ok(())
}

/// Rounds of one topology over one input, contenders alternating.
fn throughput(setup: &Setup, args: &Args, workload: Workload) -> anyhow::Result<Vec<Measured>> {
    let input = format!("{}-state-{}-input", setup.run_id, workload.store());
    kafka::create_topics(&setup.bootstrap, std::slice::from_ref(&input), PARTITIONS)?;
    workload.fill(setup, &input, args)?;
    eprintln!(
        "filled {input}: {} records ({})",
        args.records,
        workload.name()
    );
    let mut measured = Vec::new();
    for round in 0..args.warmup_rounds + args.rounds {
        let warmup = round < args.warmup_rounds;
        // Alternate who goes first: neither always meets a broker just
        // busy with the other's deletions.
        let mut order = Contender::ALL;
        if round % 2 == 1 {
            order.reverse();
        }
        for c in order {
            let app = App::new(
                setup,
                (c, workload),
                &format!("{}{round}", workload.store()),
                &input,
            )?;
            let (child, usage) = app.run_to_end(setup)?;
            process::stop(child);
            let unmatched = app.check_output(setup, args.records)?;
            app.clean_up(setup)?;
            eprintln!(
                "{} {} ({}): {:30} {:>6.1} s {:>9.0} records/s {:>6.1} CPU s {:>5.0} MB",
                if warmup { "warm-up" } else { "round" },
                round + 1,
                workload.name(),
                c.name(),
                usage.seconds,
                args.records as f64 / usage.seconds,
                usage.cpu_seconds,
                usage.peak_rss_mb
            );
            if !warmup {
                measured.push(Measured {
                    contender: c,
                    workload,
                    usage,
                    unmatched,
                });
            }
        }
    }
    harness::clean_up(setup, &workload.inputs(&input))?;
    Ok(measured)
}

/// Loads `keys` keys of state from an input of its own, SIGKILLs the
/// contender and restarts it on its state directory; then stops it
/// cleanly, deletes its state directory and restarts it again. Before each
/// restart `TAIL` records are appended; each restart is timed until they
/// are committed.
fn recover(setup: &Setup, c: Contender, keys: u64) -> anyhow::Result<Recovery> {
    let input = format!("{}-{}-recovery-input", setup.run_id, c.slug());
    kafka::create_topics(&setup.bootstrap, std::slice::from_ref(&input), PARTITIONS)?;
    kafka::fill_keyed(&setup.bootstrap, &input, 0..keys, keys)?;
    let app = App::new(setup, (c, Workload::Running), "recovery", &input)?;
    let (mut child, load) = app.run_to_end(setup)?;
    child.kill()?;
    child.wait()?;
    let mut appended = keys;
    let mut restart = |lose_state: bool| -> anyhow::Result<Restart> {
        if lose_state {
            std::fs::remove_dir_all(&app.state_dir)?;
        }
        kafka::fill_keyed(&setup.bootstrap, &input, appended..appended + TAIL, keys)?;
        appended += TAIL;
        Restart::timed(&app, setup)
    };
    let after_kill = restart(false)?;
    let after_loss = restart(true)?;
    app.check_output(setup, appended)?;
    app.clean_up(setup)?;
    harness::clean_up(setup, &[input])?;
    Ok(Recovery {
        contender: c,
        load,
        after_kill,
        after_loss,
    })
}

/// A port free now, for a contender's admin endpoint.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The body of `GET path` from a local HTTP/1.0 endpoint.
fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("GET {path}: no HTTP response"))?;
    anyhow::ensure!(
        head.contains(" 200 "),
        "GET {path}: {}",
        head.lines().next().unwrap_or("")
    );
    Ok(body.to_string())
}
