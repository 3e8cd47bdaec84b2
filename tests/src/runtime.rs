//! `millrace-runtime run` as a test drives it: started on a manifest,
//! asked for `/tasks`, its outputs read back with their headers.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::workspace_binary;

/// Writes `yaml` to a manifest file named for `app`.
pub fn write_manifest(app: &str, yaml: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("{app}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    path
}

/// `millrace-runtime run --manifest path`, its output captured: for a run
/// that stops by itself (a long one could fill the pipe; see
/// [`start_logging`]).
pub fn start(path: &std::path::Path, port: u16) -> Child {
    run_command(path, port)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// As [`start`], its log going to [`log_path`] for `port`; killed when
/// dropped, so a failing test leaves no worker behind.
pub fn start_logging(path: &std::path::Path, port: u16) -> Running {
    std::fs::File::create(log_path(port)).unwrap();
    start_logging_with(path, port, &[], &[])
}

/// As [`start_logging`] with more arguments and environment, its log
/// appended to (a restarted worker's follows the one before).
pub fn start_logging_with(
    path: &std::path::Path,
    port: u16,
    args: &[&str],
    envs: &[(&str, &str)],
) -> Running {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(port))
        .unwrap();
    let child = run_command(path, port)
        .args(args)
        .envs(envs.iter().copied())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Running { child, port }
}

/// A worker process that is killed when dropped.
pub struct Running {
    child: Child,
    port: u16,
}

impl Running {
    /// Panics with the worker's log when it has stopped.
    pub fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            let log = std::fs::read_to_string(log_path(self.port)).unwrap_or_default();
            panic!("the worker stopped ({status}):\n{log}");
        }
    }

    /// Whether it has stopped (by itself: a crash point, say).
    pub fn has_exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status once it has stopped by itself.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// SIGKILL, and waits for it to be gone.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Stops the worker with SIGTERM and asserts it shut down cleanly
    /// (its open transactions committed).
    pub fn terminate(mut self) {
        crate::workers::signal(&[self.child.id()], "TERM");
        let status = self.child.wait().unwrap();
        assert!(status.success(), "a clean shutdown, not {status}");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn log_path(port: u16) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("millrace-runtime-{port}.log"))
}

fn run_command(path: &std::path::Path, port: u16) -> Command {
    let mut command = Command::new(workspace_binary("millrace-runtime"));
    command
        .args([
            "run",
            "--manifest",
            path.to_str().unwrap(),
            "--admin-addr",
            &format!("127.0.0.1:{port}"),
        ])
        .env("RUST_LOG", "warn");
    command
}

/// The worker's `/tasks`, or `None` while it does not answer.
pub fn tasks(port: u16) -> Option<serde_json::Value> {
    serde_json::from_str(&admin_get(port, "/tasks")?).ok()
}

/// The body of the worker's admin endpoint `path`, or `None` while it does
/// not answer 200.
/// A counter of a worker's `/metrics` (`millrace_<name>_total`), summed
/// over its labels; `None` if the worker does not answer or has no such
/// series.
pub fn counter(port: u16, name: &str) -> Option<u64> {
    let series = format!("millrace_{name}_total");
    let metrics = admin_get(port, "/metrics")?;
    let values: Vec<u64> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix(&series))
        .filter(|rest| rest.starts_with([' ', '{']))
        .filter_map(|rest| rest.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

pub fn admin_get(port: u16, path: &str) -> Option<String> {
    admin_get_at("127.0.0.1", port, path)
}

/// [`admin_get`] of a worker at `host` (a pod's IP).
pub fn admin_get_at(host: &str, port: u16, path: &str) -> Option<String> {
    let (status, _, body) = http_get(host, port, path)?;
    (status == 200).then_some(body)
}

/// A GET's status, head and body (`None`: no answer).
pub fn http_get(host: &str, port: u16, path: &str) -> Option<(u16, String, String)> {
    let mut stream = std::net::TcpStream::connect((host, port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, head.to_string(), body.to_string()))
}

/// A record's value and headers, as text.
pub type Seen = (Option<String>, Vec<(String, String)>);

/// Reads every committed record of partition 0 of `topic` with its headers.
pub fn committed_records(topic: &str) -> Vec<Seen> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    let consumer: BaseConsumer = crate::committed_reader();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, rdkafka::Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut records = Vec::new();
    loop {
        match consumer.poll(Duration::from_secs(5)) {
            Some(Ok(m)) => records.push((
                m.payload().map(|v| String::from_utf8_lossy(v).into_owned()),
                m.headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                let value =
                                    h.value.map(String::from_utf8_lossy).unwrap_or_default();
                                (h.key.to_string(), value.into_owned())
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            )),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) | None => return records,
            Some(Err(e)) => panic!("reading {topic}: {e}"),
        }
    }
}

/// The value of header `key`.
pub fn header(headers: &[(String, String)], key: &str) -> Option<String> {
    headers
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
}
