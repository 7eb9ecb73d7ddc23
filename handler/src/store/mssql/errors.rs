//! Sorts SQL Server (tiberius) failures into the store's error classes, so the API answers 409 / 503 / 500 on purpose.
//!
//! The decision is a pure function of what the failure carries: the server's error number and message for
//! errors the server sent ([`classify_server_error`]), the I/O error kind for transport failures. Transient
//! failures become [`StoreError::Unavailable`], which [`is_retryable`] (and so `retry::retry`) retries and the
//! API answers with 503 and `Retry-After`.
//!
//! Sources for the numbers: "Troubleshoot transient connection errors" (Azure SQL Database) and the list the
//! Microsoft.Data.SqlClient retry logic treats as transient.

use std::io::ErrorKind;

use crate::store::StoreError;

/// A uniqueness constraint (PRIMARY KEY or UNIQUE constraint) refused the row.
pub const UNIQUE_CONSTRAINT_VIOLATION: u32 = 2627;
/// A unique index refused the row ("Cannot insert duplicate key row").
pub const UNIQUE_INDEX_VIOLATION: u32 = 2601;
/// A FOREIGN KEY / REFERENCE (or CHECK) constraint refused the statement.
pub const CONSTRAINT_CONFLICT: u32 = 547;
/// The transaction was chosen as a deadlock victim; the whole transaction may be run again.
pub const DEADLOCK_VICTIM: u32 = 1205;
/// SqlClient's number for a client-side command timeout (-2); the server never sends it, but callers that
/// synthesize errors use it, so it is accepted here as the two's-complement `u32`.
pub const CLIENT_TIMEOUT: u32 = (-2i32) as u32;

/// Error numbers after which the same work can succeed if tried again (on a new connection for the
/// connection-level ones).
const TRANSIENT_NUMBERS: &[u32] = &[
    DEADLOCK_VICTIM,
    233,   // the connection was closed by the server (no process on the other end of the pipe)
    4060,  // cannot open the database requested by the login (moving / not yet online)
    10053, // transport-level error: connection aborted by the host
    10054, // transport-level error: connection reset by the peer
    10060, // network-related error: connection attempt timed out
    10928, // resource ID limit reached (workers / sessions)
    10929, // resource ID minimum guarantee not available
    40143, // the service encountered an error processing the request
    40197, // the service encountered an error processing the request (reconfiguration, failover)
    40501, // the service is currently busy
    40540, // the service encountered an error processing the request
    40613, // database not currently available
    42108, // cannot connect to the SQL pool (Synapse / serverless)
    42109, // the SQL pool is warming up
    49918, // not enough resources to process the request
    49919, // too many create / update operations in progress
    49920, // too many operations in progress for the subscription
    CLIENT_TIMEOUT,
];

/// True for SQL Server error numbers that signal a transient condition (throttling, failover, deadlock,
/// dropped connection): retrying the whole transaction may succeed.
pub fn is_transient_number(n: u32) -> bool {
    TRANSIENT_NUMBERS.contains(&n)
}

/// Error numbers of a database that cannot take writes now: read-only (3906), its log or a filegroup full (9002,
/// 1105, 1101), or the Azure SQL size quota reached (40544, 40552). Not a bug in the statement: the store is
/// unavailable (503, the breaker opens, readiness follows), as on SQLite for a read-only or full file.
const UNWRITABLE_NUMBERS: &[u32] = &[3906, 9002, 1105, 1101, 40544, 40552];

/// True only for [`StoreError::Unavailable`]: the only class worth trying again.
pub fn is_retryable(err: &StoreError) -> bool {
    matches!(err, StoreError::Unavailable(_))
}

/// The server rolled the whole transaction back: nothing of it took effect.
#[derive(Debug, thiserror::Error)]
#[error("SQL Server error {number} (the transaction was rolled back): {message}")]
pub struct RolledBack {
    number: u32,
    message: String,
}

/// True for a failure the server proves took nothing into effect (a deadlock victim), which even work that is not
/// idempotent may try again.
pub fn was_rolled_back(err: &StoreError) -> bool {
    matches!(err, StoreError::Unavailable(cause) if cause.chain().any(|c| c.is::<RolledBack>()))
}

