//! Leader election through a coordination.k8s.io Lease, so two operator
//! replicas never reconcile at once. A replica that loses its lease exits:
//! restarting clean is simpler and safer than winding down a controller
//! mid-reconcile.
//!
//! A leader acts only within `RENEW_DEADLINE` of its last renewal, shorter
//! than the lease, so it stops placing, fencing and writing before another
//! replica can take the lease: one paused (SIGSTOP, a frozen node, a long
//! GC-like stall) past the deadline exits at its first write after it
//! resumes (`ensure_leading`), rather than acting until its next renewal
//! finds the lease taken.
//!
//! The lease is held from a thread of its own, with its own runtime and API
//! client ([`Leadership`]): a thousand reconciles busy on the operator's
//! runtime, or queued on its client, once delayed a renewal past the
//! deadline and made a loaded operator exit and crash-loop.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::oneshot;

pub const LEASE_NAME: &str = "millrace-operator";
const LEASE_DURATION: Duration = Duration::from_secs(15);
const RETRY: Duration = Duration::from_secs(2);
/// How long after its last renewal a leader may still act. The other
/// replicas wait `LEASE_DURATION` after it (by the renew time it wrote), so
/// 5 s separate the two; a renewal is tried every `LEASE_DURATION / 3`.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);

/// When this replica last renewed its lease; unset while election is off.
struct Tenure {
    started: Instant,
    renewed_ms: AtomicU64,
}

static TENURE: OnceLock<Tenure> = OnceLock::new();

fn renewed_now() {
    let tenure = TENURE.get_or_init(|| Tenure {
        started: Instant::now(),
        renewed_ms: AtomicU64::new(0),
    });
    let ms = tenure.started.elapsed().as_millis() as u64;
    tenure.renewed_ms.store(ms, Ordering::SeqCst);
}

/// How long since the last renewal, when this replica leads by a lease.
fn since_renewal() -> Option<Duration> {
    let tenure = TENURE.get()?;
    let renewed = Duration::from_millis(tenure.renewed_ms.load(Ordering::SeqCst));
    Some(tenure.started.elapsed().saturating_sub(renewed))
}

/// Whether this replica, leading by a lease, renewed it within the deadline
/// (true while election is off).
pub fn leading_within_deadline() -> bool {
    since_renewal().is_none_or(within_deadline)
}

/// Whether a leader last renewed `since_renewal` ago may still act.
pub fn within_deadline(since_renewal: Duration) -> bool {
    since_renewal < RENEW_DEADLINE
}

/// Called before every write that only the leader may make (the placement,
/// fencing, objects, scale): past the renew deadline another replica may
/// hold the lease by now, so this one exits without writing.
pub fn ensure_leading(what: &str) {
    if let Some(since) = since_renewal() {
        if !within_deadline(since) {
            tracing::error!(
                "the leader lease was last renewed {since:?} ago, past the {RENEW_DEADLINE:?} renew deadline: another replica may lead; exiting before {what}"
            );
            std::process::exit(1);
        }
    }
}

/// Whether `lease` may be taken by `me` at `now`: free, expired, or already mine.
pub fn can_acquire(lease: &LeaseSpec, me: &str, now: Timestamp) -> bool {
    let holder = lease.holder_identity.as_deref().unwrap_or("");
    if holder.is_empty() || holder == me {
        return true;
    }
    let Some(renewed) = lease.renew_time.as_ref() else {
        return true;
    };
    let duration = SignedDuration::from_secs(lease.lease_duration_seconds.unwrap_or(15) as i64);
    renewed.0 + duration < now
}

/// The lease, held by a thread of its own (see the module's note).
pub struct Leadership {
    lost: oneshot::Receiver<anyhow::Error>,
    release: oneshot::Sender<oneshot::Sender<()>>,
}

