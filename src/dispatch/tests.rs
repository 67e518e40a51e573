#![allow(clippy::unwrap_used)]

//! The dispatcher's decisions against an in-memory outbox ([`memory`]) and an in-memory
//! sink, with paused time: what it delivers, skips, parks and unblocks.

use super::*;
use crate::flow::budget::ByteBudget;
use crate::lsn::Lsn;
use crate::sink::memory::MemorySink;
use crate::source::progress::Progress;
use memory::{Asked, MemoryDispatchStore};
use tokio::task::JoinHandle;

const GRACE: Duration = Duration::from_secs(30);

/// A running dispatcher, its inputs and everything it talks to.
struct Harness {
    work: mpsc::Sender<Work>,
    settlements: mpsc::Receiver<Settlement>,
    sink: MemorySink,
    store: MemoryDispatchStore,
    blocked: BlockedAggregates,
    progress: Progress,
    budget: ByteBudget,
    next_lsn: u64,
    task: JoinHandle<()>,
}

impl Harness {
    fn start(ordering: bool, store: MemoryDispatchStore) -> Self {
        let sink = MemorySink::default();
        let deliverer = Deliverer::to_memory(&sink);
        let (work, input) = mpsc::channel(100);
        let (tx, settlements) = mpsc::channel(100);
        let blocked = BlockedAggregates::default();
        let task = tokio::spawn(run(
            input,
            deliverer,
            store.clone(),
            blocked.clone(),
            tx,
            DispatchConfig {
                max_in_flight: 100,
                ordering,
                shutdown_timeout: Duration::from_secs(1),
                replay_grace: GRACE,
            },
            CancellationToken::new(),
        ));
        Self {
            work,
            settlements,
            sink,
            store,
            blocked,
            progress: Progress::new(Lsn(0)),
            budget: ByteBudget::new(1 << 20),
            next_lsn: 0,
            task,
        }
    }

    /// Streams event `id` of aggregate `("order", aggregate)`, in a transaction of its
    /// own; `replayed`: committed before the stream connected.
    fn stream(&mut self, id: i64, aggregate: &str, replayed: bool) {
        self.next_lsn += 10;
        let t = self.progress.begin(Lsn(self.next_lsn)).unwrap();
        let ack = self.progress.event(t);
        self.progress.commit(t, Lsn(self.next_lsn + 5));
        let event = Arc::new(OutboxEvent {
            id,
            aggregate_type: "order".to_owned(),
            aggregate_id: aggregate.to_owned(),
            event_type: "order.placed".to_owned(),
            payload: bytes::Bytes::from_static(b"{}"),
            headers: Vec::new(),
            created_at: Utc::now(),
            next_run_at: None,
        });
        let held = self.budget.try_acquire(event.held_bytes()).unwrap();
        // try_send: everything streamed before the test waits is queued at once, as
        // behind a fast stream.
        self.work
            .try_send(Work::Deliver {
                event,
                ack,
                committed_at: None,
                held,
                replayed,
            })
            .unwrap();
    }

    /// The next settlement the dispatcher hands to the status writer.
    async fn settlement(&mut self) -> Settlement {
        tokio::time::timeout(Duration::from_secs(5), self.settlements.recv())
            .await
            .expect("a settlement within 5 s")
            .expect("the dispatcher is running")
    }

    /// Every ack streamed so far is settled: the flush position passed them all.
    fn all_settled(&self) -> bool {
        self.progress.feedback().flush == Lsn(self.next_lsn + 5)
    }

    async fn stop(self) {
        drop(self.work);
        self.task.await.unwrap();
    }
}

/// `(id, status, deferred)` of a settlement.
fn summary(settlement: &Settlement) -> (i64, &'static str, bool) {
    (
        settlement.id,
        settlement.outcome.status(),
        settlement.outcome.is_deferred(),
    )
}

/// The `dispatchbox_replay_skipped_total` counter (only one test of the crate bumps it).
fn replay_skipped_total() -> u64 {
    let text = metrics::render().unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix("dispatchbox_replay_skipped_total "))
        .map_or(0, |value| value.trim().parse().unwrap())
}

