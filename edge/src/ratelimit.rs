//! Per-client request rate limiting: a token bucket per **verified** client (`rate` tokens
//! a second, at most `burst` stored). A flood from one client is answered `429` without
//! slowing the others.
//!
//! The key is what the edge verified itself, never what a request claims: the client
//! certificate of a mutual-TLS connection (which core binds to the ASID the request
//! names), else the peer address (an IPv6 peer by its /64, the smallest block a host is
//! usually given). A client naming another system's `fromASID` therefore throttles only
//! itself, not the system it impersonates.
//!
//! Memory is bounded without a scan under a global lock: the buckets are split over
//! [`SHARDS`] locks, and each shard keeps two generations. A bucket used in the old
//! generation moves to the new one; once the new one is full the old one is dropped
//! whole (at most `max_keys / SHARDS / 2` entries). A client is forgotten only after that
//! many other clients of its shard came after its last request, and then starts again
//! with a full bucket.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Number of independently locked parts of the bucket map.
pub const SHARDS: usize = 16;

/// Most buckets kept by default.
pub const MAX_KEYS: usize = 100_000;

/// Whom a request is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    /// A verified client certificate, by a keyed hash of its DER bytes.
    Certificate(u64),
    /// A peer address (IPv4 as mapped IPv6; IPv6 masked to its /64).
    Address(u128),
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

#[derive(Debug, Default)]
struct Shard {
    current: HashMap<Key, Bucket>,
    previous: HashMap<Key, Bucket>,
}

/// The limiter.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    generation: usize,
    hasher: RandomState,
    shards: Vec<Mutex<Shard>>,
}

impl RateLimiter {
    /// A limiter of `per_second` requests with bursts of `burst`; `per_second == 0` disables it.
    pub fn new(per_second: u32, burst: u32) -> Self {
        Self::with_capacity(per_second, burst, MAX_KEYS)
    }

    /// [`RateLimiter::new`] keeping at most `max_keys` buckets (at least one per shard
    /// generation).
    pub fn with_capacity(per_second: u32, burst: u32, max_keys: usize) -> Self {
        RateLimiter {
            rate: f64::from(per_second),
            burst: f64::from(burst.max(per_second).max(1)),
            generation: (max_keys / SHARDS / 2).max(1),
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
        }
    }

    /// The key of a verified client certificate (its DER bytes).
    pub fn certificate_key(&self, der: &[u8]) -> Key {
        Key::Certificate(self.hasher.hash_one(der))
    }

    /// The key of a peer address.
    pub fn address_key(addr: IpAddr) -> Key {
        let bits = match addr {
            IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => u128::from(v4.to_ipv6_mapped()),
                None => u128::from(v6) & !((1u128 << 64) - 1),
            },
        };
        Key::Address(bits)
    }

    /// Takes one token for `key` at `now`; `Err(wait)` when none is left.
    pub fn check_at(&self, key: Key, now: Instant) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let index = (self.hasher.hash_one(key) as usize) % SHARDS;
        let mut shard = match self.shards[index].lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        let bucket = match shard.current.get(&key) {
            Some(b) => *b,
            None => {
                let found = shard.previous.remove(&key);
                if shard.current.len() >= self.generation {
                    shard.previous = std::mem::take(&mut shard.current);
                }
                found.unwrap_or(Bucket {
                    tokens: self.burst,
                    last: now,
                })
            }
        };
        let refill = now.saturating_duration_since(bucket.last).as_secs_f64() * self.rate;
        let mut tokens = (bucket.tokens + refill).min(self.burst);
        let answer = if tokens >= 1.0 {
            tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - tokens) / self.rate).max(Duration::from_millis(1)))
        };
        shard.current.insert(
            key,
            Bucket {
                tokens,
                last: now.max(bucket.last),
            },
        );
        answer
    }

    /// [`RateLimiter::check_at`] now.
    pub fn check(&self, key: Key) -> Result<(), Duration> {
        self.check_at(key, Instant::now())
    }

    /// Buckets held now (for tests and metrics).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| match s.lock() {
                Ok(s) => s.current.len() + s.previous.len(),
                Err(poisoned) => {
                    let s = poisoned.into_inner();
                    s.current.len() + s.previous.len()
                }
            })
            .sum()
    }

    /// True when no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn addr(last: u8) -> Key {
        RateLimiter::address_key(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)))
    }

    #[test]
    fn a_flood_from_one_key_does_not_touch_another() {
        let l = RateLimiter::new(10, 20);
        let t = Instant::now();
        for _ in 0..20 {
            assert!(l.check_at(addr(1), t).is_ok());
        }
        let wait = l.check_at(addr(1), t).unwrap_err();
        assert!(
            wait <= Duration::from_millis(100) && wait > Duration::ZERO,
            "{wait:?}"
        );
        assert!(l.check_at(addr(2), t).is_ok());
        // Tokens come back at the configured rate.
        assert!(l.check_at(addr(1), t + Duration::from_millis(100)).is_ok());
        assert!(l.check_at(addr(1), t + Duration::from_millis(100)).is_err());
    }

    #[test]
    fn zero_rate_disables() {
        let l = RateLimiter::new(0, 0);
        for _ in 0..1000 {
            assert!(l.check(addr(1)).is_ok());
        }
        assert!(l.is_empty());
    }

    #[test]
    fn certificates_are_keyed_by_their_bytes_and_addresses_by_host_or_slash_64() {
        let l = RateLimiter::new(1, 1);
        assert_eq!(l.certificate_key(b"cert-a"), l.certificate_key(b"cert-a"));
        assert_ne!(l.certificate_key(b"cert-a"), l.certificate_key(b"cert-b"));
        let v6 = |s: &str| RateLimiter::address_key(IpAddr::V6(s.parse::<Ipv6Addr>().unwrap()));
        assert_eq!(v6("2001:db8:1:2::1"), v6("2001:db8:1:2:ffff::9"));
        assert_ne!(v6("2001:db8:1:2::1"), v6("2001:db8:1:3::1"));
        // An IPv4 peer is the same key however the socket reports it.
        assert_eq!(v6("::ffff:10.0.0.1"), addr(1));
        assert_ne!(addr(1), addr(2));
    }

    #[test]
    fn memory_stays_bounded_under_a_million_keys_and_recent_clients_keep_their_bucket() {
        let l = RateLimiter::with_capacity(1, 1, 1_600);
        let t = Instant::now();
        // A client that has used its only token.
        let client = addr(1);
        assert!(l.check_at(client, t).is_ok());
        assert!(l.check_at(client, t).is_err());
        for i in 0..1_000_000u32 {
            let key = RateLimiter::address_key(IpAddr::V4(Ipv4Addr::from(0x0B00_0000 + i)));
            let _ = l.check_at(key, t);
            // The client keeps coming back, so its empty bucket is never forgotten.
            if i % 50 == 0 {
                assert!(l.check_at(client, t).is_err(), "forgotten after {i} keys");
            }
            if i % 1_000 == 0 {
                assert!(l.len() <= 1_600, "{} buckets after {i} keys", l.len());
            }
        }
    }
}
