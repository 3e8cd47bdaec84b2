//! The stateless routing comparison (`millrace-bench run`): every contender
//! over one pre-filled input, rounds interleaved in an order that changes
//! every round, every run's outputs counted before it is timed; then end-to-end
//! latency at fixed fractions of each contender's measured capacity.

use std::time::{Duration, Instant};

use crate::harness::{self, Contender, Measurement, Setup};
use crate::{kafka, process, routing_report};

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Input records (~200 bytes of JSON each).
    #[arg(long, default_value_t = 5_000_000)]
    pub records: u64,
    /// Rounds; contenders are interleaved within each round, in an order
    /// that changes from round to round.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Rounds run first and not counted: a freshly started broker's JVM
    /// is still compiling its hot paths (its first round used 2-3x the
    /// CPU of later ones).
    #[arg(long, default_value_t = 1)]
    pub warmup_rounds: usize,
    /// Loads of the latency runs, as fractions of each contender's measured
    /// capacity (its median steady-state rate); empty: skip them.
    #[arg(long, value_delimiter = ',', default_values_t = [0.25, 0.5, 0.8])]
    pub latency_loads: Vec<f64>,
    /// Latency runs per contender and load.
    #[arg(long, default_value_t = 2)]
    pub latency_runs: usize,
    /// Seconds of produced input per latency run.
    #[arg(long, default_value_t = 20)]
    pub latency_seconds: u64,
    /// Partitions of the input and of every output: the tasks each
    /// contender runs (`--partitions 256`: the many-tasks variant).
    #[arg(long, default_value_t = crate::harness::PARTITIONS)]
    pub partitions: i32,
    /// Only these contenders (by slug: mr-eos, ks-eos, raw-eos, mr-alo,
    /// ks-alo, raw-alo); all when empty.
    #[arg(long, value_delimiter = ',')]
    pub contenders: Vec<String>,
    /// Where the report and its charts go.
    #[arg(long, default_value = "bench/results")]
    pub results: std::path::PathBuf,
}

/// A run that failed (the contender exited, or its outputs did not count
/// up): reported, never timed.
pub struct Failure {
    pub contender: Contender,
    pub round: usize,
    pub reason: String,
}

/// One latency run: a contender at a load (records/s), sorted samples (ms).
pub struct LatencyRun {
    pub contender: Contender,
    /// Which of the runs at this load (from 0).
    pub run: usize,
    pub load: f64,
    pub rate: u64,
    pub samples: Vec<u64>,
}

