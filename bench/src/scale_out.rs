//! `millrace-bench scale`: a stateful app scaled out from one worker to
//! four while input flows at a steady rate. Millrace runs on the test bed
//! (`kubectl scale streamapp`: the operator warms copies of the state on the
//! new pods, then moves tasks to them); Kafka Streams adds instances (its
//! high-availability assignor warms replicas on them and moves tasks at its
//! probing rebalances). Both run the stateful benchmark's running count,
//! exactly once, with one standby.
//!
//! Measured from the output, the same way for both: a reader stamps every
//! committed output record as it arrives and files it under its task (the
//! input is written key by key to fixed partitions, so a key names its
//! task). A task's pause is its longest gap between outputs from the scale
//! command on. The scale is done when every worker owns its share of the
//! tasks (Millrace: the app's placement status with no move open; Kafka
//! Streams: every instance running with its share active). Every input
//! record must come out exactly once, or the run fails.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::harness::{self, Setup};
use crate::operator_scale::kubectl;
use crate::{charts, jvm, kafka, process, state};

#[derive(clap::Args)]
pub struct Args {
    /// Keys of state before the scale (one record each), spread evenly over
    /// the tasks.
    #[arg(long, default_value_t = 1_600_000)]
    pub keys: u64,
    /// Input records per second while the app scales.
    #[arg(long, default_value_t = 4_000)]
    pub rate: u64,
    /// Workers (pods, instances) after the scale; it starts with one.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Seconds of steady input before the scale, and after it is done.
    #[arg(long, default_value_t = 10)]
    pub steady_seconds: u64,
    /// The longest a scale may take before the run fails.
    #[arg(long, default_value_t = 900)]
    pub timeout_seconds: u64,
    /// Kafka Streams' probing rebalance interval (its minimum, 60 s; the
    /// default is 10 minutes).
    #[arg(long, default_value_t = 60_000)]
    pub kstreams_probing_ms: u64,
    /// Contenders: `mr` (Millrace), `ks` (Kafka Streams).
    #[arg(long, value_delimiter = ',', default_value = "mr,ks")]
    pub contenders: Vec<String>,
    /// Namespace of Millrace's app on the test bed.
    #[arg(long, default_value = "millrace-bench-scale")]
    pub namespace: String,
    /// Where the report goes.
    #[arg(long, default_value = "bench/results")]
    pub results: PathBuf,
}

/// A gap between a task's outputs at least this long is drawn on the
/// timeline (outputs arrive per commit, every 100 ms, in steady state).
const PAUSE_FLOOR: Duration = Duration::from_millis(300);
const NAME: &str = "scale-out";

/// Committed outputs as they arrive, per task.
#[derive(Default)]
struct Arrivals {
    total: u64,
    /// Outputs whose key names no task (none expected).
    strays: u64,
    /// When the scale command was given; gaps are measured from then.
    since: Option<Instant>,
    last: Vec<Option<Instant>>,
    longest: Vec<Duration>,
    /// (task, start, end) of gaps since the scale of at least `PAUSE_FLOOR`.
    pauses: Vec<(usize, Instant, Instant)>,
}

impl Arrivals {
    fn new(tasks: usize) -> Self {
        Self {
            last: vec![None; tasks],
            longest: vec![Duration::ZERO; tasks],
            ..Default::default()
        }
    }

    fn arrived(&mut self, task: Option<usize>, now: Instant) {
        self.total += 1;
        let Some(t) = task.filter(|t| *t < self.last.len()) else {
            self.strays += 1;
            return;
        };
        if let (Some(_), Some(last)) = (self.since, self.last[t]) {
            let gap = now - last;
            self.longest[t] = self.longest[t].max(gap);
            if gap >= PAUSE_FLOOR {
                self.pauses.push((t, last, now));
            }
        }
        self.last[t] = Some(now);
    }
}

fn lock(arrivals: &Mutex<Arrivals>) -> std::sync::MutexGuard<'_, Arrivals> {
    // A panic while holding it leaves counts still worth reporting.
    arrivals.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reads `topic` under read_committed from its start until `stop`.
