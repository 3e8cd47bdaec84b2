//! Who owns an `applicationId`. Pure.
//!
//! The id is the consumer group (committed offsets) and the prefix of every
//! transactional id: two apps with one id would skip each other's records
//! and fence each other forever. So one app holds an id: the one created
//! first (ties, which the API server's one-second timestamps allow, go to
//! the first by namespace and name). Any other app claiming it is degraded
//! and gets no workers, and takes the id over once the holder is gone (not
//! while it is being deleted: its workers run until its finalizer is done).

use std::cmp::Ordering;

use kube::ResourceExt;
use millrace_crds::StreamApp;

/// An app's claim on its application id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub application_id: String,
    /// Creation time, Unix seconds; `None` while not yet stored.
    pub created: Option<i64>,
}

impl From<&StreamApp> for Claim {
    fn from(app: &StreamApp) -> Self {
        Claim {
            namespace: app.namespace().unwrap_or_default(),
            name: app.name_any(),
            uid: app.uid().unwrap_or_default(),
            application_id: millrace_crds::application_id(app),
            created: app
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_second()),
        }
    }
}

impl Claim {
    fn precedes(&self, other: &Claim) -> Ordering {
        // An app without a creation time is not stored yet: it comes last.
        let created = |c: &Claim| c.created.unwrap_or(i64::MAX);
        created(self)
            .cmp(&created(other))
            .then_with(|| (&self.namespace, &self.name).cmp(&(&other.namespace, &other.name)))
    }
}

/// The app holding `mine.application_id`, when it is another one.
pub fn held_by_another<'a>(
    mine: &Claim,
    all: impl IntoIterator<Item = &'a Claim>,
) -> Option<&'a Claim> {
    all.into_iter()
        .filter(|c| c.application_id == mine.application_id && c.uid != mine.uid)
        .filter(|c| c.precedes(mine) == Ordering::Less)
        .min_by(|a, b| a.precedes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(namespace: &str, name: &str, id: &str, created: Option<i64>) -> Claim {
        Claim {
            namespace: namespace.into(),
            name: name.into(),
            uid: format!("{namespace}/{name}"),
            application_id: id.into(),
            created,
        }
    }

    #[test]
    fn the_first_app_created_holds_the_id_and_the_others_are_told_which_it_is() {
        let first = claim("team-a", "router", "orders", Some(100));
        let second = claim("team-b", "copy", "orders", Some(200));
        let other = claim("team-c", "unrelated", "payments", Some(50));
        let all = [first.clone(), second.clone(), other.clone()];
        assert_eq!(held_by_another(&first, &all), None);
        assert_eq!(held_by_another(&second, &all), Some(&first));
        assert_eq!(held_by_another(&other, &all), None);
    }

    #[test]
    fn ties_go_to_the_first_by_namespace_and_name_and_unstored_apps_come_last() {
        let a = claim("a", "x", "id", Some(100));
        let b = claim("b", "x", "id", Some(100));
        let new = claim("0", "new", "id", None);
        let all = [b.clone(), a.clone(), new.clone()];
        assert_eq!(held_by_another(&b, &all), Some(&a));
        assert_eq!(held_by_another(&a, &all), None);
        assert_eq!(held_by_another(&new, &all), Some(&a));
    }
}
