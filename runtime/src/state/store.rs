//! A worker's state on its volume: one fjall database (one cache and one
//! journal for every task), one keyspace per task and store, so a task's
//! store is dropped whole, and a meta keyspace recording for each the
//! changelog offset its contents have reached.
//!
//! Writes arrive only as whole batches ([`Store::apply`]): a committed
//! transaction's writes together with the changelog offsets they reach, in
//! one fjall batch, so after any crash each keyspace is exactly the state
//! at its recorded offset. Not synced to disk per batch: a process crash
//! keeps what reached the OS; a machine crash may lose the last batches,
//! which the changelog replays (`restore`).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Mutex, RwLock};

use fjall::{Database, Keyspace, KeyspaceCreateOptions};

use super::writes::Writes;
use millrace_crds::worker_status::unix_ms;

/// The store's memory when `MILLRACE_STATE_MEMORY_MB` does not say: half
/// block cache, half write buffers, over all of a worker's tasks.
pub const DEFAULT_MEMORY_MB: u64 = 64;
/// A keyspace's memtable: small, since a worker has many (tasks × stores);
/// the write buffers' total is bounded by the memory knob.
const MEMTABLE_BYTES: u64 = 4 << 20;
const META: &str = "meta";

#[derive(Debug, thiserror::Error)]
#[error("state store at {dir}: {source}")]
pub struct StoreError {
    dir: String,
    #[source]
    source: fjall::Error,
}

/// Where a task's store stands: the next changelog offset to apply, and
/// when that was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub next_offset: i64,
    pub written_at_ms: u64,
}

pub struct Store {
    db: Database,
    dir: String,
    /// The pipeline's stateful steps: store `i` is `names[i]`.
    names: Vec<String>,
    meta: Keyspace,
    keyspaces: RwLock<HashMap<(i32, usize), Keyspace>>,
    /// Tasks a processing loop owns: their stores are written only by it.
    /// A standby's writes for them are dropped, under this lock, so once
    /// [`Store::claim`] returns no standby write can land after the
    /// owner's restore.
    claimed: Mutex<BTreeSet<i32>>,
}

impl Store {
    /// Opens (or creates) the store in `dir`, recovering from its journal
    /// after a crash. `memory_mb` bounds its cache and write buffers.
    pub fn open(dir: &Path, names: Vec<String>, memory_mb: u64) -> Result<Self, StoreError> {
        let display = dir.display().to_string();
        let fail = |source| StoreError {
            dir: display.clone(),
            source,
        };
        let half = memory_mb.max(8) * (1 << 20) / 2;
        #[allow(deprecated)] // fjall marks it "todo" (runtime changes); it is enforced
        let db = Database::builder(dir)
            .cache_size(half)
            .max_write_buffer_size(Some(half))
            .worker_threads(2)
            .open()
            .map_err(fail)?;
        let meta = db
            .keyspace(META, KeyspaceCreateOptions::default)
            .map_err(fail)?;
        Ok(Self {
            db,
            dir: display,
            names,
            meta,
            keyspaces: RwLock::new(HashMap::new()),
            claimed: Mutex::new(BTreeSet::new()),
        })
    }

    fn fail(&self, source: fjall::Error) -> StoreError {
        StoreError {
            dir: self.dir.clone(),
            source,
        }
    }

    /// Named by the step, not its index: a pipeline edited to add a step
    /// before it keeps its state.
    fn keyspace_name(&self, task: i32, store: usize) -> String {
        format!("{}.{task}", self.names[store])
    }

    fn meta_key(&self, task: i32, store: usize) -> Vec<u8> {
        self.keyspace_name(task, store).into_bytes()
    }

