//! The tenant-scoped connection pool over r2d2.

mod builder;
mod connection;
mod guard;
mod manager;

pub use builder::TenantPoolBuilder;
pub use guard::TenantConnection;
use std::sync::Arc;

use diesel::pg::PgConnection;
use manager::Settings;

use crate::registry::Tenant;
use crate::scope::ScopeStats;
use crate::{Error, Result, SchemaName, registry};

pub use manager::{ManagedConnection, TenantConnectionManager};

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
            settings: crate::pool::settings::PoolSettings::new(database_url.into()),
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
