//! The chaos suite: every fault at once, against real processes, judged by the outbox table.
//!
//! Two relays share one database (one streams, one stands by); a steady load of
//! multi-event transactions over a few hundred aggregates runs for a while; meanwhile the
//! streaming relay is SIGKILLed again and again (the standby takes over, and a new relay
//! takes the place of the killed one), PostgreSQL is restarted in immediate mode, the sink
//! is unreachable for a while (the webhook receiver stops listening; in the Kafka variant
//! the broker is frozen with SIGSTOP), and the webhook receiver answers 503 to a share of
//! requests throughout. At the end the table is the ground truth:
//!
//! - **lost**: rows never delivered (no 2xx answer; no record in the topic);
//! - **duplicates**: deliveries beyond the first, as a share of the events;
//! - **order violations**: per aggregate, a first delivery of an event after the first
//!   delivery of a later event of the same aggregate;
//! - **unsettled**: rows not `done` at the end;
//! - **peak RSS** of every relay process.
//!
//! Goal (issue 10): 0 lost, 0 order violations, every row done, duplicates ≤ 0.5 %.
//!
//! Run by `scripts/chaos` (the full scenario; `--help` for the options) and, as a short
//! scenario, by `cargo test` (this target has no libtest harness: it is this `main`).

#![allow(clippy::unwrap_used)]

#[path = "../support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use rand::{Rng, SeedableRng};
use support::postgres::TestCluster;
use support::relay::{base_env, http_get, migrate, set_env, wait_streaming, RelayProcess};

const USAGE: &str = "\
scripts/chaos [options]: every fault at once against real processes; prints one verdict line.

  --seconds N            length of the insert load (default 300; short: 30)
  --kills N              SIGKILLs of the streaming relay (default 10; short: 3)
  --pg-restarts N        PostgreSQL restarts in immediate mode (default 2; short: 1)
  --outage N             seconds the sink is unreachable (default 30; short: 5)
  --fail-share X         share of webhook requests answered 503 (default 0.3)
  --rate N               transactions per second (default 20)
  --events N             events per transaction (default 5)
  --aggregates N         distinct aggregates (default 300)
  --seed N               seed of the load and the receiver's failures (default 1)
  --kafka                deliver to a tansu broker instead of a webhook receiver
  --short                the short scenario (what `cargo test` runs)
Exit code 0 when the goal is met: 0 lost, 0 order violations, all done, duplicates <= 0.5 %
(<= 2 % in the short scenario, whose kills come four times as often).";

#[derive(Debug, Clone)]
struct Options {
    seconds: u64,
    kills: u32,
    pg_restarts: u32,
    outage: u64,
    fail_share: f64,
    rate: u32,
    events: u32,
    aggregates: u32,
    seed: u64,
    kafka: bool,
    /// The most duplicates allowed, as a share of the events.
    duplicate_limit: f64,
}

impl Options {
    fn full() -> Self {
        Self {
            seconds: 300,
            kills: 10,
            pg_restarts: 2,
            outage: 30,
            fail_share: 0.3,
            rate: 20,
            events: 5,
            aggregates: 300,
            seed: 1,
            kafka: false,
            duplicate_limit: 0.005,
        }
    }

    fn short() -> Self {
        Self {
            seconds: 30,
            kills: 3,
            pg_restarts: 1,
            outage: 5,
            // Three kills in 30 s are a kill every 7.5 s: each duplicates the events
            // delivered and not yet written (about rate × linger), so the share is about
            // four times the full scenario's. CI checks the invariants (nothing lost, no
            // order violation, everything settled) and a loose bound on duplicates.
            duplicate_limit: 0.02,
            ..Self::full()
        }
    }

