//! Identifier encodings: subscription and event ids are 128-bit values shown as 32
//! lowercase hex characters; NHS numbers are stored as `u64`.

use std::time::{SystemTime, UNIX_EPOCH};

/// Mints a new 128-bit id: 48 bits of milliseconds then 80 random bits, so ids sort
/// roughly by creation time (compact B-tree inserts) and are not guessable.
pub(crate) fn new_id() -> u128 {
    let millis = now_ms() as u128 & ((1u128 << 48) - 1);
    let random: u128 = rand::random::<u128>() & ((1u128 << 80) - 1);
    (millis << 80) | random
}

/// Formats an id as 32 lowercase hex characters.
pub(crate) fn id_hex(id: u128) -> String {
    format!("{id:032x}")
}

/// Parses 32 hex characters (either case) into an id.
pub(crate) fn parse_id(s: &str) -> Option<u128> {
    if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u128::from_str_radix(s, 16).ok()
}

/// Parses a 10-digit NHS number into its numeric key (no check-digit test here).
pub(crate) fn nhs_key(nhs: &str) -> Option<u64> {
    if nhs.len() != 10 || !nhs.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    nhs.parse().ok()
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Protobuf timestamp of epoch milliseconds.
pub(crate) fn timestamp(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_as_32_hex() {
        let id = new_id();
        let hex = id_hex(id);
        assert_eq!(hex.len(), 32);
        assert!(
            hex.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        assert_eq!(parse_id(&hex), Some(id));
        assert_eq!(parse_id(&hex.to_uppercase()), Some(id));
        assert_eq!(parse_id("xyz"), None);
        assert_eq!(parse_id(&"g".repeat(32)), None);
    }

    #[test]
    fn ids_sort_by_creation_time() {
        let a = new_id();
        std::thread::yield_now();
        let b = new_id();
        assert!(a >> 80 <= b >> 80);
    }

    #[test]
    fn nhs_keys_keep_leading_zeros() {
        assert_eq!(nhs_key("0123456789"), Some(123_456_789));
        assert_eq!(nhs_key("12345"), None);
        assert_eq!(nhs_key("12345678a0"), None);
    }
}
