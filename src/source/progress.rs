//! Progress: the one owner of the confirmed-flush LSN reported to PostgreSQL.
//!
//! # The rule
//!
//! The flush position sent to the server is the `end_lsn` of the newest committed
//! transaction such that **it and every transaction before it are settled**: each of its
//! events has its outcome (`done`, `retry` or `dead`) durably written on its outbox row.
//! When nothing is open or unsettled at all, the position is the latest keepalive `walEnd`
//! instead (the walsender has already sent every transaction that commits below it, and
//! none is outstanding), so an idle or filtered database does not pin WAL. The reported
//! value never goes backwards, except across a failover ([`Progress::restart`]): positions
//! on another server's WAL history are not comparable, and the slot they go to is new.
//!
//! Why: whatever the slot confirms is never sent again. Confirming a transaction before its
//! events are settled would lose them on a crash; confirming only `Commit.end_lsn` values
//! (never XLogData header positions, which are neither unique nor monotonic) resumes exactly
//! after the last settled transaction. Transactions settle out of order (sinks run
//! concurrently), so a transaction's `end_lsn` becomes reportable only once every earlier
//! transaction has settled too.
//!
//! This module does no I/O. The replication stream registers transactions and events; the
//! status writer settles events through [`Ack`]; the feedback task reads [`Progress::feedback`].

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use crate::lsn::Lsn;

/// Sequence number of a transaction registered with [`Progress`].
pub type TxnSeq = u64;

#[derive(Debug)]
struct Txn {
    seq: TxnSeq,
    /// `Commit.final/commit_lsn` from Begin; used to recognise a re-sent transaction.
    commit_lsn: Lsn,
    /// Set by the Commit message; `None` while the transaction is still being received.
    end_lsn: Option<Lsn>,
    /// Events handed out and not yet settled.
    unsettled: usize,
    /// The commit time Begin announced (for the lag metric only).
    committed_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Default)]
struct State {
    /// Registered transactions in commit order; the front is the oldest unsettled one.
    txns: VecDeque<Txn>,
    next_seq: TxnSeq,
    /// Highest `end_lsn` whose transaction and all earlier ones are settled.
    durable: Lsn,
    /// Latest keepalive `walEnd` (the walsender's sent position).
    keepalive: Lsn,
    /// Highest position received (commit end or keepalive); reported as `write`.
    received: Lsn,
    /// Highest flush position handed out; the value never goes below it.
    reported: Lsn,
    /// While set, the flush position stays where it is (see [`Progress::hold`]).
    held: bool,
}

impl State {
    /// The registered transaction `seq` (`txns` is in `seq` order: a binary search, since
    /// this runs for every event and thousands of transactions may be pending).
    fn txn_mut(&mut self, seq: TxnSeq) -> Option<&mut Txn> {
        let index = self.txns.binary_search_by_key(&seq, |t| t.seq).ok()?;
        self.txns.get_mut(index)
    }

    fn settle_front(&mut self) -> bool {
        let mut advanced = false;
        while let Some(front) = self.txns.front() {
            match front.end_lsn {
                Some(end) if front.unsettled == 0 => {
                    self.durable = self.durable.max(end);
                    self.txns.pop_front();
                    advanced = true;
                }
                _ => break,
            }
        }
        advanced
    }
}

/// Shared progress tracker; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    state: Mutex<State>,
    /// Signalled whenever the reportable position advances (one permit is kept).
    advanced: Notify,
    /// Acks handed out and not yet settled or dropped, of any session (also of
    /// transactions forgotten since): events still being delivered or written.
    acks_out: std::sync::atomic::AtomicUsize,
    /// Bumped whenever unsettled transactions are forgotten ([`Progress::forget_unsettled`],
    /// [`Progress::restart`]): acks of an older epoch are stale. An atomic, so that the
    /// dispatcher's per-event [`Ack::is_live`] takes no lock.
    epoch: std::sync::atomic::AtomicU64,
}

