//! The tenant-scoped connection pool over r2d2.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use diesel::connection::{
    AnsiTransactionManager, Connection, SimpleConnection, TransactionManager,
};
use diesel::pg::PgConnection;
use diesel::r2d2::R2D2Connection;

use crate::registry::{self, Tenant};
use crate::scope::{
    self, DEFAULT_RECYCLE_AFTER_SCHEMAS, PATH_DIRTY, RAW_TRANSACTION, SchemaCount, ScopeKey,
    ScopeWatch,
};
use crate::{Error, Result, SchemaName};

/// Settings shared by the manager and every connection it makes.
#[derive(Debug)]
struct Settings {
    database_url: String,
    extra_schemas: Vec<SchemaName>,
    track_search_path: bool,
    /// Check the connection at checkout with the statement that reads or sets
    /// the search path.
    test_on_check_out: bool,
    /// Every scoped unit of work is a transaction that sets the path locally.
    transaction_scoped: bool,
    /// Keep Diesel's prepared-statement cache.
    statement_cache: bool,
    /// Replace a connection after it has set the path this many times.
    recycle_after_schemas: Option<u64>,
    /// Switch to the tenant's own role while scoped.
    tenant_roles: bool,
    scoped: AtomicU64,
    path_sets: AtomicU64,
}

/// Counters of a pool's scoping work, from [`TenantPool::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ScopeStats {
    /// Connections scoped (checkouts through [`TenantConnection::scope`] or
    /// [`TenantConnection::scope_public`]).
    pub scoped: u64,
    /// Of those, how many had to set the search path (one statement each); the
    /// rest found the path already in place.
    pub path_sets: u64,
}

/// An r2d2 connection manager for tenant-scoped PostgreSQL connections.
///
/// This is the pool swap: hand it to [`r2d2::Pool::builder()`] where an application
/// used diesel's `ConnectionManager<PgConnection>`. A connection from such a pool
/// cannot run queries until it is scoped with [`TenantConnection::scope`] or
/// [`TenantConnection::scope_public`]; [`TenantPool`] does both steps at once.
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
        ScopeStats {
            scoped: self.settings.scoped.load(Ordering::Relaxed),
            path_sets: self.settings.path_sets.load(Ordering::Relaxed),
        }
    }

    fn with_settings(b: &TenantPoolBuilder) -> Result<Self> {
        check_database_url(&b.database_url)?;
        Ok(TenantConnectionManager {
            settings: Arc::new(Settings {
                database_url: b.database_url.clone(),
                extra_schemas: b.extra_schemas.clone(),
                track_search_path: b.track_search_path && !b.transaction_scoped,
                test_on_check_out: b.test_on_check_out,
                transaction_scoped: b.transaction_scoped,
                statement_cache: b.statement_cache.unwrap_or(!b.transaction_scoped),
                recycle_after_schemas: b.recycle_after_schemas,
                tenant_roles: b.tenant_roles,
                scoped: AtomicU64::new(0),
                path_sets: AtomicU64::new(0),
            }),
        })
    }
}

fn check_database_url(url: &str) -> Result<()> {
    if url.trim().is_empty() {
        return Err(Error::Config {
            reason: "the database URL is empty".into(),
        });
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        url::Url::parse(url).map_err(|e| Error::Config {
            reason: format!("the database URL is malformed: {e}"),
        })?;
    } else if url.contains("://") {
        return Err(Error::Config {
            reason: "the database URL must start with postgres:// or postgresql://".into(),
        });
    }
    Ok(())
}

