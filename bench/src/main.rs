//! `millrace-bench`: Millrace side by side with Kafka Streams and a raw
//! rdkafka pipe, on the same broker and input, in one run. See bench/README.md.

mod harness;
mod kafka;
mod pipe;
mod query;
mod state;
mod state_report;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use harness::{Contender, Measurement, Setup, PARTITIONS};

#[derive(Parser)]
#[command(about = "Benchmark Millrace against Kafka Streams and the raw limit")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the comparison and print (and save) the report.
    Run {
        #[arg(long, env = "KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
        bootstrap: String,
        /// Input records (~200 bytes of JSON each).
        #[arg(long, default_value_t = 5_000_000)]
        records: u64,
        /// Rounds; contenders are interleaved within each round.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Rounds run first and not counted: a freshly started broker's JVM
        /// is still compiling its hot paths (its first round used 2-3x the
        /// CPU of later ones).
        #[arg(long, default_value_t = 1)]
        warmup_rounds: usize,
        /// Records/s for the latency mode (0: skip it).
        #[arg(long, default_value_t = 20_000)]
        latency_rate: u64,
        #[arg(long, default_value_t = 20)]
        latency_seconds: u64,
        /// Where the report goes.
        #[arg(long, default_value = "bench/results")]
        results: PathBuf,
    },
    /// The stateful benchmark: a running count per key, Millrace and
    /// Kafka Streams side by side, with throughput and recovery after
    /// SIGKILL and after a lost state directory (bench/README.md).
    State {
        #[arg(long, env = "KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
        bootstrap: String,
        #[command(flatten)]
        args: state::Args,
    },
    /// The query benchmark: query latency and rate against one worker
    /// while it drains a backlog, and what serving them costs it
    /// (bench/README.md).
    Query {
        #[arg(long, env = "KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
        bootstrap: String,
        #[command(flatten)]
        args: query::Args,
    },
    /// Create `topic` (16 partitions) and fill it with the benchmark's
    /// orders, for profiling one contender by hand (bench/README.md).
    Fill {
        #[arg(long, env = "KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
        bootstrap: String,
        #[arg(long)]
        topic: String,
        #[arg(long, default_value_t = 1_000_000)]
        records: u64,
    },
    /// The raw-limit contender (started by `run`).
    Pipe {
        #[arg(long)]
        bootstrap: String,
        #[arg(long)]
        input: String,
        #[arg(long)]
        output: String,
        #[arg(long)]
        group: String,
        #[arg(long)]
        transactional: bool,
        /// Threads, each owning every n-th partition.
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Pipe {
            bootstrap,
            input,
            output,
            group,
            transactional,
            threads,
        } => pipe::run(
            &pipe::Pipe {
                bootstrap: &bootstrap,
                input: &input,
                output: &output,
                group: &group,
                transactional,
            },
            threads,
        ),
        Cmd::State { bootstrap, args } => state::run(&Setup::new(bootstrap)?, &args),
        Cmd::Query { bootstrap, args } => query::run(&Setup::new(bootstrap)?, &args),
        Cmd::Fill {
            bootstrap,
            topic,
            records,
        } => {
            kafka::create_topics(&bootstrap, std::slice::from_ref(&topic), PARTITIONS)?;
            kafka::fill(&bootstrap, &topic, records, None)
        }
        Cmd::Run {
            bootstrap,
            records,
            rounds,
            warmup_rounds,
            latency_rate,
            latency_seconds,
            results,
        } => run(
            bootstrap,
            records,
            Rounds {
                counted: rounds,
                warmup: warmup_rounds,
            },
            latency_rate,
            latency_seconds,
            results,
        ),
    }
}

struct Rounds {
    counted: usize,
    warmup: usize,
}

