//! The relay benchmark: a command that prints numbers beside their physical floor, measured
//! in the same run, on the same machine. Not a timed test: it asserts nothing about speed.
//!
//! It starts the integration-test fixtures (a throwaway PostgreSQL 15 cluster, a tansu
//! broker, an HTTP receiver), runs the real `dispatchbox` binary against them, and measures:
//!
//! 1. **Drain.** N events are queued (in K-row transactions) while nothing consumes them;
//!    two slots exist, so `pg_recvlogical` (the floor) and then the relay read the very same
//!    WAL. Floor: process start → last event received. Relay: process start → every row's
//!    status written. Once per sink (Kafka, stdout).
//! 2. **Steady rates.** For each rate, each consumer gets a fresh database and the same
//!    load (single-row transactions by default, many aggregates), one at a time: nothing (the
//!    inserts-only baseline, for WAL), `pg_recvlogical` (the floor), the classic polling
//!    worker (`poller.rs`), and the relay. Measured over the window from the first insert to
//!    the last row settled: the consumer's own PostgreSQL CPU (walsender + backends, by pid,
//!    from `/proc`), the relay process's CPU, WAL written (total and by the consumer's own
//!    statements, from `pg_stat_statements`), and delivery latency (commit returned → event
//!    received by the consumer). At the latency rate the relay also runs with the webhook
//!    and stdout sinks, and its commit → broker ack histogram is read from `/metrics`.
//!
//! Run it with `scripts/bench` (arguments: `--help`). Without `--bench` among its arguments,
//! which is how `cargo test --all-targets` runs bench targets, it prints a note and exits 0
//! so the test suite never runs it. Must not: assert on timings (the numbers are for people
//! to read), or touch anything but the clusters and processes it starts itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../tests/support/mod.rs"]
mod support;

mod arrivals;
mod cpu;
mod drain;
mod floor;
mod load;
mod poller;
mod report;
mod steady;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;

use cpu::{learn_owners, Owners, ServerCpu, ServerSampler};
use floor::Target;
use load::AGGREGATE_TYPES;
use poller::Commit;
use support::kafka::TestBroker;
use support::postgres::{eventually, ClusterOptions, TestCluster};
use support::relay::{base_env, migrate, RelayProcess};
use support::webhook::Receiver;

/// The role every consumer (relay, pg_recvlogical, poller) connects as, so its backends and
/// statements can be told apart from the application's.
const CONSUMER_ROLE: &str = "consumer";
const CONSUMER_PASSWORD: &str = "consumer-bench-pw";
/// Partitions per topic.
pub const PARTITIONS: i32 = 3;
/// How often completion is checked.
pub const POLL: Duration = Duration::from_millis(20);

/// Benchmarks `dispatchbox run` beside `pg_recvlogical` and a polling worker.
#[derive(Debug, Parser)]
#[command(name = "bench relay")]
pub struct Args {
    /// Phases to run: drain, steady (comma-separated).
    #[arg(long, default_value = "drain,steady", value_delimiter = ',')]
    phases: Vec<String>,
    /// Events queued for each drain.
    #[arg(long, default_value_t = 200_000)]
    drain_events: u32,
    /// Rows per transaction while queueing the drain's events.
    #[arg(long, default_value_t = 1_000)]
    drain_tx_rows: u32,
    /// Sinks the relay drains with (kafka, stdout, webhook).
    #[arg(long, default_value = "kafka,stdout", value_delimiter = ',')]
    drain_sinks: Vec<String>,
    /// Distinct aggregate ids in the drain's events.
    #[arg(long, default_value_t = 1_000)]
    drain_aggregates: u32,
    /// Steady rates (events/s) at which the database cost is measured.
    #[arg(long, default_value = "100,500,2000", value_delimiter = ',')]
    rates: Vec<u32>,
    /// The rate at which latency is compared across sinks (also measured for cost).
    #[arg(long, default_value_t = 1_000)]
    latency_rate: u32,
    /// Length of each steady run's load, in seconds.
    #[arg(long, default_value_t = 20)]
    seconds: u32,
    /// Rows per transaction in the steady runs.
    #[arg(long, default_value_t = 1)]
    tx_rows: u32,
    /// Distinct aggregate ids in the steady runs.
    #[arg(long, default_value_t = 100)]
    aggregates: u32,
    /// Consumers of the steady runs: baseline (inserts only), floor (pg_recvlogical),
    /// polling (one transaction per round), polling-per-event (a commit per event, as the
    /// Python Dispatchbox worker does), relay (Kafka sink).
    #[arg(
        long,
        default_value = "baseline,floor,polling,polling-per-event,relay",
        value_delimiter = ','
    )]
    consumers: Vec<String>,
    /// Extra relay environment as KEY=VALUE, e.g. DISPATCHBOX_MAX_IN_FLIGHT=5000; repeatable.
    #[arg(long = "relay-env", value_name = "KEY=VALUE", value_parser = key_value)]
    relay_env: Vec<(String, String)>,
    /// Repetitions of every measurement, interleaved (floor, relay, floor, relay, …); the
    /// summary shows the median and the spread.
    #[arg(long, default_value_t = 1)]
    repeat: u32,
    /// Print where the consumers' database time goes (top statements of each run).
    #[arg(long)]
    statements: bool,
    /// Passed by `cargo bench`; without it the bench does nothing.
    #[arg(long, hide = true)]
    bench: bool,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("benches/relay: skipped (not run with --bench); run scripts/bench");
        return;
    }
    let args = Args::parse();
    assert!(
        args.drain_events > 0 && args.seconds > 0 && args.tx_rows > 0 && args.latency_rate > 0,
        "--drain-events, --seconds, --tx-rows and --latency-rate must be positive"
    );
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(run(args));
}

