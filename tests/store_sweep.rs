//! The sweeper's SQL against a real PostgreSQL: what a claim takes and leaves, per-aggregate
//! heads, concurrent claimers, token-guarded outcome writes, and rows mapped exactly like
//! the replication stream maps them.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use dispatchbox::event::{ClaimReason, Outcome};
use dispatchbox::store::sweep::{ClaimSettings, ClaimedEvent};
use support::postgres::TestCluster;
use support::store::migrated;

fn settings() -> ClaimSettings {
    ClaimSettings {
        batch: 100,
        lease: Duration::from_secs(60),
        missed_pending: Vec::new(),
        ordering: false,
    }
}

/// Inserts one row of aggregate `('order', aggregate)`; the `*_ago` columns are seconds
/// relative to now (negative = in the future). Returns its id.
async fn row(
    client: &tokio_postgres::Client,
    aggregate: &str,
    status: &str,
    next_run_in: f64,
    created_ago: f64,
) -> i64 {
    client
        .query_one(
            "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload, status,
                                       attempts, next_run_at, created_at, claim_token)
             VALUES ('order', $1, 'order.created', '{}', $2,
                     CASE WHEN $2 IN ('retry', 'processing', 'dead') THEN 1 ELSE 0 END,
                     now() + make_interval(secs => $3), now() - make_interval(secs => $4),
                     CASE WHEN $2 = 'processing' THEN 'earlier-sweeper' END)
             RETURNING id",
            &[&aggregate, &status, &next_run_in, &created_ago],
        )
        .await
        .unwrap()
        .get(0)
}

fn ids(claimed: &[ClaimedEvent]) -> Vec<i64> {
    claimed.iter().map(|c| c.id).collect()
}

