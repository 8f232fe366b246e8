//! Retry policy: capped exponential backoff with full jitter, honouring `Retry-After`.
//!
//! The delay before retry `n` (1 = the first retry) is drawn uniformly from
//! `[0, min(max_delay, initial * 2^(n-1))]` ("full jitter"), then raised to the server's
//! `Retry-After` when it asked for longer. A delivery is given up once `max_elapsed` has passed
//! since its retry window started (acceptance, or its last redrive: `pump::retry_window_start`).

use std::time::{Duration, SystemTime};

use rand::Rng;

/// When and how long to wait between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Upper bound of the first delay.
    pub initial: Duration,
    /// Upper bound of any computed delay (before `Retry-After` is applied).
    pub max_delay: Duration,
    /// How long after first being seen a delivery is given up.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    /// Returns 2 s initial, 10 min cap, 3 days overall.
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(2),
            max_delay: Duration::from_secs(10 * 60),
            max_elapsed: Duration::from_secs(3 * 24 * 60 * 60),
        }
    }
}

// === RetryPolicy ===

impl RetryPolicy {
    /// Returns a policy with the given bounds.
    pub fn new(initial: Duration, max_delay: Duration, max_elapsed: Duration) -> Self {
        Self {
            initial,
            max_delay,
            max_elapsed,
        }
    }

    /// Returns a policy with millisecond delays, for tests.
    pub fn for_test() -> Self {
        Self {
            initial: Duration::from_millis(5),
            max_delay: Duration::from_millis(50),
            max_elapsed: Duration::from_secs(60),
        }
    }

    /// Returns the delay before retry `attempt` (1 = first retry), never shorter than
    /// `retry_after`.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        self.delay_with(&mut rand::rng(), attempt, retry_after)
    }

    /// Like [`RetryPolicy::delay`] with a caller-supplied random source (seeded in tests).
    pub fn delay_with<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        attempt: u32,
        retry_after: Option<Duration>,
    ) -> Duration {
        let cap = self.cap(attempt);
        let cap_nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        let jittered = Duration::from_nanos(rng.random_range(0..=cap_nanos));
        match retry_after {
            Some(floor) => jittered.max(floor),
            None => jittered,
        }
    }

    /// Returns the upper bound of the jittered delay for retry `attempt`.
    pub fn cap(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1);
        if exponent >= u32::BITS {
            return self.max_delay;
        }
        self.initial
            .checked_mul(1u32 << exponent)
            .map_or(self.max_delay, |grown| grown.min(self.max_delay))
    }

    /// Returns true once `max_elapsed` has passed between `first_seen` and `now`.
    pub fn exhausted(&self, first_seen: SystemTime, now: SystemTime) -> bool {
        now.duration_since(first_seen)
            .is_ok_and(|elapsed| elapsed >= self.max_elapsed)
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn defaults_match_the_design() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.initial, Duration::from_secs(2));
        assert_eq!(policy.max_delay, Duration::from_secs(600));
        assert_eq!(policy.max_elapsed, Duration::from_secs(3 * 86_400));
    }

    #[test]
    fn cap_doubles_then_saturates() {
        let policy = RetryPolicy::default();
        let caps: Vec<u64> = (1..=11).map(|n| policy.cap(n).as_secs()).collect();
        assert_eq!(caps, [2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600]);
        assert_eq!(policy.cap(0), Duration::from_secs(2));
        assert_eq!(policy.cap(u32::MAX), Duration::from_secs(600));
        assert_eq!(policy.cap(40), Duration::from_secs(600));
    }

    #[test]
    fn delays_stay_within_the_jitter_bounds() {
        let policy = RetryPolicy::default();
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 1..=20 {
            for _ in 0..200 {
                let delay = policy.delay_with(&mut rng, attempt, None);
                assert!(delay <= policy.cap(attempt), "attempt {attempt}: {delay:?}");
            }
        }
    }

    #[test]
    fn jitter_spreads_the_delays() {
        let policy = RetryPolicy::default();
        let mut rng = StdRng::seed_from_u64(42);
        let delays: Vec<Duration> = (0..100)
            .map(|_| policy.delay_with(&mut rng, 10, None))
            .collect();
        let below_half = delays
            .iter()
            .filter(|d| **d < Duration::from_secs(300))
            .count();
        assert!(
            (20..=80).contains(&below_half),
            "full jitter is uniform: {below_half}"
        );
    }

    #[test]
    fn retry_after_is_a_floor() {
        let policy = RetryPolicy::default();
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..100 {
            let delay = policy.delay_with(&mut rng, 1, Some(Duration::from_secs(30)));
            assert_eq!(delay, Duration::from_secs(30), "cap 2 s < floor 30 s");
        }
        // A floor longer than the cap is still honoured.
        let delay = policy.delay(12, Some(Duration::from_secs(3600)));
        assert_eq!(delay, Duration::from_secs(3600));
        // A short floor does not shorten a longer jittered delay.
        let delay = policy.delay_with(&mut rng, 12, Some(Duration::ZERO));
        assert!(delay <= Duration::from_secs(600));
    }

    #[test]
    fn exhaustion_after_max_elapsed() {
        let policy = RetryPolicy::new(
            Duration::from_secs(1),
            Duration::from_secs(10),
            Duration::from_secs(100),
        );
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert!(!policy.exhausted(start, start));
        assert!(!policy.exhausted(start, start + Duration::from_secs(99)));
        assert!(policy.exhausted(start, start + Duration::from_secs(100)));
        // A clock that went backwards is not exhaustion.
        assert!(!policy.exhausted(start, start - Duration::from_secs(5)));
    }
}