/// A sink the relay runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkKind {
    Kafka,
    Stdout,
    Webhook,
}

impl SinkKind {
    fn parse(s: &str) -> Self {
        match s {
            "kafka" => Self::Kafka,
            "stdout" => Self::Stdout,
            "webhook" => Self::Webhook,
            other => panic!("unknown sink {other:?} (kafka, stdout, webhook)"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Kafka => "kafka",
            Self::Stdout => "stdout",
            Self::Webhook => "webhook",
        }
    }
}

/// Who consumes the outbox in a steady run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumerKind {
    /// Nobody: the inserts-only baseline.
    Baseline,
    /// `pg_recvlogical`.
    Floor,
    /// The polling worker.
    Polling(Commit),
    /// The relay with a sink.
    Relay(SinkKind),
}

impl ConsumerKind {
    pub fn label(self) -> String {
        match self {
            Self::Baseline => "inserts only".into(),
            Self::Floor => "pg_recvlogical".into(),
            Self::Polling(Commit::PerRound) => "polling".into(),
            Self::Polling(Commit::PerEvent) => "polling (c/ev)".into(),
            Self::Relay(sink) => format!("relay ({})", sink.name()),
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Self::Baseline => "base",
            Self::Floor => "floor",
            Self::Polling(Commit::PerRound) => "poll",
            Self::Polling(Commit::PerEvent) => "pollc",
            Self::Relay(SinkKind::Kafka) => "kafka",
            Self::Relay(SinkKind::Stdout) => "stdout",
            Self::Relay(SinkKind::Webhook) => "webhook",
        }
    }
}

/// What `pg_stat_statements` shows for one consumer in one database.
#[derive(Debug, Default, Clone)]
pub struct Statements {
    pub calls: i64,
    pub exec_ms: f64,
    pub wal_bytes: i64,
    /// The heaviest statements: (query, calls, total ms, rows, WAL bytes).
    pub top: Vec<(String, i64, f64, i64, i64)>,
}

/// One steady run.
#[derive(Debug)]
pub struct SteadyRun {
    /// Which repetition (1-based).
    pub round: u32,
    pub rate: u32,
    pub consumer: ConsumerKind,
    pub achieved_rate: f64,
    pub events: usize,
    pub window: Duration,
    pub server: ServerCpu,
    /// The relay process's CPU seconds in the window.
    pub relay_cpu: Option<f64>,
    pub wal_bytes: i64,
    pub statements: Statements,
    /// Commit returned → received by the consumer, ms, sorted.
    pub latency_ms: Vec<f64>,
    pub missing: usize,
    pub duplicates: usize,
    /// Commit → broker ack as the relay's histogram shows it: (upper bound in ms of the
    /// bucket holding p50, p99).
    pub commit_to_ack: Option<(f64, f64)>,
    pub peak_rss_kib: Option<u64>,
}

/// One drain, floor and relay.
#[derive(Debug)]
pub struct Drain {
    /// Which repetition (1-based).
    pub round: u32,
    pub sink: SinkKind,
    pub events: u32,
    pub queue_rate: f64,
    pub floor_seconds: f64,
    pub floor_server: ServerCpu,
    pub relay_seconds: f64,
    pub relay_server: ServerCpu,
    pub relay_cpu: f64,
    /// CPU seconds of the broker and of this benchmark process while the relay drained.
    pub broker_cpu: f64,
    pub bench_cpu: f64,
    pub peak_rss_kib: u64,
    pub statements: Statements,
}

