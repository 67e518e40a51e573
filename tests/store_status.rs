//! The batched status writer against a real PostgreSQL: outcomes land on the rows, acks
//! settle only after the write committed, late-visible and missing rows, a restart.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use dispatchbox::event::Outcome;
use dispatchbox::lsn::Lsn;
use dispatchbox::source::progress::Progress;
use dispatchbox::status::{Settlement, StatusWriter, StatusWriterConfig};
use support::postgres::{eventually, TestCluster};
use support::store::{migrated, pool};

async fn insert_rows(client: &tokio_postgres::Client, n: i64) {
    client
        .execute(
            "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload)
             SELECT 'order', g::text, 'order.created', '{}' FROM generate_series(1, $1::bigint) g",
            &[&n],
        )
        .await
        .unwrap();
}

fn outcome_for(id: i64) -> Outcome {
    match id % 3 {
        0 => Outcome::Done,
        1 => Outcome::Retry {
            error: format!("timeout delivering {id}"),
            next_run_at: Utc::now() + chrono::Duration::hours(1),
        },
        _ => Outcome::Dead {
            error: "permanent: 400 Bad Request".into(),
        },
    }
}

/// One transaction of `n` events committed at `end`; returns its acks in order.
fn transaction(
    progress: &Progress,
    commit: u64,
    end: u64,
    n: usize,
) -> Vec<dispatchbox::source::progress::Ack> {
    let seq = progress.begin(Lsn(commit)).unwrap();
    let acks = (0..n).map(|_| progress.event(seq)).collect();
    progress.commit(seq, Lsn(end));
    acks
}

#[tokio::test]
async fn writes_mixed_outcomes_in_batches_and_settles_every_ack() {
    let cluster = TestCluster::start();
    let (db, store) = migrated(&cluster, "status", 4).await;
    let client = cluster.connect(&db).await;
    insert_rows(&client, 5000).await;

    let progress = Progress::new(Lsn(10));
    // 5000 events plus a duplicate delivery of id 1 (a resent transaction).
    let mut acks = transaction(&progress, 20, 30, 5001);
    let (tx, writer) = StatusWriter::spawn(store, StatusWriterConfig::default());
    let stats = writer.stats();
    tx.send(Settlement {
        id: 1,
        outcome: Outcome::Retry {
            error: "first attempt failed".into(),
            next_run_at: Utc::now(),
        },
        ack: acks.pop(),
        written: None,
    })
    .await
    .unwrap();
    for (id, ack) in (1..=5000).zip(acks) {
        tx.send(Settlement {
            id,
            outcome: outcome_for(id),
            ack: Some(ack),
            written: None,
        })
        .await
        .unwrap();
    }
    drop(tx);
    writer.join().await.unwrap();

    assert_eq!(progress.feedback().flush, Lsn(30), "every ack settled");
    assert!(stats.rows_written() >= 5000);
    assert!(
        stats.batches() <= 100,
        "5000 settlements took {} statements: not batched",
        stats.batches()
    );

    let rows = client
        .query(
            "SELECT id, status, attempts, delivered_at IS NOT NULL, last_error,
                    last_error_at IS NOT NULL, next_run_at > now() + interval '30 minutes',
                    claim_token
               FROM outbox_event ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 5000);
    for row in rows {
        let id: i64 = row.get(0);
        let status: String = row.get(1);
        let attempts: i32 = row.get(2);
        let delivered: bool = row.get(3);
        let last_error: Option<String> = row.get(4);
        let error_at: bool = row.get(5);
        let rescheduled: bool = row.get(6);
        let claim_token: Option<String> = row.get(7);
        let expected = outcome_for(id);
        let expected_status = match expected {
            Outcome::Done => "done",
            Outcome::Retry { .. } | Outcome::Deferred { .. } => "retry",
            Outcome::Dead { .. } => "dead",
        };
        assert_eq!(status, expected_status, "row {id}");
        assert_eq!(attempts, if id == 1 { 2 } else { 1 }, "row {id}");
        assert_eq!(delivered, status == "done", "row {id}");
        assert_eq!(claim_token, None);
        match expected {
            Outcome::Done => assert_eq!((last_error, error_at), (None, false), "row {id}"),
            Outcome::Retry { error, .. } => {
                assert_eq!(last_error, Some(error), "row {id}");
                assert!(error_at && rescheduled, "row {id}");
            }
            Outcome::Dead { error } => {
                assert_eq!(last_error, Some(error), "row {id}");
                assert!(error_at && !rescheduled, "row {id}");
            }
            Outcome::Deferred { .. } => unreachable!("outcome_for never defers"),
        }
    }
}

