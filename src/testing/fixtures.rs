//! Tenant fixtures: a tenant with its schema migrated and a test domain.

use diesel::migration::MigrationSource;
use diesel::pg::Pg;

use super::TestingError;
use crate::{Domain, Error, NewTenant, SchemaName, Tenant, TenantPool};

/// The host [`create_tenant`] routes to `tenant`: `<schema>.test.localhost`,
/// for test clients (`web::axum::TenantClient`, `web::actix::TenantRequests`).
pub fn tenant_host(tenant: &Tenant) -> String {
    format!("{}.test.localhost", tenant.schema())
}

/// Creates a tenant for a test: schema `schema`, display name `schema`, domain
/// `<schema>.test.localhost`, with every tenant migration applied.
pub fn create_tenant<S: MigrationSource<Pg>>(
    pool: &TenantPool,
    schema: &str,
    tenant_migrations: S,
) -> Result<Tenant, TestingError> {
    let schema = SchemaName::new(schema).map_err(Error::from)?;
    let domain = Domain::parse(&format!("{schema}.test.localhost")).map_err(Error::from)?;
    let new = NewTenant::new(schema.clone(), schema.as_str()).domain(domain);
    Ok(pool.with_public(|conn| crate::create_tenant(conn, &new, tenant_migrations))?)
}
