//! The routing comparison's report: results, ratios against the targets,
//! latency under load, every contender's settings, and the charts beside it.

use std::fmt::Write as _;

use crate::charts::{self, Bar, Curve};
use crate::harness::{self, Contender, Measurement, Setup};
use crate::routing::{capacity, percentile, Args, Failure, LatencyRun};
use crate::{jvm, pipe};

/// Writes `<run id>.md` and its charts into `args.results`; returns the
/// Markdown.
pub fn write(
    setup: &Setup,
    args: &Args,
    all: &[Measurement],
    failures: &[Failure],
    latency: &[LatencyRun],
) -> anyhow::Result<String> {
    std::fs::create_dir_all(&args.results)?;
    let throughput_png = format!("{}-throughput.png", setup.run_id);
    let latency_png = format!("{}-latency.png", setup.run_id);
    let bars: Vec<Bar> = Contender::ALL
        .iter()
        .filter_map(|c| {
            let rates: Vec<f64> = runs(all, *c).map(steady_or_launch).collect();
            (!rates.is_empty()).then(|| Bar {
                label: c.name().to_string(),
                median: harness::median(rates.clone()),
                low: rates.iter().copied().fold(f64::MAX, f64::min),
                high: rates.iter().copied().fold(0.0, f64::max),
            })
        })
        .collect();
    let curves: Vec<Curve<'_>> = latency
        .iter()
        .filter(|l| (l.load - 0.5).abs() < 1e-9)
        .map(|l| Curve {
            label: format!(
                "{} at {} records/s, run {}",
                l.contender.name(),
                l.rate,
                l.run + 1
            ),
            sorted_ms: &l.samples,
        })
        .collect();
    let mut out = String::new();
    let _ = writeln!(out, "# Millrace benchmark, {}\n", harness::utc_now());
    let _ = writeln!(out, "{}\n", harness::machine_line(setup));
    let _ = writeln!(out, "Input: {} JSON orders (~200 B) on {} partitions, each contender from the beginning under a fresh application id; {} round(s) after {} warm-up round(s) not counted, contenders interleaved in an order that changes every round (rotated, every other round reversed). Every run's four outputs are counted under read_committed before it is timed: exactly the expected records per topic under exactly-once, at least them under at-least-once; a run that fails the count is listed as failed, not timed.\n", args.records, setup.partitions, args.rounds, args.warmup_rounds);
    let _ = writeln!(out, "- **launch to done**: input records ÷ time from process start until done (start-up included): under exactly-once the group has committed the whole input; under at-least-once the outputs hold every expected record (Kafka Streams commits every 30 s by default there).\n- **steady**: the records done after the first progress the harness saw (a commit, or outputs; it polls every 100 ms) ÷ the time from then to done: start-up left out. The ratios use it.\n");
    results_table(&mut out, all);
    if !failures.is_empty() {
        let _ = writeln!(out, "\n**Failed runs** (not timed):\n");
        for f in failures {
            let _ = writeln!(
                out,
                "- round {}: {}: {}",
                f.round + 1,
                f.contender.name(),
                f.reason
            );
        }
    }
    ratios(&mut out, all, latency);
    let _ = writeln!(out, "\n![throughput]({throughput_png})");
    if !latency.is_empty() {
        latency_table(&mut out, latency);
    }
    if !curves.is_empty() {
        let _ = writeln!(out, "\n![latency at 50% load]({latency_png})");
    }
    settings(&mut out, setup);
    // The Markdown first: a chart that cannot be drawn (no font) must not
    // lose a run's figures.
    let file = args.results.join(format!("{}.md", setup.run_id));
    std::fs::write(&file, &out)?;
    eprintln!("written to {}", file.display());
    charts::bars(
        &args.results.join(&throughput_png),
        "Steady-state throughput (median, range over rounds)",
        "input records/s",
        &bars,
    )?;
    if !curves.is_empty() {
        charts::cdfs(
            &args.results.join(&latency_png),
            "End-to-end latency at 50% of each contender's capacity",
            &curves,
        )?;
    }
    Ok(out)
}

fn runs(all: &[Measurement], c: Contender) -> impl Iterator<Item = &Measurement> {
    all.iter().filter(move |m| m.contender == c)
}

