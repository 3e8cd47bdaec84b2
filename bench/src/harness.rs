//! The side-by-side run: every contender processes the same pre-filled
//! input from the beginning under a fresh application id, in rounds,
//! measured from its start until it is done (bench/src/drain.rs: its group
//! committed the whole input, or under at-least-once its outputs hold every
//! expected record), and its outputs counted.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::{drain, jvm, kafka, pipe, process};

pub const PARTITIONS: i32 = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contender {
    MillraceExactlyOnce,
    MillraceAtLeastOnce,
    KafkaStreamsExactlyOnce,
    KafkaStreamsAtLeastOnce,
    RawPipe,
    RawPipeTransactional,
}

impl Contender {
    pub const ALL: [Contender; 6] = [
        Contender::MillraceExactlyOnce,
        Contender::KafkaStreamsExactlyOnce,
        Contender::RawPipeTransactional,
        Contender::MillraceAtLeastOnce,
        Contender::KafkaStreamsAtLeastOnce,
        Contender::RawPipe,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Contender::MillraceExactlyOnce => "millrace exactly-once",
            Contender::MillraceAtLeastOnce => "millrace at-least-once",
            Contender::KafkaStreamsExactlyOnce => "kafka-streams exactly_once_v2",
            Contender::KafkaStreamsAtLeastOnce => "kafka-streams at_least_once",
            Contender::RawPipe => "raw pipe (no parsing)",
            Contender::RawPipeTransactional => "raw pipe, transactional",
        }
    }

    pub fn slug(self) -> &'static str {
        match self {
            Contender::MillraceExactlyOnce => "mr-eos",
            Contender::MillraceAtLeastOnce => "mr-alo",
            Contender::KafkaStreamsExactlyOnce => "ks-eos",
            Contender::KafkaStreamsAtLeastOnce => "ks-alo",
            Contender::RawPipe => "raw-alo",
            Contender::RawPipeTransactional => "raw-eos",
        }
    }
}

#[derive(Clone)]
pub struct Setup {
    pub bootstrap: String,
    pub repo: PathBuf,
    pub target: PathBuf,
    pub run_id: String,
    pub threads: usize,
    /// The Kafka Streams JVMs' heap and setting overrides.
    pub kstreams: jvm::KafkaStreams,
    /// Partitions of the routing comparison's input and outputs (tasks).
    pub partitions: i32,
}

impl Setup {
    /// The repository is the working directory; binaries are in
    /// `CARGO_TARGET_DIR` (or `target/`); the run is named by the time.
    pub fn new(bootstrap: String) -> anyhow::Result<Self> {
        let repo = std::env::current_dir()?;
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| repo.join("target"));
        let run_id = format!(
            "bench-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs()
        );
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        Ok(Setup {
            bootstrap,
            repo,
            target,
            run_id,
            threads,
            kstreams: jvm::KafkaStreams::default(),
            partitions: PARTITIONS,
        })
    }

    pub fn with_partitions(self, partitions: i32) -> Self {
        Setup { partitions, ..self }
    }

    pub fn with_kstreams(self, kstreams: jvm::KafkaStreams) -> Self {
        Setup { kstreams, ..self }
    }
}

/// One contender's run.
#[derive(Clone, Debug)]
pub struct Measurement {
    pub contender: Contender,
    pub seconds: f64,
    pub records_per_second: f64,
    pub cpu_seconds: f64,
    pub peak_rss_mb: f64,
    /// The broker's CPU seconds over the same span (it shares the cores);
    /// `None` when the broker is not one local process.
    pub broker_cpu_seconds: Option<f64>,
    /// Records ÷ time from the first commit the harness saw to the last:
    /// start-up (JVM, group join, first fetches) left out.
    pub steady_records_per_second: Option<f64>,
}

/// The four outputs of every contender, in `pipe::OUTPUTS` order (large, eu,
/// other, dlq); the raw pipes fan out to the same four.
pub fn output_topics(setup: &Setup, c: Contender, round: usize) -> Vec<String> {
    let prefix = format!("{}-{}-{round}", setup.run_id, c.slug());
    pipe::OUTPUTS
        .iter()
        .map(|s| format!("{prefix}-{s}"))
        .collect()
}

/// Records each output must hold after a run over the whole input: the
/// router's (`kafka::route_of`) or the raw pipes' fan-out.
pub fn expected_outputs(c: Contender, records: u64, input_ends: &[i64]) -> [u64; 4] {
    match c {
        Contender::RawPipe | Contender::RawPipeTransactional => pipe::fan_out_counts(input_ends),
        _ => {
            let mut counts = [0; 4];
            for i in 0..records {
                if let Some(output) = kafka::route_of(i) {
                    counts[output] += 1;
                }
            }
            counts
        }
    }
}

impl Contender {
    /// Kafka Streams' `processing.guarantee` of the same guarantee.
    pub fn kstreams_guarantee(self) -> &'static str {
        if self.exactly_once() {
            "exactly_once_v2"
        } else {
            "at_least_once"
        }
    }

    pub fn exactly_once(self) -> bool {
        matches!(
            self,
            Contender::MillraceExactlyOnce
                | Contender::KafkaStreamsExactlyOnce
                | Contender::RawPipeTransactional
        )
    }
}

