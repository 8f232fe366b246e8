//! PostgreSQL errors as the seam's [`StoreError`]: a lost or refused connection, a server
//! shutting down or a read-only standby is [`StoreError::Unavailable`] (retryable; the
//! pool reconnects), an internal error is [`StoreError::Corrupt`], anything else is a
//! storage error. Texts carry SQLSTATE codes and the
//! server's message, never parameters (which could be patient data).

use tokio_postgres::error::SqlState;

use crate::backend::StoreError;

/// Maps a driver error.
pub(crate) fn pg(e: tokio_postgres::Error) -> StoreError {
    let Some(db) = e.as_db_error() else {
        // No server answer: the connection failed or closed. The driver's text names only
        // the kind ("error performing TLS handshake"); its sources say why (an unknown
        // issuer, a refused connection).
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        return StoreError::Unavailable(text);
    };
    let code = db.code();
    let class = &code.code()[..2];
    let text = format!("{} ({})", db.message(), code.code());
    match class {
        // Connection exceptions, insufficient resources, operator intervention (shutdown,
        // cannot connect now), read-only transaction on a standby.
        "08" | "53" | "57" => StoreError::Unavailable(text),
        _ if code == &SqlState::READ_ONLY_SQL_TRANSACTION => StoreError::Unavailable(text),
        "XX" => StoreError::Corrupt(text),
        _ => StoreError::Storage(text),
    }
}

/// Whether `e` is PostgreSQL rolling a transaction back for its own reasons (SQLSTATE class
/// 40: a deadlock it broke, a serialization failure): nothing was written, and the same
/// transaction run again may well succeed.
pub(crate) fn rolled_back(e: &StoreError) -> bool {
    // The text ends with the SQLSTATE in brackets (see `pg`).
    matches!(e, StoreError::Storage(text)
        if text.rsplit_once('(').is_some_and(|(_, code)| code.len() == 6 && code.starts_with("40") && code.ends_with(')')))
}

/// Maps a pool error (no connection could be had).
pub(crate) fn pool(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg(e),
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// A stored value that does not decode.
pub(crate) fn decode(e: prost::DecodeError) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_40_is_a_server_rollback_and_nothing_else_is() {
        let storage = |t: &str| StoreError::Storage(t.into());
        assert!(rolled_back(&storage("deadlock detected (40P01)")));
        assert!(rolled_back(&storage("could not serialize access (40001)")));
        assert!(!rolled_back(&storage("duplicate key value (23505)")));
        assert!(!rolled_back(&storage("no code at all é")));
        assert!(!rolled_back(&StoreError::Unavailable(
            "deadlock detected (40P01)".into()
        )));
    }
}
