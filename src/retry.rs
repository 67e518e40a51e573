//! The one retry-delay rule of the relay: capped exponential backoff with jitter. Used for
//! delivery retries (dispatch and the sweeper, through `dispatch::RetryPolicy`), reconnects
//! (the source, the start-up preflight), and retried statements (the status writer, the
//! sweeper's outcome writes).
//!
//! Pure: the randomness ([`rand::Rng`]) and the clock (`now`) are the caller's, so tests
//! pass a seeded generator and a fixed time. [`Retry`] counts the attempts of one failing
//! operation.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Delay policy: attempt `n` (1-based) waits a uniformly random time in
/// `[0, min(max, base * 2^(n-1))]` ("full jitter"), which spreads retries of many clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Upper bound of the first delay.
    pub base: Duration,
    /// Cap on every delay.
    pub max: Duration,
}

impl Backoff {
    /// The cap for attempt `attempt` (1-based), before jitter.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(31);
        self.base
            .checked_mul(1u32 << exp)
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// A jittered delay for attempt `attempt` (1-based).
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(attempt);
        if ceiling.is_zero() {
            return ceiling;
        }
        Duration::from_nanos(rng.gen_range(0..=ceiling.as_nanos().min(u64::MAX as u128) as u64))
    }

    /// A delay for attempt `attempt` between half the ceiling and the ceiling ("equal
    /// jitter"): never at once, for loops that retry one statement against a database that
    /// may be down, where a zero delay would only add load.
    pub fn delay_at_least_half(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let half = self.ceiling(attempt) / 2;
        half + half.mul_f64(rng.gen_range(0.0..=1.0))
    }

    /// When attempt `attempt` that failed at `now` may be tried again: after
    /// [`Backoff::delay`], and no sooner than `at_least` (a server's `Retry-After`).
    pub fn retry_at(
        &self,
        attempt: u32,
        at_least: Duration,
        now: DateTime<Utc>,
        rng: &mut impl Rng,
    ) -> DateTime<Utc> {
        let delay = self.delay(attempt, rng).max(at_least);
        now + chrono::Duration::from_std(delay).unwrap_or_else(|_| chrono::Duration::days(1))
    }
}

/// The attempts of one operation retried until it passes: each [`Retry::next_delay`]
/// is the next [`Backoff::delay_at_least_half`]; [`Retry::reset`] after a success.
#[derive(Debug)]
pub struct Retry<R = StdRng> {
    backoff: Backoff,
    failures: u32,
    rng: R,
}

impl Retry {
    /// Retries with `backoff` and a generator seeded from the operating system (it can
    /// be held across `.await`, unlike the thread's).
    pub fn new(backoff: Backoff) -> Self {
        Self::with_rng(backoff, StdRng::from_entropy())
    }
}

impl<R: Rng> Retry<R> {
    /// Retries with `backoff` and the randomness of `rng`.
    pub fn with_rng(backoff: Backoff, rng: R) -> Self {
        Self {
            backoff,
            failures: 0,
            rng,
        }
    }

    /// Another failure: how long to wait before the next try.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.backoff
            .delay_at_least_half(self.failures, &mut self.rng)
    }

    /// The operation passed: the next failure starts from the first delay again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_up_to_the_cap() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        assert_eq!(b.ceiling(1), Duration::from_millis(100));
        assert_eq!(b.ceiling(2), Duration::from_millis(200));
        assert_eq!(b.ceiling(4), Duration::from_millis(800));
        assert_eq!(b.ceiling(5), Duration::from_secs(1));
        assert_eq!(b.ceiling(500), Duration::from_secs(1));
    }

    #[test]
    fn jittered_delays_stay_within_the_ceiling_and_vary() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(10),
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let delays: Vec<_> = (0..100).map(|_| b.delay(3, &mut rng)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(400)));
        assert!(delays.iter().any(|d| *d < Duration::from_millis(200)));
        assert!(delays.iter().any(|d| *d > Duration::from_millis(200)));
    }

    #[test]
    fn a_retried_operation_waits_half_to_all_of_a_doubling_ceiling() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_millis(400),
        };
        let mut retry = Retry::with_rng(b, rand::rngs::StdRng::seed_from_u64(1));
        for ceiling in [100, 200, 400, 400] {
            let delay = retry.next_delay();
            let ceiling = Duration::from_millis(ceiling);
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{delay:?} for {ceiling:?}"
            );
        }
        retry.reset();
        assert!(retry.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn retry_at_honours_retry_after_and_the_given_clock() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let at = b.retry_at(1, Duration::ZERO, now, &mut rng);
        assert!(at >= now && at <= now + chrono::Duration::milliseconds(100));
        let at = b.retry_at(1, Duration::from_secs(30), now, &mut rng);
        assert_eq!(at, now + chrono::Duration::seconds(30));
    }
}
