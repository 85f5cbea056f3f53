//! The tenant-scoped pool over diesel-async (deadpool), with the sync pool's
//! guarantees, and a task-local current tenant.

use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{
    AnsiTransactionManager, AsyncConnection, AsyncPgConnection, TransactionManager,
};

use crate::scope::{self, PATH_DIRTY, RAW_TRANSACTION, ScopeKey, ScopeWatch};
use crate::{Error, Result, SchemaName, ScopeStats, Tenant};

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

tokio::task_local! {
    static CURRENT_TENANT: Tenant;
}

/// The tenant the current task runs for, if it runs inside
/// [`AsyncTenantPool::with_tenant`], [`with_current_tenant`] or a task started by
/// [`spawn_with_tenant`].
pub fn current_tenant() -> Option<Tenant> {
    CURRENT_TENANT.try_with(Tenant::clone).ok()
}

/// Runs `future` with `tenant` as the task's [`current_tenant`].
pub async fn with_current_tenant<F: Future>(tenant: Tenant, future: F) -> F::Output {
    CURRENT_TENANT.scope(tenant, future).await
}

/// Spawns a task that carries the current task's tenant along (or none).
pub fn spawn_with_tenant<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match current_tenant() {
        Some(tenant) => tokio::spawn(CURRENT_TENANT.scope(tenant, future)),
        None => tokio::spawn(future),
    }
}

#[derive(Debug)]
struct Settings {
    extra_schemas: Vec<SchemaName>,
    track_search_path: bool,
    test_on_check_out: bool,
    max_lifetime: Option<Duration>,
    tenant_roles: bool,
    recycle_after_schemas: Option<u64>,
    scoped: AtomicU64,
    path_sets: AtomicU64,
}

/// Builds an [`AsyncTenantPool`]. The same settings as
/// [`TenantPoolBuilder`](crate::TenantPoolBuilder), with the same defaults.
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until build() is called"]
pub struct AsyncTenantPoolBuilder {
    database_url: String,
    max_size: usize,
    connection_timeout: Duration,
    max_lifetime: Option<Duration>,
    test_on_check_out: bool,
    extra_schemas: Vec<SchemaName>,
    track_search_path: bool,
    tenant_roles: bool,
    recycle_after_schemas: Option<u64>,
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
    /// does (here one more statement on a switch). Defaults to `false`.
    pub fn tenant_roles(mut self, on: bool) -> Self {
        self.tenant_roles = on;
        self
    }

    /// Maximum number of connections. Defaults to 10.
    pub fn max_size(mut self, max_size: usize) -> Self {
        self.max_size = max_size;
        self
    }

    /// How long a checkout waits for a connection. Defaults to 30 seconds.
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        self
    }

    /// The age at which a connection is closed instead of reused. Defaults to 30
    /// minutes (a backend keeps the catalog entries of every schema it touched).
    pub fn max_lifetime(mut self, lifetime: Option<Duration>) -> Self {
        self.max_lifetime = lifetime;
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

    /// The pool. Connections are opened on first use.
    pub fn build(self) -> Result<AsyncTenantPool> {
        if self.max_size == 0 {
            return Err(Error::Config {
                reason: "max_size must be at least 1".into(),
            });
        }
        // Validate the URL as the sync pool does.
        crate::TenantConnectionManager::new(self.database_url.clone())?;
        let mut config = ManagerConfig::<AsyncPgConnection>::default();
        // The checkout's own statement is the liveness check.
        config.recycling_method = RecyclingMethod::Fast;
        config.custom_setup = Box::new(|url| {
            let url = url.to_owned();
            Box::pin(async move {
                let mut conn = AsyncPgConnection::establish(&url).await?;
                let inner = diesel::connection::get_default_instrumentation();
                conn.set_instrumentation(ScopeWatch::new(inner));
                Ok(conn)
            })
        });
        let manager = AsyncDieselConnectionManager::new_with_config(self.database_url, config);
        let pool = Pool::builder(manager)
            .max_size(self.max_size)
            .wait_timeout(Some(self.connection_timeout))
            .create_timeout(Some(self.connection_timeout))
            .recycle_timeout(Some(self.connection_timeout))
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|e| Error::Config {
                reason: format!("could not build the pool: {e}"),
            })?;
        Ok(AsyncTenantPool {
            pool,
            settings: Arc::new(Settings {
                extra_schemas: self.extra_schemas,
                track_search_path: self.track_search_path,
                test_on_check_out: self.test_on_check_out,
                max_lifetime: self.max_lifetime,
                tenant_roles: self.tenant_roles,
                recycle_after_schemas: self.recycle_after_schemas,
                scoped: AtomicU64::new(0),
                path_sets: AtomicU64::new(0),
            }),
        })
    }
}

