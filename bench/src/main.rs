//! `millrace-bench`: Millrace side by side with Kafka Streams and a raw
//! rdkafka pipe, on the same broker and input, in one run. See bench/README.md.

mod charts;
mod drain;
mod harness;
mod heap;
mod jvm;
mod kafka;
mod operator_scale;
mod pipe;
mod process;
mod query;
mod routing;
mod routing_report;
mod scale_out;
mod state;
mod state_report;

use clap::{Parser, Subcommand};
use harness::{Setup, PARTITIONS};

#[derive(Parser)]
#[command(about = "Benchmark Millrace against Kafka Streams and the raw limit")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    /// Kafka Streams' heap (`-Xmx`, e.g. 512m); `none` leaves the JVM's
    /// default. The default is the heap the sweep found (`heap`).
    #[arg(long, global = true, default_value = jvm::SIZED_HEAP)]
    kstreams_heap: String,
    /// A Kafka Streams setting put over the harness's own (repeatable):
    /// `key=value`, e.g. `producer.batch.size=65536`.
    #[arg(long = "kstreams-setting", global = true, value_parser = setting)]
    kstreams_settings: Vec<(String, String)>,
}

fn setting(arg: &str) -> Result<(String, String), String> {
    arg.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{arg}` is not key=value"))
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the routing comparison and print (and save) the report.
    Run {
        #[arg(long, env = "KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
        bootstrap: String,
        #[command(flatten)]
        args: routing::Args,
    },
    /// Sweep Kafka Streams' heap: the smallest -Xmx within 5 % of the
    /// unbounded JVM's throughput (bench/README.md).
    Heap {
        #[arg(long, env = "KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
        bootstrap: String,
        #[command(flatten)]
        args: heap::Args,
    },
    /// The stateful benchmark: a running count per key, Millrace and
    /// Kafka Streams side by side, with throughput and recovery after
    /// SIGKILL and after a lost state directory (bench/README.md).
    State {
        #[arg(long, env = "KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
        bootstrap: String,
        #[command(flatten)]
        args: state::Args,
    },
    /// The query benchmark: query latency and rate against one worker
    /// while it drains a backlog, and what serving them costs it
    /// (bench/README.md).
    Query {
        #[arg(long, env = "KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
        bootstrap: String,
        #[command(flatten)]
        args: query::Args,
    },
    /// The operator at scale: many StreamApps on the test bed's API server
    /// (bench/README.md; needs the stack and the chart: `make bench-operator`).
    Operator {
        #[arg(long, env = "KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
        bootstrap: String,
        #[command(flatten)]
        args: operator_scale::Args,
    },
    /// Scale-out of a stateful app from one worker to four while input
    /// flows, Millrace on the test bed beside Kafka Streams adding
    /// instances (bench/README.md; needs the stack and the chart: `make
    /// bench-scale`).
    Scale {
        #[arg(long, env = "KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
        bootstrap: String,
        #[command(flatten)]
        args: scale_out::Args,
    },
    /// Create `topic` (16 partitions) and fill it with the benchmark's
    /// orders, for profiling one contender by hand (bench/README.md).
    Fill {
        #[arg(long, env = "KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
        bootstrap: String,
        #[arg(long)]
        topic: String,
        #[arg(long, default_value_t = 1_000_000)]
        records: u64,
    },
    /// The raw-limit contender (started by `run`).
    Pipe {
        #[arg(long)]
        bootstrap: String,
        #[arg(long)]
        input: String,
        /// Outputs are `<prefix>-large`, `-eu`, `-other`, `-dlq`.
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        group: String,
        #[arg(long)]
        transactional: bool,
        /// Threads, each owning every n-th partition.
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let kstreams = jvm::KafkaStreams {
        heap: (cli.kstreams_heap != "none").then_some(cli.kstreams_heap),
        settings: cli.kstreams_settings,
    };
    let setup = |bootstrap: String| -> anyhow::Result<Setup> {
        Ok(Setup::new(bootstrap)?.with_kstreams(kstreams.clone()))
    };
    match cli.command {
        Cmd::Pipe {
            bootstrap,
            input,
            prefix,
            group,
            transactional,
            threads,
        } => pipe::run(
            &pipe::Pipe {
                bootstrap: &bootstrap,
                input: &input,
                prefix: &prefix,
                group: &group,
                transactional,
            },
            threads,
        ),
        Cmd::Run { bootstrap, args } => {
            routing::run(&setup(bootstrap)?.with_partitions(args.partitions), &args)
        }
        Cmd::Heap { bootstrap, args } => heap::run(&setup(bootstrap)?, &args),
        Cmd::Operator { bootstrap, args } => operator_scale::run(&setup(bootstrap)?, &args),
        Cmd::Scale { bootstrap, args } => scale_out::run(&setup(bootstrap)?, &args),
        Cmd::State { bootstrap, args } => state::run(&setup(bootstrap)?, &args),
        Cmd::Query { bootstrap, args } => query::run(&setup(bootstrap)?, &args),
        Cmd::Fill {
            bootstrap,
            topic,
            records,
        } => {
            kafka::create_topics(&bootstrap, std::slice::from_ref(&topic), PARTITIONS)?;
            kafka::fill(&bootstrap, &topic, records, None)
        }
    }
}
