//! The processes a benchmark runs: their binaries, CPU time and peak
//! memory from /proc, the broker's share, and stopping them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

pub fn binary(target: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let path = target.join("release").join(name);
    anyhow::ensure!(
        path.exists(),
        "{} is missing: run `make bench` (it builds release binaries)",
        path.display()
    );
    Ok(path)
}

/// CPU seconds (user + system, all threads) and peak RSS of a live process.
pub fn process_usage(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are 11 and 12 after the name.
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    (ticks / 100.0, hwm_kb / 1024.0)
}

/// The local broker's process (a JVM running `kafka.Kafka`), when there is
/// exactly one.
fn broker_pid() -> Option<u32> {
    let mut found = std::fs::read_dir("/proc").ok()?.filter_map(|entry| {
        let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        args.iter().any(|a| *a == b"kafka.Kafka").then_some(pid)
    });
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

/// The broker's process and its CPU seconds so far, to measure a run's
/// share against.
pub fn broker_before() -> Option<(u32, f64)> {
    broker_pid().map(|pid| (pid, process_usage(pid).0))
}

pub fn stop(mut child: Child) {
    // A child that already exited (a failed run) makes kill complain.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stderr(std::process::Stdio::null())
        .status();
    for _ in 0..100 {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_of_this_process_is_readable() {
        let (cpu, rss) = process_usage(std::process::id());
        assert!(cpu >= 0.0 && rss > 1.0, "{cpu} {rss}");
    }
}
