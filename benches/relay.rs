//! The relay benchmark: a command that prints numbers, not a timed test. It starts the
//! integration-test fixtures (a throwaway PostgreSQL 15 cluster, a tansu broker), runs the
//! real `dispatchbox` binary against them and measures two things:
//!
//! 1. **Throughput.** N events are queued while the relay is down (its slot exists); the
//!    clock runs from starting the relay process until every row is `done`.
//! 2. **Latency.** With the relay caught up, transactions are committed at a fixed rate; a
//!    Kafka consumer on its own thread timestamps each message as it arrives, keyed by its
//!    `id` header, and the bench reports receive − commit. That is an upper bound of
//!    commit → broker ack (it adds the consumer's fetch wait), never a lower one.
//!
//! Run it with `scripts/bench` (arguments: `--help`). Without `--bench` among its arguments,
//! which is how `cargo test --all-targets` runs bench targets, it prints a note and exits 0
//! so the test suite never runs it. Must not: assert on timings (the numbers are for people
//! to read), or touch anything but the clusters and processes it starts itself.
#![allow(clippy::unwrap_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use clap::Parser;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use support::kafka::{find_tansu, TestBroker};
use support::postgres::{eventually, ClusterOptions, TestCluster};
use support::relay::{base_env, migrate, start_streaming, wait_streaming, RelayProcess};

const TABLE: &str = "public.outbox_event";
const AGGREGATE_TYPES: [&str; 3] = ["order", "invoice", "customer"];
const PARTITIONS: i32 = 3;
/// Rows per transaction while queueing the throughput phase's events.
const QUEUE_BATCH: u32 = 5_000;
/// How often the throughput phase counts `done` rows.
const POLL: Duration = Duration::from_millis(50);

/// Inserts `$2` events numbered from `$1`: three aggregate types, ~200-byte JSON payloads
/// and a W3C `traceparent` header, as an application would write them.
const INSERT_EVENTS: &str = "
    INSERT INTO public.outbox_event (aggregate_type, aggregate_id, event_type, payload, headers)
    SELECT (ARRAY['order','invoice','customer'])[1 + g % 3],
           'agg-' || (g % 997),
           (ARRAY['created','updated','shipped'])[1 + (g / 3) % 3],
           jsonb_build_object(
               'sequence', g,
               'customer_id', 'cus_' || lpad((g % 9973)::text, 8, '0'),
               'amount_cents', (g * 7919) % 100000,
               'currency', 'EUR',
               'items', jsonb_build_array(
                   jsonb_build_object('sku', 'SKU-' || (g % 512), 'quantity', 1 + g % 5)),
               'note', 'benchmark event padded to a realistic size'),
           jsonb_build_object('traceparent',
               '00-' || md5(g::text) || '-' || left(md5((g + 1)::text), 16) || '-01')
    FROM generate_series($1::bigint, $1::bigint + $2::int - 1) g
    RETURNING id";

/// Benchmarks `dispatchbox run` with the Kafka sink against a local PostgreSQL and tansu.
#[derive(Debug, Parser)]
#[command(name = "bench relay")]
struct Args {
    /// Events queued for the throughput phase.
    #[arg(long, default_value_t = 100_000)]
    events: u32,
    /// Events per second committed during the latency phase.
    #[arg(long, default_value_t = 2_000)]
    rate: u32,
    /// Length of the latency phase, in seconds.
    #[arg(long, default_value_t = 20)]
    seconds: u32,
    /// Rows per transaction during the latency phase.
    #[arg(long, default_value_t = 10)]
    tx_rows: u32,
    /// Extra relay environment as KEY=VALUE, e.g. DISPATCHBOX_MAX_IN_FLIGHT=5000 or
    /// DISPATCHBOX_KAFKA_PROPERTY_LINGER_MS=1; repeatable.
    #[arg(long = "relay-env", value_name = "KEY=VALUE", value_parser = key_value)]
    relay_env: Vec<(String, String)>,
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
        println!("benches/relay.rs: skipped (not run with --bench); run scripts/bench");
        return;
    }
    let args = Args::parse();
    assert!(
        args.events > 0 && args.rate > 0 && args.seconds > 0 && args.tx_rows > 0,
        "--events, --rate, --seconds and --tx-rows must be positive"
    );
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(run(args));
}