fn steady_or_launch(m: &Measurement) -> f64 {
    m.steady_records_per_second.unwrap_or(m.records_per_second)
}

/// Median and range of `f` over a contender's runs.
fn spread(all: &[Measurement], c: Contender, f: impl Fn(&Measurement) -> f64) -> (f64, f64, f64) {
    let values: Vec<f64> = runs(all, c).map(f).collect();
    let low = values.iter().copied().fold(f64::MAX, f64::min);
    let high = values.iter().copied().fold(0.0, f64::max);
    (harness::median(values), low, high)
}

fn results_table(out: &mut String, all: &[Measurement]) {
    let _ = writeln!(out, "| contender | runs | records/s launch to done | range | records/s steady | range | CPU s | records per CPU s | peak RSS MB | broker CPU s | cores busy (contender + broker) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for c in Contender::ALL {
        let n = runs(all, c).count();
        if n == 0 {
            let _ = writeln!(out, "| {} | 0 | — | | — | | | | | | |", c.name());
            continue;
        }
        let (launch, l_low, l_high) = spread(all, c, |m| m.records_per_second);
        let (steady, s_low, s_high) = spread(all, c, steady_or_launch);
        let med = |f: fn(&Measurement) -> f64| harness::median(runs(all, c).map(f).collect());
        let cpu = med(|m| m.cpu_seconds);
        let records_per_cpu = med(|m| m.records_per_second * m.seconds / m.cpu_seconds.max(1e-9));
        let broker = runs(all, c)
            .map(|m| m.broker_cpu_seconds)
            .collect::<Option<Vec<f64>>>()
            .map(harness::median);
        // Both processes' CPU over the contender's wall time: near the
        // core count, the machine (not the contender) is the limit.
        let cores_busy = runs(all, c)
            .map(|m| {
                m.broker_cpu_seconds
                    .map(|b| (m.cpu_seconds + b) / m.seconds)
            })
            .collect::<Option<Vec<f64>>>()
            .map(harness::median);
        let shown = |v: Option<f64>, digits: usize| {
            v.map_or_else(|| "—".to_string(), |v| format!("{v:.digits$}"))
        };
        let _ = writeln!(
            out,
            "| {} | {n} | {launch:.0} | {l_low:.0}–{l_high:.0} | {steady:.0} | {s_low:.0}–{s_high:.0} | {cpu:.1} | {records_per_cpu:.0} | {:.0} | {} | {} |",
            c.name(),
            med(|m| m.peak_rss_mb),
            shown(broker, 1),
            shown(cores_busy, 2)
        );
    }
}

fn ratios(out: &mut String, all: &[Measurement], latency: &[LatencyRun]) {
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    let rss = |c| harness::median(runs(all, c).map(|m| m.peak_rss_mb).collect());
    let p99_at_half = |c: Contender| {
        harness::median(
            latency
                .iter()
                .filter(|l| l.contender == c && (l.load - 0.5).abs() < 1e-9)
                .map(|l| percentile(&l.samples, 0.99) as f64)
                .collect(),
        )
    };
    use Contender::*;
    let mut checks = vec![
        (
            "exactly-once steady throughput, Millrace / Kafka Streams",
            ratio(
                capacity(all, MillraceExactlyOnce),
                capacity(all, KafkaStreamsExactlyOnce),
            ),
            ">= 2",
            true,
            2.0,
        ),
        (
            "exactly-once peak RSS, Millrace / Kafka Streams (at its heap)",
            ratio(rss(MillraceExactlyOnce), rss(KafkaStreamsExactlyOnce)),
            "<= 0.25",
            false,
            0.25,
        ),
        (
            "at-least-once steady throughput, Millrace / raw pipe",
            ratio(capacity(all, MillraceAtLeastOnce), capacity(all, RawPipe)),
            ">= 0.8",
            true,
            0.8,
        ),
        (
            "exactly-once steady throughput, Millrace / transactional raw pipe",
            ratio(
                capacity(all, MillraceExactlyOnce),
                capacity(all, RawPipeTransactional),
            ),
            "(no target)",
            true,
            0.0,
        ),
    ];
    if !latency.is_empty() {
        checks.push((
            "p99 latency at 50% load, Millrace / Kafka Streams",
            ratio(
                p99_at_half(MillraceExactlyOnce),
                p99_at_half(KafkaStreamsExactlyOnce),
            ),
            "<= 1",
            false,
            1.0,
        ));
    }
    let _ = writeln!(
        out,
        "\n| ratio | measured | target | met |\n|---|---:|---|---|"
    );
    for (name, value, target, higher_is_better, bound) in checks {
        let met = if bound == 0.0 {
            String::from("—")
        } else if value.is_nan() {
            String::from("not measured")
        } else if higher_is_better && value >= bound || !higher_is_better && value <= bound {
            String::from("yes")
        } else if higher_is_better {
            format!("no: {:.0}% short", (1.0 - value / bound) * 100.0)
        } else {
            format!("no: {:.2}x over", value / bound)
        };
        let _ = writeln!(out, "| {name} | {value:.2} | {target} | {met} |");
    }
}

