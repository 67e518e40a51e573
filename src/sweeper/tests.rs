#![allow(clippy::unwrap_used)]

use super::*;

fn sighting(ids: &[i64], wal_position: u64) -> PendingSighting {
    PendingSighting {
        ids: ids.to_vec(),
        requeued: Vec::new(),
        wal_position: Lsn(wal_position),
        stream_settled: None,
    }
}

const GRACE: Duration = Duration::from_secs(300);

#[test]
fn a_row_is_missed_once_the_stream_settles_past_its_first_sighting() {
    let t0 = Instant::now();
    let mut sightings = Sightings::default();
    sightings.observe(&sighting(&[1, 2], 100), t0);
    // Seen again later at a higher position: the first sighting counts.
    sightings.observe(&sighting(&[1, 2, 3], 200), t0 + Duration::from_secs(1));
    let now = t0 + Duration::from_secs(2);
    assert!(sightings.missed(None, GRACE, now).is_empty());
    assert!(sightings.missed(Some(Lsn(99)), GRACE, now).is_empty());
    assert_eq!(sightings.missed(Some(Lsn(100)), GRACE, now), vec![1, 2]);
    assert_eq!(sightings.missed(Some(Lsn(250)), GRACE, now), vec![1, 2, 3]);
}

#[test]
fn a_row_is_missed_after_the_grace_period_from_its_first_sighting() {
    let t0 = Instant::now();
    let mut sightings = Sightings::default();
    sightings.observe(&sighting(&[7], 100), t0);
    sightings.observe(&sighting(&[7, 8], 200), t0 + Duration::from_secs(10));
    let missed = |after: u64| sightings.missed(None, GRACE, t0 + Duration::from_secs(after));
    assert!(missed(299).is_empty());
    assert_eq!(missed(300), vec![7]);
    assert_eq!(missed(310), vec![7, 8]);
}

#[test]
fn rows_no_longer_pending_are_forgotten_and_sighted_anew_if_they_return() {
    let t0 = Instant::now();
    let mut sightings = Sightings::default();
    sightings.observe(&sighting(&[1, 2], 100), t0);
    sightings.observe(&sighting(&[2], 200), t0 + Duration::from_secs(1));
    // A zero grace lists every remembered row.
    assert_eq!(sightings.missed(None, Duration::ZERO, t0), vec![2]);
    sightings.observe(&sighting(&[1, 2], 300), t0 + Duration::from_secs(2));
    assert_eq!(sightings.missed(Some(Lsn(200)), GRACE, t0), vec![2]);
    sightings.observe(&sighting(&[], 400), t0 + Duration::from_secs(3));
    assert!(sightings.missed(None, Duration::ZERO, t0).is_empty());
}

// The sweeper's decisions against an in-memory outbox (`memory`) and an in-memory
// sink, with paused time: what it claims, delivers and writes, how long it retries a
// write, when it renews leases and when it wakes.

use crate::sink::memory::MemorySink;
use crate::sink::DeliveryError;
use memory::{MemorySweepStore, Method};
use tokio::task::JoinHandle;

fn config() -> SweepConfig {
    SweepConfig {
        interval: Duration::from_secs(60),
        grace: GRACE,
        slot: "dispatchbox".to_owned(),
        batch: 100,
        lease: Duration::from_secs(30),
        ordering: false,
        budget: ByteBudget::new(1 << 20),
    }
}

