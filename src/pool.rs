//! The tenant-scoped connection pool over r2d2.

mod connection;

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

use diesel::connection::{
    AnsiTransactionManager, Connection, SimpleConnection, TransactionManager,
};
use diesel::pg::PgConnection;
use diesel::prelude::RunQueryDsl;
use diesel::r2d2::R2D2Connection;

use crate::registry::{self, Tenant};
use crate::scope::ScopeStats;
use crate::scope::{
    self, ConnState, CurrentState, DEFAULT_RECYCLE_AFTER_SCHEMAS, Release, ScopeConfig, ScopeKey,
    ScopeWatch, ServerState, SetPath, Step, TempObjects,
};
use crate::{Error, Result, SchemaName};

/// Settings shared by the manager and every connection it makes.
#[derive(Debug)]
struct Settings {
    database_url: String,
    /// Keep Diesel's prepared-statement cache.
    statement_cache: bool,
    scope: ScopeConfig,
}

/// An r2d2 connection manager for tenant-scoped PostgreSQL connections.
///
/// This is the pool swap: hand it to [`r2d2::Pool::builder()`] where an application
/// used diesel's `ConnectionManager<PgConnection>`. A connection from such a pool
/// used directly runs on `public` (see [`ManagedConnection`]); scope it to a
/// tenant with [`TenantConnection::scope`], or wrap the pool with
/// [`TenantPool::from_r2d2`].
///
/// ```no_run
/// use diesel_tenancy::{TenantConnection, TenantConnectionManager};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let manager = TenantConnectionManager::new("postgres://localhost/app")?;
/// let pool = r2d2::Pool::builder().max_size(20).build(manager)?;
/// let conn = TenantConnection::scope_public(pool.get()?)?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct TenantConnectionManager {
    settings: Arc<Settings>,
}

impl TenantConnectionManager {
    /// A manager for `database_url` (a `postgres://` URL or a libpq key=value string),
    /// with no extra schemas on the path and search-path tracking on.
    pub fn new(database_url: impl Into<String>) -> Result<Self> {
        TenantPool::builder(database_url).build_manager()
    }

    /// Counters of the scoping done on connections from this manager.
    pub fn stats(&self) -> ScopeStats {
        self.settings.scope.stats()
    }

    fn with_settings(b: &TenantPoolBuilder) -> Result<Self> {
        crate::conn::check_database_url(&b.database_url)?;
        Ok(TenantConnectionManager {
            settings: Arc::new(Settings {
                database_url: b.database_url.clone(),
                statement_cache: b.statement_cache.unwrap_or(!b.transaction_scoped),
                scope: ScopeConfig::new(
                    b.extra_schemas.clone(),
                    b.track_search_path,
                    b.test_on_check_out,
                    b.transaction_scoped,
                    b.recycle_after_schemas,
                    b.tenant_roles,
                    b.reset_after_every_borrow,
                    b.session_setup.clone(),
                ),
            }),
        })
    }
}

/// A pooled physical connection: what `pool.get()` returns on an
/// `r2d2::Pool<TenantConnectionManager>`.
///
/// It is a Diesel connection in its own right, so code written for diesel's
/// `ConnectionManager<PgConnection>` keeps working unchanged after the manager
/// is swapped (`&mut conn`, transactions, `run_pending_migrations`): on its
/// first statement in a borrow it scopes itself to `public` (plus the pool's
/// extra schemas), whatever the previous borrower left, and when it goes back
/// to the pool it is released exactly as a [`TenantConnection`] is. To work in
/// a tenant's schema, scope it with [`TenantConnection::scope`] or use
/// [`TenantPool`]:
///
/// ```no_run
/// use diesel::prelude::*;
/// use diesel_tenancy::{TenantConnection, TenantConnectionManager};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let tenant: diesel_tenancy::Tenant = unimplemented!();
/// let pool = r2d2::Pool::builder().build(TenantConnectionManager::new("postgres://localhost/app")?)?;
/// let mut conn = pool.get()?; // public, as before the swap
/// diesel::sql_query("SELECT 1").execute(&mut conn)?;
/// let mut acme = TenantConnection::scope(pool.get()?, &tenant)?; // the tenant's schema
/// diesel::sql_query("SELECT 1").execute(&mut acme)?;
/// # Ok(()) }
/// ```
pub struct ManagedConnection {
    conn: PgConnection,
    settings: Arc<Settings>,
    /// The instrumentation was replaced: nothing about the session is known.
    lost: bool,
}

