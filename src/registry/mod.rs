//! The tenant registry: the crate's own tables in `public`.
//!
//! `public.tenancy_tenants` holds one row per tenant, `public.tenancy_domains` the
//! host names that route to each, and `public.tenancy_migration_journal` each
//! tenant's latest migration and last migration error. [`install`] creates and upgrades them; it runs
//! before an application's shared migrations, which may reference them (for example
//! `REFERENCES public.tenancy_tenants (id)`). Every function here names its tables
//! with their schema, so it works whatever the connection's search path is, and
//! binds every value as a parameter.
//!
//! - [`install`](fn@install): the tables and their upgrade steps;
//! - tenants and domains: the rows and the functions that read and write them;
//! - the migration journal ([`journal`](fn@journal)) and the lock that
//!   serialises work on one schema: the only place that reads or writes them.

mod domains;
mod install;
mod journal;
pub(crate) mod model;
mod tenants;
pub mod transfer;

use model::{JournalRow, TenantRow, WrittenRow};
use tables::{tenancy_domains, tenancy_tenants};
use tenants::{found, unique_violation};

use crate::Result;

#[cfg(feature = "sync")]
pub(crate) use domains::find_tenant_and_primary_by_domain;
pub use domains::{add_domain, find_tenant_by_domain, list_domains, remove_domain};
#[cfg(any(feature = "deadpool", feature = "bb8"))]
pub(crate) use domains::{find_tenant_and_primary_by_domain_async, find_tenant_by_domain_async};
pub use install::{REGISTRY_VERSION, install, installed_version};
pub use journal::journal;
pub use journal::{JournalCheck, check_journal};
pub(crate) use journal::{complete_sql, lock_key, lock_schema, record_failure};
pub use model::JournalEntry;
pub(crate) use model::{DomainRecord, Tenant, TenantStatus};
#[cfg(any(feature = "deadpool", feature = "bb8"))]
pub(crate) use tenants::find_tenant_async;
pub(crate) use tenants::{delete_tenant_row, rename_tenant_row, set_role_name, with_schema_oid};
pub use tenants::{
    find_tenant, find_tenant_by_id, get_tenant, insert_tenant, list_tenants, set_tenant_status,
};

/// The channel on which the registry's triggers announce every change to tenants
/// or domains, whichever process or tool made it.
pub const CHANGE_CHANNEL: &str = "diesel_tenancy_registry";

static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A counter that moves whenever this process changes the registry (or hears of
/// a change through [`CHANGE_CHANNEL`]); caches compare it to know they are stale.
pub(crate) fn generation() -> u64 {
    GENERATION.load(std::sync::atomic::Ordering::Acquire)
}

/// Marks every cached registry answer in this process as stale.
pub(crate) fn bump_generation() {
    GENERATION.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
}

/// Runs a registry write, then marks cached answers stale: after the write,
/// so that a lookup racing with it cannot cache the old answer under the new
/// generation. (Inside a transaction of the caller's, the write commits later:
/// other processes, and this one's listener, learn of it from the `NOTIFY`
/// sent at commit.)
fn after_write<T>(write: impl FnOnce() -> Result<T>) -> Result<T> {
    let result = write();
    bump_generation();
    result
}

mod tables {
    diesel::table! {
        public.tenancy_tenants (id) {
            id -> BigInt,
            schema_name -> Text,
            name -> Text,
            status -> Text,
            // `timestamptz` on the server. Its binary form is the same as
            // `timestamp`'s (microseconds since 2000-01-01 UTC), which is what
            // `SystemTime` decodes from; the column is only ever read.
            created_at -> Timestamp,
            role_name -> Nullable<Text>,
        }
    }

    diesel::table! {
        public.tenancy_domains (domain) {
            domain -> Text,
            tenant_id -> BigInt,
            is_primary -> Bool,
        }
    }

    diesel::joinable!(tenancy_domains -> tenancy_tenants (tenant_id));
    diesel::allow_tables_to_appear_in_same_query!(tenancy_tenants, tenancy_domains);
}
