//! `NHSMESH` token checks, as strict as real MESH (which the sandbox is not): header format,
//! mailbox matching the path, UUID nonce, 2-hour timestamp window, HMAC, no nonce reuse.

use hmac::{KeyInit, Mac};
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};

use super::{Inner, SHARED_KEY};

/// Checks an `Authorization` value for a request on `path_mailbox`; `Err` holds the reason.
pub(super) fn check(
    inner: &mut Inner,
    path_mailbox: &str,
    header: Option<&str>,
) -> Result<(), String> {
    let header = header.ok_or("missing authorization header")?;
    let token = header
        .strip_prefix("NHSMESH ")
        .ok_or("authorization scheme is not NHSMESH")?;
    let fields: Vec<&str> = token.split(':').collect();
    let [mailbox, nonce, count, stamp, hash] = fields[..] else {
        return Err(format!("expected 5 token fields, got {}", fields.len()));
    };
    if mailbox != mailbox.to_ascii_uppercase() {
        return Err("token mailbox is not upper case".into());
    }
    if mailbox != path_mailbox {
        return Err("mailbox id does not match token".into());
    }
    if uuid::Uuid::parse_str(nonce).is_err() {
        return Err("nonce is not a uuid".into());
    }
    if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
        return Err("nonce count is not a number".into());
    }
    check_timestamp(stamp)?;
    if hash.len() != 64 || !hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err("hash is not 64 lower-case hex digits".into());
    }
    let password = inner
        .passwords
        .get(mailbox)
        .ok_or("EPL-151 No mailbox matched")?;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SHARED_KEY.as_bytes())
        .expect("hmac takes any key");
    mac.update(format!("{mailbox}:{nonce}:{count}:{password}:{stamp}").as_bytes());
    if hex::encode(mac.finalize().into_bytes()) != hash {
        return Err("Invalid Authentication Token".into());
    }
    if !inner
        .seen_nonces
        .insert((mailbox.to_owned(), nonce.to_owned(), count.to_owned()))
    {
        return Err("token reused".into());
    }
    Ok(())
}

fn check_timestamp(stamp: &str) -> Result<(), String> {
    if stamp.len() != 12 || !stamp.bytes().all(|b| b.is_ascii_digit()) {
        return Err("timestamp is not yyyyMMddHHmm".into());
    }
    let format = format_description!("[year][month][day][hour][minute]");
    let at = PrimitiveDateTime::parse(stamp, &format)
        .map_err(|_| "timestamp is not a valid date".to_owned())?
        .assume_utc();
    let skew = (OffsetDateTime::now_utc() - at).abs();
    if skew > time::Duration::hours(2) {
        return Err("timestamp outside the 2 hour window".into());
    }
    Ok(())
}
