//! `millrace status`: one screen of an app's state (pure, for tests).

use std::fmt::Write;

use millrace_crds::placement::PlacementDoc;
use millrace_crds::StreamApp;

fn list(tasks: &std::collections::BTreeSet<i32>) -> String {
    match tasks.is_empty() {
        true => "-".into(),
        false => tasks
            .iter()
            .map(i32::to_string)
            .collect::<Vec<_>>()
            .join(","),
    }
}

pub fn render(app: &StreamApp, doc: Option<&PlacementDoc>) -> String {
    let mut out = String::new();
    let name = app.metadata.name.clone().unwrap_or_default();
    let status = app.status.clone().unwrap_or_default();
    let _ = writeln!(
        out,
        "StreamApp {name} (application id {})",
        status.application_id.as_deref().unwrap_or("-")
    );
    for c in &status.conditions {
        let _ = writeln!(
            out,
            "  {:<12} {:<5} {}: {}",
            c.type_, c.status, c.reason, c.message
        );
    }
    let _ = writeln!(
        out,
        "Workers {}/{} ready (desired {}), tasks {}, lag {}",
        status.ready_replicas,
        status.replicas,
        status.desired_replicas,
        status.tasks.map_or("-".into(), |t| t.to_string()),
        status.lag.map_or("-".into(), |l| l.to_string()),
    );
    if let Some(endpoint) = &status.query_endpoint {
        let _ = writeln!(
            out,
            "Queries  service {} port {}",
            endpoint.service, endpoint.port
        );
    }
    if let Some(state) = status.placement.as_ref().and_then(|p| p.state.as_ref()) {
        let _ = writeln!(out, "State    {state}");
    }
    if let Some(doc) = doc {
        let _ = writeln!(out, "Placement (epoch {})", doc.epoch);
        let _ = writeln!(
            out,
            "  {:<24} {:<20} {:<20} WARMING UP",
            "WORKER", "ACTIVE", "STANDBY"
        );
        for (worker, a) in &doc.workers {
            let _ = writeln!(
                out,
                "  {worker:<24} {:<20} {:<20} {}",
                list(&a.active),
                list(&a.standby),
                list(&a.warmup)
            );
        }
        for m in &doc.moves {
            let _ = writeln!(out, "  moving task {} from {} to {}", m.task, m.from, m.to);
        }
    }
    for stopped in &status.stopped_tasks {
        let _ = writeln!(out, "Stopped  {stopped}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use millrace_crds::placement::Assignment;

    #[test]
    fn the_view_names_workers_their_tasks_and_the_query_endpoint() {
        let mut app = StreamApp::new(
            "counts",
            serde_json::from_value(serde_json::json!({"kafka": {"bootstrapServers": "k:9092"}}))
                .unwrap(),
        );
        app.status = Some(millrace_crds::StreamAppStatus {
            tasks: Some(4),
            lag: Some(12),
            query_endpoint: Some(millrace_crds::QueryEndpoint {
                service: "counts".into(),
                port: 8081,
            }),
            ..Default::default()
        });
        let mut doc = PlacementDoc {
            epoch: 7,
            ..Default::default()
        };
        doc.workers.insert(
            "counts-0".into(),
            Assignment {
                active: [0, 1].into(),
                standby: [2].into(),
                warmup: Default::default(),
            },
        );
        let text = render(&app, Some(&doc));
        assert!(text.contains("tasks 4, lag 12"), "{text}");
        assert!(text.contains("service counts port 8081"), "{text}");
        assert!(
            text.contains("counts-0") && text.contains("0,1") && text.contains("epoch 7"),
            "{text}"
        );
    }
}
