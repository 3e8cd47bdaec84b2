//! Asking another worker of the app: its `/v1/local/...` endpoint answers
//! from its own copy only, so a request is forwarded once, never in a loop.

use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as Pooled;
use hyper_util::rt::TokioExecutor;
use serde_json::Value as Json;

/// A worker's answer larger than this is not read (a scan page of
/// `MAX_PAGE` entries fits many times over).
const MAX_ANSWER_BYTES: usize = 16 << 20;
const TIMEOUT: Duration = Duration::from_secs(3);

/// Keeps connections to the other workers open between queries.
pub struct Client {
    inner: Pooled<HttpConnector, Empty<Bytes>>,
}

impl Default for Client {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(1)));
        connector.set_nodelay(true);
        Self {
            inner: Pooled::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
        }
    }
}

impl Client {
    /// GETs `path` from `address` (`host:port`): its status and JSON body.
    pub async fn get(&self, address: &str, path: &str) -> Result<(u16, Json), String> {
        let uri = format!("http://{address}{path}");
        let request = hyper::Request::get(&uri)
            .body(Empty::new())
            .map_err(|e| format!("{uri}: {e}"))?;
        let response = tokio::time::timeout(TIMEOUT, self.inner.request(request))
            .await
            .map_err(|_| format!("{uri}: no answer within {TIMEOUT:?}"))?
            .map_err(|e| format!("{uri}: {e}"))?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| format!("{uri}: {e}"))?
            .to_bytes();
        let json = serde_json::from_slice(&body).map_err(|e| format!("{uri}: {e}"))?;
        Ok((status, json))
    }
}