/// Classifies an error the server sent, from its number and message.
///
/// 547 is used by SQL Server for FOREIGN KEY / REFERENCE *and* CHECK constraints; a message naming a CHECK
/// constraint is not a reference problem and stays [`StoreError::Other`]. Any other 547 (including servers
/// answering in another language) is a [`StoreError::ForeignKey`].
pub fn classify_server_error(number: u32, message: &str) -> StoreError {
    match number {
        UNIQUE_CONSTRAINT_VIOLATION | UNIQUE_INDEX_VIOLATION => StoreError::Conflict(message.to_string()),
        CONSTRAINT_CONFLICT if message.contains("CHECK constraint") => {
            StoreError::Other(anyhow::anyhow!("SQL Server error {number}: {message}"))
        }
        CONSTRAINT_CONFLICT => StoreError::ForeignKey(message.to_string()),
        DEADLOCK_VICTIM => StoreError::Unavailable(RolledBack { number, message: message.to_owned() }.into()),
        n if UNWRITABLE_NUMBERS.contains(&n) => {
            StoreError::Unavailable(anyhow::anyhow!("SQL Server error {n} (the database takes no writes): {message}"))
        }
        n if is_transient_number(n) => {
            StoreError::Unavailable(anyhow::anyhow!("SQL Server error {n} (transient): {message}"))
        }
        n => StoreError::Other(anyhow::anyhow!("SQL Server error {n}: {message}")),
    }
}

/// Classifies any tiberius failure.
///
/// - server errors: by number, see [`classify_server_error`];
/// - I/O failures (refused, reset, closed, timed out, TLS handshake cut off) are
///   [`StoreError::Unavailable`], except kinds that only a local misconfiguration produces (a missing
///   certificate file, an invalid argument, a permission problem);
/// - a connection tiberius marked unusable (a cancelled write or a command timeout left it out of sync) is
///   [`StoreError::Unavailable`]: the same work on a new connection can succeed;
/// - everything else (protocol, conversion, TLS certificate rejection, a second routing redirect) is
///   [`StoreError::Other`].
pub fn classify(err: tiberius::error::Error) -> StoreError {
    use tiberius::error::Error as E;
    match err {
        E::Server(token) => classify_server_error(token.code(), token.message()),
        E::Io { kind, .. } if is_configuration_io(kind) => StoreError::Other(err.into()),
        E::Io { .. } => StoreError::Unavailable(err.into()),
        E::Protocol(ref message) if message.contains("open a new connection") => StoreError::Unavailable(err.into()),
        other => StoreError::Other(other.into()),
    }
}

