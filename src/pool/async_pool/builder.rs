//! The async pool's builder, and opening a connection.

use super::*;
use std::sync::Arc;
use std::time::Duration;

use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{AsyncConnection, AsyncPgConnection};

use crate::scope::ScopeWatch;
use crate::{Result, SchemaName};

/// Builds an [`AsyncTenantPool`]. The same settings as
/// [`TenantPoolBuilder`](crate::TenantPoolBuilder), with the same defaults,
/// on either pool: [`build`](Self::build) takes deadpool when the `deadpool`
/// feature is on and bb8 otherwise; [`build_deadpool`](Self::build_deadpool)
/// and [`build_bb8`](Self::build_bb8) choose.
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until build() is called"]
pub struct AsyncTenantPoolBuilder {
    pub(super) settings: crate::pool::settings::PoolSettings,
}

impl AsyncTenantPoolBuilder {
    /// Replace a connection once it has been scoped to this many distinct
    /// schemas, as
    /// [`TenantPoolBuilder::recycle_after_schemas`](crate::TenantPoolBuilder::recycle_after_schemas)
    /// does. Defaults to 1,000; `None` turns the rule off.
    pub fn recycle_after_schemas(mut self, schemas: Option<u64>) -> Self {
        self.settings.recycle_after_schemas = schemas.map(|n| n.max(1));
        self
    }

    /// Replace a connection once its backend's memory passes this many MB, as
    /// [`TenantPoolBuilder::recycle_above_memory_mb`](crate::TenantPoolBuilder::recycle_above_memory_mb)
    /// does. Defaults to 64 MB; `None` turns it off.
    pub fn recycle_above_memory_mb(mut self, mb: Option<u64>) -> Self {
        self.settings.recycle_above_memory_mb = mb.map(|n| n.max(1));
        self
    }

    /// Switch to the tenant's own role while scoped, as
    /// [`TenantPoolBuilder::tenant_roles`](crate::TenantPoolBuilder::tenant_roles)
    /// does (in the same statement that sets the path). Defaults to `false`.
    pub fn tenant_roles(mut self, on: bool) -> Self {
        self.settings.tenant_roles = on;
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
        self.settings.transaction_scoped = on;
        self
    }

    /// Diesel's prepared-statement cache, as
    /// [`TenantPoolBuilder::statement_cache`](crate::TenantPoolBuilder::statement_cache).
    /// Defaults to on, and to off in transaction-scoped mode.
    pub fn statement_cache(mut self, on: bool) -> Self {
        self.settings.statement_cache = Some(on);
        self
    }

    /// SQL run on every new connection and after every reset, as
    /// [`TenantPoolBuilder::session_setup`](crate::TenantPoolBuilder::session_setup).
    /// Defaults to none.
    pub fn session_setup(mut self, sql: impl Into<String>) -> Self {
        self.settings.session_setup = Some(sql.into());
        self
    }

    /// Reset every session when its borrow ends, as
    /// [`TenantPoolBuilder::reset_after_every_borrow`](crate::TenantPoolBuilder::reset_after_every_borrow).
    /// Defaults to `false`.
    pub fn reset_after_every_borrow(mut self, on: bool) -> Self {
        self.settings.reset_after_every_borrow = on;
        self
    }

    /// Maximum number of connections. Defaults to 10.
    pub fn max_size(mut self, max_size: usize) -> Self {
        self.settings.max_size = max_size;
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
        self.settings.min_idle = min_idle;
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
        self.settings.connection_timeout = timeout;
        self
    }

    /// The age at which a connection is closed instead of reused. Defaults to 30
    /// minutes (a backend keeps the catalog entries of every schema it touched).
    ///
    /// Both pools check it when a connection is checked out (deadpool) or
    /// given back (bb8), and close idle connections past it in the background
    /// (every 30 seconds, or a quarter of the limit if that is shorter).
    pub fn max_lifetime(mut self, lifetime: Option<Duration>) -> Self {
        self.settings.max_lifetime = lifetime;
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
        self.settings.idle_timeout = timeout;
        self
    }

    /// Check each connection on checkout. Defaults to `true`. The check is the
    /// statement that sets or reads back the search path, so it costs the same
    /// single round trip as diesel-async's own `Verified` recycling.
    pub fn test_on_check_out(mut self, test: bool) -> Self {
        self.settings.test_on_check_out = test;
        self
    }

    /// A schema placed after `public` on every path. Defaults to none.
    pub fn extra_schema(mut self, schema: SchemaName) -> Self {
        self.settings.extra_schemas.push(schema);
        self
    }

    /// Remember each connection's search path. Defaults to `true`.
    pub fn track_search_path(mut self, track: bool) -> Self {
        self.settings.track_search_path = track;
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
    pub(super) fn parts(
        self,
    ) -> Result<(
        AsyncDieselConnectionManager<AsyncPgConnection>,
        Limits,
        Arc<Settings>,
    )> {
        self.settings.check()?;
        let statement_cache = self.settings.statement_cache();
        let session_setup = self.settings.session_setup.clone();
        let timeout = self.settings.connection_timeout;
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
        let manager = AsyncDieselConnectionManager::new_with_config(
            self.settings.database_url.clone(),
            config,
        );
        let limits = Limits {
            max_size: self.settings.max_size,
            min_idle: self.settings.min_idle,
            connection_timeout: self.settings.connection_timeout,
            max_lifetime: self.settings.max_lifetime,
            idle_timeout: self.settings.idle_timeout,
        };
        let settings = Arc::new(Settings {
            database_url: self.settings.database_url.clone(),
            scope: self.settings.scope_config(),
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
pub(super) async fn establish(
    url: &str,
    timeout: Duration,
) -> diesel::ConnectionResult<AsyncPgConnection> {
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