    fn keyspace(&self, task: i32, store: usize) -> Result<Keyspace, StoreError> {
        if let Some(ks) = self.keyspaces.read().unwrap().get(&(task, store)) {
            return Ok(ks.clone());
        }
        let name = self.keyspace_name(task, store);
        let ks = self
            .db
            .keyspace(&name, || {
                KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES)
            })
            .map_err(|e| self.fail(e))?;
        self.keyspaces
            .write()
            .unwrap()
            .insert((task, store), ks.clone());
        Ok(ks)
    }

    pub fn get(&self, task: i32, store: usize, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let value = self
            .keyspace(task, store)?
            .get(key)
            .map_err(|e| self.fail(e))?;
        Ok(value.map(|v| v.to_vec()))
    }

    /// Keys in `[from, to)` in order, at most `limit`.
    pub fn keys_in(
        &self,
        task: i32,
        store: usize,
        from: &[u8],
        to: &[u8],
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let ks = self.keyspace(task, store)?;
        let mut keys = Vec::new();
        for guard in ks.range(from..to).take(limit) {
            keys.push(guard.key().map_err(|e| self.fail(e))?.to_vec());
        }
        Ok(keys)
    }

    pub fn applied(&self, task: i32, store: usize) -> Result<Option<Applied>, StoreError> {
        let Some(bytes) = self
            .meta
            .get(self.meta_key(task, store))
            .map_err(|e| self.fail(e))?
        else {
            return Ok(None);
        };
        let number = |range: std::ops::Range<usize>| {
            bytes
                .get(range)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
        };
        Ok(match (number(0..8), number(8..16)) {
            (Some(offset), Some(at)) => Some(Applied {
                next_offset: offset as i64,
                written_at_ms: at,
            }),
            // Not written by this version: as if absent (a full restore).
            _ => None,
        })
    }

    /// One atomic batch: `writes`, and for each `(task, store, next)` of
    /// `reached` the changelog offset the store now stands at.
    pub fn apply(&self, writes: &Writes, reached: &[(i32, usize, i64)]) -> Result<(), StoreError> {
        let mut batch = self.db.batch();
        for (task, store, key, value) in writes.iter() {
            let ks = self.keyspace(task, store)?;
            match value {
                Some(v) => batch.insert(&ks, key, v),
                None => batch.remove(&ks, key),
            }
        }
        let now = unix_ms();
        for (task, store, next) in reached {
            let mut value = (*next as u64).to_be_bytes().to_vec();
            value.extend_from_slice(&now.to_be_bytes());
            batch.insert(&self.meta, self.meta_key(*task, *store), value);
        }
        batch.commit().map_err(|e| self.fail(e))
    }

    /// A processing loop takes these tasks: from now on only it writes
    /// their stores.
    pub fn claim(&self, tasks: &[i32]) {
        self.claimed.lock().unwrap().extend(tasks);
    }

    pub fn unclaim(&self, tasks: &[i32]) {
        self.claimed.lock().unwrap().retain(|t| !tasks.contains(t));
    }

    pub fn is_claimed(&self, task: i32) -> bool {
        self.claimed.lock().unwrap().contains(&task)
    }

    /// A standby's batch: as [`Store::apply`], without the writes and
    /// offsets of claimed tasks.
    pub fn apply_unclaimed(
        &self,
        writes: &mut Writes,
        reached: &[(i32, usize, i64)],
    ) -> Result<(), StoreError> {
        let claimed = self.claimed.lock().unwrap();
        writes.drop_tasks(|t| claimed.contains(&t));
        let reached: Vec<_> = reached
            .iter()
            .filter(|(t, _, _)| !claimed.contains(t))
            .copied()
            .collect();
        self.apply(writes, &reached)
    }

    /// [`Store::wipe`], unless the task is claimed (`false`).
    pub fn wipe_unclaimed(&self, task: i32, store: usize) -> Result<bool, StoreError> {
        let claimed = self.claimed.lock().unwrap();
        if claimed.contains(&task) {
            return Ok(false);
        }
        self.wipe(task, store)?;
        Ok(true)
    }

    /// Forgets a task's store: contents and recorded offset.
    pub fn wipe(&self, task: i32, store: usize) -> Result<(), StoreError> {
        let ks = self.keyspace(task, store)?;
        self.keyspaces.write().unwrap().remove(&(task, store));
        self.meta
            .remove(self.meta_key(task, store))
            .map_err(|e| self.fail(e))?;
        self.db.delete_keyspace(ks).map_err(|e| self.fail(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("millrace-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_batch_lands_with_its_offset_and_survives_a_reopen() {
        let d = dir("reopen");
        {
            let s = Store::open(&d, vec!["count".into()], 16).unwrap();
            let mut w = Writes::default();
            w.put(3, 0, b"a", Some(b"1"));
            w.put(3, 0, b"b", Some(b"2"));
            s.apply(&w, &[(3, 0, 42)]).unwrap();
            let mut w = Writes::default();
            w.put(3, 0, b"a", None);
            s.apply(&w, &[(3, 0, 43)]).unwrap();
        }
        let s = Store::open(&d, vec!["count".into()], 16).unwrap();
        assert_eq!(s.get(3, 0, b"a").unwrap(), None);
        assert_eq!(s.get(3, 0, b"b").unwrap(), Some(b"2".to_vec()));
        assert_eq!(s.applied(3, 0).unwrap().unwrap().next_offset, 43);
        assert_eq!(s.applied(4, 0).unwrap(), None, "another task");
        assert_eq!(s.get(4, 0, b"b").unwrap(), None, "tasks do not share keys");
        s.wipe(3, 0).unwrap();
        assert_eq!(s.get(3, 0, b"b").unwrap(), None);
        assert_eq!(s.applied(3, 0).unwrap(), None);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn ranges_are_in_key_order_and_bounded() {
        let d = dir("range");
        let s = Store::open(&d, vec!["dedup".into()], 16).unwrap();
        let mut w = Writes::default();
        for k in [&b"t3"[..], b"t1", b"t2", b"u1"] {
            w.put(0, 0, k, Some(b""));
        }
        s.apply(&w, &[]).unwrap();
        assert_eq!(
            s.keys_in(0, 0, b"t", b"u", 2).unwrap(),
            vec![b"t1".to_vec(), b"t2".to_vec()]
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}
