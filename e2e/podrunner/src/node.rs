//! The Node this runner plays the kubelet for: registration and heartbeats
//! (node status and the node Lease), so the node lifecycle controller keeps
//! it Ready and the scheduler places pods on it.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeCondition, NodeStatus, NodeSystemInfo};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};

/// Capacity advertised to the scheduler: generous, because every "pod" is a
/// process on this one machine and requests are not enforced.
pub const CPU_CAPACITY: u32 = 64;
pub const MEMORY_CAPACITY_BYTES: u64 = 256 * 1024 * 1024 * 1024;
const LEASE_SECONDS: i32 = 40;
const HEARTBEAT: Duration = Duration::from_secs(10);

fn node_status(host_ip: &str, name: &str, kubelet_version: &str) -> NodeStatus {
    let now = Time(Timestamp::now());
    let condition = |type_: &str, status: &str, reason: &str, message: &str| NodeCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(now.clone()),
        last_transition_time: Some(now.clone()),
    };
    let resources: BTreeMap<String, Quantity> = [
        ("cpu", CPU_CAPACITY.to_string()),
        ("memory", MEMORY_CAPACITY_BYTES.to_string()),
        ("pods", "250".to_string()),
        ("ephemeral-storage", "100Gi".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), Quantity(v)))
    .collect();
    NodeStatus {
        capacity: Some(resources.clone()),
        allocatable: Some(resources),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: host_ip.into(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: name.into(),
            },
        ]),
        conditions: Some(vec![
            condition(
                "Ready",
                "True",
                "KubeletReady",
                "millrace pod runner is posting ready status",
            ),
            condition(
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "no memory pressure",
            ),
            condition(
                "DiskPressure",
                "False",
                "KubeletHasNoDiskPressure",
                "no disk pressure",
            ),
            condition(
                "PIDPressure",
                "False",
                "KubeletHasSufficientPID",
                "no PID pressure",
            ),
        ]),
        node_info: Some(NodeSystemInfo {
            architecture: std::env::consts::ARCH
                .replace("x86_64", "amd64")
                .replace("aarch64", "arm64"),
            boot_id: String::new(),
            container_runtime_version: "millrace-podrunner://0.1.0".into(),
            kernel_version: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .into(),
            kube_proxy_version: String::new(),
            kubelet_version: kubelet_version.into(),
            machine_id: String::new(),
            operating_system: "linux".into(),
            os_image: "local processes".into(),
            system_uuid: String::new(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Creates the Node if needed, then posts status and renews the Lease
/// forever.
pub async fn run(client: Client, name: String, host_ip: String) -> anyhow::Result<()> {
    let nodes = Api::<Node>::all(client.clone());
    let version = client
        .apiserver_version()
        .await
        .map(|v| v.git_version)
        .unwrap_or_else(|_| "v0.0.0".into());
    if nodes.get_opt(&name).await?.is_none() {
        let labels: BTreeMap<String, String> = [
            ("kubernetes.io/hostname", name.as_str()),
            ("kubernetes.io/os", "linux"),
            ("kubernetes.io/arch", "amd64"),
            ("millrace.dev/pod-runner", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let node = Node {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(labels),
                ..Default::default()
            },
            status: Some(node_status(&host_ip, &name, &version)),
            ..Default::default()
        };
        nodes.create(&PostParams::default(), &node).await?;
        tracing::info!(node = %name, "registered node");
    }
    let leases = Api::<Lease>::namespaced(client.clone(), "kube-node-lease");
    let mut tick = tokio::time::interval(HEARTBEAT);
    loop {
        tick.tick().await;
        let status = serde_json::json!({ "status": node_status(&host_ip, &name, &version) });
        if let Err(e) = nodes
            .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&status))
            .await
        {
            tracing::warn!("node status update failed: {e}");
        }
        if let Err(e) = renew_lease(&nodes, &leases, &name).await {
            tracing::warn!("node lease renewal failed: {e}");
        }
    }
}

async fn renew_lease(nodes: &Api<Node>, leases: &Api<Lease>, name: &str) -> anyhow::Result<()> {
    let node = nodes.get(name).await?;
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(name.into()),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: name.into(),
                uid: node.metadata.uid.unwrap_or_default(),
                ..Default::default()
            }]),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(name.into()),
            lease_duration_seconds: Some(LEASE_SECONDS),
            renew_time: Some(MicroTime(Timestamp::now())),
            ..Default::default()
        }),
    };
    leases
        .patch(
            name,
            &PatchParams::apply("millrace-podrunner").force(),
            &Patch::Apply(&lease),
        )
        .await?;
    Ok(())
}