/// The fixtures shared by every run.
struct Bench {
    args: Args,
    cluster: TestCluster,
    /// Restarted (empty) before every run with the Kafka sink: tansu keeps everything in
    /// memory and slows down as it fills over a long benchmark.
    broker: tokio::sync::Mutex<TestBroker>,
    /// `host:port` of the broker (the same across restarts).
    bootstrap: String,
    receiver: Receiver,
    postmaster: u32,
    monitor: tokio_postgres::Client,
}

async fn run(args: Args) {
    // synchronous_commit = on: with the test clusters' `off`, WAL reaches the walsender only
    // when the WAL writer flushes (every 200 ms), which would dominate latency.
    // full_page_writes = on counts WAL as production writes it; checkpoints happen only
    // between runs (CHECKPOINT before each), never inside a measured window. fsync stays
    // off: the bench measures the relay, not this machine's disk.
    let cluster = TestCluster::start_with(ClusterOptions {
        conf: vec![
            "synchronous_commit = on".to_owned(),
            "full_page_writes = on".to_owned(),
            "checkpoint_timeout = '1h'".to_owned(),
            "max_wal_size = '20GB'".to_owned(),
            "max_slot_wal_keep_size = '-1'".to_owned(),
            "shared_preload_libraries = 'pg_stat_statements'".to_owned(),
            "pg_stat_statements.max = 1000".to_owned(),
        ],
        ..ClusterOptions::default()
    });
    let broker = TestBroker::start();
    let monitor = cluster.connect("postgres").await;
    monitor
        .batch_execute(&format!(
            "CREATE EXTENSION pg_stat_statements;
             CREATE ROLE {CONSUMER_ROLE} LOGIN SUPERUSER REPLICATION PASSWORD '{CONSUMER_PASSWORD}';"
        ))
        .await
        .expect("set up the consumer role and pg_stat_statements");
    let postmaster = cpu::postmaster_pid(&cluster.dir.join("data"));
    let bench = Bench {
        receiver: start_receiver(),
        args,
        cluster,
        bootstrap: broker.bootstrap(),
        broker: tokio::sync::Mutex::new(broker),
        postmaster,
        monitor,
    };

    let phases = &bench.args.phases;
    let repeat = bench.args.repeat.max(1);
    let mut drains = Vec::new();
    let mut runs = Vec::new();
    for round in 1..=repeat {
        if phases.iter().any(|p| p == "drain") {
            for sink in &bench.args.drain_sinks {
                let sink = SinkKind::parse(sink);
                println!(
                    "==> [{round}/{repeat}] drain: {} events, {} per transaction, relay with {}",
                    bench.args.drain_events,
                    bench.args.drain_tx_rows,
                    sink.name()
                );
                let mut drain = bench.drain(sink).await;
                drain.round = round;
                println!(
                    "    floor {:.0}/s, relay {:.0}/s",
                    f64::from(drain.events) / drain.floor_seconds,
                    f64::from(drain.events) / drain.relay_seconds
                );
                drains.push(drain);
            }
        }
        if phases.iter().any(|p| p == "steady") {
            for rate in bench.rates() {
                for consumer in bench.consumers(rate) {
                    println!(
                        "==> [{round}/{repeat}] {rate} events/s: {}",
                        consumer.label()
                    );
                    let mut run = bench.steady(rate, consumer).await;
                    run.round = round;
                    println!(
                        "    {} events in {:.1} s; consumer's server CPU {:.0} µs/event",
                        run.events,
                        run.window.as_secs_f64(),
                        run.server.consumer() * 1e6 / run.events as f64
                    );
                    runs.push(run);
                }
            }
        }
    }
    report::print(&bench.args, &drains, &runs, &tansu_version());
}

/// The webhook receiver on its own runtime and thread, so neither the load nor the
/// benchmark's bookkeeping delays its arrival timestamps.
fn start_receiver() -> Receiver {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            tx.send(Receiver::start().await).unwrap();
            std::future::pending::<()>().await;
        });
    });
    rx.recv().expect("webhook receiver started")
}

impl Bench {
    /// The steady rates, the latency rate among them, in increasing order.
    fn rates(&self) -> Vec<u32> {
        let mut rates = self.args.rates.clone();
        if !rates.contains(&self.args.latency_rate) {
            rates.push(self.args.latency_rate);
        }
        rates.sort_unstable();
        rates.dedup();
        rates
    }

