//! One observation of an app's worker pods and their `/tasks` reports,
//! shared by the placement driver and the autoscaler, so a poll lists the
//! pods and asks each worker once.
//!
//! The loops keep their schedules: placement observes on every one of its
//! polls (every second, faster while tasks move) and leaves the result
//! here; the autoscaler, which polls every `pollInterval`, takes that one
//! when it is recent ([`Observations::recent`]) and observes itself only
//! when it is not (placement skipped the app or is being restarted).
//!
//! Pods come from a watch of every worker pod ([`Observations::watching`]),
//! not a list per app per poll: a thousand apps polled every second listed
//! pods a thousand times a second and saturated the API server.
//!
//! Why sharing cannot make placement move a task wrongly: placement never
//! reads a cached observation, it always takes a fresh one
//! ([`Observations::fresh`]). And even a stale one would be safe: a move
//! completes only on the old owner's acknowledgement of the revoke epoch,
//! which an older report can only understate (epochs only grow), or after
//! fencing the old owner's producers in Kafka; documents are written
//! compare-and-swap ([`crate::handoff`]). Staleness could delay a move or
//! fence a worker that had let go, never give a task two committing owners.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::runtime::reflector::Store;
use kube::{Api, Client, ResourceExt};
use millrace_crds::worker_status::{unix_ms, WorkerStatus};

use crate::build::{ADMIN_PORT_NAME, QUERY_PORT_NAME};
use crate::error::Result;
use crate::supervise::lock;
use crate::{model, worker_status};

/// An app's worker pods at one moment.
#[derive(Debug)]
pub struct WorkerObservation {
    pub pods: Vec<ObservedPod>,
    /// Unix seconds when the reports were asked for.
    pub at_s: f64,
    taken: Instant,
}

#[derive(Debug)]
pub struct ObservedPod {
    pub name: String,
    /// Ready and not being deleted.
    pub ready: bool,
    /// Its `/tasks` report, or why there is none.
    pub report: Result<WorkerStatus, String>,
    /// Where its query API listens (`ip:port`), when it serves one.
    pub query_address: Option<String>,
}

impl ObservedPod {
    pub fn status(&self) -> Option<&WorkerStatus> {
        self.report.as_ref().ok()
    }
}

impl WorkerObservation {
    pub fn age(&self) -> Duration {
        self.taken.elapsed()
    }
}

/// Observations older than this are dropped when another is stored, so
/// deleted apps do not stay behind.
const FORGOTTEN_AFTER: Duration = Duration::from_secs(300);

/// How long an observation waits for its namespace's pod watch to list
/// before it lists the pods itself.
const WATCH_READY_WAIT: Duration = Duration::from_secs(2);

/// The latest observation per app (namespace, name).
pub struct Observations {
    client: Client,
    /// Worker pods as the watches of the served namespaces last saw them,
    /// per namespace served (`None` inside: the cluster's); `None`: listed
    /// per observation.
    pods: Option<Vec<(Option<String>, Store<Pod>)>>,
    latest: Mutex<HashMap<(String, String), Arc<WorkerObservation>>>,
    /// How old a placement observation may be and still serve another loop.
    reuse_within: Duration,
}

impl Observations {
    /// `placement_interval`: how often placement observes each app.
    pub fn new(client: Client, placement_interval: Duration) -> Self {
        Self {
            client,
            pods: None,
            latest: Mutex::default(),
            // Three placement polls: an older one means placement is not
            // observing the app (skipped, slow, or restarting).
            reuse_within: (3 * placement_interval).max(Duration::from_secs(3)),
        }
    }

    /// Observes pods through `stores`, each fed by a watch of worker pods
    /// (label `app.kubernetes.io/name=millrace-worker`) in a served namespace.
    pub fn watching(self, stores: Vec<(Option<String>, Store<Pod>)>) -> Self {
        Self {
            pods: Some(stores),
            ..self
        }
    }

