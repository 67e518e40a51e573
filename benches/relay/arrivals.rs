//! How deliveries are seen arriving, and what the arrivals say: stdout lines, webhook
//! requests and Kafka records timestamped as they arrive, latency per event against its
//! commit, and the relay's own commit → ack histogram read from `/metrics`.

use std::collections::HashMap;
use std::io::BufRead;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::load::{Committed, AGGREGATE_TYPES};
use crate::{support, PARTITIONS, POLL};

/// Counts stdout lines in large reads (the drain only needs them consumed, as a log
/// collector would, without adding much CPU of its own).
pub fn count_lines(stdout: Option<std::process::ChildStdout>) -> std::thread::JoinHandle<usize> {
    let mut stdout = stdout.expect("piped stdout");
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        let mut lines = 0;
        loop {
            match std::io::Read::read(&mut stdout, &mut buf) {
                Ok(0) | Err(_) => return lines,
                Ok(n) => lines += buf[..n].iter().filter(|&&b| b == b'\n').count(),
            }
        }
    })
}

/// Timestamps each stdout-sink line by its `id`, until the relay exits.
pub fn stdout_arrivals(
    stdout: Option<std::process::ChildStdout>,
) -> std::thread::JoinHandle<Vec<(i64, Instant)>> {
    let stdout = stdout.expect("piped stdout");
    std::thread::spawn(move || {
        let mut arrivals = Vec::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let at = Instant::now();
            // `{"id":42,…`: the id is the first field.
            let id = line
                .strip_prefix("{\"id\":")
                .and_then(|rest| rest.split(',').next())
                .and_then(|n| n.parse().ok());
            if let Some(id) = id {
                arrivals.push((id, at));
            }
        }
        arrivals
    })
}

/// A Kafka consumer on its own OS thread, assigned every partition of every topic from its
/// current high watermark, timestamping each record by its `id` header. The arrival is an
/// upper bound of commit → broker ack (it adds the consumer's fetch wait).
pub struct KafkaReader {
    stop: Arc<AtomicBool>,
    rx: mpsc::Receiver<(i64, Instant)>,
    thread: std::thread::JoinHandle<()>,
}

impl KafkaReader {
    pub fn start(bootstrap: &str) -> Self {
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
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                while !stop.load(Ordering::Relaxed) {
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
                    if let Some(id) = id {
                        let _ = tx.send((id, at));
                    }
                }
            }
        });
        Self { stop, rx, thread }
    }

    /// Reads until every committed id arrived or `timeout` passed; returns the arrivals.
    pub fn finish(self, committed: &Committed, timeout: Duration) -> Vec<(i64, Instant)> {
        let deadline = Instant::now() + timeout;
        let mut arrivals = Vec::new();
        let mut seen = std::collections::HashSet::new();
        while seen.len() < committed.at.len() && Instant::now() < deadline {
            while let Ok((id, at)) = self.rx.try_recv() {
                if committed.at.contains_key(&id) {
                    seen.insert(id);
                }
                arrivals.push((id, at));
            }
            std::thread::sleep(POLL);
        }
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        arrivals.extend(self.rx.try_iter());
        arrivals
    }
}

/// Latency of each committed event's first arrival (ms, sorted), events never received,
/// and arrivals beyond the first of an event.
pub fn latencies(committed: &Committed, arrivals: &[(i64, Instant)]) -> (Vec<f64>, usize, usize) {
    let mut first: HashMap<i64, Instant> = HashMap::new();
    let mut duplicates = 0;
    for &(id, at) in arrivals {
        if !committed.at.contains_key(&id) {
            continue;
        }
        if first.insert(id, at).is_some() {
            duplicates += 1;
            // Keep the earliest.
            let earliest = first[&id].min(at);
            first.insert(id, earliest);
        }
    }
    let mut ms: Vec<f64> = committed
        .at
        .iter()
        .filter_map(|(id, commit)| {
            first
                .get(id)
                .map(|at| at.saturating_duration_since(*commit).as_secs_f64() * 1000.0)
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    let missing = committed.at.len() - ms.len();
    (ms, missing, duplicates)
}

/// `le` → cumulative count of the relay's commit → ack histogram.
pub async fn commit_to_ack_buckets(admin: &str) -> Vec<(f64, f64)> {
    let (status, body) = support::relay::http_get(admin, "/metrics")
        .await
        .expect("GET /metrics");
    assert_eq!(status, 200, "GET /metrics");
    body.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("dispatchbox_commit_to_ack_seconds_bucket{le=\"")?;
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect()
}

/// The upper bounds (ms) of the buckets holding the 50th and 99th percentile of what was
/// observed between two scrapes.
pub fn histogram_quantiles(before: &[(f64, f64)], after: &[(f64, f64)]) -> (f64, f64) {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|&(le, n)| {
            let old = before
                .iter()
                .find(|&&(l, _)| l == le)
                .map_or(0.0, |&(_, n)| n);
            (le, n - old)
        })
        .collect();
    let total = delta.last().map_or(0.0, |&(_, n)| n);
    let bound = |q: f64| {
        delta
            .iter()
            .find(|&&(_, n)| n >= q * total)
            .map_or(f64::NAN, |&(le, _)| le * 1000.0)
    };
    (bound(0.50), bound(0.99))
}

/// The event id of a webhook body (a string per Standard Webhooks, or a number).
pub fn webhook_id(body: &serde_json::Value) -> Option<i64> {
    let id = &body["id"];
    id.as_i64().or_else(|| id.as_str()?.parse().ok())
}
