//! Answering from this worker's own copy of a task's state: the store
//! holds only committed state (a batch's writes land after its commit), so
//! whatever is read here was committed.

use millrace_pipeline::query::Queryable;
use millrace_pipeline::stateful::State;
use serde_json::{json, Value as Json};

use super::route::Copy;
use crate::state::{Store, StoreError};

/// What a query asks of one task's store.
#[derive(Debug, Clone)]
pub enum Ask {
    /// A key's entry; for a windowed aggregate, its windows starting in
    /// `windows` (`[from, to)`).
    Key { key: Vec<u8>, windows: (i64, i64) },
    /// A page of entries after `after`.
    Scan {
        after: Option<Vec<u8>>,
        limit: usize,
    },
}

/// A task's committed store, read-only, as the pipeline's queries read it.
struct Committed<'a> {
    store: &'a Store,
    task: i32,
    failed: Option<StoreError>,
}

impl State for Committed<'_> {
    fn get(&mut self, store: usize, key: &[u8]) -> Option<Vec<u8>> {
        self.store.get(self.task, store, key).unwrap_or_else(|e| {
            self.failed = Some(e);
            None
        })
    }

    fn put(&mut self, _: usize, _: &[u8], _: Option<&[u8]>) {
        debug_assert!(false, "queries never write");
    }

    fn keys_in(&mut self, store: usize, from: &[u8], to: &[u8], limit: usize) -> Vec<Vec<u8>> {
        self.store
            .keys_in(self.task, store, from, to, limit)
            .unwrap_or_else(|e| {
                self.failed = Some(e);
                Vec::new()
            })
    }
}

/// The answer of this worker's `copy` of `task`: `(found, body)`. The body
/// says which task, worker and copy answered, and how fresh it is.
pub fn answer(
    q: &Queryable,
    ask: &Ask,
    store: &Store,
    (task, worker, copy): (i32, &str, Copy),
) -> Result<(bool, Json), String> {
    let mut state = Committed {
        store,
        task,
        failed: None,
    };
    let mut body = json!({
        "step": q.step,
        "task": task,
        "worker": worker,
        "copy": copy,
        "changelogOffset": store.applied(task, q.store).ok().flatten().map(|a| a.next_offset),
    });
    let found = match ask {
        Ask::Key { key, windows } => match q.kind {
            millrace_pipeline::query::StoreKind::WindowedAggregate => {
                let all = q.windows(
                    key,
                    *windows,
                    millrace_pipeline::query::MAX_PAGE,
                    &mut state,
                )?;
                let found = !all.is_empty();
                body["windows"] = Json::Array(all);
                found
            }
            _ => match q.get(key, &mut state)? {
                Some(entry) => {
                    body["value"] = entry;
                    true
                }
                None => false,
            },
        },
        Ask::Scan { after, limit } => {
            let (entries, next) = q.scan(after.as_deref(), *limit, &mut state)?;
            body["entries"] = Json::Array(entries);
            body["next"] = next.map_or(Json::Null, |k| super::cursor(&k).into());
            true
        }
    };
    if let Some(e) = state.failed {
        return Err(format!("reading the store: {e}"));
    }
    body["found"] = found.into();
    Ok((found, body))
}
