//! The `NHSMESH` authorization token (`shared/spec/mesh.md` §2).
//!
//! Every request carries a fresh token: a new UUID nonce, nonce count 0, the current UTC minute
//! and an HMAC-SHA256 over `MAILBOX:nonce:count:PASSWORD:timestamp` keyed with the environment's
//! shared secret. The password is part of the HMAC input only, never of the header.

use hmac::{KeyInit, Mac};
use time::OffsetDateTime;
use time::macros::format_description;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The authorization scheme name.
pub const SCHEME: &str = "NHSMESH";

/// Returns the `Authorization` header value for one request made now.
pub fn fresh_token(mailbox: &str, password: &str, shared_key: &str) -> String {
    let nonce = uuid::Uuid::new_v4().to_string();
    token(
        mailbox,
        password,
        shared_key,
        &nonce,
        0,
        &timestamp(OffsetDateTime::now_utc()),
    )
}

/// Returns the `Authorization` header value for the given inputs (pure, for tests).
///
/// The mailbox id is upper-cased; `timestamp` is `yyyyMMddHHmm` in UTC.
pub fn token(
    mailbox: &str,
    password: &str,
    shared_key: &str,
    nonce: &str,
    nonce_count: u32,
    timestamp: &str,
) -> String {
    let mailbox = mailbox.to_ascii_uppercase();
    let hash = signature(
        &mailbox,
        password,
        shared_key,
        nonce,
        nonce_count,
        timestamp,
    );
    format!("{SCHEME} {mailbox}:{nonce}:{nonce_count}:{timestamp}:{hash}")
}

/// Returns the lowercase hex HMAC-SHA256 of `MAILBOX:nonce:count:PASSWORD:timestamp`.
pub fn signature(
    mailbox: &str,
    password: &str,
    shared_key: &str,
    nonce: &str,
    nonce_count: u32,
    timestamp: &str,
) -> String {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail for SHA-256.
    let mut mac = match HmacSha256::new_from_slice(shared_key.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => unreachable!("hmac accepts keys of any length"),
    };
    mac.update(format!("{mailbox}:{nonce}:{nonce_count}:{password}:{timestamp}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Formats a time as the token's `yyyyMMddHHmm` UTC timestamp.
pub fn timestamp(at: OffsetDateTime) -> String {
    let utc = at.to_offset(time::UtcOffset::UTC);
    let format = format_description!("[year][month][day][hour][minute]");
    // Formatting a fixed numeric description into a String only fails for years outside
    // 0..=9999, which `now_utc` does not produce; fall back to an obviously wrong stamp.
    utc.format(&format)
        .unwrap_or_else(|_| "000000000000".to_owned())
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    #[test]
    fn matches_the_spec_test_vector() {
        let header = token(
            "X26ABC1",
            "password",
            "TestKey",
            "4d5b5b2a-1c3e-4a8e-9a4e-3f1b2c3d4e5f",
            0,
            "202401011200",
        );
        assert_eq!(
            header,
            "NHSMESH X26ABC1:4d5b5b2a-1c3e-4a8e-9a4e-3f1b2c3d4e5f:0:202401011200:\
             b085b2dfbce7958075b796b8321532ccd440f437e6d1f0b07f98b72a409e7d82"
        );
    }

    #[test]
    fn upper_cases_the_mailbox() {
        let lower = token("x26abc1", "password", "TestKey", "n", 0, "202401011200");
        let upper = token("X26ABC1", "password", "TestKey", "n", 0, "202401011200");
        assert_eq!(lower, upper);
        assert!(lower.starts_with("NHSMESH X26ABC1:"));
    }

    #[test]
    fn timestamp_is_utc_minutes() {
        assert_eq!(
            timestamp(datetime!(2024-01-01 12:00:59 UTC)),
            "202401011200"
        );
        assert_eq!(
            timestamp(datetime!(2024-01-01 13:05 +01:00)),
            "202401011205"
        );
    }

    #[test]
    fn fresh_tokens_differ_and_never_contain_the_password() {
        let first = fresh_token("X26ABC1", "s3cret-pw", "TestKey");
        let second = fresh_token("X26ABC1", "s3cret-pw", "TestKey");
        assert_ne!(first, second, "each request needs a new nonce");
        assert!(!first.contains("s3cret-pw"));
        let fields: Vec<&str> = first["NHSMESH ".len()..].split(':').collect();
        assert_eq!(fields.len(), 5);
        assert_eq!(fields[0], "X26ABC1");
        assert!(uuid::Uuid::parse_str(fields[1]).is_ok());
        assert_eq!(fields[2], "0");
        assert_eq!(fields[3].len(), 12);
        assert!(fields[3].bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(fields[4].len(), 64);
    }
}