impl std::fmt::Debug for ManagedConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedConnection")
            .field("lost", &self.lost)
            .finish_non_exhaustive()
    }
}

impl r2d2::ManageConnection for TenantConnectionManager {
    type Connection = ManagedConnection;
    type Error = diesel::r2d2::Error;

    fn connect(&self) -> Result<ManagedConnection, Self::Error> {
        let mut conn = PgConnection::establish(&self.settings.database_url)
            .map_err(diesel::r2d2::Error::ConnectionError)?;
        if let Some(setup) = &self.settings.scope.session_setup {
            conn.batch_execute(setup)
                .map_err(diesel::r2d2::Error::QueryError)?;
        }
        let inner = diesel::connection::get_default_instrumentation();
        conn.set_instrumentation(ScopeWatch::new(inner));
        if !self.settings.statement_cache {
            conn.set_prepared_statement_cache_size(diesel::connection::CacheSize::Disabled);
        }
        Ok(ManagedConnection {
            conn,
            settings: Arc::clone(&self.settings),
            lost: false,
        })
    }

    /// The liveness check (`test_on_check_out`, for pools built with r2d2's
    /// own builder). It reads the session's state in the same round trip as a
    /// plain `SELECT 1` would take; the checkout that follows uses what it read.
    fn is_valid(&self, conn: &mut ManagedConnection) -> Result<(), Self::Error> {
        conn.mark_own();
        let server = CurrentState.get_result::<ServerState>(&mut conn.conn);
        let Some(state) = conn.state() else {
            return Err(diesel::r2d2::Error::QueryError(
                diesel::result::Error::BrokenTransactionManager,
            ));
        };
        match server {
            Ok(server) => {
                state.settle_liveness(&server);
                Ok(())
            }
            Err(e) => {
                state.discard = true;
                Err(diesel::r2d2::Error::QueryError(e))
            }
        }
    }

    /// Called by r2d2 whenever a connection comes back. A connection used
    /// directly as a Diesel connection (a plain borrow, scoped to `public` on
    /// first use) is released here exactly as a [`TenantConnection`] is when
    /// dropped: reset if the borrow may have left state, closed if that is
    /// unknowable.
    fn has_broken(&self, conn: &mut ManagedConnection) -> bool {
        if conn.state().is_some_and(|state| state.in_borrow) {
            conn.leave();
        }
        std::thread::panicking()
            || conn.conn.is_broken()
            || conn.state().is_none_or(|state| state.discard)
    }
}

impl ManagedConnection {
    /// The connection's scope state, kept in its instrumentation; `None` (and
    /// the connection marked lost) if someone replaced the instrumentation.
    fn state(&mut self) -> Option<&mut ConnState> {
        match scope::watch_of(self.conn.instrumentation()) {
            Some(watch) => Some(&mut watch.state),
            None => {
                self.lost = true;
                None
            }
        }
    }

    /// Marks the next statement as the crate's own.
    fn mark_own(&mut self) {
        if let Some(watch) = scope::watch_of(self.conn.instrumentation()) {
            watch.own_statement_next();
        }
    }

    fn lost_error(&mut self, scope: &ScopeKey) -> Error {
        self.lost = true;
        scope.instrumentation_lost()
    }

