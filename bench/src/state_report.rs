//! The stateful benchmark's report: a table per topology with its ratios,
//! then the recovery runs with their restore timelines (PNG beside it).

use std::fmt::Write as _;

use crate::charts;
use crate::drain::Usage;
use crate::harness::{self, Setup, PARTITIONS};
use crate::state::{Args, Contender, Measured, Recovery, Workload, TAIL};
use crate::{jvm, kafka};

/// The report's Markdown; its charts are written to `args.results`.
pub fn report(
    setup: &Setup,
    args: &Args,
    measured: &[Measured],
    recoveries: &[Recovery],
) -> anyhow::Result<String> {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Millrace stateful benchmark, {}\n",
        harness::utc_now()
    );
    let _ = writeln!(out, "{}\n", harness::machine_line(setup));
    let _ = writeln!(
        out,
        "Kafka Streams: JVM options `{}`; settings over the app's own: {} (the transactional-stores contender adds `enable.transactional.statestores=true`).\n",
        setup.kstreams.options_described(),
        if setup.kstreams.settings.is_empty() {
            "none".to_string()
        } else {
            jvm::listed(&setup.kstreams.settings)
        }
    );
    let _ = writeln!(out, "Each topology reads its own input of {} records (~80 B of JSON) from {PARTITIONS} partitions and writes every update to one output topic, exactly once (RocksDB stores bounded to 64 MiB in Kafka Streams; Millrace's `aggregate` and `join` steps); {} round(s) after {} warm-up round(s), contenders alternating who goes first; medians, and the range of records/s. Every run's output is counted under read_committed: exactly one record per input record. Rates: **launch to done** is input records ÷ the time from process start until the group has committed the whole input (start-up and, for a join, reading the table included); **steady** is the records committed after the first commit the harness saw (it polls every 100 ms) ÷ the time from then until done. Ratios use the steady rate.\n", args.records, args.rounds, args.warmup_rounds);
    let _ = writeln!(
        out,
        "- running count per key: a count and sum per record key, {} keys.",
        args.keys
    );
    let _ = writeln!(out, "- regrouped, per 1-minute window: records with distinct keys regrouped by a value field ({} groups) through a repartition topic, then counted and summed per one-minute tumbling window of the event time in the value (1 ms of event time between records; an hour of grace, longer than the input's event time, so no record is late however the partitions interleave, and windows stay open for the run).", args.groups);
    let _ = writeln!(out, "- stream–table join: the running count's input ({} keys) left-joined by record key with a compacted table topic of {} customers (`{{\"name\":..,\"tier\":..}}`, written before the input; every tenth key has none, so a tenth of the outputs carry `\"name\":null`) and written out as `{{\"id\":..,\"n\":..,\"name\":..}}`; the table topic is the store's changelog in both (Kafka Streams: `topology.optimization=all`).\n", args.keys, (0..args.keys).filter(|n| kafka::in_table(*n)).count());
    for workload in Workload::ALL {
        table(&mut out, args, measured, workload);
    }
    let _ = writeln!(out, "\nRecovery (running count per key): {} keys of state (one record per key, so the changelog holds {} records), then {TAIL} more records appended before each restart; a restart is timed from the process start until its group has committed them. Restored records are as each contender reports them (Millrace: `/tasks`; Kafka Streams: its state restore listener). Restore rate = restored records ÷ that time (start-up included).\n", args.recovery_keys, args.recovery_keys);
    let _ = writeln!(out, "| contender | initial load s | after SIGKILL: s | restored | after losing the state directory: s | restored | restore rate, records/s |\n|---|---:|---:|---:|---:|---:|---:|");
    for r in recoveries {
        let _ = writeln!(
            out,
            "| {} | {:.1} | {:.2} | {} | {:.2} | {} | {:.0} |",
            r.contender.name(),
            r.load.seconds,
            r.after_kill.seconds,
            r.after_kill.restored,
            r.after_loss.seconds,
            r.after_loss.restored,
            r.after_loss.restored as f64 / r.after_loss.seconds
        );
    }
    let phases = [
        ("kill", "after SIGKILL", false),
        ("loss", "after losing the state directory", true),
    ];
    let _ = writeln!(out, "\nRestore timelines: changelog records restored, sampled every 100 ms from the restart (Millrace's `/tasks`; Kafka Streams' restored batches), each line ending where the contender had committed the new input.\n");
    for (slug, phase, lost) in phases {
        let png = format!("{}-restore-{slug}.png", setup.run_id);
        let series: Vec<charts::Progress> = recoveries
            .iter()
            .map(|r| charts::Progress {
                label: r.contender.name().to_string(),
                points: r
                    .restart(lost)
                    .timeline
                    .iter()
                    .map(|(s, n)| (*s, *n as f64))
                    .collect(),
                done: r.restart(lost).seconds,
            })
            .collect();
        charts::progress(
            &args.results.join(&png),
            &format!("Restore {phase}, {} keys of state", args.recovery_keys),
            "records restored",
            &series,
        )?;
        let _ = writeln!(out, "![restore {phase}]({png})\n");
    }
    Ok(out)
}