/// Given four replayed events whose rows 1 and 3 an earlier run settled, when they
/// arrive, then one query asks about all four; 1 and 3 are skipped (not delivered,
/// acks settled, counted), 2 and 4 are parked for the sweeper after the replay grace,
/// and the live event behind them is delivered.
#[tokio::test(start_paused = true)]
async fn replayed_events_whose_rows_are_settled_are_skipped_and_the_rest_parked() {
    let store = MemoryDispatchStore::default();
    store.settle([1, 3]);
    let skipped_before = replay_skipped_total();
    let mut h = Harness::start(true, store);
    for id in 1..=4 {
        h.stream(id, &format!("a{id}"), true);
    }
    h.stream(5, "a5", false);

    let before = Utc::now();
    let mut settled = Vec::new();
    for _ in 0..3 {
        settled.push(h.settlement().await);
    }
    let after = Utc::now();
    let summaries: Vec<_> = settled.iter().map(summary).collect();
    assert_eq!(
        summaries,
        [(2, "retry", true), (4, "retry", true), (5, "done", false)]
    );
    let grace = chrono::Duration::from_std(GRACE).unwrap();
    for parked in &settled[..2] {
        let due = parked.outcome.next_run_at().unwrap();
        assert!(due >= before + grace && due <= after + grace, "{due}");
    }
    assert_eq!(h.sink.handed(), [5]);
    assert_eq!(h.store.asked(), [Asked::SettledAmong(vec![1, 2, 3, 4])]);
    assert_eq!(replay_skipped_total() - skipped_before, 2);
    // The acks handed on settle with their writes; 1 and 3 were settled by the
    // dispatcher itself.
    for settlement in settled {
        settlement.ack.unwrap().settle();
    }
    assert!(h.all_settled());
    h.stop().await;
}

/// Given a replayed event whose row is already in `retry` (another relay, cut off from the
/// slot by a database restart, failed it and wrote that after this relay connected and
/// loaded its blocked aggregates), when a later event of its aggregate streams live, then
/// the replayed event is skipped but its aggregate is blocked: the live event is parked
/// behind it for the sweeper, never delivered ahead of it.
#[tokio::test(start_paused = true)]
async fn a_replayed_event_found_waiting_in_its_row_blocks_its_aggregate() {
    let store = MemoryDispatchStore::default();
    store.settle([1]);
    store.waiting([1]);
    store.backlog("order", "a");
    let mut h = Harness::start(true, store);
    h.stream(1, "a", true);
    h.stream(2, "a", false);
    h.stream(3, "b", false);
    let first = h.settlement().await;
    let second = h.settlement().await;
    let mut summaries = [summary(&first), summary(&second)];
    summaries.sort();
    assert_eq!(summaries, [(2, "retry", true), (3, "done", false)]);
    assert_eq!(h.sink.handed(), [3]);
    h.stop().await;
}

/// Given a blocked aggregate whose backlog lookup is slow, when the stream breaks while an
/// event of it waits for that answer and the answer then says "drained", then that event
/// is not delivered: it is sent again on the next stream (to whichever relay holds the
/// slot), and delivering this copy could overtake what the new stream parks.
#[tokio::test(start_paused = true)]
async fn an_event_whose_stream_broke_while_its_aggregate_was_checked_is_not_delivered() {
    let store = MemoryDispatchStore::default();
    let gate = store.gate_backlog();
    let mut h = Harness::start(true, store);
    h.blocked.block("order", "a");
    h.stream(1, "a", false);
    // The dispatcher takes event 1 and waits for the database's answer.
    while h.store.asked().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    h.progress.forget_unsettled();
    gate.add_permits(1);
    h.stream(2, "b", false);
    let settlement = h.settlement().await;
    assert_eq!(summary(&settlement), (2, "done", false));
    assert_eq!(
        h.sink.handed(),
        [2],
        "event 1 was delivered after its stream broke"
    );
    h.stop().await;
}