pub fn run(setup: &Setup, args: &Args) -> anyhow::Result<()> {
    let input = harness::filled_input(setup, args.records)?;

    let chosen: Vec<Contender> = Contender::ALL
        .into_iter()
        .filter(|c| args.contenders.is_empty() || args.contenders.iter().any(|s| s == c.slug()))
        .collect();
    anyhow::ensure!(
        !chosen.is_empty(),
        "--contenders names none of {:?}",
        Contender::ALL.map(Contender::slug)
    );
    let mut all: Vec<Measurement> = Vec::new();
    let mut failures: Vec<Failure> = Vec::new();
    for round in 0..args.warmup_rounds + args.rounds {
        let warmup = round < args.warmup_rounds;
        for c in harness::interleaved(&chosen, round) {
            match harness::measure(setup, c, round, &input, args.records) {
                Ok(m) => {
                    eprintln!(
                        "{} {}: {:32} {:>7.1} s {:>10.0} records/s (steady {:>10.0})  {:>6.1} CPU s  {:>6.0} MB",
                        if warmup { "warm-up" } else { "round" },
                        round + 1,
                        c.name(),
                        m.seconds,
                        m.records_per_second,
                        m.steady_records_per_second.unwrap_or(f64::NAN),
                        m.cpu_seconds,
                        m.peak_rss_mb,
                    );
                    if !warmup {
                        all.push(m);
                    }
                }
                Err(e) => {
                    eprintln!(
                        "{} {}: {} FAILED: {e:#}",
                        if warmup { "warm-up" } else { "round" },
                        round + 1,
                        c.name()
                    );
                    failures.push(Failure {
                        contender: c,
                        round,
                        reason: format!("{e:#}"),
                    });
                }
            }
        }
    }

    let mut latency = Vec::new();
    for run in 0..args.latency_runs {
        for &load in &args.latency_loads {
            for c in [
                Contender::MillraceExactlyOnce,
                Contender::KafkaStreamsExactlyOnce,
            ]
            .into_iter()
            .filter(|c| chosen.contains(c))
            {
                let capacity = capacity(&all, c);
                if capacity <= 0.0 {
                    continue;
                }
                let rate = (capacity * load) as u64;
                let samples = measure_latency(
                    setup,
                    c,
                    (run, (load * 100.0).round() as usize),
                    rate,
                    args.latency_seconds,
                )?;
                eprintln!(
                    "latency {}: {} at {:.0}% ({rate}/s): {} samples, p99 {} ms",
                    run + 1,
                    c.name(),
                    load * 100.0,
                    samples.len(),
                    percentile(&samples, 0.99)
                );
                latency.push(LatencyRun {
                    contender: c,
                    run,
                    load,
                    rate,
                    samples,
                });
            }
        }
    }
    harness::clean_up(setup, std::slice::from_ref(&input))?;
    let report = routing_report::write(setup, args, &all, &failures, &latency)?;
    println!("{report}");
    anyhow::ensure!(
        failures.is_empty(),
        "{} run(s) failed (listed in the report)",
        failures.len()
    );
    Ok(())
}

/// A contender's measured capacity: its median steady-state rate (its
/// launch-to-done rate where no steady span was seen).
pub fn capacity(all: &[Measurement], c: Contender) -> f64 {
    harness::median(
        all.iter()
            .filter(|m| m.contender == c)
            .map(|m| m.steady_records_per_second.unwrap_or(m.records_per_second))
            .collect(),
    )
}

/// Latency mode: input produced at a fixed rate while the contender runs;
/// latency = time a read_committed consumer sees the output − the produce
/// time carried in the record. The contender first gets 10 s to start.
fn measure_latency(
    setup: &Setup,
    c: Contender,
    (run, load_percent): (usize, usize),
    rate: u64,
    seconds: u64,
) -> anyhow::Result<Vec<u64>> {
    let input = format!("{}-lat-{run}-{rate}-{}", setup.run_id, c.slug());
    kafka::create_topics(
        &setup.bootstrap,
        std::slice::from_ref(&input),
        setup.partitions,
    )?;
    // Outputs and application id of their own per run and load.
    let round = 1000 * (run + 1) + load_percent;
    let outputs = harness::output_topics(setup, c, round);
    let (mut child, _) = harness::launch(setup, c, round, &input)?;
    let sampled = (|| {
        std::thread::sleep(Duration::from_secs(10));
        let until = Instant::now() + Duration::from_secs(seconds);
        let reader = {
            let (bootstrap, outputs) = (setup.bootstrap.clone(), outputs.clone());
            std::thread::spawn(move || {
                kafka::latencies(&bootstrap, &outputs, until, Duration::from_secs(3))
            })
        };
        std::thread::sleep(Duration::from_secs(2)); // the reader joins its group
        kafka::fill(&setup.bootstrap, &input, rate * seconds, Some(rate))?;
        let samples = reader.join().expect("latency reader");
        // A contender that died, or wrote nothing, has no latency (a p99 of
        // 0 ms would read as a win).
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("{} exited during the latency run: {status}", c.name());
        }
        anyhow::ensure!(!samples.is_empty(), "{}: no output seen", c.name());
        Ok(samples)
    })();
    process::stop(child);
    harness::clean_up(setup, &[outputs, vec![input]].concat())?;
    let mut samples = sampled?;
    samples.sort_unstable();
    Ok(samples)
}

pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}