fn read_outputs(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    arrivals: &Mutex<Arrivals>,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("{topic}-reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    while !stop.load(Ordering::Relaxed) {
        if let Some(m) = consumer.poll(Duration::from_millis(50)) {
            let m = m?;
            let now = Instant::now();
            let task = m.key().and_then(|k| kafka::task_of_key(k, partitions));
            lock(arrivals).arrived(task, now);
        }
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Contender {
    Millrace,
    KafkaStreams,
}

impl Contender {
    fn from_slug(slug: &str) -> anyhow::Result<Self> {
        match slug {
            "mr" => Ok(Contender::Millrace),
            "ks" => Ok(Contender::KafkaStreams),
            other => anyhow::bail!("--contenders: unknown contender `{other}` (mr, ks)"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Contender::Millrace => "millrace (operator on the test bed)",
            Contender::KafkaStreams => "kafka-streams (instances added)",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Contender::Millrace => "mr",
            Contender::KafkaStreams => "ks",
        }
    }
}

/// One contender's app while it runs.
struct App {
    contender: Contender,
    id: String,
    input: String,
    output: String,
    namespace: String,
    /// Kafka Streams' instances and their logs.
    instances: Vec<(Child, PathBuf)>,
}

impl App {
    fn manifest(&self, bootstrap: &str) -> String {
        format!(
            r#"apiVersion: millrace.dev/v1alpha1
kind: StreamApp
metadata: {{name: {NAME}}}
spec:
  kafka: {{bootstrapServers: "{bootstrap}"}}
  applicationId: {id}
  processingGuarantee: ExactlyOnce
  commitInterval: 100ms
  replicas: 1
  state: {{standbyReplicas: 1}}
  pipeline:
    source: {{topics: [{input}]}}
    steps:
{step}    - route: {{default: {output}}}
"#,
            id = self.id,
            input = self.input,
            output = self.output,
            step = state::Workload::Running.step(&self.input),
        )
    }

    /// Settings beyond `RunningCount`'s own (bench/README.md lists them).
    fn kstreams_settings(setup: &Setup, args: &Args, tasks: i32) -> Vec<(String, String)> {
        let own = [
            ("num.standby.replicas", "1".to_string()),
            // Warm every task that moves at once, not 2 at a time.
            ("max.warmup.replicas", tasks.to_string()),
            (
                "probing.rebalance.interval.ms",
                args.kstreams_probing_ms.to_string(),
            ),
        ];
        jvm::with_overrides(
            own.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            &setup.kstreams.settings,
        )
    }

    fn state_dir(&self, instance: usize) -> PathBuf {
        std::env::temp_dir().join(format!("{}-state-{instance}", self.id))
    }

    fn launch_instance(&mut self, setup: &Setup, args: &Args, tasks: i32) -> anyhow::Result<()> {
        let n = self.instances.len();
        let state_dir = self.state_dir(n);
        let mut settings = Self::kstreams_settings(setup, args, tasks);
        // Static membership needs an id per instance.
        settings.push((
            "main.consumer.group.instance.id".into(),
            format!("{}-instance-{n}", self.id),
        ));
        let mut cmd = jvm::command(
            setup,
            "dev.millrace.bench.RunningCount",
            &[
                &setup.bootstrap,
                &self.id,
                &self.input,
                &self.output,
                "1",
                &state_dir.to_string_lossy(),
            ],
            &settings,
        )?;
        let log = std::env::temp_dir().join(format!("{}-{n}.log", self.id));
        let file = std::fs::File::create(&log)?;
        cmd.stderr(file.try_clone()?).stdout(file);
        self.instances.push((cmd.spawn()?, log));
        Ok(())
    }

    fn start(&mut self, setup: &Setup, args: &Args, tasks: i32) -> anyhow::Result<()> {
        match self.contender {
            Contender::Millrace => {
                let _ = kubectl(&["create", "namespace", &self.namespace]);
                crate::operator_scale::kubectl_apply(
                    &self.namespace,
                    &self.manifest(&setup.bootstrap),
                )
            }
            Contender::KafkaStreams => self.launch_instance(setup, args, tasks),
        }
    }

    fn scale_out(&mut self, setup: &Setup, args: &Args, tasks: i32) -> anyhow::Result<()> {
        match self.contender {
            Contender::Millrace => {
                kubectl(&[
                    "-n",
                    &self.namespace,
                    "scale",
                    &format!("streamapp/{NAME}"),
                    &format!("--replicas={}", args.workers),
                ])?;
                Ok(())
            }
            Contender::KafkaStreams => {
                while self.instances.len() < args.workers {
                    self.launch_instance(setup, args, tasks)?;
                }
                Ok(())
            }
        }
    }

    /// Active tasks per worker, as the contender reports them; an error
    /// when an instance has died.
    fn tasks_per_worker(&mut self) -> anyhow::Result<Vec<i64>> {
        match self.contender {
            Contender::Millrace => {
                let json = kubectl(&[
                    "-n",
                    &self.namespace,
                    "get",
                    &format!("streamapp/{NAME}"),
                    "-o",
                    "jsonpath={.status.placement}",
                ])?;
                let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
                if v["movesInProgress"].as_i64() != Some(0) {
                    return Ok(Vec::new());
                }
                Ok(v["tasksPerWorker"]
                    .as_object()
                    .into_iter()
                    .flat_map(|m| m.values().filter_map(|n| n.as_i64()))
                    .filter(|n| *n > 0)
                    .collect())
            }
            Contender::KafkaStreams => {
                let mut per = Vec::new();
                for (child, log) in &mut self.instances {
                    if let Some(status) = child.try_wait()? {
                        anyhow::bail!(
                            "a Kafka Streams instance exited ({status}): see {}",
                            log.display()
                        );
                    }
                    per.push(running_tasks(&std::fs::read_to_string(log)?).unwrap_or(0));
                }
                Ok(per)
            }
        }
    }

    fn stop(mut self, setup: &Setup) {
        match self.contender {
            Contender::Millrace => {
                let _ = kubectl(&[
                    "-n",
                    &self.namespace,
                    "delete",
                    &format!("streamapp/{NAME}"),
                    "--wait=true",
                    "--timeout=120s",
                ]);
            }
            Contender::KafkaStreams => {
                for (n, (child, _)) in std::mem::take(&mut self.instances).into_iter().enumerate() {
                    process::stop(child);
                    let _ = std::fs::remove_dir_all(self.state_dir(n));
                }
            }
        }
        let _ = kafka::delete_topics(
            &setup.bootstrap,
            &[
                self.input.clone(),
                self.output.clone(),
                format!("{}-totals-changelog", self.id),
            ],
        );
    }
}

/// Active tasks of a Kafka Streams instance from its log, while it runs
/// (its last state line is `running active=N ...`).
fn running_tasks(log: &str) -> Option<i64> {
    let last = log
        .lines()
        .rev()
        .find(|l| l.starts_with("state ") || l.starts_with("running "))?;
    last.strip_prefix("running active=")?
        .split(' ')
        .next()?
        .parse()
        .ok()
}

/// Every one of `workers` owns its share of `tasks`.
fn balanced(per_worker: &[i64], workers: usize, tasks: i32) -> bool {
    let (low, high) = (
        tasks as i64 / workers as i64,
        (tasks as i64 + workers as i64 - 1) / workers as i64,
    );
    per_worker.len() == workers
        && per_worker.iter().sum::<i64>() == tasks as i64
        && per_worker.iter().all(|n| (low..=high).contains(n))
}

/// One contender's scale-out.
struct Outcome {
    contender: Contender,
    /// Seconds from the scale command until every worker owned its share.
    settled_s: f64,
    /// Each task's longest gap between outputs after the scale, seconds.
    longest: Vec<f64>,
    /// (task, start s, end s) of gaps since the scale (timeline).
    pauses: Vec<(usize, f64, f64)>,
    records: u64,
}

fn run_one(setup: &Setup, args: &Args, contender: Contender) -> anyhow::Result<Outcome> {
    let tasks = setup.partitions;
    let id = format!("{}-scale-{}", setup.run_id, contender.slug());
    let (input, output) = (format!("{id}-in"), format!("{id}-out"));
    kafka::create_topics(&setup.bootstrap, &[input.clone(), output.clone()], tasks)?;
    let mut app = App {
        contender,
        id,
        input,
        output,
        namespace: args.namespace.clone(),
        instances: Vec::new(),
    };
    let result = scale_out(setup, args, &mut app);
    app.stop(setup);
    result
}

fn scale_out(setup: &Setup, args: &Args, app: &mut App) -> anyhow::Result<Outcome> {
    let tasks = setup.partitions;
    let name = app.contender.name();
    // The state: one record per key, before the app starts.
    kafka::produce(&setup.bootstrap, &app.input, 0..args.keys, None, |i| {
        kafka::keyed_record(i, args.keys, Some(tasks))
    })?;
    let arrivals = Arc::new(Mutex::new(Arrivals::new(tasks as usize)));
    let stop_reading = Arc::new(AtomicBool::new(false));
    let reader = {
        let (bootstrap, output) = (setup.bootstrap.clone(), app.output.clone());
        let (arrivals, stop) = (arrivals.clone(), stop_reading.clone());
        std::thread::spawn(move || read_outputs(&bootstrap, &output, tasks, &arrivals, &stop))
    };
    let result = (|| {
        app.start(setup, args, tasks)?;
        let deadline = Instant::now() + Duration::from_secs(args.timeout_seconds);
        wait_for(name, "its state built from every key", deadline, || {
            Ok(lock(&arrivals).total >= args.keys)
        })?;
        eprintln!("{name}: {} keys of state on one worker", args.keys);

        // Steady input until the scale is done and `steady_seconds` after.
        let stop_input = Arc::new(AtomicBool::new(false));
        let producer = {
            let (bootstrap, input, stop) = (
                setup.bootstrap.clone(),
                app.input.clone(),
                stop_input.clone(),
            );
            let (keys, rate) = (args.keys, args.rate);
            std::thread::spawn(move || {
                let seqs = (keys..).take_while(|_| !stop.load(Ordering::Relaxed));
                kafka::produce(&bootstrap, &input, seqs, Some(rate), |i| {
                    kafka::keyed_record(i, keys, Some(tasks))
                })
            })
        };
        let steady = Duration::from_secs(args.steady_seconds);
        std::thread::sleep(steady);
        let scaled = Instant::now();
        lock(&arrivals).since = Some(scaled);
        app.scale_out(setup, args, tasks)?;
        let deadline = scaled + Duration::from_secs(args.timeout_seconds);
        wait_for(
            name,
            &format!("every task placed on {} workers", args.workers),
            deadline,
            || Ok(balanced(&app.tasks_per_worker()?, args.workers, tasks)),
        )?;
        let settled_s = scaled.elapsed().as_secs_f64();
        eprintln!("{name}: settled {settled_s:.1} s after the scale");
        std::thread::sleep(steady);
        stop_input.store(true, Ordering::Relaxed);
        let produced = args.keys
            + producer
                .join()
                .map_err(|_| anyhow::anyhow!("the input producer panicked"))??;
        let deadline = Instant::now() + Duration::from_secs(120);
        let counted = wait_for(name, "every input record's output", deadline, || {
            Ok(lock(&arrivals).total >= produced)
        });
        // A moment more, so a duplicate written late is counted too.
        std::thread::sleep(Duration::from_secs(2));
        let seen = lock(&arrivals);
        anyhow::ensure!(
            counted.is_ok() && seen.total == produced && seen.strays == 0,
            "{name}: {} outputs ({} with a key of no task) for {produced} inputs: exactly one each expected",
            seen.total,
            seen.strays
        );
        let at = |t: Instant| t.saturating_duration_since(scaled).as_secs_f64();
        Ok(Outcome {
            contender: app.contender,
            settled_s,
            longest: seen.longest.iter().map(Duration::as_secs_f64).collect(),
            pauses: seen
                .pauses
                .iter()
                .map(|(t, a, b)| (*t, at(*a), at(*b)))
                .collect(),
            records: produced,
        })
    })();
    stop_reading.store(true, Ordering::Relaxed);
    let read = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the output reader panicked"))?;
    let outcome = result?;
    read?;
    Ok(outcome)
}

/// Polls `done` every 250 ms until it holds, or fails at `deadline`.
fn wait_for(
    name: &str,
    what: &str,
    deadline: Instant,
    mut done: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    while !done()? {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{name}: timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok(())
}

pub fn run(setup: &Setup, args: &Args) -> anyhow::Result<()> {
    let contenders = args
        .contenders
        .iter()
        .map(|s| Contender::from_slug(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut outcomes = Vec::new();
    let mut failures = Vec::new();
    for c in contenders {
        eprintln!("{}: scaling 1 → {} workers", c.name(), args.workers);
        match run_one(setup, args, c) {
            Ok(o) => outcomes.push(o),
            Err(e) => {
                eprintln!("{}: FAILED: {e:#}", c.name());
                failures.push(format!("{}: {e:#}", c.name()));
            }
        }
    }
    std::fs::create_dir_all(&args.results)?;
    let base = args.results.join(format!("{}-scale", setup.run_id));
    let chart = base.with_extension("png");
    let report = report(setup, args, &outcomes, &failures, &chart);
    std::fs::write(base.with_extension("md"), &report)?;
    print!("{report}");
    timeline(&chart, &outcomes)?;
    anyhow::ensure!(failures.is_empty(), "{} run(s) failed", failures.len());
    Ok(())
}

fn report(
    setup: &Setup,
    args: &Args,
    outcomes: &[Outcome],
    failures: &[String],
    chart: &Path,
) -> String {
    let tasks = setup.partitions;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Scale-out 1 → {} workers, {}\n",
        args.workers,
        harness::utc_now()
    );
    let _ = writeln!(out, "{}\n", harness::machine_line(setup));
    let _ = writeln!(
        out,
        "A running count and sum per key (exactly once, `commitInterval` 100 ms, one standby) over {tasks} tasks holding {} keys, on one worker; then, with {} records/s flowing, scaled to {} workers. A task's pause: its longest gap between committed outputs after the scale command. Settled: every worker owns its share of the tasks (Millrace: the placement status, no move open; Kafka Streams: every instance running with its share active). Every run's outputs counted: exactly one per input.\n",
        args.keys, args.rate, args.workers
    );
    let _ = writeln!(out, "| contender | settled after s | longest task pause s | median task pause s | tasks paused > 1 s | records, each output once |\n|---|---:|---:|---:|---:|---:|");
    for o in outcomes {
        let mut longest = o.longest.clone();
        longest.sort_by(f64::total_cmp);
        let _ = writeln!(
            out,
            "| {} | {:.1} | {:.2} | {:.2} | {} | {} |",
            o.contender.name(),
            o.settled_s,
            longest.last().copied().unwrap_or(0.0),
            harness::median(longest.clone()),
            longest.iter().filter(|s| **s > 1.0).count(),
            o.records
        );
    }
    if !failures.is_empty() {
        let _ = writeln!(out, "\nFailed runs (not timed):\n");
        for f in failures {
            let _ = writeln!(out, "- {f}");
        }
    }
    let _ = writeln!(out, "\n## Every setting\n");
    let _ = writeln!(out, "- millrace: `millrace-runtime` pods of the test bed (the stack's build profile), `replicas: 1` then `kubectl scale streamapp/{NAME} --replicas={}`, `state: {{standbyReplicas: 1}}`, `commitInterval: 100ms`, everything else default; the operator places tasks, warming copies on the new pods before moving them.", args.workers);
    let _ = writeln!(
        out,
        "- kafka-streams: `RunningCount` (bench/kstreams), one stream thread per instance, {}; its own settings (RocksDB bounded to 64 MiB, no record cache, static membership with an id per instance, `commit.interval.ms=100`); and {}. Instances 2–{} started at the scale command.",
        setup.kstreams.options_described(),
        jvm::listed(&App::kstreams_settings(setup, args, tasks)),
        args.workers
    );
    let _ = writeln!(
        out,
        "\n![task pauses after the scale]({})",
        chart.file_name().unwrap_or_default().to_string_lossy()
    );
    out
}

/// Each task's gaps between outputs after the scale, per contender.
fn timeline(path: &Path, outcomes: &[Outcome]) -> anyhow::Result<()> {
    let lanes: Vec<charts::Lane> = outcomes
        .iter()
        .map(|o| charts::Lane {
            label: o.contender.slug().to_string(),
            rows: o.longest.len(),
            spans: o.pauses.iter().map(|(t, a, b)| (*t, *a, *b)).collect(),
            mark: o.settled_s,
        })
        .collect();
    charts::timeline(
        path,
        "Task pauses after the scale command (gaps between outputs ≥ 0.3 s)",
        &lanes,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_runs_with_the_tasks_of_its_last_state_line() {
        assert_eq!(
            running_tasks("state RUNNING\nrunning active=16 standby=0\n"),
            Some(16)
        );
        assert_eq!(
            running_tasks("running active=16 standby=0\nstate REBALANCING\n"),
            None,
            "rebalancing: no tasks it can be counted on for"
        );
        assert_eq!(running_tasks("restored 5 t-0\n"), None);
    }

    #[test]
    fn balanced_means_every_worker_has_its_share() {
        assert!(balanced(&[4, 4, 4, 4], 4, 16));
        assert!(!balanced(&[4, 4, 8], 4, 16));
        assert!(!balanced(&[5, 3, 4, 4], 4, 16));
        assert!(balanced(&[2, 3], 2, 5));
    }

    #[test]
    fn gaps_count_from_the_scale_on() {
        let t0 = Instant::now();
        let mut a = Arrivals::new(2);
        a.arrived(Some(0), t0);
        a.arrived(Some(0), t0 + Duration::from_secs(5));
        assert_eq!(a.longest[0], Duration::ZERO, "before the scale");
        a.since = Some(t0 + Duration::from_secs(5));
        a.arrived(Some(0), t0 + Duration::from_secs(7));
        a.arrived(Some(1), t0 + Duration::from_secs(8));
        a.arrived(None, t0 + Duration::from_secs(8));
        assert_eq!(a.longest[0], Duration::from_secs(2));
        assert_eq!(a.pauses.len(), 1);
        assert_eq!((a.total, a.strays), (5, 1));
    }
}
