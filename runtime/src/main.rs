//! `millrace-runtime`: the stream-processing worker (issue #4).
//!
//! Until the engine lands this binary only reports its version.

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("--version") | Some("version") => {
            println!("millrace-runtime {}", env!("CARGO_PKG_VERSION"))
        }
        _ => {
            eprintln!(
                "millrace-runtime {}: the processing engine is not built yet (issue #4)",
                env!("CARGO_PKG_VERSION")
            );
            std::process::exit(2);
        }
    }
}
