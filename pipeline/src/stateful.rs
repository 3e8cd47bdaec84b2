//! A task's [`State`] as the stateful steps see it, and `dedup` over it
//! (aggregates: `aggregation.rs`, windows: `window.rs`).
//!
//! The steps only read and write keys of their own store; where the bytes
//! live, how they reach the changelog and when they become durable is the
//! runtime's business (`runtime/src/state`). A record's writes count only
//! if the whole record succeeds: the runtime drops them when a later step
//! fails, so a dead-lettered or stopped record never updates a count.

/// One task's state, as the stateful steps see it. `store` numbers the
/// pipeline's stateful steps in order ([`crate::CompiledPipeline::stores`]).
pub trait State {
    fn get(&mut self, store: usize, key: &[u8]) -> Option<Vec<u8>>;
    /// `None` deletes.
    fn put(&mut self, store: usize, key: &[u8], value: Option<&[u8]>);
    /// Keys in `[from, to)` in order, at most `limit`.
    fn keys_in(&mut self, store: usize, from: &[u8], to: &[u8], limit: usize) -> Vec<Vec<u8>>;
}

/// For pipelines without stateful steps: nothing is kept.
pub struct Stateless;

impl State for Stateless {
    fn get(&mut self, _: usize, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
    fn put(&mut self, _: usize, _: &[u8], _: Option<&[u8]>) {}
    fn keys_in(&mut self, _: usize, _: &[u8], _: &[u8], _: usize) -> Vec<Vec<u8>> {
        Vec::new()
    }
}

/// Expired ids forgotten per record at most: twice what one record adds,
/// so expiry keeps up with any input, and no record pays for a backlog.
const EXPIRED_PER_RECORD: usize = 16;

/// A dedup store holds, per id, `i<id>` → the timestamp it was seen at, and
/// `t<timestamp><id>` → nothing: the ids in time order, to forget the old.
/// Both go to the changelog, so a restore is a plain copy.
pub(crate) const ID: u8 = b'i';
const BY_TIME: u8 = b't';

/// Timestamps as bytes that sort like the numbers (negatives first).
pub(crate) fn time_bytes(ts: i64) -> [u8; 8] {
    ((ts as u64) ^ (1 << 63)).to_be_bytes()
}

pub(crate) fn time_of(bytes: &[u8]) -> Option<i64> {
    Some((u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?) ^ (1 << 63)) as i64)
}

pub(crate) fn id_key(id: &[u8]) -> Vec<u8> {
    [&[ID], id].concat()
}

fn time_key(ts: i64, id: &[u8]) -> Vec<u8> {
    [&[BY_TIME][..], &time_bytes(ts), id].concat()
}

/// Whether the record with `id` at `ts` is a duplicate: the id was seen at
/// most `within_ms` from `ts`. A record that is not becomes the id's latest
/// sighting; ids last seen more than `within_ms` before `ts` are forgotten.
pub fn seen_before(
    state: &mut dyn State,
    store: usize,
    id: &[u8],
    ts: i64,
    within_ms: i64,
) -> bool {
    forget_before(state, store, ts.saturating_sub(within_ms));
    let key = id_key(id);
    let seen = state.get(store, &key).as_deref().and_then(time_of);
    if let Some(at) = seen {
        if ts.abs_diff(at) <= within_ms as u64 {
            return true;
        }
        state.put(store, &time_key(at, id), None);
    }
    state.put(store, &key, Some(&time_bytes(ts)));
    state.put(store, &time_key(ts, id), Some(b""));
    false
}

fn forget_before(state: &mut dyn State, store: usize, cutoff: i64) {
    let to = [&[BY_TIME][..], &time_bytes(cutoff)].concat();
    for key in state.keys_in(store, &[BY_TIME], &to, EXPIRED_PER_RECORD) {
        state.put(store, &key, None);
        let (Some(at), Some(id)) = (time_of(&key[1..]), key.get(9..)) else {
            continue;
        };
        // Seen again since (a later sighting): the id stays.
        let id_key = id_key(id);
        if state.get(store, &id_key).as_deref().and_then(time_of) == Some(at) {
            state.put(store, &id_key, None);
        }
    }
}

#[cfg(test)]
pub mod memory {
    //! An in-memory [`State`] for the pipeline's unit tests.
    use super::State;
    use std::collections::BTreeMap;

    #[derive(Default)]
    pub struct MemoryState(pub BTreeMap<(usize, Vec<u8>), Vec<u8>>);

    impl State for MemoryState {
        fn get(&mut self, store: usize, key: &[u8]) -> Option<Vec<u8>> {
            self.0.get(&(store, key.to_vec())).cloned()
        }
        fn put(&mut self, store: usize, key: &[u8], value: Option<&[u8]>) {
            match value {
                Some(v) => self.0.insert((store, key.to_vec()), v.to_vec()),
                None => self.0.remove(&(store, key.to_vec())),
            };
        }
        fn keys_in(&mut self, store: usize, from: &[u8], to: &[u8], limit: usize) -> Vec<Vec<u8>> {
            self.0
                .range((store, from.to_vec())..(store, to.to_vec()))
                .take(limit)
                .map(|((_, k), _)| k.clone())
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::memory::MemoryState;
    use super::*;

    #[test]
    fn an_id_is_a_duplicate_within_the_window_either_side_and_new_after_it() {
        let mut s = MemoryState::default();
        assert!(!seen_before(&mut s, 0, b"a", 1_000, 100));
        assert!(
            seen_before(&mut s, 0, b"a", 1_100, 100),
            "at the window's edge"
        );
        assert!(seen_before(&mut s, 0, b"a", 950, 100), "late, still within");
        assert!(!seen_before(&mut s, 0, b"b", 1_050, 100), "another id");
        assert!(!seen_before(&mut s, 1, b"a", 1_050, 100), "another store");
        assert!(!seen_before(&mut s, 0, b"a", 1_101, 100), "past the window");
        assert!(
            seen_before(&mut s, 0, b"a", 1_150, 100),
            "the new sighting counts"
        );
    }

    #[test]
    fn old_ids_are_forgotten_so_the_state_stays_bounded() {
        let mut s = MemoryState::default();
        for i in 0..10_000i64 {
            assert!(!seen_before(&mut s, 0, &i.to_be_bytes(), i * 10, 100));
        }
        // Each id is two entries; only those within 100 ms (10 ids) of the
        // newest, and a few not yet reached by expiry, are left.
        assert!(s.0.len() <= 2 * 12, "{} entries left", s.0.len());
        // A re-sighted id keeps its newer entry when the old one expires.
        let mut s = MemoryState::default();
        seen_before(&mut s, 0, b"x", 0, 100);
        seen_before(&mut s, 0, b"x", 500, 100);
        seen_before(&mut s, 0, b"y", 550, 100);
        assert!(seen_before(&mut s, 0, b"x", 560, 100));
    }

    #[test]
    fn negative_timestamps_sort_before_positive_ones() {
        assert!(time_bytes(-5) < time_bytes(3));
        assert_eq!(time_of(&time_bytes(-5)), Some(-5));
    }
}