/// Given rows in every state, a claim takes due retries, expired leases and the due pending
/// rows the caller names (as missed, or as requeued from `dead`), and nothing else; claimed
/// rows are leased to the token and keep the reason they were claimed for.
#[tokio::test]
async fn a_claim_takes_due_retries_expired_leases_and_missed_rows_only() {
    let cluster = TestCluster::start();
    let (db, store) = migrated(&cluster, "claim", 6).await;
    let client = cluster.connect(&db).await;

    let due_retry = row(&client, "a", "retry", -1.0, 600.0).await;
    let _future_retry = row(&client, "b", "retry", 3600.0, 600.0).await;
    let expired = row(&client, "c", "processing", -1.0, 600.0).await;
    let _live_lease = row(&client, "d", "processing", 3600.0, 600.0).await;
    let missed = row(&client, "e", "pending", -600.0, 600.0).await;
    let fresh = row(&client, "f", "pending", 0.0, 0.0).await;
    let old_unnamed = row(&client, "l", "pending", -600.0, 600.0).await;
    let scheduled = row(&client, "g", "pending", 3600.0, 600.0).await;
    let done = row(&client, "h", "done", -600.0, 600.0).await;
    let dead = row(&client, "i", "dead", -600.0, 600.0).await;
    // Fresh, but attempted before: returned from `dead` by an operator.
    let requeued = row(&client, "k", "pending", 0.0, 0.0).await;
    client
        .execute(
            "UPDATE outbox_event SET last_error = 'webhook answered 500', last_error_at = now()
              WHERE id = $1",
            &[&requeued],
        )
        .await
        .unwrap();

    // Named as missed: only a due pending row is taken (not a scheduled one, not rows in
    // other states). Pending rows not named are left to the stream, however old:
    // `created_at` is when the inserting transaction began, not when it committed.
    let claimed = store
        .claim_due(
            "sweeper-1",
            &ClaimSettings {
                missed_pending: vec![missed, scheduled, done, dead, requeued],
                ..settings()
            },
        )
        .await
        .unwrap();
    assert_eq!(ids(&claimed), vec![due_retry, expired, missed, requeued]);
    let reasons: Vec<(ClaimReason, i32)> = claimed.iter().map(|c| (c.reason, c.attempts)).collect();
    assert_eq!(
        reasons,
        vec![
            (ClaimReason::DueRetry, 1),
            (ClaimReason::ExpiredLease, 1),
            (ClaimReason::Missed, 0),
            (ClaimReason::Requeued, 0)
        ]
    );
    let leased = client
        .query(
            "SELECT id FROM outbox_event
              WHERE status = 'processing' AND claim_token = 'sweeper-1'
                AND next_run_at BETWEEN now() + interval '50 seconds' AND now() + interval '70 seconds'
              ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        leased.iter().map(|r| r.get(0)).collect::<Vec<i64>>(),
        vec![due_retry, expired, missed, requeued]
    );
    let attempts: i32 = client
        .query_one(
            "SELECT attempts FROM outbox_event WHERE id = $1",
            &[&due_retry],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(attempts, 1, "claiming is not an attempt");

    // Leased rows are not claimed again while the lease holds.
    assert!(store
        .claim_due("sweeper-2", &settings())
        .await
        .unwrap()
        .is_empty());

    // Named later, the other pending rows are taken too; a scheduled row still waits for
    // its time.
    let claimed = store
        .claim_due(
            "sweeper-2",
            &ClaimSettings {
                missed_pending: vec![fresh, scheduled, old_unnamed],
                ..settings()
            },
        )
        .await
        .unwrap();
    assert_eq!(ids(&claimed), vec![fresh, old_unnamed]);
    assert_eq!(claimed[0].reason, ClaimReason::Missed);

    // A batch size bounds the claim.
    client
        .execute(
            "UPDATE outbox_event SET next_run_at = now() - interval '1 second'
              WHERE status = 'processing'",
            &[],
        )
        .await
        .unwrap();
    let claimed = store
        .claim_due(
            "sweeper-3",
            &ClaimSettings {
                batch: 2,
                ..settings()
            },
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
    assert!(claimed
        .iter()
        .all(|c| c.reason == ClaimReason::ExpiredLease));
}

/// Given aggregate A with due retries 1, 2, 3 and aggregate B with due retry 4, an
/// ordered claim takes only the heads (1 and 4); once 1 is done the next claim takes 2.
/// A dead row does not block its aggregate; a pending one does. Without ordering every
/// due row is claimed.
#[tokio::test]
async fn ordering_claims_only_the_head_of_each_aggregate() {
    let cluster = TestCluster::start();
    let (db, store) = migrated(&cluster, "heads", 6).await;
    let client = cluster.connect(&db).await;
    let a1 = row(&client, "A", "retry", -1.0, 600.0).await;
    let a2 = row(&client, "A", "retry", -1.0, 600.0).await;
    let a3 = row(&client, "A", "retry", -1.0, 600.0).await;
    let b4 = row(&client, "B", "retry", -1.0, 600.0).await;
    let _c_dead = row(&client, "C", "dead", -1.0, 600.0).await;
    let c6 = row(&client, "C", "retry", -1.0, 600.0).await;
    let _d_pending = row(&client, "D", "pending", 0.0, 0.0).await;
    let d8 = row(&client, "D", "retry", -1.0, 600.0).await;
    let ordered = ClaimSettings {
        ordering: true,
        ..settings()
    };

    let claimed = store.claim_due("s1", &ordered).await.unwrap();
    assert_eq!(ids(&claimed), vec![a1, b4, c6]);
    assert!(store.aggregate_has_backlog("order", "A").await.unwrap());
    assert!(!store.aggregate_has_backlog("order", "E").await.unwrap());

    let written = store
        .write_claimed_outcomes("s1", &[(a1, Outcome::Done)])
        .await
        .unwrap();
    assert_eq!(written, vec![a1]);
    let claimed = store.claim_due("s1", &ordered).await.unwrap();
    assert_eq!(ids(&claimed), vec![a2], "B and C are leased; D waits");

    // Without ordering: every due row, whatever its aggregate.
    client
        .execute(
            "UPDATE outbox_event SET status = 'retry', claim_token = NULL,
                    next_run_at = now() - interval '1 second'
              WHERE status = 'processing'",
            &[],
        )
        .await
        .unwrap();
    let claimed = store.claim_due("s2", &settings()).await.unwrap();
    assert_eq!(ids(&claimed), vec![a2, a3, b4, c6, d8]);

    let mut backlogged = store.backlogged_aggregates().await.unwrap();
    backlogged.sort();
    let expected: Vec<(String, String)> = ["A", "B", "C", "D"]
        .iter()
        .map(|a| ("order".to_string(), a.to_string()))
        .collect();
    assert_eq!(backlogged, expected);
}

/// Given two sweepers claiming the same table concurrently (ordering on, two rows per
/// aggregate), no row is claimed twice, together they claim every row, and an aggregate's
/// second row is claimed only after its first was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claimers_never_claim_a_row_twice() {
    let cluster = TestCluster::start();
    let (db, store) = migrated(&cluster, "concurrent", 6).await;
    let client = cluster.connect(&db).await;
    client
        .execute(
            "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload, status,
                                       next_run_at)
             SELECT 'order', (g % 500)::text, 'order.created', '{}', 'retry',
                    now() - interval '1 second'
               FROM generate_series(1, 1000) g",
            &[],
        )
        .await
        .unwrap();

    // A global clock orders claims and writes across both sweepers.
    let clock = Arc::new(AtomicU64::new(0));
    let claims: Arc<Mutex<Vec<(i64, u64)>>> = Arc::default();
    let writes: Arc<Mutex<BTreeMap<i64, u64>>> = Arc::default();
    let sweepers: Vec<_> = ["sweeper-a", "sweeper-b"]
        .into_iter()
        .map(|token| {
            let (store, clock, claims, writes) =
                (store.clone(), clock.clone(), claims.clone(), writes.clone());
            tokio::spawn(async move {
                let settings = ClaimSettings {
                    batch: 40,
                    ordering: true,
                    ..settings()
                };
                let mut mine = 0;
                loop {
                    let claimed = store.claim_due(token, &settings).await.unwrap();
                    if claimed.is_empty() {
                        if store.next_due(true).await.unwrap().is_none() {
                            return mine;
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                    mine += claimed.len();
                    let at = clock.fetch_add(1, Ordering::SeqCst);
                    claims
                        .lock()
                        .unwrap()
                        .extend(claimed.iter().map(|c| (c.id, at)));
                    let outcomes: Vec<(i64, Outcome)> =
                        claimed.iter().map(|c| (c.id, Outcome::Done)).collect();
                    let written = store
                        .write_claimed_outcomes(token, &outcomes)
                        .await
                        .unwrap();
                    assert_eq!(written, ids(&claimed), "{token} lost a claim");
                    let at = clock.fetch_add(1, Ordering::SeqCst);
                    writes
                        .lock()
                        .unwrap()
                        .extend(written.into_iter().map(|id| (id, at)));
                }
            })
        })
        .collect();
    let mut per_sweeper = Vec::new();
    for sweeper in sweepers {
        per_sweeper.push(sweeper.await.unwrap());
    }

    let claims = claims.lock().unwrap().clone();
    let unique: BTreeSet<i64> = claims.iter().map(|(id, _)| *id).collect();
    assert_eq!(claims.len(), 1000, "claims per sweeper: {per_sweeper:?}");
    assert_eq!(unique.len(), 1000, "a row was claimed twice");
    assert!(
        per_sweeper.iter().all(|&n| n > 0),
        "one sweeper did everything: {per_sweeper:?}"
    );
    // Rows g and g + 500 share an aggregate; ids 1..=1000 follow g.
    let writes = writes.lock().unwrap().clone();
    let claimed_at: BTreeMap<i64, u64> = claims.into_iter().collect();
    for first in 1..=500 {
        assert!(
            claimed_at[&(first + 500)] > writes[&first],
            "row {} was claimed before row {first} of its aggregate was written",
            first + 500
        );
    }
    let done: i64 = client
        .query_one(
            "SELECT count(*) FROM outbox_event
              WHERE status = 'done' AND attempts = 1 AND claim_token IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(done, 1000);
}

/// Given rows claimed by one sweeper, a sweeper with another token writes nothing; after
/// the lease expired and another sweeper reclaimed them, the first cannot overwrite; the
/// holder's outcomes land with the documented column changes and release the claim.
#[tokio::test]
async fn claimed_outcomes_are_written_only_under_the_claim_token() {
    let cluster = TestCluster::start();
    let (db, store) = migrated(&cluster, "token", 6).await;
    let client = cluster.connect(&db).await;
    let mut rows = Vec::new();
    for aggregate in ["1", "2", "3", "4"] {
        rows.push(row(&client, aggregate, "retry", -1.0, 600.0).await);
    }
    client
        .execute(
            "UPDATE outbox_event SET last_error = 'old error', last_error_at = now() - interval '1 hour'",
            &[],
        )
        .await
        .unwrap();

    // A zero lease expires at once.
    let claimed = store
        .claim_due(
            "stale",
            &ClaimSettings {
                lease: Duration::ZERO,
                ..settings()
            },
        )
        .await
        .unwrap();
    assert_eq!(ids(&claimed), rows);
    assert!(store
        .write_claimed_outcomes("stranger", &[(rows[0], Outcome::Done)])
        .await
        .unwrap()
        .is_empty());

    let reclaimed = store.claim_due("holder", &settings()).await.unwrap();
    assert_eq!(ids(&reclaimed), rows);
    assert!(reclaimed
        .iter()
        .all(|c| c.reason == ClaimReason::ExpiredLease && c.attempts == 1));
    assert!(store
        .write_claimed_outcomes("stale", &[(rows[0], Outcome::Done)])
        .await
        .unwrap()
        .is_empty());
    let token: Option<String> = client
        .query_one(
            "SELECT claim_token FROM outbox_event WHERE id = $1",
            &[&rows[0]],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(token.as_deref(), Some("holder"));

    let retry_at = Utc::now() + chrono::Duration::minutes(10);
    let park_at = Utc::now() + chrono::Duration::minutes(20);
    let outcomes = vec![
        (rows[0], Outcome::Done),
        (
            rows[1],
            Outcome::Retry {
                error: "503 Service Unavailable".into(),
                next_run_at: retry_at,
            },
        ),
        (
            rows[2],
            Outcome::Dead {
                error: "400 Bad Request".into(),
            },
        ),
        (
            rows[3],
            Outcome::Deferred {
                next_run_at: park_at,
            },
        ),
    ];
    let written = store
        .write_claimed_outcomes("holder", &outcomes)
        .await
        .unwrap();
    assert_eq!(written, rows);

    type Columns = (
        String,
        i32,
        Option<String>,
        bool,
        DateTime<Utc>,
        bool,
        Option<String>,
    );
    let state: Vec<Columns> = client
        .query(
            "SELECT status, attempts, last_error, last_error_at > now() - interval '1 minute',
                    next_run_at, delivered_at IS NOT NULL, claim_token
               FROM outbox_event ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
                r.get(6),
            )
        })
        .collect();
    let old = Some("old error".to_string());
    let (done, retry, dead, parked) = (&state[0], &state[1], &state[2], &state[3]);
    assert_eq!(
        (&done.0, done.1, &done.2, done.3, done.5, &done.6),
        (&"done".to_string(), 2, &old, false, true, &None)
    );
    assert_eq!(
        (&retry.0, retry.1, retry.2.as_deref(), retry.3, retry.5),
        (
            &"retry".to_string(),
            2,
            Some("503 Service Unavailable"),
            true,
            false
        )
    );
    assert!((retry.4 - retry_at).num_milliseconds().abs() < 1);
    assert_eq!(
        (&dead.0, dead.1, dead.2.as_deref(), dead.3, dead.5),
        (&"dead".to_string(), 2, Some("400 Bad Request"), true, false)
    );
    assert_eq!(
        (&parked.0, parked.1, &parked.2, parked.3, parked.5),
        (&"retry".to_string(), 1, &old, false, false),
        "a deferral is not an attempt"
    );
    assert!((parked.4 - park_at).num_milliseconds().abs() < 1);
    assert!(state.iter().all(|s| s.6.is_none()), "claims released");

    // Settled rows are no longer claimed: a repeated write changes nothing.
    assert!(store
        .write_claimed_outcomes("holder", &[(rows[0], Outcome::Dead { error: "x".into() })])
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store
            .next_due(false)
            .await
            .unwrap()
            .map(|t| t.timestamp_micros()),
        Some(retry_at.timestamp_micros())
    );
}

/// Given rows inserted with headers (string and non-string values), odd JSON payloads, no
/// headers, and malformed headers, the sweeper's events equal what the stream mapping makes
/// of the same rows (decoded from the slot), and a malformed row comes back with the same
/// error instead of failing the claim.
#[tokio::test]
async fn claimed_rows_map_exactly_like_the_stream() {
    use dispatchbox::source::pgoutput::{decode, DecodeContext, PgOutputMessage};
    use dispatchbox::source::relation::{InsertOutcome, OutboxMapper, OutboxTable};

    let cluster = TestCluster::start();
    let (db, store) = migrated(&cluster, "mapping", 6).await;
    let client = cluster.connect(&db).await;
    // The replication client pins these; a synchronous commit makes the rows decodable.
    client
        .batch_execute(
            "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET synchronous_commit = on;
",
        )
        .await
        .unwrap();
    client
        .execute(
            "SELECT pg_create_logical_replication_slot('sweep_map', 'pgoutput')",
            &[],
        )
        .await
        .unwrap();
    client
        .batch_execute(
            r#"INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload, headers,
                                         next_run_at)
               VALUES ('cart', 'c-1', 'Added', '{"sku": "ß-1", "qty": 2.50, "n": [1, {"b": null, "a": 1e3}]}',
                       '{"traceparent": "00-abc-def-01", "x-n": 1, "a": "é"}', now() + interval '1 hour'),
                      ('cart', 'c-2', 'Added', '"tab\tand \u00e9"', NULL, now()),
                      ('cart', 'c-3', 'Removed', 'null', '[1]', now()),
                      ('cart', 'c-4', 'Removed', '[]', '{}', now());"#,
        )
        .await
        .unwrap();

    let data = client
        .query(
            "SELECT data FROM pg_logical_slot_peek_binary_changes('sweep_map', NULL, NULL,
                 'proto_version', '1', 'publication_names', 'dispatchbox')",
            &[],
        )
        .await
        .unwrap();
    let mut mapper = OutboxMapper::new(OutboxTable::new("public", "outbox_event"));
    let mut streamed = Vec::new();
    for row in data {
        let bytes: Vec<u8> = row.get(0);
        match decode(bytes.into(), &DecodeContext::new(1)).unwrap() {
            PgOutputMessage::Relation(relation) => mapper.on_relation(relation).unwrap(),
            PgOutputMessage::Insert(insert) => match mapper.map_insert(&insert).unwrap() {
                InsertOutcome::Event(event) => streamed.push(Ok(event)),
                InsertOutcome::Dead(error) => streamed.push(Err(error)),
                InsertOutcome::Ignored => {}
            },
            _ => {}
        }
    }
    assert_eq!(streamed.len(), 4);

    // Make the scheduled row due so all four can be claimed.
    client
        .execute("UPDATE outbox_event SET next_run_at = now()", &[])
        .await
        .unwrap();
    let all_ids: Vec<i64> = client
        .query("SELECT id FROM outbox_event", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let claimed = store
        .claim_due(
            "sweeper",
            &ClaimSettings {
                missed_pending: all_ids,
                ..settings()
            },
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), 4);
    for (claim, stream) in claimed.iter().zip(&streamed) {
        match (&claim.event, stream) {
            (Ok(swept), Ok(streamed)) => {
                // The stream saw the original next_run_at; the sweeper sees the one it
                // claimed at. Everything delivered must be byte-identical.
                let streamed = dispatchbox::event::OutboxEvent {
                    next_run_at: swept.next_run_at,
                    ..streamed.clone()
                };
                assert_eq!(swept, &streamed);
            }
            (Err(swept), Err(streamed)) => assert_eq!(swept, streamed),
            (swept, streamed) => panic!("sweeper {swept:?} but stream {streamed:?}"),
        }
    }
    let first = claimed[0].event.as_ref().unwrap();
    assert_eq!(
        first.headers,
        vec![
            ("a".to_string(), "é".to_string()),
            ("traceparent".to_string(), "00-abc-def-01".to_string())
        ]
    );
    let bad = claimed[2].event.as_ref().unwrap_err();
    assert_eq!(bad.id, Some(claimed[2].id));
    assert!(bad.reason.contains("headers"), "{bad}");
    assert!(claimed[3].event.as_ref().unwrap().headers.is_empty());
}

