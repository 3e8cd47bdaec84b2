//! The candidates behind one interface. Both get the same cache (one knob,
//! `CACHE_BYTES`) and the same durability: every commit is atomic, and
//! every tenth (once a second at a 100 ms commit interval; see
//! `durable_every`) is made durable (fsync). In between, a process crash keeps what reached the OS (fjall's
//! journal) or goes back to the last durable commit (redb): either way the
//! store is some committed batch with its offset, and the changelog tail
//! after that offset is replayed.

use std::path::Path;

#[cfg(feature = "redb")]
use redb::ReadableDatabase;

const CACHE_BYTES: usize = 64 << 20;

/// Every how many commits one is made durable: `STORE_DURABLE_EVERY`,
/// default 10; 0 never (fjall only: a redb commit that is never durable is
/// lost in a crash).
fn durable_every() -> u64 {
    std::env::var("STORE_DURABLE_EVERY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
}

pub enum Store {
    #[cfg(feature = "fjall")]
    Fjall {
        db: fjall::Database,
        state: fjall::Keyspace,
    },
    #[cfg(feature = "redb")]
    Redb(redb::Database),
}

#[cfg(feature = "redb")]
const TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("state");

impl Store {
    pub fn open(engine: &str, path: &Path) -> Self {
        std::fs::create_dir_all(path).unwrap();
        match engine {
            #[cfg(feature = "fjall")]
            "fjall" => {
                let db = fjall::Database::builder(path)
                    .cache_size(CACHE_BYTES as u64)
                    .open()
                    .unwrap();
                let state = db
                    .keyspace("state", fjall::KeyspaceCreateOptions::default)
                    .unwrap();
                Store::Fjall { db, state }
            }
            #[cfg(feature = "redb")]
            "redb" => {
                let db = redb::Builder::new()
                    .set_cache_size(CACHE_BYTES)
                    .create(path.join("state.redb"))
                    .unwrap();
                let txn = db.begin_write().unwrap();
                txn.open_table(TABLE).unwrap();
                txn.commit().unwrap();
                Store::Redb(db)
            }
            other => panic!("'{other}' is not built in: build with --features {other}"),
        }
    }

    /// One atomic batch: the updates and the offset they reach.
    pub fn commit<K: AsRef<[u8]>>(&mut self, updates: &[(K, Vec<u8>)], offset: u64) {
        let every = durable_every();
        let durable = every > 0 && offset.is_multiple_of(every);
        match self {
            #[cfg(feature = "fjall")]
            Store::Fjall { db, state } => {
                let mut batch = db.batch();
                for (k, v) in updates {
                    batch.insert(state, k.as_ref(), v.as_slice());
                }
                batch.insert(state, crate::OFFSET_KEY, offset.to_be_bytes());
                batch.commit().unwrap();
                if durable {
                    db.persist(fjall::PersistMode::SyncAll).unwrap();
                }
            }
            #[cfg(feature = "redb")]
            Store::Redb(db) => {
                let mut txn = db.begin_write().unwrap();
                if !durable {
                    let _ = txn.set_durability(redb::Durability::None);
                }
                {
                    let mut table = txn.open_table(TABLE).unwrap();
                    for (k, v) in updates {
                        table.insert(k.as_ref(), v.as_slice()).unwrap();
                    }
                    table
                        .insert(crate::OFFSET_KEY, offset.to_be_bytes().as_slice())
                        .unwrap();
                }
                txn.commit().unwrap();
            }
        }
    }

    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        match self {
            #[cfg(feature = "fjall")]
            Store::Fjall { state, .. } => state.get(key).unwrap().map(|v| v.to_vec()),
            #[cfg(feature = "redb")]
            Store::Redb(db) => {
                let txn = db.begin_read().unwrap();
                let table = txn.open_table(TABLE).unwrap();
                table.get(key).unwrap().map(|v| v.value().to_vec())
            }
        }
    }

    pub fn offset(&self) -> Option<u64> {
        self.get(crate::OFFSET_KEY)
            .map(|v| u64::from_be_bytes(v.as_slice().try_into().unwrap()))
    }
}