/// Given replayed events and a database that cannot be asked, when they arrive, then
/// none is skipped (not knowing is no reason to lose one): all are parked for the
/// sweeper, none is delivered at once.
#[tokio::test(start_paused = true)]
async fn replayed_events_that_cannot_be_looked_up_are_all_parked() {
    let store = MemoryDispatchStore::default();
    store.settle([1]);
    store.fail();
    let mut h = Harness::start(false, store);
    h.stream(1, "a", true);
    h.stream(2, "b", true);
    let first = h.settlement().await;
    let second = h.settlement().await;
    assert_eq!(
        [summary(&first), summary(&second)],
        [(1, "retry", true), (2, "retry", true)]
    );
    assert!(h.sink.handed().is_empty());
    h.stop().await;
}

/// Given ordering on and three events of aggregate `a` whose first delivery is still
/// out, when it fails, then the first goes to `retry` and the two behind it are parked
/// in their rows in commit order, never handed to the sink; the aggregate stays
/// blocked while those writes are in flight (no question to the database), and
/// aggregate `b` flows meanwhile.
#[tokio::test(start_paused = true)]
async fn a_failed_event_parks_the_later_events_of_its_aggregate() {
    let mut h = Harness::start(true, MemoryDispatchStore::default());
    let first = h.sink.hold(1);
    h.stream(1, "a", false);
    h.stream(2, "a", false);
    h.stream(3, "a", false);
    h.stream(4, "b", false);

    let other = h.settlement().await;
    assert_eq!(summary(&other), (4, "done", false));
    assert_eq!(h.sink.handed(), [1, 4], "2 and 3 wait behind 1");

    first
        .send(Err(DeliveryError::retryable("broker unavailable")))
        .unwrap();
    let failed = h.settlement().await;
    let parked = [h.settlement().await, h.settlement().await];
    assert_eq!(summary(&failed), (1, "retry", false));
    assert_eq!(
        parked.iter().map(summary).collect::<Vec<_>>(),
        [(2, "retry", true), (3, "retry", true)]
    );
    assert!(failed.written.is_some() && parked.iter().all(|p| p.written.is_some()));
    assert_eq!(h.sink.handed(), [1, 4]);
    assert!(h.blocked.contains(&AggregateKey::new("order", "a")));

    // A later event of `a` is parked too, while the writes above are in flight.
    h.stream(5, "a", false);
    assert_eq!(summary(&h.settlement().await), (5, "retry", true));
    assert_eq!(h.sink.handed(), [1, 4]);
    assert!(h.store.asked().is_empty());
    h.stop().await;
}

/// Given three blocked aggregates with no park in flight, when an event of each
/// arrives, then the database is asked once per aggregate: the one without a backlog
/// is unblocked and its event delivered; the one with a backlog, and the one the
/// database could not answer for, keep parking their events.
#[tokio::test(start_paused = true)]
async fn a_blocked_aggregate_is_released_only_when_its_backlog_drained() {
    let store = MemoryDispatchStore::default();
    store.backlog("order", "waiting");
    let mut h = Harness::start(true, store);
    for aggregate in ["drained", "waiting"] {
        h.blocked.block("order", aggregate);
    }
    h.stream(1, "drained", false);
    h.stream(2, "waiting", false);
    let settled = [h.settlement().await, h.settlement().await];
    let mut summaries: Vec<_> = settled.iter().map(summary).collect();
    summaries.sort();
    assert_eq!(summaries, [(1, "done", false), (2, "retry", true)]);
    assert_eq!(h.sink.handed(), [1]);
    assert!(!h.blocked.contains(&AggregateKey::new("order", "drained")));
    assert!(h.blocked.contains(&AggregateKey::new("order", "waiting")));
    let backlog = |aggregate: &str| Asked::Backlog("order".into(), aggregate.into());
    assert_eq!(h.store.asked(), [backlog("drained"), backlog("waiting")]);

    h.blocked.block("order", "unknown");
    h.store.fail();
    h.stream(3, "unknown", false);
    assert_eq!(summary(&h.settlement().await), (3, "retry", true));
    assert!(h.blocked.contains(&AggregateKey::new("order", "unknown")));
    assert_eq!(h.store.asked().last(), Some(&backlog("unknown")));
    assert_eq!(h.sink.handed(), [1]);
    h.stop().await;
}