/// A sighting lists due pending rows in id order (never attempted apart from requeued
/// ones), the ones due first when limited, and the WAL positions
/// that bound them: every listed row committed before `wal_position`, so a slot created
/// afterwards starts at or past it (and the slot is absent before that).
#[tokio::test]
async fn a_sighting_bounds_the_commits_of_the_pending_rows_it_lists() {
    let cluster = TestCluster::start();
    let (db, store) = migrated(&cluster, "sighting", 6).await;
    let client = cluster.connect(&db).await;

    let a = row(&client, "a", "pending", 0.0, 0.0).await;
    let _scheduled = row(&client, "b", "pending", 3600.0, 0.0).await;
    let requeued = row(&client, "c", "pending", 0.0, 0.0).await;
    client
        .execute(
            "UPDATE outbox_event SET last_error_at = now() WHERE id = $1",
            &[&requeued],
        )
        .await
        .unwrap();
    let _retry = row(&client, "d", "retry", -1.0, 0.0).await;
    let _done = row(&client, "e", "done", -1.0, 0.0).await;
    let b = row(&client, "f", "pending", -1.0, 0.0).await;
    let c = row(&client, "g", "pending", -1.0, 0.0).await;

    let first = store.sight_pending("sighting_slot", 100).await.unwrap();
    assert_eq!(first.ids, vec![a, b, c]);
    assert_eq!(
        first.requeued,
        vec![requeued],
        "attempted before: returned from dead"
    );
    assert_eq!(first.stream_settled, None, "no slot yet");
    // The limit takes the rows due first.
    let limited = store.sight_pending("sighting_slot", 2).await.unwrap();
    assert_eq!(limited.ids, vec![b, c]);
    assert!(limited.requeued.is_empty());
    assert!(limited.wal_position >= first.wal_position);

    client
        .execute(
            "SELECT pg_create_logical_replication_slot('sighting_slot', 'pgoutput')",
            &[],
        )
        .await
        .unwrap();
    let second = store.sight_pending("sighting_slot", 100).await.unwrap();
    let settled = second.stream_settled.expect("the slot exists");
    assert!(
        settled >= first.wal_position,
        "a slot created after the sighting starts at {settled}, before {}",
        first.wal_position
    );
    assert!(second.wal_position >= settled);
    client
        .execute("SELECT pg_drop_replication_slot('sighting_slot')", &[])
        .await
        .unwrap();
}