/// Everything the summary prints.
#[derive(Debug)]
struct Report {
    payload_bytes: f64,
    queue_seconds: f64,
    throughput: Throughput,
    latency: Latency,
    relay_exit: String,
}

#[derive(Debug)]
struct Throughput {
    events: u32,
    seconds: f64,
    first_done_seconds: f64,
    cpu_seconds: Option<f64>,
    peak_rss_kib: u64,
}

#[derive(Debug)]
struct Latency {
    target_rate: u32,
    achieved_rate: f64,
    seconds: u32,
    tx_rows: u32,
    events: usize,
    missing: usize,
    duplicates: usize,
    /// commit → consumer receive, ms, sorted.
    receive_ms: Vec<f64>,
    /// created_at → delivered_at (p50, p99), ms, from SQL.
    status_p50_ms: f64,
    status_p99_ms: f64,
    peak_rss_kib: u64,
}

async fn run(args: Args) {
    // synchronous_commit = on: with the test clusters' `off`, WAL reaches the walsender only
    // when the WAL writer flushes (every 200 ms), which would dominate the latency phase.
    // fsync stays off: the bench measures the relay, not this machine's disk.
    let cluster = TestCluster::start_with(ClusterOptions {
        conf: vec!["synchronous_commit = on".to_owned()],
        ..ClusterOptions::default()
    });
    let broker = TestBroker::start();
    for t in AGGREGATE_TYPES {
        broker
            .create_topic(&format!("outbox.{t}"), PARTITIONS)
            .await;
    }
    let db = cluster.create_database("bench").await;
    let env = relay_env(&cluster, &db, &broker, &args.relay_env);
    migrate(&env);
    let client = cluster.connect(&db).await;

    println!("==> creating the slot (start the relay until it streams, then SIGTERM)");
    let mut relay = start_streaming(&client, &env).await;
    relay.terminate();
    let status = relay.wait_exit(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "the relay did not stop cleanly on SIGTERM ({status:?}); log:\n{}",
        relay.stderr()
    );
    wait_slot_inactive(&client).await;

    println!(
        "==> queueing {} events while the relay is down",
        args.events
    );
    let started = Instant::now();
    let mut next = 1_i64;
    let mut left = args.events;
    while left > 0 {
        let n = left.min(QUEUE_BATCH);
        insert(&client, next, n).await;
        next += i64::from(n);
        left -= n;
    }
    let queue_seconds = started.elapsed().as_secs_f64();
    client
        .batch_execute("ANALYZE public.outbox_event")
        .await
        .unwrap();
    let payload_bytes: f64 = client
        .query_one(
            "SELECT avg(octet_length(payload::text))::float8 FROM public.outbox_event",
            &[],
        )
        .await
        .unwrap()
        .get(0);

    println!("==> phase 1: throughput (relay start → every row done)");
    let (mut relay, throughput) = throughput(&client, &env, args.events).await;
    println!(
        "    {} events in {:.2} s: {:.0} events/s",
        throughput.events,
        throughput.seconds,
        f64::from(throughput.events) / throughput.seconds
    );

    println!(
        "==> phase 2: latency ({} events/s for {} s, {} rows per transaction)",
        args.rate, args.seconds, args.tx_rows
    );
    let latency = latency(&client, &broker, &relay, &args, i64::from(args.events)).await;

    relay.terminate();
    let relay_exit = match relay.wait_exit(Duration::from_secs(60)) {
        Some(status) => status.to_string(),
        None => "still running 60 s after SIGTERM".to_owned(),
    };
    print_summary(
        &args,
        &Report {
            payload_bytes,
            queue_seconds,
            throughput,
            latency,
            relay_exit,
        },
    );
}

