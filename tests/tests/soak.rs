//! A soak on the three-node cluster through the operator: two apps on the
//! test bed (the routing verifier with two workers, the state verifier with
//! one) while input flows steadily, one routing worker is SIGKILLed every
//! 30 s and a broker node is crashed and restarted every few minutes. The
//! RSS and open files of the routing worker that is never killed, of the
//! state worker and of the operator are sampled every 10 s and must stay
//! flat; at the end nothing is lost or duplicated and every count is exact.
//!
//! `MILLRACE_SOAK_S` (default 240: CI's copy) is the length of the fault
//! schedule; `MILLRACE_SOAK_BROKER_EVERY_S` (default 90) the gap between
//! broker crashes. The documented target is 1800 s with a crash every 300 s
//! (docs/reliability.md).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use millrace_tests::cluster::{self, in_chunks, written, CHUNK_TIME};
use millrace_tests::verifier::{self, drained, env_or, Topics};
use millrace_tests::workers::{apply_yaml, get, pod_pids, signal, wait_settled};
use millrace_tests::{install_chart, state_verifier, unique, wait_until, TestNamespace};

const ROUTING_PARTITIONS: i32 = 8;
const STATE_PARTITIONS: i32 = 4;
const WORKER_KILL_EVERY: Duration = Duration::from_secs(30);
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// How long a crashed node stays down: past `broker.session.timeout.ms`.
const NODE_DOWN: Duration = Duration::from_secs(12);

