//! `millrace-runtime`: runs a StreamApp's CEL pipeline exactly once.
//!
//! - `millrace-runtime run --manifest app.yaml [--bootstrap HOST:PORT]`:
//!   standalone, this worker owns every task;
//! - `millrace-runtime validate app.yaml`: compile the pipeline, print errors;
//! - `millrace-runtime worker`: in a pod, reads the configuration the
//!   operator rendered (`MILLRACE_CONFIG`).
//!
//! Exit codes are the worker's (`millrace_runtime::worker`).

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use millrace_crds::worker_config::WorkerConfig;
use millrace_runtime::pipeline::eval::Evaluator;
use millrace_runtime::processor::Io;
use millrace_runtime::worker::{self, config_error};
use millrace_runtime::{manifest, pipeline};

#[derive(Parser)]
#[command(version, about = "The Millrace stream-processing runtime")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compile a manifest's pipeline and report every error.
    Validate { manifest: PathBuf },
    #[command(flatten)]
    Worker(worker::Command),
}

fn main() {
    let code = match Cli::parse().command {
        Command::Validate { manifest } => validate(&manifest),
        Command::Worker(command) => command.execute(&start_pipeline),
    };
    std::process::exit(code);
}

/// The pipeline, compiled once and evaluated by one evaluator per loop.
fn start_pipeline(config: &WorkerConfig, loops: usize) -> Result<(Io, Vec<Evaluator>), String> {
    let spec = config.pipeline.as_ref().ok_or(
        "the configuration has no pipeline: an app with spec.image runs its own binary, not millrace-runtime",
    )?;
    let compiled = pipeline::compile(spec).map_err(|errors| errors.to_string())?;
    let compiled = Arc::new(compiled.for_application(&config.application_id));
    if let Some((field, problem)) = compiled
        .unrunnable_problems(config.processing_guarantee)
        .into_iter()
        .next()
    {
        return Err(format!("{field}: {problem}"));
    }
    let io = Io::of_pipeline(&compiled, spec.max_records_per_second);
    let evaluators = (0..loops)
        .map(|_| Evaluator::new(compiled.clone()))
        .collect();
    Ok((io, evaluators))
}

fn validate(path: &std::path::Path) -> i32 {
    let app = match manifest::load(path) {
        Ok(app) => app,
        Err(e) => return config_error(e),
    };
    let Some(spec) = &app.spec.pipeline else {
        return config_error(anyhow::anyhow!(
            "spec.pipeline: the manifest has no pipeline to validate"
        ));
    };
    match pipeline::compile(spec) {
        Ok(compiled) => {
            let problems = compiled.unrunnable_problems(app.spec.processing_guarantee);
            for (field, problem) in &problems {
                eprintln!("{}: {field}: {problem}", path.display());
            }
            if !problems.is_empty() {
                return 2;
            }
            println!("{}: ok ({} steps)", path.display(), compiled.steps.len());
            0
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{}: {e}", path.display());
            }
            2
        }
    }
}