#[tokio::test]
async fn a_row_that_becomes_visible_late_is_written_before_its_ack_settles() {
    let cluster = TestCluster::start();
    let (db, store) = migrated(&cluster, "race", 4).await;
    let client = cluster.connect(&db).await;

    let progress = Progress::new(Lsn(10));
    let mut acks = transaction(&progress, 20, 30, 1);
    let (tx, writer) = StatusWriter::spawn(store, StatusWriterConfig::default());
    let stats = writer.stats();
    // The WAL (and so the delivery) got ahead of the row's visibility.
    tx.send(Settlement {
        id: 900_001,
        outcome: Outcome::Done,
        ack: acks.pop(),
        written: None,
    })
    .await
    .unwrap();

    // Not a fixed wait: a marker. Once the writer has run its first statement (the missing
    // row's first try), a settlement of a row that exists is sent, with an ack of its own
    // (another `Progress`). The writer takes settlements in order and decides on every row
    // of a statement before it takes more, so once the marker's ack settles, the writer
    // has tried the missing row and decided what to do with it (it must not settle it).
    eventually(
        Duration::from_secs(10),
        "the writer's first statement",
        || {
            let stats = stats.clone();
            async move { (stats.batches() >= 1).then_some(()) }
        },
    )
    .await;
    client
        .execute(
            "INSERT INTO outbox_event (id, aggregate_type, aggregate_id, event_type, payload)
             VALUES (900002, 'order', 'marker', 'order.created', '{}')",
            &[],
        )
        .await
        .unwrap();
    let marker_progress = Progress::new(Lsn(10));
    let mut marker_acks = transaction(&marker_progress, 20, 30, 1);
    tx.send(Settlement {
        id: 900_002,
        outcome: Outcome::Done,
        ack: marker_acks.pop(),
        written: None,
    })
    .await
    .unwrap();
    eventually(
        Duration::from_secs(10),
        "the marker's ack to settle",
        || {
            let marker_progress = marker_progress.clone();
            async move { (marker_progress.feedback().flush == Lsn(30)).then_some(()) }
        },
    )
    .await;
    assert_eq!(
        progress.feedback().flush,
        Lsn(10),
        "settled before the write"
    );
    assert_eq!(stats.rows_waiting(), 1);
    client
        .execute(
            "INSERT INTO outbox_event (id, aggregate_type, aggregate_id, event_type, payload)
             VALUES (900001, 'order', '1', 'order.created', '{}')",
            &[],
        )
        .await
        .unwrap();

    eventually(Duration::from_secs(10), "the ack to settle", || {
        let progress = progress.clone();
        async move { (progress.feedback().flush == Lsn(30)).then_some(()) }
    })
    .await;
    let row = client
        .query_one(
            "SELECT status, attempts, delivered_at IS NOT NULL FROM outbox_event WHERE id = 900001",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "done");
    assert_eq!(row.get::<_, i32>(1), 1);
    assert!(row.get::<_, bool>(2));
    assert_eq!(stats.rows_abandoned(), 0);
    drop(tx);
    writer.join().await.unwrap();
}