/// The processes watched: (label, namespace, pod).
type Watched = Vec<(&'static str, String, String)>;

/// One sample: seconds since the start, and per watched process its RSS
/// (kB) and open descriptors.
#[derive(Clone)]
struct Sample {
    at_s: f64,
    rss_kb: Vec<u64>,
    fds: Vec<usize>,
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The one process of a pod; the same one all along (a watched process
/// that restarted would make its curve meaningless).
fn pid_of(ns: &str, pod: &str) -> u32 {
    let pids = pod_pids(ns, pod);
    assert_eq!(pids.len(), 1, "pod {ns}/{pod}: processes {pids:?}");
    pids[0]
}

/// Samples every `SAMPLE_EVERY` until `stop`.
fn sample(watched: Watched, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<Sample>> {
    std::thread::spawn(move || {
        let started = Instant::now();
        let pids: Vec<u32> = watched.iter().map(|(_, ns, pod)| pid_of(ns, pod)).collect();
        let mut samples = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            for ((label, ns, pod), pid) in watched.iter().zip(&pids) {
                assert_eq!(pid_of(ns, pod), *pid, "{label} ({pod}) restarted");
            }
            samples.push(Sample {
                at_s: started.elapsed().as_secs_f64(),
                rss_kb: pids.iter().map(|p| rss_kb(*p)).collect(),
                fds: pids.iter().map(|p| open_fds(*p)).collect(),
            });
            std::thread::sleep(SAMPLE_EVERY);
        }
        samples
    })
}

/// What of a third of the samples is compared.
#[derive(Clone, Copy, Debug)]
enum Statistic {
    /// RSS: memory a process once touched rarely goes back.
    Highest,
    /// Open descriptors: connections come and go around each broker
    /// crash (a 30-minute run's routing worker: 68-94), a leak moves the
    /// median.
    Median,
}

impl Statistic {
    fn of(self, values: &mut [u64]) -> u64 {
        values.sort_unstable();
        match self {
            Statistic::Highest => values[values.len() - 1],
            Statistic::Median => values[values.len() / 2],
        }
    }
}

/// Flat: after the warm-up (a quarter of the run, at least a minute), the
/// statistic of the last third is within `factor` and `slack` of that of
/// the first third.
fn assert_flat(
    label: &str,
    samples: &[(f64, u64)],
    (factor, slack): (f64, u64),
    statistic: Statistic,
) {
    let end = samples.last().map(|s| s.0).unwrap_or(0.0);
    let mut warm: Vec<u64> = samples
        .iter()
        .filter(|(t, _)| *t >= (end / 4.0).max(60.0))
        .map(|s| s.1)
        .collect();
    assert!(
        warm.len() >= 6,
        "{label}: too few samples after the warm-up"
    );
    let third = warm.len() / 3;
    let first = statistic.of(&mut warm[..third].to_vec());
    let at = warm.len() - third;
    let last = statistic.of(&mut warm[at..]);
    println!(
        "{label}: {statistic:?} of the first third after warm-up {first}, of the last third {last}"
    );
    assert!(
        last as f64 <= first as f64 * factor + slack as f64,
        "{label} grew: {first} -> {last}"
    );
}

#[test]
fn a_soak_with_worker_kills_and_broker_crashes_stays_flat_and_exact() {
    let cluster = cluster::Cluster::up();
    let length = Duration::from_secs(env_or("MILLRACE_SOAK_S", 240));
    let broker_every = Duration::from_secs(env_or("MILLRACE_SOAK_BROKER_EVERY_S", 90));
    eprintln!("cluster at {}", cluster.bootstrap);
    cluster::wait_fully_replicated();
    install_chart(&[]);
    let ns = TestNamespace::create("soak");
    let ns = ns.0.as_str();

    let routing_prefix = unique("soak-route");
    let routing_topics = Topics::new(&routing_prefix, ROUTING_PARTITIONS);
    routing_topics.create();
    let routing_id = format!("{routing_prefix}-app");
    let spec =
        "  processingGuarantee: ExactlyOnce\n  commitInterval: 200ms\n  transactionTimeout: 30s\n";
    apply_yaml(
        ns,
        "route",
        &verifier::manifest(
            "route",
            &routing_id,
            &routing_topics,
            &format!("{spec}  replicas: 2\n"),
            "",
        ),
    );
    let state_prefix = unique("soak-state");
    let state_topics = Topics::new(&state_prefix, STATE_PARTITIONS);
    state_topics.create();
    let state_id = format!("{state_prefix}-app");
    apply_yaml(
        ns,
        "state",
        &state_verifier::manifest(
            "state",
            &state_id,
            &state_topics,
            &format!("{spec}  state: {{}}\n  replicas: 1\n"),
        ),
    );
    wait_settled(ns, "route", 2, ROUTING_PARTITIONS);
    wait_settled(ns, "state", 1, STATE_PARTITIONS);

    let stop_input = Arc::new(AtomicBool::new(false));
    let generators = [
        {
            let (topics, stop) = (routing_topics.clone(), stop_input.clone());
            std::thread::spawn(move || {
                in_chunks(&stop, |seqs| {
                    verifier::generate_seqs(&topics, seqs, CHUNK_TIME)
                })
            })
        },
        {
            let (input, stop) = (state_topics.input.clone(), stop_input.clone());
            std::thread::spawn(move || {
                in_chunks(&stop, |seqs| {
                    state_verifier::generate_seqs(&input, seqs, CHUNK_TIME)
                })
            })
        },
    ];
    wait_until(
        "both apps committing output",
        Duration::from_secs(120),
        || {
            (written(&routing_topics.outputs[0], ROUTING_PARTITIONS) > 0
                && written(&state_topics.outputs[0], STATE_PARTITIONS) > 0)
                .then_some(())
        },
    );

    let operator = get(
        millrace_tests::OPERATOR_NAMESPACE,
        "pods",
        "{.items[0].metadata.name}",
    );
    let watched: Watched = vec![
        ("routing worker", ns.to_string(), "route-0".to_string()),
        ("state worker", ns.to_string(), "state-0".to_string()),
        (
            "operator",
            millrace_tests::OPERATOR_NAMESPACE.to_string(),
            operator,
        ),
    ];
    let labels: Vec<&str> = watched.iter().map(|w| w.0).collect();
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let sampler = sample(watched, stop_sampling.clone());

    // The fault schedule: its pace, not waits for readiness.
    let started = Instant::now();
    let (mut next_kill, mut next_crash) = (started + WORKER_KILL_EVERY, started + broker_every);
    let (mut kills, mut crashes, mut node) = (0, Vec::new(), 1);
    while started.elapsed() < length {
        let now = Instant::now();
        if now >= next_crash {
            cluster::kill(node);
            std::thread::sleep(NODE_DOWN);
            cluster::restart(node);
            cluster::wait_fully_replicated();
            crashes.push((node, now.duration_since(started).as_secs()));
            node = node % 3 + 1;
            next_crash += broker_every;
        } else if now >= next_kill {
            signal(&pod_pids(ns, "route-1"), "KILL");
            kills += 1;
            next_kill += WORKER_KILL_EVERY;
        }
        let next = next_kill.min(next_crash).min(started + length);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    stop_input.store(true, Ordering::Relaxed);
    let [routing_records, state_records] = generators.map(|g| g.join().unwrap());
    wait_until(
        "both apps to commit their whole input",
        Duration::from_secs(300),
        || {
            (drained(&routing_id, &routing_topics) && drained(&state_id, &state_topics))
                .then_some(())
        },
    );
    stop_sampling.store(true, Ordering::Relaxed);
    let samples = sampler.join().unwrap();

    println!(
        "soak: {:.0} s, {kills} worker kills, broker crashes (node, s): {crashes:?}, {routing_records} + {state_records} records",
        length.as_secs_f64()
    );
    println!(
        "| s | {} |",
        labels
            .iter()
            .map(|l| format!("{l} RSS MB | fds"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("|---:|{}", "---:|---:|".repeat(labels.len()));
    for s in &samples {
        let cells: Vec<String> = s
            .rss_kb
            .iter()
            .zip(&s.fds)
            .map(|(r, f)| format!("{:.1} | {f}", *r as f64 / 1024.0))
            .collect();
        println!("| {:.0} | {} |", s.at_s, cells.join(" | "));
    }

    verifier::verify(&routing_topics, routing_records).assert_exactly_once("routing, soak");
    let summary = state_verifier::verify(&state_topics.outputs[0], STATE_PARTITIONS, state_records);
    println!("state, soak: {summary}");
    assert!(summary.wrong.is_empty(), "{summary}");
    for (i, label) in labels.iter().enumerate() {
        let rss: Vec<(f64, u64)> = samples.iter().map(|s| (s.at_s, s.rss_kb[i])).collect();
        let fds: Vec<(f64, u64)> = samples.iter().map(|s| (s.at_s, s.fds[i] as u64)).collect();
        let rss_label = format!("{label} RSS kB");
        assert_flat(&rss_label, &rss, (1.25, 16 * 1024), Statistic::Highest);
        let fds_label = format!("{label} open files");
        assert_flat(&fds_label, &fds, (1.0, 10), Statistic::Median);
    }
}
