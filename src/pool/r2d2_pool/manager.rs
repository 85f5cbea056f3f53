//! The r2d2 connection manager and its pooled connection: opening a
//! connection, scoping it at checkout and releasing it.

use super::*;
use std::sync::Arc;

use diesel::connection::{
    AnsiTransactionManager, Connection, SimpleConnection, TransactionManager,
};
use diesel::pg::PgConnection;
use diesel::prelude::RunQueryDsl;
use diesel::r2d2::R2D2Connection;

use crate::scope::{
    BackendMemory, ConnState, CurrentState, Release, ScopeConfig, ScopeKey, ScopeStats, ScopeWatch,
    ServerState, SetPath, Step, TempObjects,
};
use crate::{Error, Result, scope};

/// Settings shared by the manager and every connection it makes.
#[derive(Debug)]
pub(super) struct Settings {
    pub(super) database_url: String,
    /// Keep Diesel's prepared-statement cache.
    pub(super) statement_cache: bool,
    pub(super) scope: ScopeConfig,
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
    pub(super) settings: Arc<Settings>,
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

    pub(super) fn with_settings(b: &TenantPoolBuilder) -> Result<Self> {
        b.settings.check()?;
        Ok(TenantConnectionManager {
            settings: Arc::new(Settings {
                database_url: b.settings.database_url.clone(),
                statement_cache: b.settings.statement_cache(),
                scope: b.settings.scope_config(),
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
    pub(super) conn: PgConnection,
    pub(super) settings: Arc<Settings>,
    /// The instrumentation was replaced: nothing about the session is known.
    pub(super) lost: bool,
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
    pub(super) fn state(&mut self) -> Option<&mut ConnState> {
        match scope::watch_of(self.conn.instrumentation()) {
            Some(watch) => Some(&mut watch.state),
            None => {
                self.lost = true;
                None
            }
        }
    }

    /// Marks the next statement as the crate's own.
    pub(super) fn mark_own(&mut self) {
        if let Some(watch) = scope::watch_of(self.conn.instrumentation()) {
            watch.own_statement_next();
        }
    }

    pub(super) fn lost_error(&mut self, scope: &ScopeKey) -> Error {
        self.lost = true;
        scope.instrumentation_lost()
    }

    /// Drives the scope state machine until the connection holds `scope`: in
    /// the common case one statement (set the path on a switch, read it back
    /// for the same tenant), or none.
    // One loop on purpose: it is the sync side of the shared state machine
    // (`ConnState::plan`), step by step as the async checkout runs it.
    pub(super) fn enter(&mut self, scope: &ScopeKey, local: bool) -> Result<()> {
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
                Step::SampleMemory => {
                    self.mark_own();
                    let answer = BackendMemory.get_result::<i64>(&mut self.conn);
                    let Some(state) = self.state() else {
                        return Err(self.lost_error(scope));
                    };
                    state.settle_memory(cfg, answer);
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
    pub(super) fn end_own_transaction(&mut self) {
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
    pub(super) fn run_reset(&mut self) -> bool {
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
    pub(super) fn leave(&mut self) {
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
pub(super) fn set_path(
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