    /// The consumers of the steady runs at `rate` (at the latency rate, the relay with
    /// every sink).
    fn consumers(&self, rate: u32) -> Vec<ConsumerKind> {
        let mut consumers: Vec<ConsumerKind> = self
            .args
            .consumers
            .iter()
            .map(|c| match c.as_str() {
                "baseline" => ConsumerKind::Baseline,
                "floor" => ConsumerKind::Floor,
                "polling" => ConsumerKind::Polling(Commit::PerRound),
                "polling-per-event" => ConsumerKind::Polling(Commit::PerEvent),
                "relay" => ConsumerKind::Relay(SinkKind::Kafka),
                other => panic!("unknown consumer {other:?}"),
            })
            .collect();
        if rate == self.args.latency_rate {
            consumers.push(ConsumerKind::Relay(SinkKind::Webhook));
            consumers.push(ConsumerKind::Relay(SinkKind::Stdout));
        }
        consumers
    }

    /// The relay's environment for `db` with `sink`: the test defaults minus their short
    /// status and heartbeat intervals (the relay's defaults apply), as the consumer role,
    /// plus the caller's overrides.
    fn relay_env(&self, db: &str, sink: SinkKind) -> Vec<(String, String)> {
        let mut env = base_env(&self.cluster, db);
        env.retain(|(k, _)| {
            !matches!(
                k.as_str(),
                "DISPATCHBOX_SINKS"
                    | "DISPATCHBOX_STATUS_INTERVAL"
                    | "DISPATCHBOX_HEARTBEAT_INTERVAL"
                    | "DISPATCHBOX_DATABASE_URL"
            )
        });
        env.push((
            "DISPATCHBOX_DATABASE_URL".into(),
            self.cluster.url(CONSUMER_ROLE, CONSUMER_PASSWORD, db),
        ));
        env.push(("DISPATCHBOX_SINKS".into(), sink.name().into()));
        match sink {
            SinkKind::Kafka => {
                env.push(("DISPATCHBOX_KAFKA_BROKERS".into(), self.bootstrap.clone()));
                env.push(("DISPATCHBOX_KAFKA_DELIVERY_TIMEOUT".into(), "60s".into()));
            }
            SinkKind::Webhook => {
                env.push(("DISPATCHBOX_WEBHOOK_URL".into(), self.receiver.url()));
                env.push(("DISPATCHBOX_WEBHOOK_ALLOW_PRIVATE".into(), "true".into()));
            }
            SinkKind::Stdout => {}
        }
        for (key, value) in &self.args.relay_env {
            env.retain(|(k, _)| k != key);
            env.push((key.clone(), value.clone()));
        }
        env
    }

    fn target(&self, db: &str, slot: &str) -> Target {
        Target {
            port: self.cluster.port,
            user: CONSUMER_ROLE.into(),
            password: CONSUMER_PASSWORD.into(),
            database: db.into(),
            slot: slot.into(),
            publication: format!("pub_{db}"),
        }
    }

    /// A fresh migrated database and an application connection to it.
    async fn database(
        &self,
        prefix: &str,
        sink: SinkKind,
    ) -> (String, Vec<(String, String)>, tokio_postgres::Client) {
        if sink == SinkKind::Kafka {
            self.fresh_broker().await;
        }
        let db = self.cluster.create_database(prefix).await;
        let env = self.relay_env(&db, sink);
        migrate(&env);
        let app = self.cluster.connect(&db).await;
        // A new database's catalogs have never been vacuumed or analyzed: do it now, so
        // autovacuum does not do it inside a measured window.
        app.batch_execute("VACUUM (ANALYZE)")
            .await
            .expect("vacuum the new database");
        (db, env, app)
    }

    async fn broker_cpu(&self) -> f64 {
        self.broker
            .lock()
            .await
            .pid()
            .and_then(cpu::process_tree_seconds)
            .unwrap_or_default()
    }

    /// An empty broker with the outbox topics.
    async fn fresh_broker(&self) {
        let mut broker = self.broker.lock().await;
        broker.stop();
        broker.restart();
        for t in AGGREGATE_TYPES {
            broker
                .create_topic(&format!("outbox.{t}"), PARTITIONS)
                .await;
        }
    }

    async fn checkpoint(&self) {
        self.monitor
            .batch_execute("CHECKPOINT")
            .await
            .expect("checkpoint");
    }

    async fn wal_position(&self) -> i64 {
        self.monitor
            .query_one("SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint", &[])
            .await
            .expect("read the WAL position")
            .get(0)
    }

