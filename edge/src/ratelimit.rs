//! Per-ASID request rate limiting: a token bucket per calling ASID (`rate` tokens a
//! second, at most `burst` stored). A flood from one system is answered `429` without
//! slowing the others. Buckets idle for a minute are forgotten, so memory stays bounded.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The limiter.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

const MAX_BUCKETS: usize = 100_000;

impl RateLimiter {
    /// A limiter of `per_second` requests with bursts of `burst`; `per_second == 0` disables it.
    pub fn new(per_second: u32, burst: u32) -> Self {
        RateLimiter {
            rate: f64::from(per_second),
            burst: f64::from(burst.max(per_second).max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key` at `now`; `Err(wait)` when none is left.
    pub fn check_at(&self, key: &str, now: Instant) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let mut buckets = match self.buckets.lock() {
            Ok(b) => b,
            Err(poisoned) => poisoned.into_inner(),
        };
        if buckets.len() >= MAX_BUCKETS {
            buckets.retain(|_, (_, last)| now.duration_since(*last) < Duration::from_secs(60));
        }
        let (tokens, last) = buckets.entry(key.to_string()).or_insert((self.burst, now));
        let refill = now.duration_since(*last).as_secs_f64() * self.rate;
        *tokens = (*tokens + refill).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / self.rate).max(Duration::from_millis(1)))
        }
    }

    /// [`RateLimiter::check_at`] now.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        self.check_at(key, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_from_one_key_does_not_touch_another() {
        let l = RateLimiter::new(10, 20);
        let t = Instant::now();
        for _ in 0..20 {
            assert!(l.check_at("A", t).is_ok());
        }
        let wait = l.check_at("A", t).unwrap_err();
        assert!(
            wait <= Duration::from_millis(100) && wait > Duration::ZERO,
            "{wait:?}"
        );
        assert!(l.check_at("B", t).is_ok());
        // Tokens come back at the configured rate.
        assert!(l.check_at("A", t + Duration::from_millis(100)).is_ok());
        assert!(l.check_at("A", t + Duration::from_millis(100)).is_err());
    }

    #[test]
    fn zero_rate_disables() {
        let l = RateLimiter::new(0, 0);
        for _ in 0..1000 {
            assert!(l.check("A").is_ok());
        }
    }
}