/// One topology's results and ratios.
fn table(out: &mut String, args: &Args, measured: &[Measured], workload: Workload) {
    let runs = |c: Contender| {
        measured
            .iter()
            .filter(move |m| m.contender == c && m.workload == workload)
    };
    let med = |c: Contender, f: fn(&Usage) -> f64| {
        harness::median(runs(c).map(|m| f(&m.usage)).collect())
    };
    let _ = writeln!(out, "## {}\n", workload.name());
    let _ = writeln!(out, "| contender | records/s launch to done | range | records/s steady | range | CPU s | records per CPU s | peak RSS MB | broker CPU s |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let records = args.records as f64;
    let spread = |c: Contender, rate: &dyn Fn(&Usage) -> f64| {
        let rates: Vec<f64> = runs(c).map(|m| rate(&m.usage)).collect();
        let (low, high) = rates
            .iter()
            .fold((f64::MAX, 0.0_f64), |(l, h), v| (l.min(*v), h.max(*v)));
        (harness::median(rates), low, high)
    };
    let launch = |u: &Usage| records / u.seconds;
    let steady = |u: &Usage| u.steady.map_or(records / u.seconds, |(n, s)| n as f64 / s);
    for c in Contender::ALL {
        let (rate, low, high) = spread(c, &launch);
        let (steady_rate, s_low, s_high) = spread(c, &steady);
        let cpu = med(c, |u| u.cpu_seconds);
        let _ = writeln!(
            out,
            "| {} | {rate:.0} | {low:.0}–{high:.0} | {steady_rate:.0} | {s_low:.0}–{s_high:.0} | {cpu:.1} | {:.0} | {:.0} | {:.1} |",
            c.name(),
            records / cpu.max(f64::MIN_POSITIVE),
            med(c, |u| u.peak_rss_mb),
            med(c, |u| u.broker_cpu_seconds.unwrap_or(f64::NAN)),
        );
    }
    let (m, k) = (Contender::Millrace, Contender::KafkaStreams);
    let _ = writeln!(
        out,
        "\n| ratio, Millrace / Kafka Streams | measured |\n|---|---:|\n| steady throughput | {:.2} |\n| CPU per record | {:.2} |\n| peak RSS | {:.2} |\n",
        spread(m, &steady).0 / spread(k, &steady).0,
        med(m, |u| u.cpu_seconds) / med(k, |u| u.cpu_seconds),
        med(m, |u| u.peak_rss_mb) / med(k, |u| u.peak_rss_mb)
    );
    if workload == Workload::Join {
        let unmatched =
            |c: Contender| harness::median(runs(c).map(|m| m.unmatched as f64).collect());
        let missing = (0..args.records)
            .filter(|i| !kafka::in_table(i % args.keys))
            .count();
        let _ = writeln!(
            out,
            "Outputs without a table value (median): Millrace {:.0}, Kafka Streams {:.0}; {missing} input records have a key missing from the table, any more were processed before their key's table record was read.\n",
            unmatched(m),
            unmatched(k)
        );
    }
}
