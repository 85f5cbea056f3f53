//! The tenant-scoped pool over diesel-async, with the sync pool's guarantees,
//! on either of diesel-async's pools: deadpool (feature `deadpool`) or bb8
//! (feature `bb8`).
//!
//! Everything that scopes a connection lives here, once: the builder's
//! settings, the checkout (driving the shared scope state machine: enter,
//! reset, set the path, read it back), the release (keep, reset or discard),
//! cancellation, and the [`AsyncTenantConnection`] guard. The two files
//! beside it only build their pool, check a connection out of it, and discard
//! one, as diesel-async's own `pooled_connection/{deadpool,bb8}.rs` do.

#[cfg(feature = "bb8")]
mod bb8;
#[cfg(feature = "deadpool")]
mod deadpool;

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{
    AnsiTransactionManager, AsyncConnection, AsyncPgConnection, TransactionManager,
};

use crate::scope::ScopeStats;
use crate::scope::{
    self, ConnState, CurrentState, Release, ScopeConfig, ScopeKey, ScopeWatch, ServerState,
    SetPath, Step, TempObjects,
};
use crate::{Error, Result, SchemaName, Tenant};

mod private {
    /// Names the future an async closure returns, so that bounds can require it
    /// to be `Send` (the same device diesel-async uses for `transaction`).
    #[allow(unreachable_pub)]
    pub trait SendFn<T, R>: AsyncFnOnce(T) -> R + FnOnce(T) -> <Self as SendFn<T, R>>::Fut {
        type Fut: Future<Output = R>;
    }

    impl<F, T, Fut, R> SendFn<T, R> for F
    where
        F: AsyncFnOnce(T) -> R + FnOnce(T) -> Fut,
        Fut: Future<Output = R>,
    {
        type Fut = Fut;
    }
}
use private::SendFn;

/// What the pool and every guard it hands out share.
#[derive(Debug)]
struct Settings {
    database_url: String,
    scope: ScopeConfig,
}

/// The settings of the pool underneath (deadpool or bb8), the same for both.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_size: usize,
    /// bb8 only: deadpool has no minimum.
    #[cfg_attr(not(feature = "bb8"), allow(dead_code))]
    min_idle: Option<usize>,
    connection_timeout: Duration,
    max_lifetime: Option<Duration>,
    idle_timeout: Option<Duration>,
}

impl Limits {
    /// How often idle connections are looked at for `max_lifetime` and
    /// `idle_timeout` (bb8's default rate, 30 seconds, or a quarter of the
    /// shorter limit if that is less), or `None` when neither is set.
    fn reaper_rate(&self) -> Option<Duration> {
        let shortest = match (self.max_lifetime, self.idle_timeout) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => return None,
        };
        Some((shortest / 4).clamp(Duration::from_millis(10), Duration::from_secs(30)))
    }
}

/// Builds an [`AsyncTenantPool`]. The same settings as
/// [`TenantPoolBuilder`](crate::TenantPoolBuilder), with the same defaults,
/// on either pool: [`build`](Self::build) takes deadpool when the `deadpool`
/// feature is on and bb8 otherwise; [`build_deadpool`](Self::build_deadpool)
/// and [`build_bb8`](Self::build_bb8) choose.
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until build() is called"]
pub struct AsyncTenantPoolBuilder {
    database_url: String,
    max_size: usize,
    min_idle: Option<usize>,
    connection_timeout: Duration,
    max_lifetime: Option<Duration>,
    idle_timeout: Option<Duration>,
    test_on_check_out: bool,
    extra_schemas: Vec<SchemaName>,
    track_search_path: bool,
    tenant_roles: bool,
    recycle_after_schemas: Option<u64>,
    transaction_scoped: bool,
    statement_cache: Option<bool>,
    reset_after_every_borrow: bool,
    session_setup: Option<String>,
}

impl AsyncTenantPoolBuilder {
    /// Replace a connection once it has been scoped to this many distinct
    /// schemas, as
    /// [`TenantPoolBuilder::recycle_after_schemas`](crate::TenantPoolBuilder::recycle_after_schemas)
    /// does. Defaults to 1,000; `None` turns the rule off.
    pub fn recycle_after_schemas(mut self, schemas: Option<u64>) -> Self {
        self.recycle_after_schemas = schemas.map(|n| n.max(1));
        self
    }

    /// Switch to the tenant's own role while scoped, as
    /// [`TenantPoolBuilder::tenant_roles`](crate::TenantPoolBuilder::tenant_roles)
    /// does (in the same statement that sets the path). Defaults to `false`.
    pub fn tenant_roles(mut self, on: bool) -> Self {
        self.tenant_roles = on;
        self
    }

    /// Transaction-scoped mode, as
    /// [`TenantPoolBuilder::transaction_scoped`](crate::TenantPoolBuilder::transaction_scoped):
    /// every checkout opens a transaction whose first statement sets the path
    /// with `set_config(..., true)`. [`AsyncTenantPool::with_tenant`] commits
    /// when the closure returns `Ok` and rolls back otherwise; a guard from
    /// [`AsyncTenantPool::get`] is committed with
    /// [`AsyncTenantConnection::commit`] and rolled back if dropped without it.
    /// Turns path tracking and the statement cache off. Defaults to `false`.
    pub fn transaction_scoped(mut self, on: bool) -> Self {
        self.transaction_scoped = on;
        self
    }

