//! The store's error type, classified where it is produced: transient failures (the
//! connection went away, the server is restarting, the pool timed out) are worth retrying;
//! everything else is definite and needs an operator or a code fix.

use std::borrow::Cow;
use std::error::Error as _;

use tokio_postgres::error::SqlState;

/// A failed store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The server answered with an error, or the connection failed mid-operation.
    #[error("{context} failed: {}", describe(source))]
    Database {
        /// What the store was doing (`"status update"`, `"migration 2"` …).
        context: Cow<'static, str>,
        #[source]
        source: tokio_postgres::Error,
    },
    /// No connection could be taken from the pool.
    #[error(
        "could not get a database connection for {context}: {}",
        describe_pool(source)
    )]
    Pool {
        /// What the connection was needed for.
        context: Cow<'static, str>,
        #[source]
        source: deadpool_postgres::PoolError,
    },
    /// The schema of the configured outbox table does not exist.
    #[error(
        "schema \"{schema}\" does not exist; create it (CREATE SCHEMA \"{schema}\") or set \
         DISPATCHBOX_TABLE to a table in an existing schema"
    )]
    MissingSchema {
        /// The missing schema.
        schema: String,
    },
    /// The server returned something the store cannot interpret.
    #[error("unexpected answer from the database during {context}: {detail}")]
    Unexpected {
        /// What the store was doing.
        context: Cow<'static, str>,
        /// What was wrong with the answer.
        detail: String,
    },
    /// A failure as the server would report it with SQLSTATE `code`, made without a
    /// server: what the in-memory stores of the stages' unit tests fail with. It is
    /// classified by the same rules as a real one ([`StoreError::is_transient`],
    /// [`StoreError::is_about_a_row`]). A `tokio_postgres::Error` carrying a SQLSTATE
    /// cannot be built outside tokio-postgres, hence a variant of its own.
    #[cfg(test)]
    #[error("{context} failed: simulated failure (SQLSTATE {})", code.code())]
    Simulated {
        /// What the store was doing.
        context: Cow<'static, str>,
        /// The SQLSTATE the server would have sent.
        code: SqlState,
    },
}

/// `SQLSTATE message` for server errors, the plain error text otherwise.
fn describe(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => {
            let mut text = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(hint) = db.hint() {
                text.push_str("; hint: ");
                text.push_str(hint);
            }
            text
        }
        None => match err.source() {
            Some(cause) => format!("{err}: {cause}"),
            None => err.to_string(),
        },
    }
}

fn describe_pool(err: &deadpool_postgres::PoolError) -> String {
    match err {
        deadpool_postgres::PoolError::Backend(e) => describe(e),
        other => other.to_string(),
    }
}

/// SQLSTATEs that mean "try again later", not "this statement is wrong".
fn is_transient_code(code: &SqlState) -> bool {
    let code = code.code();
    code.starts_with("08") // connection exception
        || code.starts_with("53") // insufficient resources: disk full, out of memory, too many connections
        || matches!(
            code,
            "57P01" // admin_shutdown
                | "57P02" // crash_shutdown
                | "57P03" // cannot_connect_now (server starting or in recovery)
                | "57014" // query_canceled (statement_timeout)
                | "40001" // serialization_failure
                | "40P01" // deadlock_detected
                | "55P03" // lock_not_available
                | "25006" // read_only_sql_transaction (failover in progress)
        )
}

/// See [`StoreError::is_about_a_row`].
fn is_about_a_row_code(code: &str) -> bool {
    matches!(
        code.get(..2),
        Some("22" | "23" | "44" | "54" | "P0" | "38" | "39" | "2F")
    )
}

fn postgres_error_is_transient(err: &tokio_postgres::Error) -> bool {
    if let Some(code) = err.code() {
        return is_transient_code(code);
    }
    // No SQLSTATE: either the connection broke (I/O, closed) or the client rejected
    // something (type conversion), which retrying would not fix.
    err.is_closed()
        || err
            .source()
            .is_some_and(|cause| cause.downcast_ref::<std::io::Error>().is_some())
}

impl StoreError {
    /// Wraps a tokio-postgres error with what the store was doing.
    pub(crate) fn db(context: impl Into<Cow<'static, str>>, source: tokio_postgres::Error) -> Self {
        Self::Database {
            context: context.into(),
            source,
        }
    }

