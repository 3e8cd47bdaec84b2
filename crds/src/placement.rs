//! The placement document (design brief D1): which worker pod runs which
//! tasks. The operator writes it; workers read it.
//!
//! It lives in a ConfigMap `<app>-placement` owned by the StreamApp, under
//! the key [`PLACEMENT_KEY`], as JSON. A ConfigMap rather than a small CRD:
//! workers already have a Role for ConfigMaps of their app, `kubectl get
//! configmap <app>-placement -o yaml` shows it without installing anything,
//! its writes are compare-and-swap on `resourceVersion` like any object, and
//! it changes often without re-triggering the StreamApp's reconcile.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Key of the JSON document in the placement ConfigMap's `data`.
pub const PLACEMENT_KEY: &str = "placement.json";

/// Key of the workers' query endpoints (JSON: pod name → `ip:port`) in the
/// placement ConfigMap: written by the operator as it sees the pods, read
/// by workers to forward queries. Apart from the document, so an address
/// change is no placement epoch.
pub const ENDPOINTS_KEY: &str = "endpoints.json";

/// Name of an app's placement ConfigMap.
pub fn placement_config_map(app: &str) -> String {
    format!("{app}-placement")
}

/// One worker's tasks.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Assignment {
    /// Tasks this worker processes.
    #[serde(default)]
    pub active: BTreeSet<i32>,
    /// Tasks whose state this worker keeps warm for a fail-over.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub standby: BTreeSet<i32>,
    /// Copies being built on this worker so a task can move here.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub warmup: BTreeSet<i32>,
}

/// A task on its way from one worker to another: already revoked from
/// `from` (in epoch `revokedEpoch`), not yet given to anyone.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Move {
    pub task: i32,
    pub from: String,
    pub to: String,
    /// The epoch whose document revoked the task from `from`: `from` has let
    /// go once it acknowledges this epoch (or has been fenced).
    pub revoked_epoch: u64,
    /// When the revocation was written (Unix milliseconds).
    pub since_ms: u64,
}

/// An epoch-numbered placement with the handoffs in flight.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PlacementDoc {
    /// Grows by one with every change.
    pub epoch: u64,
    /// Worker pod name → its tasks.
    #[serde(default)]
    pub workers: BTreeMap<String, Assignment>,
    /// Handoffs waiting for the old owner's acknowledgement or fencing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moves: Vec<Move>,
}

impl PlacementDoc {
    /// The worker whose `active` holds `task`.
    pub fn active_owner(&self, task: i32) -> Option<&str> {
        self.workers
            .iter()
            .find(|(_, a)| a.active.contains(&task))
            .map(|(w, _)| w.as_str())
    }

    /// The active tasks of `worker` (none when it is not in the document).
    pub fn active_of(&self, worker: &str) -> BTreeSet<i32> {
        self.workers
            .get(worker)
            .map(|a| a.active.clone())
            .unwrap_or_default()
    }

    /// Parses the document, naming the ConfigMap key on error.
    pub fn parse(json: &str) -> Result<Self, String> {
        serde_json::from_str(json).map_err(|e| format!("{PLACEMENT_KEY}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_json() {
        let mut doc = PlacementDoc {
            epoch: 3,
            ..Default::default()
        };
        doc.workers.insert(
            "app-0".into(),
            Assignment {
                active: [0, 2].into(),
                standby: [1].into(),
                warmup: BTreeSet::new(),
            },
        );
        doc.moves.push(Move {
            task: 1,
            from: "app-1".into(),
            to: "app-0".into(),
            revoked_epoch: 3,
            since_ms: 10,
        });
        let json = serde_json::to_string(&doc).unwrap();
        assert!(json.contains(r#""revokedEpoch":3"#), "{json}");
        assert_eq!(PlacementDoc::parse(&json).unwrap(), doc);
        assert_eq!(doc.active_owner(2), Some("app-0"));
        assert_eq!(doc.active_owner(1), None);
        assert!(PlacementDoc::parse("{")
            .unwrap_err()
            .contains(PLACEMENT_KEY));
    }
}