/// A sweeper running against `store`, delivering to `sink`.
struct Running {
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    fn start(store: &MemorySweepStore, sink: &MemorySink, config: SweepConfig) -> Self {
        let deliverer = Deliverer::to_memory(sink);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(
            store.clone(),
            deliverer,
            BlockedAggregates::default(),
            config,
            Arc::new(Notify::new()),
            shutdown.clone(),
        ));
        Self { shutdown, task }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap();
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

/// Sweeps so far (each starts with one look at the pending rows).
fn sweeps(store: &MemorySweepStore) -> usize {
    store.calls(Method::SightPending).len()
}

fn claims(store: &MemorySweepStore) -> Vec<Vec<i64>> {
    store
        .calls(Method::ClaimRows)
        .into_iter()
        .map(|c| c.ids)
        .collect()
}

/// Given a due retry, an expired lease, a retry due in an hour, a due row that cannot
/// form an event, a due row whose delivery fails, and a pending row of the stream's,
/// when the sweeper runs, then it claims the four due rows (and claims again until
/// nothing is due), delivers the three events, writes every outcome under its token
/// and leaves the other rows alone.
#[tokio::test(start_paused = true)]
async fn due_rows_are_claimed_delivered_and_their_outcomes_written() {
    let t0 = Instant::now();
    let store = MemorySweepStore::default();
    store.insert(1, "a", "retry", t0);
    store.insert(2, "b", "processing", t0);
    store.insert(3, "c", "retry", t0 + Duration::from_secs(3600));
    store.insert(4, "d", "retry", t0);
    store.break_row(4);
    store.insert(5, "e", "retry", t0);
    store.insert(6, "f", "pending", t0);
    let sink = MemorySink::default();
    sink.fail(
        5,
        DeliveryError::Retryable {
            reason: "broker unavailable".into(),
            retry_after: Some(Duration::from_secs(60)),
        },
    );
    let sweeper = Running::start(&store, &sink, config());
    until("the sweep to end", Duration::from_secs(1), || {
        !store.calls(Method::NextDue).is_empty()
    })
    .await;

    assert_eq!(claims(&store), [vec![1, 2, 4, 5], vec![]]);
    assert_eq!(sink.handed(), [1, 2, 5]);
    for id in [1, 2] {
        let row = store.row(id);
        assert_eq!((row.status, row.attempts), ("done", 2), "row {id}");
        assert_eq!(row.claim_token, None, "row {id}");
    }
    let broken = store.row(4);
    assert_eq!(broken.status, "dead");
    assert!(broken.last_error.unwrap().contains("headers"));
    let failed = store.row(5);
    assert_eq!((failed.status, failed.attempts), ("retry", 2));
    assert_eq!(failed.last_error.as_deref(), Some("broker unavailable"));
    assert!(
        failed.due >= t0 + Duration::from_secs(59),
        "retry-after kept"
    );
    let later = store.row(3);
    assert_eq!((later.status, later.attempts), ("retry", 1));
    assert_eq!(
        store.row(6).status,
        "pending",
        "the stream's until the grace"
    );
    let writes = store.calls(Method::WriteClaimedOutcomes);
    assert_eq!(writes.len(), 1);
    assert_eq!(
        writes[0].ids,
        [4, 1, 2, 5],
        "the dead row first, without delivery"
    );
    sweeper.stop().await;
}

/// Given ordering on and a backlog of three due rows of aggregate `a`, when the
/// sweeper runs, then each claim takes only the head of each aggregate, and it claims
/// again until nothing is due: `a` drains in id order within one sweep.
#[tokio::test(start_paused = true)]
async fn with_ordering_a_backlog_drains_head_first_within_one_sweep() {
    let t0 = Instant::now();
    let store = MemorySweepStore::default();
    for id in 1..=3 {
        store.insert(id, "a", "retry", t0);
    }
    store.insert(4, "b", "retry", t0);
    let sink = MemorySink::default();
    let sweeper = Running::start(
        &store,
        &sink,
        SweepConfig {
            ordering: true,
            ..config()
        },
    );
    until("the sweep to end", Duration::from_secs(1), || {
        !store.calls(Method::NextDue).is_empty()
    })
    .await;
    assert_eq!(claims(&store), [vec![1, 4], vec![2], vec![3], vec![]]);
    assert_eq!(sink.handed(), [1, 4, 2, 3]);
    assert_eq!(sweeps(&store), 1);
    sweeper.stop().await;
}

/// Given a pending row the stream does not settle, when the sweeper first sees it,
/// then it leaves the row to the stream; once the row has been seen pending for the
/// grace period it claims it as missed (with ordering: after asking for its aggregate,
/// which it holds blocked meanwhile) and delivers it.
#[tokio::test(start_paused = true)]
async fn a_pending_row_is_the_stream_s_until_the_grace_has_passed() {
    let t0 = Instant::now();
    let store = MemorySweepStore::default();
    store.insert(1, "a", "pending", t0);
    let sink = MemorySink::default();
    let sweeper = Running::start(
        &store,
        &sink,
        SweepConfig {
            interval: Duration::from_secs(10),
            grace: Duration::from_secs(15),
            ordering: true,
            ..config()
        },
    );
    tokio::time::sleep_until(t0 + Duration::from_millis(10_500)).await;
    assert_eq!(sweeps(&store), 2);
    assert_eq!(claims(&store), [Vec::<i64>::new(), Vec::new()]);
    assert!(store.calls(Method::AggregatesOf).is_empty());

    tokio::time::sleep_until(t0 + Duration::from_millis(20_500)).await;
    assert_eq!(sweeps(&store), 3);
    assert_eq!(claims(&store)[2], [1]);
    assert_eq!(store.calls(Method::AggregatesOf)[0].ids, [1]);
    assert_eq!(sink.handed(), [1]);
    assert_eq!(store.row(1).status, "done");
    sweeper.stop().await;
}

/// Given a database that fails the outcome write three times transiently, when the
/// sweeper has delivered a row, then it retries the write (100, 200, 400 ms ceilings,
/// equal jitter) instead of leaving the row to a lease expiry and a second delivery.
#[tokio::test(start_paused = true)]
async fn an_outcome_write_that_fails_transiently_is_retried_within_the_lease() {
    let store = MemorySweepStore::default();
    store.insert(1, "a", "retry", Instant::now());
    store.fail_writes(3, "08006");
    let sink = MemorySink::default();
    let sweeper = Running::start(&store, &sink, config());
    until("the row to be written", Duration::from_secs(5), || {
        store.row(1).status == "done"
    })
    .await;

    let tries: Vec<Instant> = store
        .calls(Method::WriteClaimedOutcomes)
        .iter()
        .map(|c| c.at)
        .collect();
    assert_eq!(tries.len(), 4);
    let ms = Duration::from_millis;
    for (gap, ceiling) in tries.windows(2).map(|w| w[1] - w[0]).zip([100, 200, 400]) {
        assert!(gap >= ms(ceiling) / 2 && gap <= ms(ceiling), "{gap:?}");
    }
    assert_eq!(sink.handed(), [1], "delivered once");
    assert_eq!(store.row(1).attempts, 2);
    sweeper.stop().await;
}

/// Given outcome writes that keep failing transiently, when the next retry would
/// start after the lease ends, then the sweeper gives up before the lease ends (the
/// row is another sweeper's then). A failure that is not transient is given up at
/// once. The row stays claimed either way.
#[tokio::test(start_paused = true)]
async fn an_outcome_write_is_given_up_when_the_lease_would_not_cover_a_retry() {
    let store = MemorySweepStore::default();
    store.insert(1, "a", "retry", Instant::now());
    let settings = ClaimSettings {
        batch: 10,
        lease: Duration::from_secs(3),
        missed_pending: Vec::new(),
        ordering: false,
    };
    assert_eq!(store.claim_rows("me", &settings).await.unwrap().len(), 1);
    store.fail_writes(u32::MAX, "08006");
    let started = Instant::now();
    let outcomes = [(1, Outcome::Done)];

    let retrying = write_outcomes(&store, "me", &outcomes, settings.lease);
    let error = tokio::time::timeout(settings.lease * 2, retrying)
        .await
        .expect("given up")
        .unwrap_err();
    assert!(error.is_transient());
    let tries = store.calls(Method::WriteClaimedOutcomes);
    assert!(tries.len() >= 4, "{} tries", tries.len());
    assert!(
        started.elapsed() < settings.lease,
        "{:?}",
        started.elapsed()
    );

    store.fail_writes(1, "42501");
    let started = Instant::now();
    let error = write_outcomes(&store, "me", &outcomes, settings.lease)
        .await
        .unwrap_err();
    assert!(!error.is_transient());
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(
        store.calls(Method::WriteClaimedOutcomes).len(),
        tries.len() + 1
    );

    let row = store.row(1);
    assert_eq!(
        (row.status, row.claim_token.as_deref()),
        ("processing", Some("me"))
    );
}

/// Given one retry due in 10 s and nothing else, when the sweeper has swept once, then
/// it sleeps until that row is due (not the 60 s interval, not a poll), sweeps then,
/// and with nothing left sleeps the whole interval.
#[tokio::test(start_paused = true)]
async fn with_nothing_due_the_sweeper_sleeps_until_the_next_due_time() {
    let t0 = Instant::now();
    let store = MemorySweepStore::default();
    store.insert(1, "a", "retry", t0 + Duration::from_secs(10));
    let sink = MemorySink::default();
    let sweeper = Running::start(&store, &sink, config());
    let at = |ms: u64| t0 + Duration::from_millis(ms);

    tokio::time::sleep_until(at(1)).await;
    assert_eq!((sweeps(&store), claims(&store)), (1, vec![vec![]]));
    tokio::time::sleep_until(at(9_900)).await;
    assert_eq!(sweeps(&store), 1, "asleep until the row is due");
    tokio::time::sleep_until(at(10_200)).await;
    assert_eq!(sweeps(&store), 2);
    assert_eq!(store.row(1).status, "done");

    tokio::time::sleep_until(at(69_900)).await;
    assert_eq!(sweeps(&store), 2, "nothing due: asleep for the interval");
    tokio::time::sleep_until(at(70_300)).await;
    assert_eq!(sweeps(&store), 3);
    sweeper.stop().await;
}

/// Given a due row another sweeper holds locked, when it cannot be claimed, then the
/// sweeper looks again after a second, not at once and not after the interval.
#[tokio::test(start_paused = true)]
async fn a_due_row_held_by_another_claimer_is_looked_at_again_after_a_second() {
    let store = MemorySweepStore::default();
    store.insert(1, "a", "retry", Instant::now());
    store.lock(1);
    let sink = MemorySink::default();
    let sweeper = Running::start(&store, &sink, config());
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    assert_eq!(sweeps(&store), 6, "at 0, 1, 2, 3, 4 and 5 s");
    assert!(sink.handed().is_empty());
    sweeper.stop().await;
}

/// Given a delivery that takes longer than the lease, when it is out, then the
/// sweeper renews the claim every third of the lease, so no other sweeper takes the
/// row meanwhile; once the outcome is written it stops renewing.
#[tokio::test(start_paused = true)]
async fn a_slow_delivery_keeps_its_lease_renewed() {
    let t0 = Instant::now();
    let store = MemorySweepStore::default();
    store.insert(1, "a", "retry", t0);
    let sink = MemorySink::default();
    let delivery = sink.hold(1);
    let lease = Duration::from_secs(3);
    let sweeper = Running::start(&store, &sink, SweepConfig { lease, ..config() });

    tokio::time::sleep_until(t0 + Duration::from_millis(3_500)).await;
    let renewals = store.calls(Method::RenewClaims);
    let at: Vec<Duration> = renewals.iter().map(|c| c.at - t0).collect();
    let s = Duration::from_secs;
    assert_eq!(at, [s(1), s(2), s(3)]);
    assert!(renewals.iter().all(|c| c.ids == [1]));
    let row = store.row(1);
    assert_eq!(row.status, "processing");
    assert_eq!(row.due, t0 + s(3) + lease, "renewed from the last renewal");

    delivery.send(Ok(())).unwrap();
    until("the row to be written", s(1), || {
        store.row(1).status == "done"
    })
    .await;
    tokio::time::sleep(s(5)).await;
    assert_eq!(store.calls(Method::RenewClaims).len(), 3);
    sweeper.stop().await;
}
