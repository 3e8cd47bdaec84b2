//! Reads a worker's `/tasks` (its placement epoch, tasks and commit times).
//! HTTP/1.0 over a plain socket: one request per poll, nothing to pool.

use std::time::Duration;

use millrace_crds::worker_status::WorkerStatus;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A worker that does not answer within this is treated as unavailable.
pub const POLL_TIMEOUT: Duration = Duration::from_millis(1500);

/// Most of an answer read: a report of thousands of partitions is a few
/// hundred KiB; a worker (a custom image's, say) that answers more is not
/// read further, so no app's workers can fill the operator's memory.
pub const MAX_ANSWER_BYTES: u64 = 4 << 20;

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
    (&mut stream)
        .take(MAX_ANSWER_BYTES + 1)
        .read_to_end(&mut response)
        .await
        .map_err(|e| format!("{ip}:{port}: {e}"))?;
    if response.len() as u64 > MAX_ANSWER_BYTES {
        return Err(format!(
            "{ip}:{port}/tasks answered more than {MAX_ANSWER_BYTES} bytes; not read"
        ));
    }
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

    #[tokio::test]
    async fn an_answer_past_the_limit_is_refused_without_reading_it_all() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 256];
            let _ = socket.read(&mut request).await;
            let _ = socket.write_all(b"HTTP/1.0 200 OK\r\n\r\n").await;
            // Endless: only the limit stops the reader.
            let chunk = vec![b' '; 1 << 16];
            while socket.write_all(&chunk).await.is_ok() {}
        });
        let err = get("127.0.0.1", port).await.unwrap_err();
        assert!(err.contains("answered more than 4194304 bytes"), "{err}");
    }

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