fn run(
    bootstrap: String,
    records: u64,
    rounds: Rounds,
    latency_rate: u64,
    latency_seconds: u64,
    results: PathBuf,
) -> anyhow::Result<()> {
    let setup = Setup::new(bootstrap)?;
    let input = format!("{}-input", setup.run_id);
    kafka::create_topics(&setup.bootstrap, std::slice::from_ref(&input), PARTITIONS)?;
    let fill_started = Instant::now();
    kafka::fill(&setup.bootstrap, &input, records, None)?;
    eprintln!(
        "filled {input} with {records} records in {:.1?}",
        fill_started.elapsed()
    );

    let mut all: Vec<Measurement> = Vec::new();
    for round in 0..rounds.warmup + rounds.counted {
        let warmup = round < rounds.warmup;
        for c in Contender::ALL {
            let m = harness::measure(&setup, c, round, &input, records)?;
            eprintln!(
                "{} {}: {:32} {:>7.1} s {:>10.0} records/s  {:>6.1} CPU s  {:>6.0} MB  broker {:>5.1} CPU s",
                if warmup { "warm-up" } else { "round" },
                round + 1,
                c.name(),
                m.seconds,
                m.records_per_second,
                m.cpu_seconds,
                m.peak_rss_mb,
                m.broker_cpu_seconds.unwrap_or(f64::NAN)
            );
            if !warmup {
                all.push(m);
            }
        }
    }

    let mut latency = BTreeMap::new();
    if latency_rate > 0 {
        for c in [
            Contender::MillraceExactlyOnce,
            Contender::KafkaStreamsExactlyOnce,
        ] {
            latency.insert(
                c.name(),
                measure_latency(&setup, c, latency_rate, latency_seconds)?,
            );
        }
    }
    harness::clean_up(&setup, std::slice::from_ref(&input))?;
    let report = report(&setup, records, &rounds, &all, &latency);
    println!("{report}");
    std::fs::create_dir_all(&results)?;
    let file = results.join(format!("{}.md", setup.run_id));
    std::fs::write(&file, &report)?;
    eprintln!("written to {}", file.display());
    Ok(())
}