/// A pooled physical connection. It runs no query until scoped into a
/// [`TenantConnection`], so an unscoped connection can never read whatever
/// tenant the previous borrower left behind:
///
/// ```compile_fail
/// # use diesel::prelude::*;
/// # fn f(pool: r2d2::Pool<diesel_tenancy::TenantConnectionManager>) {
/// let mut unscoped = pool.get().unwrap();
/// diesel::sql_query("SELECT 1").execute(&mut *unscoped); // not a Diesel connection
/// # }
/// ```
pub struct ManagedConnection {
    conn: PgConnection,
    settings: Arc<Settings>,
    /// The scope the session's search path is known to hold, and that path's text;
    /// `None` when unknown.
    current: Option<(ScopeKey, String)>,
    /// Drop this connection instead of returning it to the pool.
    discard: bool,
    /// r2d2's liveness check has just read the path back, for this checkout.
    verified: bool,
    /// Hashes of the schemas this connection has been scoped to (the recycle rule).
    schemas: SchemaCount,
}

impl std::fmt::Debug for ManagedConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedConnection")
            .field("current", &self.current)
            .field("discard", &self.discard)
            .finish_non_exhaustive()
    }
}

impl r2d2::ManageConnection for TenantConnectionManager {
    type Connection = ManagedConnection;
    type Error = diesel::r2d2::Error;

    fn connect(&self) -> Result<ManagedConnection, Self::Error> {
        let mut conn = PgConnection::establish(&self.settings.database_url)
            .map_err(diesel::r2d2::Error::ConnectionError)?;
        let inner = diesel::connection::get_default_instrumentation();
        conn.set_instrumentation(ScopeWatch::new(inner));
        if !self.settings.statement_cache {
            conn.set_prepared_statement_cache_size(diesel::connection::CacheSize::Disabled);
        }
        Ok(ManagedConnection {
            conn,
            settings: Arc::clone(&self.settings),
            current: None,
            discard: false,
            verified: false,
            schemas: SchemaCount::default(),
        })
    }

    /// The liveness check (`test_on_check_out`). It reads the session's search path
    /// in the same round trip as a plain `SELECT 1` would take, and forgets the
    /// remembered path if the server disagrees, so a path changed where no
    /// statement showed it (say, by a server-side function) is still caught.
    fn is_valid(&self, conn: &mut ManagedConnection) -> Result<(), Self::Error> {
        let roles = self.settings.tenant_roles;
        let server = scope::current_search_path(&mut conn.conn).map_err(|e| {
            conn.current = None;
            diesel::r2d2::Error::QueryError(e)
        })?;
        if conn
            .current
            .as_ref()
            .is_some_and(|(scope, known)| !scope.held(known, &server, roles))
        {
            conn.current = None;
        }
        // Our own statement names search_path; that is no reason to distrust it.
        if let Some(watch) = conn.watch() {
            watch.take_flags();
        }
        conn.verified = true;
        Ok(())
    }

    fn has_broken(&self, conn: &mut ManagedConnection) -> bool {
        conn.discard || std::thread::panicking() || conn.conn.is_broken()
    }
}

impl ManagedConnection {
    /// Puts the session on `scope`'s search path unless it is known to be there.
    fn enter(&mut self, scope: ScopeKey) -> Result<()> {
        self.settings.scoped.fetch_add(1, Ordering::Relaxed);
        if let Some(watch) = self.watch() {
            watch.clear_own_statement();
        }
        let verified = std::mem::take(&mut self.verified);
        if self.settings.track_search_path
            && self
                .current
                .as_ref()
                .is_some_and(|(known, _)| *known == scope)
        {
            if verified || !self.settings.test_on_check_out {
                return Ok(());
            }
            // The liveness check: read the path back, one cached statement.
            match scope::current_search_path(&mut self.conn) {
                Ok(server) => {
                    let roles = self.settings.tenant_roles;
                    if self
                        .current
                        .as_ref()
                        .is_some_and(|(_, known)| scope.held(known, &server, roles))
                    {
                        if let Some(watch) = self.watch() {
                            watch.take_flags();
                        }
                        return Ok(());
                    }
                }
                Err(source) => {
                    self.discard = true;
                    return Err(Error::Scope {
                        scope: scope.head().to_owned(),
                        source,
                    });
                }
            }
        }
        self.settings.path_sets.fetch_add(1, Ordering::Relaxed);
        self.count_schema(&scope);
        self.current = None;
        let path = scope.search_path(&self.settings.extra_schemas);
        let result = scope::set_search_path(
            &mut self.conn,
            &scope,
            path.clone(),
            false,
            self.settings.tenant_roles,
        );
        match &result {
            Ok(()) => self.current = Some((scope, path)),
            // The statement ran and found no schema: the session is unchanged.
            Err(Error::SchemaMissing { .. }) => {}
            Err(_) => self.discard = true,
        }
        // Our own statement is no reason to distrust the path.
        if let Some(watch) = self.watch() {
            watch.take_flags();
        }
        result
    }