    /// Drives the scope state machine until the connection holds `scope`: in
    /// the common case one statement (set the path on a switch, read it back
    /// for the same tenant), or none.
    fn enter(&mut self, scope: &ScopeKey, local: bool) -> Result<()> {
        let settings = Arc::clone(&self.settings);
        let cfg = &settings.scope;
        match scope::watch_of(self.conn.instrumentation()) {
            Some(watch) => {
                watch.clear_own_statement();
                watch.state.begin_checkout(cfg);
            }
            None => return Err(self.lost_error(scope)),
        }
        for _ in 0..scope::MAX_STEPS {
            let Some(step) = self.state().map(|s| s.plan(cfg, scope, local)) else {
                return Err(self.lost_error(scope));
            };
            match step {
                Step::Ready => {
                    if let Some(state) = self.state() {
                        state.in_borrow = true;
                    }
                    return Ok(());
                }
                Step::Reset => {
                    self.end_own_transaction();
                    let ok = self.run_reset();
                    let Some(state) = self.state() else {
                        return Err(self.lost_error(scope));
                    };
                    state.settle_reset(cfg, ok);
                    if !ok {
                        return Err(scope.reset_failed());
                    }
                }
                Step::ProbeTemp => {
                    self.mark_own();
                    let answer = TempObjects.get_result::<bool>(&mut self.conn);
                    let Some(state) = self.state() else {
                        return Err(self.lost_error(scope));
                    };
                    state.settle_probe(scope, answer)?;
                }
                Step::ReadBack => {
                    self.mark_own();
                    let answer = CurrentState.get_result::<ServerState>(&mut self.conn);
                    let Some(state) = self.state() else {
                        return Err(self.lost_error(scope));
                    };
                    state.settle(cfg, scope, None, answer)?;
                }
                Step::Set { path, role, local } => {
                    if local {
                        if let Err(source) =
                            AnsiTransactionManager::begin_transaction(&mut self.conn)
                        {
                            if let Some(state) = self.state() {
                                state.discard = true;
                            }
                            return Err(Error::Scope {
                                scope: scope.head().to_owned(),
                                source,
                            });
                        }
                    }
                    self.mark_own();
                    let answer = set_path(&mut self.conn, path.clone(), role, local);
                    let Some(state) = self.state() else {
                        return Err(self.lost_error(scope));
                    };
                    let settled = state.settle(cfg, scope, Some(&path), answer);
                    if local && settled.is_err() {
                        self.end_own_transaction();
                    }
                    settled?;
                }
            }
        }
        self.end_own_transaction();
        if let Some(state) = self.state() {
            state.discard = true;
        }
        Err(scope.unsettled())
    }

    /// Rolls back a transaction the checkout opened (transaction-scoped mode)
    /// before the session is reset or the checkout fails.
    fn end_own_transaction(&mut self) {
        let depth = AnsiTransactionManager::transaction_manager_status_mut(&mut self.conn)
            .transaction_depth();
        let ok = match depth {
            Ok(None) => true,
            Ok(Some(_)) => AnsiTransactionManager::rollback_transaction(&mut self.conn).is_ok(),
            Err(_) => false,
        };
        if !ok {
            if let Some(state) = self.state() {
                state.discard = true;
            }
        }
    }

    /// Runs the reset batch (one round trip).
    fn run_reset(&mut self) -> bool {
        let settings = Arc::clone(&self.settings);
        self.mark_own();
        let ok = self.conn.batch_execute(settings.scope.reset_sql()).is_ok();
        // Notifications that arrived before UNLISTEN wait in the client's
        // queue; the next borrower must not receive them.
        let _ = self.conn.notifications_iter().count();
        ok
    }

    /// Restores the pool's invariant when a scoped borrow ends: the session is
    /// outside any transaction, holds nothing a borrower left (or is reset),
    /// and its remembered path is the true one or forgotten; or else the
    /// connection is marked to be closed.
    fn leave(&mut self) {
        let settings = Arc::clone(&self.settings);
        let cfg = &settings.scope;
        let panicking = std::thread::panicking();
        let in_transaction = AnsiTransactionManager::transaction_manager_status_mut(&mut self.conn)
            .transaction_depth()
            .ok()
            .map(|depth| depth.is_some());
        let Some(watch) = scope::watch_of(self.conn.instrumentation()) else {
            self.lost = true;
            return;
        };
        watch.clear_own_statement();
        if watch.state.release(cfg, in_transaction, panicking) == Release::Reset {
            let ok = self.run_reset();
            if let Some(state) = self.state() {
                state.settle_reset(cfg, ok);
            }
        }
    }
}

/// Sends [`SetPath`] in the variant the scope needs.
fn set_path(
    conn: &mut PgConnection,
    path: String,
    role: Option<String>,
    local: bool,
) -> diesel::QueryResult<ServerState> {
    match (role, local) {
        (None, false) => SetPath::<false, false> {
            path,
            role: String::new(),
        }
        .get_result(conn),
        (None, true) => SetPath::<false, true> {
            path,
            role: String::new(),
        }
        .get_result(conn),
        (Some(role), false) => SetPath::<true, false> { path, role }.get_result(conn),
        (Some(role), true) => SetPath::<true, true> { path, role }.get_result(conn),
    }
}

