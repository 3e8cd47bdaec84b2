//! The commit order, with plain values: each test breaks if a step of
//! `checkpoint.rs`'s sequence moves.

use super::*;
use crate::engine::refusals::Origin;

fn tp(partition: i32) -> Tp {
    ("in".into(), partition)
}

fn offsets(entries: &[(i32, i64)]) -> Offsets {
    entries.iter().map(|(p, o)| (tp(*p), *o)).collect()
}

fn output(value: &str) -> OutputRecord {
    OutputRecord {
        topic: "out".into(),
        key: None,
        value: Some(value.as_bytes().to_vec()),
        headers: Vec::new(),
        timestamp: None,
    }
}

fn values(stash: &Stash) -> Vec<String> {
    stash
        .iter()
        .map(|r| String::from_utf8(r.value.unwrap().to_vec()).unwrap())
        .collect()
}

/// A checkpoint owning partitions 0 and 1, committed at 0 and 100.
fn owning_two() -> Checkpoint<()> {
    let mut checkpoint = Checkpoint::exactly_once();
    checkpoint.resume_at(tp(0), Offset::Offset(0));
    checkpoint.resume_at(tp(1), Offset::Offset(100));
    checkpoint
}

fn close(checkpoint: &mut Checkpoint<()>) -> Option<Offsets> {
    let mut sent = None;
    let closed = checkpoint
        .close(|o| {
            sent = Some(o.clone());
            Ok::<(), ()>(())
        })
        .unwrap();
    assert_eq!(closed, sent.is_some());
    sent
}

fn resume(checkpoint: &Checkpoint<()>) -> Vec<(Tp, Offset)> {
    checkpoint
        .resume_points()
        .map(|(tp, o)| (tp.clone(), *o))
        .collect()
}

#[test]
fn exactly_once_holds_outputs_while_a_batch_closes_and_releases_them_only_after_its_commit() {
    let mut checkpoint = owning_two();
    assert!(
        checkpoint.route(output("a"), Origin::UNKNOWN).is_some(),
        "nothing closing: sent"
    );
    checkpoint.processed("in", 0, 1);
    assert_eq!(close(&mut checkpoint), Some(offsets(&[(0, 1)])));

    assert!(
        checkpoint.route(output("b"), Origin::UNKNOWN).is_none(),
        "closing: held"
    );
    checkpoint.processed("in", 0, 2);
    assert!(
        checkpoint.route(output("c"), Origin::UNKNOWN).is_none(),
        "closing: held"
    );
    checkpoint.processed("in", 1, 101);
    assert_eq!(
        resume(&checkpoint),
        [(tp(0), Offset::Offset(0)), (tp(1), Offset::Offset(100))],
        "not committed yet: a rewind starts where it did"
    );

    let Some(Closed::Committed {
        offsets: done,
        held,
        ..
    }) = checkpoint.closed(true)
    else {
        panic!("the closing batch committed");
    };
    assert_eq!(done, offsets(&[(0, 1)]));
    assert_eq!(
        values(&held),
        ["b", "c"],
        "released after the commit, in order"
    );
    assert_eq!(
        resume(&checkpoint),
        [(tp(0), Offset::Offset(1)), (tp(1), Offset::Offset(100))],
        "only the closed batch's offsets are committed, not those processed since"
    );
    assert!(
        checkpoint.route(output("d"), Origin::UNKNOWN).is_some(),
        "closed: sent again"
    );
    assert_eq!(
        close(&mut checkpoint),
        Some(offsets(&[(0, 2), (1, 101)])),
        "the records processed while closing make the next batch"
    );
}

#[test]
fn a_failed_commit_drops_what_was_held_and_processed_since_the_last_commit() {
    let mut checkpoint = owning_two();
    checkpoint.processed("in", 0, 5);
    close(&mut checkpoint);
    checkpoint.route(output("held"), Origin::UNKNOWN);
    checkpoint.processed("in", 1, 150);

    assert!(matches!(checkpoint.closed(false), Some(Closed::Failed)));
    assert_eq!(
        resume(&checkpoint),
        [(tp(0), Offset::Offset(0)), (tp(1), Offset::Offset(100))],
        "a rewind replays the failed batch and everything after it"
    );
    assert!(!checkpoint.has_open_offsets());
    assert_eq!(close(&mut checkpoint), None, "nothing left to commit");
    assert!(checkpoint.closed(true).is_none(), "nothing closing");

    // Replayed: the next commit releases only what was held during it.
    checkpoint.processed("in", 0, 5);
    close(&mut checkpoint);
    checkpoint.route(output("replayed"), Origin::UNKNOWN);
    let Some(Closed::Committed { held, .. }) = checkpoint.closed(true) else {
        panic!("committed");
    };
    assert_eq!(
        values(&held),
        ["replayed"],
        "the failed batch's held output is gone"
    );
}