    /// Transaction-scoped mode: opens a transaction whose first statement sets
    /// the path for that transaction only (`set_config(..., true)`).
    fn enter_transaction(&mut self, scope: ScopeKey) -> Result<()> {
        self.settings.scoped.fetch_add(1, Ordering::Relaxed);
        self.settings.path_sets.fetch_add(1, Ordering::Relaxed);
        self.count_schema(&scope);
        self.current = None;
        self.verified = false;
        let scope_err = |source| Error::Scope {
            scope: scope.head().to_owned(),
            source,
        };
        if let Err(e) = AnsiTransactionManager::begin_transaction(&mut self.conn) {
            self.discard = true;
            return Err(scope_err(e));
        }
        let path = scope.search_path(&self.settings.extra_schemas);
        let result = scope::set_search_path(
            &mut self.conn,
            &scope,
            path,
            true,
            self.settings.tenant_roles,
        );
        if let Err(e) = &result {
            if AnsiTransactionManager::rollback_transaction(&mut self.conn).is_err()
                || !matches!(e, Error::SchemaMissing { .. })
            {
                self.discard = true;
            }
        }
        if let Some(watch) = self.watch() {
            watch.take_flags();
        }
        result
    }

    /// Each schema a backend touches stays in its catalog cache; once it has
    /// touched enough distinct schemas the connection is replaced when it is
    /// next released.
    fn count_schema(&mut self, scope: &ScopeKey) {
        if self
            .schemas
            .add(scope.head(), self.settings.recycle_after_schemas)
        {
            self.discard = true;
        }
    }

    fn watch(&mut self) -> Option<&mut ScopeWatch> {
        self.conn.instrumentation().downcast_mut::<ScopeWatch>()
    }

    /// Restores the pool's invariant when a scoped borrow ends: the connection is
    /// outside any transaction and `current` is either the true search path or
    /// `None`; or else it is marked to be discarded.
    fn leave(&mut self) {
        if std::thread::panicking() {
            // The closure stopped at an unknown point.
            self.current = None;
            self.discard = true;
            return;
        }
        let Some(flags) = self.watch().map(ScopeWatch::take_flags) else {
            // Someone replaced the instrumentation: nothing can be known any more.
            self.current = None;
            self.discard = true;
            return;
        };
        if flags & PATH_DIRTY != 0 {
            self.current = None;
        }
        match AnsiTransactionManager::transaction_manager_status_mut(&mut self.conn)
            .transaction_depth()
        {
            Ok(None) => {}
            // A transaction left open (e.g. `begin_test_transaction`) or a broken
            // transaction manager: the session state is not ours to reuse.
            Ok(Some(_)) | Err(_) => {
                self.current = None;
                self.discard = true;
                return;
            }
        }
        if flags & RAW_TRANSACTION != 0 {
            // Raw SQL may have left a transaction open; a ROLLBACK outside one
            // only warns.
            self.current = None;
            if self.conn.batch_execute("ROLLBACK").is_err() {
                self.discard = true;
            }
            if let Some(watch) = self.watch() {
                watch.take_flags();
            }
        }
    }
}

