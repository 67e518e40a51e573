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
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::event::OutboxEvent;
use crate::store::status::Outcome;

/// `(aggregate_type, aggregate_id)`.
pub type AggregateKey = (String, String);

/// The ordering key of `event`.
pub fn key_of(event: &OutboxEvent) -> AggregateKey {
    (event.aggregate_type.clone(), event.aggregate_id.clone())
}

/// How often, at most, the database is asked whether a blocked aggregate has drained.
const RECHECK_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug, Default)]
struct Entry {
    /// Cloned into every park settlement of this aggregate; the status writer drops the
    /// clone once the row is written, so a strong count of 1 means no park is in flight.
    parks: Arc<()>,
    checked_at: Option<Instant>,
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

    /// Marks `key` as having a backlog.
    pub fn block(&self, key: AggregateKey) {
        self.lock().entry(key).or_default();
    }

    /// True while `key` is blocked.
    pub fn contains(&self, key: &AggregateKey) -> bool {
        self.lock().contains_key(key)
    }

    /// The guard to attach to a park settlement of `key` (blocking it if needed).
    pub fn park_guard(&self, key: &AggregateKey) -> Arc<()> {
        let mut map = self.lock();
        if let Some(entry) = map.get(key) {
            return entry.parks.clone();
        }
        map.entry(key.clone()).or_default().parks.clone()
    }

    /// The guard for writing `outcome` of `event` when ordering is on: a `retry` blocks
    /// the aggregate, and the guard keeps it blocked at least until the row is written, so
    /// no later event can overtake it. `None` for other outcomes.
    pub fn retry_guard(&self, event: &OutboxEvent, outcome: &Outcome) -> Option<Arc<()>> {
        matches!(outcome, Outcome::Retry { .. }).then(|| self.park_guard(&key_of(event)))
    }

    /// True when it is time to ask the database whether `key` drained: no park of ours is
    /// in flight and the last check is old enough. Records the check.
    pub fn should_recheck(&self, key: &AggregateKey) -> bool {
        let mut map = self.lock();
        let Some(entry) = map.get_mut(key) else {
            return false;
        };
        if Arc::strong_count(&entry.parks) > 1 {
            return false;
        }
        if entry
            .checked_at
            .is_some_and(|at| at.elapsed() < RECHECK_EVERY)
        {
            return false;
        }
        entry.checked_at = Some(Instant::now());
        true
    }

    /// Unblocks `key` after the database showed no waiting rows, unless a park started
    /// meanwhile. Returns whether `key` is unblocked now.
    pub fn unblock(&self, key: &AggregateKey) -> bool {
        let mut map = self.lock();
        match map.get(key) {
            Some(entry) if Arc::strong_count(&entry.parks) > 1 => false,
            Some(_) => {
                map.remove(key);
                true
            }
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> AggregateKey {
        ("order".to_owned(), id.to_owned())
    }

    #[test]
    fn parks_in_flight_prevent_rechecks_and_unblocking() {
        let blocked = BlockedAggregates::default();
        blocked.block(key("a"));
        let guard = blocked.park_guard(&key("a"));
        assert!(!blocked.should_recheck(&key("a")));
        assert!(!blocked.unblock(&key("a")));
        assert!(blocked.contains(&key("a")), "a park is still in flight");
        drop(guard);
        assert!(blocked.should_recheck(&key("a")));
        assert!(!blocked.should_recheck(&key("a")), "rate limited");
        assert!(blocked.unblock(&key("a")));
        assert!(!blocked.contains(&key("a")));
        assert!(
            !blocked.should_recheck(&key("b")),
            "not blocked: nothing to check"
        );
    }
}
