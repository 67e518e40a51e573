//! The byte budget: how many bytes of events (payload and headers) may be held at once
//! between the stream, the dispatcher, the sinks and the sweeper
//! (`DISPATCHBOX_MAX_IN_FLIGHT_BYTES`). `DISPATCHBOX_MAX_IN_FLIGHT` bounds the number of
//! events; with payloads of a megabyte that alone allows a gigabyte, so each event also
//! holds its size from this budget from the moment it is decoded (or loaded by the sweeper)
//! until its delivery ends ([`crate::event::OutboxEvent::held_bytes`]). When the budget is spent, the stream stops reading (the server
//! keeps the WAL) and the sweeper loads its next rows later.
//!
//! An event larger than the whole budget takes the whole budget: it waits until nothing
//! else is held, then goes alone.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::telemetry::metrics;

/// Default `DISPATCHBOX_MAX_IN_FLIGHT_BYTES`: 64 MiB.
pub const DEFAULT_MAX_IN_FLIGHT_BYTES: usize = 64 * 1024 * 1024;

/// A shared budget of bytes. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ByteBudget {
    semaphore: Arc<Semaphore>,
    total: u32,
}

/// Bytes taken from a [`ByteBudget`]; returned when dropped.
#[derive(Debug)]
pub struct BytesHeld {
    permit: OwnedSemaphorePermit,
    budget: ByteBudget,
}

impl BytesHeld {
    /// How many bytes this holds.
    pub fn bytes(&self) -> usize {
        self.permit.num_permits()
    }
}

impl Drop for BytesHeld {
    fn drop(&mut self) {
        // The permit itself is returned right after this, with the field; report the
        // level as it will be then.
        let returning = self.permit.num_permits();
        metrics::in_flight_bytes(self.budget.held().saturating_sub(returning));
    }
}

impl ByteBudget {
    /// A budget of `bytes` (at most 4 GiB − 1; at least 1).
    pub fn new(bytes: usize) -> Self {
        let total = u32::try_from(bytes).unwrap_or(u32::MAX).max(1);
        Self {
            semaphore: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    /// The whole budget.
    pub fn total(&self) -> usize {
        self.total as usize
    }

    /// Bytes held right now.
    pub fn held(&self) -> usize {
        (self.total as usize).saturating_sub(self.semaphore.available_permits())
    }

    fn share(&self, bytes: usize) -> u32 {
        u32::try_from(bytes)
            .unwrap_or(u32::MAX)
            .clamp(1, self.total)
    }

    /// Takes `bytes` (capped at the whole budget), waiting until they are free.
    pub async fn acquire(&self, bytes: usize) -> BytesHeld {
        let share = self.share(bytes);
        // The semaphore is never closed, so acquiring cannot fail.
        let permit = match self.semaphore.clone().acquire_many_owned(share).await {
            Ok(permit) => permit,
            Err(_) => unreachable_closed(),
        };
        self.held_now(permit)
    }

    /// Takes `bytes` (capped at the whole budget) if they are free now.
    pub fn try_acquire(&self, bytes: usize) -> Option<BytesHeld> {
        let permit = self
            .semaphore
            .clone()
            .try_acquire_many_owned(self.share(bytes))
            .ok()?;
        Some(self.held_now(permit))
    }

    fn held_now(&self, permit: OwnedSemaphorePermit) -> BytesHeld {
        self.report();
        BytesHeld {
            permit,
            budget: self.clone(),
        }
    }

    fn report(&self) {
        metrics::in_flight_bytes(self.held());
    }
}

#[cold]
fn unreachable_closed() -> ! {
    // `ByteBudget` owns its semaphore and never calls `close`.
    panic!("the byte budget's semaphore is never closed")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn bytes_are_held_until_dropped_and_a_huge_event_takes_everything() {
        let budget = ByteBudget::new(1000);
        let a = budget.try_acquire(600).unwrap();
        assert_eq!(budget.held(), 600);
        assert!(budget.try_acquire(500).is_none(), "over budget");
        let b = budget.try_acquire(400).unwrap();
        assert_eq!(budget.held(), 1000);

        // An event larger than the budget waits for all of it, then goes alone.
        let waiter = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.acquire(5_000_000).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished());
        drop(a);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished(), "400 bytes are still held");
        drop(b);
        let huge = waiter.await.unwrap();
        assert_eq!(budget.held(), 1000);
        drop(huge);
        assert_eq!(budget.held(), 0);
    }
}
