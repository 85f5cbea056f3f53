//! The blocking pool's builder.

use super::*;
use std::time::Duration;

use crate::{Error, Result, SchemaName};

/// Builds a [`TenantPool`]. Every setting has a default, documented on its method.
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until build() is called"]
pub struct TenantPoolBuilder {
    pub(super) settings: crate::pool::settings::PoolSettings,
}

impl TenantPoolBuilder {
    /// SQL run on every new connection and again after every reset of a
    /// session, for settings the application wants on every connection (for
    /// example `SET statement_timeout = '30s'`). A borrower's own session-wide
    /// `SET` is undone when its borrow ends (see the README's *What a borrow
    /// can leave behind*); this is where deliberate ones go. Defaults to none.
    pub fn session_setup(mut self, sql: impl Into<String>) -> Self {
        self.settings.session_setup = Some(sql.into());
        self
    }

    /// Reset every session when its borrow ends, whatever was sent: one more
    /// statement per borrow. By default a borrow is followed by a reset only
    /// when it sent a statement not proven harmless; turn this on if
    /// application triggers or views call functions that change session state
    /// (a `SELECT` from such a view looks harmless). Defaults to `false`.
    pub fn reset_after_every_borrow(mut self, on: bool) -> Self {
        self.settings.reset_after_every_borrow = on;
        self
    }

    /// Defence in depth: while scoped to a tenant, a connection also switches to
    /// the tenant's own `NOLOGIN` role (`SET ROLE`, or `SET LOCAL ROLE` in
    /// transaction-scoped mode), which has rights on that tenant's schema (and
    /// reads `public`) only; on `public` it switches back. A query that names
    /// another tenant's schema, or raw SQL that moves the search path, then
    /// fails with "permission denied" instead of reading another tenant's rows.
    /// Tenants need a role ([`NewTenant::with_role`](crate::NewTenant::with_role)
    /// or [`ensure_tenant_role`](crate::ensure_tenant_role)); the database user
    /// needs `CREATEROLE` to make them. Defaults to `false`.
    pub fn tenant_roles(mut self, on: bool) -> Self {
        self.settings.tenant_roles = on;
        self
    }

    /// Replace a connection once it has been scoped to this many distinct
    /// schemas (it finishes the current borrow first). A backend keeps the
    /// catalog entries of every schema it touched, about 11 KB per table with
    /// its indexes, and never frees them, so a connection serving thousands of
    /// tenants grows without bound; this caps it (see the README's *Connection
    /// lifetime*). Going back to a schema the connection already knows costs no
    /// memory and does not count, so tenants that come back find their catalog
    /// entries warm. Defaults to 1,000; `None` turns the rule off.
    pub fn recycle_after_schemas(mut self, schemas: Option<u64>) -> Self {
        self.settings.recycle_after_schemas = schemas.map(|n| n.max(1));
        self
    }

    /// Replace a connection once its backend's memory passes this many MB
    /// (it finishes the current borrow first). The memory is read, one
    /// statement more, after a connection has been scoped to
    /// [`MEMORY_SAMPLE_NEW_SCHEMAS`](crate::MEMORY_SAMPLE_NEW_SCHEMAS) schemas
    /// new to it, or every [`MEMORY_SAMPLE_EVERY`](crate::MEMORY_SAMPLE_EVERY)
    /// checkouts, from `pg_backend_memory_contexts`,
    /// which only superusers and members of `pg_read_all_stats` may read;
    /// for other users the first sample fails and the pool stops sampling,
    /// and [`recycle_after_schemas`](Self::recycle_after_schemas) is the rule
    /// that bounds memory (`GRANT pg_read_all_stats TO app` turns this on).
    /// Not sampled in transaction-scoped mode. Unlike the schema count, this
    /// holds however many tables a tenant has. Defaults to 64 MB; `None`
    /// turns it off.
    pub fn recycle_above_memory_mb(mut self, mb: Option<u64>) -> Self {
        self.settings.recycle_above_memory_mb = mb.map(|n| n.max(1));
        self
    }