/// A pool of diesel-async PostgreSQL connections, each scoped to one tenant while
/// in use: [`TenantPool`](crate::TenantPool)'s API and guarantees, for async code.
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
    pool: Pool<AsyncPgConnection>,
    settings: Arc<Settings>,
}

impl std::fmt::Debug for AsyncTenantPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncTenantPool")
            .field("status", &self.pool.status())
            .finish()
    }
}

fn watch(conn: &mut AsyncPgConnection) -> Option<&mut ScopeWatch> {
    conn.instrumentation().downcast_mut::<ScopeWatch>()
}

impl AsyncTenantPool {
    /// A builder for a pool on `database_url`.
    pub fn builder(database_url: impl Into<String>) -> AsyncTenantPoolBuilder {
        AsyncTenantPoolBuilder {
            database_url: database_url.into(),
            max_size: 10,
            connection_timeout: Duration::from_secs(30),
            max_lifetime: Some(Duration::from_secs(30 * 60)),
            test_on_check_out: true,
            extra_schemas: Vec::new(),
            track_search_path: true,
            tenant_roles: false,
            recycle_after_schemas: Some(crate::scope::DEFAULT_RECYCLE_AFTER_SCHEMAS),
        }
    }

    /// How many checkouts were scoped, and how many had to set the path.
    pub fn stats(&self) -> ScopeStats {
        ScopeStats {
            scoped: self.settings.scoped.load(Ordering::Relaxed),
            path_sets: self.settings.path_sets.load(Ordering::Relaxed),
        }
    }

    /// A connection scoped to `tenant`. Fails with [`Error::TenantSuspended`]
    /// before any statement runs if the tenant is suspended, and with
    /// [`Error::SchemaMissing`] if its schema is gone.
    pub async fn get(&self, tenant: &Tenant) -> Result<AsyncTenantConnection> {
        if !tenant.is_active() {
            return Err(Error::TenantSuspended {
                schema: tenant.schema().as_str().to_owned(),
            });
        }
        let conn = self
            .checkout(ScopeKey::Tenant(
                tenant.schema().clone(),
                self.role_of(tenant)?,
            ))
            .await?;
        Ok(AsyncTenantConnection {
            conn: Some(conn),
            tenant: Some(tenant.clone()),
        })
    }

    /// A connection scoped to the shared `public` schema.
    pub async fn public(&self) -> Result<AsyncTenantConnection> {
        let conn = self.checkout(ScopeKey::Public).await?;
        Ok(AsyncTenantConnection {
            conn: Some(conn),
            tenant: None,
        })
    }

