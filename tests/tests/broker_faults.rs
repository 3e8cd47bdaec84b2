//! Exactly-once on the three-node cluster (`millrace_tests::cluster`) while
//! its brokers crash: two standalone workers run side by side, the
//! stateless exactly-once verifier (routing, 8 partitions) and the state
//! verifier (`dedup` then a running count and sum, 4 partitions), while
//! input flows and one node at a time is SIGKILLed (broker and KRaft
//! controller at once), left down, restarted, and allowed to catch up
//! before the next. The nodes killed, in turn: the one coordinating the
//! routing worker's transactions, the one coordinating its consumer group,
//! and the active KRaft controller (the same node may hold several roles;
//! each kill reports what it held). Afterwards nothing is lost, duplicated
//! or misrouted, and every count and sum is exact; for each kill the
//! longest time no committed output arrived is reported.
//!
//! Input flows at 250 records/s per app until the last kill is over.
//! `MILLRACE_FAULT_DOWN_S`: how long a killed node stays down (default 12 s:
//! longer than `broker.session.timeout.ms`, 9 s, so the controller fences
//! it and its partitions move to new leaders, rather than the restarted
//! broker taking them back).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use millrace_crds::identity::{loop_id, transactional_id};
use millrace_tests::cluster::{self, in_chunks, longest_gap, written, Arrivals, CHUNK_TIME};
use millrace_tests::standalone::{App, SPEC};
use millrace_tests::verifier::{self, drained, env_or, Topics};
use millrace_tests::{state_verifier, unique, wait_until};

const ROUTING_PARTITIONS: i32 = 8;
const STATE_PARTITIONS: i32 = 4;

/// One crash: when, which node, what it was chosen for and what it held.
struct Kill {
    at: Instant,
    until: Instant,
    node: i32,
    roles: Vec<String>,
}

#[test]
fn exactly_once_and_exact_state_while_brokers_crash_one_at_a_time() {
    let cluster = cluster::Cluster::up();
    let down = Duration::from_secs(env_or("MILLRACE_FAULT_DOWN_S", 12));
    eprintln!("cluster at {}", cluster.bootstrap);
    cluster::wait_fully_replicated();

    let routing_prefix = unique("faults-route");
    let routing_topics = Topics::new(&routing_prefix, ROUTING_PARTITIONS);
    routing_topics.create();
    let routing_id = format!("{routing_prefix}-app");
    let routing = App::new(
        &routing_id,
        &verifier::manifest("fault-routing", &routing_id, &routing_topics, SPEC, ""),
        18201,
    );
    let state_prefix = unique("faults-state");
    let state_topics = Topics::new(&state_prefix, STATE_PARTITIONS);
    state_topics.create();
    let state_id = format!("{state_prefix}-app");
    let state = App::new(
        &state_id,
        &state_verifier::manifest("fault-state", &state_id, &state_topics, SPEC),
        18202,
    );
    let mut workers = [routing.start(), state.start()];
    let watched: Vec<(&str, i32)> = routing_topics
        .outputs
        .iter()
        .map(|t| (t.as_str(), ROUTING_PARTITIONS))
        .chain([(state_topics.outputs[0].as_str(), STATE_PARTITIONS)])
        .collect();
    let arrivals = Arrivals::watch(&watched);

    // Input flows until the last kill is over, in paced chunks, however
    // long the kills take on a loaded machine.
    let stop = Arc::new(AtomicBool::new(false));
    let generators = [
        {
            let (topics, stop) = (
                Topics::new(&routing_prefix, ROUTING_PARTITIONS),
                stop.clone(),
            );
            std::thread::spawn(move || {
                in_chunks(&stop, |seqs| {
                    verifier::generate_seqs(&topics, seqs, CHUNK_TIME)
                })
            })
        },
        {
            let (input, stop) = (state_topics.input.clone(), stop.clone());
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

    let routing_transactions = transactional_id(&routing_id, &loop_id("standalone", 0));
    let mut kills: Vec<Kill> = Vec::new();
    for target in [
        "transaction coordinator",
        "group coordinator",
        "KRaft controller",
    ] {
        cluster::wait_fully_replicated();
        for w in &mut workers {
            w.assert_alive();
        }
        let roles_of = |node: i32| -> Vec<String> {
            let mut held = Vec::new();
            if cluster::transaction_coordinator(&routing_transactions) == node {
                held.push("transaction coordinator".to_string());
            }
            if cluster::group_coordinator(&routing_id) == node {
                held.push("group coordinator".to_string());
            }
            if cluster::active_controller() == node {
                held.push("KRaft controller".to_string());
            }
            held
        };
        let node = match target {
            "transaction coordinator" => cluster::transaction_coordinator(&routing_transactions),
            "group coordinator" => cluster::group_coordinator(&routing_id),
            _ => cluster::active_controller(),
        };
        let roles = roles_of(node);
        assert!(roles.iter().any(|r| r == target), "{node} holds {roles:?}");
        let at = Instant::now();
        cluster::kill(node);
        eprintln!("killed node {node} ({})", roles.join(", "));
        // The fault's length, not a wait for readiness.
        std::thread::sleep(down);
        cluster::restart(node);
        if let Some(last) = kills.last_mut() {
            last.until = at;
        }
        kills.push(Kill {
            at,
            until: at,
            node,
            roles,
        });
    }
    stop.store(true, Ordering::Relaxed);
    let input_ends = Instant::now();
    let [routing_records, state_records] = generators.map(|g| g.join().unwrap());
    wait_until(
        "both apps to commit their whole input",
        Duration::from_secs(300),
        || {
            (drained(&routing_id, &routing_topics) && drained(&state_id, &state_topics))
                .then_some(())
        },
    );
    let done = Instant::now();
    let [routing_worker, state_worker] = workers;
    routing_worker.terminate();
    state_worker.terminate();
    let seen = arrivals.stop();
    if let Some(last) = kills.last_mut() {
        last.until = input_ends.min(done);
    }

    println!("| kill | node | roles held | longest pause in committed output after it |");
    println!("|---:|---:|---|---:|");
    for (i, k) in kills.iter().enumerate() {
        println!(
            "| {} | {} | {} | {:.1} s |",
            i + 1,
            k.node,
            k.roles.join(", "),
            longest_gap(&seen, k.at, k.until).as_secs_f64()
        );
    }
    verifier::verify(&routing_topics, routing_records)
        .assert_exactly_once("routing, brokers crashing");
    let summary = state_verifier::verify(&state_topics.outputs[0], STATE_PARTITIONS, state_records);
    println!("state, brokers crashing: {summary}");
    assert!(summary.wrong.is_empty(), "{summary}");
}