    /// Diesel's prepared-statement cache, as
    /// [`TenantPoolBuilder::statement_cache`](crate::TenantPoolBuilder::statement_cache).
    /// Defaults to on, and to off in transaction-scoped mode.
    pub fn statement_cache(mut self, on: bool) -> Self {
        self.statement_cache = Some(on);
        self
    }

    /// SQL run on every new connection and after every reset, as
    /// [`TenantPoolBuilder::session_setup`](crate::TenantPoolBuilder::session_setup).
    /// Defaults to none.
    pub fn session_setup(mut self, sql: impl Into<String>) -> Self {
        self.session_setup = Some(sql.into());
        self
    }

    /// Reset every session when its borrow ends, as
    /// [`TenantPoolBuilder::reset_after_every_borrow`](crate::TenantPoolBuilder::reset_after_every_borrow).
    /// Defaults to `false`.
    pub fn reset_after_every_borrow(mut self, on: bool) -> Self {
        self.reset_after_every_borrow = on;
        self
    }

    /// Maximum number of connections. Defaults to 10.
    pub fn max_size(mut self, max_size: usize) -> Self {
        self.max_size = max_size;
        self
    }

    /// Idle connections the pool keeps open. Defaults to `None`.
    ///
    /// - **bb8**: with `Some(n)`, bb8 opens `n` connections in the background
    ///   when the pool is built and opens new ones whenever fewer than `n` are
    ///   idle; `idle_timeout` never closes those `n`. `None` keeps no minimum:
    ///   connections are opened on first use.
    /// - **deadpool** has no such setting: connections are always opened on
    ///   first use, and this is ignored.
    ///
    /// (The sync pool's r2d2 reads `None` as "as many as `max_size`", and opens
    /// them when it is built.) Must not exceed `max_size`.
    pub fn min_idle(mut self, min_idle: Option<usize>) -> Self {
        self.min_idle = min_idle;
        self
    }