#[test]
fn one_batch_closes_at_a_time_so_offsets_commit_in_order() {
    let mut checkpoint = owning_two();
    checkpoint.processed("in", 0, 10);
    assert!(close(&mut checkpoint).is_some());
    checkpoint.processed("in", 0, 20);
    assert_eq!(close(&mut checkpoint), None, "the first is still closing");
    assert!(checkpoint.closing().is_some());

    assert!(matches!(
        checkpoint.closed(true),
        Some(Closed::Committed { .. })
    ));
    assert_eq!(close(&mut checkpoint), Some(offsets(&[(0, 20)])));
}

#[test]
fn a_commit_that_cannot_start_leaves_the_batch_open() {
    let mut checkpoint = owning_two();
    checkpoint.processed("in", 1, 120);
    assert_eq!(
        checkpoint.close(|_| Err("no group metadata")),
        Err("no group metadata")
    );
    assert!(checkpoint.closing().is_none());
    assert!(
        checkpoint.route(output("x"), Origin::UNKNOWN).is_some(),
        "not closing: sent"
    );
    assert_eq!(close(&mut checkpoint), Some(offsets(&[(1, 120)])));
}

#[test]
fn a_closed_batch_ends_the_transaction_whatever_its_outcome() {
    for committed in [true, false] {
        let mut checkpoint = owning_two();
        checkpoint.began();
        checkpoint.processed("in", 0, 1);
        close(&mut checkpoint);
        assert!(checkpoint.transaction_begun(), "still the closing one's");
        checkpoint.closed(committed);
        assert!(!checkpoint.transaction_begun(), "committed: {committed}");
    }
}

#[test]
fn at_least_once_hands_out_offsets_only_once_every_output_before_them_is_acknowledged() {
    let acks = Unacknowledged::default();
    let mut checkpoint: Checkpoint<()> = Checkpoint::at_least_once();
    checkpoint.resume_at(tp(0), Offset::Offset(0));

    let first = checkpoint.batch_number();
    assert!(
        checkpoint.route(output("a"), Origin::UNKNOWN).is_some(),
        "sent at once"
    );
    acks.sent(first);
    checkpoint.processed("in", 0, 1);
    checkpoint.end_batch();

    let second = checkpoint.batch_number();
    assert_ne!(first, second);
    acks.sent(second);
    checkpoint.processed("in", 0, 2);
    checkpoint.end_batch();
    assert!(!checkpoint.nothing_in_flight());

    acks.acknowledged(second);
    assert_eq!(
        checkpoint.acknowledged(&acks),
        None,
        "the first batch's output may still fail: committing 2 would lose it"
    );
    acks.acknowledged(first);
    let ready = checkpoint.acknowledged(&acks).expect("both acknowledged");
    assert_eq!(ready, offsets(&[(0, 2)]));
    assert_eq!(
        resume(&checkpoint),
        [(tp(0), Offset::Offset(0))],
        "handed out is not committed"
    );
    checkpoint.committed(&ready);
    assert_eq!(resume(&checkpoint), [(tp(0), Offset::Offset(2))]);
    assert!(checkpoint.nothing_in_flight());
    assert_eq!(close(&mut checkpoint), None, "no transactions here");
}

#[test]
fn a_replay_abandons_batches_in_flight() {
    let acks = Unacknowledged::default();
    let mut checkpoint: Checkpoint<()> = Checkpoint::at_least_once();
    checkpoint.resume_at(tp(0), Offset::Offset(7));
    acks.sent(checkpoint.batch_number());
    checkpoint.processed("in", 0, 9);
    checkpoint.end_batch();
    checkpoint.discard();
    acks.acknowledged(0);
    assert_eq!(checkpoint.acknowledged(&acks), None);
    assert_eq!(checkpoint.committed_offsets(), offsets(&[(0, 7)]));
}

