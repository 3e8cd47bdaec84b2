//! The query API (docs/queries.md): every worker of a stateful app answers
//! for any key, on its own port (`spec.query.port`, default 8081), apart
//! from the admin port's operational endpoints.
//!
//! A request for a key is routed as its records were: the key's task by the
//! input producers' partitioner (or murmur2 over a repartition topic), then
//! through the placement document to the worker holding the task. The
//! receiving worker answers from its own copy or forwards once to the
//! holder's `/v1/local/...` endpoint, which answers from its own copy
//! only. Only an active, restored copy answers unless the caller allows
//! `maxLag` records of staleness; otherwise the answer is a 503 with
//! `Retry-After`. Only committed state is ever read (`local`).

mod forward;
pub mod local;
pub mod route;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine;
use millrace_crds::worker_config::QueryConfig;
use millrace_crds::Partitioner;
use millrace_pipeline::query::{Queryable, MAX_PAGE};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::metrics::Status;
use crate::placement::watch::PlacementView;
use crate::state::Store;
use local::Ask;
use route::{candidates, copy_of, may_answer, Candidate};

/// A scan's cursor: the last key of the page, URL-safe base64.
pub fn cursor(key: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)
}

fn uncursor(text: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|e| format!("'{text}' is not a cursor this API gave: {e}"))
}

/// Everything a worker's query endpoint needs.
pub struct Queries {
    pub stores: Vec<Queryable>,
    pub partitioner: Partitioner,
    pub store: Arc<Store>,
    pub status: Arc<Status>,
    /// The app's placement; `None` when this worker owns every task
    /// (`millrace-runtime run`).
    pub placement: Option<Arc<PlacementView>>,
    pub worker_id: String,
    pub settings: QueryConfig,
    pub busy: Semaphore,
    client: forward::Client,
}

impl Queries {
    pub fn new(
        stores: Vec<Queryable>,
        partitioner: Partitioner,
        store: Arc<Store>,
        status: Arc<Status>,
        placement: Option<Arc<PlacementView>>,
        worker_id: String,
        settings: QueryConfig,
    ) -> Self {
        Self {
            busy: Semaphore::new(settings.max_concurrent as usize),
            stores,
            partitioner,
            store,
            status,
            placement,
            worker_id,
            settings,
            client: forward::Client::default(),
        }
    }
}

/// A query's outcome at one task.
enum Asked {
    Found(Value),
    Missing(Value),
    Unavailable(String),
}

/// Query parameters.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Params {
    /// Records of staleness the caller accepts from a standby or a copy
    /// still restoring (default 0: the active, restored copy only).
    #[serde(default)]
    max_lag: u64,
    /// A windowed aggregate's windows starting at or after this (epoch ms).
    from: Option<i64>,
    /// ... and before this.
    to: Option<i64>,
    /// The key as URL-safe base64, for keys that are not text.
    key_base64: Option<String>,
    /// A scan's page: entries after this cursor, at most `limit`.
    after: Option<String>,
    limit: Option<usize>,
}

impl Params {
    fn windows(&self) -> (i64, i64) {
        (self.from.unwrap_or(i64::MIN), self.to.unwrap_or(i64::MAX))
    }

    /// The local endpoint's query string for the same ask.
    fn forwarded(&self) -> String {
        let mut parts = vec![format!("maxLag={}", self.max_lag)];
        for (name, value) in [("from", self.from), ("to", self.to)] {
            if let Some(v) = value {
                parts.push(format!("{name}={v}"));
            }
        }
        if let Some(key) = &self.key_base64 {
            parts.push(format!("keyBase64={key}"));
        }
        if let Some(after) = &self.after {
            parts.push(format!("after={after}"));
        }
        if let Some(limit) = self.limit {
            parts.push(format!("limit={limit}"));
        }
        parts.join("&")
    }
}

/// A request refused: its status and why, as JSON (503s say when to
/// retry).
pub struct Refusal {
    status: StatusCode,
    message: String,
}

fn error(status: StatusCode, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        message: message.into(),
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let retry = self.status == StatusCode::SERVICE_UNAVAILABLE;
        let body = axum::Json(json!({"error": self.message, "retryable": retry}));
        match retry {
            true => (self.status, [(header::RETRY_AFTER, "1")], body).into_response(),
            false => (self.status, body).into_response(),
        }
    }
}

type Answer = Result<Response, Refusal>;

pub async fn serve(listener: tokio::net::TcpListener, queries: Arc<Queries>) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/v1/stores", get(stores))
        .route("/v1/stores/{step}/keys/{key}", get(by_key))
        .route("/v1/stores/{step}/tasks/{task}/entries", get(scan))
        .route(
            "/v1/local/stores/{step}/tasks/{task}/keys/{key}",
            get(local_key),
        )
        .route(
            "/v1/local/stores/{step}/tasks/{task}/entries",
            get(local_scan),
        )
        .with_state(queries);
    tracing::info!(addr = %listener.local_addr()?, "query endpoint: /v1/stores");
    axum::serve(listener, app).await?;
    Ok(())
}