/// A pooled connection scoped to one tenant (or to `public`) for as long as it lives.
///
/// It dereferences to [`PgConnection`], so all of Diesel works on it: pass
/// `&mut *conn` (or `&mut conn` where a `&mut PgConnection` is expected). When it
/// is dropped it goes back to the pool, and nothing of this borrow reaches the
/// next one: a borrow that sent any statement not proven harmless (see the
/// README's *What a borrow can leave behind*) is followed by a reset of the
/// session, and a connection left inside a transaction, mid-panic or with its
/// instrumentation replaced is closed.
pub struct TenantConnection {
    conn: r2d2::PooledConnection<TenantConnectionManager>,
    tenant: Option<Tenant>,
    /// Transaction-scoped mode: the transaction this guard opened is still open.
    own_transaction: bool,
}

impl std::fmt::Debug for TenantConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantConnection")
            .field("scope", &self.scope_name())
            .finish()
    }
}

impl TenantConnection {
    /// Scopes a connection from a pool of [`TenantConnectionManager`] to `tenant`.
    ///
    /// Fails with [`Error::TenantSuspended`] before any statement runs if the tenant
    /// is suspended, and with [`Error::SchemaMissing`] if its schema is gone.
    pub fn scope(
        mut conn: r2d2::PooledConnection<TenantConnectionManager>,
        tenant: &Tenant,
    ) -> Result<Self> {
        let cfg = &conn.settings.scope;
        cfg.check_tenant(tenant)?;
        let scope = ScopeKey::Tenant(tenant.schema().clone(), cfg.role_of(tenant)?);
        let own_transaction = cfg.transaction_scoped;
        conn.enter(&scope, own_transaction)?;
        Ok(TenantConnection {
            conn,
            tenant: Some(tenant.clone()),
            own_transaction,
        })
    }

    /// Scopes a connection from a pool of [`TenantConnectionManager`] to the shared
    /// `public` schema (plus the pool's extra schemas).
    pub fn scope_public(conn: r2d2::PooledConnection<TenantConnectionManager>) -> Result<Self> {
        let own_transaction = conn.settings.scope.transaction_scoped;
        Self::scope_public_with(conn, own_transaction)
    }

    /// Scopes a connection to `public`, in a transaction of its own
    /// (`own_transaction`, transaction-scoped mode) or for the session.
    fn scope_public_with(
        mut conn: r2d2::PooledConnection<TenantConnectionManager>,
        own_transaction: bool,
    ) -> Result<Self> {
        conn.enter(&ScopeKey::Public, own_transaction)?;
        Ok(TenantConnection {
            conn,
            tenant: None,
            own_transaction,
        })
    }

    /// In transaction-scoped mode, commits the transaction the checkout opened
    /// (a connection dropped without `commit` rolls it back). In session mode
    /// there is nothing to commit and this does nothing.
    pub fn commit(mut self) -> Result<()> {
        if std::mem::take(&mut self.own_transaction) {
            AnsiTransactionManager::commit_transaction(&mut self.conn.conn).map_err(|e| {
                if let Some(state) = self.conn.state() {
                    state.discard = true;
                }
                Error::Database {
                    action: format!("commit the transaction scoped to {}", self.scope_name()),
                    source: e,
                }
            })?;
        }
        Ok(())
    }

    /// Whether this guard holds a transaction it opened (transaction-scoped
    /// mode) that [`commit`](Self::commit) would commit.
    pub fn in_own_transaction(&self) -> bool {
        self.own_transaction
    }

    /// Close this connection when it is dropped instead of returning it to the
    /// pool (for example to free a backend's memory after touching many schemas).
    pub fn discard(&mut self) {
        if let Some(state) = self.conn.state() {
            state.discard = true;
        }
    }

    /// The tenant this connection is scoped to, or `None` for `public`.
    pub fn tenant(&self) -> Option<&Tenant> {
        self.tenant.as_ref()
    }

