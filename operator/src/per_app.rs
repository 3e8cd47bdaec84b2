//! Each app's poll on its own task. The placement and autoscaling loops
//! poll every app each round; polled one after another, one slow app (a
//! fence waiting out Kafka's timeout, workers slow to answer `/tasks`)
//! delayed every other tenant's placement and scaling. Here each poll runs
//! apart, and an app whose previous poll is still running is skipped for
//! the round: it slows only itself, and never has two polls at once.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};

use kube::ResourceExt;
use millrace_crds::StreamApp;

use crate::supervise::lock;

type AppKey = (String, String);

/// The apps whose poll is running, by (namespace, name).
#[derive(Clone, Default)]
pub struct PerApp(Arc<Mutex<HashSet<AppKey>>>);

/// Removes its app from the running set however its poll ends (returns,
/// panics, or its task is dropped).
struct Running {
    set: PerApp,
    key: AppKey,
}

impl Drop for Running {
    fn drop(&mut self) {
        lock(&self.set.0).remove(&self.key);
    }
}

impl PerApp {
    /// Starts `poll(app)` on its own task for each app not being polled
    /// already; returns the apps started.
    pub fn start_each<F, Fut>(
        &self,
        apps: impl IntoIterator<Item = Arc<StreamApp>>,
        poll: F,
    ) -> usize
    where
        F: Fn(Arc<StreamApp>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut started = 0;
        for app in apps {
            let key = (app.namespace().unwrap_or_default(), app.name_any());
            if !lock(&self.0).insert(key.clone()) {
                continue;
            }
            let running = Running {
                set: self.clone(),
                key,
            };
            let polling = poll(app);
            tokio::spawn(async move {
                let _running = running;
                polling.await;
            });
            started += 1;
        }
        started
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::{mpsc, Notify};

    fn app(name: &str) -> Arc<StreamApp> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "millrace.dev/v1alpha1", "kind": "StreamApp",
                "metadata": {"name": name, "namespace": "ns"},
                "spec": {"kafka": {"bootstrapServers": "k:1"}}
            }))
            .unwrap(),
        )
    }

    #[tokio::test]
    async fn a_slow_app_holds_only_itself_and_never_runs_twice_at_once() {
        let per_app = PerApp::default();
        let (done, mut polled) = mpsc::unbounded_channel::<String>();
        let release = Arc::new(Notify::new());
        let round = || {
            let (done, release) = (done.clone(), release.clone());
            per_app.start_each([app("slow"), app("quick")], move |app| {
                let (done, release) = (done.clone(), release.clone());
                async move {
                    if app.name_any() == "slow" {
                        release.notified().await;
                    }
                    done.send(app.name_any()).unwrap();
                }
            })
        };
        assert_eq!(round(), 2);
        assert_eq!(
            polled.recv().await.unwrap(),
            "quick",
            "not held by the slow one"
        );
        assert_eq!(round(), 1, "the slow one is still running: skipped");
        assert_eq!(polled.recv().await.unwrap(), "quick");
        release.notify_one();
        assert_eq!(polled.recv().await.unwrap(), "slow");
        // Its task has ended: the next round polls it again.
        tokio::task::yield_now().await;
        assert_eq!(round(), 2);
    }
}