async fn stores(State(q): State<Arc<Queries>>) -> Response {
    let stores: Vec<Value> = q
        .stores
        .iter()
        .map(|s| json!({"step": s.step, "kind": s.kind, "spread": s.spread}))
        .collect();
    let layout = *q.status.layout.lock().unwrap();
    axum::Json(json!({
        "stores": stores,
        "tasks": layout.tasks,
        "scan": q.settings.scan,
        "partitioner": q.partitioner,
    }))
    .into_response()
}

impl Queries {
    fn step(&self, step: &str) -> Result<&Queryable, Refusal> {
        self.stores.iter().find(|s| s.step == step).ok_or_else(|| {
            let known: Vec<&str> = self.stores.iter().map(|s| s.step.as_str()).collect();
            error(
                StatusCode::NOT_FOUND,
                format!("no stateful step '{step}' to query; the app's are {known:?}"),
            )
        })
    }

    fn admit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, Refusal> {
        self.busy.try_acquire().map_err(|_| {
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "more than {} queries at once on this worker (spec.query.maxConcurrent)",
                    self.settings.max_concurrent
                ),
            )
        })
    }

    /// This worker's answer for `task`, when it has a copy the caller
    /// accepts (`None`: it has none).
    async fn here(
        self: &Arc<Self>,
        q: &Queryable,
        ask: &Ask,
        task: i32,
        max_lag: u64,
    ) -> Option<Asked> {
        let copy = copy_of(&self.status.detail.lock().unwrap(), task)?;
        if !may_answer(copy, max_lag) {
            return None;
        }
        let (me, q, ask) = (self.clone(), q.clone(), ask.clone());
        let read = tokio::task::spawn_blocking(move || {
            local::answer(&q, &ask, &me.store, (task, &me.worker_id, copy))
        })
        .await;
        Some(match read {
            Ok(Ok((true, body))) => Asked::Found(body),
            Ok(Ok((false, body))) => Asked::Missing(body),
            Ok(Err(e)) => Asked::Unavailable(e),
            Err(e) => Asked::Unavailable(e.to_string()),
        })
    }

    /// The workers to ask for `task` after this one, in order: the active
    /// owner, then (when staleness is allowed) the standby copies.
    fn holders(&self, task: i32, max_lag: u64) -> Vec<(String, String)> {
        let Some(view) = &self.placement else {
            return Vec::new();
        };
        let (doc, endpoints) = view.doc_and_endpoints();
        let mut workers: Vec<&String> = doc
            .workers
            .iter()
            .filter(|(_, a)| a.active.contains(&task))
            .map(|(w, _)| w)
            .collect();
        if max_lag > 0 {
            workers.extend(
                doc.workers
                    .iter()
                    .filter(|(_, a)| a.standby.contains(&task) || a.warmup.contains(&task))
                    .map(|(w, _)| w),
            );
        }
        workers
            .into_iter()
            .filter(|w| **w != self.worker_id)
            .filter_map(|w| Some((w.clone(), endpoints.get(w)?.clone())))
            .collect()
    }

    /// Asks `task`: here first, then its holders elsewhere.
    async fn ask(
        self: &Arc<Self>,
        q: &Queryable,
        ask: &Ask,
        task: i32,
        params: &Params,
        local_path: &str,
    ) -> Asked {
        if let Some(answer) = self.here(q, ask, task, params.max_lag).await {
            return answer;
        }
        let mut tried = Vec::new();
        for (worker, address) in self.holders(task, params.max_lag) {
            let path = format!("{local_path}?{}", params.forwarded());
            match self.client.get(&address, &path).await {
                Ok((200, body)) => return Asked::Found(body),
                Ok((404, body)) if body.get("found").is_some() => return Asked::Missing(body),
                Ok((status, body)) => tried.push(format!("{worker}: {status} {}", body["error"])),
                Err(e) => tried.push(format!("{worker}: {e}")),
            }
        }
        let why = match tried.is_empty() {
            true => "no copy that may answer is placed yet (moving, restoring or starting)".into(),
            false => tried.join("; "),
        };
        Asked::Unavailable(format!(
            "task {task} has no copy that may answer now: {why}; retry, or allow a standby's \
             staleness with maxLag=<records>"
        ))
    }
}

fn key_of(key: &str, params: &Params) -> Result<Vec<u8>, Refusal> {
    match &params.key_base64 {
        Some(b64) => {
            uncursor(b64).map_err(|e| error(StatusCode::BAD_REQUEST, format!("keyBase64: {e}")))
        }
        None => Ok(key.as_bytes().to_vec()),
    }
}

