//! Prometheus metrics: the one place that names, types and labels every metric the relay
//! exports, and one small function per event that updates them. Call sites say what
//! happened (`metrics::delivery(sink, outcome, duration)`); they never touch a metric object.
//!
//! Naming follows Prometheus conventions: prefix `dispatchbox_`, base units (seconds,
//! bytes), `_total` for counters. Label values come from small closed sets (sink, outcome,
//! reason, status); the one exception, `event_type` on dead events, is user data that is
//! bounded in practice and capped here at [`MAX_EVENT_TYPE_LABELS`] distinct values.
//!
//! This module never logs and never blocks; it holds no relay state besides the metrics.

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::event::ClaimReason;

/// Content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Distinct `event_type` label values kept on `dispatchbox_dead_events_total`; further
/// types are counted under [`OTHER_EVENT_TYPE`], so a flood of odd event types cannot blow
/// up the series count.
pub const MAX_EVENT_TYPE_LABELS: usize = 200;
/// The `event_type` label for dead events past [`MAX_EVENT_TYPE_LABELS`].
pub const OTHER_EVENT_TYPE: &str = "_other";
/// The `event_type` label for rows that could not be read as an event at all.
pub const UNKNOWN_EVENT_TYPE: &str = "_unknown";
/// Longest `event_type` label value (longer ones are cut at a character boundary).
const MAX_EVENT_TYPE_LABEL_BYTES: usize = 100;

/// Every `wal_status` label value of `dispatchbox_slot_wal_status`: PostgreSQL's values,
/// `unknown` for a null or new value, and `missing` when the slot does not exist.
pub const WAL_STATUSES: [&str; 6] = [
    "reserved",
    "extended",
    "unreserved",
    "lost",
    "unknown",
    "missing",
];

/// Every `reason` label value of `dispatchbox_slot_recreations_total`: `missing` (no slot
/// of that name: created) and `lost` (invalidated: dropped and created again).
pub const SLOT_RECREATION_REASONS: [&str; 2] = ["missing", "lost"];

/// Every `status` label value of `dispatchbox_outbox_backlog_events`: the statuses of a row
/// not settled yet.
pub const BACKLOG_STATUSES: [&str; 3] = ["pending", "retry", "processing"];

/// What one delivery attempt to one sink came to (label `outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The sink accepted the event.
    Done,
    /// The attempt failed and the event will be tried again.
    Retry,
    /// The attempt failed for good (permanent error or last attempt).
    Dead,
}

impl DeliveryOutcome {
    /// `done`, `retry` or `dead`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Retry => "retry",
            Self::Dead => "dead",
        }
    }
}

/// Seconds: from a millisecond (stdout) to the Kafka delivery timeout's range.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Seconds from commit to ack: fine below 100 ms, where a healthy relay lives (the
/// benchmark reads its p99 from these buckets), and reaching minutes for replication lag.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
];
/// Rows per status UPDATE (at most `DISPATCHBOX_STATUS_BATCH_SIZE`, 1000 by default).
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 10000.0,
];
/// Attempts (at most `DISPATCHBOX_MAX_ATTEMPTS`, 5 by default, 1000 at most).
const ATTEMPT_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0, 1000.0];

/// The series of one sink, resolved once: looking a series up by its label values hashes
/// them and takes a lock, which adds up at tens of thousands of events per second.
struct SinkSeries {
    name: &'static str,
    /// `delivery_attempts_total{outcome=done|retry|dead}`, in [`DeliveryOutcome`] order.
    attempts: [IntCounter; 3],
    duration: Histogram,
    retries: IntCounter,
}

