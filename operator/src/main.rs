//! `millrace-operator`: reconciles StreamApps into workers.
//!
//! `millrace-operator run` (the default) runs the controller;
//! `millrace-operator crd` prints the CustomResourceDefinition.

use std::net::SocketAddr;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{self, Controller};
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{self, reflector, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, CustomResourceExt};
use millrace_crds::StreamApp;
use millrace_operator::autoscale::{self, driver::Autoscaler};
use millrace_operator::leader::Leadership;
use millrace_operator::metrics::Metrics;
use millrace_operator::model::Defaults;
use millrace_operator::placement_driver::{self, Driver};
use millrace_operator::reconcile::{error_policy, reconcile, Context};
use millrace_operator::scope::{Apps, Scope};
use millrace_operator::supervise::supervise;
use millrace_operator::workers::Observations;

#[derive(Parser)]
#[command(
    version,
    about = "The Millrace operator: runs Kafka stream applications on Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (the default).
    Run(Box<RunArgs>),
    /// Print the StreamApp CustomResourceDefinition as YAML.
    Crd,
    /// Check that the operator's replicas answer (what `helm test` runs):
    /// every ready pod behind its metrics Service answers /healthz and
    /// /metrics, and with --expect-leader exactly one holds the lease.
    Check {
        #[arg(long, env = "MILLRACE_NAMESPACE", default_value = "millrace-system")]
        namespace: String,
        /// The operator's metrics Service.
        #[arg(long)]
        service: String,
        #[arg(long)]
        expect_leader: bool,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "MILLRACE_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Elect a leader through a Lease, so several replicas are safe.
    #[arg(long, env = "MILLRACE_LEADER_ELECTION")]
    leader_election: bool,
    /// Namespace of the leader Lease (the operator's own).
    #[arg(long, env = "MILLRACE_NAMESPACE", default_value = "millrace-system")]
    namespace: String,
    /// This replica's identity in the Lease (its pod name).
    #[arg(long, env = "MILLRACE_POD_NAME", default_value = "millrace-operator")]
    identity: String,
    /// Image of pipeline workers.
    #[arg(long, env = "MILLRACE_RUNTIME_IMAGE")]
    runtime_image: Option<String>,
    /// How long a worker may take to acknowledge the revoke of a task before
    /// the operator fences it (e.g. `10s`).
    #[arg(long, env = "MILLRACE_HANDOFF_TIMEOUT", default_value = "10s", value_parser = duration)]
    handoff_timeout: std::time::Duration,
    /// How often placement reads workers and moves tasks.
    #[arg(long, env = "MILLRACE_PLACEMENT_INTERVAL", default_value = "1s", value_parser = duration)]
    placement_interval: std::time::Duration,
    /// How long `deletionPolicy: Delete` retries deleting an app's Kafka
    /// data before it leaves the data and lets the deletion finish.
    #[arg(long, env = "MILLRACE_FINALIZER_TIMEOUT", default_value = "5m", value_parser = duration)]
    finalizer_timeout: std::time::Duration,
    /// Serve only these namespaces (comma-separated; empty: every one). The
    /// chart then grants a Role in each instead of a ClusterRole.
    #[arg(long, env = "MILLRACE_WATCH_NAMESPACES", value_delimiter = ',')]
    watch_namespaces: Vec<String>,
    /// Limit workers' admin port to the operator's namespace and these
    /// NetworkPolicy peers (a JSON list; unset: open to the cluster).
    #[arg(long, env = "MILLRACE_WORKER_ADMIN_FROM", value_parser = admin_peers)]
    worker_admin_from: Option<Peers>,
    /// How many apps are reconciled at once. Each reconcile reads Kafka
    /// metadata on a blocking thread and writes several objects: unbounded,
    /// a thousand apps applied at once ran a thousand of them together.
    #[arg(long, env = "MILLRACE_RECONCILE_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    reconcile_concurrency: u16,
    /// Apply the embedded CRD at start, so `helm upgrade` carries CRD changes.
    #[arg(long, env = "MILLRACE_MANAGE_CRD")]
    manage_crd: bool,
}

/// Worker pods of every app, one watch per namespace served, kept current
/// in the stores it returns.
fn watch_worker_pods(scope: &Scope, client: &Client) -> Vec<(Option<String>, Store<Pod>)> {
    let (key, value) = millrace_operator::model::WORKER_LABEL;
    scope
        .namespaces()
        .into_iter()
        .zip(scope.apis::<Pod>(client))
        .map(|(namespace, api)| {
            let (store, writer) = reflector::store();
            let config = watcher::Config::default().labels(&format!("{key}={value}"));
            let watch = reflector(writer, watcher(api, config))
                .default_backoff()
                .for_each(|event| async move {
                    if let Err(e) = event {
                        tracing::warn!("watching worker pods: {e}");
                    }
                });
            tokio::spawn(watch);
            (namespace, store)
        })
        .collect()
}

fn duration(text: &str) -> Result<std::time::Duration, String> {
    millrace_crds::parse_duration(text)
        .ok_or_else(|| format!("'{text}' is not a duration like 500ms, 10s or 1m"))
}

type Peers = Vec<NetworkPolicyPeer>;