/// A pooled connection scoped to one tenant (or to `public`) for as long as it lives.
///
/// It dereferences to [`PgConnection`], so all of Diesel works on it: pass
/// `&mut *conn` (or `&mut conn` where a `&mut PgConnection` is expected). When it
/// is dropped it goes back to the pool; if anything on it could have changed the
/// search path (an error, a rollback, a `SET`, a panic) the pool forgets the path
/// it remembered, and if a transaction was left open the connection is discarded.
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
        if !tenant.is_active() {
            return Err(Error::TenantSuspended {
                schema: tenant.schema().as_str().to_owned(),
            });
        }
        let role = if conn.settings.tenant_roles {
            Some(tenant.role().cloned().ok_or_else(|| Error::Refused {
                reason: format!(
                    "tenant {:?} has no role, and the pool switches to tenant roles; create one with ensure_tenant_role",
                    tenant.schema().as_str()
                ),
            })?)
        } else {
            None
        };
        let scope = ScopeKey::Tenant(tenant.schema().clone(), role);
        let own_transaction = conn.settings.transaction_scoped;
        if own_transaction {
            conn.enter_transaction(scope)?;
        } else {
            conn.enter(scope)?;
        }
        Ok(TenantConnection {
            conn,
            tenant: Some(tenant.clone()),
            own_transaction,
        })
    }

    /// Scopes a connection from a pool of [`TenantConnectionManager`] to the shared
    /// `public` schema (plus the pool's extra schemas).
    pub fn scope_public(mut conn: r2d2::PooledConnection<TenantConnectionManager>) -> Result<Self> {
        let own_transaction = conn.settings.transaction_scoped;
        if own_transaction {
            conn.enter_transaction(ScopeKey::Public)?;
        } else {
            conn.enter(ScopeKey::Public)?;
        }
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
                self.conn.discard = true;
                Error::Database {
                    action: format!("commit the transaction scoped to {}", self.scope_name()),
                    source: e,
                }
            })?;
        }
        Ok(())
    }

    /// Close this connection when it is dropped instead of returning it to the
    /// pool (for example to free a backend's memory after touching many schemas).
    pub fn discard(&mut self) {
        self.conn.discard = true;
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
                self.conn.discard = true;
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
}

impl TenantPoolBuilder {
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
    /// rollback, a `SET`/`RESET`/`DISCARD`, any statement naming `search_path` or
    /// `set_config`, a panic. Turn this off if the application calls server-side
    /// functions that change the search path themselves; the path is then set on
    /// every checkout, at the cost of one round trip.
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
        Ok(TenantPool { pool, manager })
    }
}

/// A pool of PostgreSQL connections, each scoped to one tenant while in use.
///
/// Cloning is cheap and shares the pool.
#[derive(Clone)]
pub struct TenantPool {
    pool: r2d2::Pool<TenantConnectionManager>,
    manager: TenantConnectionManager,
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
        }
    }

    /// The underlying r2d2 pool.
    pub fn r2d2(&self) -> &r2d2::Pool<TenantConnectionManager> {
        &self.pool
    }

    /// The URL the pool connects to.
    pub(crate) fn database_url(&self) -> &str {
        &self.manager.settings.database_url
    }

    /// How many checkouts were scoped, and how many of them had to set the path.
    pub fn stats(&self) -> ScopeStats {
        self.manager.stats()
    }

    /// A connection scoped to `tenant`.
    pub fn get(&self, tenant: &Tenant) -> Result<TenantConnection> {
        if !tenant.is_active() {
            return Err(Error::TenantSuspended {
                schema: tenant.schema().as_str().to_owned(),
            });
        }
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
    #[cfg_attr(not(any(feature = "axum", feature = "actix")), allow(dead_code))]
    pub(crate) fn run_scoped<R>(
        &self,
        tenant: Option<&Tenant>,
        f: impl FnOnce(&mut PgConnection) -> R,
    ) -> Result<R> {
        let mut conn = match tenant {
            Some(tenant) => self.get(tenant)?,
            None => self.public()?,
        };
        let result = f(&mut conn);
        // In transaction-scoped mode, the work is committed here (a transaction
        // in which a statement failed is rolled back by the server on COMMIT).
        conn.commit()?;
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
