//! Who owns an `applicationId`.
//!
//! The id is the consumer group (committed offsets) and the prefix of every
//! transactional id: two apps with one id would skip each other's records
//! and fence each other forever, and deleting one (`deletionPolicy:
//! Delete`) would delete the other's offsets. So one app holds an id: the
//! one that claimed it first, recorded as the holder of a Lease in the
//! operator's namespace (`millrace-id-<hash of the id>`). The API server
//! creates an object once and updates it only at the version read, so two
//! apps reconciled at the same moment cannot both win. Another app claiming
//! the id is degraded and gets no workers; it takes the id over once the
//! holder is gone (not while it is being deleted: its workers run until its
//! finalizer is done). A finalizer releases the Lease; an app deleted
//! without one leaves it behind, and the next claimant takes it over.

use std::collections::BTreeMap;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, PostParams, Preconditions};
use kube::{Api, Client, ResourceExt};
use millrace_crds::StreamApp;

use crate::error::{Error, Result};

const ID_ANNOTATION: &str = "millrace.dev/application-id";
const APP_ANNOTATION: &str = "millrace.dev/app";

/// The Lease recording who holds `application_id`: FNV-1a of the id (an
/// id may be longer than an object name allows, and contain dots).
pub fn lease_name(application_id: &str) -> String {
    let hash = application_id
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    format!("millrace-id-{hash:016x}")
}

/// What a claim comes to.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    Mine,
    /// Held by this app (`namespace/name`).
    HeldBy(String),
}

/// What to do about the Lease, from what it says. Pure.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Create,
    Done(Claim),
    /// The holder no longer exists: replace it, at the version read.
    TakeOver,
}

/// `holder`: the Lease's holder (app uid) and its `namespace/name`, when
/// there is a Lease.
pub fn step(holder: Option<(&str, &str)>, me: &str, exists: impl Fn(&str) -> bool) -> Step {
    match holder {
        None => Step::Create,
        Some((uid, _)) if uid == me => Step::Done(Claim::Mine),
        Some((uid, app)) if exists(uid) => Step::Done(Claim::HeldBy(app.to_string())),
        Some(_) => Step::TakeOver,
    }
}

fn holder(lease: &Lease) -> Option<(&str, &str)> {
    let uid = lease.spec.as_ref()?.holder_identity.as_deref()?;
    let app = lease
        .annotations()
        .get(APP_ANNOTATION)
        .map_or("?", String::as_str);
    Some((uid, app))
}

fn lease_for(app: &StreamApp, application_id: &str, existing: Option<&Lease>) -> Lease {
    let uid = app.uid().unwrap_or_default();
    Lease {
        metadata: ObjectMeta {
            name: Some(lease_name(application_id)),
            resource_version: existing.and_then(|l| l.resource_version()),
            annotations: Some(BTreeMap::from([
                (ID_ANNOTATION.to_string(), application_id.to_string()),
                (
                    APP_ANNOTATION.to_string(),
                    format!("{}/{}", app.namespace().unwrap_or_default(), app.name_any()),
                ),
            ])),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(uid),
            ..Default::default()
        }),
    }
}

/// Claims `application_id` for `app`. `apps` (ready) says which apps exist.
pub async fn claim(
    client: &Client,
    namespace: &str,
    application_id: &str,
    app: &StreamApp,
    apps: &crate::scope::Apps,
) -> Result<Claim> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let name = lease_name(application_id);
    let me = app.uid().unwrap_or_default();
    let exists = |uid: &str| apps.state().iter().any(|a| a.uid().as_deref() == Some(uid));
    // Each write is conditional: losing a race means reading again.
    for _ in 0..5 {
        let lease = leases.get_opt(&name).await?;
        if let Some(l) = &lease {
            let id = l.annotations().get(ID_ANNOTATION);
            if id.is_some_and(|id| id != application_id) {
                return Err(Error::Other(format!(
                    "Lease {namespace}/{name} records application id {id:?}, not '{application_id}'"
                )));
            }
        }
        let outcome = match step(lease.as_ref().and_then(holder), &me, exists) {
            Step::Done(claim) => return Ok(claim),
            Step::Create => {
                leases
                    .create(
                        &PostParams::default(),
                        &lease_for(app, application_id, None),
                    )
                    .await
            }
            Step::TakeOver => {
                leases
                    .replace(
                        &name,
                        &PostParams::default(),
                        &lease_for(app, application_id, lease.as_ref()),
                    )
                    .await
            }
        };
        match outcome {
            Ok(_) => return Ok(Claim::Mine),
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Other(format!(
        "claiming application id '{application_id}': the Lease kept changing"
    )))
}

/// Whether `app` holds `application_id`, without claiming it: an app being
/// deleted must not take over an id (and then delete the data a deleted
/// holder kept under it). No Lease (an app from before claims were
/// recorded) is the app's own.
pub async fn holds(
    client: &Client,
    namespace: &str,
    application_id: &str,
    app: &StreamApp,
) -> Result<Claim> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let lease = leases.get_opt(&lease_name(application_id)).await?;
    Ok(match lease.as_ref().and_then(holder) {
        Some((uid, holder)) if Some(uid) != app.uid().as_deref() => {
            Claim::HeldBy(holder.to_string())
        }
        _ => Claim::Mine,
    })
}

/// Gives the id up, when `app` holds it.
pub async fn release(
    client: &Client,
    namespace: &str,
    application_id: &str,
    app: &StreamApp,
) -> Result<()> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let name = lease_name(application_id);
    let Some(lease) = leases.get_opt(&name).await? else {
        return Ok(());
    };
    if holder(&lease).map(|(uid, _)| uid) != app.uid().as_deref() {
        return Ok(());
    }
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            resource_version: lease.resource_version(),
            uid: lease.uid(),
        }),
        ..Default::default()
    };
    match leases.delete(&name, &params).await {
        Ok(_) => Ok(()),
        // Taken over or gone meanwhile: not ours to delete.
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_claim_holds_until_its_app_is_gone() {
        let alive = |uid: &str| uid == "holder";
        assert_eq!(step(None, "me", alive), Step::Create);
        assert_eq!(
            step(Some(("me", "ns/me")), "me", alive),
            Step::Done(Claim::Mine)
        );
        assert_eq!(
            step(Some(("holder", "team-a/router")), "me", alive),
            Step::Done(Claim::HeldBy("team-a/router".into()))
        );
        assert_eq!(
            step(Some(("deleted", "team-a/old")), "me", alive),
            Step::TakeOver
        );
    }

    #[test]
    fn lease_names_are_object_names_for_any_id() {
        let long = "a.b_c-".repeat(60);
        for id in ["orders", "team-a.router", long.as_str()] {
            let name = lease_name(id);
            assert!(
                name.len() <= 63 && name.starts_with("millrace-id-"),
                "{name}"
            );
        }
        assert_ne!(lease_name("orders"), lease_name("orders2"));
    }
}