impl Leadership {
    /// Returns once this replica holds the lease `LEASE_NAME` in `namespace`.
    /// The holding thread makes its own client from the environment (as
    /// `Client::try_default`), so no request of the reconciles queues
    /// before a renewal.
    pub async fn acquire(namespace: String, identity: String) -> anyhow::Result<Self> {
        let (acquired_tx, acquired) = oneshot::channel::<anyhow::Result<()>>();
        let (lost_tx, lost) = oneshot::channel();
        let (release, release_rx) = oneshot::channel::<oneshot::Sender<()>>();
        let hold = async move {
            let elector = match Client::try_default().await {
                Ok(client) => Elector::new(client, &namespace, identity),
                Err(e) => return drop(acquired_tx.send(Err(e.into()))),
            };
            if let Err(e) = elector.acquire().await {
                return drop(acquired_tx.send(Err(e)));
            }
            let _ = acquired_tx.send(Ok(()));
            tokio::select! {
                Err(e) = elector.hold() => drop(lost_tx.send(e)),
                Ok(done) = release_rx => {
                    elector.release().await;
                    let _ = done.send(());
                }
            }
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("leader-lease".into())
            .spawn(move || runtime.block_on(hold))?;
        acquired
            .await
            .map_err(|_| anyhow::anyhow!("the leader-lease thread stopped"))??;
        Ok(Self { lost, release })
    }

    /// Resolves when the lease is lost or could not be renewed in time.
    pub async fn lost(&mut self) -> anyhow::Error {
        (&mut self.lost)
            .await
            .unwrap_or_else(|_| anyhow::anyhow!("the leader-lease thread stopped"))
    }

    /// Gives the lease up (a clean shutdown), so a standby takes over at
    /// once instead of after the lease expires.
    pub async fn release(self) {
        let (done, released) = oneshot::channel();
        if self.release.send(done).is_ok() {
            let _ = released.await;
        }
    }
}

struct Elector {
    api: Api<Lease>,
    identity: String,
}

impl Elector {
    fn new(client: Client, namespace: &str, identity: String) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            identity,
        }
    }

    /// Returns once this replica holds the lease.
    async fn acquire(&self) -> anyhow::Result<()> {
        loop {
            if self.try_take().await? {
                renewed_now();
                tracing::info!(identity = %self.identity, "became leader");
                return Ok(());
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// Renews forever; returns an error when the lease is lost, or when no
    /// renewal succeeded within the renew deadline (the API server
    /// unreachable: another replica may take the lease meanwhile).
    async fn hold(&self) -> anyhow::Result<Infallible> {
        let mut wait = LEASE_DURATION / 3;
        loop {
            tokio::time::sleep(wait).await;
            // Woken long after the last renewal (this process was paused):
            // the lease may be another's by now.
            ensure_leading("renewing the lease");
            match self.try_take().await {
                Ok(true) => {
                    renewed_now();
                    wait = LEASE_DURATION / 3;
                }
                Ok(false) => anyhow::bail!("lost the leader lease to another replica"),
                Err(e) => {
                    let since = since_renewal().unwrap_or_default();
                    if !within_deadline(since + RETRY) {
                        anyhow::bail!("could not renew the leader lease for {since:?}: {e}");
                    }
                    tracing::warn!("renewing the leader lease: {e}; retrying");
                    wait = RETRY;
                }
            }
        }
    }

    async fn release(&self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(LEASE_NAME).await {
            let spec = lease.spec.get_or_insert_with(Default::default);
            if spec.holder_identity.as_deref() == Some(self.identity.as_str()) {
                spec.holder_identity = None;
                spec.renew_time = None;
                if self
                    .api
                    .replace(LEASE_NAME, &PostParams::default(), &lease)
                    .await
                    .is_ok()
                {
                    tracing::info!("released the leader lease");
                }
            }
        }
    }

    /// One compare-and-swap on the Lease; the resourceVersion precondition
    /// makes two replicas racing for an expired lease have one winner.
    async fn try_take(&self) -> anyhow::Result<bool> {
        let now = Timestamp::now();
        let spec = |transitions: i32, acquired: Option<MicroTime>| LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
            acquire_time: acquired.or(Some(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..Default::default()
        };
        match self.api.get_opt(LEASE_NAME).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(LEASE_NAME.into()),
                        ..Default::default()
                    },
                    spec: Some(spec(0, None)),
                };
                match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e.into()),
                }
            }
            Some(mut lease) => {
                let current = lease.spec.clone().unwrap_or_default();
                if !can_acquire(&current, &self.identity, now) {
                    return Ok(false);
                }
                let mine = current.holder_identity.as_deref() == Some(self.identity.as_str());
                let transitions = current.lease_transitions.unwrap_or(0) + i32::from(!mine);
                lease.spec = Some(spec(
                    transitions,
                    if mine {
                        current.acquire_time.clone()
                    } else {
                        None
                    },
                ));
                match self
                    .api
                    .replace(LEASE_NAME, &PostParams::default(), &lease)
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, renewed_secs_ago: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(
                Timestamp::now() - SignedDuration::from_secs(renewed_secs_ago),
            )),
            ..Default::default()
        }
    }

    #[test]
    fn a_live_lease_of_another_replica_is_not_taken() {
        assert!(!can_acquire(&lease("other", 5), "me", Timestamp::now()));
    }

    #[test]
    fn a_leader_acts_only_within_the_renew_deadline_shorter_than_the_lease() {
        assert!(within_deadline(Duration::from_secs(9)));
        assert!(!within_deadline(RENEW_DEADLINE));
        assert!(RENEW_DEADLINE + Duration::from_secs(5) <= LEASE_DURATION);
    }

    #[test]
    fn expired_free_or_own_leases_are_taken() {
        assert!(can_acquire(&lease("other", 20), "me", Timestamp::now()));
        assert!(can_acquire(&lease("me", 5), "me", Timestamp::now()));
        assert!(can_acquire(&LeaseSpec::default(), "me", Timestamp::now()));
    }
}
