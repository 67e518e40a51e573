//! Per-aggregate ordering state shared by the dispatcher and the sweeper.
//!
//! An aggregate is *blocked* while some of its events wait in their rows (a failed event
//! waiting for its retry, a scheduled event, or events parked behind those). While blocked,
//! the dispatcher parks every new event of the aggregate in its row instead of delivering
//! it, and the sweeper delivers the backlog head first, in id order. The backlog lives in
//! the rows, never in memory, so a blocked aggregate does not hold the replication slot
//! back. This set is only a cache of "may have a backlog": it is unblocked after the
//! database confirms the aggregate has no waiting rows and no park of ours is in flight.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::event::OutboxEvent;
use crate::event::Outcome;
use crate::telemetry::metrics;

/// An aggregate `(aggregate_type, aggregate_id)` as the dispatcher tracks it in memory: a
/// 64-bit hash of the pair, computed once per event, cheap to copy and compare (the
/// dispatcher looks aggregates up several times per event). Two aggregates whose hashes
/// collide (about one pair in 10^19) are treated as one: their events wait for each other,
/// which delays them but never reorders either.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AggregateKey(u64);

impl AggregateKey {
    /// The key of `(aggregate_type, aggregate_id)`.
    pub fn new(aggregate_type: &str, aggregate_id: &str) -> Self {
        // SipHash with fixed keys: the same pair always gets the same key.
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (aggregate_type, aggregate_id).hash(&mut hasher);
        Self(hasher.finish())
    }
}

/// The ordering key of `event`.
pub fn key_of(event: &OutboxEvent) -> AggregateKey {
    AggregateKey::new(&event.aggregate_type, &event.aggregate_id)
}

/// How often, at most, the database is asked whether a blocked aggregate has drained.
const RECHECK_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug)]
struct Entry {
    /// `(aggregate_type, aggregate_id)`: what the database is asked about.
    names: (String, String),
    /// Cloned into every park settlement of this aggregate; the status writer drops the
    /// clone once the row is written, so a strong count of 1 means no park is in flight.
    parks: Arc<()>,
    checked_at: Option<Instant>,
}

impl Entry {
    fn new(aggregate_type: &str, aggregate_id: &str) -> Self {
        Self {
            names: (aggregate_type.to_owned(), aggregate_id.to_owned()),
            parks: Arc::new(()),
            checked_at: None,
        }
    }
}

/// Aggregates that may have events waiting in their rows. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct BlockedAggregates {
    inner: Arc<Mutex<HashMap<AggregateKey, Entry>>>,
}

impl BlockedAggregates {
    fn lock(&self) -> MutexGuard<'_, HashMap<AggregateKey, Entry>> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Marks the aggregate `(aggregate_type, aggregate_id)` as having a backlog.
    pub fn block(&self, aggregate_type: &str, aggregate_id: &str) {
        self.hold(aggregate_type, aggregate_id);
    }

    /// Blocks the aggregate and returns a guard that keeps it blocked while held, whatever
    /// the database says meanwhile: for rows the sweeper is about to deliver that the
    /// database does not count as a backlog yet (`pending` rows the stream missed).
    pub fn hold(&self, aggregate_type: &str, aggregate_id: &str) -> Arc<()> {
        let mut map = self.lock();
        let entry = map
            .entry(AggregateKey::new(aggregate_type, aggregate_id))
            .or_insert_with(|| Entry::new(aggregate_type, aggregate_id));
        let guard = entry.parks.clone();
        metrics::blocked_aggregates(map.len());
        guard
    }

    /// Blocked aggregates with no park or hold in flight, for asking the database which of
    /// them still have a backlog ([`BlockedAggregates::forget_drained`]).
    pub fn idle(&self) -> Vec<(String, String)> {
        self.lock()
            .values()
            .filter(|entry| Arc::strong_count(&entry.parks) == 1)
            .map(|entry| entry.names.clone())
            .collect()
    }

    /// Unblocks every aggregate of `drained` (the database showed no waiting rows) that
    /// has no park or hold in flight. The set is thereby bounded by the aggregates with
    /// rows waiting, also when no new event of a drained aggregate ever arrives (which is
    /// when the dispatcher would have rechecked it).
    pub fn forget_drained(&self, drained: &[(String, String)]) {
        let mut map = self.lock();
        for (aggregate_type, aggregate_id) in drained {
            let key = AggregateKey::new(aggregate_type, aggregate_id);
            if map
                .get(&key)
                .is_some_and(|entry| Arc::strong_count(&entry.parks) == 1)
            {
                map.remove(&key);
            }
        }
        metrics::blocked_aggregates(map.len());
    }

    /// Blocked aggregates right now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no aggregate is blocked.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// True while `key` is blocked.
    pub fn contains(&self, key: &AggregateKey) -> bool {
        self.lock().contains_key(key)
    }