struct Metrics {
    registry: Registry,
    sink_series: Vec<SinkSeries>,
    delivery_attempts: IntCounterVec,
    in_flight: IntGauge,
    delivery_duration: HistogramVec,
    commit_to_ack: Histogram,
    status_write_batch_size: Histogram,
    status_rows_rejected: IntCounterVec,
    status_writer_stalled: IntGauge,
    blocked_aggregates: IntGauge,
    in_flight_bytes: IntGauge,
    replay_skipped: IntCounter,
    retries: IntCounterVec,
    dead_events_total: IntCounterVec,
    dead_event_types: Mutex<HashSet<String>>,
    outbox_dead_events: IntGauge,
    outbox_backlog: IntGaugeVec,
    outbox_oldest_age: Gauge,
    attempts_before_dead: Histogram,
    replication_lag: IntGauge,
    replication_lag_seconds: Gauge,
    /// Micros since the Unix epoch of the commit the stream is behind since
    /// ([`replication_behind_since`]); [`CAUGHT_UP`] when it is not behind.
    behind_since_micros: AtomicI64,
    stream_reconnects: IntCounter,
    events_replayed: IntCounter,
    sink_up: IntGaugeVec,
    slot_wal_status: IntGaugeVec,
    sweeper_reclaims: IntCounterVec,
    slot_recreations: IntCounterVec,
    failovers: IntCounter,
    server_timeline: IntGauge,
    stream_connected: IntGauge,
    leader: IntGauge,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

// Registration fails only for an invalid or duplicate descriptor, i.e. a bug in the
// constants below (the unit test builds them all); it is not reachable from input.
#[allow(clippy::expect_used)]
fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry
        .register(Box::new(c.clone()))
        .expect("metric descriptors are valid and unique");
    c
}

#[allow(clippy::expect_used)]
fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
    register(registry, metric)
}

#[allow(clippy::expect_used)]
fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(
        registry,
        IntCounter::new(name, help).expect("valid counter"),
    )
}

#[allow(clippy::expect_used)]
fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(registry, IntGauge::new(name, help).expect("valid gauge"))
}

#[allow(clippy::expect_used)]
fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(
        registry,
        Histogram::with_opts(opts).expect("valid histogram"),
    )
}