    /// `--full` (what `scripts/chaos` passes) starts from the full scenario, anything else
    /// from the short one; libtest's own arguments (`--test-threads=3` …) are ignored.
    fn parse(args: &[String]) -> Result<Self, String> {
        let mut options =
            if args.iter().any(|a| a == "--full") && !args.iter().any(|a| a == "--short") {
                Self::full()
            } else {
                Self::short()
            };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut value = |name: &str| -> Result<String, String> {
                args.next()
                    .cloned()
                    .ok_or_else(|| format!("{name} needs a value"))
            };
            let number = |name: &str, text: String| -> Result<u64, String> {
                text.parse()
                    .map_err(|_| format!("{name}: {text:?} is not a whole number"))
            };
            match arg.as_str() {
                "--seconds" => options.seconds = number(arg, value(arg)?)?.max(5),
                "--kills" => options.kills = number(arg, value(arg)?)? as u32,
                "--pg-restarts" => options.pg_restarts = number(arg, value(arg)?)? as u32,
                "--outage" => options.outage = number(arg, value(arg)?)?,
                "--rate" => options.rate = (number(arg, value(arg)?)? as u32).max(1),
                "--events" => options.events = (number(arg, value(arg)?)? as u32).max(1),
                "--aggregates" => options.aggregates = (number(arg, value(arg)?)? as u32).max(1),
                "--seed" => options.seed = number(arg, value(arg)?)?,
                "--fail-share" => {
                    let text = value(arg)?;
                    options.fail_share = text
                        .parse::<f64>()
                        .ok()
                        .filter(|x| (0.0..1.0).contains(x))
                        .ok_or_else(|| format!("--fail-share: {text:?} is not in [0, 1)"))?;
                }
                "--kafka" => options.kafka = true,
                "--full" | "--short" => {}
                "--help" | "-h" => return Err(String::new()),
                // libtest's arguments when run by `cargo test`.
                other if other.starts_with("--test-threads") || other == "--nocapture" => {}
                other if other.starts_with('-') => return Err(format!("unknown option {other}")),
                _ => {}
            }
        }
        Ok(options)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match Options::parse(&args) {
        Ok(options) => options,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("chaos: {message}");
            }
            eprintln!("{USAGE}");
            std::process::exit(if message.is_empty() { 0 } else { 2 });
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let verdict = runtime.block_on(run(options));
    println!("{}", verdict.line());
    std::process::exit(if verdict.passed() { 0 } else { 1 });
}

/// What the run found.
#[derive(Debug, Default)]
struct Verdict {
    sink: &'static str,
    events: usize,
    lost: usize,
    duplicates: usize,
    order_violations: usize,
    unsettled: usize,
    peak_rss_kib: u64,
    kills: u32,
    pg_restarts: u32,
    outage: u64,
    seconds: f64,
    duplicate_limit: f64,
}

impl Verdict {
    fn duplicate_share(&self) -> f64 {
        self.duplicates as f64 / self.events.max(1) as f64
    }

    fn passed(&self) -> bool {
        self.events > 0
            && self.lost == 0
            && self.order_violations == 0
            && self.unsettled == 0
            && self.duplicate_share() <= self.duplicate_limit
    }

    fn line(&self) -> String {
        format!(
            "chaos {}: {} sink={} events={} lost={} duplicates={} ({:.2}%, limit {:.1}%) \
             order_violations={} unsettled={} peak_rss={}MiB kills={} pg_restarts={} \
             outage={}s in {:.0}s",
            if self.passed() { "PASS" } else { "FAIL" },
            if self.passed() {
                "goal met"
            } else {
                "goal missed"
            },
            self.sink,
            self.events,
            self.lost,
            self.duplicates,
            self.duplicate_share() * 100.0,
            self.duplicate_limit * 100.0,
            self.order_violations,
            self.unsettled,
            self.peak_rss_kib / 1024,
            self.kills,
            self.pg_restarts,
            self.outage,
            self.seconds,
        )
    }
}

/// One successful delivery as the sink saw it.
#[derive(Debug, Clone)]
struct Delivery {
    id: i64,
    aggregate_id: String,
    /// Milliseconds since the receiver started (webhook only).
    at_ms: u128,
    /// Answers given to this event before, in order (webhook only).
    attempt: usize,
}

