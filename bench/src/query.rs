//! The query benchmark (bench/README.md): one release worker counting per
//! key (the state benchmark's running count) drains a backlog at full
//! speed, in rounds with and without a closed-loop query load on its query
//! API; reported: the queries' latency (p50, p99, p99.9) and rate while it
//! processes, and what serving them costs the processing (throughput with
//! queries ÷ without). The query clients run on the same two cores: their
//! CPU is part of the cost.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::{self, median, Setup, PARTITIONS};
use crate::state::{App, Contender, Workload};
use crate::{kafka, process};

#[derive(clap::Args)]
pub struct Args {
    /// Input records per round.
    #[arg(long, default_value_t = 2_000_000)]
    pub records: u64,
    /// Distinct keys among them (queried uniformly at random).
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// Query clients, each with one keep-alive connection, asking in a
    /// closed loop.
    #[arg(long, default_value_t = 2)]
    pub clients: usize,
    /// Rounds of each kind (quiet, queried), alternating which goes first.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    #[arg(long, default_value = "bench/results")]
    pub results: PathBuf,
}

/// What the clients saw in one queried round.
#[derive(Default)]
struct Load {
    latencies_us: Vec<u64>,
    found: u64,
    not_found: u64,
    /// 503s while the worker started (tasks not yet restored).
    starting: u64,
    other: u64,
    seconds: f64,
}

/// One client: a keep-alive connection, GETs in a closed loop until
/// `stop`, each timed from write to the body's end.
fn client(port: u16, keys: u64, seed: u64, stop: Arc<AtomicBool>) -> Load {
    let mut load = Load::default();
    let mut rng = seed | 1;
    let mut first: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut writer = stream;
        while !stop.load(Ordering::Relaxed) {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let path = format!("/v1/stores/totals/keys/k-{}", rng % keys);
            let started = Instant::now();
            let Some(status) = exchange(&mut writer, &mut reader, &path) else {
                break;
            };
            // Until its tasks are restored the worker answers 503: the
            // queries timed are those answered.
            let took = started.elapsed().as_micros() as u64;
            match status {
                200 => load.found += 1,
                404 => load.not_found += 1,
                503 => {
                    load.starting += 1;
                    continue;
                }
                _ => load.other += 1,
            }
            load.latencies_us.push(took);
            first.get_or_insert(started);
        }
    }
    load.seconds = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
    load
}