impl Metrics {
    #[allow(clippy::expect_used)]
    fn new() -> Self {
        let registry = Registry::new();
        // process_cpu_seconds_total, process_resident_memory_bytes, open fds, …
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("the process collector registers once");

        let build_info = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "dispatchbox_build_info",
                    "Always 1; the version label says which build runs.",
                ),
                &["version"],
            )
            .expect("valid gauge"),
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);

        let delivery_duration = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "dispatchbox_delivery_duration_seconds",
                    "Time from handing an event to a sink until the sink's answer.",
                )
                .buckets(DURATION_BUCKETS.to_vec()),
                &["sink"],
            )
            .expect("valid histogram"),
        );
        let slot_wal_status = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "dispatchbox_slot_wal_status",
                    "1 for the replication slot's current wal_status (missing: no such slot), 0 for the others.",
                ),
                &["status"],
            )
            .expect("valid gauge"),
        );
        for status in WAL_STATUSES {
            slot_wal_status.with_label_values(&[status]).set(0);
        }

        let delivery_attempts = counter_vec(
            &registry,
            "dispatchbox_delivery_attempts_total",
            "Delivery attempts per sink by result: done, retry or dead.",
            &["sink", "outcome"],
        );
        let retries = counter_vec(
            &registry,
            "dispatchbox_retries_total",
            "Delivery attempts per sink that failed and will be retried.",
            &["sink"],
        );
        let sink_series = SINKS
            .iter()
            .map(|&name| SinkSeries {
                name,
                attempts: OUTCOMES
                    .map(|o| delivery_attempts.with_label_values(&[name, o.as_str()])),
                duration: delivery_duration.with_label_values(&[name]),
                retries: retries.with_label_values(&[name]),
            })
            .collect();

        Self {
            sink_series,
            delivery_attempts,
            in_flight: gauge(
                &registry,
                "dispatchbox_events_in_flight",
                "Events being delivered right now.",
            ),
            delivery_duration,
            commit_to_ack: histogram(
                &registry,
                "dispatchbox_commit_to_ack_seconds",
                "Time from the transaction's commit in PostgreSQL to the sinks' acknowledgement (streamed events).",
                LATENCY_BUCKETS,
            ),
            status_write_batch_size: histogram(
                &registry,
                "dispatchbox_status_write_batch_size",
                "Rows written per status UPDATE.",
                BATCH_BUCKETS,
            ),
            status_rows_rejected: counter_vec(
                &registry,
                "dispatchbox_status_rows_rejected_total",
                "Rows whose status the database rejected (isolated from their batch), by what was written instead: dead (with the reason) or none (left for the sweeper).",
                &["written"],
            ),
            status_writer_stalled: gauge(
                &registry,
                "dispatchbox_status_writer_stalled",
                "1 while the status writer has failed to write anything for longer than DISPATCHBOX_STATUS_STALL_TIMEOUT.",
            ),
            replay_skipped: counter(
                &registry,
                "dispatchbox_replay_skipped_total",
                "Events the stream sent again after a (re)connect whose rows were settled already (or the sweeper's): not delivered again.",
            ),
            in_flight_bytes: gauge(
                &registry,
                "dispatchbox_in_flight_bytes",
                "Bytes of events (payload and headers) held between the stream, the dispatcher, the sinks and the sweeper; at most DISPATCHBOX_MAX_IN_FLIGHT_BYTES.",
            ),
            blocked_aggregates: gauge(
                &registry,
                "dispatchbox_blocked_aggregates",
                "Aggregates whose new events are parked in their rows because earlier events wait there (ordering).",
            ),
            retries,
            dead_events_total: counter_vec(
                &registry,
                "dispatchbox_dead_events_total",
                "Events marked dead by this process, by event type.",
                &["event_type"],
            ),
            dead_event_types: Mutex::new(HashSet::new()),
            outbox_dead_events: gauge(
                &registry,
                "dispatchbox_outbox_dead_events",
                "Rows with status dead in the outbox table (refreshed periodically).",
            ),
            outbox_backlog: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "dispatchbox_outbox_backlog_events",
                        "Rows of the outbox table waiting for delivery, by status: pending (due), retry, processing (refreshed periodically).",
                    ),
                    &["status"],
                )
                .expect("valid gauge"),
            ),
            outbox_oldest_age: register(
                &registry,
                Gauge::new(
                    "dispatchbox_outbox_oldest_undelivered_age_seconds",
                    "Age of the oldest row waiting for delivery (pending rows count from when they fell due); 0 when none waits (refreshed periodically).",
                )
                .expect("valid gauge"),
            ),
            attempts_before_dead: histogram(
                &registry,
                "dispatchbox_attempts_before_dead",
                "Delivery attempts an event had when it was marked dead.",
                ATTEMPT_BUCKETS,
            ),
            replication_lag: gauge(
                &registry,
                "dispatchbox_replication_lag_bytes",
                "WAL bytes between the server's current position and the slot's confirmed_flush_lsn (refreshed periodically).",
            ),
            replication_lag_seconds: register(
                &registry,
                Gauge::new(
                    "dispatchbox_replication_lag_seconds",
                    "Seconds since the commit of the oldest transaction the stream received and has not settled (or since the stream broke); 0 when caught up.",
                )
                .expect("valid gauge"),
            ),
            behind_since_micros: AtomicI64::new(CAUGHT_UP),
            events_replayed: counter(
                &registry,
                "dispatchbox_events_replayed_total",
                "Delivered events returned to pending by POST /api/replay on this process (dispatchbox replay runs in its own process and only logs).",
            ),
            stream_reconnects: counter(
                &registry,
                "dispatchbox_stream_reconnects_total",
                "Times the running replication stream broke and the relay reconnected (attempts that fail while reconnecting are not counted again).",
            ),
            sink_up: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "dispatchbox_sink_up",
                        "1 while the sink passes its check (Kafka: metadata request; webhook: the host resolves), 0 while it fails; checked every 10 s.",
                    ),
                    &["sink"],
                )
                .expect("valid gauge"),
            ),
            slot_wal_status,
            sweeper_reclaims: counter_vec(
                &registry,
                "dispatchbox_sweeper_reclaims_total",
                "Rows the sweeper claimed, by reason: due_retry, expired_lease, missed or requeued.",
                &["reason"],
            ),
            slot_recreations: counter_vec(
                &registry,
                "dispatchbox_slot_recreations_total",
                "Replication slots this process created, by reason: missing (no slot of that name) or lost (invalidated, dropped and created again).",
                &["reason"],
            ),
            failovers: register(
                &registry,
                IntCounter::new(
                    "dispatchbox_failovers_total",
                    "Times the replication connection reached another WAL history than before: a later timeline (a promoted standby), an earlier one, or another cluster. The relay restarted from the new server's slot and the sweeper delivered what that slot cannot stream.",
                )
                .expect("valid counter"),
            ),
            server_timeline: gauge(
                &registry,
                "dispatchbox_server_timeline",
                "Timeline of the server the replication stream follows (IDENTIFY_SYSTEM); 0 before the first connection.",
            ),
            stream_connected: gauge(
                &registry,
                "dispatchbox_stream_connected",
                "1 while the replication stream is running.",
            ),
            leader: gauge(
                &registry,
                "dispatchbox_leader",
                "1 while this process holds the replication slot; 0 while it stands by.",
            ),
            registry,
        }
    }
}

