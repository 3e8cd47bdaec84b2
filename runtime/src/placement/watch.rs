//! The workers' side of placement (design brief D1): follow the operator's
//! placement document in the ConfigMap `<app>-placement`.
//!
//! A watch keeps the newest document in a [`PlacementView`] shared by the
//! worker's loops; each loop turns a newer epoch into a Release and a Take
//! of its share ([`loop_of`]: a task never moves between two loops, i.e. two
//! transactional ids, of one worker). After every
//! `init_transactions` a loop reads the document from the API server itself
//! ([`TaskSource::tasks`]) instead of trusting the
//! watch: a fenced worker must see at least the revoke its fence was for.
//! When the API server is unreachable, tasks already owned keep running;
//! only those reads wait.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use millrace_crds::placement::{PlacementDoc, ENDPOINTS_KEY, PLACEMENT_KEY};

use super::{PlacementChange, TaskSource};
use crate::metrics::Status;

/// The newest placement document this worker has seen, and how far each
/// loop has applied it.
pub struct PlacementView {
    api: Api<ConfigMap>,
    config_map: String,
    pod: String,
    latest: Mutex<PlacementDoc>,
    /// Where each worker's query endpoint is (`ENDPOINTS_KEY`).
    endpoints: Mutex<BTreeMap<String, String>>,
    /// Epoch each loop has fully applied: the worker acknowledges the lowest.
    applied: Mutex<Vec<u64>>,
    status: Arc<Status>,
    handle: tokio::runtime::Handle,
    shutdown: Arc<AtomicBool>,
}

impl PlacementView {
    /// Starts watching `config_map` through `api` (the pod's namespace).
    pub fn start(
        api: Api<ConfigMap>,
        config_map: &str,
        pod: &str,
        loops: usize,
        status: Arc<Status>,
        shutdown: Arc<AtomicBool>,
        handle: tokio::runtime::Handle,
    ) -> Arc<Self> {
        let view = Arc::new(Self {
            api,
            config_map: config_map.to_string(),
            pod: pod.to_string(),
            latest: Mutex::new(PlacementDoc::default()),
            endpoints: Mutex::new(BTreeMap::new()),
            applied: Mutex::new(vec![0; loops]),
            status,
            handle: handle.clone(),
            shutdown,
        });
        let watching = view.clone();
        handle.spawn(async move { watching.watch().await });
        view
    }