    /// The schema at the head of the search path: the tenant's, or `public`.
    pub fn scope_name(&self) -> &str {
        self.tenant
            .as_ref()
            .map_or("public", |t| t.schema().as_str())
    }
}

impl Deref for TenantConnection {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.conn.conn
    }
}

impl DerefMut for TenantConnection {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn.conn
    }
}

impl AsMut<PgConnection> for TenantConnection {
    fn as_mut(&mut self) -> &mut PgConnection {
        &mut self.conn.conn
    }
}

impl Drop for TenantConnection {
    fn drop(&mut self) {
        if std::mem::take(&mut self.own_transaction) && !std::thread::panicking() {
            let depth = AnsiTransactionManager::transaction_manager_status_mut(&mut self.conn.conn)
                .transaction_depth();
            let rolled_back = matches!(depth, Ok(Some(d)) if d.get() == 1)
                && AnsiTransactionManager::rollback_transaction(&mut self.conn.conn).is_ok();
            if !rolled_back && !matches!(depth, Ok(None)) {
                if let Some(state) = self.conn.state() {
                    state.discard = true;
                }
            }
        }
        self.conn.leave();
    }
}

/// Builds a [`TenantPool`]. Every setting has a default, documented on its method.
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until build() is called"]
pub struct TenantPoolBuilder {
    database_url: String,
    max_size: u32,
    min_idle: Option<u32>,
    connection_timeout: Duration,
    max_lifetime: Option<Duration>,
    idle_timeout: Option<Duration>,
    test_on_check_out: bool,
    extra_schemas: Vec<SchemaName>,
    track_search_path: bool,
    transaction_scoped: bool,
    statement_cache: Option<bool>,
    recycle_after_schemas: Option<u64>,
    tenant_roles: bool,
    reset_after_every_borrow: bool,
    session_setup: Option<String>,
}

impl TenantPoolBuilder {
    /// SQL run on every new connection and again after every reset of a
    /// session, for settings the application wants on every connection (for
    /// example `SET statement_timeout = '30s'`). A borrower's own session-wide
    /// `SET` is undone when its borrow ends (see the README's *What a borrow
    /// can leave behind*); this is where deliberate ones go. Defaults to none.
    pub fn session_setup(mut self, sql: impl Into<String>) -> Self {
        self.session_setup = Some(sql.into());
        self
    }

    /// Reset every session when its borrow ends, whatever was sent: one more
    /// statement per borrow. By default a borrow is followed by a reset only
    /// when it sent a statement not proven harmless; turn this on if
    /// application triggers or views call functions that change session state
    /// (a `SELECT` from such a view looks harmless). Defaults to `false`.
    pub fn reset_after_every_borrow(mut self, on: bool) -> Self {
        self.reset_after_every_borrow = on;
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
        self.tenant_roles = on;
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
        self.recycle_after_schemas = schemas.map(|n| n.max(1));
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
        self.transaction_scoped = on;
        self
    }

    /// Diesel's prepared-statement cache. Defaults to on, and to off in
    /// transaction-scoped mode, because PgBouncer before 1.21 (Debian 12 ships
    /// 1.18) does not track named prepared statements in transaction mode. With
    /// PgBouncer 1.21+ and `max_prepared_statements > 0`, it can be turned back on.
    pub fn statement_cache(mut self, on: bool) -> Self {
        self.statement_cache = Some(on);
        self
    }
    /// Maximum number of connections. Defaults to 10.
    pub fn max_size(mut self, max_size: u32) -> Self {
        self.max_size = max_size;
        self
    }

    /// Idle connections the pool keeps open. Defaults to `None` (as many as `max_size`).
    pub fn min_idle(mut self, min_idle: Option<u32>) -> Self {
        self.min_idle = min_idle;
        self
    }

