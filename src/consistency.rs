//! Consistency between the registry and the database: tenants whose schema
//! is gone, schemas no tenant owns, and the repair of the first.

use diesel::migration::MigrationSource;
use diesel::pg::Pg;
use diesel::sql_types::Text;

use crate::citus::{self, ClusterMode};
use crate::conn::PgConn;
use crate::lifecycle::schema_error;
use crate::migrate::{MigrationSet, Target, apply_in_transaction};
use crate::registry::{self, Tenant, lock_schema};
use crate::{Error, Result};

use diesel::prelude::*;

/// Where the registry and the database disagree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsistencyReport {
    /// Registered tenants whose schema does not exist.
    pub rows_without_schema: Vec<Tenant>,
    /// Schemas that look like tenants (they hold a Diesel migration ledger) but
    /// have no registry row.
    pub schemas_without_row: Vec<String>,
    /// Tenants with pending migrations of the tenant set, and which.
    pub tenants_behind: Vec<(Tenant, Vec<String>)>,
}

impl ConsistencyReport {
    /// Nothing to report.
    pub fn is_consistent(&self) -> bool {
        self.rows_without_schema.is_empty()
            && self.schemas_without_row.is_empty()
            && self.tenants_behind.is_empty()
    }
}

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
}

fn rows_without_schema(conn: &mut impl PgConn) -> Result<Vec<Tenant>> {
    let existing: Vec<String> =
        diesel::sql_query("SELECT nspname::text AS name FROM pg_catalog.pg_namespace")
            .load::<Name>(conn)
            .map_err(Error::db("list schemas"))?
            .into_iter()
            .map(|n| n.name)
            .collect();
    Ok(registry::list_tenants(conn)?
        .into_iter()
        .filter(|t| !existing.iter().any(|s| s == t.schema().as_str()))
        .collect())
}

/// Compares the registry with the database: rows without schemas, tenant-looking
/// schemas without rows, and tenants behind the tenant set (read from each
/// tenant's own ledger). Changes nothing.
pub fn check_consistency<S: MigrationSource<Pg>>(
    conn: &mut impl PgConn,
    tenant_migrations: S,
) -> Result<ConsistencyReport> {
    let set = MigrationSet::load(&tenant_migrations, "tenant set")?;
    let mut report = ConsistencyReport {
        rows_without_schema: rows_without_schema(conn)?,
        ..ConsistencyReport::default()
    };
    for tenant in registry::list_tenants(conn)? {
        if report.rows_without_schema.contains(&tenant) {
            continue;
        }
        let target = Target::Tenant {
            schema: tenant.schema(),
            id: tenant.id(),
        };
        let pending = crate::migrate::pending_versions_of(conn, target, &set)?;
        if !pending.is_empty() {
            report.tenants_behind.push((tenant, pending));
        }
    }
    report.schemas_without_row = diesel::sql_query(
        "SELECT n.nspname::text AS name FROM pg_catalog.pg_namespace n \
         JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = '__diesel_schema_migrations' \
         WHERE n.nspname <> 'public' \
           AND NOT EXISTS (SELECT 1 FROM public.tenancy_tenants t WHERE t.schema_name = n.nspname) \
         ORDER BY 1",
    )
    .load::<Name>(conn)
    .map_err(Error::db("list unregistered tenant schemas"))?
    .into_iter()
    .map(|n| n.name)
    .collect();
    Ok(report)
}

/// Repairs registry rows without a schema: creates each missing schema and
/// applies the whole tenant set to it, one transaction per tenant. Returns the
/// tenants repaired. Schemas without rows are left alone: whether they hold data
/// someone wants is not for a tool to decide.
pub fn repair_missing_schemas<S: MigrationSource<Pg>>(
    conn: &mut impl PgConn,
    tenant_migrations: S,
) -> Result<Vec<Tenant>> {
    let set = MigrationSet::load(&tenant_migrations, "tenant set")?;
    let citus = citus::detect(conn)? == ClusterMode::Citus;
    let mut repaired = Vec::new();
    for tenant in rows_without_schema(conn)? {
        conn.transaction(|conn| {
            lock_schema(conn, tenant.schema())?;
            conn.batch_execute(&format!("CREATE SCHEMA {}", tenant.schema().quoted()))
                .map_err(schema_error(tenant.schema(), "create"))?;
            if citus {
                citus::distribute_new_schema(conn, tenant.schema())?;
            }
            apply_in_transaction(
                conn,
                Target::Tenant {
                    schema: tenant.schema(),
                    id: tenant.id(),
                },
                &set,
                citus,
            )
        })?;
        repaired.push(tenant);
    }
    Ok(repaired)
}