fn latency_table(out: &mut String, latency: &[LatencyRun]) {
    let _ = writeln!(out, "\nEnd-to-end latency (produce → visible under read_committed; the produce time travels in the record) at fractions of each contender's capacity (its median steady rate above), input produced at that fixed rate for the run while the harness's producer and reader share the cores; each run starts a new contender, which gets 10 s to start first. p50 and p99 are medians over the runs, max the highest.\n\n| contender | load | records/s | runs | samples | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut keys: Vec<(Contender, u64)> = Vec::new();
    for l in latency {
        let key = (l.contender, (l.load * 1000.0) as u64);
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    for (c, per_mille) in keys {
        let these: Vec<&LatencyRun> = latency
            .iter()
            .filter(|l| l.contender == c && (l.load * 1000.0) as u64 == per_mille)
            .collect();
        let med = |p: f64| {
            harness::median(
                these
                    .iter()
                    .map(|l| percentile(&l.samples, p) as f64)
                    .collect(),
            )
        };
        let _ = writeln!(
            out,
            "| {} | {}% | {} | {} | {} | {:.0} | {:.0} | {} |",
            c.name(),
            per_mille / 10,
            these[0].rate,
            these.len(),
            these.iter().map(|l| l.samples.len()).sum::<usize>(),
            med(0.5),
            med(0.99),
            these
                .iter()
                .filter_map(|l| l.samples.last())
                .max()
                .copied()
                .unwrap_or(0)
        );
    }
}

fn settings(out: &mut String, setup: &Setup) {
    let _ = writeln!(out, "\n## Every setting\n");
    let _ = writeln!(out, "- **Millrace** (`millrace-runtime run --manifest`, release build, one worker owning all {} tasks, one loop per core): the manifest below (`commitInterval: 100ms`, the guarantee; everything else the runtime's defaults: docs/runtime.md).\n\n```yaml\n{}```", setup.partitions, harness::manifest_text(setup, "<application id>", "<input>", "<prefix>", "ExactlyOnce | AtLeastOnce"));
    let _ = writeln!(
        out,
        "- **Kafka Streams** (`bench/kstreams` `OrdersRouter`): JVM options `{}`; {}; fixed in the app: `application.id`, `bootstrap.servers`, `state.dir`, ByteArray key and value serdes, a streaming Jackson parse of `status`, `amount`, `region` (the rest skipped, no tree). Everything else is Kafka Streams' default, among them `commit.interval.ms` (100 under exactly_once_v2, 30000 under at_least_once) and G1.",
        setup.kstreams.options_described(),
        jvm::listed(&jvm::router_settings(setup, "exactly_once_v2 | at_least_once"))
    );
    let _ = writeln!(out, "- **raw pipes** (`millrace-bench pipe`): one thread per core, each owning every n-th partition; no parsing; the record at offset o to output o % 4 ({}); consumers with the runtime's tuning (`{}`), read_committed; idempotent producers with the runtime's `linger.ms` (20 at-least-once, 50 exactly-once) and `partitioner=murmur2_random`; batches of 100 ms. At-least-once: a batch's offsets committed asynchronously once all its outputs are acknowledged, never a flush. Exactly-once: two transactional producers per thread alternating batches, one committing (on its own thread) while the loop fills the other.", pipe::OUTPUTS.join(", "), millrace_runtime::engine::clients::consumer_tuning(setup.threads).iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", "));
}
