#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod domain;
mod error;
mod lifecycle;
mod migrate;
mod pool;
pub mod registry;
mod schema_name;
mod scope;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;

pub use domain::{Domain, DomainError, MAX_DOMAIN_LEN};
pub use error::{BoxError, Error, Result};
pub use lifecycle::{NewTenant, create_tenant};
pub use migrate::{run_shared_migrations, run_tenant_migrations};
pub use pool::{
    ManagedConnection, ScopeStats, TenantConnection, TenantConnectionManager, TenantPool,
    TenantPoolBuilder,
};
pub use registry::{DomainRecord, Tenant, TenantStatus};
pub use schema_name::{
    MAX_SCHEMA_NAME_LEN, RESERVED_SCHEMA_NAMES, SchemaName, SchemaNameError, quote_ident,
};
