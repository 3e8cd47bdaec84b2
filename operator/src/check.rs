//! `millrace-operator check`: what the chart's `helm test` runs, from the
//! operator's own image. Every ready pod behind the operator's metrics
//! Service answers `/healthz` and `/metrics`, and (with leader election)
//! exactly one of them holds the leader lease, read from its `/metrics`.

use std::time::Duration;

use anyhow::{bail, Context};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ListParams;
use kube::{Api, Client};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The ready pods behind `service` in `namespace`, at its `metrics` port:
/// read from the Service's selector and the pods themselves, not its
/// EndpointSlices (which refuse the test bed's loopback pod addresses).
async fn endpoints(client: Client, namespace: &str, service: &str) -> anyhow::Result<Vec<String>> {
    let svc = Api::<Service>::namespaced(client.clone(), namespace)
        .get(service)
        .await
        .with_context(|| format!("reading service {namespace}/{service}"))?;
    let spec = svc.spec.unwrap_or_default();
    let selector = spec
        .selector
        .filter(|s| !s.is_empty())
        .with_context(|| format!("service {namespace}/{service} selects no pods"))?
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let target = spec
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("metrics"))
        .map(|p| p.target_port.clone().unwrap_or(IntOrString::Int(p.port)))
        .with_context(|| format!("service {namespace}/{service} has no port named metrics"))?;
    let pods = Api::<Pod>::namespaced(client, namespace)
        .list(&ListParams::default().labels(&selector))
        .await
        .with_context(|| format!("listing the pods of service {namespace}/{service}"))?;
    let mut found = Vec::new();
    for pod in pods.items {
        let status = pod.status.unwrap_or_default();
        let ready = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let (Some(ip), true, None) = (status.pod_ip, ready, pod.metadata.deletion_timestamp) else {
            continue;
        };
        let port = match &target {
            IntOrString::Int(n) => Some(*n),
            IntOrString::String(name) => pod
                .spec
                .iter()
                .flat_map(|s| &s.containers)
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| p.name.as_deref() == Some(name))
                .map(|p| p.container_port),
        };
        if let Some(port) = port {
            found.push(if ip.contains(':') {
                format!("[{ip}]:{port}")
            } else {
                format!("{ip}:{port}")
            });
        }
    }
    Ok(found)
}

/// `GET path` over plain HTTP/1.0: the status and body.
async fn get(address: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(address).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())
            .await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        anyhow::Ok(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .with_context(|| format!("GET http://{address}{path}: no answer in 10 s"))?
        .with_context(|| format!("GET http://{address}{path}"))?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("GET http://{address}{path}: not an HTTP response"))?;
    Ok((status, body.to_string()))
}

/// The value of the unlabelled `name` sample in an exposition.
fn sample(exposition: &str, name: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok())?
    })
}

/// Checks the operator's replicas, retrying for up to a minute (right
/// after a rollout a ready replica may not hold the lease yet); returns
/// what it saw, or the last failure.
pub async fn check(namespace: &str, service: &str, expect_leader: bool) -> anyhow::Result<String> {
    let client = Client::try_default().await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match check_once(client.clone(), namespace, service, expect_leader).await {
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("not yet: {e:#}");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            outcome => return outcome,
        }
    }
}

async fn check_once(
    client: Client,
    namespace: &str,
    service: &str,
    expect_leader: bool,
) -> anyhow::Result<String> {
    let replicas = endpoints(client, namespace, service).await?;
    if replicas.is_empty() {
        bail!("service {namespace}/{service} has no ready pod: is the operator running and ready?");
    }
    let mut leaders = 0;
    for replica in &replicas {
        let (status, _) = get(replica, "/healthz").await?;
        if status != 200 {
            bail!("the operator at {replica} answers /healthz with {status}");
        }
        let (status, metrics) = get(replica, "/metrics").await?;
        if status != 200 {
            bail!("the operator at {replica} answers /metrics with {status}");
        }
        if sample(&metrics, "millrace_operator_leader") == Some(1.0) {
            leaders += 1;
        }
    }
    if expect_leader && leaders != 1 {
        bail!(
            "{leaders} of {} replicas hold the leader lease; expected exactly one",
            replicas.len()
        );
    }
    Ok(format!(
        "{} replica(s) answer /healthz and /metrics ({replicas:?}); {leaders} leading",
        replicas.len()
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn samples_are_read_by_exact_name() {
        let text = "# TYPE millrace_operator_leader gauge\nmillrace_operator_leader 1\nmillrace_operator_leader_x 5\n";
        assert_eq!(super::sample(text, "millrace_operator_leader"), Some(1.0));
        assert_eq!(super::sample(text, "millrace_operator_lead"), None);
    }
}