    async fn watch(self: Arc<Self>) {
        let config =
            watcher::Config::default().fields(&format!("metadata.name={}", self.config_map));
        let mut events = watcher::watcher(self.api.clone(), config)
            .default_backoff()
            .boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm)) => self.offer(&cm),
                Ok(_) => {}
                // The watcher retries with back-off; owned tasks keep running.
                Err(e) => tracing::warn!("watching placement {}: {e}", self.config_map),
            }
        }
    }

    /// Keeps `cm`'s document if it is newer: epochs never go back.
    fn offer(&self, cm: &ConfigMap) {
        if let Some(json) = cm.data.as_ref().and_then(|d| d.get(ENDPOINTS_KEY)) {
            match serde_json::from_str(json) {
                Ok(endpoints) => *self.endpoints.lock().unwrap() = endpoints,
                Err(e) => tracing::warn!("{ENDPOINTS_KEY} in {}: {e}", self.config_map),
            }
        }
        let Some(json) = cm.data.as_ref().and_then(|d| d.get(PLACEMENT_KEY)) else {
            return;
        };
        match PlacementDoc::parse(json) {
            Ok(doc) => {
                let mut latest = self.latest.lock().unwrap();
                if doc.epoch > latest.epoch {
                    *latest = doc;
                }
            }
            Err(e) => tracing::warn!("placement {}: {e}", self.config_map),
        }
    }

    /// Reads the document from the API server (a quorum read), retrying
    /// until it answers or the worker stops.
    fn read(&self) -> PlacementDoc {
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.handle.block_on(self.api.get_opt(&self.config_map)) {
                Ok(Some(cm)) => {
                    self.offer(&cm);
                    break;
                }
                // No document yet: the operator has placed nothing.
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(
                        "reading placement {}: {e}; retrying in {backoff:?}",
                        self.config_map
                    );
                    if self.shutdown.load(Ordering::Relaxed) {
                        break;
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        self.latest.lock().unwrap().clone()
    }

    /// The newest document and the workers' query endpoints.
    pub fn doc_and_endpoints(&self) -> (PlacementDoc, BTreeMap<String, String>) {
        let doc = self.latest.lock().unwrap().clone();
        (doc, self.endpoints.lock().unwrap().clone())
    }

    /// The tasks whose state this worker is to keep warm (its standbys and
    /// warm-ups in the newest document seen).
    pub fn standby_tasks(&self) -> std::collections::BTreeSet<i32> {
        let latest = self.latest.lock().unwrap();
        latest
            .workers
            .get(&self.pod)
            .map(|a| a.standby.union(&a.warmup).copied().collect())
            .unwrap_or_default()
    }

    fn set_applied(&self, index: usize, epoch: u64) {
        let mut applied = self.applied.lock().unwrap();
        applied[index] = applied[index].max(epoch);
        let lowest = applied.iter().copied().min().unwrap_or(0);
        self.status.detail.lock().unwrap().applied_epoch = Some(lowest);
    }
}

/// The loop of a worker that processes `task`: fixed for a loop count, so
/// a task never moves between loops (two transactional ids) of one worker,
/// and hashed, so the regular patterns placement produces (every other
/// task, a block) still spread over the loops.
pub fn loop_of(task: i32, loops: usize) -> usize {
    let mixed = (task as u32).wrapping_mul(0x9E37_79B1).rotate_right(16);
    mixed as usize % loops.max(1)
}

/// One loop's view of the placement.
pub struct PlacedTasks {
    pub view: Arc<PlacementView>,
    pub index: usize,
    pub loops: usize,
    /// What this loop processes, as of `epoch`.
    owned: BTreeSet<i32>,
    epoch: u64,
    task_count: i32,
    /// The task count grew: the document is compared again even at the
    /// same epoch (it may already place the new tasks).
    recount: bool,
    queued: Vec<PlacementChange>,
    /// The epoch the queued changes bring this loop to.
    queued_epoch: Option<u64>,
}

impl PlacedTasks {
    pub fn new(view: Arc<PlacementView>, index: usize, loops: usize) -> Self {
        Self {
            view,
            index,
            loops: loops.max(1),
            owned: BTreeSet::new(),
            epoch: 0,
            task_count: 0,
            recount: false,
            queued: Vec::new(),
            queued_epoch: None,
        }
    }

    fn mine(&self, doc: &PlacementDoc) -> BTreeSet<i32> {
        doc.active_of(&self.view.pod)
            .into_iter()
            .filter(|t| *t < self.task_count && loop_of(*t, self.loops) == self.index)
            .collect()
    }
}

impl TaskSource for PlacedTasks {
    fn tasks(&mut self, task_count: i32) -> Vec<i32> {
        self.task_count = task_count;
        let doc = self.view.read();
        self.owned = self.mine(&doc);
        self.epoch = doc.epoch;
        self.queued.clear();
        self.queued_epoch = None;
        self.view.set_applied(self.index, doc.epoch);
        self.owned.iter().copied().collect()
    }

    fn describe(&self) -> String {
        format!(
            "placement {} (loop {} of {})",
            self.view.config_map,
            self.index + 1,
            self.loops
        )
    }

    fn poll_change(&mut self) -> Option<PlacementChange> {
        if self.queued.is_empty() && self.queued_epoch.is_none() {
            let doc = self.view.latest.lock().unwrap().clone();
            if doc.epoch < self.epoch || (doc.epoch == self.epoch && !self.recount) {
                return None;
            }
            self.recount = false;
            let next = self.mine(&doc);
            let release: Vec<i32> = self.owned.difference(&next).copied().collect();
            let take: Vec<i32> = next.difference(&self.owned).copied().collect();
            self.owned = next;
            if release.is_empty() && take.is_empty() {
                // Nothing of this loop's changed: acknowledge at once.
                self.epoch = doc.epoch;
                self.view.set_applied(self.index, doc.epoch);
                return None;
            }
            // Releases first: a task moving between loops is never owned twice.
            if !take.is_empty() {
                self.queued.push(PlacementChange::Take {
                    epoch: doc.epoch,
                    tasks: take,
                });
            }
            if !release.is_empty() {
                self.queued.push(PlacementChange::Release {
                    epoch: doc.epoch,
                    tasks: release,
                });
            }
            self.queued_epoch = Some(doc.epoch);
        }
        self.queued.pop()
    }

    fn task_count_changed(&mut self, task_count: i32) {
        self.task_count = task_count;
        self.recount = true;
    }

    fn acknowledge(&mut self, epoch: u64) {
        if self.queued.is_empty() && self.queued_epoch == Some(epoch) {
            self.queued_epoch = None;
            self.epoch = epoch;
            self.view.set_applied(self.index, epoch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use millrace_crds::placement::Assignment;

    fn doc(epoch: u64, worker: &str, active: &[i32]) -> PlacementDoc {
        let mut d = PlacementDoc {
            epoch,
            ..Default::default()
        };
        d.workers.insert(
            worker.into(),
            Assignment {
                active: active.iter().copied().collect(),
                ..Default::default()
            },
        );
        d
    }

    /// A view that never reaches an API server: only the watch side is used.
    fn view(runtime: &tokio::runtime::Runtime, loops: usize) -> Arc<PlacementView> {
        let _guard = runtime.enter();
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        Arc::new(PlacementView {
            api: Api::namespaced(client, "n"),
            config_map: "app-placement".into(),
            pod: "app-0".into(),
            latest: Mutex::new(PlacementDoc::default()),
            endpoints: Mutex::new(BTreeMap::new()),
            applied: Mutex::new(vec![0; loops]),
            status: Arc::new(Status::default()),
            handle: runtime.handle().clone(),
            shutdown: Arc::new(AtomicBool::new(false)),
        })
    }

    #[test]
    fn a_newer_epoch_becomes_release_then_take_of_this_loops_share() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let view = view(&runtime, 2);
        let mut first = PlacedTasks::new(view.clone(), 0, 2);
        first.task_count = 8;
        first.owned = [0, 2].into();
        first.epoch = 1;
        // Loop 0 of 2 has tasks 0, 2, 3, 6, 7 of 0..8; loop 1 has 1, 4, 5.
        *view.latest.lock().unwrap() = doc(2, "app-0", &[0, 1, 3, 5]);
        assert_eq!(
            first.poll_change(),
            Some(PlacementChange::Release {
                epoch: 2,
                tasks: vec![2]
            }),
            "releases come first"
        );
        first.acknowledge(2);
        assert_eq!(
            *view.applied.lock().unwrap(),
            [0, 0],
            "not until the take is done"
        );
        assert_eq!(
            first.poll_change(),
            Some(PlacementChange::Take {
                epoch: 2,
                tasks: vec![3]
            })
        );
        first.acknowledge(2);
        assert_eq!(first.poll_change(), None);
        assert_eq!(*view.applied.lock().unwrap(), [2, 0]);
        assert_eq!(
            view.status.detail.lock().unwrap().applied_epoch,
            Some(0),
            "the worker acknowledges what every loop applied"
        );
        // The second loop has nothing to change: it acknowledges at once.
        let mut second = PlacedTasks::new(view.clone(), 1, 2);
        second.task_count = 8;
        second.owned = [1, 5].into();
        second.epoch = 1;
        assert_eq!(second.poll_change(), None);
        assert_eq!(view.status.detail.lock().unwrap().applied_epoch, Some(2));
    }

    #[test]
    fn tasks_placed_before_the_loop_counted_them_are_taken_once_it_does() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let view = view(&runtime, 1);
        let mut only = PlacedTasks::new(view.clone(), 0, 1);
        only.task_count = 2;
        only.owned = [0, 1].into();
        only.epoch = 3;
        // The operator placed the new partitions' tasks at epoch 3 already.
        *view.latest.lock().unwrap() = doc(3, "app-0", &[0, 1, 2, 3]);
        assert_eq!(
            only.poll_change(),
            None,
            "tasks 2 and 3 are not counted yet"
        );
        only.task_count_changed(4);
        assert_eq!(
            only.poll_change(),
            Some(PlacementChange::Take {
                epoch: 3,
                tasks: vec![2, 3]
            })
        );
        only.acknowledge(3);
        assert_eq!(only.poll_change(), None);
    }

    #[test]
    fn an_older_document_is_ignored() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let view = view(&runtime, 1);
        let cm = |d: &PlacementDoc| ConfigMap {
            data: Some([(PLACEMENT_KEY.to_string(), serde_json::to_string(d).unwrap())].into()),
            ..Default::default()
        };
        view.offer(&cm(&doc(5, "app-0", &[1])));
        view.offer(&cm(&doc(4, "app-0", &[2])));
        assert_eq!(view.latest.lock().unwrap().epoch, 5);
        assert_eq!(view.latest.lock().unwrap().active_of("app-0"), [1].into());
    }
}
