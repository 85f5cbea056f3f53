//! The guard a checkout hands out: a connection scoped to one tenant (or
//! `public`) while it lives.

use super::*;
use std::ops::{Deref, DerefMut};

use diesel::connection::{AnsiTransactionManager, TransactionManager};
use diesel::pg::PgConnection;

use crate::registry::Tenant;
use crate::scope::ScopeKey;
use crate::{Error, Result};

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
    pub(super) conn: r2d2::PooledConnection<TenantConnectionManager>,
    pub(super) tenant: Option<Tenant>,
    /// Transaction-scoped mode: the transaction this guard opened is still open.
    pub(super) own_transaction: bool,
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
        let scope = ScopeKey::Tenant(
            tenant.schema().clone(),
            cfg.role_of(tenant)?,
            tenant.schema_oid(),
        );
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
    pub(super) fn scope_public_with(
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
