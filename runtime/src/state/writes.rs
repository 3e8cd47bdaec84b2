//! State writes not yet in the store: a record's, the open batch's, the
//! closing batch's. Pure: no I/O, so the layering is tested with values.

use std::collections::BTreeMap;
use std::ops::Bound;

/// A task's store: (task, store index).
pub type StoreOf = (i32, usize);

/// The last write per key of each task's stores; `None` deletes.
#[derive(Default, Debug, Clone, PartialEq)]
pub struct Writes {
    by_store: BTreeMap<StoreOf, BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
}

impl Writes {
    pub fn put(&mut self, task: i32, store: usize, key: &[u8], value: Option<&[u8]>) {
        let keys = self.by_store.entry((task, store)).or_default();
        let value = value.map(<[u8]>::to_vec);
        match keys.get_mut(key) {
            Some(slot) => *slot = value,
            None => {
                keys.insert(key.to_vec(), value);
            }
        }
    }

    /// `Some(None)`: deleted here; `None`: not written here.
    pub fn get(&self, task: i32, store: usize, key: &[u8]) -> Option<Option<&[u8]>> {
        self.by_store
            .get(&(task, store))?
            .get(key)
            .map(Option::as_deref)
    }

    /// Writes to keys in `[from, to)`, in key order.
    pub fn in_range<'a>(
        &'a self,
        task: i32,
        store: usize,
        from: &'a [u8],
        to: &'a [u8],
    ) -> impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)> + 'a {
        self.by_store
            .get(&(task, store))
            .into_iter()
            .flat_map(move |keys| {
                keys.range::<[u8], _>((Bound::Included(from), Bound::Excluded(to)))
                    .map(|(k, v)| (k.as_slice(), v.as_deref()))
            })
    }

    /// `newer`'s writes win over these; `newer` is left empty (its maps
    /// moved, not copied, when these have none for a store).
    pub fn absorb(&mut self, newer: &mut Writes) {
        for (of, keys) in std::mem::take(&mut newer.by_store) {
            match self.by_store.get_mut(&of) {
                Some(mine) => mine.extend(keys),
                None => {
                    self.by_store.insert(of, keys);
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_store.values().all(BTreeMap::is_empty)
    }

    pub fn clear(&mut self) {
        self.by_store.clear();
    }

    /// Keys written, over every store.
    pub fn len(&self) -> usize {
        self.by_store.values().map(BTreeMap::len).sum()
    }

    /// Every write: (task, store, key, value), by store then key.
    pub fn iter(&self) -> impl Iterator<Item = (i32, usize, &[u8], Option<&[u8]>)> {
        self.by_store.iter().flat_map(|((task, store), keys)| {
            keys.iter()
                .map(move |(k, v)| (*task, *store, k.as_slice(), v.as_deref()))
        })
    }

    /// The stores written, in order.
    pub fn stores(&self) -> impl Iterator<Item = StoreOf> + '_ {
        self.by_store
            .iter()
            .filter(|(_, keys)| !keys.is_empty())
            .map(|(of, _)| *of)
    }

    /// Drops the writes of tasks `drop` says.
    pub fn drop_tasks(&mut self, drop: impl Fn(i32) -> bool) {
        self.by_store.retain(|(task, _), _| !drop(*task));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_write_of_a_key_wins_and_a_delete_is_a_write() {
        let mut older = Writes::default();
        older.put(1, 0, b"a", Some(b"1"));
        older.put(1, 0, b"b", Some(b"2"));
        let mut newer = Writes::default();
        newer.put(1, 0, b"a", None);
        newer.put(2, 0, b"a", Some(b"3"));
        older.absorb(&mut newer);
        assert!(newer.is_empty());
        assert_eq!(older.get(1, 0, b"a"), Some(None), "deleted by the newer");
        assert_eq!(older.get(1, 0, b"b"), Some(Some(&b"2"[..])));
        assert_eq!(older.get(2, 0, b"a"), Some(Some(&b"3"[..])), "task 2");
        assert_eq!(older.get(1, 1, b"a"), None, "another store");
        assert_eq!(older.len(), 3);
    }

    #[test]
    fn ranges_are_half_open_in_key_order_and_per_store() {
        let mut w = Writes::default();
        for k in [&b"t3"[..], b"t1", b"t2", b"u"] {
            w.put(0, 0, k, Some(b""));
        }
        w.put(0, 1, b"t1", Some(b""));
        let keys: Vec<&[u8]> = w.in_range(0, 0, b"t1", b"t3").map(|(k, _)| k).collect();
        assert_eq!(keys, vec![&b"t1"[..], b"t2"]);
    }

    #[test]
    fn a_released_task_takes_its_writes_with_it() {
        let mut w = Writes::default();
        w.put(0, 0, b"k", Some(b"v"));
        w.put(1, 0, b"k", Some(b"v"));
        w.drop_tasks(|t| t == 1);
        assert_eq!(w.stores().collect::<Vec<_>>(), vec![(0, 0)]);
    }
}
