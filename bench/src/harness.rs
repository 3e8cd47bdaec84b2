//! The side-by-side run: every contender processes the same pre-filled
//! input from the beginning under a fresh application id, interleaved
//! round by round (A B C A B C ...), measured from start until its consumer
//! group has committed the whole input (its outputs are committed with it).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::kafka;

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

    fn slug(self) -> &'static str {
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

pub struct Setup {
    pub bootstrap: String,
    pub repo: PathBuf,
    pub target: PathBuf,
    pub run_id: String,
    pub threads: usize,
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
        })
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
}

pub fn output_topics(setup: &Setup, c: Contender, round: usize) -> Vec<String> {
    let prefix = format!("{}-{}-{round}", setup.run_id, c.slug());
    match c {
        Contender::RawPipe | Contender::RawPipeTransactional => vec![format!("{prefix}-out")],
        _ => ["large", "eu", "other", "dlq"]
            .iter()
            .map(|s| format!("{prefix}-{s}"))
            .collect(),
    }
}

fn manifest(
    setup: &Setup,
    app_id: &str,
    input: &str,
    prefix: &str,
    guarantee: &str,
) -> anyhow::Result<PathBuf> {
    let yaml = format!(
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
    );
    let path = std::env::temp_dir().join(format!("{app_id}.yaml"));
    std::fs::write(&path, yaml)?;
    Ok(path)
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
        PARTITIONS,
    )?;
    let quiet = |cmd: &mut Command| {
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
    };
    let mut cmd = match c {
        Contender::MillraceExactlyOnce | Contender::MillraceAtLeastOnce => {
            let guarantee = if c == Contender::MillraceExactlyOnce {
                "ExactlyOnce"
            } else {
                "AtLeastOnce"
            };
            let path = manifest(setup, &app_id, input, &prefix, guarantee)?;
            let mut cmd = Command::new(binary(&setup.target, "millrace-runtime")?);
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
        Contender::KafkaStreamsExactlyOnce | Contender::KafkaStreamsAtLeastOnce => {
            let guarantee = if c == Contender::KafkaStreamsExactlyOnce {
                "exactly_once_v2"
            } else {
                "at_least_once"
            };
            let dir = setup.repo.join("bench/kstreams/target");
            anyhow::ensure!(dir.join("kstreams-orders-router-1.jar").exists(), "the Kafka Streams app is not built: run `make bench` (mvn package in bench/kstreams)");
            let classpath = format!(
                "{}:{}/*",
                dir.join("kstreams-orders-router-1.jar").display(),
                dir.join("lib").display()
            );
            let mut cmd = Command::new("java");
            cmd.args([
                "-cp",
                &classpath,
                "dev.millrace.bench.OrdersRouter",
                &setup.bootstrap,
                &app_id,
                input,
                &prefix,
                guarantee,
                &setup.threads.to_string(),
            ]);
            cmd
        }
        Contender::RawPipe | Contender::RawPipeTransactional => {
            let mut cmd = Command::new(std::env::current_exe()?);
            cmd.args([
                "pipe",
                "--input",
                input,
                "--output",
                &format!("{prefix}-out"),
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
    quiet(&mut cmd);
    Ok((cmd.spawn()?, app_id))
}

pub fn binary(target: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let path = target.join("release").join(name);
    anyhow::ensure!(
        path.exists(),
        "{} is missing: run `make bench` (it builds release binaries)",
        path.display()
    );
    Ok(path)
}

/// CPU seconds (user + system, all threads) and peak RSS of a live process.
fn process_usage(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are 11 and 12 after the name.
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    (ticks / 100.0, hwm_kb / 1024.0)
}

/// The local broker's process (a JVM running `kafka.Kafka`), when there is
/// exactly one.
fn broker_pid() -> Option<u32> {
    let mut found = std::fs::read_dir("/proc").ok()?.filter_map(|entry| {
        let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        args.iter().any(|a| *a == b"kafka.Kafka").then_some(pid)
    });
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

pub fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    for _ in 0..100 {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
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

/// What one run of a contender cost, from its start until its group had
/// committed the whole input.
#[derive(Clone, Copy, Debug)]
pub struct Usage {
    pub seconds: f64,
    pub cpu_seconds: f64,
    pub peak_rss_mb: f64,
    /// The broker's CPU seconds over the same span (it shares the cores);
    /// `None` when the broker is not one local process.
    pub broker_cpu_seconds: Option<f64>,
}

/// Waits for `child`'s group to commit the end of `input` as it is now,
/// measuring from `started` (the child's launch). The child keeps running.
/// `then` are internal topics the app writes while it reads the input (a
/// repartition topic): once the input is drained they are complete, and
/// are drained in turn.
pub fn until_drained(
    setup: &Setup,
    name: &str,
    child: &mut Child,
    (group, input, then): (&str, &str, &[String]),
    started: Instant,
    broker_before: Option<(u32, f64)>,
) -> anyhow::Result<Usage> {
    for topic in std::iter::once(input).chain(then.iter().map(String::as_str)) {
        let watch = kafka::DrainWatch::new(&setup.bootstrap, group, topic, PARTITIONS)?;
        loop {
            if let Some(status) = child.try_wait()? {
                anyhow::bail!("{name} exited early: {status}");
            }
            if watch.drained() {
                break;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(1800),
                "{name} did not finish in 30 minutes"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    // CPU time and VmHWM only grow: reading them once, at the end, is the peak.
    let (cpu_seconds, peak_rss_mb) = process_usage(child.id());
    Ok(Usage {
        seconds,
        cpu_seconds,
        peak_rss_mb,
        broker_cpu_seconds: broker_before.map(|(pid, before)| process_usage(pid).0 - before),
    })
}

/// The broker's process and its CPU seconds so far, to measure a run's
/// share against.
pub fn broker_before() -> Option<(u32, f64)> {
    broker_pid().map(|pid| (pid, process_usage(pid).0))
}

/// Runs one contender over the whole input and measures it.
pub fn measure(
    setup: &Setup,
    c: Contender,
    round: usize,
    input: &str,
    records: u64,
) -> anyhow::Result<Measurement> {
    let broker = broker_before();
    let started = Instant::now();
    let (mut child, group) = launch(setup, c, round, input)?;
    let usage = until_drained(
        setup,
        c.name(),
        &mut child,
        (&group, input, &[]),
        started,
        broker,
    );
    stop(child);
    let usage = usage?;
    clean_up(setup, &output_topics(setup, c, round))?;
    Ok(Measurement {
        contender: c,
        seconds: usage.seconds,
        records_per_second: records as f64 / usage.seconds,
        cpu_seconds: usage.cpu_seconds,
        peak_rss_mb: usage.peak_rss_mb,
        broker_cpu_seconds: usage.broker_cpu_seconds,
    })
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
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }

    #[test]
    fn usage_of_this_process_is_readable() {
        let (cpu, rss) = process_usage(std::process::id());
        assert!(cpu >= 0.0 && rss > 1.0, "{cpu} {rss}");
    }
}
