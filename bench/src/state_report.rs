//! The stateful benchmark's report: a table per topology with its ratios,
//! then the recovery runs.

use std::fmt::Write as _;

use crate::drain::Usage;
use crate::harness::{self, Setup, PARTITIONS};
use crate::jvm;
use crate::state::{Args, Contender, Measured, Recovery, Workload, TAIL};

pub fn report(
    setup: &Setup,
    args: &Args,
    measured: &[Measured],
    recoveries: &[Recovery],
) -> String {
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
    let _ = writeln!(out, "Each topology reads its own input of {} records (~80 B of JSON) from {PARTITIONS} partitions and writes every update to one output topic, exactly once (RocksDB stores bounded to 64 MiB in Kafka Streams, Millrace's `aggregate` step); {} round(s) after {} warm-up round(s), contenders alternating who goes first; medians, and the range of records/s. Every run's output is counted under read_committed: exactly one record per input record.\n", args.records, args.rounds, args.warmup_rounds);
    let _ = writeln!(
        out,
        "- running count per key: a count and sum per record key, {} keys.",
        args.keys
    );
    let _ = writeln!(out, "- regrouped, per 1-minute window: records with distinct keys regrouped by a value field ({} groups) through a repartition topic, then counted and summed per one-minute tumbling window of the event time in the value (1 ms of event time between records; an hour of grace, longer than the input's event time, so no record is late however the partitions interleave, and windows stay open for the run).\n", args.groups);
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
    out
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
    let _ = writeln!(out, "| contender | records/s | range | CPU s | records per CPU s | peak RSS MB | broker CPU s |\n|---|---:|---:|---:|---:|---:|---:|");
    for c in Contender::ALL {
        let rps: Vec<f64> = runs(c)
            .map(|m| args.records as f64 / m.usage.seconds)
            .collect();
        let (low, high) = rps
            .iter()
            .fold((f64::MAX, 0.0_f64), |(l, h), v| (l.min(*v), h.max(*v)));
        let cpu = med(c, |u| u.cpu_seconds);
        let _ = writeln!(
            out,
            "| {} | {:.0} | {low:.0}–{high:.0} | {cpu:.1} | {:.0} | {:.0} | {:.1} |",
            c.name(),
            harness::median(rps.clone()),
            args.records as f64 / cpu.max(f64::MIN_POSITIVE),
            med(c, |u| u.peak_rss_mb),
            med(c, |u| u.broker_cpu_seconds.unwrap_or(f64::NAN)),
        );
    }
    let (m, k) = (Contender::Millrace, Contender::KafkaStreams);
    let _ = writeln!(
        out,
        "\n| ratio, Millrace / Kafka Streams | measured |\n|---|---:|\n| throughput | {:.2} |\n| CPU per record | {:.2} |\n| peak RSS | {:.2} |\n",
        med(k, |u| u.seconds) / med(m, |u| u.seconds),
        med(m, |u| u.cpu_seconds) / med(k, |u| u.cpu_seconds),
        med(m, |u| u.peak_rss_mb) / med(k, |u| u.peak_rss_mb)
    );
}