    /// Starts watching the server's processes (and forgets the consumer's statements in
    /// `db` so far, e.g. the migrations); stop with [`Window::finish`].
    async fn window(&self, db: &str) -> Window {
        self.monitor
            .execute(
                "SELECT pg_stat_statements_reset(r.oid, d.oid, 0)
                   FROM pg_roles r, pg_database d WHERE r.rolname = $1 AND d.datname = $2",
                &[&CONSUMER_ROLE, &db],
            )
            .await
            .expect("reset pg_stat_statements");
        let owners = Arc::new(Mutex::new(Owners::default()));
        learn_owners(&self.monitor, CONSUMER_ROLE, &owners).await;
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = tokio::spawn({
            let (owners, stop) = (owners.clone(), stop.clone());
            let monitor = self.cluster.connect("postgres").await;
            async move {
                while !stop.load(Ordering::Relaxed) {
                    learn_owners(&monitor, CONSUMER_ROLE, &owners).await;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        });
        Window {
            owners,
            stop,
            watcher,
            sampler: ServerSampler::start(self.postmaster),
            wal_start: self.wal_position().await,
            started: Instant::now(),
        }
    }

    /// What the consumer role's statements cost in `db`.
    async fn statements(&self, db: &str) -> Statements {
        let filter = "FROM pg_stat_statements s
                        JOIN pg_roles r ON r.oid = s.userid
                        JOIN pg_database d ON d.oid = s.dbid
                       WHERE r.rolname = $1 AND d.datname = $2";
        let total = self
            .monitor
            .query_one(
                &format!(
                    "SELECT coalesce(sum(calls), 0)::bigint,
                            coalesce(sum(total_exec_time + total_plan_time), 0)::float8,
                            coalesce(sum(wal_bytes), 0)::bigint {filter}"
                ),
                &[&CONSUMER_ROLE, &db],
            )
            .await
            .expect("read pg_stat_statements");
        let top = self
            .monitor
            .query(
                &format!(
                    "SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 90), calls,
                            (total_exec_time + total_plan_time)::float8, rows, wal_bytes::bigint
                       {filter} ORDER BY total_exec_time + total_plan_time DESC LIMIT 6"
                ),
                &[&CONSUMER_ROLE, &db],
            )
            .await
            .expect("read pg_stat_statements")
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
            .collect();
        Statements {
            calls: total.get(0),
            exec_ms: total.get(1),
            wal_bytes: total.get(2),
            top,
        }
    }

    async fn drop_slot(&self, db: &str, slot: &str) {
        let client = self.cluster.connect(db).await;
        eventually(
            Duration::from_secs(30),
            "the slot to be released",
            || async {
                client
                    .query(
                        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                          WHERE slot_name = $1 AND NOT active",
                        &[&slot],
                    )
                    .await
                    .ok()
                    .filter(|rows| !rows.is_empty())
            },
        )
        .await;
    }
}

/// A measured window: the server's processes are sampled and attributed to owners from its
/// start until [`Window::finish`].
struct Window {
    owners: Arc<Mutex<Owners>>,
    stop: Arc<AtomicBool>,
    watcher: tokio::task::JoinHandle<()>,
    sampler: ServerSampler,
    wal_start: i64,
    started: Instant,
}

impl Window {
    /// Stops sampling; returns the server CPU by owner and the WAL bytes written.
    async fn finish(self, bench: &Bench) -> (ServerCpu, i64) {
        learn_owners(&bench.monitor, CONSUMER_ROLE, &self.owners).await;
        let wal = bench.wal_position().await - self.wal_start;
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.watcher.await;
        let per_pid = self.sampler.stop();
        let owners = self.owners.lock().unwrap().clone();
        (ServerCpu::split(&per_pid, &owners), wal)
    }
}

/// True while any row is `pending`, `retry` or `processing` (one probe of the partial due
/// index, cheap even with a large table).
async fn outstanding(app: &tokio_postgres::Client) -> bool {
    app.query_one(
        "SELECT EXISTS (SELECT 1 FROM public.outbox_event
                         WHERE status IN ('pending', 'retry', 'processing'))",
        &[],
    )
    .await
    .expect("check outstanding rows")
    .get(0)
}

async fn done_rows(app: &tokio_postgres::Client) -> i64 {
    app.query_one(
        "SELECT count(*) FROM public.outbox_event WHERE status = 'done'",
        &[],
    )
    .await
    .expect("count done rows")
    .get(0)
}

fn stop_relay(relay: &mut RelayProcess) {
    relay.terminate();
    if relay.wait_exit(Duration::from_secs(60)).is_none() {
        relay.kill9();
    }
}

fn tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn tansu_version() -> String {
    std::process::Command::new(support::kafka::find_tansu())
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "tansu".to_owned(), |s| s.trim().to_owned())
}