async fn run(options: Options) -> Verdict {
    let started = Instant::now();
    let cluster = TestCluster::start();
    let db = cluster.create_database("chaos").await;
    let mut env = base_env(&cluster, &db);
    set_env(&mut env, "DISPATCHBOX_SWEEP_INTERVAL", "500ms");
    set_env(&mut env, "DISPATCHBOX_SWEEP_GRACE", "20s");
    set_env(&mut env, "DISPATCHBOX_SWEEP_LEASE", "10s");
    set_env(&mut env, "DISPATCHBOX_BACKOFF_BASE", "200ms");
    set_env(&mut env, "DISPATCHBOX_BACKOFF_MAX", "3s");
    set_env(&mut env, "DISPATCHBOX_MAX_ATTEMPTS", "1000");
    if let Ok(linger) = std::env::var("CHAOS_LINGER") {
        set_env(&mut env, "DISPATCHBOX_STATUS_LINGER", &linger);
    }

    let mut sink = if options.kafka {
        SinkUnderTest::kafka(&mut env).await
    } else {
        SinkUnderTest::webhook(&mut env, options.fail_share, options.seed).await
    };
    migrate(&env);

    let client = cluster.connect(&db).await;
    let mut relays = vec![RelayProcess::start(&env)];
    wait_streaming(&client).await;
    relays.push(RelayProcess::start(&env));
    let peak_rss = Arc::new(AtomicU64::new(0));

    // The load runs on its own task and survives database restarts.
    let stop_load = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(insert_load(
        cluster.connect_url(&db),
        options.clone(),
        stop_load.clone(),
    ));

    // The faults, spread over the load.
    let window = Duration::from_secs(options.seconds);
    let mut faults: Vec<(Duration, Fault)> = Vec::new();
    for i in 0..options.kills {
        faults.push((window * (i + 1) / (options.kills + 1), Fault::KillLeader));
    }
    for i in 0..options.pg_restarts {
        faults.push((
            window * (2 * i + 1) / (2 * options.pg_restarts + 1) + Duration::from_millis(700),
            Fault::RestartPostgres,
        ));
    }
    if options.outage > 0 {
        faults.push((window * 2 / 5, Fault::SinkDown));
        faults.push((
            window * 2 / 5 + Duration::from_secs(options.outage),
            Fault::SinkUp,
        ));
    }
    faults.sort_by_key(|(at, _)| *at);
    let load_started = Instant::now();
    for (at, fault) in faults {
        if let Some(wait) = at.checked_sub(load_started.elapsed()) {
            sample_rss(&relays, &peak_rss);
            tokio::time::sleep(wait).await;
        }
        match fault {
            Fault::KillLeader => {
                let leader = leader_index(&relays).await;
                sample_rss(&relays, &peak_rss);
                relays[leader].kill9();
                relays.remove(leader);
                relays.push(RelayProcess::start(&env));
            }
            Fault::RestartPostgres => cluster.restart_immediate(),
            Fault::SinkDown => sink.down().await,
            Fault::SinkUp => sink.up().await,
        }
    }
    if let Some(rest) = window.checked_sub(load_started.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    stop_load.store(true, Ordering::SeqCst);
    let _ = load.await;

    // Settle: every row done (or give up after a while and report what is left).
    let client = cluster.connect(&db).await;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        sample_rss(&relays, &peak_rss);
        let open: i64 = client
            .query_one(
                "SELECT count(*) FROM outbox_event WHERE status <> 'done'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if open == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Let the last acknowledged deliveries reach the sink's record.
    tokio::time::sleep(Duration::from_secs(1)).await;
    sample_rss(&relays, &peak_rss);

    let rows: Vec<(i64, String, String)> = client
        .query(
            "SELECT id, aggregate_id, status FROM outbox_event ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let deliveries = sink.deliveries().await;
    let mut verdict = judge(&rows, &deliveries);
    verdict.duplicate_limit = options.duplicate_limit;
    verdict.sink = if options.kafka { "kafka" } else { "webhook" };
    verdict.peak_rss_kib = peak_rss.load(Ordering::SeqCst);
    verdict.kills = options.kills;
    verdict.pg_restarts = options.pg_restarts;
    verdict.outage = options.outage;
    verdict.seconds = started.elapsed().as_secs_f64();
    if !verdict.passed() {
        for relay in &relays {
            let log = relay.stderr();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            eprintln!(
                "relay log tail:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
    verdict
}

/// Counts what the outbox table says against what the sink received.
fn judge(rows: &[(i64, String, String)], deliveries: &[Delivery]) -> Verdict {
    let mut count: HashMap<i64, usize> = HashMap::new();
    // Per aggregate, ids in the order of their first delivery.
    let mut first_order: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for delivery in deliveries {
        let n = count.entry(delivery.id).or_insert(0);
        *n += 1;
        if *n == 1 {
            first_order
                .entry(delivery.aggregate_id.as_str())
                .or_default()
                .push(delivery.id);
        }
    }
    let mut verdict = Verdict {
        events: rows.len(),
        ..Verdict::default()
    };
    for (id, _, status) in rows {
        match count.get(id) {
            None | Some(0) => verdict.lost += 1,
            Some(n) => verdict.duplicates += n - 1,
        }
        if status != "done" {
            verdict.unsettled += 1;
        }
    }
    for (aggregate, ids) in &first_order {
        let mut highest = i64::MIN;
        for &id in ids {
            if id < highest {
                verdict.order_violations += 1;
                let all: Vec<(i64, u128, usize)> = deliveries
                    .iter()
                    .filter(|d| d.aggregate_id == *aggregate)
                    .map(|d| (d.id, d.at_ms, d.attempt))
                    .collect();
                eprintln!(
                    "order violation in aggregate {aggregate}: {id} first delivered after \
                     {highest}; its deliveries in order (id, ms, request number): {all:?}"
                );
            }
            highest = highest.max(id);
        }
    }
    verdict
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    KillLeader,
    RestartPostgres,
    SinkDown,
    SinkUp,
}

/// The relay that holds the slot (`dispatchbox_leader 1`); the first one when none says
/// so within 10 s (e.g. both are reconnecting after a database restart).
async fn leader_index(relays: &[RelayProcess]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        for (i, relay) in relays.iter().enumerate() {
            let Ok((_, body)) = http_get(&relay.admin_url(), "/metrics").await else {
                continue;
            };
            if body.lines().any(|l| l == "dispatchbox_leader 1") {
                return i;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    0
}

fn sample_rss(relays: &[RelayProcess], peak: &AtomicU64) {
    for relay in relays {
        let status = std::fs::read_to_string(format!("/proc/{}/status", relay.pid()));
        let hwm = status.ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        });
        if let Some(kib) = hwm {
            peak.fetch_max(kib, Ordering::SeqCst);
        }
    }
}

/// Inserts `options.rate` transactions per second of `options.events` events each, over
/// `options.aggregates` aggregates, until `stop`; reconnects when the database restarts (a
/// transaction that failed is simply not in the table, which is the ground truth).
async fn insert_load(url: String, options: Options, stop: Arc<AtomicBool>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(options.seed);
    let period = Duration::from_secs_f64(1.0 / f64::from(options.rate));
    let mut client: Option<tokio_postgres::Client> = None;
    let mut next = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                Ok((c, connection)) => {
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                    Some(c)
                }
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
        }
        let aggregates: Vec<String> = (0..options.events)
            .map(|_| format!("agg-{}", rng.gen_range(0..options.aggregates)))
            .collect();
        if let Some(c) = &client {
            let _ = c
                .execute(
                    "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload)
                     SELECT 'order', a, 'order.changed', jsonb_build_object('n', n)
                       FROM unnest($1::text[]) WITH ORDINALITY AS u(a, n)",
                    &[&aggregates],
                )
                .await;
        }
        next += period;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        } else {
            next = Instant::now();
        }
    }
}

/// The sink the relays deliver to, and what it received.
enum SinkUnderTest {
    Webhook(WebhookReceiver),
    Kafka(support::kafka::TestBroker),
}

impl SinkUnderTest {
    async fn webhook(env: &mut Vec<(String, String)>, fail_share: f64, seed: u64) -> Self {
        let receiver = WebhookReceiver::start(fail_share, seed).await;
        set_env(env, "DISPATCHBOX_SINKS", "webhook");
        set_env(env, "DISPATCHBOX_WEBHOOK_URL", &receiver.url());
        // The receiver is on loopback: turn the SSRF guard off.
        set_env(env, "DISPATCHBOX_WEBHOOK_ALLOW_PRIVATE", "true");
        set_env(env, "DISPATCHBOX_WEBHOOK_TIMEOUT", "2s");
        Self::Webhook(receiver)
    }

    async fn kafka(env: &mut Vec<(String, String)>) -> Self {
        let broker = support::kafka::TestBroker::start();
        broker.create_topic("outbox.order", 3).await;
        set_env(env, "DISPATCHBOX_SINKS", "kafka");
        set_env(env, "DISPATCHBOX_KAFKA_BROKERS", &broker.bootstrap());
        // Longer than the outage: tansu fences a producer whose messages timed out.
        set_env(env, "DISPATCHBOX_KAFKA_DELIVERY_TIMEOUT", "90s");
        set_env(env, "DISPATCHBOX_SWEEP_LEASE", "3m");
        Self::Kafka(broker)
    }

    async fn down(&mut self) {
        match self {
            Self::Webhook(receiver) => receiver.down(),
            Self::Kafka(broker) => signal(broker.pid(), "-STOP"),
        }
    }

    async fn up(&mut self) {
        match self {
            Self::Webhook(receiver) => receiver.up().await,
            Self::Kafka(broker) => signal(broker.pid(), "-CONT"),
        }
    }

    async fn deliveries(&self) -> Vec<Delivery> {
        match self {
            Self::Webhook(receiver) => receiver.deliveries(),
            Self::Kafka(broker) => broker
                .read_to_end("outbox.order")
                .await
                .iter()
                .filter_map(|record| {
                    Some(Delivery {
                        id: record.header("id")?.parse().ok()?,
                        aggregate_id: record.key_str().to_owned(),
                        at_ms: 0,
                        attempt: 0,
                    })
                })
                .collect(),
        }
    }
}

fn signal(pid: Option<u32>, signal: &str) {
    if let Some(pid) = pid {
        let _ = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status();
    }
}

/// A webhook receiver that answers 503 to a seeded share of requests, records the ones it
/// answered 2xx, and can stop listening (connections refused) and come back on its port.
struct WebhookReceiver {
    addr: SocketAddr,
    state: Arc<ReceiverState>,
    server: Option<tokio::task::JoinHandle<()>>,
}

struct ReceiverState {
    fail_share: f64,
    rng: Mutex<rand::rngs::StdRng>,
    delivered: Mutex<Vec<Delivery>>,
    started: Instant,
    /// Requests per event id so far (answered 503 or 2xx).
    requests: Mutex<HashMap<i64, usize>>,
}

impl WebhookReceiver {
    async fn start(fail_share: f64, seed: u64) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ReceiverState {
            fail_share,
            rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed)),
            delivered: Mutex::new(Vec::new()),
            started: Instant::now(),
            requests: Mutex::new(HashMap::new()),
        });
        let mut receiver = Self {
            addr,
            state,
            server: None,
        };
        receiver.serve(listener);
        receiver
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(self.state.clone());
        self.server = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }));
    }

    /// Stops listening and drops every open connection.
    fn down(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }

    async fn up(&mut self) {
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        self.serve(listener);
    }

    fn deliveries(&self) -> Vec<Delivery> {
        self.state.delivered.lock().unwrap().clone()
    }
}

async fn receive(State(state): State<Arc<ReceiverState>>, body: Bytes) -> StatusCode {
    let Ok(event) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let (Some(id), Some(aggregate_id)) = (event["id"].as_i64(), event["aggregate_id"].as_str())
    else {
        return StatusCode::BAD_REQUEST;
    };
    let attempt = {
        let mut requests = state.requests.lock().unwrap();
        let n = requests.entry(id).or_insert(0);
        *n += 1;
        *n
    };
    if state.rng.lock().unwrap().gen_bool(state.fail_share) {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    state.delivered.lock().unwrap().push(Delivery {
        id,
        aggregate_id: aggregate_id.to_owned(),
        at_ms: state.started.elapsed().as_millis(),
        attempt,
    });
    StatusCode::OK
}
