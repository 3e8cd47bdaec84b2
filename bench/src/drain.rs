//! When a contender's run is done, and what it cost: the harness polls the
//! broker (committed offsets, or the outputs' end offsets) every 100 ms
//! while the contender runs, and reads its CPU time and peak memory at the
//! end.

use std::process::Child;
use std::time::{Duration, Instant};

use crate::harness::Setup;
use crate::{kafka, process};

/// What one run of a contender cost, from its start until it was done
/// (`Finish`).
#[derive(Clone, Debug)]
pub struct Usage {
    pub seconds: f64,
    pub cpu_seconds: f64,
    pub peak_rss_mb: f64,
    /// The broker's CPU seconds over the same span (it shares the cores);
    /// `None` when the broker is not one local process.
    pub broker_cpu_seconds: Option<f64>,
    /// Input records committed after the first commit the harness saw, and
    /// the seconds from then until the input was drained.
    pub steady: Option<(i64, f64)>,
}

/// When a run is done.
pub enum Finish<'a> {
    /// The group has committed the end of the input, then of `then`:
    /// internal topics the app writes while it reads the input (a
    /// repartition topic), complete once the input is drained.
    Committed { group: &'a str, then: &'a [String] },
    /// Each output holds at least its `expected` records: at-least-once
    /// contenders, whose commits may trail their work by up to the commit
    /// interval (Kafka Streams' default under at_least_once is 30 s;
    /// outputs written without transactions are visible at once).
    Written {
        outputs: &'a [String],
        expected: &'a [u64],
    },
}

/// How far a run has got, as a fraction of its work, and whether it is done.
enum Watch {
    Committed(kafka::DrainWatch),
    Written(kafka::OutputWatch, Vec<u64>),
}

impl Watch {
    fn progress(&self) -> Option<(f64, bool)> {
        match self {
            Watch::Committed(w) => {
                let (committed, done) = w.progress()?;
                let total: i64 = w.ends().iter().sum();
                Some((committed as f64 / total.max(1) as f64, done))
            }
            Watch::Written(w, expected) => {
                // Per topic: duplicates in one cannot stand in for records
                // another still lacks.
                let written = w.written()?;
                let reached: u64 = written
                    .iter()
                    .zip(expected)
                    .map(|(w, e)| (*w).max(0).unsigned_abs().min(*e))
                    .sum();
                let total: u64 = expected.iter().sum();
                let done = written.iter().zip(expected).all(|(w, e)| *w >= *e as i64);
                Some((reached as f64 / total.max(1) as f64, done))
            }
        }
    }
}

/// Waits until `child` has finished its work on `input` as it is now
/// (`finish` says when that is), measuring from `started` (the child's
/// launch). The child keeps running.
pub fn until_drained(
    setup: &Setup,
    name: &str,
    child: &mut Child,
    (input, finish): (&str, Finish<'_>),
    started: Instant,
    broker_before: Option<(u32, f64)>,
) -> anyhow::Result<Usage> {
    let input_ends = kafka::end_offsets(&setup.bootstrap, input, setup.partitions)?;
    let topics: Vec<&str> = match &finish {
        Finish::Committed { then, .. } => std::iter::once(input)
            .chain(then.iter().map(String::as_str))
            .collect(),
        Finish::Written { .. } => vec![input],
    };
    // The first progress seen on the input (or outputs), for the steady rate.
    let mut first: Option<(Instant, f64)> = None;
    for (index, topic) in topics.into_iter().enumerate() {
        // Made when its turn comes: an internal topic exists only once the
        // app has created it.
        let watch = match &finish {
            Finish::Committed { group, .. } => Watch::Committed(kafka::DrainWatch::new(
                &setup.bootstrap,
                group,
                topic,
                setup.partitions,
            )?),
            Finish::Written { outputs, expected } => Watch::Written(
                kafka::OutputWatch::new(&setup.bootstrap, outputs, setup.partitions)?,
                expected.to_vec(),
            ),
        };
        loop {
            if let Some(status) = child.try_wait()? {
                anyhow::bail!("{name} exited early: {status}");
            }
            if let Some((fraction, done)) = watch.progress() {
                if index == 0 && fraction > 0.0 && first.is_none() {
                    first = Some((Instant::now(), fraction));
                }
                if done {
                    break;
                }
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(1800),
                "{name} did not finish in 30 minutes"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let total: i64 = input_ends.iter().sum();
    // Progress first seen only at the end (a tiny input) leaves no span.
    let steady = first
        .map(|(at, fraction)| {
            (
                (total as f64 * (1.0 - fraction)) as i64,
                at.elapsed().as_secs_f64(),
            )
        })
        .filter(|(records, secs)| *records > 0 && *secs > 0.0);
    // CPU time and VmHWM only grow: reading them once, at the end, is the peak.
    let (cpu_seconds, peak_rss_mb) = process::process_usage(child.id());
    Ok(Usage {
        seconds,
        cpu_seconds,
        peak_rss_mb,
        broker_cpu_seconds: broker_before
            .map(|(pid, before)| process::process_usage(pid).0 - before),
        steady,
    })
}