    /// The guard to attach to a park settlement of `event`'s aggregate (blocking it if
    /// needed).
    pub fn park_guard(&self, event: &OutboxEvent) -> Arc<()> {
        let mut map = self.lock();
        let guard = map
            .entry(key_of(event))
            .or_insert_with(|| Entry::new(&event.aggregate_type, &event.aggregate_id))
            .parks
            .clone();
        metrics::blocked_aggregates(map.len());
        guard
    }

    /// The guard for writing `outcome` of `event` when ordering is on: a `retry` blocks
    /// the aggregate, and the guard keeps it blocked at least until the row is written, so
    /// no later event can overtake it. `None` for other outcomes.
    pub fn retry_guard(&self, event: &OutboxEvent, outcome: &Outcome) -> Option<Arc<()>> {
        matches!(outcome, Outcome::Retry { .. }).then(|| self.park_guard(event))
    }

    /// The aggregate's `(aggregate_type, aggregate_id)` when it is time to ask the
    /// database whether `key` drained: no park of ours is in flight and the last check is
    /// old enough. Records the check.
    pub fn should_recheck(&self, key: &AggregateKey) -> Option<(String, String)> {
        let mut map = self.lock();
        let entry = map.get_mut(key)?;
        if Arc::strong_count(&entry.parks) > 1 {
            return None;
        }
        if entry
            .checked_at
            .is_some_and(|at| at.elapsed() < RECHECK_EVERY)
        {
            return None;
        }
        entry.checked_at = Some(Instant::now());
        Some(entry.names.clone())
    }

    /// Unblocks `key` after the database showed no waiting rows, unless a park started
    /// meanwhile. Returns whether `key` is unblocked now.
    pub fn unblock(&self, key: &AggregateKey) -> bool {
        let mut map = self.lock();
        match map.get(key) {
            Some(entry) if Arc::strong_count(&entry.parks) > 1 => false,
            Some(_) => {
                map.remove(key);
                metrics::blocked_aggregates(map.len());
                true
            }
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str) -> OutboxEvent {
        OutboxEvent {
            id: 1,
            aggregate_type: "order".to_owned(),
            aggregate_id: id.to_owned(),
            event_type: "order.created".to_owned(),
            payload: bytes::Bytes::from_static(b"{}"),
            headers: Vec::new(),
            created_at: chrono::Utc::now(),
            next_run_at: None,
        }
    }

    fn key(id: &str) -> AggregateKey {
        key_of(&event(id))
    }

    #[test]
    fn parks_in_flight_prevent_rechecks_and_unblocking() {
        let blocked = BlockedAggregates::default();
        blocked.block("order", "a");
        let guard = blocked.park_guard(&event("a"));
        assert_eq!(blocked.should_recheck(&key("a")), None);
        assert!(!blocked.unblock(&key("a")));
        assert!(blocked.contains(&key("a")), "a park is still in flight");
        drop(guard);
        assert_eq!(
            blocked.should_recheck(&key("a")),
            Some(("order".to_owned(), "a".to_owned()))
        );
        assert_eq!(blocked.should_recheck(&key("a")), None, "rate limited");
        assert!(blocked.unblock(&key("a")));
        assert!(!blocked.contains(&key("a")));
        assert_eq!(
            blocked.should_recheck(&key("b")),
            None,
            "not blocked: nothing to check"
        );
    }

    #[test]
    fn drained_aggregates_are_forgotten_unless_held() {
        let blocked = BlockedAggregates::default();
        blocked.block("order", "a");
        blocked.block("order", "b");
        let hold = blocked.hold("order", "c");
        let mut idle = blocked.idle();
        idle.sort();
        assert_eq!(
            idle,
            [
                ("order".to_owned(), "a".to_owned()),
                ("order".to_owned(), "b".to_owned())
            ]
        );
        blocked.forget_drained(&[
            ("order".to_owned(), "a".to_owned()),
            ("order".to_owned(), "c".to_owned()),
        ]);
        assert!(!blocked.contains(&key("a")));
        assert!(blocked.contains(&key("b")), "not drained");
        assert!(blocked.contains(&key("c")), "held");
        drop(hold);
        blocked.forget_drained(&[("order".to_owned(), "c".to_owned())]);
        assert_eq!(blocked.len(), 1);
    }

    #[test]
    fn keys_tell_aggregates_apart_and_name_the_same_one_alike() {
        assert_eq!(key("a"), key("a"));
        assert_ne!(key("a"), key("b"));
        // The pair is hashed as a pair: moving text between its halves is another key.
        assert_ne!(
            AggregateKey::new("order", "ab"),
            AggregateKey::new("ordera", "b")
        );
        assert_ne!(
            AggregateKey::new("order", "1"),
            AggregateKey::new("invoice", "1")
        );
    }
}
