//! Which namespaces the operator serves: every namespace (the chart's
//! ClusterRole), or a list of them (chart value `watchNamespaces`: a Role in
//! each and no cluster-wide grant), so one team's operator cannot read or
//! write anything outside the namespaces it was given.

use std::sync::Arc;

use kube::core::NamespaceResourceScope;
use kube::runtime::reflector::{store::WriterDropped, Store};
use kube::{Api, Client, Resource};
use millrace_crds::StreamApp;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    Cluster,
    Namespaces(Vec<String>),
}

impl Scope {
    /// From `--watch-namespaces`: none (or only blanks) means the cluster.
    pub fn new(namespaces: &[String]) -> Self {
        let mut list: Vec<String> = namespaces
            .iter()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect();
        list.sort();
        list.dedup();
        match list.is_empty() {
            true => Scope::Cluster,
            false => Scope::Namespaces(list),
        }
    }

    /// The namespaces served, in the order of [`Scope::apis`] (`None`: all).
    pub fn namespaces(&self) -> Vec<Option<String>> {
        match self {
            Scope::Cluster => vec![None],
            Scope::Namespaces(list) => list.iter().cloned().map(Some).collect(),
        }
    }

    /// One API per namespace served (one over all of them for the cluster).
    pub fn apis<K>(&self, client: &Client) -> Vec<Api<K>>
    where
        K: Resource<Scope = NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match self {
            Scope::Cluster => vec![Api::all(client.clone())],
            Scope::Namespaces(list) => list
                .iter()
                .map(|ns| Api::namespaced(client.clone(), ns))
                .collect(),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Scope::Cluster => "every namespace".into(),
            Scope::Namespaces(list) => format!("namespaces {}", list.join(", ")),
        }
    }
}

/// The StreamApps the controllers' watches last saw, one store per
/// namespace served (`None`: the cluster's): what placement and autoscaling
/// poll, and whether the holder of an application id still exists.
#[derive(Clone, Default)]
pub struct Apps(pub Vec<(Option<String>, Store<StreamApp>)>);

impl Apps {
    /// Once the watch of `namespace` has listed its apps: one namespace
    /// whose watch cannot list does not hold up the others.
    pub async fn wait_until_ready(&self, namespace: &str) -> Result<(), WriterDropped> {
        for (served, store) in &self.0 {
            if served.as_deref().is_none_or(|s| s == namespace) {
                store.wait_until_ready().await?;
            }
        }
        Ok(())
    }

    pub fn state(&self) -> Vec<Arc<StreamApp>> {
        self.0.iter().flat_map(|(_, s)| s.state()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_namespaces_is_the_cluster_and_a_list_is_trimmed_sorted_and_unique() {
        assert_eq!(Scope::new(&[]), Scope::Cluster);
        assert_eq!(Scope::new(&[" ".into(), String::new()]), Scope::Cluster);
        assert_eq!(
            Scope::new(&["team-b".into(), " team-a".into(), "team-b".into()]),
            Scope::Namespaces(vec!["team-a".into(), "team-b".into()])
        );
        assert_eq!(
            Scope::new(&["a".into()]).describe(),
            "namespaces a".to_string()
        );
    }
}