/// Sink labels (the closed set of sinks).
const SINKS: [&str; 5] = ["kafka", "nats", "redis", "webhook", "stdout"];

/// Outcome labels, in the order of [`SinkSeries::processed`].
const OUTCOMES: [DeliveryOutcome; 3] = [
    DeliveryOutcome::Done,
    DeliveryOutcome::Retry,
    DeliveryOutcome::Dead,
];

/// Makes sure every metric exists, with every series of its closed label sets at zero, so
/// the first scrape shows them all and rates work from the start (dashboards and alerts
/// never see a missing series for a known label value).
pub fn init() {
    let m = &*METRICS;
    for sink in SINKS {
        sink_enabled(sink);
    }
    for reason in ClaimReason::ALL {
        m.sweeper_reclaims.with_label_values(&[reason.as_str()]);
    }
    for written in REJECTED_WRITTEN {
        m.status_rows_rejected.with_label_values(&[written]);
    }
    for reason in SLOT_RECREATION_REASONS {
        m.slot_recreations.with_label_values(&[reason]);
    }
    for status in BACKLOG_STATUSES {
        m.outbox_backlog.with_label_values(&[status]);
    }
}

/// Creates the delivery series of sink `sink` at zero, for sinks named in the configuration
/// rather than in the closed set (named webhook endpoints, `webhook:billing`): their label
/// values are bounded by `DISPATCHBOX_SINKS`, and like the others they show from the start.
pub fn sink_enabled(sink: &str) {
    let m = &*METRICS;
    for outcome in OUTCOMES {
        m.delivery_attempts
            .with_label_values(&[sink, outcome.as_str()]);
    }
    m.retries.with_label_values(&[sink]);
    m.delivery_duration.with_label_values(&[sink]);
}

/// [`Metrics::behind_since_micros`] when the stream is not behind.
const CAUGHT_UP: i64 = i64::MIN;

/// Labels of `dispatchbox_status_rows_rejected_total`.
const REJECTED_WRITTEN: [&str; 2] = ["dead", "none"];

/// All metrics in the Prometheus text exposition format ([`CONTENT_TYPE`]).
pub fn render() -> Result<String, prometheus::Error> {
    let m = &*METRICS;
    // Computed at the scrape, so the lag grows while the stream stays behind without a
    // timer to update it.
    m.replication_lag_seconds.set(lag_seconds(
        m.behind_since_micros.load(Ordering::Acquire),
        Utc::now(),
    ));
    TextEncoder::new().encode_to_string(&m.registry.gather())
}

/// The replication lag in seconds as `dispatchbox_replication_lag_seconds` reports it now.
pub fn replication_lag_now() -> f64 {
    lag_seconds(
        METRICS.behind_since_micros.load(Ordering::Acquire),
        Utc::now(),
    )
}

