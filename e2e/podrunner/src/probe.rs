//! Readiness, liveness and startup probes: httpGet, tcpSocket and exec.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Probe timing with Kubernetes' defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

pub fn timing(probe: &Probe) -> Timing {
    let secs =
        |v: Option<i32>, default: i32| Duration::from_secs(v.unwrap_or(default).max(0) as u64);
    Timing {
        initial_delay: secs(probe.initial_delay_seconds, 0),
        period: secs(probe.period_seconds, 10).max(Duration::from_secs(1)),
        timeout: secs(probe.timeout_seconds, 1).max(Duration::from_secs(1)),
        success_threshold: probe.success_threshold.unwrap_or(1).max(1) as u32,
        failure_threshold: probe.failure_threshold.unwrap_or(3).max(1) as u32,
    }
}

/// Runs the probe once against a container at `pod_ip`.
pub async fn run(
    probe: &Probe,
    container: &Container,
    pod_ip: &str,
    env: &BTreeMap<String, String>,
) -> Result<(), String> {
    let limit = timing(probe).timeout;
    let attempt = async {
        if let Some(http) = &probe.http_get {
            let port = resolve_port(&http.port, container)?;
            let host = http
                .host
                .clone()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| pod_ip.to_string());
            http_get(&host, port, http.path.as_deref().unwrap_or("/")).await
        } else if let Some(tcp) = &probe.tcp_socket {
            let port = resolve_port(&tcp.port, container)?;
            let host = tcp
                .host
                .clone()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| pod_ip.to_string());
            TcpStream::connect((host.as_str(), port))
                .await
                .map(drop)
                .map_err(|e| format!("connect {host}:{port}: {e}"))
        } else if let Some(exec) = &probe.exec {
            exec_probe(exec.command.as_deref().unwrap_or_default(), env).await
        } else {
            Err("the probe has no handler (httpGet, tcpSocket or exec)".to_string())
        }
    };
    tokio::time::timeout(limit, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("timed out after {limit:?}")))
}

fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("port {n} is out of range")),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("the container has no port named '{name}'")),
    }
}

async fn http_get(host: &str, port: u16, path: &str) -> Result<(), String> {
    let mut stream = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("connect {host}:{port}: {e}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/millrace-podrunner\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    // Read the whole (bounded) answer: closing early makes servers log a
    // broken pipe for every probe.
    let mut answer = Vec::new();
    stream
        .take(64 * 1024)
        .read_to_end(&mut answer)
        .await
        .map_err(|e| e.to_string())?;
    let status =
        status_code(&answer).ok_or_else(|| "no HTTP status line in the answer".to_string())?;
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {status}"))
    }
}

fn status_code(head: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(head).ok()?.lines().next()?;
    line.strip_prefix("HTTP/1.")?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

async fn exec_probe(command: &[String], env: &BTreeMap<String, String>) -> Result<(), String> {
    let (program, args) = command
        .split_first()
        .ok_or("exec probe has an empty command")?;
    let status = tokio::process::Command::new(program)
        .args(args)
        .env_clear()
        .envs(env)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .status()
        .await
        .map_err(|e| e.to_string())?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("command exited with {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_match_kubernetes() {
        let t = timing(&Probe::default());
        assert_eq!(
            (
                t.period,
                t.timeout,
                t.success_threshold,
                t.failure_threshold
            ),
            (Duration::from_secs(10), Duration::from_secs(1), 1, 3)
        );
    }

    #[test]
    fn named_ports_resolve_from_the_container() {
        let c: Container = serde_json::from_value(
            json!({"name": "c", "ports": [{"name": "admin", "containerPort": 8080}]}),
        )
        .unwrap();
        assert_eq!(
            resolve_port(&IntOrString::String("admin".into()), &c),
            Ok(8080)
        );
        assert!(resolve_port(&IntOrString::String("web".into()), &c)
            .unwrap_err()
            .contains("'web'"));
    }

    #[test]
    fn status_line_parses() {
        assert_eq!(status_code(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(status_code(b"garbage"), None);
    }

    #[tokio::test]
    async fn http_probe_against_a_real_listener() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            for status in ["200 OK", "503 Service Unavailable"] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                s.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await
                    .unwrap();
            }
        });
        let probe: Probe =
            serde_json::from_value(json!({"httpGet": {"path": "/ready", "port": port}})).unwrap();
        let c = Container::default();
        assert_eq!(run(&probe, &c, "127.0.0.1", &BTreeMap::new()).await, Ok(()));
        assert!(run(&probe, &c, "127.0.0.1", &BTreeMap::new())
            .await
            .unwrap_err()
            .contains("503"));
    }
}
