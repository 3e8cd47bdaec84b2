//! One pod on this node: volumes, init containers, containers, status,
//! and graceful deletion.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use futures::future::join_all;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Api, Client};
use tokio::process::Child;
use tokio::sync::watch;

use crate::confine::{self, Filesystem};
use crate::container::{self, ContainerState, Kind, LaunchPlan, PodHost};
use crate::env::{self, Sources};
use crate::image_root;
use crate::images::ImageTable;
use crate::status::{self, Observed};
use crate::volumes::{self, PodContext};
use crate::{process, Settings};

/// How often volumes are rewritten (ConfigMap edits, token renewal) and the
/// status is compared with what was last reported.
const VOLUME_REFRESH: Duration = Duration::from_secs(60);
const STATUS_INTERVAL: Duration = Duration::from_millis(500);

pub struct PodWorker {
    client: Client,
    settings: Arc<Settings>,
    images: Arc<ImageTable>,
    pod: Mutex<Pod>,
    namespace: String,
    name: String,
    uid: String,
    pod_ip: String,
    pod_dir: PathBuf,
    log_dir: PathBuf,
    start_time: Timestamp,
    init: Mutex<Vec<ContainerState>>,
    main: Mutex<Vec<ContainerState>>,
    volume_dirs: tokio::sync::Mutex<BTreeMap<String, PathBuf>>,
}

impl PodWorker {
    pub fn new(
        client: Client,
        settings: Arc<Settings>,
        images: Arc<ImageTable>,
        pod: Pod,
        pod_ip: String,
    ) -> Self {
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let pod_dir = settings
            .state_dir
            .join("pods")
            .join(format!("{namespace}_{name}_{uid}"));
        let log_dir = settings.log_dir.join(&namespace).join(&name);
        Self {
            client,
            settings,
            images,
            namespace,
            name,
            uid,
            pod_ip,
            pod_dir,
            log_dir,
            start_time: Timestamp::now(),
            init: Mutex::new(
                spec.init_containers
                    .iter()
                    .flatten()
                    .map(ContainerState::new)
                    .collect(),
            ),
            main: Mutex::new(spec.containers.iter().map(ContainerState::new).collect()),
            volume_dirs: tokio::sync::Mutex::new(BTreeMap::new()),
            pod: Mutex::new(pod),
        }
    }

    fn pod(&self) -> Pod {
        self.pod.lock().unwrap().clone()
    }

    fn restart_policy(&self) -> String {
        self.pod()
            .spec
            .and_then(|s| s.restart_policy)
            .unwrap_or_else(|| "Always".into())
    }

    /// Runs the pod until it is deleted. `updates` carries the newest Pod, or
    /// `None` once it is gone from the API server.
    pub async fn run(self: Arc<Self>, mut updates: watch::Receiver<Option<Pod>>) {
        std::fs::create_dir_all(&self.log_dir).ok();
        let (stop_tx, stop_rx) = watch::channel(None);
        let reporter = tokio::spawn(self.clone().report_status(stop_rx.clone()));
        let containers = tokio::spawn(self.clone().run_containers(stop_rx));
        let grace = loop {
            if updates.changed().await.is_err() {
                break Duration::ZERO;
            }
            let latest = updates.borrow().clone();
            match latest {
                None => break Duration::ZERO,
                Some(pod) => {
                    let deleting = pod.metadata.deletion_timestamp.is_some();
                    let grace = grace_period(&pod);
                    *self.pod.lock().unwrap() = pod;
                    if deleting {
                        break grace;
                    }
                }
            }
        };
        tracing::info!(pod = %self.key(), grace_secs = grace.as_secs(), "stopping pod");
        let _ = stop_tx.send(Some(grace));
        let _ = containers.await;
        let _ = reporter.await;
        if updates.borrow().is_some() {
            self.report_once().await.ok();
            self.delete_from_api().await;
        }
        std::fs::remove_dir_all(&self.pod_dir).ok();
        tracing::info!(pod = %self.key(), "pod stopped");
    }

    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    async fn run_containers(self: Arc<Self>, stop: container::StopSignal) {
        let spec = self.pod().spec.unwrap_or_default();
        let policy = self.restart_policy();
        for c in spec.init_containers.iter().flatten() {
            match container::supervise(self.as_ref(), Kind::Init, c, &policy, stop.clone()).await {
                Some(0) => continue,
                _ => return,
            }
        }
        let runs = spec
            .containers
            .iter()
            .map(|c| container::supervise(self.as_ref(), Kind::Main, c, &policy, stop.clone()));
        join_all(runs).await;
    }