/// Counts every output of a finished run against what it must hold: exactly
/// under exactly-once, at least under at-least-once (a crash-free run
/// writes no duplicates either, but may). A run that fails is not timed.
pub fn check_outputs(
    setup: &Setup,
    c: Contender,
    topics: &[String],
    expected: [u64; 4],
) -> anyhow::Result<[u64; 4]> {
    let mut counted = [0; 4];
    for (i, topic) in topics.iter().enumerate() {
        counted[i] = kafka::count_committed(&setup.bootstrap, topic, setup.partitions)?;
        let fits = if c.exactly_once() {
            counted[i] == expected[i]
        } else {
            counted[i] >= expected[i]
        };
        anyhow::ensure!(
            fits,
            "{}: {topic} holds {} records, {} expected ({})",
            c.name(),
            counted[i],
            expected[i],
            if c.exactly_once() {
                "exactly"
            } else {
                "at least"
            }
        );
    }
    Ok(counted)
}

/// The Millrace contenders' manifest.
pub fn manifest_text(
    setup: &Setup,
    app_id: &str,
    input: &str,
    prefix: &str,
    guarantee: &str,
) -> String {
    format!(
        r#"apiVersion: millrace.dev/v1alpha1
kind: StreamApp
metadata: {{name: bench}}
spec:
  kafka: {{bootstrapServers: "{bootstrap}"}}
  applicationId: {app_id}
  processingGuarantee: {guarantee}
  commitInterval: 100ms
  pipeline:
    source: {{topics: [{input}]}}
    steps:
    - {{name: paid-only, filter: "value.status == 'paid'"}}
    - route:
        rules:
        - {{when: "value.amount >= 1000", to: {prefix}-large}}
        - {{when: "value.region == 'eu'", to: {prefix}-eu}}
        default: {prefix}-other
    onError: {{policy: DeadLetter, deadLetterTopic: {prefix}-dlq}}
"#,
        bootstrap = setup.bootstrap
    )
}

fn manifest(
    setup: &Setup,
    app_id: &str,
    input: &str,
    prefix: &str,
    guarantee: &str,
) -> anyhow::Result<PathBuf> {
    let yaml = manifest_text(setup, app_id, input, prefix, guarantee);
    let path = std::env::temp_dir().join(format!("{app_id}.yaml"));
    std::fs::write(&path, yaml)?;
    Ok(path)
}

/// Where a contender's output goes.
pub fn contender_log(app_id: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{app_id}.log"))
}

/// Starts a contender reading `input`; returns the process and its group id.
pub fn launch(
    setup: &Setup,
    c: Contender,
    round: usize,
    input: &str,
) -> anyhow::Result<(Child, String)> {
    let app_id = format!("{}-{}-{round}-app", setup.run_id, c.slug());
    let prefix = format!("{}-{}-{round}", setup.run_id, c.slug());
    kafka::create_topics(
        &setup.bootstrap,
        &output_topics(setup, c, round),
        setup.partitions,
    )?;
    let mut cmd = match c {
        Contender::MillraceExactlyOnce | Contender::MillraceAtLeastOnce => {
            let guarantee = if c == Contender::MillraceExactlyOnce {
                "ExactlyOnce"
            } else {
                "AtLeastOnce"
            };
            let path = manifest(setup, &app_id, input, &prefix, guarantee)?;
            let mut cmd = Command::new(process::binary(&setup.target, "millrace-runtime")?);
            cmd.args([
                "run",
                "--manifest",
                path.to_str().unwrap(),
                "--admin-addr",
                "127.0.0.1:0",
            ])
            .env("RUST_LOG", "warn");
            cmd
        }
        Contender::KafkaStreamsExactlyOnce | Contender::KafkaStreamsAtLeastOnce => jvm::command(
            setup,
            "dev.millrace.bench.OrdersRouter",
            &[&setup.bootstrap, &app_id, input, &prefix],
            &jvm::router_settings(setup, c.kstreams_guarantee()),
        )?,
        Contender::RawPipe | Contender::RawPipeTransactional => {
            let mut cmd = Command::new(std::env::current_exe()?);
            cmd.args([
                "pipe",
                "--input",
                input,
                "--prefix",
                &prefix,
                "--group",
                &app_id,
                "--bootstrap",
                &setup.bootstrap,
                "--threads",
                &setup.threads.to_string(),
            ]);
            if c == Contender::RawPipeTransactional {
                cmd.arg("--transactional");
            }
            cmd
        }
    };
    // Its output goes to a file a failed run's report names.
    let log = std::fs::File::create(contender_log(&app_id))?;
    cmd.stdout(log.try_clone()?).stderr(log);
    Ok((cmd.spawn()?, app_id))
}

/// How long the broker gets to remove deleted topics' files before the next
/// contender starts: the test bed's broker removes them after 1 s
/// (`log.segment.delete.delay.ms`).
const DELETION_SETTLE: Duration = Duration::from_secs(3);