    /// How long a checkout waits for a connection, a new connection's
    /// set-up included, before failing with [`Error::AsyncPool`]. Defaults
    /// to 30 seconds.
    ///
    /// - **deadpool**: the wait for a free connection and opening one each
    ///   have this timeout; a connection that cannot be opened at all fails
    ///   the checkout at once.
    /// - **bb8**: one timeout for the whole checkout; a connection that cannot
    ///   be opened is tried again (with backoff) until it runs out, and the
    ///   error then carries the last connection error.
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        self
    }

    /// The age at which a connection is closed instead of reused. Defaults to 30
    /// minutes (a backend keeps the catalog entries of every schema it touched).
    ///
    /// Both pools check it when a connection is checked out (deadpool) or
    /// given back (bb8), and close idle connections past it in the background
    /// (every 30 seconds, or a quarter of the limit if that is shorter).
    pub fn max_lifetime(mut self, lifetime: Option<Duration>) -> Self {
        self.max_lifetime = lifetime;
        self
    }

    /// How long a connection may sit idle before it is closed. Defaults to 10
    /// minutes, as the sync pool.
    ///
    /// - **bb8**: bb8's reaper closes connections idle for longer (beyond
    ///   `min_idle`), every 30 seconds or a quarter of the timeout if that is
    ///   shorter.
    /// - **deadpool**: the pool closes, at the same rate, connections whose
    ///   last checkout began longer ago than this (deadpool records when a
    ///   connection was last checked out, not when it came back), and a
    ///   checkout never reuses one.
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Check each connection on checkout. Defaults to `true`. The check is the
    /// statement that sets or reads back the search path, so it costs the same
    /// single round trip as diesel-async's own `Verified` recycling.
    pub fn test_on_check_out(mut self, test: bool) -> Self {
        self.test_on_check_out = test;
        self
    }

    /// A schema placed after `public` on every path. Defaults to none.
    pub fn extra_schema(mut self, schema: SchemaName) -> Self {
        self.extra_schemas.push(schema);
        self
    }

    /// Remember each connection's search path. Defaults to `true`.
    pub fn track_search_path(mut self, track: bool) -> Self {
        self.track_search_path = track;
        self
    }

    /// The pool, on deadpool when the `deadpool` feature is on, else on bb8
    /// (see [`build_deadpool`](Self::build_deadpool) and
    /// [`build_bb8`](Self::build_bb8)).
    pub fn build(self) -> Result<AsyncTenantPool> {
        #[cfg(feature = "deadpool")]
        return self.build_deadpool();
        #[cfg(not(feature = "deadpool"))]
        return self.build_bb8();
    }

    /// The pool on diesel-async's deadpool pool. Connections are opened on
    /// first use; it can be built outside a tokio runtime.
    #[cfg(feature = "deadpool")]
    #[cfg_attr(docsrs, doc(cfg(feature = "deadpool")))]
    pub fn build_deadpool(self) -> Result<AsyncTenantPool> {
        let (manager, limits, settings) = self.parts()?;
        Ok(AsyncTenantPool {
            pool: Pool::Deadpool(deadpool::Pool::build(manager, limits)?),
            settings,
        })
    }

    /// The pool on diesel-async's bb8 pool. Must be called inside a tokio
    /// runtime (bb8 starts its reaper there, and its `min_idle` connections);
    /// outside one it fails with [`Error::Config`].
    #[cfg(feature = "bb8")]
    #[cfg_attr(docsrs, doc(cfg(feature = "bb8")))]
    pub fn build_bb8(self) -> Result<AsyncTenantPool> {
        let (manager, limits, settings) = self.parts()?;
        Ok(AsyncTenantPool {
            pool: Pool::Bb8(bb8::Pool::build(manager, limits)?),
            settings,
        })
    }

    /// Checks the settings, and makes what either pool is built from: the
    /// connection manager (every new connection gets the statement watch,
    /// `session_setup` and the statement cache setting), the limits, and the
    /// shared settings.
    fn parts(
        self,
    ) -> Result<(
        AsyncDieselConnectionManager<AsyncPgConnection>,
        Limits,
        Arc<Settings>,
    )> {
        let invalid = |reason: &str| {
            Err(Error::Config {
                reason: reason.into(),
            })
        };
        if self.max_size == 0 {
            return invalid("max_size must be at least 1");
        }
        if self.min_idle.is_some_and(|n| n > self.max_size) {
            return invalid("min_idle must not exceed max_size");
        }
        if self.connection_timeout.is_zero() {
            return invalid("connection_timeout must be more than zero");
        }
        if self.max_lifetime.is_some_and(|d| d.is_zero())
            || self.idle_timeout.is_some_and(|d| d.is_zero())
        {
            return invalid("max_lifetime and idle_timeout must be more than zero (or None)");
        }
        if self.extra_schemas.iter().any(|s| s.as_str() == "public") {
            return invalid("public is always on the path");
        }
        crate::conn::check_database_url(&self.database_url)?;
        let statement_cache = self.statement_cache.unwrap_or(!self.transaction_scoped);
        let session_setup = self.session_setup.clone();
        let timeout = self.connection_timeout;
        let mut config = ManagerConfig::<AsyncPgConnection>::default();
        // The checkout's own statement is the liveness check.
        config.recycling_method = RecyclingMethod::Fast;
        config.custom_setup = Box::new(move |url| {
            let url = url.to_owned();
            let setup = session_setup.clone();
            Box::pin(async move {
                let mut conn = establish(&url, timeout).await?;
                if let Some(setup) = setup {
                    use diesel_async::SimpleAsyncConnection;
                    conn.batch_execute(&setup).await.map_err(|e| {
                        let mut text = e.to_string();
                        if let Some(cause) = std::error::Error::source(&e) {
                            text = format!("{text}: {cause}");
                        }
                        diesel::ConnectionError::BadConnection(text)
                    })?;
                }
                if !statement_cache {
                    conn.set_prepared_statement_cache_size(diesel::connection::CacheSize::Disabled);
                }
                let inner = diesel::connection::get_default_instrumentation();
                conn.set_instrumentation(ScopeWatch::new(inner).classify_at_finish());
                Ok(conn)
            })
        });
        let manager =
            AsyncDieselConnectionManager::new_with_config(self.database_url.clone(), config);
        let limits = Limits {
            max_size: self.max_size,
            min_idle: self.min_idle,
            connection_timeout: self.connection_timeout,
            max_lifetime: self.max_lifetime,
            idle_timeout: self.idle_timeout,
        };
        let settings = Arc::new(Settings {
            database_url: self.database_url,
            scope: ScopeConfig::new(
                self.extra_schemas,
                self.track_search_path,
                self.test_on_check_out,
                self.transaction_scoped,
                self.recycle_after_schemas,
                self.tenant_roles,
                self.reset_after_every_borrow,
                self.session_setup,
            ),
        });
        Ok((manager, limits, settings))
    }
}

/// Opens a connection. diesel-async sets its two session settings with
/// prepared statements outside a transaction, which behind a transaction
/// pooler (PgBouncer in transaction mode) may reach two server connections and
/// fail ("prepared statement does not exist"): a connection whose set-up fails
/// is opened again, after a short random pause, until `timeout` has passed (as
/// bb8 retries any failed connection). One that cannot be opened at all (no
/// server, a refused login) fails at once.
async fn establish(url: &str, timeout: Duration) -> diesel::ConnectionResult<AsyncPgConnection> {
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .map_err(|e| {
                let mut text = e.to_string();
                if let Some(cause) = std::error::Error::source(&e) {
                    text = format!("{text}: {cause}");
                }
                diesel::ConnectionError::BadConnection(text)
            })?;
        match AsyncPgConnection::try_from_client_and_connection(client, connection).await {
            Err(_) if started.elapsed() + pause < timeout => {
                // Spread the retries of connections opened together: up to
                // twice the pause, by the clock's nanoseconds.
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos());
                tokio::time::sleep(pause + pause.mul_f64(f64::from(nanos % 1000) / 1000.0)).await;
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            done => return done,
        }
    }
}

/// The pool underneath.
#[derive(Clone)]
enum Pool {
    #[cfg(feature = "deadpool")]
    Deadpool(deadpool::Pool),
    #[cfg(feature = "bb8")]
    Bb8(bb8::Pool),
}

