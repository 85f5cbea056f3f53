//! Diesel's connection traits for the pool's two connection types, so that
//! `&mut conn` works wherever Diesel wants a connection, as it did with
//! diesel's own r2d2 pool: [`ManagedConnection`] (a plain borrow, scoped to
//! `public` on first use) and [`TenantConnection`] (scoped at checkout).
//!
//! Implementing `Connection` outside Diesel needs its
//! `i-implement-a-third-party-backend-and-opt-into-breaking-changes` feature,
//! which is why the crate pins Diesel to one minor version.

use diesel::connection::DefaultLoadingMode;
use diesel::connection::{
    AnsiTransactionManager, CacheSize, Connection, ConnectionSealed, Instrumentation,
    LoadConnection, SimpleConnection, TransactionManager,
};
use diesel::expression::QueryMetadata;
use diesel::migration::MigrationConnection;
use diesel::pg::{Pg, PgConnection, PgRowByRowLoadingMode};
use diesel::query_builder::{Query, QueryFragment, QueryId};
use diesel::query_dsl::UpdateAndFetchResults;
use diesel::r2d2::R2D2Connection;
use diesel::{ConnectionResult, QueryResult};

use super::{ManagedConnection, TenantConnection};
use crate::scope::ScopeKey;

impl ManagedConnection {
    /// The session, scoped to `public` first if no borrow has scoped it yet.
    fn scoped(&mut self) -> QueryResult<&mut PgConnection> {
        if !self.state().is_some_and(|state| state.in_borrow) {
            self.enter(&ScopeKey::Public, false)
                .map_err(|e| diesel::result::Error::QueryBuilderError(Box::new(e)))?;
        }
        Ok(&mut self.conn)
    }
}

impl TenantConnection {
    fn scoped(&mut self) -> QueryResult<&mut PgConnection> {
        Ok(&mut self.conn.conn)
    }
}

/// The same delegation for both types; `scoped` gives the session to run a
/// statement on, `raw` the connection for state that runs nothing.
macro_rules! delegate_connection {
    (@load $ty:ty, $mode:ty) => {
        impl LoadConnection<$mode> for $ty {
            type Cursor<'conn, 'query> =
                <PgConnection as LoadConnection<$mode>>::Cursor<'conn, 'query>;
            type Row<'conn, 'query> = <PgConnection as LoadConnection<$mode>>::Row<'conn, 'query>;

            fn load<'conn, 'query, T>(
                &'conn mut self,
                source: T,
            ) -> QueryResult<Self::Cursor<'conn, 'query>>
            where
                T: Query + QueryFragment<Pg> + QueryId + 'query,
                Pg: QueryMetadata<T::SqlType>,
            {
                <PgConnection as LoadConnection<$mode>>::load(self.scoped()?, source)
            }
        }
    };
    ($ty:ty, |$s:ident| $raw:expr) => {
        impl ConnectionSealed for $ty {}

        impl SimpleConnection for $ty {
            fn batch_execute(&mut self, query: &str) -> QueryResult<()> {
                self.scoped()?.batch_execute(query)
            }
        }

        impl Connection for $ty {
            type Backend = Pg;
            type TransactionManager = AnsiTransactionManager;

            fn establish(_: &str) -> ConnectionResult<Self> {
                Err(diesel::ConnectionError::BadConnection(String::from(
                    "a pooled connection cannot be established directly; take one from the pool",
                )))
            }

            fn execute_returning_count<T>(&mut self, source: &T) -> QueryResult<usize>
            where
                T: QueryFragment<Pg> + QueryId,
            {
                self.scoped()?.execute_returning_count(source)
            }

            fn transaction_state(
                &mut self,
            ) -> &mut <AnsiTransactionManager as TransactionManager<Self>>::TransactionStateData
            {
                let $s = self;
                $raw.transaction_state()
            }

            fn instrumentation(&mut self) -> &mut dyn Instrumentation {
                let $s = self;
                $raw.instrumentation()
            }

            fn set_instrumentation(&mut self, instrumentation: impl Instrumentation) {
                let $s = self;
                $raw.set_instrumentation(instrumentation)
            }

            fn set_prepared_statement_cache_size(&mut self, size: CacheSize) {
                let $s = self;
                $raw.set_prepared_statement_cache_size(size)
            }
        }

        delegate_connection!(@load $ty, DefaultLoadingMode);
        delegate_connection!(@load $ty, PgRowByRowLoadingMode);

        impl MigrationConnection for $ty {
            fn setup(&mut self) -> QueryResult<usize> {
                self.scoped()?.setup()
            }
        }

        impl R2D2Connection for $ty {
            fn ping(&mut self) -> QueryResult<()> {
                self.scoped()?.ping()
            }

            fn is_broken(&mut self) -> bool {
                let $s = self;
                $raw.is_broken()
            }
        }

        impl<Changes, Output> UpdateAndFetchResults<Changes, Output> for $ty
        where
            PgConnection: UpdateAndFetchResults<Changes, Output>,
        {
            fn update_and_fetch(&mut self, changeset: Changes) -> QueryResult<Output> {
                self.scoped()?.update_and_fetch(changeset)
            }
        }
    };
}

delegate_connection!(ManagedConnection, |s| s.conn);
delegate_connection!(TenantConnection, |s| s.conn.conn);