    /// Runs `f` on a connection scoped to `tenant`, with `tenant` as the task's
    /// [`current_tenant`]. Whatever `f` does (returns an error, rolls back,
    /// panics, or is cancelled by dropping this future) the next borrower of the
    /// connection gets its own scope.
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
        CURRENT_TENANT.scope(tenant.clone(), work).await
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
        work.await
    }

    fn role_of(&self, tenant: &Tenant) -> Result<Option<SchemaName>> {
        if !self.settings.tenant_roles {
            return Ok(None);
        }
        tenant.role().cloned().map(Some).ok_or_else(|| Error::Refused {
            reason: format!(
                "tenant {:?} has no role, and the pool switches to tenant roles; create one with ensure_tenant_role",
                tenant.schema().as_str()
            ),
        })
    }

    async fn checkout(&self, scope: ScopeKey) -> Result<Object<AsyncPgConnection>> {
        self.settings.scoped.fetch_add(1, Ordering::Relaxed);
        loop {
            let mut conn = self.pool.get().await.map_err(|e| Error::Config {
                reason: format!("could not get a database connection: {e}"),
            })?;
            let too_old = self
                .settings
                .max_lifetime
                .is_some_and(|max| Object::metrics(&conn).age() > max);
            if too_old || watch(&mut conn).is_none() {
                drop(Object::take(conn));
                continue;
            }
            match self.enter(&mut conn, &scope).await {
                Ok(()) => return Ok(conn),
                Err(e @ Error::SchemaMissing { .. }) => return Err(e),
                Err(e) => {
                    drop(Object::take(conn));
                    return Err(e);
                }
            }
        }
    }

    /// Puts the connection on `scope`'s path, in one statement: setting the path
    /// on a switch, reading it back (the liveness check) when it is already
    /// there, or nothing when it is there and checks are off.
    async fn enter(&self, conn: &mut AsyncPgConnection, scope: &ScopeKey) -> Result<()> {
        use diesel_async::RunQueryDsl;
        let path = scope.search_path(&self.settings.extra_schemas);
        let tracked = watch(conn).is_some_and(|w| {
            w.clear_own_statement();
            self.settings.track_search_path
                && w.current
                    .as_ref()
                    .is_some_and(|(k, p)| k == scope && *p == path)
        });
        let scope_err = |source| Error::Scope {
            scope: scope.head().to_owned(),
            source,
        };
        if tracked {
            if !self.settings.test_on_check_out {
                return Ok(());
            }
            // The liveness check: read the path back (a cached statement).
            scope::own_statement_next(conn.instrumentation());
            let server: scope::ServerPath = RunQueryDsl::get_result(scope::CurrentPath, conn)
                .await
                .map_err(scope_err)?;
            if scope.held(&path, &server, self.settings.tenant_roles) {
                if let Some(w) = watch(conn) {
                    w.take_flags();
                }
                return Ok(());
            }
        }
        self.settings.path_sets.fetch_add(1, Ordering::Relaxed);
        let recycle_after = self.settings.recycle_after_schemas;
        if let Some(w) = watch(conn) {
            w.current = None;
            w.retire |= w.schemas.add(scope.head(), recycle_after);
        }
        // Setting the path is the liveness check on a switch (a cached
        // statement), and with tenant roles it sets the role too. As in the
        // sync pool, current_schema() in the same select list tells whether
        // the tenant's schema exists, and the statement names no table, so its
        // re-planning after each path change is trivial.
        scope::own_statement_next(conn.instrumentation());
        let set_path = scope::set_config("search_path", path.clone(), false);
        let head = if self.settings.tenant_roles {
            let set_role = scope::set_config("role", scope.role_setting().to_owned(), false);
            diesel::select((set_path, set_role, scope::current_schema()))
                .get_result::<(String, String, Option<String>)>(conn)
                .await
                .map(|(_, _, head)| head)
        } else {
            diesel::select((set_path, scope::current_schema()))
                .get_result::<(String, Option<String>)>(conn)
                .await
                .map(|(_, head)| head)
        }
        .map_err(scope_err)?;
        let set = match scope {
            ScopeKey::Public => true,
            ScopeKey::Tenant(schema, _) => head.as_deref() == Some(schema.as_str()),
        };
        let w = watch(conn);
        match (set, w) {
            (true, Some(w)) => {
                w.take_flags();
                w.current = Some((scope.clone(), path));
                Ok(())
            }
            (false, Some(w)) => {
                w.take_flags();
                Err(Error::SchemaMissing {
                    schema: scope.head().to_owned(),
                })
            }
            (_, None) => Err(Error::Refused {
                reason: "the connection's instrumentation was replaced".into(),
            }),
        }
    }
}

/// A pooled diesel-async connection scoped to one tenant (or `public`) while it
/// lives. Dereferences to [`AsyncPgConnection`]; use `&mut *conn` with
/// `diesel_async::RunQueryDsl`.
pub struct AsyncTenantConnection {
    conn: Option<Object<AsyncPgConnection>>,
    tenant: Option<Tenant>,
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
}

impl Deref for AsyncTenantConnection {
    type Target = AsyncPgConnection;
    fn deref(&self) -> &AsyncPgConnection {
        self.conn.as_ref().expect("present until drop")
    }
}

impl DerefMut for AsyncTenantConnection {
    fn deref_mut(&mut self) -> &mut AsyncPgConnection {
        self.conn.as_mut().expect("present until drop")
    }
}

impl Drop for AsyncTenantConnection {
    /// Decides, without awaiting, whether the connection can serve the next
    /// borrower: it is discarded after a panic, with a query still in flight (the
    /// borrower's future was dropped mid-query), with a transaction open (Diesel's
    /// or raw SQL's), or if its instrumentation was replaced; otherwise the
    /// remembered path is kept unless a statement could have changed it.
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let keep = !std::thread::panicking() && {
            let in_transaction = !matches!(
                AnsiTransactionManager::transaction_manager_status_mut(&mut *conn)
                    .transaction_depth(),
                Ok(None)
            );
            match watch(&mut conn) {
                None => false,
                Some(w) => {
                    let flags = w.take_flags();
                    if flags & PATH_DIRTY != 0 {
                        w.current = None;
                    }
                    w.in_flight == 0 && flags & RAW_TRANSACTION == 0 && !in_transaction && !w.retire
                }
            }
        };
        if !keep {
            drop(Object::take(conn));
        }
    }
}
