//! A standalone worker (`millrace-runtime run`) of one app: its manifest,
//! state directory and admin port, started and restarted by a test.

use std::path::PathBuf;

use crate::runtime::{log_path, start_logging_with, Running};

/// The spec lines (under `spec:`) the verifiers' apps run with as
/// standalone workers.
pub const SPEC: &str = "  commitInterval: 500ms\n  transactionTimeout: 30s\n  state: {}\n";

pub struct App {
    pub app_id: String,
    pub manifest: PathBuf,
    pub state_dir: PathBuf,
    pub port: u16,
    /// Set for every start.
    pub envs: Vec<(&'static str, String)>,
}

impl App {
    /// Writes `manifest` (of the app `app_id`) and clears the port's log.
    pub fn new(app_id: &str, manifest: &str, port: u16) -> Self {
        let path = std::env::temp_dir().join(format!("{app_id}.yaml"));
        std::fs::write(&path, manifest).unwrap();
        let _ = std::fs::remove_file(log_path(port));
        eprintln!("{app_id} worker log: {}", log_path(port).display());
        Self {
            app_id: app_id.into(),
            manifest: path,
            state_dir: std::env::temp_dir().join(format!("{app_id}-state")),
            port,
            envs: Vec::new(),
        }
    }

    /// Starts a worker on the app's state directory, with `envs`.
    pub fn start_with(&self, envs: &[(&str, &str)]) -> Running {
        let dir = self.state_dir.to_str().unwrap();
        let mut envs = envs.to_vec();
        envs.extend(self.envs.iter().map(|(k, v)| (*k, v.as_str())));
        envs.push(("RUST_LOG", "info"));
        let query = self.query_port().to_string();
        let args = ["--state-dir", dir, "--query-port", &query];
        start_logging_with(&self.manifest, self.port, &args, &envs)
    }

    /// The worker's query API port: its admin port + 1000.
    pub fn query_port(&self) -> u16 {
        self.port + 1000
    }

    pub fn start(&self) -> Running {
        self.start_with(&[])
    }

    /// A lost volume: the next start restores everything.
    pub fn lose_state(&self) {
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }

    /// A counter of the worker's `/metrics` (`millrace_<name>_total`).
    pub fn counter(&self, name: &str) -> Option<u64> {
        crate::runtime::counter(self.port, name)
    }
}

/// Kills one of `workers` at a random moment every 0.6–2 s, `kills` times,
/// restarting each from its state directory (`apps[i]` for `workers[i]`,
/// in turn); kill number `lose_at` (and the one after it, with several
/// apps) first deletes the directory.
pub fn kill_in_turn(apps: &[App], workers: &mut [Running], kills: u64, lose_at: u64) {
    let mut seed = std::process::id() as u64 ^ 0x9e37_79b9_7f4a_7c15;
    for kill in 0..kills {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(std::time::Duration::from_millis(600 + (seed >> 33) % 1400));
        let which = (kill % apps.len() as u64) as usize;
        let lose = kill / apps.len() as u64 == lose_at;
        eprint!("kill {}: ", kill + 1);
        apps[which].restart(&mut workers[which], lose);
    }
}

impl App {
    /// SIGKILLs `worker` and starts it again, on an empty state directory
    /// if `lose`.
    pub fn restart(&self, worker: &mut Running, lose: bool) {
        worker.kill();
        if lose {
            self.lose_state();
        }
        eprintln!(
            "{} killed{}",
            self.app_id,
            if lose { ", volume deleted" } else { "" }
        );
        *worker = self.start();
    }
}
