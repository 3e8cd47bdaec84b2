//! `millrace`: a StreamApp from the command line (docs/queries.md).
//!
//! - `millrace query <app> <step> <key>`: the key's committed entry, from
//!   whichever worker holds it (any worker forwards).
//! - `millrace status <app>`: conditions, workers, placement, lag and
//!   restores in one view.
//!
//! It reaches a worker directly at its pod IP (in the cluster, or on the
//! test bed), or at `--url` (a `kubectl port-forward svc/<app> 8081` or an
//! ingress).

mod view;

use std::io::{Read, Write};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::ListParams;
use kube::{Api, Client};
use millrace_crds::placement::{placement_config_map, PlacementDoc, PLACEMENT_KEY};
use millrace_crds::StreamApp;

#[derive(Parser)]
#[command(
    name = "millrace",
    about = "Query a StreamApp's state; see its placement, lag and restores"
)]
struct Cli {
    /// The app's namespace (default: the kubeconfig's).
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A key's entry in a stateful step's store.
    Query {
        app: String,
        step: String,
        key: String,
        /// Accept a standby's (or a restoring copy's) answer this many
        /// records behind instead of a 503 during a move.
        #[arg(long, default_value_t = 0)]
        max_lag: u64,
        /// A windowed aggregate's windows starting at or after this (epoch ms).
        #[arg(long)]
        from: Option<i64>,
        /// ... and before this.
        #[arg(long)]
        to: Option<i64>,
        /// Ask this query endpoint (`http://host:port`) instead of a pod.
        #[arg(long)]
        url: Option<String>,
    },
    /// The app's conditions, workers, placement, lag and restores.
    Status { app: String },
}

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = runtime.block_on(run(cli)) {
        eprintln!("millrace: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API (KUBECONFIG)")?;
    let namespace = cli
        .namespace
        .unwrap_or_else(|| client.default_namespace().to_string());
    let apps: Api<StreamApp> = Api::namespaced(client.clone(), &namespace);
    match cli.command {
        Command::Query {
            app,
            step,
            key,
            max_lag,
            from,
            to,
            url,
        } => {
            let stream_app = apps
                .get(&app)
                .await
                .with_context(|| format!("StreamApp {namespace}/{app}"))?;
            let address = match url {
                Some(url) => url
                    .trim_start_matches("http://")
                    .trim_end_matches('/')
                    .to_string(),
                None => worker_address(&client, &namespace, &stream_app).await?,
            };
            let mut path = format!(
                "/v1/stores/{}/keys/{}?maxLag={max_lag}",
                segment(&step),
                segment(&key)
            );
            for (name, value) in [("from", from), ("to", to)] {
                if let Some(v) = value {
                    path.push_str(&format!("&{name}={v}"));
                }
            }
            let (status, body) = get(&address, &path)?;
            let pretty = serde_json::from_str::<serde_json::Value>(&body)
                .map(|v| serde_json::to_string_pretty(&v).expect("JSON prints"))
                .unwrap_or(body);
            println!("{pretty}");
            match status {
                200 => Ok(()),
                404 => std::process::exit(3),
                _ => bail!("the worker answered {status}"),
            }
        }
        Command::Status { app } => {
            let stream_app = apps
                .get(&app)
                .await
                .with_context(|| format!("StreamApp {namespace}/{app}"))?;
            let config_maps: Api<ConfigMap> = Api::namespaced(client, &namespace);
            let doc = config_maps
                .get_opt(&placement_config_map(&app))
                .await?
                .and_then(|cm| cm.data?.get(PLACEMENT_KEY).cloned())
                .and_then(|json| PlacementDoc::parse(&json).ok());
            print!("{}", view::render(&stream_app, doc.as_ref()));
            Ok(())
        }
    }
}

/// A ready worker pod's query address.
async fn worker_address(
    client: &Client,
    namespace: &str,
    app: &StreamApp,
) -> anyhow::Result<String> {
    let name = app.metadata.name.clone().unwrap_or_default();
    let Some(endpoint) = app.status.as_ref().and_then(|s| s.query_endpoint.clone()) else {
        bail!("StreamApp {name} serves no queries (status.queryEndpoint is empty: a pipeline without state, spec.query.enabled: false, or not reconciled yet)");
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let selector = format!("millrace.dev/app={name}");
    let ready = pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .into_iter()
        .filter_map(|p| {
            let status = p.status?;
            let ready = status
                .conditions?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            ready.then_some(status.pod_ip).flatten()
        })
        .next();
    match ready {
        Some(ip) => Ok(format!("{ip}:{}", endpoint.port)),
        None => bail!("no ready worker pod of {name}; retry, or pass --url"),
    }
}

/// A path segment, percent-encoded.
fn segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One GET over HTTP/1.0: the status and the body.
fn get(address: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(address)
        .with_context(|| format!("connecting to {address}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("{address}: not an HTTP answer"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{address}: no status in '{head}'"))?;
    Ok((status, body.to_string()))
}