/// I/O error kinds that come from local configuration (certificate and key files, arguments), not from
/// the network, and so do not go away by trying again.
fn is_configuration_io(kind: ErrorKind) -> bool {
    matches!(kind, ErrorKind::NotFound | ErrorKind::InvalidInput | ErrorKind::PermissionDenied | ErrorKind::Unsupported)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tiberius::error::Error as TdsError;

    // TokenError has no public constructor; real `Error::Server` values come from a scripted TDS server in
    // `connection::tests` (`a_server_error_at_login_is_classified_by_number`). Here the pure function is
    // tested with the real numbers and messages.

    #[test]
    fn unique_violations_are_conflicts_with_the_server_message() {
        let msg = "Violation of UNIQUE KEY constraint 'UQ_tenants_slug'. Cannot insert duplicate key in object \
                   'dbo.tenants'. The duplicate key value is (acme).";
        match classify_server_error(2627, msg) {
            StoreError::Conflict(m) => assert_eq!(m, msg),
            other => panic!("2627 gave {other:?}"),
        }
        let msg = "Cannot insert duplicate key row in object 'dbo.keys' with unique index 'IX_keys_hash'.";
        assert!(matches!(classify_server_error(2601, msg), StoreError::Conflict(m) if m == msg));
    }

    #[test]
    fn foreign_key_conflicts_are_reference_violations_but_check_constraints_are_not() {
        let insert = "The INSERT statement conflicted with the FOREIGN KEY constraint \"FK_usage_tenant\".";
        assert!(matches!(classify_server_error(547, insert), StoreError::ForeignKey(m) if m == insert));
        let delete = "The DELETE statement conflicted with the REFERENCE constraint \"FK_usage_tenant\".";
        assert!(matches!(classify_server_error(547, delete), StoreError::ForeignKey(_)));
        let check = "The INSERT statement conflicted with the CHECK constraint \"CK_usage_quantity\".";
        assert!(matches!(classify_server_error(547, check), StoreError::Other(_)));
    }

    #[test]
    fn every_transient_number_is_unavailable_and_retryable() {
        let numbers = [
            4060, 40197, 40501, 40613, 49918, 49919, 49920, 10928, 10929, 1205, 233, 10053, 10054, 10060, 40143, 40540,
            42108, 42109,
        ];
        for n in numbers.into_iter().chain([CLIENT_TIMEOUT]) {
            assert!(is_transient_number(n), "{n}");
            let err = classify_server_error(n, "transient");
            assert!(matches!(err, StoreError::Unavailable(_)), "{n} gave {err:?}");
            assert!(is_retryable(&err), "{n}");
        }
        assert_eq!(CLIENT_TIMEOUT, u32::MAX - 1);
    }

    #[test]
    fn a_database_that_takes_no_writes_is_unavailable_not_a_bug() {
        for n in [3906, 9002, 1105, 1101, 40544, 40552] {
            let err = classify_server_error(n, "read-only or full");
            assert!(matches!(err, StoreError::Unavailable(_)), "{n} gave {err:?}");
            assert!(!was_rolled_back(&err), "{n}");
        }
        assert!(was_rolled_back(&classify_server_error(1205, "deadlock victim")));
    }

    #[test]
    fn other_numbers_are_not_transient() {
        // login failed, invalid object name, syntax error, arithmetic overflow, permission denied
        for n in [18456, 208, 102, 8115, 229, 0, 2628] {
            assert!(!is_transient_number(n), "{n}");
            let err = classify_server_error(n, "boom");
            assert!(matches!(err, StoreError::Other(_)), "{n} gave {err:?}");
            assert!(!is_retryable(&err));
        }
    }

    #[test]
    fn the_message_and_number_reach_the_error_text() {
        let err = classify_server_error(40613, "Database 'meterline' on server 'x' is not currently available.");
        let StoreError::Unavailable(inner) = err else { panic!("not unavailable") };
        let text = format!("{inner:#}");
        assert!(text.contains("40613") && text.contains("not currently available"), "{text}");
    }

    #[test]
    fn io_failures_are_unavailable() {
        for kind in [
            ErrorKind::ConnectionRefused,
            ErrorKind::ConnectionReset,
            ErrorKind::ConnectionAborted,
            ErrorKind::BrokenPipe,
            ErrorKind::UnexpectedEof,
            ErrorKind::TimedOut,
            ErrorKind::NotConnected,
            ErrorKind::InvalidData, // what tokio-rustls reports when a handshake is cut or garbled
        ] {
            let err = classify(std::io::Error::new(kind, "down").into());
            assert!(matches!(err, StoreError::Unavailable(_)), "{kind:?} gave {err:?}");
        }
    }

    #[test]
    fn configuration_io_failures_are_not_retried() {
        for kind in [ErrorKind::NotFound, ErrorKind::InvalidInput, ErrorKind::PermissionDenied] {
            let err = classify(TdsError::Io { kind, message: "no such certificate file".into() });
            assert!(matches!(err, StoreError::Other(_)), "{kind:?} gave {err:?}");
        }
    }

    #[test]
    fn a_connection_tiberius_gave_up_on_is_unavailable() {
        let poisoned = TdsError::Protocol(
            "connection was left in an inconsistent state by a cancelled write and can no longer be used; open a \
             new connection"
                .into(),
        );
        assert!(matches!(classify(poisoned), StoreError::Unavailable(_)));
    }

    #[test]
    fn other_tiberius_errors_are_other() {
        for err in [
            TdsError::Protocol("Server does not allow the requested encryption level.".into()),
            TdsError::Tls("the server's certificate was rejected during the TLS handshake".into()),
            TdsError::Conversion("bad".into()),
            TdsError::Encoding("bad".into()),
            TdsError::Utf8,
            TdsError::Utf16,
            TdsError::BulkInput("bad".into()),
            TdsError::Routing { host: "gw.example".into(), port: 11000 },
            "x".parse::<i32>().unwrap_err().into(),
        ] {
            let shown = format!("{err:?}");
            assert!(matches!(classify(err), StoreError::Other(_)), "{shown}");
        }
    }
}
