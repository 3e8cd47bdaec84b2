//! Reads a worker's `/tasks` (its placement epoch, tasks and commit times).
//! HTTP/1.0 over a plain socket: one request per poll, nothing to pool.

use std::time::Duration;

use millrace_crds::worker_status::WorkerStatus;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A worker that does not answer within this is treated as unavailable.
pub const POLL_TIMEOUT: Duration = Duration::from_millis(1500);

pub async fn poll(ip: &str, port: u16) -> Result<WorkerStatus, String> {
    tokio::time::timeout(POLL_TIMEOUT, get(ip, port))
        .await
        .map_err(|_| format!("{ip}:{port}/tasks did not answer within {POLL_TIMEOUT:?}"))?
}

async fn get(ip: &str, port: u16) -> Result<WorkerStatus, String> {
    let mut stream = TcpStream::connect((ip, port))
        .await
        .map_err(|e| format!("{ip}:{port}: {e}"))?;
    stream
        .write_all(format!("GET /tasks HTTP/1.0\r\nHost: {ip}\r\n\r\n").as_bytes())
        .await
        .map_err(|e| format!("{ip}:{port}: {e}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .map_err(|e| format!("{ip}:{port}: {e}"))?;
    parse(&response).map_err(|e| format!("{ip}:{port}/tasks: {e}"))
}

fn parse(response: &[u8]) -> Result<WorkerStatus, String> {
    let text = std::str::from_utf8(response).map_err(|e| e.to_string())?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("response without a header end")?;
    let status_line = head.lines().next().unwrap_or_default();
    if status_line.split_whitespace().nth(1) != Some("200") {
        return Err(format!("answered '{status_line}'"));
    }
    serde_json::from_str(body).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_tasks_answer_and_refuses_errors() {
        let ok = b"HTTP/1.0 200 OK\r\ncontent-type: application/json\r\n\r\n{\"workerId\":\"a-0\",\"applicationId\":\"a\",\"placement\":\"p\",\"appliedEpoch\":4,\"tasks\":[1],\"partitions\":[],\"commits\":{\"1\":{\"firstMs\":5,\"lastMs\":9}},\"released\":{}}";
        let status = parse(ok).unwrap();
        assert_eq!(status.applied_epoch, Some(4));
        assert_eq!(status.commits[&1].last_ms, 9);
        assert!(parse(b"HTTP/1.0 500 Oops\r\n\r\n")
            .unwrap_err()
            .contains("500"));
        assert!(parse(b"garbage").is_err());
    }
}
