//! An async pool's connections as blocking Diesel connections, for the
//! crate's blocking functions.

use super::*;
use std::sync::Arc;

use crate::scope::ScopeKey;
use crate::{Error, Result};

/// A connection of an [`AsyncTenantPool`] as a blocking Diesel connection
/// (diesel-async's `AsyncConnectionWrapper`): what [`AsyncTenantPool::blocking`]
/// hands its closure, so that the crate's blocking functions (registry,
/// lifecycle, migrations, Citus) run without libpq.
pub type BlockingConnection =
    diesel_async::async_connection_wrapper::AsyncConnectionWrapper<AsyncTenantConnection>;

impl AsyncTenantPool {
    /// A session-level connection scoped to `public` for the crate's own work
    /// (migrations, tenant creation), also in transaction-scoped mode.
    pub(super) async fn maintenance(&self) -> Result<AsyncTenantConnection> {
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
        .map_err(|e| Error::TaskFailed {
            task: "the blocking task".into(),
            reason: e.to_string(),
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
    pub(super) pool: AsyncTenantPool,
    pub(super) handle: tokio::runtime::Handle,
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