    async fn report_status(self: Arc<Self>, mut stop: container::StopSignal) {
        let mut last_reported = None;
        let mut tick = tokio::time::interval(STATUS_INTERVAL);
        let mut refresh = tokio::time::interval(VOLUME_REFRESH);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = refresh.tick() => {
                    self.refresh_volumes().await;
                    continue;
                }
                _ = stop.changed() => return,
            }
            let status = self.current_status();
            if last_reported.as_ref() == Some(&status) {
                continue;
            }
            match self.patch_status(&status).await {
                Ok(()) => last_reported = Some(status),
                Err(e) => tracing::warn!(pod = %self.key(), "status update failed: {e:#}"),
            }
        }
    }

    /// Keeps ConfigMap, Secret and token files current in running pods.
    async fn refresh_volumes(&self) {
        let pod = self.pod();
        let result = async {
            let sources = self.fetch_sources(&pod).await?;
            self.volume_dirs(&pod, &sources).await
        };
        if let Err(e) = result.await {
            tracing::warn!(pod = %self.key(), "refreshing volumes: {e:#}");
        }
    }

    fn current_status(&self) -> k8s_openapi::api::core::v1::PodStatus {
        let init = self.init.lock().unwrap().clone();
        let main = self.main.lock().unwrap().clone();
        let observed = Observed {
            init: &init,
            main: &main,
            pod_ip: &self.pod_ip,
            host_ip: &self.settings.host_ip,
            start_time: self.start_time,
        };
        status::pod_status(&self.pod(), &observed)
    }

    async fn report_once(&self) -> anyhow::Result<()> {
        self.patch_status(&self.current_status()).await
    }

    async fn patch_status(
        &self,
        status: &k8s_openapi::api::core::v1::PodStatus,
    ) -> anyhow::Result<()> {
        let api = Api::<Pod>::namespaced(self.client.clone(), &self.namespace);
        let patch = serde_json::json!({ "metadata": { "uid": self.uid }, "status": status });
        api.patch_status(
            &self.name,
            &PatchParams::default(),
            &Patch::Strategic(&patch),
        )
        .await?;
        Ok(())
    }

    async fn delete_from_api(&self) {
        final_delete(&self.client, &self.namespace, &self.name, &self.uid).await;
    }

    async fn fetch_sources(&self, pod: &Pod) -> anyhow::Result<Sources> {
        let (config_maps, secrets) = env::referenced_objects(pod);
        let mut sources = Sources::default();
        let cm_api = Api::<ConfigMap>::namespaced(self.client.clone(), &self.namespace);
        for name in config_maps {
            if let Some(cm) = cm_api
                .get_opt(&name)
                .await
                .with_context(|| format!("reading ConfigMap '{name}'"))?
            {
                sources.config_maps.insert(name, cm);
            }
        }
        let secret_api = Api::<Secret>::namespaced(self.client.clone(), &self.namespace);
        for name in secrets {
            if let Some(s) = secret_api
                .get_opt(&name)
                .await
                .with_context(|| format!("reading Secret '{name}'"))?
            {
                sources.secrets.insert(name, s);
            }
        }
        Ok(sources)
    }

    /// Writes (or refreshes) the pod's volumes; at most once a minute unless
    /// a volume is still missing.
    async fn volume_dirs(
        &self,
        pod: &Pod,
        sources: &Sources,
    ) -> anyhow::Result<BTreeMap<String, PathBuf>> {
        let mut cached = self.volume_dirs.lock().await;
        let expected = pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .map_or(0, Vec::len);
        let fresh = self
            .pod_dir
            .join(".volumes-written")
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok());
        if cached.len() == expected && fresh.is_some_and(|age| age < VOLUME_REFRESH) {
            return Ok(cached.clone());
        }
        std::fs::create_dir_all(&self.pod_dir)?;
        let ctx = PodContext {
            pod,
            sources,
            pod_dir: &self.pod_dir,
            pod_ip: &self.pod_ip,
            host_ip: &self.settings.host_ip,
        };
        *cached = volumes::prepare(&self.client, &ctx).await?;
        std::fs::write(self.pod_dir.join(".volumes-written"), b"")?;
        Ok(cached.clone())
    }

    fn base_env(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        env.insert("PATH".into(), self.settings.path.clone());
        env.insert("HOME".into(), "/root".into());
        env.insert("HOSTNAME".into(), self.name.clone());
        env.insert(
            "KUBERNETES_SERVICE_HOST".into(),
            self.settings.apiserver_host.clone(),
        );
        env.insert(
            "KUBERNETES_SERVICE_PORT".into(),
            self.settings.apiserver_port.to_string(),
        );
        env.insert(
            "KUBERNETES_SERVICE_PORT_HTTPS".into(),
            self.settings.apiserver_port.to_string(),
        );
        env
    }
}