/// `GET /v1/stores/{step}/keys/{key}`: the key's entry (a windowed
/// aggregate's windows), from whichever worker holds its task.
async fn by_key(
    State(q): State<Arc<Queries>>,
    Path((step, key)): Path<(String, String)>,
    Query(params): Query<Params>,
) -> Answer {
    let _permit = q.admit()?;
    let store = q.step(&step)?.clone();
    let bytes = key_of(&key, &params)?;
    let layout = *q.status.layout.lock().unwrap();
    if layout.tasks == 0 {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the worker is starting: tasks not counted yet",
        ));
    }
    let ask = Ask::Key {
        key: bytes.clone(),
        windows: params.windows(),
    };
    let encoded = percent(&key);
    let mut asked = Vec::new();
    let mut unavailable = None;
    for Candidate { task, by } in candidates(store.spread, &bytes, q.partitioner, layout) {
        let path = format!("/v1/local/stores/{step}/tasks/{task}/keys/{encoded}");
        match q.ask(&store, &ask, task, &params, &path).await {
            Asked::Found(mut body) => {
                body["key"] = key.clone().into();
                body["partitioner"] = by.into();
                return Ok((StatusCode::OK, axum::Json(body)).into_response());
            }
            Asked::Missing(_) => asked.push(json!({"task": task, "partitioner": by})),
            Asked::Unavailable(why) => {
                unavailable.get_or_insert(why);
            }
        }
    }
    // A task that could hold the key did not answer: "not found" would be
    // a guess.
    if let Some(why) = unavailable {
        return Err(error(StatusCode::SERVICE_UNAVAILABLE, why));
    }
    let body = json!({"step": step, "key": key, "found": false, "asked": asked});
    Ok((StatusCode::NOT_FOUND, axum::Json(body)).into_response())
}

/// `GET /v1/stores/{step}/tasks/{task}/entries`: a page of one task's
/// entries (`spec.query.scan`).
async fn scan(
    State(q): State<Arc<Queries>>,
    Path((step, task)): Path<(String, i32)>,
    Query(params): Query<Params>,
) -> Answer {
    let _permit = q.admit()?;
    let store = scan_of(&q, &step, task, &params)?;
    let ask = scan_ask(&params)?;
    let path = format!("/v1/local/stores/{step}/tasks/{task}/entries");
    match q.ask(&store, &ask, task, &params, &path).await {
        Asked::Found(body) | Asked::Missing(body) => {
            Ok((StatusCode::OK, axum::Json(body)).into_response())
        }
        Asked::Unavailable(why) => Err(error(StatusCode::SERVICE_UNAVAILABLE, why)),
    }
}

fn scan_of(q: &Queries, step: &str, task: i32, params: &Params) -> Result<Queryable, Refusal> {
    if !q.settings.scan {
        return Err(error(
            StatusCode::FORBIDDEN,
            "scans are off for this app: set spec.query.scan: true",
        ));
    }
    let store = q.step(step)?.clone();
    let tasks = q.status.layout.lock().unwrap().tasks;
    if !(0..tasks).contains(&task) {
        return Err(error(
            StatusCode::NOT_FOUND,
            format!("task {task}: the app has tasks 0..{tasks}"),
        ));
    }
    if params.limit.is_some_and(|l| l == 0 || l > MAX_PAGE) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("limit: 1 to {MAX_PAGE} entries per page"),
        ));
    }
    Ok(store)
}

fn scan_ask(params: &Params) -> Result<Ask, Refusal> {
    let after = params
        .after
        .as_deref()
        .map(uncursor)
        .transpose()
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("after: {e}")))?;
    Ok(Ask::Scan {
        after,
        limit: params.limit.unwrap_or(100),
    })
}

/// `GET /v1/local/...keys/{key}`: this worker's own copy only (what a
/// forwarded request asks).
async fn local_key(
    State(q): State<Arc<Queries>>,
    Path((step, task, key)): Path<(String, i32, String)>,
    Query(params): Query<Params>,
) -> Answer {
    let store = q.step(&step)?.clone();
    let ask = Ask::Key {
        key: key_of(&key, &params)?,
        windows: params.windows(),
    };
    local_reply(q.here(&store, &ask, task, params.max_lag).await, task)
}

async fn local_scan(
    State(q): State<Arc<Queries>>,
    Path((step, task)): Path<(String, i32)>,
    Query(params): Query<Params>,
) -> Answer {
    let store = scan_of(&q, &step, task, &params)?;
    let ask = scan_ask(&params)?;
    local_reply(q.here(&store, &ask, task, params.max_lag).await, task)
}

fn local_reply(asked: Option<Asked>, task: i32) -> Answer {
    match asked {
        Some(Asked::Found(body)) => Ok((StatusCode::OK, axum::Json(body)).into_response()),
        Some(Asked::Missing(body)) => Ok((StatusCode::NOT_FOUND, axum::Json(body)).into_response()),
        Some(Asked::Unavailable(why)) => Err(error(StatusCode::SERVICE_UNAVAILABLE, why)),
        None => Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("this worker holds no copy of task {task} that may answer"),
        )),
    }
}

/// A key as a path segment again.
fn percent(key: &str) -> String {
    key.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Per worker, where its query endpoint is (`endpoints.json` beside the
/// placement document).
pub type Endpoints = BTreeMap<String, String>;