/// Latency mode: input produced at a fixed rate while the contender runs;
/// latency = time a read_committed consumer sees the output − the produce
/// time carried in the record. The contender first gets 10 s to start.
fn measure_latency(
    setup: &Setup,
    c: Contender,
    rate: u64,
    seconds: u64,
) -> anyhow::Result<Vec<u64>> {
    let input = format!("{}-lat-{}", setup.run_id, rate);
    let input = format!("{input}-{}", c.name().split(' ').next().unwrap_or("x"));
    kafka::create_topics(&setup.bootstrap, std::slice::from_ref(&input), PARTITIONS)?;
    let round = 1000;
    let (child, _) = harness::launch(setup, c, round, &input)?;
    std::thread::sleep(Duration::from_secs(10));
    let outputs = harness::output_topics(setup, c, round);
    let until = Instant::now() + Duration::from_secs(seconds);
    let reader = {
        let (bootstrap, outputs) = (setup.bootstrap.clone(), outputs.clone());
        std::thread::spawn(move || {
            kafka::latencies(&bootstrap, &outputs, until, Duration::from_secs(3))
        })
    };
    std::thread::sleep(Duration::from_secs(2)); // the reader joins its group
    kafka::fill(&setup.bootstrap, &input, rate * seconds, Some(rate))?;
    let mut samples = reader.join().expect("latency reader");
    harness::stop(child);
    harness::clean_up(setup, &[outputs, vec![input]].concat())?;
    samples.sort_unstable();
    Ok(samples)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn report(
    setup: &Setup,
    records: u64,
    rounds: &Rounds,
    all: &[Measurement],
    latency: &BTreeMap<&str, Vec<u64>>,
) -> String {
    let med = |c: Contender, f: fn(&Measurement) -> f64| {
        harness::median(all.iter().filter(|m| m.contender == c).map(f).collect())
    };
    let mut out = String::new();
    let _ = writeln!(out, "# Millrace benchmark, {}\n", harness::utc_now());
    let _ = writeln!(out, "{}\n", harness::machine_line(setup));
    let _ = writeln!(out, "Input: {records} JSON orders (~200 B) on {PARTITIONS} partitions, each contender from the beginning under a fresh application id; {} round(s) after {} warm-up round(s) not counted, contenders interleaved; medians, and the range of records/s over the rounds.\n", rounds.counted, rounds.warmup);
    let _ = writeln!(out, "| contender | records/s | range | CPU s | records per CPU s | peak RSS MB | broker CPU s | cores busy (contender + broker) |\n|---|---:|---:|---:|---:|---:|---:|---:|");
    for c in Contender::ALL {
        let rps = med(c, |m| m.records_per_second);
        let cpu = med(c, |m| m.cpu_seconds);
        let per_cpu = if cpu > 0.0 { records as f64 / cpu } else { 0.0 };
        let broker = all
            .iter()
            .filter(|m| m.contender == c)
            .map(|m| m.broker_cpu_seconds)
            .collect::<Option<Vec<f64>>>()
            .map(harness::median);
        // Both processes' CPU over the contender's wall time: near the
        // core count, the machine (not the contender) is the limit.
        let cores_busy = all
            .iter()
            .filter(|m| m.contender == c)
            .map(|m| {
                m.broker_cpu_seconds
                    .map(|b| (m.cpu_seconds + b) / m.seconds)
            })
            .collect::<Option<Vec<f64>>>()
            .map(harness::median);
        let shown = |v: Option<f64>, digits: usize| {
            v.map_or_else(|| "—".to_string(), |v| format!("{v:.digits$}"))
        };
        let (low, high) = all
            .iter()
            .filter(|m| m.contender == c)
            .map(|m| m.records_per_second)
            .fold((f64::MAX, 0.0_f64), |(l, h), v| (l.min(v), h.max(v)));
        let _ = writeln!(
            out,
            "| {} | {rps:.0} | {low:.0}–{high:.0} | {cpu:.1} | {per_cpu:.0} | {:.0} | {} | {} |",
            c.name(),
            med(c, |m| m.peak_rss_mb),
            shown(broker, 1),
            shown(cores_busy, 2)
        );
    }
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let rps = |c| med(c, |m| m.records_per_second);
    let rss = |c| med(c, |m| m.peak_rss_mb);
    let checks = [
        (
            "exactly-once throughput, Millrace / Kafka Streams",
            ratio(
                rps(Contender::MillraceExactlyOnce),
                rps(Contender::KafkaStreamsExactlyOnce),
            ),
            ">= 2",
            true,
            2.0,
        ),
        (
            "exactly-once peak RSS, Millrace / Kafka Streams",
            ratio(
                rss(Contender::MillraceExactlyOnce),
                rss(Contender::KafkaStreamsExactlyOnce),
            ),
            "<= 0.2",
            false,
            0.2,
        ),
        (
            "at-least-once throughput, Millrace / raw pipe",
            ratio(rps(Contender::MillraceAtLeastOnce), rps(Contender::RawPipe)),
            ">= 0.8",
            true,
            0.8,
        ),
        (
            "Millrace exactly-once / Millrace at-least-once",
            ratio(
                rps(Contender::MillraceExactlyOnce),
                rps(Contender::MillraceAtLeastOnce),
            ),
            ">= 0.9",
            true,
            0.9,
        ),
    ];
    let _ = writeln!(
        out,
        "\n| ratio | measured | target | met |\n|---|---:|---|---|"
    );
    for (name, value, target, higher_is_better, bound) in checks {
        let met = if higher_is_better {
            value >= bound
        } else {
            value <= bound
        };
        let gap = if met {
            String::from("yes")
        } else if higher_is_better {
            format!("no: {:.0}% short", (1.0 - value / bound) * 100.0)
        } else {
            format!("no: {:.1}x over", value / bound)
        };
        let _ = writeln!(out, "| {name} | {value:.2} | {target} | {gap} |");
    }
    if !latency.is_empty() {
        let _ = writeln!(out, "\n| end-to-end latency (produce → visible under read_committed) | samples | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|");
        for (name, samples) in latency {
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {} | {} |",
                samples.len(),
                percentile(samples, 0.5),
                percentile(samples, 0.99),
                samples.last().copied().unwrap_or(0)
            );
        }
    }
    out
}
