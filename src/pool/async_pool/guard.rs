//! The guard a checkout hands out.

use super::*;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use diesel_async::{AnsiTransactionManager, AsyncPgConnection, TransactionManager};

use crate::scope::Release;
use crate::{Error, Result, Tenant};

/// A pooled diesel-async connection scoped to one tenant (or `public`) while it
/// lives, from either pool. Dereferences to [`AsyncPgConnection`]; use
/// `&mut *conn` with `diesel_async::RunQueryDsl`.
pub struct AsyncTenantConnection {
    pub(super) conn: Option<Pooled>,
    pub(super) tenant: Option<Tenant>,
    pub(super) settings: Arc<Settings>,
    /// Transaction-scoped mode: the transaction this guard opened is still open.
    pub(super) own_transaction: bool,
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
            return Err(Error::NotCommitted { scope });
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
