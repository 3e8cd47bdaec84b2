//! `millrace-podrunner`: plays the kubelet for one Node of the local test
//! bed. Every pod bound to the node runs as local processes (one per
//! container) with the pod's environment, volumes bind-mounted in a private
//! mount namespace, and its own loopback address as the pod IP.
//!
//! See docs/testbed.md for what is and is not modelled.

mod confine;
mod container;
mod env;
mod image_root;
mod images;
mod ips;
mod node;
mod pod;
mod probe;
mod process;
mod provisioner;
mod status;
mod volumes;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use tokio::sync::watch;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Runs the pods of one Kubernetes node as local processes"
)]
struct Args {
    /// Name of the Node to register and run pods for.
    #[arg(long, default_value = "millrace-node")]
    node_name: String,
    /// Directory for pod volumes and provisioned persistent volumes.
    #[arg(long)]
    state_dir: PathBuf,
    /// Directory for container logs (<namespace>/<pod>/<container>.log).
    #[arg(long)]
    log_dir: PathBuf,
    /// Image table: image name → local executable (see e2e/images.conf).
    #[arg(long)]
    images: PathBuf,
    /// Host and port pods use to reach the API server (in-cluster config).
    #[arg(long, default_value = "127.0.0.1")]
    apiserver_host: String,
    #[arg(long, default_value_t = 6443)]
    apiserver_port: u16,
}

/// Settings every pod worker reads.
pub struct Settings {
    pub state_dir: PathBuf,
    pub log_dir: PathBuf,
    pub host_ip: String,
    pub path: String,
    pub apiserver_host: String,
    pub apiserver_port: u16,
}

type Workers = Arc<Mutex<HashMap<String, watch::Sender<Option<Pod>>>>>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();

    let client = Client::try_default().await?;
    let settings = Arc::new(Settings {
        state_dir: args.state_dir.clone(),
        log_dir: args.log_dir.clone(),
        host_ip: "127.0.0.1".into(),
        path: std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
        apiserver_host: args.apiserver_host.clone(),
        apiserver_port: args.apiserver_port,
    });
    // This runner owns no pod yet: processes of pods are leftovers of a
    // runner that was killed, and the pods will be started afresh below.
    let orphans = process::kill_orphans(&|_| false);
    if !orphans.is_empty() {
        tracing::info!(?orphans, "killed processes left by an earlier pod runner");
    }
    // Images unpacked by an earlier runner: no container runs from them now
    // (each image is unpacked again when first used).
    let unpack_dir = args.state_dir.join("images");
    let _ = std::fs::remove_dir_all(&unpack_dir);
    std::fs::create_dir_all(&unpack_dir)?;
    let images = Arc::new(images::ImageTable::load(&args.images, unpack_dir)?);

    let node_task = tokio::spawn(node::run(
        client.clone(),
        args.node_name.clone(),
        settings.host_ip.clone(),
    ));
    let provisioner_task = tokio::spawn(provisioner::run(
        client.clone(),
        settings.state_dir.join("volumes"),
    ));
    let pods_task = tokio::spawn(run_pods(client, settings, images, args.node_name));

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let outcome = tokio::select! {
        _ = sigterm.recv() => Ok(()),
        _ = tokio::signal::ctrl_c() => Ok(()),
        r = node_task => r.map_err(anyhow::Error::from).and_then(|r| r).and(Err(anyhow::anyhow!("node heartbeat ended"))),
        r = provisioner_task => r.map_err(anyhow::Error::from).and_then(|r| r).and(Err(anyhow::anyhow!("provisioner ended"))),
        r = pods_task => r.map_err(anyhow::Error::from).and_then(|r| r).and(Err(anyhow::anyhow!("pod watch ended"))),
    };
    // The runner going away is the node going away: its pods' processes go
    // with it (a later runner restarts them from the API server's pods).
    let killed = process::kill_orphans(&|_| false);
    tracing::info!(killed = killed.len(), "pod runner stopped");
    outcome
}

async fn run_pods(
    client: Client,
    settings: Arc<Settings>,
    images: Arc<images::ImageTable>,
    node_name: String,
) -> anyhow::Result<()> {
    let pods = Api::<Pod>::all(client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node_name}"));
    let workers: Workers = Arc::default();
    let ips = Arc::new(Mutex::new(ips::Allocator::default()));
    let mut listed = Vec::new();
    let mut events = watcher::watcher(pods, config).default_backoff().boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => listed.clear(),
            Ok(Event::InitApply(pod)) => {
                listed.push(pod.metadata.uid.clone().unwrap_or_default());
                dispatch(&client, &settings, &images, &workers, &ips, pod);
            }
            Ok(Event::InitDone) => {
                // Pods deleted while the watch was down: stop their workers.
                for (uid, tx) in workers.lock().unwrap().iter() {
                    if !listed.contains(uid) {
                        let _ = tx.send(None);
                    }
                }
            }
            Ok(Event::Apply(pod)) => dispatch(&client, &settings, &images, &workers, &ips, pod),
            Ok(Event::Delete(pod)) => {
                if let Some(tx) = workers
                    .lock()
                    .unwrap()
                    .get(pod.metadata.uid.as_deref().unwrap_or_default())
                {
                    let _ = tx.send(None);
                }
            }
            Err(e) => tracing::warn!("pod watch: {e}"),
        }
    }
    Ok(())
}

/// Hands the newest Pod to its worker, starting one for a new pod.
fn dispatch(
    client: &Client,
    settings: &Arc<Settings>,
    images: &Arc<images::ImageTable>,
    workers: &Workers,
    ips: &Arc<Mutex<ips::Allocator>>,
    pod: Pod,
) {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let mut map = workers.lock().unwrap();
    if let Some(tx) = map.get(&uid) {
        let _ = tx.send(Some(pod));
        return;
    }
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending");
    let finished = matches!(phase, "Succeeded" | "Failed");
    if finished && pod.metadata.deletion_timestamp.is_none() {
        return;
    }
    if pod.metadata.deletion_timestamp.is_some() {
        // Being deleted and run by no worker (its worker has just stopped
        // it, and this is a late update; or the runner restarted): nothing
        // of it runs, so only the final delete is left. Starting a worker
        // here ran the containers of a pod being deleted, and nothing
        // deleted it again.
        let (client, namespace, name) = (
            client.clone(),
            pod.metadata.namespace.clone().unwrap_or_default(),
            pod.metadata.name.clone().unwrap_or_default(),
        );
        tokio::spawn(async move { pod::final_delete(&client, &namespace, &name, &uid).await });
        return;
    }
    let previous_ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
    let Some(pod_ip) = ips.lock().unwrap().allocate(previous_ip.as_deref()) else {
        tracing::error!(pod = ?pod.metadata.name, "no free loopback address for the pod");
        return;
    };
    let (tx, rx) = watch::channel(Some(pod.clone()));
    map.insert(uid.clone(), tx);
    let worker = Arc::new(pod::PodWorker::new(
        client.clone(),
        settings.clone(),
        images.clone(),
        pod,
        pod_ip.clone(),
    ));
    let (workers, ips) = (workers.clone(), ips.clone());
    tokio::spawn(async move {
        worker.run(rx).await;
        workers.lock().unwrap().remove(&uid);
        ips.lock().unwrap().release(&pod_ip);
    });
}