/// Deletes a finished run's topics and waits for the broker to remove them.
/// Kept, the runs' outputs filled the page cache (12 GB of topics after one
/// full run and a few dozen single ones), and the broker's CPU per run,
/// much of it in the kernel, varied by 2x between runs of one contender
/// (bench/README.md, item 18; the cause is not fully established). Removed
/// later than the pause (a broker with the default one-minute delay), they
/// are removed during another run.
pub fn clean_up(setup: &Setup, topics: &[String]) -> anyhow::Result<()> {
    kafka::delete_topics(&setup.bootstrap, topics)?;
    std::thread::sleep(DELETION_SETTLE);
    Ok(())
}

/// Runs one contender over the whole input and measures it.
pub fn measure(
    setup: &Setup,
    c: Contender,
    round: usize,
    input: &str,
    records: u64,
) -> anyhow::Result<Measurement> {
    let topics = output_topics(setup, c, round);
    let expected = expected_outputs(
        c,
        records,
        &kafka::end_offsets(&setup.bootstrap, input, setup.partitions)?,
    );
    let finish = |group| {
        if c.exactly_once() {
            drain::Finish::Committed { group, then: &[] }
        } else {
            drain::Finish::Written {
                outputs: &topics,
                expected: &expected,
            }
        }
    };
    // Created before the clock starts: with 256 partitions a contender's
    // 1,024 output partitions are not its work.
    kafka::create_topics(&setup.bootstrap, &topics, setup.partitions)?;
    let broker = process::broker_before();
    let started = Instant::now();
    let (mut child, group) = launch(setup, c, round, input)?;
    let usage = drain::until_drained(
        setup,
        c.name(),
        &mut child,
        (input, finish(&group)),
        started,
        broker,
    )
    .with_context(|| format!("its output: {}", contender_log(&group).display()));
    process::stop(child);
    // Counted only after a finished run; the topics go either way (left
    // behind they would weigh on the broker in later runs).
    let counted = usage.and_then(|usage| {
        check_outputs(setup, c, &topics, expected)?;
        Ok(usage)
    });
    clean_up(setup, &topics)?;
    let usage = counted?;
    Ok(Measurement {
        contender: c,
        seconds: usage.seconds,
        records_per_second: records as f64 / usage.seconds,
        cpu_seconds: usage.cpu_seconds,
        peak_rss_mb: usage.peak_rss_mb,
        broker_cpu_seconds: usage.broker_cpu_seconds,
        steady_records_per_second: usage.steady.map(|(n, secs)| n as f64 / secs),
    })
}

/// Creates the run's input (`<run id>-input`, `setup.partitions`) and fills
/// it with `records` orders; returns its name.
pub fn filled_input(setup: &Setup, records: u64) -> anyhow::Result<String> {
    let input = format!("{}-input", setup.run_id);
    kafka::create_topics(
        &setup.bootstrap,
        std::slice::from_ref(&input),
        setup.partitions,
    )?;
    let started = Instant::now();
    kafka::fill(&setup.bootstrap, &input, records, None)?;
    eprintln!(
        "filled {input} with {records} records in {:.1?}",
        started.elapsed()
    );
    Ok(input)
}

/// Round `round`'s order of `items`: rotated by the round, every other
/// round reversed too, so that none always runs first or after the same
/// neighbour (the broker's state, page cache and JIT carry over between
/// runs).
pub fn interleaved<T: Clone>(items: &[T], round: usize) -> Vec<T> {
    let mut order = items.to_vec();
    let n = order.len().max(1);
    if round % 2 == 1 {
        order.reverse();
        order.rotate_left((round + 1) % n);
    } else {
        order.rotate_left(round % n);
    }
    order
}

/// Now, for a report's title.
pub fn utc_now() -> String {
    Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The machine, broker and JVM a report's figures come from.
pub fn machine_line(setup: &Setup) -> String {
    let java = Command::new("java")
        .arg("-version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    let kafka = std::env::var("KAFKA_VERSION").unwrap_or_else(|_| "version not given".into());
    format!(
        "Machine: {} cores, {} ; broker on the same machine (Kafka {kafka}, one KRaft node; Kafka Streams the same version). Java: {java}. Kafka Streams: {} stream threads.",
        setup.threads,
        meminfo(),
        setup.threads
    )
}

fn meminfo() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<f64>().ok())
                    .unwrap_or(0.0)
            })
        })
        .map(|kb| format!("{:.0} GiB RAM", kb / 1024.0 / 1024.0))
        .unwrap_or_default()
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_round_runs_everything_in_a_new_order() {
        let firsts: Vec<Contender> = (0..6).map(|r| interleaved(&Contender::ALL, r)[0]).collect();
        for r in 0..6 {
            let mut order = interleaved(&Contender::ALL, r);
            order.sort_by_key(|c| c.name());
            order.dedup();
            assert_eq!(order.len(), Contender::ALL.len(), "round {r}");
        }
        let mut distinct = firsts.clone();
        distinct.sort_by_key(|c| c.name());
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            6,
            "each contender goes first once: {firsts:?}"
        );
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }
}
