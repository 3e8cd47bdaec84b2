//! What a record's steps see of its task's state: its own writes, over the
//! open batch's, over the closing batch's, over the store. Newest first, so
//! a record reads what the records before it wrote, committed or not; its
//! own writes go only to its layer, which the engine keeps if the record
//! succeeds and drops if it fails.

use crate::pipeline::stateful::State;

use super::store::{Store, StoreError};
use super::writes::Writes;

pub struct View<'a> {
    pub task: i32,
    pub record: &'a mut Writes,
    /// Older writes not in the store yet, newest first (open, closing).
    pub pending: [Option<&'a Writes>; 2],
    pub store: Option<&'a Store>,
    /// The first read the store failed: the engine stops (and restores on
    /// restart) rather than go on with a wrong answer.
    pub error: Option<StoreError>,
}

impl View<'_> {
    fn layers(&self) -> impl Iterator<Item = &Writes> {
        std::iter::once(&*self.record).chain(self.pending.iter().flatten().copied())
    }
}

impl State for View<'_> {
    fn get(&mut self, store: usize, key: &[u8]) -> Option<Vec<u8>> {
        if let Some(found) = self.layers().find_map(|w| w.get(self.task, store, key)) {
            return found.map(<[u8]>::to_vec);
        }
        match self.store?.get(self.task, store, key) {
            Ok(value) => value,
            Err(e) => {
                self.error.get_or_insert(e);
                None
            }
        }
    }

    fn put(&mut self, store: usize, key: &[u8], value: Option<&[u8]>) {
        self.record.put(self.task, store, key, value);
    }

    fn keys_in(&mut self, store: usize, from: &[u8], to: &[u8], limit: usize) -> Vec<Vec<u8>> {
        // Live-or-deleted per key, oldest layer first so newer ones win.
        let mut merged = std::collections::BTreeMap::<Vec<u8>, bool>::new();
        let written: usize = self
            .layers()
            .map(|w| w.in_range(self.task, store, from, to).count())
            .sum();
        if let Some(s) = self.store {
            // Enough that `limit` survive the deletes the layers may hold.
            match s.keys_in(self.task, store, from, to, limit + written) {
                Ok(keys) => merged.extend(keys.into_iter().map(|k| (k, true))),
                Err(e) => {
                    self.error.get_or_insert(e);
                }
            }
        }
        let layers: Vec<&Writes> = self.layers().collect();
        for w in layers.into_iter().rev() {
            for (k, v) in w.in_range(self.task, store, from, to) {
                merged.insert(k.to_vec(), v.is_some());
            }
        }
        merged
            .into_iter()
            .filter_map(|(k, live)| live.then_some(k))
            .take(limit)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_layers_win_and_deletes_hide_older_keys() {
        let mut closing = Writes::default();
        closing.put(0, 0, b"a", Some(b"closing"));
        closing.put(0, 0, b"b", Some(b"closing"));
        let mut open = Writes::default();
        open.put(0, 0, b"a", Some(b"open"));
        open.put(0, 0, b"b", None);
        let mut record = Writes::default();
        let mut view = View {
            task: 0,
            record: &mut record,
            pending: [Some(&open), Some(&closing)],
            store: None,
            error: None,
        };
        assert_eq!(view.get(0, b"a"), Some(b"open".to_vec()));
        assert_eq!(view.get(0, b"b"), None, "deleted in the open batch");
        view.put(0, b"c", Some(b"mine"));
        assert_eq!(view.get(0, b"c"), Some(b"mine".to_vec()));
        assert_eq!(
            view.keys_in(0, b"a", b"z", 10),
            vec![b"a".to_vec(), b"c".to_vec()]
        );
        assert_eq!(view.get(1, b"a"), None, "another store");
        assert_eq!(record.len(), 1, "only the record's own write is its layer");
    }
}