    /// Wraps a pool error with what the connection was needed for.
    pub(crate) fn pool(
        context: impl Into<Cow<'static, str>>,
        source: deadpool_postgres::PoolError,
    ) -> Self {
        Self::Pool {
            context: context.into(),
            source,
        }
    }

    /// A failure the server would report with SQLSTATE `code` (e.g. `"08006"` connection
    /// failure: transient; `"23514"` check violation: about a row; `"42501"` permission
    /// denied: neither), for in-memory stores in unit tests.
    #[cfg(test)]
    pub(crate) fn simulated(context: impl Into<Cow<'static, str>>, code: &str) -> Self {
        Self::Simulated {
            context: context.into(),
            code: SqlState::from_code(code),
        }
    }

    /// The SQLSTATE the server reported, if the failure came from the server.
    pub fn sqlstate(&self) -> Option<&SqlState> {
        match self {
            Self::Database { source, .. } => source.code(),
            #[cfg(test)]
            Self::Simulated { code, .. } => Some(code),
            Self::Pool {
                source: deadpool_postgres::PoolError::Backend(source),
                ..
            } => source.code(),
            _ => None,
        }
    }

    /// True when the server rejected the statement because of the data of one of the rows
    /// it touched (SQLSTATE classes 22 data exception, e.g. a value too long for its
    /// column; 23 integrity constraint violation; 44 WITH CHECK OPTION; 54 program limit,
    /// e.g. a row too big; P0, 38, 39 and 2F: an exception raised by a trigger or a
    /// function): the same rows will keep failing, and rows without the bad one would not.
    /// Failures of the whole table (missing, permission denied) and transient ones are not.
    pub fn is_about_a_row(&self) -> bool {
        self.sqlstate()
            .is_some_and(|code| is_about_a_row_code(code.code()))
    }

    /// True when retrying the same operation later may succeed (connection lost, class 08,
    /// insufficient resources (class 53: disk full, out of memory, too many connections),
    /// server shutting down or starting, pool timeout, serialization failure, deadlock).
    /// False for definite failures (missing table, permission denied, bad data).
    pub fn is_transient(&self) -> bool {
        use deadpool_postgres::PoolError;
        match self {
            Self::Database { source, .. } => postgres_error_is_transient(source),
            Self::Pool { source, .. } => match source {
                PoolError::Timeout(_) => true,
                PoolError::Backend(e) => postgres_error_is_transient(e),
                PoolError::PostCreateHook(_)
                | PoolError::Closed
                | PoolError::NoRuntimeSpecified => false,
            },
            Self::MissingSchema { .. } | Self::Unexpected { .. } => false,
            #[cfg(test)]
            Self::Simulated { code, .. } => is_transient_code(code),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_and_shutdown_codes_are_transient() {
        for code in [
            "08006", "08001", "57P01", "57P03", "40001", "40P01", "53100", "53200",
        ] {
            assert!(is_transient_code(&SqlState::from_code(code)), "{code}");
        }
        for code in ["42P01", "42501", "23505", "22P02", "42703"] {
            assert!(!is_transient_code(&SqlState::from_code(code)), "{code}");
        }
    }

    #[test]
    fn row_data_errors_are_about_a_row() {
        for code in [
            "22001", "23514", "23502", "P0001", "54000", "44000", "39P01",
        ] {
            assert!(is_about_a_row_code(code), "{code}");
        }
        for code in [
            "42P01", "42501", "42703", "08006", "40P01", "57014", "25006",
        ] {
            assert!(!is_about_a_row_code(code), "{code}");
        }
    }

    #[test]
    fn simulated_failures_are_classified_like_the_server_s() {
        let lost = StoreError::simulated("status update", "08006");
        assert!(lost.is_transient() && !lost.is_about_a_row());
        let rejected = StoreError::simulated("status update", "23514");
        assert!(!rejected.is_transient() && rejected.is_about_a_row());
        let denied = StoreError::simulated("status update", "42501");
        assert!(!denied.is_transient() && !denied.is_about_a_row());
        assert_eq!(
            rejected.to_string(),
            "status update failed: simulated failure (SQLSTATE 23514)"
        );
    }

    #[test]
    fn pool_timeouts_are_transient() {
        let err = StoreError::pool(
            "test",
            deadpool_postgres::PoolError::Timeout(deadpool_postgres::TimeoutType::Wait),
        );
        assert!(err.is_transient());
        assert!(err.sqlstate().is_none());
        let err = StoreError::pool("test", deadpool_postgres::PoolError::Closed);
        assert!(!err.is_transient());
    }
}
