//! One task's state store, measured the way the runtime would use it: every
//! commit interval one atomic batch of updates together with the changelog
//! offset they reach; point reads of random keys; a restore (bulk load in
//! large batches); the size on disk; and a crash (SIGKILL while committing)
//! after which the store must be exactly some committed batch.
//!
//! `store-compare <fjall|redb> <dir>` runs every measure and prints one JSON
//! line; `store-compare <engine> <dir> crash-writer` is the child the crash
//! measure kills. Built with one engine's feature at a time (run.sh), so
//! each build time is its own.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

mod engines;

use engines::Store;

/// Distinct keys, the writes of the write measure, keys and values as a
/// count-per-key aggregate's (16-byte key, 100-byte value).
const KEYS: u64 = 1_000_000;
const WRITES: u64 = 2_000_000;
/// Updates per commit: 100 ms of a 50,000 records/s task.
const BATCH: u64 = 5_000;
const READS: u64 = 200_000;
/// A restore applies changelog records in large batches.
const RESTORE_BATCH: u64 = 50_000;
const OFFSET_KEY: &[u8] = b"\0changelog-offset";

fn key(n: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(b"key-----");
    k[8..].copy_from_slice(&n.to_be_bytes());
    k
}

fn value(n: u64, batch: u64) -> Vec<u8> {
    let mut v = format!(
        "{{\"key\":\"k{n}\",\"count\":{batch},\"sum\":{}}}",
        n * 3 + batch
    )
    .into_bytes();
    v.resize(100, b' ');
    v
}

/// A fixed pseudo-random sequence (xorshift): the same keys for every engine.
struct Keys(u64);

impl Keys {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % KEYS
    }
}

fn dir_size(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn batch_of(keys: &mut Keys, size: u64, batch: u64) -> Vec<([u8; 16], Vec<u8>)> {
    (0..size)
        .map(|_| {
            let n = keys.next();
            (key(n), value(n, batch))
        })
        .collect()
}

fn measure(engine: &str, dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();

    // Commits: one atomic batch (updates + offset) per commit interval.
    let mut store = Store::open(engine, &dir.join("writes"));
    let mut keys = Keys(0x9E37_79B9_7F4A_7C15);
    let started = Instant::now();
    let mut commit_micros = Vec::new();
    for b in 0..WRITES / BATCH {
        let updates = batch_of(&mut keys, BATCH, b);
        let one = Instant::now();
        store.commit(&updates, b + 1);
        commit_micros.push(one.elapsed().as_micros() as u64);
    }
    let write_secs = started.elapsed().as_secs_f64();
    commit_micros.sort_unstable();
    let pct = |p: usize| commit_micros[commit_micros.len() * p / 100] as f64 / 1000.0;
    let (p50_commit_ms, p99_commit_ms) = (pct(50), pct(99));

    let started = Instant::now();
    let mut found = 0u64;
    let mut probe = Keys(0x2545_F491_4F6C_DD1D);
    for _ in 0..READS {
        if store.get(&key(probe.next())).is_some() {
            found += 1;
        }
    }
    let read_secs = started.elapsed().as_secs_f64();
    drop(store);
    let size_writes = dir_size(&dir.join("writes"));

    // A restore: every key once, in large batches.
    let mut restore = Store::open(engine, &dir.join("restore"));
    let started = Instant::now();
    let mut n = 0;
    while n < KEYS {
        let updates: Vec<_> = (n..(n + RESTORE_BATCH).min(KEYS))
            .map(|k| (key(k), value(k, 1)))
            .collect();
        n += updates.len() as u64;
        restore.commit(&updates, n);
    }
    let restore_secs = started.elapsed().as_secs_f64();
    drop(restore);
    let size_restore = dir_size(&dir.join("restore"));

    // Reopening a store of a million keys (a restart with the volume intact).
    let started = Instant::now();
    let reopened = Store::open(engine, &dir.join("restore"));
    let reopen_ms = started.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(reopened.offset(), Some(KEYS), "the restore's offset");
    drop(reopened);

    let crash = crash(engine, &dir.join("crash"));

    println!(
        "{{\"engine\":\"{engine}\",\"commits_per_s\":{:.0},\"updates_per_s\":{:.0},\"p50_commit_ms\":{p50_commit_ms:.2},\"p99_commit_ms\":{p99_commit_ms:.2},\"durable_every\":{},\"reads_per_s\":{:.0},\"found\":{found},\"restore_records_per_s\":{:.0},\"bytes_after_writes\":{size_writes},\"bytes_after_restore\":{size_restore},\"reopen_ms\":{reopen_ms:.1},{crash}}}",
        (WRITES / BATCH) as f64 / write_secs,
        WRITES as f64 / write_secs,
        std::env::var("STORE_DURABLE_EVERY").unwrap_or_else(|_| "10".into()),
        READS as f64 / read_secs,
        KEYS as f64 / restore_secs,
    );
}

/// Kills a writer mid-commit a few times; each reopen must find exactly
/// the batch its offset names: every key of it, none of the next.
fn crash(engine: &str, dir: &Path) -> String {
    let _ = std::fs::remove_dir_all(dir);
    let mut reopen_ms = Vec::new();
    let mut last = 0;
    for round in 0..5 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([engine, dir.to_str().unwrap(), "crash-writer"])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(700 + 150 * round));
        child.kill().unwrap();
        child.wait().unwrap();
        let started = Instant::now();
        let store = Store::open(engine, dir);
        reopen_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        let offset = store.offset().unwrap_or(0);
        assert!(
            offset >= last,
            "round {round}: offset went back from {last} to {offset}"
        );
        if offset > 0 {
            let marker = store
                .get(&batch_marker(offset))
                .expect("the committed batch's marker");
            assert_eq!(marker, offset.to_be_bytes());
        }
        assert!(
            store.get(&batch_marker(offset + 1)).is_none(),
            "round {round}: part of an uncommitted batch"
        );
        last = offset;
    }
    let worst = reopen_ms.iter().cloned().fold(0.0, f64::max);
    format!("\"crash_rounds\":5,\"crash_consistent\":true,\"crash_last_offset\":{last},\"crash_worst_reopen_ms\":{worst:.1}")
}

fn batch_marker(batch: u64) -> Vec<u8> {
    let mut k = b"\0batch-".to_vec();
    k.extend_from_slice(&batch.to_be_bytes());
    k
}

/// Commits batches forever, each with its marker key, until killed.
fn crash_writer(engine: &str, dir: &Path) {
    let mut store = Store::open(engine, dir);
    let mut batch = store.offset().unwrap_or(0);
    let mut keys = Keys(0xDEAD_BEEF_u64 ^ batch.wrapping_add(1));
    loop {
        batch += 1;
        let mut updates: Vec<(Vec<u8>, Vec<u8>)> = batch_of(&mut keys, 2_000, batch)
            .into_iter()
            .map(|(k, v)| (k.to_vec(), v))
            .collect();
        updates.push((batch_marker(batch), batch.to_be_bytes().to_vec()));
        store.commit(&updates, batch);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (engine, dir) = match args.as_slice() {
        [_, engine, dir, ..] => (engine.as_str(), Path::new(dir)),
        _ => {
            eprintln!("usage: store-compare <fjall|redb> <dir> [crash-writer]");
            std::process::exit(2)
        }
    };
    match args.get(3).map(String::as_str) {
        Some("crash-writer") => crash_writer(engine, dir),
        _ => measure(engine, dir),
    }
}