/// Seconds from `since_micros` to `now`; 0 when caught up or when `now` is earlier (the
/// commit time is the database's clock, `now` the relay's).
fn lag_seconds(since_micros: i64, now: DateTime<Utc>) -> f64 {
    if since_micros == CAUGHT_UP {
        return 0.0;
    }
    let micros = now.timestamp_micros().saturating_sub(since_micros).max(0);
    micros as f64 / 1e6
}

/// One delivery attempt of one event to `sink` ended with `outcome` after `duration`.
pub fn delivery(sink: &str, outcome: DeliveryOutcome, duration: Duration) {
    let m = &*METRICS;
    let Some(series) = m.sink_series.iter().find(|s| s.name == sink) else {
        m.delivery_attempts
            .with_label_values(&[sink, outcome.as_str()])
            .inc();
        m.delivery_duration
            .with_label_values(&[sink])
            .observe(duration.as_secs_f64());
        if outcome == DeliveryOutcome::Retry {
            m.retries.with_label_values(&[sink]).inc();
        }
        return;
    };
    let index = OUTCOMES.iter().position(|&o| o == outcome).unwrap_or(0);
    if let Some(counter) = series.attempts.get(index) {
        counter.inc();
    }
    series.duration.observe(duration.as_secs_f64());
    if outcome == DeliveryOutcome::Retry {
        series.retries.inc();
    }
}

/// Counts one event in delivery until the returned guard is dropped (also when the
/// delivery is abandoned, e.g. at the shutdown deadline).
pub fn in_flight() -> InFlightGuard {
    METRICS.in_flight.inc();
    InFlightGuard(())
}

/// Keeps `dispatchbox_events_in_flight` raised while alive; see [`in_flight`].
#[derive(Debug)]
pub struct InFlightGuard(());

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        METRICS.in_flight.dec();
    }
}

/// Every routed sink acknowledged an event whose transaction committed at `committed_at`
/// (database clock; a relay clock behind it counts as zero).
pub fn commit_to_ack(committed_at: DateTime<Utc>) {
    let latency = (Utc::now() - committed_at).to_std().unwrap_or_default();
    METRICS.commit_to_ack.observe(latency.as_secs_f64());
}

/// A status UPDATE of `rows` rows committed.
pub fn status_write_batch(rows: usize) {
    METRICS.status_write_batch_size.observe(rows as f64);
}

/// The database rejected a row's status; `written` is what was written instead: `dead`
/// or `none`.
pub fn status_row_rejected(written: &'static str) {
    METRICS
        .status_rows_rejected
        .with_label_values(&[written])
        .inc();
}

/// The status writer got stuck (`true`: nothing written for longer than its stall
/// timeout) or is writing again.
pub fn status_writer_stalled(stalled: bool) {
    METRICS.status_writer_stalled.set(i64::from(stalled));
}

/// `events` replayed events were not delivered again: their rows were settled.
pub fn replay_skipped(events: usize) {
    METRICS
        .replay_skipped
        .inc_by(u64::try_from(events).unwrap_or(u64::MAX));
}

/// `bytes` of events are held (see `dispatch::budget`).
pub fn in_flight_bytes(bytes: usize) {
    METRICS
        .in_flight_bytes
        .set(i64::try_from(bytes).unwrap_or(i64::MAX));
}

/// `count` aggregates are blocked (ordering).
pub fn blocked_aggregates(count: usize) {
    METRICS
        .blocked_aggregates
        .set(i64::try_from(count).unwrap_or(i64::MAX));
}

/// An event of `event_type` (`None`: the row could not be read as an event) was marked
/// dead after `attempts` delivery attempts.
/// Counts `events` delivered events returned to `pending` by a replay.
pub fn events_replayed(events: usize) {
    METRICS
        .events_replayed
        .inc_by(u64::try_from(events).unwrap_or(u64::MAX));
}

pub fn dead_event(event_type: Option<&str>, attempts: u32) {
    let m = &*METRICS;
    let label = match event_type {
        None => UNKNOWN_EVENT_TYPE.to_owned(),
        Some(event_type) => bounded_event_type(&m.dead_event_types, event_type),
    };
    m.dead_events_total.with_label_values(&[&label]).inc();
    m.attempts_before_dead.observe(f64::from(attempts));
}

