//! The synchronous connection the registry, lifecycle, migration and Citus
//! functions run on: libpq's `PgConnection`, the pool's connections, or, in
//! async applications, diesel-async's `AsyncConnectionWrapper` over an async
//! connection (see [`crate::asynchronous`]).

use diesel::connection::{Connection, DefaultLoadingMode, LoadConnection};
use diesel::pg::Pg;

/// A Diesel connection to PostgreSQL that this crate's blocking functions take.
///
/// Implemented for every `'static` Diesel connection with the PostgreSQL
/// backend that can load rows: `diesel::PgConnection`,
/// [`TenantConnection`](crate::TenantConnection),
/// [`ManagedConnection`](crate::ManagedConnection) and
/// `diesel_async::async_connection_wrapper::AsyncConnectionWrapper`.
pub trait PgConn: Connection<Backend = Pg> + LoadConnection<DefaultLoadingMode> + 'static {}

impl<C> PgConn for C where C: Connection<Backend = Pg> + LoadConnection<DefaultLoadingMode> + 'static
{}

/// Refuses a database URL that cannot work, before any connection is tried.
pub(crate) fn check_database_url(url: &str) -> crate::Result<()> {
    if url.trim().is_empty() {
        return Err(crate::Error::Config {
            reason: "the database URL is empty".into(),
        });
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        url::Url::parse(url).map_err(|e| crate::Error::Config {
            reason: format!("the database URL is malformed: {e}"),
        })?;
    } else if url.contains("://") {
        return Err(crate::Error::Config {
            reason: "the database URL must start with postgres:// or postgresql://".into(),
        });
    }
    Ok(())
}

/// Where a parallel run ([`Migrator::migrate_all`](crate::Migrator::migrate_all),
/// `create_tenants`) gets its connections: session-level ones scoped to
/// `public` (never transaction-scoped), one per worker thread, replaced now
/// and then to bound what a backend caches.
pub(crate) trait Sessions: Sync {
    /// The connection a worker runs on.
    type Conn: PgConn;
    /// A connection for a worker. Called on the worker's thread, which may block.
    fn session(&self) -> crate::Result<Self::Conn>;
    /// Marks `conn` to be closed instead of reused.
    fn discard(conn: &mut Self::Conn);
    /// The pool's size, which bounds the default parallelism.
    fn max_size(&self) -> usize;
}