fn admin_peers(text: &str) -> Result<Peers, String> {
    serde_json::from_str(text).map_err(|e| {
        format!("MILLRACE_WORKER_ADMIN_FROM (chart value workers.adminFrom) is not a list of NetworkPolicy peers: {e}")
    })
}

/// The operator's own namespace, which reads workers' `/tasks`.
fn namespace_peer(namespace: &str) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some([("kubernetes.io/metadata.name".into(), namespace.into())].into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[derive(Parser)]
struct DefaultRun {
    #[command(flatten)]
    args: RunArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Crd) => {
            print!("{}", millrace_crds::crd_yaml());
            Ok(())
        }
        Some(Command::Run(args)) => run(*args).await,
        Some(Command::Check {
            namespace,
            service,
            expect_leader,
        }) => {
            let seen = millrace_operator::check::check(&namespace, &service, expect_leader).await?;
            println!("{seen}");
            Ok(())
        }
        // No subcommand: run, with settings from the environment.
        None => run(DefaultRun::parse_from(["millrace-operator"]).args).await,
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .init();
    let client = Client::try_default().await?;
    let metrics = Arc::new(Metrics::default());
    let server = tokio::spawn(millrace_operator::http::serve(
        args.metrics_addr,
        metrics.clone(),
    ));

    let mut leadership = None;
    if args.leader_election {
        leadership =
            Some(Leadership::acquire(args.namespace.clone(), args.identity.clone()).await?);
        metrics.leader.set(1);
    }
    if args.manage_crd {
        // Helm never upgrades files in a chart's crds/: the operator applies
        // the CRD of its own version instead.
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        crds.patch(
            "streamapps.millrace.dev",
            &PatchParams::apply("millrace-operator").force(),
            &Patch::Apply(StreamApp::crd()),
        )
        .await?;
        tracing::info!("applied the StreamApp CRD");
    }

    let mut defaults = Defaults::default();
    if let Some(image) = args.runtime_image {
        defaults.runtime_image = image;
    }
    defaults.admin_from = args.worker_admin_from.map(|mut peers| {
        peers.insert(0, namespace_peer(&args.namespace));
        peers
    });
    let reporter = Reporter {
        controller: "millrace-operator".into(),
        instance: Some(args.identity.clone()),
    };
    // One observation of each app's workers per placement poll, reused by
    // the autoscaler.
    let scope = Scope::new(&args.watch_namespaces);
    tracing::info!("serving {}", scope.describe());
    let workers = Arc::new(
        Observations::new(client.clone(), args.placement_interval)
            .watching(watch_worker_pods(&scope, &client)),
    );
    let placement = Arc::new(Driver::new(
        client.clone(),
        reporter.clone(),
        metrics.clone(),
        args.handoff_timeout,
        workers.clone(),
    ));
    // One controller per namespace served (one for the cluster): a
    // namespaced operator holds no list or watch right across namespaces.
    let controllers: Vec<_> = scope
        .apis::<StreamApp>(&client)
        .into_iter()
        .zip(scope.apis::<StatefulSet>(&client))
        .zip(scope.apis::<ConfigMap>(&client))
        .map(|((apps, statefulsets), config_maps)| {
            Controller::new(apps, watcher::Config::default())
                .with_config(controller::Config::default().concurrency(args.reconcile_concurrency))
                .owns(statefulsets, watcher::Config::default())
                .owns(
                    config_maps,
                    watcher::Config::default()
                        .labels("app.kubernetes.io/managed-by=millrace-operator"),
                )
        })
        .collect();
    let apps = Apps(
        scope
            .namespaces()
            .into_iter()
            .zip(controllers.iter().map(Controller::store))
            .collect(),
    );
    // Placement and autoscaling poll the apps the controllers' watches hold.
    let interval = args.placement_interval;
    let placement_apps = apps.clone();
    tokio::spawn(supervise("placement", metrics.clone(), move || {
        placement_driver::run(placement.clone(), interval, placement_apps.clone())
    }));
    let autoscaler = Arc::new(Autoscaler::new(
        client.clone(),
        reporter.clone(),
        metrics.clone(),
        workers,
    ));
    let autoscaling_apps = apps.clone();
    tokio::spawn(supervise("autoscaling", metrics.clone(), move || {
        autoscale::driver::run(autoscaler.clone(), autoscaling_apps.clone())
    }));
    let context = Arc::new(Context {
        client: client.clone(),
        defaults,
        reporter,
        metrics,
        apps,
        finalizer_timeout: args.finalizer_timeout,
        backoff: Default::default(),
        lease_namespace: args.namespace.clone(),
    });
    let controller = futures::future::join_all(controllers.into_iter().map(|controller| {
        controller
            .shutdown_on_signal()
            .run(reconcile, error_policy, context.clone())
            .for_each(|result| async move {
                if let Err(e) = result {
                    tracing::debug!("reconcile: {e}");
                }
            })
    }));
    tracing::info!("controller started");
    tokio::select! {
        _ = controller => {
            // Stopped by SIGTERM: hand leadership over before exiting.
            if let Some(leadership) = leadership {
                leadership.release().await;
            }
            Ok(())
        }
        lost = async { match &mut leadership { Some(l) => l.lost().await, None => std::future::pending().await } } => Err(lost),
        r = server => r?,
    }
}