impl Pool {
    async fn get(&self) -> Result<Pooled> {
        match self {
            #[cfg(feature = "deadpool")]
            Pool::Deadpool(pool) => pool.get().await.map(Pooled::Deadpool),
            #[cfg(feature = "bb8")]
            Pool::Bb8(pool) => pool.get().await.map(Pooled::Bb8),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            #[cfg(feature = "deadpool")]
            Pool::Deadpool(_) => "deadpool",
            #[cfg(feature = "bb8")]
            Pool::Bb8(_) => "bb8",
        }
    }

    fn max_size(&self) -> usize {
        match self {
            #[cfg(feature = "deadpool")]
            Pool::Deadpool(pool) => pool.max_size(),
            #[cfg(feature = "bb8")]
            Pool::Bb8(pool) => pool.max_size(),
        }
    }

    /// Connections open, and of those idle.
    fn status(&self) -> (usize, usize) {
        match self {
            #[cfg(feature = "deadpool")]
            Pool::Deadpool(pool) => pool.status(),
            #[cfg(feature = "bb8")]
            Pool::Bb8(pool) => pool.status(),
        }
    }
}

/// A connection checked out of the pool underneath; back to it when dropped.
enum Pooled {
    #[cfg(feature = "deadpool")]
    Deadpool(deadpool::Conn),
    #[cfg(feature = "bb8")]
    Bb8(bb8::Conn),
}

impl Pooled {
    /// Closes the connection instead of giving it back.
    fn discard(self) {
        match self {
            #[cfg(feature = "deadpool")]
            Pooled::Deadpool(conn) => deadpool::discard(conn),
            #[cfg(feature = "bb8")]
            Pooled::Bb8(conn) => bb8::discard(conn),
        }
    }
}

impl Deref for Pooled {
    type Target = AsyncPgConnection;
    #[inline]
    fn deref(&self) -> &AsyncPgConnection {
        match self {
            #[cfg(feature = "deadpool")]
            Pooled::Deadpool(conn) => conn,
            #[cfg(feature = "bb8")]
            Pooled::Bb8(conn) => conn,
        }
    }
}

impl DerefMut for Pooled {
    #[inline]
    fn deref_mut(&mut self) -> &mut AsyncPgConnection {
        match self {
            #[cfg(feature = "deadpool")]
            Pooled::Deadpool(conn) => conn,
            #[cfg(feature = "bb8")]
            Pooled::Bb8(conn) => conn,
        }
    }
}

/// A pool of diesel-async PostgreSQL connections, each scoped to one tenant while
/// in use: [`TenantPool`](crate::TenantPool)'s API and guarantees, for async
/// code, on diesel-async's deadpool or bb8 pool (see
/// [`AsyncTenantPoolBuilder::build`]).
///
/// ```no_run
/// # async fn run(tenant: diesel_tenancy::Tenant) -> Result<(), Box<dyn std::error::Error>> {
/// use diesel_async::RunQueryDsl;
/// use diesel_tenancy::AsyncTenantPool;
///
/// let pool = AsyncTenantPool::builder("postgres://localhost/app").build()?;
/// let n: i64 = pool
///     .with_tenant(&tenant, async |conn| {
///         diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>("1"))
///             .get_result(conn)
///             .await
///     })
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AsyncTenantPool {
    pool: Pool,
    settings: Arc<Settings>,
}

impl std::fmt::Debug for AsyncTenantPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (size, idle) = self.pool.status();
        f.debug_struct("AsyncTenantPool")
            .field("pool", &self.pool.kind())
            .field("max_size", &self.pool.max_size())
            .field("size", &size)
            .field("idle", &idle)
            .finish()
    }
}

#[inline]
fn state(conn: &mut AsyncPgConnection) -> Option<&mut ConnState> {
    scope::watch_of(conn.instrumentation()).map(|w| &mut w.state)
}

fn mark_own(conn: &mut AsyncPgConnection) {
    if let Some(w) = scope::watch_of(conn.instrumentation()) {
        w.own_statement_next();
    }
}

impl AsyncTenantPool {
    /// A builder for a pool on `database_url`.
    pub fn builder(database_url: impl Into<String>) -> AsyncTenantPoolBuilder {
        AsyncTenantPoolBuilder {
            database_url: database_url.into(),
            max_size: 10,
            min_idle: None,
            connection_timeout: Duration::from_secs(30),
            max_lifetime: Some(Duration::from_secs(30 * 60)),
            idle_timeout: Some(Duration::from_secs(10 * 60)),
            test_on_check_out: true,
            extra_schemas: Vec::new(),
            track_search_path: true,
            tenant_roles: false,
            recycle_after_schemas: Some(crate::scope::DEFAULT_RECYCLE_AFTER_SCHEMAS),
            transaction_scoped: false,
            statement_cache: None,
            reset_after_every_borrow: false,
            session_setup: None,
        }
    }

    /// The database URL the pool connects to.
    pub fn database_url(&self) -> &str {
        &self.settings.database_url
    }