impl PodHost for PodWorker {
    async fn launch_plan(&self, container: &Container) -> anyhow::Result<LaunchPlan> {
        let pod = self.pod();
        let sources = self.fetch_sources(&pod).await?;
        let image = container.image.as_deref().unwrap_or_default();
        let unpacked = self.images.unpacked(image).await?;
        let mut env = self.base_env();
        if let Some(unpacked) = &unpacked {
            // The image's environment under the kubelet's (HOSTNAME, the
            // API server), except PATH and HOME: the image's, not the host's.
            env.retain(|k, _| k != "PATH" && k != "HOME");
            let kubelet = std::mem::replace(&mut env, image_root::env(&unpacked.run));
            env.extend(kubelet);
        }
        env.extend(env::container_env(
            &pod,
            container,
            &sources,
            &self.pod_ip,
            &self.settings.host_ip,
        )?);
        let command: Vec<String> = container
            .command
            .iter()
            .flatten()
            .map(|s| env::expand(s, &env))
            .collect();
        let args: Vec<String> = container
            .args
            .iter()
            .flatten()
            .map(|s| env::expand(s, &env))
            .collect();
        let dirs = self.volume_dirs(&pod, &sources).await?;
        let mut mounts = volumes::container_mounts(container, &dirs)?;
        let targets: Vec<_> = mounts.iter().map(|m| m.target.clone()).collect();
        let (argv, root, confinement) = match &unpacked {
            None => (
                self.images.argv(image, &command, &args)?,
                None,
                confine::plan(&pod, container, Filesystem::Host { binds: &targets })?,
            ),
            Some(unpacked) => {
                let mut argv = image_root::argv(&unpacked.run, &command, &args);
                anyhow::ensure!(
                    !argv.is_empty(),
                    "image '{image}' has no entrypoint and the container sets no command"
                );
                let path = env.get("PATH").map_or("", String::as_str);
                argv[0] = image_root::resolve(&unpacked.rootfs, &argv[0], path)
                    .with_context(|| format!("image '{image}'"))?;
                let user = unpacked.run.user.as_deref();
                let working_dir = container
                    .working_dir
                    .clone()
                    .or_else(|| unpacked.run.working_dir.clone())
                    .unwrap_or_else(|| "/".into());
                let root = image_root::Root::new(
                    &unpacked.rootfs,
                    &self.pod_dir.join("containers").join(&container.name),
                    working_dir,
                );
                // As a kubelet does: the node's name resolution.
                for file in ["/etc/hosts", "/etc/resolv.conf"] {
                    if Path::new(file).exists() && !targets.iter().any(|t| t == Path::new(file)) {
                        mounts.push(volumes::Mount {
                            source: file.into(),
                            target: file.into(),
                            read_only: true,
                        });
                    }
                }
                let confinement = confine::plan(&pod, container, Filesystem::Image { user })?;
                (argv, Some(root), confinement)
            }
        };
        Ok(LaunchPlan {
            argv,
            env,
            mounts,
            root,
            confinement,
        })
    }

    fn spawn(&self, container: &Container, plan: &LaunchPlan) -> anyhow::Result<Child> {
        let log_file = process::log_path(&self.log_dir, &container.name);
        let banner = format!(
            "--- millrace-podrunner: starting {:?} at {} ---\n",
            plan.argv,
            Timestamp::now()
        );
        use std::io::Write;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_file)?
            .write_all(banner.as_bytes())?;
        let child = process::spawn(&process::Spec {
            argv: &plan.argv,
            env: &plan.env,
            working_dir: container.working_dir.as_deref(),
            hostname: &self.name,
            mounts: &plan.mounts,
            confinement: &plan.confinement,
            log_file: &log_file,
            pod_uid: &self.uid,
            root: plan.root.as_ref(),
        })?;
        tracing::info!(pod = %self.key(), container = %container.name, pid = child.id(), "started container");
        Ok(child)
    }

    fn update(&self, kind: Kind, name: &str, change: &dyn Fn(&mut ContainerState)) {
        let states = if kind == Kind::Init {
            &self.init
        } else {
            &self.main
        };
        if let Some(state) = states.lock().unwrap().iter_mut().find(|s| s.name == name) {
            change(state);
        }
    }

    fn pod_ip(&self) -> &str {
        &self.pod_ip
    }
}

/// The kubelet's last word on a pod: delete it with grace 0 once its
/// containers have stopped. The uid precondition keeps a new pod of the
/// same name (a StatefulSet's replacement) safe. Retried: a pod left
/// behind keeps `kubectl delete --wait` (and a StatefulSet's replacement)
/// waiting forever.
pub async fn final_delete(client: &Client, namespace: &str, name: &str, uid: &str) {
    let api = Api::<Pod>::namespaced(client.clone(), namespace);
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        }),
        ..Default::default()
    };
    let mut backoff = Duration::from_millis(200);
    for attempt in 1..=5 {
        match api.delete(name, &params).await {
            Ok(_) => return,
            // Gone already, or replaced by a pod with another uid.
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => return,
            Err(e) => {
                tracing::warn!(pod = %format!("{namespace}/{name}"), attempt, "final delete: {e}");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
        }
    }
}

/// Deletion grace: the one the deletion set, else the pod's, else 30 s.
fn grace_period(pod: &Pod) -> Duration {
    let secs = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(30);
    Duration::from_secs(secs.max(0) as u64)
}