/// The label for `event_type`: cut to a sane length, and [`OTHER_EVENT_TYPE`] once
/// [`MAX_EVENT_TYPE_LABELS`] distinct types were seen.
fn bounded_event_type(seen: &Mutex<HashSet<String>>, event_type: &str) -> String {
    let mut cut = event_type.len().min(MAX_EVENT_TYPE_LABEL_BYTES);
    while !event_type.is_char_boundary(cut) {
        cut -= 1;
    }
    let label = &event_type[..cut];
    // A poisoned lock only means another thread panicked mid-insert; the set is still usable.
    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    if seen.contains(label) {
        return label.to_owned();
    }
    if seen.len() >= MAX_EVENT_TYPE_LABELS {
        return OTHER_EVENT_TYPE.to_owned();
    }
    seen.insert(label.to_owned());
    label.to_owned()
}

/// The outbox table holds `rows` dead rows.
pub fn dead_rows(rows: i64) {
    METRICS.outbox_dead_events.set(rows);
}

/// The outbox table's rows waiting for delivery: `(status, rows)` for statuses of
/// [`BACKLOG_STATUSES`] (one missing from `by_status` has none), and the age of the oldest.
pub fn outbox_backlog(by_status: &[(String, i64)], oldest_age: Duration) {
    let m = &*METRICS;
    for status in BACKLOG_STATUSES {
        let rows = by_status
            .iter()
            .find(|(s, _)| s == status)
            .map_or(0, |(_, rows)| *rows);
        m.outbox_backlog.with_label_values(&[status]).set(rows);
    }
    m.outbox_oldest_age.set(oldest_age.as_secs_f64());
}

/// The stream is behind since `commit` (the commit time of the oldest transaction it
/// received and has not settled), or caught up (`None`). The lag is computed at each scrape.
pub fn replication_behind_since(commit: Option<DateTime<Utc>>) {
    METRICS.behind_since_micros.store(
        commit.map_or(CAUGHT_UP, |t| t.timestamp_micros()),
        Ordering::Release,
    );
}

/// The running stream broke at `at` (the relay reconnects): it is behind since `at` at the
/// latest, or since an earlier moment it was already behind since.
pub fn stream_broke(at: DateTime<Utc>) {
    let m = &*METRICS;
    m.stream_reconnects.inc();
    let at = at.timestamp_micros();
    let _ = m
        .behind_since_micros
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |since| {
            (since == CAUGHT_UP || since > at).then_some(at)
        });
}

/// `sink` passed (`true`) or failed (`false`) its check.
pub fn sink_up(sink: &str, up: bool) {
    METRICS
        .sink_up
        .with_label_values(&[sink])
        .set(i64::from(up));
}

/// The replication slot's state: `wal_status` one of [`WAL_STATUSES`], `lag_bytes` when
/// known (a missing slot or one that never confirmed leaves the last value).
pub fn replication_slot(wal_status: &str, lag_bytes: Option<i64>) {
    let m = &*METRICS;
    for status in WAL_STATUSES {
        m.slot_wal_status
            .with_label_values(&[status])
            .set(i64::from(status == wal_status));
    }
    if let Some(lag) = lag_bytes {
        m.replication_lag.set(lag);
    }
}

/// The sweeper claimed a row for `reason` (`due_retry`, `expired_lease`, `missed` or
/// `requeued`).
pub fn sweeper_reclaim(reason: &'static str) {
    METRICS.sweeper_reclaims.with_label_values(&[reason]).inc();
}

/// The replication slot was created because it was `missing` or `lost` (one of
/// [`SLOT_RECREATION_REASONS`]).
pub fn slot_recreated(reason: &'static str) {
    METRICS.slot_recreations.with_label_values(&[reason]).inc();
}

/// The replication connection reached another WAL history than before (see
/// `replication::failover`).
pub fn failover() {
    METRICS.failovers.inc();
}

/// The replication connection's server is on `timeline`.
pub fn server_timeline(timeline: u32) {
    METRICS.server_timeline.set(i64::from(timeline));
}

