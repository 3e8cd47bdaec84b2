//! Crash points for tests: `MILLRACE_FAILPOINT=<name>:<n>` aborts the
//! process the `n`th time it passes [`reach`]`(<name>)`, as a crash would
//! (no destructor runs, nothing is flushed). A SIGKILL at a random moment
//! rarely lands inside a window a few milliseconds wide; these land there
//! every time, so each step of the commit order is shown safe to crash at
//! (tests/tests/state_verifier.rs). Unset, a pass costs one load.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

static ARMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
static PASSED: AtomicU64 = AtomicU64::new(0);

fn parse(spec: &str) -> Option<(String, u64)> {
    let (name, n) = spec.rsplit_once(':')?;
    Some((name.to_string(), n.parse().ok()?))
}

pub fn reach(name: &str) {
    let armed = ARMED.get_or_init(|| {
        std::env::var("MILLRACE_FAILPOINT")
            .ok()
            .and_then(|s| parse(&s))
    });
    if let Some((point, n)) = armed {
        if point == name && PASSED.fetch_add(1, Ordering::Relaxed) + 1 == *n {
            eprintln!("millrace-runtime: failpoint {name} reached ({n}): aborting");
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_failpoint_names_a_point_and_how_many_passes() {
        assert_eq!(
            super::parse("state.committed:3"),
            Some(("state.committed".into(), 3))
        );
        assert_eq!(super::parse("state.committed"), None);
    }
}
