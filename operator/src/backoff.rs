//! How long a failing app's reconcile waits before it is tried again:
//! doubling from a few seconds to five minutes, per app, reset by a
//! success. A fixed retry every few seconds let one app whose API calls
//! keep failing (a webhook that times out, say) take a steady share of the
//! operator and the API server from every other tenant.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

const FIRST: Duration = Duration::from_secs(5);
const MOST: Duration = Duration::from_secs(300);

/// Failures in a row, per app (its namespace/name).
#[derive(Default)]
pub struct Backoff(Mutex<HashMap<String, u32>>);

impl Backoff {
    /// A reconcile of `app` failed: how long to wait before the next.
    pub fn failed(&self, app: &str) -> Duration {
        let mut failures = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(app.to_string()).or_insert(0);
        let wait = FIRST.saturating_mul(1 << (*n).min(16)).min(MOST);
        *n = n.saturating_add(1);
        wait
    }

    /// A reconcile of `app` succeeded: the next failure waits briefly again.
    pub fn succeeded(&self, app: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(app);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_per_app_up_to_five_minutes_and_a_success_resets_them() {
        let backoff = Backoff::default();
        let waits: Vec<u64> = (0..9).map(|_| backoff.failed("a/x").as_secs()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(backoff.failed("b/y"), FIRST, "another app is not held back");
        backoff.succeeded("a/x");
        assert_eq!(backoff.failed("a/x"), FIRST);
        for _ in 0..100 {
            backoff.failed("c/z");
        }
        assert_eq!(backoff.failed("c/z"), MOST, "no overflow");
    }
}