#[test]
fn positions_past_markers_move_only_partitions_with_a_known_offset() {
    let mut checkpoint: Checkpoint<()> = Checkpoint::exactly_once();
    checkpoint.resume_at(tp(0), Offset::Offset(10));
    checkpoint.resume_at(tp(1), Offset::Beginning);
    checkpoint.resume_at(tp(2), Offset::Offset(50));
    checkpoint.processed("in", 2, 60);
    checkpoint.absorb([(tp(0), 12), (tp(1), 3), (tp(2), 55), (tp(9), 4)]);
    assert_eq!(
        close(&mut checkpoint),
        Some(offsets(&[(0, 12), (2, 60)])),
        "0 skipped a marker; 1 has no offset yet; 2 processed further; 9 is not owned"
    );
}

#[test]
fn released_tasks_leave_the_resume_points_and_the_open_batch() {
    let mut checkpoint = owning_two();
    checkpoint.processed("in", 0, 3);
    checkpoint.processed("in", 1, 103);
    checkpoint.release(&[1]);
    assert_eq!(checkpoint.owned_partitions(), [0]);
    assert_eq!(close(&mut checkpoint), Some(offsets(&[(0, 3)])));
    checkpoint.forget();
    assert!(checkpoint.owned_partitions().is_empty());
    assert!(checkpoint.closing().is_none());
}

#[test]
fn a_refresh_commits_idle_partitions_again_at_their_committed_offsets() {
    let mut checkpoint = owning_two();
    checkpoint.resume_at(tp(2), Offset::Beginning);
    checkpoint.processed("in", 0, 5);
    checkpoint.refresh_committed();
    assert_eq!(
        close(&mut checkpoint),
        Some(offsets(&[(0, 5), (1, 100)])),
        "0 keeps what it processed; idle 1 is written again; 2 has no offset yet"
    );
}

fn writes(key: &[u8], value: &[u8]) -> Writes {
    let mut w = Writes::default();
    w.put(0, 0, key, Some(value));
    w
}

fn pending(checkpoint: &Checkpoint<()>, key: &[u8]) -> [Option<Option<Vec<u8>>>; 2] {
    checkpoint.pending_writes().map(|layer| {
        layer
            .and_then(|w| w.get(0, 0, key))
            .map(|v| v.map(<[u8]>::to_vec))
    })
}

#[test]
fn state_writes_travel_with_their_batch_and_reach_the_store_only_once_it_committed() {
    let mut checkpoint = owning_two();
    checkpoint.processed("in", 0, 1);
    checkpoint.keep_writes(&mut writes(b"k", b"1"));
    assert_eq!(
        pending(&checkpoint, b"k"),
        [Some(Some(b"1".to_vec())), None]
    );

    // Lent for the changelog, given back, then closed with the batch.
    let lent = checkpoint.lend_writes();
    assert_eq!(lent.len(), 1);
    checkpoint.give_back_writes(lent);
    close(&mut checkpoint);
    assert_eq!(
        pending(&checkpoint, b"k"),
        [None, Some(Some(b"1".to_vec()))],
        "closing: still read by the next records, not in the store yet"
    );
    // The next batch writes over it while the first commits.
    checkpoint.processed("in", 0, 2);
    checkpoint.keep_writes(&mut writes(b"k", b"2"));
    let Some(Closed::Committed { writes: done, .. }) = checkpoint.closed(true) else {
        panic!("committed");
    };
    assert_eq!(
        done.get(0, 0, b"k"),
        Some(Some(&b"1"[..])),
        "the committed batch's own"
    );
    assert_eq!(pending(&checkpoint, b"k")[0], Some(Some(b"2".to_vec())));
}

#[test]
fn a_failed_commit_drops_the_state_writes_of_every_batch_since_the_last_commit() {
    let mut checkpoint = owning_two();
    checkpoint.processed("in", 0, 1);
    checkpoint.keep_writes(&mut writes(b"k", b"1"));
    close(&mut checkpoint);
    checkpoint.processed("in", 0, 2);
    checkpoint.keep_writes(&mut writes(b"j", b"2"));
    assert!(matches!(checkpoint.closed(false), Some(Closed::Failed)));
    assert_eq!(pending(&checkpoint, b"k"), [None, None]);
    assert_eq!(
        pending(&checkpoint, b"j"),
        [None, None],
        "the open batch's too"
    );
}
