#![allow(clippy::unwrap_used)]

use super::*;
use crate::lsn::Lsn;
use crate::source::progress::Progress;
use chrono::Utc;

fn settlement(id: i64, outcome: Outcome, ack: Option<Ack>) -> Settlement {
    Settlement {
        id,
        outcome,
        ack,
        written: None,
    }
}

#[test]
fn duplicates_merge_newest_outcome_and_keep_every_ack() {
    let progress = Progress::new(Lsn(0));
    let t = progress.begin(Lsn(1)).unwrap();
    let a1 = progress.event(t);
    let a2 = progress.event(t);
    progress.commit(t, Lsn(2));
    let mut inbox = vec![
        settlement(7, Outcome::Dead { error: "x".into() }, Some(a1)),
        settlement(8, Outcome::Done, None),
        settlement(7, Outcome::Done, Some(a2)),
    ];
    let mut waiting = HashMap::new();
    let batch = collect(&mut inbox, &mut waiting, Instant::now());
    assert_eq!(batch.len(), 2);
    assert_eq!(batch[0].outcome, Outcome::Done);
    assert_eq!(batch[0].attempts, 2);
    for row in batch {
        row.settle();
    }
    assert_eq!(progress.feedback().flush, Lsn(2));
}

#[test]
fn new_settlement_joins_a_waiting_row() {
    let now = Instant::now();
    let mut waiting = HashMap::new();
    let mut row = Row::new(settlement(
        5,
        Outcome::Dead {
            error: "old".into(),
        },
        None,
    ));
    row.missing = Some((now, 1));
    waiting.insert(
        5,
        Waiting {
            row,
            next_try: now + Duration::from_secs(10),
        },
    );
    let mut inbox = vec![settlement(5, Outcome::Done, None)];
    let batch = collect(&mut inbox, &mut waiting, now);
    assert!(waiting.is_empty());
    assert_eq!(batch.len(), 1);
    assert_eq!(batch[0].outcome, Outcome::Done);
    assert!(batch[0].missing.is_some(), "keeps its deadline");
}

#[test]
fn deferrals_count_no_attempt_and_guards_live_until_settled() {
    let guard = Arc::new(());
    let deferred = || Outcome::Deferred {
        next_run_at: Utc::now(),
    };
    let mut inbox = vec![
        Settlement {
            id: 1,
            outcome: deferred(),
            ack: None,
            written: Some(guard.clone()),
        },
        Settlement {
            id: 2,
            outcome: deferred(),
            ack: None,
            written: Some(guard.clone()),
        },
        settlement(
            2,
            Outcome::Retry {
                error: "x".into(),
                next_run_at: Utc::now(),
            },
            None,
        ),
    ];
    let batch = collect(&mut inbox, &mut HashMap::new(), Instant::now());
    assert_eq!(batch[0].attempts, 0);
    assert_eq!(batch[1].attempts, 1);
    assert_eq!(Arc::strong_count(&guard), 3);
    let deferred: Vec<bool> = batch.iter().map(|r| r.outcome.is_deferred()).collect();
    let statuses: Vec<&str> = batch.iter().map(|r| r.outcome.status()).collect();
    assert_eq!(deferred, vec![true, false]);
    assert_eq!(statuses, vec!["retry", "retry"]);
    for row in batch {
        row.settle();
    }
    assert_eq!(Arc::strong_count(&guard), 1);
}

