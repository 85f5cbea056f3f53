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

mod blocking;
mod builder;
mod checkout;
mod guard;
mod pooled;

pub(crate) use blocking::AsyncSessions;
pub use blocking::BlockingConnection;
pub use builder::AsyncTenantPoolBuilder;
use std::sync::Arc;
use std::time::Duration;

use checkout::{cancel_running_query, release, release_decision, state};
use diesel_async::AsyncPgConnection;
use pooled::{Pool, Pooled};
use private::SendFn;

use crate::scope::{ScopeConfig, ScopeKey, ScopeStats};
use crate::{Error, Result, Tenant};

pub use guard::AsyncTenantConnection;

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

impl AsyncTenantPool {
    /// A builder for a pool on `database_url`.
    pub fn builder(database_url: impl Into<String>) -> AsyncTenantPoolBuilder {
        AsyncTenantPoolBuilder {
            settings: crate::pool::settings::PoolSettings::new(database_url.into()),
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
        let scope = ScopeKey::Tenant(
            tenant.schema().clone(),
            cfg.role_of(tenant)?,
            tenant.schema_oid(),
        );
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