    /// The app's worker pods: from the watch serving its namespace once it
    /// has listed, else from the API server. Only that namespace's watch is
    /// waited for, and briefly: one namespace whose watch cannot list (its
    /// Role gone) must not hold up every other tenant's placement.
    async fn pods(&self, namespace: &str, app: &str) -> Result<Vec<Arc<Pod>>> {
        let serving = self
            .pods
            .iter()
            .flatten()
            .find(|(served, _)| served.as_deref().is_none_or(|s| s == namespace));
        let Some((_, store)) = serving else {
            return list_pods(&self.client, namespace, app).await;
        };
        match tokio::time::timeout(WATCH_READY_WAIT, store.wait_until_ready()).await {
            Ok(Ok(())) => {}
            _ => return list_pods(&self.client, namespace, app).await,
        }
        let selector = model::selector_labels(app);
        let mut pods: Vec<Arc<Pod>> = store
            .state()
            .into_iter()
            .filter(|p| {
                p.namespace().as_deref() == Some(namespace)
                    && selector.iter().all(|(k, v)| p.labels().get(k) == Some(v))
            })
            .collect();
        pods.sort_by_key(|p| p.name_any());
        Ok(pods)
    }

    /// How old an observation [`Observations::recent`] callers should take.
    pub fn reuse_within(&self) -> Duration {
        self.reuse_within
    }

    /// Observes now and keeps the result for [`Observations::recent`].
    pub async fn fresh(&self, namespace: &str, app: &str) -> Result<Arc<WorkerObservation>> {
        let pods = self.pods(namespace, app).await?;
        let observation = Arc::new(observe(&pods).await);
        let mut latest = lock(&self.latest);
        latest.retain(|_, o| o.age() < FORGOTTEN_AFTER);
        latest.insert(
            (namespace.to_string(), app.to_string()),
            observation.clone(),
        );
        Ok(observation)
    }

    /// The latest observation when it is younger than `max_age`, else a
    /// fresh one.
    pub async fn recent(
        &self,
        namespace: &str,
        app: &str,
        max_age: Duration,
    ) -> Result<Arc<WorkerObservation>> {
        let key = (namespace.to_string(), app.to_string());
        let cached = lock(&self.latest)
            .get(&key)
            .filter(|o| o.age() < max_age)
            .cloned();
        match cached {
            Some(o) => Ok(o),
            None => self.fresh(namespace, app).await,
        }
    }
}

async fn list_pods(client: &Client, namespace: &str, app: &str) -> Result<Vec<Arc<Pod>>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let list = pods
        .list(&ListParams::default().labels(&model::selector_string(app)))
        .await?;
    Ok(list.items.into_iter().map(Arc::new).collect())
}

/// Asks every one of an app's pods with an address for `/tasks`, all at
/// once.
pub async fn observe(pods: &[Arc<Pod>]) -> WorkerObservation {
    let (taken, at_s) = (Instant::now(), unix_ms() as f64 / 1000.0);
    let polls = pods.iter().map(|pod| async move {
        let ready = pod.metadata.deletion_timestamp.is_none()
            && pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
        let query_address = ip
            .as_ref()
            .zip(container_port(pod, QUERY_PORT_NAME))
            .map(|(ip, port)| format!("{ip}:{port}"));
        let name = pod.name_any();
        let report = match (ip, admin_port(pod)) {
            (Some(ip), Some(port)) => worker_status::poll(&ip, port)
                .await
                // A watch can lag a pod's end: its address may serve
                // another pod by now, whose report must not count as this
                // one's (an acknowledged revoke, adopted tasks).
                .and_then(
                    |r| match millrace_crds::identity::is_loop_of(&r.worker_id, &name) {
                        true => Ok(r),
                        false => Err(format!(
                            "{ip}:{port} answers as {}, not {name}",
                            r.worker_id
                        )),
                    },
                )
                .inspect_err(|e| {
                    tracing::debug!("{e}");
                }),
            (None, _) => Err("no pod IP yet".to_string()),
            (_, None) => Err("no admin port".to_string()),
        };
        ObservedPod {
            name,
            ready,
            report,
            query_address,
        }
    });
    WorkerObservation {
        pods: futures::future::join_all(polls).await,
        at_s,
        taken,
    }
}

/// The worker container's admin port (`/tasks`).
pub fn admin_port(pod: &Pod) -> Option<u16> {
    container_port(pod, ADMIN_PORT_NAME)
}

fn container_port(pod: &Pod, name: &str) -> Option<u16> {
    pod.spec
        .as_ref()?
        .containers
        .first()?
        .ports
        .as_ref()?
        .iter()
        .find(|p| p.name.as_deref() == Some(name))
        .map(|p| p.container_port as u16)
}

#[cfg(test)]
#[path = "workers_tests.rs"]
mod tests;