    /// Transaction-scoped mode, for PgBouncer in transaction pooling mode and RDS
    /// Proxy: every checkout opens a transaction whose first statement sets the
    /// path with `set_config(..., true)` (`SET LOCAL`), so nothing relies on
    /// session state. [`TenantPool::with_tenant`] commits when the closure returns
    /// `Ok` and rolls back otherwise; a guard from [`TenantPool::get`] is committed
    /// with [`TenantConnection::commit`] and rolled back if dropped without it.
    /// Turns path tracking off, and Diesel's prepared-statement cache too (see
    /// [`statement_cache`](Self::statement_cache)). Defaults to `false`.
    pub fn transaction_scoped(mut self, on: bool) -> Self {
        self.settings.transaction_scoped = on;
        self
    }

    /// Diesel's prepared-statement cache. Defaults to on, and to off in
    /// transaction-scoped mode, because PgBouncer before 1.21 (Debian 12 ships
    /// 1.18) does not track named prepared statements in transaction mode. With
    /// PgBouncer 1.21+ and `max_prepared_statements > 0`, it can be turned back on.
    pub fn statement_cache(mut self, on: bool) -> Self {
        self.settings.statement_cache = Some(on);
        self
    }
    /// Maximum number of connections. Defaults to 10.
    pub fn max_size(mut self, max_size: u32) -> Self {
        self.settings.max_size = max_size as usize;
        self
    }

    /// Idle connections the pool keeps open. Defaults to `None` (as many as `max_size`).
    pub fn min_idle(mut self, min_idle: Option<u32>) -> Self {
        self.settings.min_idle = min_idle.map(|n| n as usize);
        self
    }

    /// How long a checkout waits for a free connection. Defaults to 30 seconds.
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connection_timeout = timeout;
        self
    }

    /// The age at which a connection is closed and replaced. Defaults to 30 minutes.
    ///
    /// PostgreSQL backends keep the catalog entries of every schema they touch, so a
    /// connection that serves thousands of tenants grows; a bounded lifetime caps that.
    pub fn max_lifetime(mut self, lifetime: Option<Duration>) -> Self {
        self.settings.max_lifetime = lifetime;
        self
    }

    /// How long an idle connection stays open. Defaults to 10 minutes.
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.settings.idle_timeout = timeout;
        self
    }

    /// Check each connection before handing it out, as r2d2 does by default.
    /// Defaults to `true`. The check is the statement that sets the search path
    /// (on a switch) or reads it back (same tenant), so it costs the single round
    /// trip r2d2's `SELECT 1` would; a connection that fails it is discarded and
    /// another one tried.
    pub fn test_on_check_out(mut self, test: bool) -> Self {
        self.settings.test_on_check_out = test;
        self
    }

    /// Adds a schema placed after `public` on every path, such as an `extensions`
    /// schema that holds PostgreSQL extensions. Defaults to none.
    pub fn extra_schema(mut self, schema: SchemaName) -> Self {
        self.settings.extra_schemas.push(schema);
        self
    }

    /// Remember each connection's search path and skip setting it again when the
    /// next checkout is for the same scope. Defaults to `true`.
    ///
    /// The path is forgotten after anything that could change it: an error, a
    /// rollback, a statement not proven harmless (the session is then reset), a
    /// panic. With the checkout check on (the default) the path is also read
    /// back from the server on every checkout, in the statement the check
    /// sends anyway, so a path changed by a server-side function is caught.
    pub fn track_search_path(mut self, track: bool) -> Self {
        self.settings.track_search_path = track;
        self
    }

    /// The connection manager these settings describe, for use with
    /// [`r2d2::Pool::builder()`] directly.
    pub fn build_manager(&self) -> Result<TenantConnectionManager> {
        TenantConnectionManager::with_settings(self)
    }

    /// Opens the pool. Waits up to the connection timeout for its first
    /// connections, and fails with [`Error::Pool`] if the database cannot be reached.
    pub fn build(self) -> Result<TenantPool> {
        let manager = self.build_manager()?;
        let pool = r2d2::Pool::builder()
            .max_size(to_u32(self.settings.max_size))
            .min_idle(self.settings.min_idle.map(to_u32))
            .connection_timeout(self.settings.connection_timeout)
            .max_lifetime(self.settings.max_lifetime)
            .idle_timeout(self.settings.idle_timeout)
            // The checkout's own statement is the liveness check.
            .test_on_check_out(false)
            .error_handler(Box::new(r2d2::NopErrorHandler))
            .build(manager.clone())
            .map_err(Error::Pool)?;
        Ok(TenantPool {
            pool,
            settings: manager.settings,
        })
    }
}

/// A size set through this builder's `u32` setters back as r2d2's `u32`.
fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
