//! Creating tenants: registry row, schema, migrations and domains in one step.

use diesel::connection::SimpleConnection;
use diesel::migration::MigrationSource;
use diesel::pg::{Pg, PgConnection};
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};

use crate::registry::{self, Tenant};
use crate::{Domain, Error, Result, SchemaName, migrate};

/// What to create: a schema name, a display name and the domains that route to it
/// (the first one becomes the primary domain).
#[derive(Debug, Clone)]
pub struct NewTenant {
    /// The tenant's schema.
    pub schema: SchemaName,
    /// The display name.
    pub name: String,
    /// Host names routed to the tenant; the first is primary.
    pub domains: Vec<Domain>,
}

impl NewTenant {
    /// A tenant with no domains.
    pub fn new(schema: SchemaName, name: impl Into<String>) -> Self {
        NewTenant {
            schema,
            name: name.into(),
            domains: Vec::new(),
        }
    }

    /// Adds a domain (the first one added is the primary domain).
    pub fn domain(mut self, domain: Domain) -> Self {
        self.domains.push(domain);
        self
    }
}

/// Creates a tenant in one transaction: the registry row, `CREATE SCHEMA`, every
/// migration of the tenant set, and the domains. If any step fails, nothing is
/// left behind: no row, no schema, no domain.
///
/// Expects the registry to be installed
/// ([`run_shared_migrations`](crate::run_shared_migrations) does it).
pub fn create_tenant<S: MigrationSource<Pg>>(
    conn: &mut PgConnection,
    new: &NewTenant,
    tenant_migrations: S,
) -> Result<Tenant> {
    let schema = &new.schema;
    conn.transaction(|conn| {
        let tenant = registry::insert_tenant(conn, schema, &new.name)?;
        conn.batch_execute(&format!("CREATE SCHEMA {}", schema.quoted()))
            .map_err(|e| match e {
                DieselError::DatabaseError(DatabaseErrorKind::Unknown, ref info)
                    if info.message().contains("already exists") =>
                {
                    Error::SchemaExists {
                        schema: schema.as_str().to_owned(),
                    }
                }
                e => Error::Database {
                    action: format!("create schema {:?}", schema.as_str()),
                    source: e,
                },
            })?;
        migrate::migrate_schema_in_transaction(conn, schema, tenant_migrations)?;
        for (i, domain) in new.domains.iter().enumerate() {
            registry::add_domain(conn, &tenant, domain, i == 0)?;
        }
        Ok(tenant)
    })
}