#[tokio::test]
async fn a_row_that_never_appears_is_settled_after_the_deadline() {
    let cluster = TestCluster::start();
    let (db, store) = migrated(&cluster, "missing", 4).await;
    let client = cluster.connect(&db).await;
    insert_rows(&client, 1).await;

    let progress = Progress::new(Lsn(10));
    let mut acks = transaction(&progress, 20, 30, 2);
    let deadline = Duration::from_millis(700);
    let (tx, writer) = StatusWriter::spawn(
        store,
        StatusWriterConfig {
            missing_row_deadline: deadline,
            ..StatusWriterConfig::default()
        },
    );
    let stats = writer.stats();
    let started = Instant::now();
    tx.send(Settlement {
        id: 424_242,
        outcome: Outcome::Done,
        ack: acks.pop(),
        written: None,
    })
    .await
    .unwrap();
    // Other rows keep flowing meanwhile.
    tx.send(Settlement {
        id: 1,
        outcome: Outcome::Done,
        ack: acks.pop(),
        written: None,
    })
    .await
    .unwrap();
    eventually(Duration::from_secs(5), "row 1 to be written", || {
        let stats = stats.clone();
        async move { (stats.rows_written() == 1).then_some(()) }
    })
    .await;
    assert!(
        started.elapsed() < deadline,
        "row 1 waited for the missing row"
    );

    eventually(
        Duration::from_secs(10),
        "the missing row to be given up",
        || {
            let progress = progress.clone();
            async move { (progress.feedback().flush == Lsn(30)).then_some(()) }
        },
    )
    .await;
    assert!(
        started.elapsed() >= deadline,
        "given up before the deadline"
    );
    assert_eq!(stats.rows_abandoned(), 1);
    let count: i64 = client
        .query_one("SELECT count(*) FROM outbox_event WHERE id = 424242", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 0);
    drop(tx);
    writer.join().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settlements_survive_a_database_restart() {
    let cluster = Arc::new(TestCluster::start());
    let (db, store) = migrated(&cluster, "restart", 4).await;
    let client = cluster.connect(&db).await;
    insert_rows(&client, 3000).await;
    drop(client);

    let progress = Progress::new(Lsn(10));
    let mut acks = transaction(&progress, 20, 30, 3000);
    let (tx, writer) = StatusWriter::spawn(
        store,
        StatusWriterConfig {
            error_backoff_min: Duration::from_millis(50),
            error_backoff_max: Duration::from_millis(300),
            ..StatusWriterConfig::default()
        },
    );
    let stats = writer.stats();
    acks.reverse();
    for id in 1..=1000 {
        tx.send(Settlement {
            id,
            outcome: Outcome::Done,
            ack: acks.pop(),
            written: None,
        })
        .await
        .unwrap();
    }
    eventually(Duration::from_secs(10), "the first 1000 rows", || {
        let stats = stats.clone();
        async move { (stats.rows_written() == 1000).then_some(()) }
    })
    .await;

    let stopped = cluster.clone();
    tokio::task::spawn_blocking(move || stopped.stop())
        .await
        .unwrap();
    for id in 1001..=3000 {
        tx.send(Settlement {
            id,
            outcome: Outcome::Done,
            ack: acks.pop(),
            written: None,
        })
        .await
        .unwrap();
    }
    eventually(Duration::from_secs(10), "writes to fail while down", || {
        let stats = stats.clone();
        async move { (stats.write_errors() > 0).then_some(()) }
    })
    .await;
    assert_eq!(
        progress.feedback().flush,
        Lsn(10),
        "nothing settles while down"
    );

    let restarted = cluster.clone();
    tokio::task::spawn_blocking(move || restarted.restart())
        .await
        .unwrap();
    drop(tx);
    tokio::time::timeout(Duration::from_secs(60), writer.join())
        .await
        .expect("the writer flushes after the restart")
        .unwrap();

    assert_eq!(progress.feedback().flush, Lsn(30), "every ack settled");
    let client = cluster.connect(&db).await;
    let done: i64 = client
        .query_one(
            "SELECT count(*) FROM outbox_event WHERE status = 'done' AND attempts = 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(done, 3000);
}

/// Given a pending row, a done row and a row a sweeper holds, when each is deferred through
/// the status writer, then only the pending row becomes `retry` (no attempt counted, no error
/// recorded), the others keep their state, every ack settles, and the `written` guard is
/// released only once the write committed.
#[tokio::test]
async fn a_deferral_parks_only_pending_rows_and_releases_its_guard_after_the_write() {
    let cluster = TestCluster::start();
    let (db, store) = migrated(&cluster, "defer", 4).await;
    let client = cluster.connect(&db).await;
    insert_rows(&client, 3).await;
    client
        .batch_execute(
            "UPDATE outbox_event SET status = 'done', attempts = 1, delivered_at = now()
              WHERE id = 2;
             UPDATE outbox_event SET status = 'processing', attempts = 2, claim_token = 'sweeper-a',
                    next_run_at = now() + interval '5 minutes', last_error = 'boom'
              WHERE id = 3;",
        )
        .await
        .unwrap();
    let before: Vec<String> = client
        .query(
            "SELECT row(o.*)::text FROM outbox_event o WHERE id IN (2, 3) ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();

    // Row 1 is locked by another session, so the writer's statement cannot commit yet.
    let mut blocker = cluster.connect(&db).await;
    let lock = blocker.transaction().await.unwrap();
    lock.execute("SELECT 1 FROM outbox_event WHERE id = 1 FOR UPDATE", &[])
        .await
        .unwrap();

    let progress = Progress::new(Lsn(10));
    let mut acks = transaction(&progress, 20, 30, 3);
    let guard = Arc::new(());
    let (tx, writer) = StatusWriter::spawn(store, StatusWriterConfig::default());
    let stats = writer.stats();
    let later = Utc::now() + chrono::Duration::hours(1);
    for id in 1..=3 {
        tx.send(Settlement {
            id,
            outcome: Outcome::Deferred { next_run_at: later },
            ack: acks.pop(),
            written: Some(guard.clone()),
        })
        .await
        .unwrap();
    }
    // Not a fixed wait: until the writer's statement waits for the lock, so the writer has
    // taken the settlements and sent the write that cannot commit yet.
    let blocker_pid: i32 = lock
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    eventually(
        Duration::from_secs(10),
        "the writer's statement to wait for the lock",
        || async {
            let waiting: i64 = client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                      WHERE $1 = ANY(pg_blocking_pids(pid)) AND query ILIKE '%UPDATE%outbox_event%'",
                    &[&blocker_pid],
                )
                .await
                .unwrap()
                .get(0);
            (waiting > 0).then_some(())
        },
    )
    .await;
    assert_eq!(Arc::strong_count(&guard), 4, "released before the write");
    assert_eq!(progress.feedback().flush, Lsn(10));

    lock.rollback().await.unwrap();
    eventually(Duration::from_secs(10), "the guards to be released", || {
        let guard = guard.clone();
        async move { (Arc::strong_count(&guard) == 2).then_some(()) }
    })
    .await;
    assert_eq!(progress.feedback().flush, Lsn(30), "every ack settled");
    assert_eq!(stats.rows_abandoned(), 0);
    assert_eq!(stats.rows_waiting(), 0);

    let row = client
        .query_one(
            "SELECT status, attempts, next_run_at, last_error, last_error_at, delivered_at,
                    claim_token
               FROM outbox_event WHERE id = 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "retry");
    assert_eq!(row.get::<_, i32>(1), 0, "a deferral is not an attempt");
    let next_run_at: chrono::DateTime<Utc> = row.get(2);
    assert!((next_run_at - later).num_milliseconds().abs() < 1);
    assert_eq!(row.get::<_, Option<String>>(3), None);
    assert_eq!(row.get::<_, Option<chrono::DateTime<Utc>>>(4), None);
    assert_eq!(row.get::<_, Option<chrono::DateTime<Utc>>>(5), None);
    assert_eq!(row.get::<_, Option<String>>(6), None);
    let after: Vec<String> = client
        .query(
            "SELECT row(o.*)::text FROM outbox_event o WHERE id IN (2, 3) ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        before, after,
        "settled and claimed rows are not pulled back"
    );
    drop(tx);
    writer.join().await.unwrap();
}

/// Given a deferral whose row is not visible yet, the writer waits for the row like any
/// other outcome and parks it once it appears.
#[tokio::test]
async fn a_deferral_of_a_row_not_yet_visible_waits_for_it() {
    let cluster = TestCluster::start();
    let (db, store) = migrated(&cluster, "defer_late", 4).await;
    let client = cluster.connect(&db).await;

    let progress = Progress::new(Lsn(10));
    let mut acks = transaction(&progress, 20, 30, 1);
    let guard = Arc::new(());
    let (tx, writer) = StatusWriter::spawn(store, StatusWriterConfig::default());
    let stats = writer.stats();
    tx.send(Settlement {
        id: 700_001,
        outcome: Outcome::Deferred {
            next_run_at: Utc::now(),
        },
        ack: acks.pop(),
        written: Some(guard.clone()),
    })
    .await
    .unwrap();
    eventually(Duration::from_secs(5), "the row to wait", || {
        let stats = stats.clone();
        async move { (stats.rows_waiting() == 1).then_some(()) }
    })
    .await;
    assert_eq!(Arc::strong_count(&guard), 2);
    assert_eq!(progress.feedback().flush, Lsn(10));

    client
        .execute(
            "INSERT INTO outbox_event (id, aggregate_type, aggregate_id, event_type, payload)
             VALUES (700001, 'order', '1', 'order.created', '{}')",
            &[],
        )
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "the ack to settle", || {
        let progress = progress.clone();
        async move { (progress.feedback().flush == Lsn(30)).then_some(()) }
    })
    .await;
    assert_eq!(Arc::strong_count(&guard), 1);
    let row = client
        .query_one(
            "SELECT status, attempts FROM outbox_event WHERE id = 700001",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "retry");
    assert_eq!(row.get::<_, i32>(1), 0);
    drop(tx);
    writer.join().await.unwrap();
}

/// Sends `Done` for rows `1..=n` (one transaction of `n` events) and returns the progress
/// the acks settle.
async fn send_done(tx: &tokio::sync::mpsc::Sender<Settlement>, n: i64) -> Progress {
    let progress = Progress::new(Lsn(10));
    let acks = transaction(&progress, 20, 30, n as usize);
    for (id, ack) in (1..=n).zip(acks) {
        tx.send(Settlement {
            id,
            outcome: Outcome::Done,
            ack: Some(ack),
            written: None,
        })
        .await
        .unwrap();
    }
    progress
}

async fn status_and_error(client: &tokio_postgres::Client, id: i64) -> (String, Option<String>) {
    let row = client
        .query_one(
            "SELECT status, last_error FROM outbox_event WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn a_row_the_database_rejects_is_isolated_and_written_dead() {
    let cluster = TestCluster::start();
    let (db, store) = migrated(&cluster, "reject", 4).await;
    let client = cluster.connect(&db).await;
    insert_rows(&client, 200).await;
    // Row 77 may not become done (a rule of the application's, as a CHECK constraint).
    client
        .batch_execute(
            "ALTER TABLE outbox_event ADD CONSTRAINT no_done_77
               CHECK (id <> 77 OR status <> 'done')",
        )
        .await
        .unwrap();

    let (tx, writer) = StatusWriter::spawn(
        store,
        StatusWriterConfig {
            linger: Duration::from_millis(200),
            ..StatusWriterConfig::default()
        },
    );
    let stats = writer.stats();
    let progress = send_done(&tx, 200).await;
    eventually(Duration::from_secs(20), "every ack to settle", || {
        let progress = progress.clone();
        async move { (progress.feedback().flush == Lsn(30)).then_some(()) }
    })
    .await;

    assert_eq!(support::store::count_status(&client, "done").await, 199);
    let (status, error) = status_and_error(&client, 77).await;
    assert_eq!(status, "dead");
    let error = error.unwrap();
    assert!(
        error.contains("could not write this row's status (done; it was delivered)")
            && error.contains("23514"),
        "{error}"
    );
    assert_eq!(stats.rows_rejected(), 1);
    drop(tx);
    writer.join().await.unwrap();
}

#[tokio::test]
async fn a_row_that_cannot_be_written_at_all_is_left_and_the_rest_move_on() {
    let cluster = TestCluster::start();
    let (db, store) = migrated(&cluster, "unwritable", 4).await;
    let client = cluster.connect(&db).await;
    insert_rows(&client, 50).await;
    // Row 13 rejects every change (a trigger of the application's).
    client
        .batch_execute(
            "CREATE FUNCTION freeze_13() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.id = 13 THEN RAISE EXCEPTION 'row 13 is frozen'; END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER freeze_13 BEFORE UPDATE ON outbox_event
               FOR EACH ROW EXECUTE FUNCTION freeze_13();",
        )
        .await
        .unwrap();

    let (tx, writer) = StatusWriter::spawn(store, StatusWriterConfig::default());
    let stats = writer.stats();
    let progress = send_done(&tx, 50).await;
    eventually(Duration::from_secs(20), "every ack to settle", || {
        let progress = progress.clone();
        async move { (progress.feedback().flush == Lsn(30)).then_some(()) }
    })
    .await;
    assert_eq!(support::store::count_status(&client, "done").await, 49);
    assert_eq!(
        status_and_error(&client, 13).await,
        ("pending".into(), None)
    );
    assert_eq!(stats.rows_rejected(), 1);
    let metrics = dispatchbox::telemetry::metrics::render().unwrap();
    assert!(
        metrics.lines().any(|l| l
            .starts_with("dispatchbox_status_rows_rejected_total{written=\"none\"}")
            && !l.ends_with(" 0")),
        "{metrics}"
    );
    drop(tx);
    writer.join().await.unwrap();
}

#[tokio::test]
async fn errors_are_cut_to_fit_a_narrow_column() {
    let cluster = TestCluster::start();
    let (db, store) = migrated(&cluster, "narrow", 4).await;
    let client = cluster.connect(&db).await;
    insert_rows(&client, 2).await;
    // What an ORM makes of the error column.
    client
        .batch_execute("ALTER TABLE outbox_event ALTER COLUMN last_error TYPE varchar(255)")
        .await
        .unwrap();
    // The widths as the relay learns them at start-up: from the preflight checks.
    let names = support::store::default_names();
    let facts =
        dispatchbox::ops::checks::preflight_store(&store, &names, &"dispatchbox".parse().unwrap())
            .await
            .unwrap();
    assert!(
        facts
            .warnings(&names)
            .iter()
            .any(|w| w.to_string().contains("holds at most 255 characters")),
        "check warns about the narrow column"
    );
    let store = store.with_text_widths(facts.text_widths());

    let (tx, writer) = StatusWriter::spawn(store, StatusWriterConfig::default());
    let stats = writer.stats();
    let long = "upstream said: ".to_owned() + &"ü".repeat(1000);
    for id in 1..=2 {
        tx.send(Settlement {
            id,
            outcome: Outcome::Retry {
                error: long.clone(),
                next_run_at: Utc::now(),
            },
            ack: None,
            written: None,
        })
        .await
        .unwrap();
    }
    drop(tx);
    writer.join().await.unwrap();
    for id in 1..=2 {
        let (status, error) = status_and_error(&client, id).await;
        assert_eq!(status, "retry", "written as it was, not rejected");
        let error = error.unwrap();
        assert_eq!(error.chars().count(), 255);
        assert!(error.starts_with("upstream said: üü"), "{error}");
        assert!(
            error.ends_with(dispatchbox::store::widths::TRUNCATION_MARKER),
            "{error}"
        );
    }
    assert_eq!(stats.rows_rejected(), 0);
}

#[tokio::test]
async fn a_writer_that_cannot_write_turns_ready_red_until_it_writes_again() {
    let cluster = TestCluster::start();
    let (db, store) = migrated(&cluster, "stall", 4).await;
    let client = cluster.connect(&db).await;
    insert_rows(&client, 10).await;
    let health = dispatchbox::telemetry::health::Health::new();
    let (tx, writer) = StatusWriter::spawn(
        store,
        StatusWriterConfig {
            stall_timeout: Duration::from_millis(500),
            error_backoff_max: Duration::from_millis(200),
            health: health.clone(),
            ..StatusWriterConfig::default()
        },
    );

    // A statement that blocks: another session holds the table.
    let mut locker = cluster.connect(&db).await;
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE outbox_event IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let progress = send_done(&tx, 5).await;
    let reasons = eventually(Duration::from_secs(10), "the stall to be reported", || {
        let health = health.clone();
        async move { Some(health.problems()).filter(|p| !p.is_empty()) }
    })
    .await;
    assert!(
        reasons[0].starts_with("status writer: nothing written for") && reasons[0].contains("lock"),
        "{reasons:?}"
    );
    assert_eq!(progress.feedback().flush, Lsn(10));
    lock.rollback().await.unwrap();
    eventually(Duration::from_secs(10), "the writer to recover", || {
        let (health, progress) = (health.clone(), progress.clone());
        async move {
            (health.problems().is_empty() && progress.feedback().flush == Lsn(30)).then_some(())
        }
    })
    .await;

    // A statement that fails for the whole table (not because of a row): renamed away.
    client
        .batch_execute("ALTER TABLE outbox_event RENAME TO outbox_event_gone")
        .await
        .unwrap();
    let progress = Progress::new(Lsn(10));
    let ack = transaction(&progress, 20, 30, 1).pop();
    tx.send(Settlement {
        id: 6,
        outcome: Outcome::Done,
        ack,
        written: None,
    })
    .await
    .unwrap();
    let reasons = eventually(
        Duration::from_secs(10),
        "the failure to be reported",
        || {
            let health = health.clone();
            async move { Some(health.problems()).filter(|p| !p.is_empty()) }
        },
    )
    .await;
    assert!(reasons[0].contains("42P01"), "{reasons:?}");
    client
        .batch_execute("ALTER TABLE outbox_event_gone RENAME TO outbox_event")
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "the writer to recover", || {
        let (health, progress) = (health.clone(), progress.clone());
        async move {
            (health.problems().is_empty() && progress.feedback().flush == Lsn(30)).then_some(())
        }
    })
    .await;
    assert_eq!(support::store::count_status(&client, "done").await, 6);
    drop(tx);
    writer.join().await.unwrap();
}

/// The status writes are durable when their commit returns, also on a server whose default
/// is asynchronous commit (as the test clusters' is): a write lost in a crash would let a
/// later event of an aggregate overtake its `retry` row.
#[tokio::test]
async fn the_relays_sessions_commit_synchronously_whatever_the_server_default() {
    let cluster = TestCluster::start();
    let db = cluster.create_database("durable").await;
    let client = cluster.connect(&db).await;
    let default: String = client
        .query_one("SHOW synchronous_commit", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(default, "off", "the test clusters commit asynchronously");
    let pool = pool(&cluster.superuser_url(&db), 1);
    let session = pool.get().await.unwrap();
    let setting: String = session
        .query_one("SHOW synchronous_commit", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(setting, "on");
}
