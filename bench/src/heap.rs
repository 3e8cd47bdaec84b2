//! The Kafka Streams heap sweep (`millrace-bench heap`): the exactly-once
//! router at each `-Xmx` and with none, interleaved, to find the smallest
//! heap that keeps its throughput within 5 % of the unbounded JVM's; the
//! routing comparison then runs Kafka Streams at that heap
//! (`jvm::SIZED_HEAP`), so its RSS is what a sized deployment uses rather
//! than what a JVM on a 24 GiB machine chooses to grow.

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::charts::{self, Bar};
use crate::harness::{self, Contender, Measurement, Setup};
use crate::jvm::KafkaStreams;

#[derive(clap::Args)]
pub struct Args {
    /// Input records (~200 bytes of JSON each).
    #[arg(long, default_value_t = 5_000_000)]
    records: u64,
    /// Heaps to try (`-Xmx` values); `none` runs without -Xmx.
    #[arg(long, value_delimiter = ',', default_values_t = ["none".to_string(), "1g".to_string(), "512m".to_string(), "256m".to_string(), "128m".to_string(), "64m".to_string()])]
    heaps: Vec<String>,
    /// Rounds, each running every heap once, in an order that changes.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// How much slower than without -Xmx a heap may be and still count.
    #[arg(long, default_value_t = 0.05)]
    tolerance: f64,
    #[arg(long, default_value = "bench/results")]
    results: PathBuf,
}

struct Run {
    heap: String,
    measured: anyhow::Result<Measurement>,
}

pub fn run(setup: &Setup, args: &Args) -> anyhow::Result<()> {
    let input = harness::filled_input(setup, args.records)?;
    // One unmeasured run first: the broker's JIT warms up on it.
    harness::measure(
        setup,
        Contender::KafkaStreamsExactlyOnce,
        0,
        &input,
        args.records,
    )?;
    let mut runs = Vec::new();
    for round in 0..args.rounds {
        let heaps: Vec<(usize, &String)> = args.heaps.iter().enumerate().collect();
        for (index, heap) in harness::interleaved(&heaps, round) {
            let sized = setup.clone().with_kstreams(KafkaStreams {
                heap: (heap != "none").then(|| heap.clone()),
                settings: setup.kstreams.settings.clone(),
            });
            let measured = harness::measure(
                &sized,
                Contender::KafkaStreamsExactlyOnce,
                100 * (round + 1) + index,
                &input,
                args.records,
            );
            match &measured {
                Ok(m) => eprintln!(
                    "round {}: heap {heap:>5}: {:>9.0} records/s steady, {:>5.0} MB",
                    round + 1,
                    m.steady_records_per_second.unwrap_or(f64::NAN),
                    m.peak_rss_mb
                ),
                Err(e) => eprintln!("round {}: heap {heap}: FAILED: {e:#}", round + 1),
            }
            runs.push(Run {
                heap: heap.clone(),
                measured,
            });
        }
    }
    harness::clean_up(setup, std::slice::from_ref(&input))?;
    let report = report(setup, args, &runs)?;
    println!("{report}");
    Ok(())
}

/// Median steady rate, range and median peak RSS at one heap; `None` when
/// a run at that heap failed (a heap too small fails, it is not slow).
fn at(runs: &[Run], heap: &str) -> Option<(f64, f64, f64, f64)> {
    let measured: Vec<&Measurement> = runs
        .iter()
        .filter(|r| r.heap == heap)
        .map(|r| r.measured.as_ref().ok())
        .collect::<Option<Vec<_>>>()?;
    let rates: Vec<f64> = measured
        .iter()
        .map(|m| m.steady_records_per_second.unwrap_or(m.records_per_second))
        .collect();
    Some((
        harness::median(rates.clone()),
        rates.iter().copied().fold(f64::MAX, f64::min),
        rates.iter().copied().fold(0.0, f64::max),
        harness::median(measured.iter().map(|m| m.peak_rss_mb).collect()),
    ))
}

/// The smallest heap (by bytes) within `tolerance` of the unbounded JVM.
fn smallest_within(runs: &[Run], heaps: &[String], tolerance: f64) -> Option<String> {
    let unbounded = at(runs, "none")?.0;
    heaps
        .iter()
        .filter(|h| *h != "none")
        .filter(|h| at(runs, h).is_some_and(|(rate, ..)| rate >= unbounded * (1.0 - tolerance)))
        .min_by_key(|h| bytes(h))
        .cloned()
}

fn bytes(heap: &str) -> u64 {
    let (digits, unit) = heap.split_at(heap.trim_end_matches(char::is_alphabetic).len());
    let n: u64 = digits.parse().unwrap_or(u64::MAX / (1 << 30));
    n * match unit.to_ascii_lowercase().as_str() {
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => 1,
    }
}

fn report(setup: &Setup, args: &Args, runs: &[Run]) -> anyhow::Result<String> {
    std::fs::create_dir_all(&args.results)?;
    let mut out = String::new();
    let _ = writeln!(out, "# Kafka Streams heap sweep, {}\n", harness::utc_now());
    let _ = writeln!(out, "{}\n", harness::machine_line(setup));
    let _ = writeln!(out, "The exactly-once router (`OrdersRouter`, the routing comparison's settings) over {} records, {} round(s) after one unmeasured run, heaps interleaved in an order that changes every round; every run's outputs counted. Steady rate: records committed after the first commit ÷ time from then to the end.\n", args.records, args.rounds);
    let _ = writeln!(
        out,
        "| heap | records/s steady (median) | range | peak RSS MB (median) |\n|---|---:|---:|---:|"
    );
    let mut bars = Vec::new();
    for heap in &args.heaps {
        match at(runs, heap) {
            Some((rate, low, high, rss)) => {
                let _ = writeln!(
                    out,
                    "| {heap} | {rate:.0} | {low:.0}–{high:.0} | {rss:.0} |"
                );
                bars.push(Bar {
                    label: format!("-Xmx {heap} ({rss:.0} MB)"),
                    median: rate,
                    low,
                    high,
                });
            }
            None => {
                let reason = runs
                    .iter()
                    .filter(|r| &r.heap == heap)
                    .find_map(|r| r.measured.as_ref().err())
                    .map(|e| format!("{e:#}"))
                    .unwrap_or_default();
                let _ = writeln!(out, "| {heap} | failed: {reason} | | |");
            }
        }
    }
    let chosen = smallest_within(runs, &args.heaps, args.tolerance);
    let _ = writeln!(
        out,
        "\nSmallest heap within {:.0} % of the unbounded JVM's throughput: **{}**.",
        args.tolerance * 100.0,
        chosen.as_deref().unwrap_or("none of those tried")
    );
    let png = format!("{}-heap.png", setup.run_id);
    let _ = writeln!(out, "\n![throughput per heap]({png})");
    // The Markdown first: a chart that cannot be drawn must not lose the figures.
    std::fs::write(args.results.join(format!("{}-heap.md", setup.run_id)), &out)?;
    charts::bars(
        &args.results.join(&png),
        "Kafka Streams exactly-once, steady throughput per heap",
        "input records/s",
        &bars,
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heap_sizes_compare_by_bytes() {
        assert!(bytes("64m") < bytes("512m"));
        assert!(bytes("512m") < bytes("1g"));
        assert_eq!(bytes("2g"), 2 << 30);
    }
}