    /// Which pool is underneath: `"deadpool"` or `"bb8"`.
    pub fn pool_kind(&self) -> &'static str {
        self.pool.kind()
    }

    /// How many checkouts were scoped, how many had to set the path, and how
    /// many sessions were reset.
    pub fn stats(&self) -> ScopeStats {
        self.settings.scope.stats()
    }

    /// A connection scoped to `tenant`. Fails with [`Error::TenantSuspended`]
    /// before any statement runs if the tenant is suspended, with
    /// [`Error::SchemaMissing`] if its schema is gone, and with
    /// [`Error::AsyncPool`] if no connection could be had.
    pub async fn get(&self, tenant: &Tenant) -> Result<AsyncTenantConnection> {
        let cfg = &self.settings.scope;
        cfg.check_tenant(tenant)?;
        let scope = ScopeKey::Tenant(tenant.schema().clone(), cfg.role_of(tenant)?);
        let conn = self.checkout(&scope, cfg.transaction_scoped).await?;
        Ok(AsyncTenantConnection {
            conn: Some(conn),
            tenant: Some(tenant.clone()),
            settings: Arc::clone(&self.settings),
            own_transaction: cfg.transaction_scoped,
        })
    }

    /// A connection scoped to the shared `public` schema.
    pub async fn public(&self) -> Result<AsyncTenantConnection> {
        let conn = self
            .checkout(&ScopeKey::Public, self.settings.scope.transaction_scoped)
            .await?;
        Ok(AsyncTenantConnection {
            conn: Some(conn),
            tenant: None,
            settings: Arc::clone(&self.settings),
            own_transaction: self.settings.scope.transaction_scoped,
        })
    }

    /// Runs `f` on a connection scoped to `tenant`, with `tenant` as the task's
    /// [`current_tenant`](crate::current_tenant). Whatever `f` does (returns
    /// an error, rolls back, panics, or is cancelled by dropping this future)
    /// the next borrower of the connection gets its own scope. In
    /// transaction-scoped mode the work is committed when `f` returns `Ok` and
    /// rolled back otherwise.
    ///
    /// The future is `Send` when the closure's is, so it can run in spawned
    /// tasks and web handlers.
    pub async fn with_tenant<T, E, F>(&self, tenant: &Tenant, f: F) -> Result<T, E>
    where
        for<'r> F: AsyncFnOnce(&'r mut AsyncPgConnection) -> Result<T, E>
            + SendFn<&'r mut AsyncPgConnection, Result<T, E>, Fut: Send>
            + Send,
        E: From<Error>,
    {
        let mut conn = self.get(tenant).await?;
        let work: <F as SendFn<&mut AsyncPgConnection, Result<T, E>>>::Fut = f(&mut conn);
        let result = crate::task_local::with_current_tenant(tenant.clone(), work).await;
        if result.is_ok() {
            conn.commit().await?;
        }
        result
    }

    /// Runs `f` on a connection scoped to `public`.
    pub async fn with_public<T, E, F>(&self, f: F) -> Result<T, E>
    where
        for<'r> F: AsyncFnOnce(&'r mut AsyncPgConnection) -> Result<T, E>
            + SendFn<&'r mut AsyncPgConnection, Result<T, E>, Fut: Send>
            + Send,
        E: From<Error>,
    {
        let mut conn = self.public().await?;
        let work: <F as SendFn<&mut AsyncPgConnection, Result<T, E>>>::Fut = f(&mut conn);
        let result = work.await;
        if result.is_ok() {
            conn.commit().await?;
        }
        result
    }

    async fn checkout(&self, scope: &ScopeKey, local: bool) -> Result<Pooled> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut conn = self.pool.get().await?;
            // A checkout cancelled mid-statement returns its connection to
            // the pool without a guard: a query may be in flight, or the
            // checkout's own transaction open.
            let unsettled = !matches!(
                AnsiTransactionManager::transaction_manager_status_mut(&mut *conn)
                    .transaction_depth(),
                Ok(None)
            );
            if unsettled || state(&mut conn).is_none_or(|s| s.discard || s.in_flight > 0) {
                conn.discard();
                continue;
            }
            match enter(&self.settings.scope, &mut conn, scope, local).await {
                Ok(()) => return Ok(conn),
                Err(e) => {
                    let discard = state(&mut conn).is_none_or(|s| s.discard);
                    if discard {
                        conn.discard();
                        // A dead connection (say, after a server restart) is
                        // replaced and the checkout tried again.
                        if matches!(e, Error::Scope { .. }) && attempt < 3 {
                            continue;
                        }
                    }
                    return Err(e);
                }
            }
        }
    }
}

