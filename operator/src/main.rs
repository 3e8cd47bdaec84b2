//! `millrace-operator`: reconciles StreamApps into workers (issue #3).
//!
//! Until the reconcile loop lands this binary only reports its version, so
//! nothing pretends to work that does not.

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("--version") | Some("version") => {
            println!("millrace-operator {}", env!("CARGO_PKG_VERSION"))
        }
        _ => {
            eprintln!(
                "millrace-operator {}: the reconcile loop is not built yet (issue #3)",
                env!("CARGO_PKG_VERSION")
            );
            std::process::exit(2);
        }
    }
}