/// The replication stream started (`true`) or stopped running (`false`).
pub fn stream_connected(connected: bool) {
    METRICS.stream_connected.set(i64::from(connected));
}

/// This process took (`true`) or gave up (`false`) the replication slot.
pub fn leader(leader: bool) {
    METRICS.leader.set(i64::from(leader));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exported_with_its_prefix() {
        init();
        delivery("stdout", DeliveryOutcome::Done, Duration::from_millis(3));
        dead_event(Some("order.placed"), 5);
        let text = render().expect("render");
        for name in [
            "dispatchbox_delivery_attempts_total",
            "dispatchbox_events_in_flight",
            "dispatchbox_delivery_duration_seconds_bucket",
            "dispatchbox_commit_to_ack_seconds_count",
            "dispatchbox_status_write_batch_size_count",
            "dispatchbox_status_rows_rejected_total{written=\"none\"}",
            "dispatchbox_blocked_aggregates",
            "dispatchbox_in_flight_bytes",
            "dispatchbox_replay_skipped_total",
            "dispatchbox_status_writer_stalled",
            "dispatchbox_dead_events_total",
            "dispatchbox_outbox_dead_events ",
            "dispatchbox_outbox_backlog_events{status=\"retry\"} 0",
            "dispatchbox_outbox_oldest_undelivered_age_seconds ",
            "dispatchbox_replication_lag_seconds ",
            "dispatchbox_stream_reconnects_total ",
            "dispatchbox_events_replayed_total ",
            "dispatchbox_attempts_before_dead_bucket",
            "dispatchbox_replication_lag_bytes",
            "dispatchbox_slot_wal_status{status=\"missing\"}",
            "dispatchbox_slot_recreations_total{reason=\"missing\"} 0",
            "dispatchbox_slot_recreations_total{reason=\"lost\"} 0",
            "dispatchbox_failovers_total 0",
            "dispatchbox_server_timeline ",
            "dispatchbox_stream_connected",
            "dispatchbox_leader",
            "dispatchbox_build_info{version=",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        assert!(text.contains("event_type=\"order.placed\""), "{text}");
    }

    #[test]
    fn no_two_metric_families_share_a_base_name() {
        // OpenMetrics: a counter `x_total` and a gauge `x` (or a histogram's `x_count`…)
        // cannot both be exposed.
        init();
        let families = METRICS.registry.gather();
        let mut bases = HashSet::new();
        for family in &families {
            let name = family.name();
            let base = name
                .strip_suffix("_total")
                .filter(|_| family.get_field_type() == prometheus::proto::MetricType::COUNTER)
                .unwrap_or(name);
            assert!(bases.insert(base.to_owned()), "{base} is used twice");
        }
    }

    #[test]
    fn replication_lag_is_zero_when_caught_up_and_grows_while_behind() {
        let now = Utc::now();
        assert_eq!(lag_seconds(CAUGHT_UP, now), 0.0);
        let since = now - chrono::Duration::seconds(90);
        assert_eq!(lag_seconds(since.timestamp_micros(), now), 90.0);
        // A database clock ahead of the relay's reads as no lag, not a negative one.
        let ahead = now + chrono::Duration::seconds(3);
        assert_eq!(lag_seconds(ahead.timestamp_micros(), now), 0.0);
    }

    #[test]
    fn event_type_labels_are_bounded() {
        let seen = Mutex::new(HashSet::new());
        for i in 0..MAX_EVENT_TYPE_LABELS {
            assert_eq!(bounded_event_type(&seen, &format!("t{i}")), format!("t{i}"));
        }
        assert_eq!(bounded_event_type(&seen, "one.more"), OTHER_EVENT_TYPE);
        assert_eq!(bounded_event_type(&seen, "t7"), "t7");
        let long = "é".repeat(80);
        let label = bounded_event_type(&Mutex::new(HashSet::new()), &long);
        assert!(label.len() <= MAX_EVENT_TYPE_LABEL_BYTES && long.starts_with(&label));
    }
}