#[tokio::test(start_paused = true)]
async fn linger_waits_for_more_until_the_batch_is_full_or_the_time_is_up() {
    let (tx, mut rx) = mpsc::channel(100);
    let sender = tokio::spawn(async move {
        for id in 0..10 {
            tx.send(settlement(id, Outcome::Done, None)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let mut inbox = Vec::new();
    assert_eq!(rx.recv_many(&mut inbox, 100).await, 1);

    // Full (five rows) after 40 ms: written before the 100 ms are up.
    let started = Instant::now();
    assert!(linger(&mut rx, &mut inbox, 5, Duration::from_millis(100)).await);
    assert_eq!(inbox.len(), 5);
    assert_eq!(started.elapsed(), Duration::from_millis(40));

    // Not full: written when the linger is up, with what arrived meanwhile.
    inbox.clear();
    let started = Instant::now();
    assert!(linger(&mut rx, &mut inbox, 100, Duration::from_millis(25)).await);
    assert_eq!(started.elapsed(), Duration::from_millis(25));
    assert_eq!(inbox.len(), 2, "rows 5 and 6 arrived within the 25 ms");

    // No linger: at once.
    inbox.clear();
    let started = Instant::now();
    assert!(linger(&mut rx, &mut inbox, 100, Duration::ZERO).await);
    assert_eq!(started.elapsed(), Duration::ZERO);

    // Every sender gone: the batch goes out at once and the writer learns it.
    sender.await.unwrap();
    let started = Instant::now();
    assert!(!linger(&mut rx, &mut inbox, 100, Duration::from_secs(1)).await);
    assert!(started.elapsed() < Duration::from_secs(1));
}

// The writer's decisions against an in-memory table (`memory`), with paused time: what
// it writes, what it retries when, and when it settles acks.

use memory::{MemoryStatusStore, Method};

/// One ack per row, each in a transaction of its own: the flush position reaches
/// [`flushed_all`]`(n)` only once every ack is settled.
fn acks(n: usize) -> (Progress, Vec<Ack>) {
    let progress = Progress::new(Lsn(0));
    let acks = (1..=n as u64)
        .map(|i| {
            let t = progress.begin(Lsn(10 * i)).unwrap();
            let ack = progress.event(t);
            progress.commit(t, Lsn(10 * i + 5));
            ack
        })
        .collect();
    (progress, acks)
}

fn flushed_all(n: usize) -> Lsn {
    Lsn(10 * n as u64 + 5)
}

fn config() -> StatusWriterConfig {
    StatusWriterConfig {
        linger: Duration::ZERO,
        ..StatusWriterConfig::default()
    }
}

/// Waits (in paused time) until `done` holds, failing after `within`.
async fn until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "still waiting for {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn gaps(times: &[Instant]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

/// Given a batch of eight rows of which the database rejects one, when it is written,
/// then the batch is split until that row is alone: the seven others are written with
/// their outcome, the lone row is written `dead` with the reason, and every ack settles.
#[tokio::test(start_paused = true)]
async fn a_batch_rejected_because_of_one_row_is_split_and_that_row_is_written_dead() {
    let store = MemoryStatusStore::with_rows(1..=8);
    store.reject_outcome(5);
    let (progress, acks) = acks(8);
    let (tx, writer) = StatusWriter::spawn(store.clone(), config());
    for (id, ack) in (1..=8).zip(acks) {
        tx.send(settlement(id, Outcome::Done, Some(ack)))
            .await
            .unwrap();
    }
    drop(tx);
    let stats = writer.stats();
    writer.join().await.unwrap();

    for id in (1..=8).filter(|&id| id != 5) {
        let row = store.row(id).unwrap();
        assert_eq!((row.status, row.attempts), ("done", 1), "row {id}");
    }
    let rejected = store.row(5).unwrap();
    assert_eq!((rejected.status, rejected.attempts), ("dead", 1));
    let reason = rejected.last_error.unwrap();
    assert!(
        reason
            .starts_with("dispatchbox could not write this row's status (done; it was delivered)")
            && reason.contains("SQLSTATE 23514"),
        "{reason}"
    );
    assert_eq!(progress.feedback().flush, flushed_all(8));
    assert_eq!(stats.rows_rejected(), 1);
    assert_eq!(stats.rows_written(), 7);
    // The whole batch, then halves down to the lone row: 1 + 2·log2(8) statements, of
    // which those with row 5 failed.
    let calls = store.calls();
    let statements: Vec<_> = calls
        .iter()
        .filter(|c| c.method == Method::WriteOutcomes)
        .collect();
    assert_eq!(statements.len(), 7);
    let failed: Vec<usize> = statements
        .iter()
        .filter(|c| !c.ok)
        .map(|c| c.ids.len())
        .collect();
    assert_eq!(failed, [8, 4, 2, 1]);
    assert!(statements.iter().all(|c| c.ok != c.ids.contains(&5)));
    let dead: Vec<&Vec<i64>> = calls
        .iter()
        .filter(|c| c.method == Method::WriteDead)
        .map(|c| &c.ids)
        .collect();
    assert_eq!(dead, [&vec![5]]);
}

/// Given a row whose outcome and whose `dead` are both rejected, when it is written,
/// then the writer gives it up: the row keeps its status, the others are written, and
/// its ack settles anyway (the flush position must not stop behind it).
#[tokio::test(start_paused = true)]
async fn a_row_rejected_even_as_dead_is_given_up_and_its_ack_settled() {
    let store = MemoryStatusStore::with_rows(1..=3);
    store.reject_outcome(2);
    store.reject_dead(2);
    let (progress, acks) = acks(3);
    let (tx, writer) = StatusWriter::spawn(store.clone(), config());
    for (id, ack) in (1..=3).zip(acks) {
        let outcome = Outcome::Dead {
            error: "boom".into(),
        };
        tx.send(settlement(id, outcome, Some(ack))).await.unwrap();
    }
    drop(tx);
    writer.join().await.unwrap();

    assert_eq!(store.row(1).unwrap().status, "dead");
    assert_eq!(store.row(2).unwrap().status, "pending");
    assert_eq!(store.row(3).unwrap().status, "dead");
    assert_eq!(progress.feedback().flush, flushed_all(3));
}

/// Given a row that becomes visible 500 ms after its settlement arrives, when the
/// writer cannot find it, then it tries again after 20, 40, 80, 160 and 320 ms (the
/// delay doubles, no jitter), writes it on the first try after it appeared, and settles
/// the ack only then.
#[tokio::test(start_paused = true)]
async fn a_row_not_visible_yet_is_retried_with_growing_delays_until_it_appears() {
    let start = Instant::now();
    let store = MemoryStatusStore::with_rows([]);
    store.appear_at(1, start + Duration::from_millis(500));
    let (progress, mut acks) = acks(1);
    let (tx, writer) = StatusWriter::spawn(store.clone(), config());
    tx.send(settlement(1, Outcome::Done, acks.pop()))
        .await
        .unwrap();

    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(progress.feedback().flush, Lsn(0), "not written yet");
    assert_eq!(writer.stats().rows_waiting(), 1);

    until("the row to be written", Duration::from_secs(5), || {
        store.row(1).is_some_and(|r| r.status == "done")
    })
    .await;
    let tries = store.outcome_tries(1);
    let ms = Duration::from_millis;
    assert_eq!(tries.first(), Some(&start));
    assert_eq!(gaps(&tries), [ms(20), ms(40), ms(80), ms(160), ms(320)]);
    assert_eq!(progress.feedback().flush, flushed_all(1));
    assert_eq!(writer.stats().rows_waiting(), 0);
    assert_eq!(writer.stats().rows_abandoned(), 0);
    drop(tx);
    writer.join().await.unwrap();
}

/// Given a row that never becomes visible (deleted, or rolled back to a savepoint),
/// when the missing-row deadline passes, then the writer stops trying and settles the
/// ack without a write, so the flush position moves on.
#[tokio::test(start_paused = true)]
async fn a_row_that_never_appears_is_given_up_after_the_deadline() {
    let start = Instant::now();
    let store = MemoryStatusStore::with_rows([]);
    let (progress, mut acks) = acks(1);
    let deadline = Duration::from_secs(2);
    let (tx, writer) = StatusWriter::spawn(
        store.clone(),
        StatusWriterConfig {
            missing_row_deadline: deadline,
            ..config()
        },
    );
    tx.send(settlement(1, Outcome::Done, acks.pop()))
        .await
        .unwrap();

    until("the ack to settle", Duration::from_secs(10), || {
        progress.feedback().flush == flushed_all(1)
    })
    .await;
    let waited = start.elapsed();
    assert!(
        waited >= deadline && waited <= deadline + config().missing_row_retry_max,
        "settled after {waited:?}"
    );
    assert_eq!(writer.stats().rows_abandoned(), 1);
    let tries = store.outcome_tries(1);
    assert!(tries.len() > 2, "{} tries", tries.len());
    assert!(store.row(1).is_none());
    drop(tx);
    writer.join().await.unwrap();
}

/// Given a database that fails every statement transiently, when the writer has rows
/// to write, then it retries with a doubling, capped delay (equal jitter), holds the
/// ack, and after the stall timeout `/ready` names the writer and the error; once a
/// statement passes, the row is written, the ack settles and the problem is cleared.
#[tokio::test(start_paused = true)]
async fn failing_statements_back_off_and_a_stall_is_reported_until_a_write_passes() {
    let store = MemoryStatusStore::with_rows([1]);
    store.set_failing(true);
    let health = Health::new();
    let (progress, mut acks) = acks(1);
    let ms = Duration::from_millis;
    let (tx, writer) = StatusWriter::spawn(
        store.clone(),
        StatusWriterConfig {
            error_backoff_min: ms(100),
            error_backoff_max: ms(400),
            stall_timeout: Duration::from_secs(1),
            health: health.clone(),
            ..config()
        },
    );
    tx.send(settlement(1, Outcome::Done, acks.pop()))
        .await
        .unwrap();

    tokio::time::sleep(ms(600)).await;
    assert!(health.problems().is_empty(), "not stalled yet");
    tokio::time::sleep(ms(1000)).await;
    let problems = health.problems();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("status writer: nothing written for 1s: status update failed")
            && problems[0].contains("SQLSTATE 08006"),
        "{problems:?}"
    );
    assert_eq!(progress.feedback().flush, Lsn(0), "nothing written");
    let tries = store.outcome_tries(1);
    for (n, gap) in gaps(&tries).into_iter().enumerate() {
        let ceiling = [ms(100), ms(200), ms(400)][n.min(2)];
        assert!(
            gap >= ceiling / 2 && gap <= ceiling,
            "retry {} after {gap:?}",
            n + 1
        );
    }
    assert_eq!(writer.stats().write_errors(), tries.len() as u64);

    store.set_failing(false);
    until("the problem to clear", Duration::from_secs(1), || {
        health.problems().is_empty()
    })
    .await;
    assert_eq!(store.row(1).unwrap().status, "done");
    assert_eq!(progress.feedback().flush, flushed_all(1));
    drop(tx);
    writer.join().await.unwrap();
}

/// Given a database that fails three statements transiently, when a row is written,
/// then it is written on the fourth try, well within the stall timeout, so nothing is
/// reported.
#[tokio::test(start_paused = true)]
async fn a_few_transient_failures_are_retried_without_reporting_a_stall() {
    let store = MemoryStatusStore::with_rows([1]);
    store.fail_transiently(3);
    let health = Health::new();
    let (progress, mut acks) = acks(1);
    let (tx, writer) = StatusWriter::spawn(
        store.clone(),
        StatusWriterConfig {
            health: health.clone(),
            ..config()
        },
    );
    tx.send(settlement(1, Outcome::Done, acks.pop()))
        .await
        .unwrap();
    drop(tx);
    let stats = writer.stats();
    writer.join().await.unwrap();

    assert_eq!(store.row(1).unwrap().status, "done");
    assert_eq!(store.outcome_tries(1).len(), 4);
    assert_eq!(stats.write_errors(), 3);
    assert_eq!(progress.feedback().flush, flushed_all(1));
    assert!(health.problems().is_empty());
}

/// Given a statement that does not return (a lock held by another session), when the
/// stall timeout passes, then `/ready` says so, although nothing failed; once the lock
/// is released the row is written and the problem is cleared.
#[tokio::test(start_paused = true)]
async fn a_statement_that_blocks_is_reported_as_a_stall_too() {
    let store = MemoryStatusStore::with_rows([1]);
    store.set_blocked(true);
    let health = Health::new();
    let (progress, mut acks) = acks(1);
    let (tx, writer) = StatusWriter::spawn(
        store.clone(),
        StatusWriterConfig {
            stall_timeout: Duration::from_secs(1),
            health: health.clone(),
            ..config()
        },
    );
    tx.send(settlement(1, Outcome::Done, acks.pop()))
        .await
        .unwrap();

    tokio::time::sleep(Duration::from_millis(1600)).await;
    let problems = health.problems();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("has not returned"), "{problems:?}");

    store.set_blocked(false);
    until("the problem to clear", Duration::from_secs(1), || {
        health.problems().is_empty()
    })
    .await;
    assert_eq!(store.row(1).unwrap().status, "done");
    assert_eq!(progress.feedback().flush, flushed_all(1));
    drop(tx);
    writer.join().await.unwrap();
}
