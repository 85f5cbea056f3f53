//! Why a test database could not be provided, and the adapters that turn an
//! I/O or database error into one.

use crate::Error;

/// Why a test database could not be provided.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestingError {
    /// No PostgreSQL server binaries were found.
    #[error(
        "PostgreSQL server binaries (initdb, postgres) were not found on PATH or under /usr/lib/postgresql/*/bin; \
         install them (Debian/Ubuntu: apt-get install postgresql) or set DATABASE_URL to a server to use"
    )]
    PostgresNotFound,
    /// Running as root, but there is no `postgres` user to run the server as.
    #[error(
        "running as root, and PostgreSQL refuses to run as root: create a 'postgres' system user \
         (apt-get install postgresql does) or set DATABASE_URL"
    )]
    NoPostgresUser,
    /// A file or process operation failed.
    #[error("{action}")]
    Io {
        /// What was being done.
        action: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `initdb` failed.
    #[error("initdb failed: {output}")]
    InitDb {
        /// What it printed.
        output: String,
    },
    /// The server did not start.
    #[error("the throwaway PostgreSQL server did not start: {log}")]
    ServerStart {
        /// The end of the server's log.
        log: String,
    },
    /// The server could not be reached or a database could not be created.
    #[error("{action}")]
    Database {
        /// What was being done.
        action: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A tenancy operation failed.
    #[error(transparent)]
    Tenancy(#[from] Error),
    /// The shared throwaway cluster failed to start earlier in this process.
    #[error("the throwaway PostgreSQL cluster could not be started: {0}")]
    Shared(String),
    /// A Citus cluster was asked for, but the Citus extension is not installed
    /// for the PostgreSQL binaries in use and `DIESEL_TENANCY_CITUS_URL` is not set.
    #[error(
        "the Citus extension (citus.so) is not installed for the PostgreSQL server in use: \
         build and install it from source (the project's .ci/run does so with a script), \
         or set DIESEL_TENANCY_CITUS_URL to the admin URL of a running Citus coordinator \
         whose pg_dist_node lists its workers"
    )]
    CitusNotInstalled,
}

/// Turns an I/O error into [`TestingError::Io`], saying what was being done.
pub(super) fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> TestingError {
    let action = action.into();
    move |source| TestingError::Io { action, source }
}

/// Turns a database (or URL) error into [`TestingError::Database`], saying
/// what was being done.
pub(super) fn db_err<E: std::error::Error + Send + Sync + 'static>(
    action: impl Into<String>,
) -> impl FnOnce(E) -> TestingError {
    let action = action.into();
    move |e| TestingError::Database {
        action,
        source: Box::new(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_citus_says_how_to_get_it() {
        let message = TestingError::CitusNotInstalled.to_string();
        assert!(message.contains(".ci/run"), "{message}");
        assert!(message.contains("DIESEL_TENANCY_CITUS_URL"), "{message}");
    }
}