/// Drives the scope state machine (the same one as the sync pool) until the
/// connection holds `scope`: in the common case one statement, or none.
async fn enter(
    cfg: &ScopeConfig,
    conn: &mut AsyncPgConnection,
    scope: &ScopeKey,
    local: bool,
) -> Result<()> {
    use diesel_async::RunQueryDsl;
    match scope::watch_of(conn.instrumentation()) {
        Some(w) => {
            w.clear_own_statement();
            w.state.begin_checkout(cfg);
        }
        None => return Err(scope.instrumentation_lost()),
    }
    for _ in 0..scope::MAX_STEPS {
        let step = state(conn)
            .ok_or_else(|| scope.instrumentation_lost())?
            .plan(cfg, scope, local);
        match step {
            Step::Ready => return Ok(()),
            Step::Reset => {
                Box::pin(end_own_transaction(conn)).await;
                let ok = Box::pin(reset(cfg, conn)).await;
                state(conn)
                    .ok_or_else(|| scope.instrumentation_lost())?
                    .settle_reset(cfg, ok);
                if !ok {
                    return Err(scope.reset_failed());
                }
            }
            Step::ProbeTemp => {
                mark_own(conn);
                let answer = Box::pin(RunQueryDsl::get_result::<bool>(TempObjects, conn)).await;
                state(conn)
                    .ok_or_else(|| scope.instrumentation_lost())?
                    .settle_probe(scope, answer)?;
            }
            Step::ReadBack => {
                mark_own(conn);
                let answer = RunQueryDsl::get_result::<ServerState>(CurrentState, conn).await;
                state(conn)
                    .ok_or_else(|| scope.instrumentation_lost())?
                    .settle(cfg, scope, None, answer)?;
            }
            Step::Set { path, role, local } => {
                if local {
                    if let Err(source) =
                        Box::pin(AnsiTransactionManager::begin_transaction(conn)).await
                    {
                        if let Some(s) = state(conn) {
                            s.discard = true;
                        }
                        return Err(Error::Scope {
                            scope: scope.head().to_owned(),
                            source,
                        });
                    }
                }
                mark_own(conn);
                // Boxed, as are the other rare steps: the checkout's future
                // stays small for the common one (a read-back).
                let answer = Box::pin(set_path(conn, path.clone(), role, local)).await;
                let settled = state(conn)
                    .ok_or_else(|| scope.instrumentation_lost())?
                    .settle(cfg, scope, Some(&path), answer);
                if local && settled.is_err() {
                    Box::pin(end_own_transaction(conn)).await;
                }
                settled?;
            }
        }
    }
    Box::pin(end_own_transaction(conn)).await;
    if let Some(s) = state(conn) {
        s.discard = true;
    }
    Err(scope.unsettled())
}

/// Sends [`SetPath`] in the variant the scope needs.
async fn set_path(
    conn: &mut AsyncPgConnection,
    path: String,
    role: Option<String>,
    local: bool,
) -> diesel::QueryResult<ServerState> {
    use diesel_async::RunQueryDsl;
    match (role, local) {
        (None, false) => {
            RunQueryDsl::get_result(
                SetPath::<false, false> {
                    path,
                    role: String::new(),
                },
                conn,
            )
            .await
        }
        (None, true) => {
            RunQueryDsl::get_result(
                SetPath::<false, true> {
                    path,
                    role: String::new(),
                },
                conn,
            )
            .await
        }
        (Some(role), false) => {
            RunQueryDsl::get_result(SetPath::<true, false> { path, role }, conn).await
        }
        (Some(role), true) => {
            RunQueryDsl::get_result(SetPath::<true, true> { path, role }, conn).await
        }
    }
}

/// Asks the server to cancel the statement the connection is running (a
/// cancel request on a new socket, from a task on the current runtime).
fn cancel_running_query(conn: &AsyncPgConnection) {
    let token = conn.cancel_token();
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            let _ = token.cancel_query(tokio_postgres::NoTls).await;
        });
    }
}

/// Runs the reset batch (one round trip), then drops the notifications
/// already received; whether the batch succeeded.
async fn reset(cfg: &ScopeConfig, conn: &mut AsyncPgConnection) -> bool {
    use diesel_async::SimpleAsyncConnection;
    mark_own(conn);
    let ok = conn.batch_execute(cfg.reset_sql()).await.is_ok();
    drain_notifications(conn);
    ok
}

/// Drops the notifications already received (before the reset's `UNLISTEN`),
/// without waiting for more: the next borrower must not receive them.
fn drain_notifications(conn: &mut AsyncPgConnection) {
    use futures_util::{FutureExt, StreamExt};
    let mut stream = std::pin::pin!(conn.notifications_stream());
    while let Some(Some(_)) = stream.next().now_or_never() {}
}

/// Rolls back a transaction Diesel knows to be open (the checkout's own, in
/// transaction-scoped mode); marks the connection for discarding if that fails.
async fn end_own_transaction(conn: &mut AsyncPgConnection) {
    let ok = match AnsiTransactionManager::transaction_manager_status_mut(conn).transaction_depth()
    {
        Ok(None) => true,
        Ok(Some(_)) => AnsiTransactionManager::rollback_transaction(conn)
            .await
            .is_ok(),
        Err(_) => false,
    };
    if !ok {
        if let Some(s) = state(conn) {
            s.discard = true;
        }
    }
}

/// Ends a borrow: decides keep, reset or discard with the shared state
/// machine, and runs the reset. Returns whether the connection may go back
/// to the pool.
async fn release(
    cfg: &ScopeConfig,
    conn: &mut AsyncPgConnection,
    own_transaction: bool,
    decided: Option<Release>,
) -> bool {
    if own_transaction {
        let depth =
            AnsiTransactionManager::transaction_manager_status_mut(conn).transaction_depth();
        let rolled_back = matches!(depth, Ok(Some(d)) if d.get() == 1)
            && AnsiTransactionManager::rollback_transaction(conn)
                .await
                .is_ok();
        if !rolled_back && !matches!(depth, Ok(None)) {
            return false;
        }
    }
    let decision = match decided {
        Some(decision) => decision,
        None => release_decision(cfg, conn, false),
    };
    match decision {
        Release::Keep => true,
        Release::Discard => false,
        Release::Reset => {
            let ok = reset(cfg, conn).await;
            match state(conn) {
                Some(s) => {
                    s.settle_reset(cfg, ok);
                    ok
                }
                None => false,
            }
        }
    }
}