/// The test environment with the Kafka sink, minus the tests' short status and heartbeat
/// intervals (the relay's defaults apply), plus the caller's overrides.
fn relay_env(
    cluster: &TestCluster,
    db: &str,
    broker: &TestBroker,
    overrides: &[(String, String)],
) -> Vec<(String, String)> {
    let mut env = base_env(cluster, db);
    env.retain(|(k, _)| {
        !matches!(
            k.as_str(),
            "DISPATCHBOX_SINKS" | "DISPATCHBOX_STATUS_INTERVAL" | "DISPATCHBOX_HEARTBEAT_INTERVAL"
        )
    });
    env.push(("DISPATCHBOX_SINKS".into(), "kafka".into()));
    env.push(("DISPATCHBOX_KAFKA_BROKERS".into(), broker.bootstrap()));
    env.push(("DISPATCHBOX_KAFKA_DELIVERY_TIMEOUT".into(), "60s".into()));
    for (key, value) in overrides {
        env.retain(|(k, _)| k != key);
        env.push((key.clone(), value.clone()));
    }
    env
}

/// Inserts `count` events numbered from `first` in one transaction; returns their ids.
async fn insert(client: &tokio_postgres::Client, first: i64, count: u32) -> Vec<i64> {
    client
        .query(INSERT_EVENTS, &[&first, &(count as i32)])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn count_done(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one(
            &format!("SELECT count(*) FROM {TABLE} WHERE status = 'done'"),
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// The stopped relay's walsender can linger a moment; a relay started before it is gone
/// would spend its first seconds retrying, inside the measured window.
async fn wait_slot_inactive(client: &tokio_postgres::Client) {
    eventually(
        Duration::from_secs(30),
        "the stopped relay's slot to be released",
        || async {
            let active: i64 = client
                .query_one(
                    "SELECT count(*) FROM pg_replication_slots WHERE active",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            (active == 0).then_some(())
        },
    )
    .await;
}

/// Starts the relay and polls until all `events` rows are `done`.
async fn throughput(
    client: &tokio_postgres::Client,
    env: &[(String, String)],
    events: u32,
) -> (RelayProcess, Throughput) {
    let started = Instant::now();
    let mut relay = RelayProcess::start(env);
    let deadline = started + Duration::from_secs(120.max(u64::from(events) / 200));
    let mut first_done = None;
    let mut poll = tokio::time::interval(POLL);
    loop {
        poll.tick().await;
        let done = count_done(client).await;
        if done > 0 && first_done.is_none() {
            first_done = Some(started.elapsed());
        }
        if done >= i64::from(events) {
            break;
        }
        if !relay.is_running() || Instant::now() > deadline {
            panic!(
                "{done} of {events} rows done after {:.1} s (relay running: {}); relay log tail:\n{}",
                started.elapsed().as_secs_f64(),
                relay.is_running(),
                tail(&relay.stderr(), 30)
            );
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let result = Throughput {
        events,
        seconds,
        first_done_seconds: first_done.unwrap_or_default().as_secs_f64(),
        cpu_seconds: cpu_seconds(relay.pid()),
        peak_rss_kib: relay.peak_rss_kib(),
    };
    (relay, result)
}

/// Commits transactions at the target rate while a consumer thread timestamps arrivals.
async fn latency(
    client: &tokio_postgres::Client,
    broker: &TestBroker,
    relay: &RelayProcess,
    args: &Args,
    last_queued_id: i64,
) -> Latency {
    wait_streaming(client).await;
    let (stop, arrivals, consumer) = spawn_consumer(&broker.bootstrap(), last_queued_id);

    let transactions = (u64::from(args.rate) * u64::from(args.seconds))
        .div_ceil(u64::from(args.tx_rows))
        .max(1);
    let period = Duration::from_secs_f64(f64::from(args.tx_rows) / f64::from(args.rate));
    let mut tick = tokio::time::interval(period);
    let mut committed: HashMap<i64, Instant> = HashMap::new();
    let mut next = last_queued_id + 1; // numbers the payloads, not the ids
    let started = Instant::now();
    for _ in 0..transactions {
        tick.tick().await;
        let ids = insert(client, next, args.tx_rows).await;
        let at = Instant::now();
        next += i64::from(args.tx_rows);
        committed.extend(ids.into_iter().map(|id| (id, at)));
    }
    let insert_seconds = started.elapsed().as_secs_f64();

    // Collect arrivals until every committed id was seen (or give up after 60 s).
    let mut received: HashMap<i64, Instant> = HashMap::new();
    let mut duplicates = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while committed.keys().any(|id| !received.contains_key(id)) && Instant::now() < deadline {
        duplicates += record(&mut received, arrivals.try_iter());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let _ = consumer.join();
    duplicates += record(&mut received, arrivals.try_iter());

    let mut receive_ms: Vec<f64> = committed
        .iter()
        .filter_map(|(id, commit)| {
            received
                .get(id)
                .map(|r| r.saturating_duration_since(*commit).as_secs_f64() * 1000.0)
        })
        .collect();
    receive_ms.sort_by(f64::total_cmp);
    let missing = committed.len() - receive_ms.len();

    let total = last_queued_id + committed.len() as i64;
    eventually(
        Duration::from_secs(60),
        "every latency-phase row to be done",
        || async { (count_done(client).await >= total).then_some(()) },
    )
    .await;
    let row = client
        .query_one(
            &format!(
                "SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP
                        (ORDER BY extract(epoch FROM delivered_at - created_at)::float8 * 1000)
                 FROM {TABLE} WHERE id > $1"
            ),
            &[&last_queued_id],
        )
        .await
        .unwrap();
    let status: Vec<f64> = row.get(0);

    Latency {
        target_rate: args.rate,
        achieved_rate: committed.len() as f64 / insert_seconds,
        seconds: args.seconds,
        tx_rows: args.tx_rows,
        events: committed.len(),
        missing,
        duplicates,
        receive_ms,
        status_p50_ms: status[0],
        status_p99_ms: status[1],
        peak_rss_kib: relay.peak_rss_kib(),
    }
}

/// Keeps the first arrival of each id; returns how many were repeats.
fn record(
    received: &mut HashMap<i64, Instant>,
    arrivals: impl Iterator<Item = (i64, Instant)>,
) -> usize {
    let mut repeats = 0;
    for (id, at) in arrivals {
        match received.entry(id) {
            Entry::Occupied(_) => repeats += 1,
            Entry::Vacant(slot) => {
                slot.insert(at);
            }
        }
    }
    repeats
}

/// A consumer on its own OS thread (so the inserter's runtime never delays a timestamp),
/// assigned every partition of every topic from its current high watermark. tansu's
/// watermarks can lag behind acknowledged writes, so ids of the throughput phase
/// (`<= skip_through`) may still arrive and are dropped.
fn spawn_consumer(
    bootstrap: &str,
    skip_through: i64,
) -> (
    Arc<AtomicBool>,
    mpsc::Receiver<(i64, Instant)>,
    std::thread::JoinHandle<()>,
) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "dispatchbox-bench")
        .set("enable.auto.commit", "false")
        .set("allow.auto.create.topics", "false")
        .set("fetch.wait.max.ms", "5")
        .set("fetch.min.bytes", "1")
        .create()
        .expect("create bench consumer");
    let mut assignment = TopicPartitionList::new();
    for t in AGGREGATE_TYPES {
        let topic = format!("outbox.{t}");
        for partition in 0..PARTITIONS {
            let offset = consumer
                .fetch_watermarks(&topic, partition, Duration::from_secs(5))
                .map_or(Offset::Beginning, |(_, high)| Offset::Offset(high));
            assignment
                .add_partition_offset(&topic, partition, offset)
                .unwrap();
        }
    }
    consumer.assign(&assignment).expect("assign partitions");

    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let stopped = stop.clone();
    let handle = std::thread::spawn(move || {
        while !stopped.load(Ordering::Relaxed) {
            let Some(result) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let at = Instant::now();
            let message = result.expect("consume");
            let id = message.headers().and_then(|headers| {
                headers
                    .iter()
                    .find(|h| h.key == "id")
                    .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse::<i64>().ok())
            });
            if let Some(id) = id.filter(|&id| id > skip_through) {
                let _ = tx.send((id, at));
            }
        }
    });
    (stop, rx, handle)
}

/// user + system CPU seconds of a process so far, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    format!("{cpus} CPUs ({model})")
}

fn tansu_version() -> String {
    Command::new(find_tansu())
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "tansu".to_owned(), |s| s.trim().to_owned())
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn print_summary(args: &Args, r: &Report) {
    let t = &r.throughput;
    let l = &r.latency;
    let overrides = if args.relay_env.is_empty() {
        "none".to_owned()
    } else {
        args.relay_env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let rule = "=".repeat(78);
    println!();
    println!("{rule}");
    println!("dispatchbox relay benchmark");
    println!("{rule}");
    println!("machine      {}", machine());
    println!(
        "setup        PostgreSQL 15 (fsync=off, synchronous_commit=on), {} (in memory),",
        tansu_version()
    );
    println!(
        "             {} topics x {PARTITIONS} partitions, relay and bench on the same machine",
        AGGREGATE_TYPES.len()
    );
    println!(
        "relay        release build, defaults but DISPATCHBOX_KAFKA_DELIVERY_TIMEOUT=60s; \
         overrides: {overrides}"
    );
    println!(
        "events       {:.0} B JSON payload + traceparent header; queued at {:.0} rows/s",
        r.payload_bytes,
        f64::from(t.events) / r.queue_seconds
    );
    println!();
    println!(
        "THROUGHPUT   {} events queued while the relay was down",
        t.events
    );
    println!(
        "  rate                 {:>10.0} events/s  (process start → every row done)",
        f64::from(t.events) / t.seconds
    );
    println!("  total                {:>10.2} s", t.seconds);
    println!(
        "  first row done after {:>10.2} s  ({:.0} events/s from then on)",
        t.first_done_seconds,
        f64::from(t.events) / (t.seconds - t.first_done_seconds).max(f64::EPSILON)
    );
    if let Some(cpu) = t.cpu_seconds {
        println!(
            "  relay CPU            {cpu:>10.2} s  ({:.2} cores on average)",
            cpu / t.seconds
        );
    }
    println!(
        "  relay peak RSS       {:>10}  (VmHWM)",
        mib(t.peak_rss_kib)
    );
    println!();
    println!(
        "LATENCY      {} events/s target ({:.0} achieved) for {} s, {} rows per transaction",
        l.target_rate, l.achieved_rate, l.seconds, l.tx_rows
    );
    println!(
        "  commit → consumer receive (upper bound of commit → broker ack), {} events:",
        l.events - l.missing
    );
    println!(
        "    p50 {:>8.1} ms   p90 {:>8.1} ms   p99 {:>8.1} ms   max {:>8.1} ms",
        percentile(&l.receive_ms, 0.50),
        percentile(&l.receive_ms, 0.90),
        percentile(&l.receive_ms, 0.99),
        percentile(&l.receive_ms, 1.0)
    );
    println!("  created_at → status written (delivered_at, from the rows):");
    println!(
        "    p50 {:>8.1} ms   p99 {:>8.1} ms",
        l.status_p50_ms, l.status_p99_ms
    );
    println!(
        "  not received {}   received twice {}",
        l.missing, l.duplicates
    );
    println!(
        "  relay peak RSS       {:>10}  (VmHWM, whole run)",
        mib(l.peak_rss_kib)
    );
    println!();
    println!("relay exit   {} after SIGTERM", r.relay_exit);
    println!("{rule}");
}
