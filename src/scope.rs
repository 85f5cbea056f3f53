//! Scoping a pooled connection: what its search path is, the statements that
//! set and check it, the watch that sees every statement a borrower sends, and
//! the per-connection state machine both pools drive (plan the checkout,
//! settle its result, decide keep, reset or discard at release).
//!
//! The pools only run statements; every decision lives here, in one place, so
//! the sync and the async pool cannot drift apart.

mod harmless;
pub(crate) mod lexer;
mod sql;
mod state;
mod watch;

pub(crate) use sql::{BackendMemory, CurrentState, ServerState, SetPath, TempObjects, reset_sql};
pub(crate) use state::{ConnState, Release, ScopeConfig, Step};
pub use state::{MEMORY_SAMPLE_EVERY, MEMORY_SAMPLE_NEW_SCHEMAS};
pub(crate) use watch::{ScopeWatch, watch_of};

use crate::SchemaName;

/// Counters of a pool's scoping work, from `TenantPool::stats` or
/// `AsyncTenantPool::stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ScopeStats {
    /// Connections scoped (checkouts for a tenant or for `public`).
    pub scoped: u64,
    /// Of those, how many had to set the search path (one statement each); the
    /// rest found the path already in place.
    pub path_sets: u64,
    /// Sessions reset (one statement each) because a borrower sent something
    /// not proven harmless, or the checkout found leftover state.
    pub resets: u64,
    /// Backend memory samples taken (one statement each; see
    /// [`TenantPoolBuilder::recycle_above_memory_mb`](crate::TenantPoolBuilder::recycle_above_memory_mb)).
    pub memory_samples: u64,
    /// Connections replaced because their backend passed the memory cap.
    pub memory_recycles: u64,
    /// A sample failed (the database user may not read
    /// `pg_backend_memory_contexts`), so the pool stopped sampling.
    pub memory_unreadable: bool,
}

/// The search path a scoped connection holds: a tenant's schema first, or `public`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScopeKey {
    Public,
    /// A tenant's schema, the role to switch to when per-tenant roles are on,
    /// and the object id the schema had when the tenant was looked up (the
    /// checkout refuses a path whose schema has another one now).
    Tenant(SchemaName, Option<SchemaName>, Option<u32>),
}

impl ScopeKey {
    /// The schema at the head of the path.
    pub(crate) fn head(&self) -> &str {
        match self {
            ScopeKey::Public => "public",
            ScopeKey::Tenant(schema, _, _) => schema.as_str(),
        }
    }

    /// The value the `role` setting has in this scope, when roles are on.
    pub(crate) fn role_setting(&self) -> &str {
        match self {
            ScopeKey::Tenant(_, Some(role), _) => role.as_str(),
            _ => "none",
        }
    }

    /// The checkout cannot go on: the connection's instrumentation (which
    /// carries its scope state) was replaced.
    pub(crate) fn instrumentation_lost(&self) -> crate::Error {
        self.refused("the connection's instrumentation was replaced, so the session cannot be scoped to it safely")
    }

    /// The reset a checkout needed failed.
    pub(crate) fn reset_failed(&self) -> crate::Error {
        self.refused("the session could not be reset before scoping it")
    }

    /// The session kept changing under the checkout for [`MAX_STEPS`] steps.
    pub(crate) fn unsettled(&self) -> crate::Error {
        self.refused(&format!(
            "the session did not settle within {MAX_STEPS} steps"
        ))
    }

    fn refused(&self, what: &str) -> crate::Error {
        crate::Error::Unscopable {
            scope: self.head().to_owned(),
            reason: what.to_owned(),
        }
    }

    /// The search path value for this scope: `"tenant", public[, extra...],
    /// pg_temp` or `public[, extra...], pg_temp`. Every name passes through
    /// the one quoting function. `pg_temp` is named last so that temporary
    /// tables are searched after every real schema: a temporary table can
    /// never shadow a tenant's or a shared table, whatever a borrower left.
    pub(crate) fn search_path(&self, extra: &[SchemaName]) -> String {
        let mut path = String::with_capacity(64);
        if let ScopeKey::Tenant(schema, _, _) = self {
            path.push_str(&schema.quoted());
            path.push_str(", ");
        }
        path.push_str("public");
        for schema in extra {
            path.push_str(", ");
            path.push_str(&schema.quoted());
        }
        path.push_str(", pg_temp");
        path
    }
}

/// The most statements one checkout sends before giving up on a connection:
/// each step settles something the next cannot undo, so more steps than a
/// reset, a probe, a read-back and a set mean the session keeps changing
/// under the checkout.
pub(crate) const MAX_STEPS: usize = 7;

/// The pools' default for `recycle_after_schemas`.
pub(crate) const DEFAULT_RECYCLE_AFTER_SCHEMAS: u64 = 1000;

/// Whether `sql` (one string sent to the server) is proven to leave no session
/// state behind; see the lexer module.
pub(crate) fn is_harmless(sql: &str) -> bool {
    harmless::is_harmless(sql)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_path_quotes_every_name_and_ends_with_pg_temp() {
        let t = ScopeKey::Tenant(SchemaName::new("acme").unwrap(), None, None);
        let ext = [SchemaName::new("extensions").unwrap()];
        assert_eq!(
            t.search_path(&ext),
            "\"acme\", public, \"extensions\", pg_temp"
        );
        assert_eq!(ScopeKey::Public.search_path(&[]), "public, pg_temp");
    }
}