/// The state machine's decision for a borrow that has ended.
fn release_decision(cfg: &ScopeConfig, conn: &mut AsyncPgConnection, panicking: bool) -> Release {
    let in_transaction = AnsiTransactionManager::transaction_manager_status_mut(conn)
        .transaction_depth()
        .ok()
        .map(|depth| depth.is_some());
    match scope::watch_of(conn.instrumentation()) {
        Some(w) => {
            w.clear_own_statement();
            w.state.release(cfg, in_transaction, panicking)
        }
        None => Release::Discard,
    }
}

/// A pooled diesel-async connection scoped to one tenant (or `public`) while it
/// lives, from either pool. Dereferences to [`AsyncPgConnection`]; use
/// `&mut *conn` with `diesel_async::RunQueryDsl`.
pub struct AsyncTenantConnection {
    conn: Option<Pooled>,
    tenant: Option<Tenant>,
    settings: Arc<Settings>,
    /// Transaction-scoped mode: the transaction this guard opened is still open.
    own_transaction: bool,
}

impl std::fmt::Debug for AsyncTenantConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncTenantConnection")
            .field("tenant", &self.tenant.as_ref().map(|t| t.schema()))
            .finish()
    }
}

impl AsyncTenantConnection {
    /// The tenant, or `None` for `public`.
    pub fn tenant(&self) -> Option<&Tenant> {
        self.tenant.as_ref()
    }

    /// In transaction-scoped mode, commits the transaction the checkout opened
    /// (a connection dropped without `commit` rolls it back). In session mode
    /// there is nothing to commit and this does nothing.
    ///
    /// Refuses (and rolls back) if a statement of the borrow was dropped
    /// before it finished: the server may still be running it, and what it
    /// did was never seen by the borrower.
    pub async fn commit(&mut self) -> Result<()> {
        if !std::mem::take(&mut self.own_transaction) {
            return Ok(());
        }
        let scope = self
            .tenant
            .as_ref()
            .map_or("public", |t| t.schema().as_str())
            .to_owned();
        let conn: &mut AsyncPgConnection = self;
        if let Some(s) = state(conn).filter(|s| s.in_flight > 0) {
            // A COMMIT now would wait for that statement, then commit it.
            // Closing the connection (after a cancel request) rolls it back.
            s.discard = true;
            return Err(Error::Refused {
                reason: format!(
                    "the transaction scoped to {scope} was not committed: a statement of the \
                     borrow was dropped before it finished, so it is rolled back"
                ),
            });
        }
        AnsiTransactionManager::commit_transaction(conn)
            .await
            .map_err(|source| {
                if let Some(s) = state(conn) {
                    s.discard = true;
                }
                Error::Database {
                    action: format!("commit the transaction scoped to {scope}"),
                    source,
                }
            })
    }
}

impl Deref for AsyncTenantConnection {
    type Target = AsyncPgConnection;
    #[inline]
    fn deref(&self) -> &AsyncPgConnection {
        self.conn.as_ref().expect("present until drop")
    }
}

impl DerefMut for AsyncTenantConnection {
    #[inline]
    fn deref_mut(&mut self) -> &mut AsyncPgConnection {
        self.conn.as_mut().expect("present until drop")
    }
}

impl Drop for AsyncTenantConnection {
    /// Decides with the shared state machine whether the connection can serve
    /// the next borrower. It is closed after a panic, with a query still in
    /// flight (the borrower's future was dropped mid-query), with a Diesel
    /// transaction left open, or if its instrumentation was replaced. A
    /// connection that needs a statement first (a reset, or the rollback of
    /// its own transaction in transaction-scoped mode) is handed to a task on
    /// the current runtime that sends it and then returns the connection; with
    /// no runtime it is closed.
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if state(&mut conn).is_some_and(|s| s.in_flight > 0) {
            // The borrower's future was dropped mid-query: the server is
            // still running it (with whatever it holds, an advisory lock or a
            // transaction) and would until it next writes to the closed
            // socket. Cancel it, so the backend ends with the connection.
            cancel_running_query(&conn);
        }
        let own_transaction = std::mem::take(&mut self.own_transaction);
        let panicking = std::thread::panicking();
        let cfg = &self.settings.scope;
        let mut decided = None;
        if !own_transaction {
            match release_decision(cfg, &mut conn, panicking) {
                Release::Keep => return,
                Release::Discard => {
                    conn.discard();
                    return;
                }
                // The decision is made; the task only runs the reset.
                Release::Reset => decided = Some(Release::Reset),
            }
        } else if panicking || state(&mut conn).is_none_or(|s| s.in_flight > 0) {
            conn.discard();
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            conn.discard();
            return;
        };
        let settings = Arc::clone(&self.settings);
        runtime.spawn(async move {
            if !release(&settings.scope, &mut conn, own_transaction, decided).await {
                conn.discard();
            }
        });
    }
}

