//! The application side of the benchmark: outbox INSERTs at a fixed rate, each transaction
//! timestamped when its COMMIT returned, and the backlog queued before a drain.
//!
//! Every payload carries its own row id as the marker `"ref": "#<id>#"`, so a consumer that
//! only sees bytes (pg_recvlogical's pgoutput stream) can tell which event arrived when.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};

/// Inserts `$2` events with payload numbers from `$1` over `$3` aggregates: three aggregate
/// types, ~250-byte JSON payloads and a W3C `traceparent` header, as an application would
/// write them. Ids are drawn first so each payload can carry its own id as a marker.
pub const INSERT_EVENTS: &str = "
    WITH ids AS (
        SELECT nextval(pg_get_serial_sequence('public.outbox_event', 'id')) AS id, g
          FROM generate_series($1::bigint, $1::bigint + $2::int - 1) g
    )
    INSERT INTO public.outbox_event (id, aggregate_type, aggregate_id, event_type, payload, headers)
    SELECT id,
           (ARRAY['order','invoice','customer'])[1 + g % 3],
           'agg-' || (g % $3::int),
           (ARRAY['created','updated','shipped'])[1 + (g / 3) % 3],
           jsonb_build_object(
               'ref', '#' || id || '#',
               'sequence', g,
               'customer_id', 'cus_' || lpad((g % 9973)::text, 8, '0'),
               'amount_cents', (g * 7919) % 100000,
               'currency', 'EUR',
               'items', jsonb_build_array(
                   jsonb_build_object('sku', 'SKU-' || (g % 512), 'quantity', 1 + g % 5)),
               'note', 'benchmark event padded to a realistic size'),
           jsonb_build_object('traceparent',
               '00-' || md5(g::text) || '-' || left(md5((g + 1)::text), 16) || '-01')
      FROM ids ORDER BY id
    RETURNING id";

/// The aggregate types the load uses (one Kafka topic each).
pub const AGGREGATE_TYPES: [&str; 3] = ["order", "invoice", "customer"];

/// A steady load.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Events per second.
    pub rate: u32,
    /// How long to insert.
    pub seconds: u32,
    /// Rows per transaction.
    pub tx_rows: u32,
    /// Distinct aggregate ids.
    pub aggregates: u32,
}

/// What a load run committed.
#[derive(Debug, Default)]
pub struct Committed {
    /// Row id → when its transaction's COMMIT returned to the application.
    pub at: HashMap<i64, Instant>,
    /// Events per second actually committed.
    pub achieved_rate: f64,
}

/// Inserts `count` events numbered from `first` in one transaction; returns their ids.
pub async fn insert(
    client: &tokio_postgres::Client,
    first: i64,
    count: u32,
    aggregates: u32,
) -> Vec<i64> {
    client
        .query(
            INSERT_EVENTS,
            &[&first, &(count as i32), &(aggregates.max(1) as i32)],
        )
        .await
        .expect("insert outbox events")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Queues `events` in `tx_rows`-row transactions as fast as one connection can; returns
/// the rows per second achieved.
pub async fn queue(
    client: &tokio_postgres::Client,
    events: u32,
    tx_rows: u32,
    aggregates: u32,
) -> f64 {
    let started = Instant::now();
    let mut next = 1_i64;
    let mut left = events;
    while left > 0 {
        let n = left.min(tx_rows.max(1));
        insert(client, next, n, aggregates).await;
        next += i64::from(n);
        left -= n;
    }
    f64::from(events) / started.elapsed().as_secs_f64()
}

/// Commits `load.rate` events per second for `load.seconds`, `load.tx_rows` per
/// transaction. Transactions are started on schedule and pipelined on the one connection
/// (each its own implicit transaction), so a slow commit does not shift the ones after it.
pub async fn run(client: &tokio_postgres::Client, load: Load, first_number: i64) -> Committed {
    let tx_rows = load.tx_rows.max(1);
    let transactions = (u64::from(load.rate) * u64::from(load.seconds))
        .div_ceil(u64::from(tx_rows))
        .max(1);
    let period = Duration::from_secs_f64(f64::from(tx_rows) / f64::from(load.rate.max(1)));
    let started = tokio::time::Instant::now();
    let mut pending = FuturesUnordered::new();
    let mut committed = Committed::default();
    let mut next_number = first_number;
    for i in 0..transactions {
        let due = started + period.mul_f64(i as f64);
        // Collect finished commits while waiting for the next slot.
        loop {
            tokio::select! {
                biased;
                _ = tokio::time::sleep_until(due) => break,
                Some((ids, at)) = pending.next(), if !pending.is_empty() => {
                    record(&mut committed, ids, at);
                }
            }
        }
        let number = next_number;
        next_number += i64::from(tx_rows);
        pending.push(async move {
            let ids = insert(client, number, tx_rows, load.aggregates).await;
            (ids, Instant::now())
        });
    }
    while let Some((ids, at)) = pending.next().await {
        record(&mut committed, ids, at);
    }
    committed.achieved_rate = committed.at.len() as f64 / started.elapsed().as_secs_f64();
    committed
}

fn record(committed: &mut Committed, ids: Vec<i64>, at: Instant) {
    committed.at.extend(ids.into_iter().map(|id| (id, at)));
}

/// Finds every `#<digits>#` marker in a byte stream that arrives in chunks: markers may
/// straddle chunk boundaries, so an unfinished one is carried over.
#[derive(Debug, Default)]
pub struct MarkerScanner {
    /// Digits of a marker whose closing `#` has not arrived yet (`Some` after a `#`).
    partial: Option<Vec<u8>>,
}

impl MarkerScanner {
    /// Feeds one chunk; calls `found` with each complete marker's id.
    pub fn feed(&mut self, chunk: &[u8], mut found: impl FnMut(i64)) {
        for &b in chunk {
            match (&mut self.partial, b) {
                (Some(digits), b'#') if !digits.is_empty() => {
                    if let Some(id) = std::str::from_utf8(digits)
                        .ok()
                        .and_then(|s| s.parse().ok())
                    {
                        found(id);
                    }
                    self.partial = None;
                }
                // `##` or a new opening `#`: start over from this one.
                (_, b'#') => self.partial = Some(Vec::new()),
                (Some(digits), b'0'..=b'9') if digits.len() < 20 => digits.push(b),
                (Some(_), _) => self.partial = None,
                (None, _) => {}
            }
        }
    }
}
