#![doc = include_str!("../README.md")]
//!
//! ## A runnable example
//!
//! This one runs as a doctest, against a throwaway database:
//!
//! ```
//! use diesel::prelude::*;
//! use diesel_migrations::{EmbeddedMigrations, embed_migrations};
//! use diesel_tenancy::{Domain, NewTenant, SchemaName, TenantPool, create_tenant, run_shared_migrations};
//!
//! const SHARED: EmbeddedMigrations = embed_migrations!("migrations_shared");
//! const TENANT: EmbeddedMigrations = embed_migrations!("migrations_tenant");
//!
//! diesel::table! {
//!     customers (id) {
//!         id -> BigInt,
//!         name -> Text,
//!         email -> Text,
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let db = diesel_tenancy::testing::TestDatabase::new()?;
//! # let database_url = db.url();
//! let pool = TenantPool::builder(database_url).max_size(4).build()?;
//! pool.with_public(|conn| run_shared_migrations(conn, SHARED))?;
//!
//! let mut tenants = Vec::new();
//! for schema in ["acme", "globex"] {
//!     let new = NewTenant::new(SchemaName::new(schema)?, schema)
//!         .domain(Domain::parse(&format!("{schema}.example.com"))?);
//!     tenants.push(pool.with_public(|conn| create_tenant(conn, &new, TENANT))?);
//! }
//!
//! for tenant in &tenants {
//!     let owner = format!("owner of {}", tenant.name());
//!     pool.with_tenant(tenant, |conn| {
//!         diesel::insert_into(customers::table)
//!             .values((customers::name.eq(&owner), customers::email.eq("owner@example.com")))
//!             .execute(conn)
//!     })?;
//! }
//!
//! let seen: Vec<String> = pool.with_tenant(&tenants[0], |conn| {
//!     customers::table.select(customers::name).load(conn)
//! })?;
//! assert_eq!(seen, ["owner of acme"]);
//! # Ok(()) }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(not(any(feature = "sync", feature = "deadpool", feature = "bb8")))]
compile_error!(
    "diesel-tenancy needs a pool: the default `sync` feature (r2d2 and libpq), or `deadpool` or `bb8` (diesel-async)"
);

pub mod citus;
mod conn;
mod consistency;
mod domain;
mod error;
mod for_each;
mod lifecycle;
mod migrate;
mod parallel;
mod pool;
pub mod registry;
mod resolve;
mod schema_name;
mod scope;
#[cfg(feature = "async")]
mod task_local;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;
pub mod web;

pub use conn::PgConn;
pub use consistency::{ConsistencyReport, check_consistency, repair_missing_schemas};
pub use domain::{Domain, DomainError, MAX_DOMAIN_LEN};
pub use error::{BoxError, Error, Result};
pub use for_each::{
    ForEachOptions, ForEachProgress, ForEachReport, ForEachTotals, RunOutcome, TenantRun,
};
pub use lifecycle::{
    ConfirmDrop, NewTenant, activate_tenant, adopt_tenant_schema, create_tenant,
    create_tenant_with, drop_tenant, drop_tenant_with, ensure_tenant_role, rename_tenant,
    suspend_tenant, unregister_tenant_keep_schema,
};
#[cfg(feature = "sync")]
pub use lifecycle::{create_tenants, create_tenants_with};
#[cfg(any(feature = "deadpool", feature = "bb8"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "deadpool", feature = "bb8"))))]
pub use lifecycle::{create_tenants_async, create_tenants_async_with};
pub use migrate::{
    LockMode, MigrateOptions, MigrationError, MigrationReport, Migrator, Outcome, Progress,
    TenantReport, Totals, run_shared_migrations, run_tenant_migrations,
};
#[cfg(any(feature = "deadpool", feature = "bb8"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "deadpool", feature = "bb8"))))]
pub use pool::async_pool::{
    AsyncTenantConnection, AsyncTenantPool, AsyncTenantPoolBuilder, BlockingConnection,
};
#[cfg(feature = "sync")]
pub use pool::r2d2_pool::{
    ManagedConnection, TenantConnection, TenantConnectionManager, TenantPool, TenantPoolBuilder,
};
pub use registry::model::{DomainRecord, Tenant, TenantStatus};
pub use resolve::{
    Host, IdentifyFn, IpHosts, LISTENER_APPLICATION_NAME, ListenerGuard, LookupPool, ProxyNet,
    ProxyNetError, RequestInfo, Resolution, Resolver, ResolverBuilder, Strategy, normalize_host,
};
pub use schema_name::{MAX_SCHEMA_NAME_LEN, RESERVED_SCHEMA_NAMES, SchemaName, SchemaNameError};
pub use scope::{MEMORY_SAMPLE_EVERY, MEMORY_SAMPLE_NEW_SCHEMAS, ScopeStats};
#[cfg(feature = "async")]
#[cfg_attr(docsrs, doc(cfg(feature = "async")))]
pub use task_local::{current_tenant, spawn_with_tenant, with_current_tenant};