/// Positions for one standby status update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feedback {
    /// Highest position received (`write`).
    pub write: Lsn,
    /// Settled position (`flush` and `apply`).
    pub flush: Lsn,
}

impl Progress {
    /// A tracker that starts from `durable` (the position streaming resumes from).
    pub fn new(durable: Lsn) -> Self {
        let progress = Self::default();
        {
            let mut state = progress.lock();
            state.durable = durable;
            state.reported = durable;
            state.received = durable;
        }
        progress
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state half-updated in a way
        // that breaks the rule (every mutation is a single step), so poisoning is ignored.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a transaction whose Begin announced `commit_lsn`.
    ///
    /// Returns `None` when the transaction is already known (committed before `durable`,
    /// or still pending from before a reconnect): its events must be skipped, they are
    /// already being handled.
    pub fn begin(&self, commit_lsn: Lsn) -> Option<TxnSeq> {
        self.begin_at(commit_lsn, None)
    }

    /// [`Progress::begin`] of a transaction that committed at `committed_at` (what
    /// [`Progress::oldest_unsettled_commit`] reports).
    pub fn begin_at(&self, commit_lsn: Lsn, committed_at: Option<DateTime<Utc>>) -> Option<TxnSeq> {
        let mut state = self.lock();
        if commit_lsn < state.durable
            || state
                .txns
                .iter()
                .any(|t| t.end_lsn.is_some() && t.commit_lsn == commit_lsn)
        {
            return None;
        }
        let seq = state.next_seq;
        state.next_seq += 1;
        state.txns.push_back(Txn {
            seq,
            commit_lsn,
            end_lsn: None,
            unsettled: 0,
            committed_at,
        });
        Some(seq)
    }

    /// Registers one event of transaction `seq`; settle the returned [`Ack`] once the
    /// event's outcome is durable on its row.
    pub fn event(&self, seq: TxnSeq) -> Ack {
        let mut state = self.lock();
        if let Some(txn) = state.txn_mut(seq) {
            txn.unsettled += 1;
        }
        self.inner
            .acks_out
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Ack {
            progress: self.clone(),
            seq,
            epoch: self.inner.epoch.load(std::sync::atomic::Ordering::Acquire),
        }
    }

    /// Records the Commit of transaction `seq`.
    pub fn commit(&self, seq: TxnSeq, end_lsn: Lsn) {
        let mut state = self.lock();
        state.received = state.received.max(end_lsn);
        if let Some(txn) = state.txn_mut(seq) {
            txn.end_lsn = Some(end_lsn);
        }
        if state.settle_front() {
            drop(state);
            self.inner.advanced.notify_one();
        }
    }

    /// Drops a transaction that will never commit on this connection (the stream broke
    /// between Begin and Commit). Its events may still settle; their acks become no-ops.
    /// The server re-sends the whole transaction after reconnecting.
    pub fn abandon_open(&self) {
        let mut state = self.lock();
        state.txns.retain(|t| t.end_lsn.is_some());
        if state.settle_front() {
            drop(state);
            self.inner.advanced.notify_one();
        }
    }

    /// Forgets every transaction not yet settled, when the stream broke: the server sends
    /// them again after the reconnect (from [`Progress::resume_lsn`]), and they are
    /// dispatched again, whichever process holds the slot by then. Acks handed out for
    /// them become no-ops ([`Ack::is_live`] says so), and the dispatcher does not start
    /// deliveries of such events any more: if another relay took the slot meanwhile, it
    /// delivers them, and this process must not race it. The position never moves past a
    /// forgotten transaction: what was reported stays the limit until the stream moves on.
    pub fn forget_unsettled(&self) {
        let mut state = self.lock();
        state.txns.clear();
        state.keepalive = state.reported;
        self.new_epoch();
    }

    fn new_epoch(&self) {
        self.inner
            .epoch
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Forgets every position and transaction: the stream now reads another server's WAL
    /// history (a failover, see [`super::failover`]), on which the old positions mean
    /// nothing and the old transactions are never committed or re-sent. Confirming starts
    /// again from what the new server's slot says (`resume_lsn` is zero until then).
    ///
    /// This is the one exception to "never goes backwards", and it is safe: the positions
    /// reported from now on go to another server's slot. Acks of events handed out before
    /// (still in flight from the old server) become no-ops, so they can never advance the
    /// new slot's position; their rows are still written, and whatever they leave pending
    /// on the new server the sweeper delivers. A hold stays as it is.
    pub fn restart(&self) {
        let mut state = self.lock();
        let next_seq = state.next_seq;
        let held = state.held;
        *state = State {
            next_seq,
            held,
            ..State::default()
        };
        self.new_epoch();
    }

    /// Records a keepalive's `walEnd`. When idle, a newer position is reportable at once,
    /// so waiters of [`Progress::advanced`] are woken: on a busy database with no outbox
    /// traffic this is what keeps the slot close to the end of WAL.
    pub fn keepalive(&self, wal_end: Lsn) {
        let mut state = self.lock();
        state.keepalive = state.keepalive.max(wal_end);
        state.received = state.received.max(wal_end);
        let reportable = state.txns.is_empty() && state.keepalive > state.reported;
        drop(state);
        if reportable {
            self.inner.advanced.notify_one();
        }
    }

    fn settle(&self, seq: TxnSeq) {
        let mut state = self.lock();
        let Some(txn) = state.txn_mut(seq) else {
            return;
        };
        txn.unsettled = txn.unsettled.saturating_sub(1);
        if state.settle_front() {
            drop(state);
            self.inner.advanced.notify_one();
        }
    }

    /// Keeps (`true`) the flush position where it is, or lets it move again (`false`):
    /// while the stream cannot see the outbox's inserts (the table renamed or dropped, or
    /// no longer in the publication), confirming further would tell the server it may
    /// forget WAL the relay never looked at. Settling and delivering go on meanwhile.
    pub fn hold(&self, held: bool) {
        let mut state = self.lock();
        let released = state.held && !held;
        state.held = held;
        drop(state);
        if released {
            self.inner.advanced.notify_one();
        }
    }

    /// The positions to report now. Monotonic: never below a value returned before.
    pub fn feedback(&self) -> Feedback {
        let mut state = self.lock();
        if state.held {
            return Feedback {
                write: state.received.max(state.reported),
                flush: state.reported,
            };
        }
        let candidate = if state.txns.is_empty() {
            state.durable.max(state.keepalive)
        } else {
            state.durable
        };
        state.reported = state.reported.max(candidate);
        Feedback {
            write: state.received.max(state.reported),
            flush: state.reported,
        }
    }

    /// Highest settled commit position (without the idle keepalive rule): where streaming
    /// resumes after a reconnect.
    pub fn resume_lsn(&self) -> Lsn {
        let state = self.lock();
        state.durable.max(state.reported)
    }

    /// The commit time of the oldest transaction received and not yet settled (the one
    /// holding the flush position back), if it announced one; `None` when everything
    /// received is settled. This is how far behind the stream is, in time.
    pub fn oldest_unsettled_commit(&self) -> Option<DateTime<Utc>> {
        let state = self.lock();
        // In commit order, so the first known time is the oldest.
        state.txns.iter().find_map(|t| t.committed_at)
    }

    /// True when no transaction is open or unsettled.
    pub fn is_idle(&self) -> bool {
        self.lock().txns.is_empty()
    }

    /// Events handed out (by this or an earlier session) whose acks are neither settled
    /// nor dropped yet: deliveries and status writes still under way. Zero once everything
    /// this process received has been written or given up.
    pub fn acks_out(&self) -> usize {
        self.inner
            .acks_out
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Resolves when the reportable position has advanced since the last call. Meant for
    /// one waiter (the feedback task): an advance while nobody waits is remembered.
    pub async fn advanced(&self) {
        self.inner.advanced.notified().await;
    }
}

/// Settles one event when its outcome is durable. Dropping an `Ack` without calling
/// [`Ack::settle`] leaves the event unsettled, which holds the flush position back (safe).
#[derive(Debug)]
#[must_use = "an event that is never settled holds the flush position back forever"]
pub struct Ack {
    progress: Progress,
    seq: TxnSeq,
    /// The epoch it was handed out in (see [`Ack::is_live`]).
    epoch: u64,
}

impl Drop for Ack {
    fn drop(&mut self) {
        self.progress
            .inner
            .acks_out
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl Ack {
    /// Marks the event as durably settled on its row.
    pub fn settle(self) {
        self.progress.settle(self.seq);
    }

    /// False once its transaction was forgotten ([`Progress::forget_unsettled`],
    /// [`Progress::restart`]): the stream broke, the event will be sent again, and this
    /// copy must not be delivered. One atomic load: the dispatcher asks for every event.
    pub fn is_live(&self) -> bool {
        self.epoch
            == self
                .progress
                .inner
                .epoch
                .load(std::sync::atomic::Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lsn(v: u64) -> Lsn {
        Lsn(v)
    }

    #[test]
    fn flush_covers_only_a_settled_prefix() {
        let p = Progress::new(lsn(10));
        let t1 = p.begin(lsn(20)).unwrap();
        let a1 = p.event(t1);
        p.commit(t1, lsn(30));
        let t2 = p.begin(lsn(40)).unwrap();
        let a2 = p.event(t2);
        p.commit(t2, lsn(50));

        // The second transaction settles first: nothing is reportable yet.
        a2.settle();
        assert_eq!(p.feedback().flush, lsn(10));
        a1.settle();
        assert_eq!(p.feedback().flush, lsn(50));
        assert!(p.is_idle());
    }

    #[test]
    fn the_lag_is_the_oldest_unsettled_commit() {
        let p = Progress::new(lsn(10));
        let at = |s| DateTime::from_timestamp(s, 0).unwrap();
        assert_eq!(p.oldest_unsettled_commit(), None, "nothing received");
        let t1 = p.begin_at(lsn(20), Some(at(100))).unwrap();
        let a1 = p.event(t1);
        p.commit(t1, lsn(30));
        let t2 = p.begin_at(lsn(40), Some(at(200))).unwrap();
        let a2 = p.event(t2);
        p.commit(t2, lsn(50));
        a2.settle();
        assert_eq!(p.oldest_unsettled_commit(), Some(at(100)));
        a1.settle();
        assert_eq!(p.oldest_unsettled_commit(), None, "caught up");
        let t3 = p.begin_at(lsn(60), Some(at(300))).unwrap();
        assert_eq!(p.oldest_unsettled_commit(), Some(at(300)), "still open");
        p.forget_unsettled();
        assert_eq!(p.oldest_unsettled_commit(), None);
        let _ = t3;
    }

    #[test]
    fn keepalive_is_reported_only_when_idle() {
        let p = Progress::new(lsn(10));
        let t = p.begin(lsn(20)).unwrap();
        let a = p.event(t);
        p.keepalive(lsn(100));
        assert_eq!(p.feedback().flush, lsn(10), "open transaction");
        p.commit(t, lsn(30));
        p.keepalive(lsn(120));
        assert_eq!(p.feedback().flush, lsn(10), "committed but unsettled");
        assert_eq!(p.feedback().write, lsn(120));
        a.settle();
        assert_eq!(p.feedback().flush, lsn(120), "idle: keepalive position");
    }

    #[test]
    fn a_hold_keeps_the_flush_position_until_released() {
        let p = Progress::new(lsn(10));
        p.keepalive(lsn(100));
        assert_eq!(p.feedback().flush, lsn(100));
        p.hold(true);
        let t = p.begin(lsn(120)).unwrap();
        let a = p.event(t);
        p.commit(t, lsn(130));
        a.settle();
        p.keepalive(lsn(200));
        assert_eq!(p.feedback().flush, lsn(100), "held");
        assert_eq!(p.feedback().write, lsn(200), "receiving goes on");
        p.hold(false);
        assert_eq!(p.feedback().flush, lsn(200));
    }

    #[test]
    fn forgotten_transactions_are_sent_again_and_never_passed() {
        let p = Progress::new(lsn(10));
        let t1 = p.begin(lsn(20)).unwrap();
        let a1 = p.event(t1);
        p.commit(t1, lsn(30));
        p.keepalive(lsn(100));
        assert!(a1.is_live());
        p.forget_unsettled();
        assert!(!a1.is_live(), "the stream broke: this copy is stale");
        assert_eq!(
            p.feedback().flush,
            lsn(10),
            "not past the forgotten transaction"
        );
        assert_eq!(p.resume_lsn(), lsn(10));
        // Sent again after the reconnect: a new registration, a new ack.
        let t1 = p.begin(lsn(20)).expect("dispatched again");
        let again = p.event(t1);
        p.commit(t1, lsn(30));
        a1.settle();
        assert_eq!(p.feedback().flush, lsn(10), "the stale ack settles nothing");
        again.settle();
        assert_eq!(p.feedback().flush, lsn(30));
    }

    #[test]
    fn never_goes_backwards() {
        let p = Progress::new(lsn(10));
        p.keepalive(lsn(100));
        assert_eq!(p.feedback().flush, lsn(100));
        // A transaction that commits above the keepalive keeps the flush where it was.
        let t = p.begin(lsn(110)).unwrap();
        let _a = p.event(t);
        p.commit(t, lsn(130));
        assert_eq!(p.feedback().flush, lsn(100));
    }

    #[test]
    fn open_transaction_blocks_later_ones_until_abandoned() {
        let p = Progress::new(lsn(0));
        let t1 = p.begin(lsn(20)).unwrap();
        let a1 = p.event(t1);
        // Stream breaks before Commit: the open transaction is dropped and its ack ignored.
        p.abandon_open();
        a1.settle();
        assert!(p.is_idle());
        assert_eq!(p.feedback().flush, lsn(0));
    }

    #[test]
    fn resent_transactions_are_recognised() {
        let p = Progress::new(lsn(0));
        let t = p.begin(lsn(20)).unwrap();
        let a = p.event(t);
        p.commit(t, lsn(30));
        // Reconnect: the server sends the unsettled transaction again.
        assert_eq!(p.begin(lsn(20)), None);
        a.settle();
        assert_eq!(p.feedback().flush, lsn(30));
        // Already durable: skipped as well.
        assert_eq!(p.begin(lsn(20)), None);
        assert!(p.begin(lsn(40)).is_some());
    }

    #[test]
    fn a_restart_forgets_the_old_server_and_ignores_its_acks() {
        let p = Progress::new(lsn(0));
        let t1 = p.begin(lsn(500)).unwrap();
        let old_settled = p.event(t1);
        p.commit(t1, lsn(600));
        old_settled.settle();
        let t2 = p.begin(lsn(700)).unwrap();
        let old_in_flight = p.event(t2);
        p.commit(t2, lsn(800));
        p.keepalive(lsn(900));
        assert_eq!(p.feedback().flush, lsn(600));

        // Failover: the new server's WAL is at lower positions.
        p.restart();
        assert_eq!(
            p.resume_lsn(),
            Lsn::ZERO,
            "the new slot says where to start"
        );
        assert!(p.is_idle());
        let t3 = p.begin(lsn(100)).unwrap();
        assert_ne!(t3, t2, "sequence numbers are never reused");
        let new_event = p.event(t3);
        p.commit(t3, lsn(150));
        // An ack from the old server settles nothing here.
        old_in_flight.settle();
        assert_eq!(p.feedback().flush, lsn(0));
        new_event.settle();
        assert_eq!(p.feedback().flush, lsn(150));
        // A transaction the old server re-sent is nothing the new one knows.
        assert!(p.begin(lsn(700)).is_some());
    }

    #[test]
    fn empty_transaction_settles_at_commit() {
        let p = Progress::new(lsn(0));
        let t = p.begin(lsn(5)).unwrap();
        p.commit(t, lsn(8));
        assert_eq!(p.feedback().flush, lsn(8));
    }
}