    /// How long a checkout waits for a free connection. Defaults to 30 seconds.
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        self
    }

    /// The age at which a connection is closed and replaced. Defaults to 30 minutes.
    ///
    /// PostgreSQL backends keep the catalog entries of every schema they touch, so a
    /// connection that serves thousands of tenants grows; a bounded lifetime caps that.
    pub fn max_lifetime(mut self, lifetime: Option<Duration>) -> Self {
        self.max_lifetime = lifetime;
        self
    }

    /// How long an idle connection stays open. Defaults to 10 minutes.
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Check each connection before handing it out, as r2d2 does by default.
    /// Defaults to `true`. The check is the statement that sets the search path
    /// (on a switch) or reads it back (same tenant), so it costs the single round
    /// trip r2d2's `SELECT 1` would; a connection that fails it is discarded and
    /// another one tried.
    pub fn test_on_check_out(mut self, test: bool) -> Self {
        self.test_on_check_out = test;
        self
    }

    /// Adds a schema placed after `public` on every path, such as an `extensions`
    /// schema that holds PostgreSQL extensions. Defaults to none.
    pub fn extra_schema(mut self, schema: SchemaName) -> Self {
        self.extra_schemas.push(schema);
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
        self.track_search_path = track;
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
        if self.max_size == 0 {
            return Err(Error::Config {
                reason: "max_size must be at least 1".into(),
            });
        }
        if self.extra_schemas.iter().any(|s| s.as_str() == "public") {
            return Err(Error::Config {
                reason: "public is always on the path".into(),
            });
        }
        let manager = self.build_manager()?;
        let pool = r2d2::Pool::builder()
            .max_size(self.max_size)
            .min_idle(self.min_idle)
            .connection_timeout(self.connection_timeout)
            .max_lifetime(self.max_lifetime)
            .idle_timeout(self.idle_timeout)
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

/// A pool of PostgreSQL connections, each scoped to one tenant while in use.
///
/// Cloning is cheap and shares the pool.
#[derive(Clone)]
pub struct TenantPool {
    pool: r2d2::Pool<TenantConnectionManager>,
    settings: Arc<Settings>,
}

impl std::fmt::Debug for TenantPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantPool")
            .field("state", &self.pool.state())
            .finish()
    }
}

impl TenantPool {
    /// A builder for a pool on `database_url`.
    pub fn builder(database_url: impl Into<String>) -> TenantPoolBuilder {
        TenantPoolBuilder {
            database_url: database_url.into(),
            max_size: 10,
            min_idle: None,
            connection_timeout: Duration::from_secs(30),
            max_lifetime: Some(Duration::from_secs(30 * 60)),
            idle_timeout: Some(Duration::from_secs(10 * 60)),
            test_on_check_out: true,
            extra_schemas: Vec::new(),
            track_search_path: true,
            transaction_scoped: false,
            statement_cache: None,
            recycle_after_schemas: Some(DEFAULT_RECYCLE_AFTER_SCHEMAS),
            tenant_roles: false,
            reset_after_every_borrow: false,
            session_setup: None,
        }
    }

    /// Wraps an application's own r2d2 pool of [`TenantConnectionManager`]
    /// (the pool swap), so that the same pool and its connections also serve
    /// [`with_tenant`](Self::with_tenant), the [`Resolver`](crate::Resolver)
    /// and the web adapters. Takes one connection to read the manager's
    /// settings; cloning either value shares the connections.
    ///
    /// ```no_run
    /// use diesel_tenancy::{TenantConnectionManager, TenantPool};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let r2d2_pool = r2d2::Pool::builder()
    ///     .max_size(20)
    ///     .build(TenantConnectionManager::new("postgres://localhost/app")?)?;
    /// let pool = TenantPool::from_r2d2(r2d2_pool.clone())?;
    /// let acme = pool.tenant("acme")?;
    /// # Ok(()) }
    /// ```
    pub fn from_r2d2(pool: r2d2::Pool<TenantConnectionManager>) -> Result<Self> {
        let settings = Arc::clone(&pool.get().map_err(Error::Pool)?.settings);
        Ok(TenantPool { pool, settings })
    }

    /// The underlying r2d2 pool.
    pub fn r2d2(&self) -> &r2d2::Pool<TenantConnectionManager> {
        &self.pool
    }

    /// The URL the pool connects to.
    pub(crate) fn database_url(&self) -> &str {
        &self.settings.database_url
    }

    /// How many checkouts were scoped, and how many of them had to set the path.
    pub fn stats(&self) -> ScopeStats {
        self.settings.scope.stats()
    }

    /// A connection scoped to `tenant`.
    pub fn get(&self, tenant: &Tenant) -> Result<TenantConnection> {
        self.settings.scope.check_tenant(tenant)?;
        self.retrying(|pooled| TenantConnection::scope(pooled, tenant))
    }

