//! Leader election through a coordination.k8s.io Lease, so two operator
//! replicas never reconcile at once. A replica that loses its lease exits:
//! restarting clean is simpler and safer than winding down a controller
//! mid-reconcile.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::PostParams;
use kube::{Api, Client};

pub const LEASE_NAME: &str = "millrace-operator";
const LEASE_DURATION: Duration = Duration::from_secs(15);
const RETRY: Duration = Duration::from_secs(2);

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

pub struct Elector {
    api: Api<Lease>,
    identity: String,
}

impl Elector {
    pub fn new(client: Client, namespace: &str, identity: String) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            identity,
        }
    }

    /// Returns once this replica holds the lease.
    pub async fn acquire(&self) -> anyhow::Result<()> {
        loop {
            if self.try_take().await? {
                tracing::info!(identity = %self.identity, "became leader");
                return Ok(());
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// Renews forever; returns an error when the lease is lost.
    pub async fn hold(&self) -> anyhow::Result<()> {
        loop {
            tokio::time::sleep(LEASE_DURATION / 3).await;
            if !self.try_take().await? {
                anyhow::bail!("lost the leader lease to another replica");
            }
        }
    }

    /// Gives the lease up on a clean shutdown, so a standby takes over at
    /// once instead of after the lease expires.
    pub async fn release(&self) {
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
    fn expired_free_or_own_leases_are_taken() {
        assert!(can_acquire(&lease("other", 20), "me", Timestamp::now()));
        assert!(can_acquire(&lease("me", 5), "me", Timestamp::now()));
        assert!(can_acquire(&LeaseSpec::default(), "me", Timestamp::now()));
    }
}