/// One HTTP/1.1 request and its response on a kept-alive connection: the
/// status (`None`: the connection is gone).
fn exchange(writer: &mut TcpStream, reader: &mut BufReader<TcpStream>, path: &str) -> Option<u16> {
    write!(writer, "GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").ok()?;
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let status = line.split_whitespace().nth(1)?.parse().ok()?;
    let mut length = 0usize;
    loop {
        line.clear();
        reader.read_line(&mut line).ok()?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(status)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

pub fn run(setup: &Setup, args: &Args) -> anyhow::Result<()> {
    let input = format!("{}-query-input", setup.run_id);
    kafka::create_topics(&setup.bootstrap, std::slice::from_ref(&input), PARTITIONS)?;
    kafka::fill_keyed(&setup.bootstrap, &input, 0..args.records, args.keys)?;
    eprintln!(
        "filled {input}: {} records, {} keys",
        args.records, args.keys
    );
    let (mut quiet, mut queried) = (Vec::new(), Vec::new());
    let mut load = Load::default();
    for round in 0..args.rounds {
        let mut order = [false, true];
        if round % 2 == 1 {
            order.reverse();
        }
        for with_queries in order {
            let label = format!("q{round}{}", u8::from(with_queries));
            let app = App::new(
                setup,
                (Contender::Millrace, Workload::Running),
                &label,
                &input,
            )?;
            let stop = Arc::new(AtomicBool::new(false));
            let clients: Vec<_> = (0..if with_queries { args.clients } else { 0 })
                .map(|i| {
                    let (stop, port, keys) = (stop.clone(), app.query_port, args.keys);
                    std::thread::spawn(move || client(port, keys, 0x9e37_79b9 + i as u64, stop))
                })
                .collect();
            let run = app.run_to_end(setup);
            stop.store(true, Ordering::Relaxed);
            let loads: Vec<Load> = clients
                .into_iter()
                .map(|c| c.join().expect("client"))
                .collect();
            let (child, usage) = run?;
            process::stop(child);
            app.check_output(setup, args.records)?;
            app.clean_up(setup)?;
            let rate = args.records as f64 / usage.seconds;
            let asked: usize = loads.iter().map(|l| l.latencies_us.len()).sum();
            eprintln!(
                "round {} {:>12}: {:>6.1} s {:>9.0} records/s {:>6.1} CPU s {:>5.0} MB, {asked} queries",
                round + 1,
                if with_queries { "with queries" } else { "quiet" },
                usage.seconds,
                rate,
                usage.cpu_seconds,
                usage.peak_rss_mb
            );
            if with_queries {
                queried.push(rate);
                for l in loads {
                    load.latencies_us.extend(l.latencies_us);
                    (load.found, load.not_found, load.other) = (
                        load.found + l.found,
                        load.not_found + l.not_found,
                        load.other + l.other,
                    );
                    load.seconds += l.seconds / args.clients as f64;
                }
            } else {
                quiet.push(rate);
            }
        }
    }
    harness::clean_up(setup, std::slice::from_ref(&input))?;
    anyhow::ensure!(
        load.other == 0,
        "{} queries answered neither 200 nor 404",
        load.other
    );
    let report = report(setup, args, (median(quiet), median(queried)), &mut load);
    println!("{report}");
    std::fs::create_dir_all(&args.results)?;
    let file = args.results.join(format!("{}-query.md", setup.run_id));
    std::fs::write(&file, &report)?;
    eprintln!("written to {}", file.display());
    Ok(())
}

fn report(setup: &Setup, args: &Args, (quiet, queried): (f64, f64), load: &mut Load) -> String {
    load.latencies_us.sort_unstable();
    let asked = load.latencies_us.len() as f64;
    let per_second = asked / (load.seconds * args.rounds as f64).max(1e-9);
    format!(
        "# Query benchmark ({run})\n\n{machine}\n\n\
         Command: `cargo run --release -p millrace-bench -- query --records {records} --keys {keys} --clients {clients} --rounds {rounds}`\n\n\
         One release `millrace-runtime run` worker (exactly-once, commit interval 100 ms, one loop per core, \
         {partitions} tasks) drains {records} records keyed by {keys} keys into a running count and sum per key \
         (the state benchmark's `totals` step), in {rounds} rounds without queries and {rounds} with {clients} \
         closed-loop clients asking `GET /v1/stores/totals/keys/k-<random>` on one keep-alive connection each \
         (answered by the worker itself: it holds every task). The worker processes at full speed throughout, \
         well above half its capacity; the clients share the machine's cores with it and the broker. \
         Every round's output is counted (exactly one update per record) before it is timed.\n\n\
         | | value |\n|---|---|\n\
         | processing, no queries (median) | {quiet:.0} records/s |\n\
         | processing, with queries (median) | {queried:.0} records/s |\n\
         | cost of serving queries | {cost:.1} % of throughput |\n\
         | queries answered | {asked:.0} ({found} found, {missing} not yet counted: 404; besides, {starting} retryable 503s while the worker started) |\n\
         | query rate | {per_second:.0} /s |\n\
         | latency p50 | {p50:.3} ms |\n\
         | latency p99 | {p99:.3} ms |\n\
         | latency p99.9 | {p999:.3} ms |\n",
        run = setup.run_id,
        machine = harness::machine_line(setup),
        records = args.records,
        keys = args.keys,
        clients = args.clients,
        rounds = args.rounds,
        partitions = PARTITIONS,
        cost = (1.0 - queried / quiet) * 100.0,
        found = load.found,
        missing = load.not_found,
        starting = load.starting,
        p50 = percentile(&load.latencies_us, 0.50),
        p99 = percentile(&load.latencies_us, 0.99),
        p999 = percentile(&load.latencies_us, 0.999),
    )
}
