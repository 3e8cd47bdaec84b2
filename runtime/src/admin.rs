//! The worker's admin HTTP endpoint: `/healthz` (fails while a processing
//! loop is stuck), `/readyz`, `/metrics`, `/tasks` (JSON: owned tasks and
//! committed offsets, for the operator).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

use crate::metrics::{Metrics, Status};
use millrace_crds::worker_status::unix_ms;

#[derive(Clone)]
struct Shared {
    metrics: Arc<Metrics>,
    status: Arc<Status>,
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    status: Arc<Status>,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route(
            "/healthz",
            get(|State(s): State<Shared>| async move {
                match s.status.stalled(unix_ms()) {
                    None => (StatusCode::OK, "ok".to_string()),
                    Some(stuck) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "processing loop {} has made no progress for {} ms (limit {} ms)",
                            stuck.loop_index, stuck.silent_ms, stuck.limit_ms
                        ),
                    ),
                }
            }),
        )
        .route(
            "/readyz",
            get(|State(s): State<Shared>| async move {
                if s.status.ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ready")
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "starting: tasks not assigned yet",
                    )
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(s): State<Shared>| async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    s.metrics.encode(&s.status),
                )
            }),
        )
        .route(
            "/tasks",
            get(|State(s): State<Shared>| async move { Json(s.status.snapshot()).into_response() }),
        )
        .with_state(Shared { metrics, status });
    tracing::info!(addr = %listener.local_addr()?, "admin endpoint: /healthz /readyz /metrics /tasks");
    axum::serve(listener, app).await?;
    Ok(())
}