/// A connection of an [`AsyncTenantPool`] as a blocking Diesel connection
/// (diesel-async's `AsyncConnectionWrapper`): what [`AsyncTenantPool::blocking`]
/// hands its closure, so that the crate's blocking functions (registry,
/// lifecycle, migrations, Citus) run without libpq.
pub type BlockingConnection =
    diesel_async::async_connection_wrapper::AsyncConnectionWrapper<AsyncTenantConnection>;

impl AsyncTenantPool {
    /// A session-level connection scoped to `public` for the crate's own work
    /// (migrations, tenant creation), also in transaction-scoped mode.
    async fn maintenance(&self) -> Result<AsyncTenantConnection> {
        let conn = self.checkout(&ScopeKey::Public, false).await?;
        Ok(AsyncTenantConnection {
            conn: Some(conn),
            tenant: None,
            settings: Arc::clone(&self.settings),
            own_transaction: false,
        })
    }

    /// Runs `f` on tokio's blocking thread pool with a session-level
    /// connection of this pool scoped to `public`, seen as a blocking Diesel
    /// connection: the way to call the crate's blocking functions from async
    /// code without libpq and without blocking a runtime thread. The
    /// connection goes back to the pool afterwards under the usual rules
    /// (reset if `f` left anything behind).
    ///
    /// ```no_run
    /// # async fn run(pool: diesel_tenancy::AsyncTenantPool) -> Result<(), Box<dyn std::error::Error>> {
    /// use diesel_tenancy::{NewTenant, SchemaName, create_tenant, run_shared_migrations};
    /// use diesel_migrations::{EmbeddedMigrations, embed_migrations};
    /// const SHARED: EmbeddedMigrations = embed_migrations!("migrations_shared");
    /// const TENANT: EmbeddedMigrations = embed_migrations!("migrations_tenant");
    ///
    /// pool.blocking(|conn| run_shared_migrations(conn, SHARED)).await??;
    /// let new = NewTenant::new(SchemaName::new("acme")?, "Acme");
    /// let acme = pool.blocking(move |conn| create_tenant(conn, &new, TENANT)).await??;
    /// # Ok(()) }
    /// ```
    ///
    /// Needs tokio's multi-thread runtime (the closure's statements are driven
    /// by the runtime while the blocking thread waits for them).
    pub async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&mut BlockingConnection) -> T + Send + 'static,
        T: Send + 'static,
    {
        let conn = self.maintenance().await?;
        let (conn, out) = tokio::task::spawn_blocking(move || {
            let mut conn = BlockingConnection::from(conn);
            let out = f(&mut conn);
            (conn.into_inner(), out)
        })
        .await
        .map_err(|e| Error::Refused {
            reason: format!("the blocking task failed: {e}"),
        })?;
        drop(conn);
        Ok(out)
    }

    /// The pool as a source of worker connections for a parallel run on
    /// blocking threads; `handle` is the runtime that drives the connections.
    pub(crate) fn sessions(&self, handle: tokio::runtime::Handle) -> AsyncSessions {
        AsyncSessions {
            pool: self.clone(),
            handle,
        }
    }
}

/// [`AsyncTenantPool`] as the source of a parallel run's connections, used
/// from blocking threads.
pub(crate) struct AsyncSessions {
    pool: AsyncTenantPool,
    handle: tokio::runtime::Handle,
}

impl crate::conn::Sessions for AsyncSessions {
    type Conn = BlockingConnection;

    fn session(&self) -> Result<BlockingConnection> {
        // Worker threads enter the runtime, so that the wrapper drives its
        // statements there and a dropped connection's reset can be spawned.
        let _runtime = self.handle.enter();
        let conn = self.handle.block_on(self.pool.maintenance())?;
        Ok(BlockingConnection::from(conn))
    }

    fn discard(conn: &mut BlockingConnection) {
        if let Some(s) = state(conn) {
            s.discard = true;
        }
    }

    fn max_size(&self) -> usize {
        self.pool.pool.max_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reaper_runs_every_30_seconds_or_faster_for_short_limits() {
        let limits = |max_lifetime, idle_timeout| Limits {
            max_size: 1,
            min_idle: None,
            connection_timeout: Duration::from_secs(1),
            max_lifetime,
            idle_timeout,
        };
        let min = Duration::from_secs(60);
        assert_eq!(limits(None, None).reaper_rate(), None);
        assert_eq!(
            limits(Some(30 * min), Some(10 * min)).reaper_rate(),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            limits(None, Some(Duration::from_secs(2))).reaper_rate(),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            limits(Some(Duration::from_millis(1)), None).reaper_rate(),
            Some(Duration::from_millis(10))
        );
    }

    #[test]
    fn settings_are_checked_alike_for_both_pools() {
        let b = || AsyncTenantPool::builder("postgres://localhost/app");
        let reason = |r: Result<AsyncTenantPool>| match r {
            Err(Error::Config { reason }) => reason,
            other => panic!("expected a configuration error, got {other:?}"),
        };
        assert!(reason(b().max_size(0).build()).contains("max_size"));
        assert!(reason(b().max_size(2).min_idle(Some(3)).build()).contains("min_idle"));
        assert!(reason(b().connection_timeout(Duration::ZERO).build()).contains("timeout"));
        assert!(reason(b().idle_timeout(Some(Duration::ZERO)).build()).contains("idle_timeout"));
    }
}