    /// Scopes a checked-out connection; a connection that fails its check is
    /// discarded and another one tried, up to three times.
    fn retrying(
        &self,
        scope: impl Fn(r2d2::PooledConnection<TenantConnectionManager>) -> Result<TenantConnection>,
    ) -> Result<TenantConnection> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match scope(self.pool.get().map_err(Error::Pool)?) {
                Err(Error::Scope { .. }) if attempt < 3 => continue,
                result => return result,
            }
        }
    }

    /// A connection scoped to the shared `public` schema.
    pub fn public(&self) -> Result<TenantConnection> {
        self.retrying(TenantConnection::scope_public)
    }

    /// A connection scoped to `public` for the session, with no transaction of
    /// its own even in transaction-scoped mode: for the crate's own work
    /// (migrations, tenant creation) that opens and commits its transactions
    /// itself, and would otherwise be nested in the guard's transaction and
    /// rolled back with it.
    pub(crate) fn maintenance(&self) -> Result<TenantConnection> {
        self.retrying(|c| TenantConnection::scope_public_with(c, false))
    }

    /// Runs `f` on a connection scoped to `tenant`.
    ///
    /// Whatever `f` does (returns an error, rolls back, panics) the next borrower of
    /// the connection gets its own scope. `E` is any error type that a
    /// [`diesel_tenancy::Error`](Error) converts into, including
    /// `diesel::result::Error` and `anyhow::Error`.
    ///
    /// The connection cannot escape the closure:
    ///
    /// ```compile_fail
    /// # fn f(pool: &diesel_tenancy::TenantPool, tenant: &diesel_tenancy::Tenant) {
    /// let mut leaked = None;
    /// pool.with_tenant(tenant, |conn| {
    ///     leaked = Some(conn);
    ///     Ok::<_, diesel_tenancy::Error>(())
    /// });
    /// # }
    /// ```
    pub fn with_tenant<T, E, F>(&self, tenant: &Tenant, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut PgConnection) -> Result<T, E>,
        E: From<Error>,
    {
        let mut conn = self.get(tenant)?;
        let result = f(&mut conn);
        if result.is_ok() {
            conn.commit()?;
        }
        result
    }

    /// Runs `f` on a connection scoped to the shared `public` schema.
    pub fn with_public<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut PgConnection) -> Result<T, E>,
        E: From<Error>,
    {
        let mut conn = self.public()?;
        let result = f(&mut conn);
        if result.is_ok() {
            conn.commit()?;
        }
        result
    }

    /// Runs `f` on a connection scoped to `tenant`, or to `public` for `None`.
    /// In transaction-scoped mode the work is committed when `committed` says
    /// the result is a success, and rolled back otherwise.
    #[cfg_attr(not(any(feature = "axum", feature = "actix")), allow(dead_code))]
    pub(crate) fn run_scoped<R>(
        &self,
        tenant: Option<&Tenant>,
        f: impl FnOnce(&mut PgConnection) -> R,
        committed: impl FnOnce(&R) -> bool,
    ) -> Result<R> {
        let mut conn = match tenant {
            Some(tenant) => self.get(tenant)?,
            None => self.public()?,
        };
        let result = f(&mut conn);
        if committed(&result) {
            conn.commit()?;
        }
        Ok(result)
    }

    /// Looks up an active tenant by schema name in the registry.
    ///
    /// Fails with [`Error::InvalidSchemaName`], [`Error::TenantNotFound`] or
    /// [`Error::TenantSuspended`].
    pub fn tenant(&self, schema: &str) -> Result<Tenant> {
        let schema = SchemaName::new(schema)?;
        let mut conn = self.public()?;
        let tenant = registry::get_tenant(&mut conn, &schema)?;
        if !tenant.is_active() {
            return Err(Error::TenantSuspended {
                schema: schema.as_str().to_owned(),
            });
        }
        Ok(tenant)
    }
}

impl crate::conn::Sessions for TenantPool {
    type Conn = TenantConnection;

    fn session(&self) -> Result<TenantConnection> {
        self.maintenance()
    }

    fn discard(conn: &mut TenantConnection) {
        conn.discard();
    }

    fn max_size(&self) -> usize {
        self.r2d2().max_size() as usize
    }
}
