//! Against a fake API server that is also the workers' admin endpoint: it
//! counts the pod lists and `/tasks` requests an observation costs.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

#[derive(Default)]
struct Requests {
    pod_lists: AtomicUsize,
    tasks: AtomicUsize,
}

/// Serves one pod, `a-0`, whose admin port is this server's port; a second
/// pod, `a-1`, has no IP yet.
async fn fake_cluster() -> (Client, Arc<Requests>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(Requests::default());
    let counted = requests.clone();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let n = socket.read(&mut buf).await.unwrap();
                let request = String::from_utf8_lossy(&buf[..n]).to_string();
                let path = request.split_whitespace().nth(1).unwrap_or_default();
                let body = if path.starts_with("/tasks") {
                    counted.tasks.fetch_add(1, Ordering::SeqCst);
                    serde_json::json!({
                        "workerId": "a-0", "applicationId": "a", "placement": "p",
                        "appliedEpoch": 4, "tasks": [1], "partitions": [], "busyNanos": 7
                    })
                } else {
                    counted.pod_lists.fetch_add(1, Ordering::SeqCst);
                    pod_list(port)
                };
                let body = body.to_string();
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                socket.write_all(response.as_bytes()).await.unwrap();
                socket.shutdown().await.ok();
            });
        }
    });
    let config = kube::Config::new(format!("http://127.0.0.1:{port}").parse().unwrap());
    (Client::try_from(config).unwrap(), requests)
}

fn pod_list(admin_port: u16) -> serde_json::Value {
    let containers = serde_json::json!([{
        "name": "worker",
        "ports": [{"name": ADMIN_PORT_NAME, "containerPort": admin_port}]
    }]);
    serde_json::json!({
        "apiVersion": "v1", "kind": "PodList", "metadata": {},
        "items": [
            {
                "metadata": {"name": "a-0", "namespace": "n"},
                "spec": {"containers": containers},
                "status": {"podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]}
            },
            {
                "metadata": {"name": "a-1", "namespace": "n"},
                "spec": {"containers": containers},
                "status": {}
            }
        ]
    })
}

#[tokio::test]
async fn one_observation_serves_both_loops_while_it_is_recent() {
    let (client, requests) = fake_cluster().await;
    let observations = Observations::new(client, Duration::from_secs(1));
    let counts = || {
        (
            requests.pod_lists.load(Ordering::SeqCst),
            requests.tasks.load(Ordering::SeqCst),
        )
    };

    let placement = observations.fresh("n", "a").await.unwrap();
    assert_eq!(counts(), (1, 1), "one list, one /tasks per pod with an IP");
    let pods: Vec<(&str, bool)> = placement
        .pods
        .iter()
        .map(|p| (p.name.as_str(), p.ready))
        .collect();
    assert_eq!(pods, [("a-0", true), ("a-1", false)]);
    assert_eq!(placement.pods[0].status().unwrap().busy_nanos, 7);
    assert!(placement.pods[1]
        .report
        .as_ref()
        .unwrap_err()
        .contains("IP"));

    let autoscaler = observations
        .recent("n", "a", Duration::from_secs(60))
        .await
        .unwrap();
    assert!(Arc::ptr_eq(&placement, &autoscaler), "reused");
    assert_eq!(counts(), (1, 1));

    let too_old = observations.recent("n", "a", Duration::ZERO).await.unwrap();
    assert!(!Arc::ptr_eq(&placement, &too_old));
    assert_eq!(counts(), (2, 2), "older than allowed: observed again");

    observations
        .recent("n", "b", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(counts().0, 3, "another app has its own observation");
}
