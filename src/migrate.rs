//! Running an application's shared and tenant migration sets.

use diesel::migration::MigrationSource;
use diesel::pg::{Pg, PgConnection};
use diesel::prelude::*;
use diesel_migrations::MigrationHarness;

use crate::scope::{self, ScopeKey};
use crate::{Error, Result, SchemaName, registry};

/// Runs every pending migration of `source`, one by one, so that a failure names
/// the migration's version.
fn run_pending<S: MigrationSource<Pg>>(
    conn: &mut PgConnection,
    schema: &str,
    source: S,
) -> Result<Vec<String>> {
    let pending = conn
        .pending_migrations(source)
        .map_err(|source| Error::Migration {
            schema: schema.to_owned(),
            version: None,
            source,
        })?;
    let mut applied = Vec::with_capacity(pending.len());
    for migration in pending {
        let version = migration.name().version().to_string();
        conn.run_migration(&migration)
            .map_err(|source| Error::Migration {
                schema: schema.to_owned(),
                version: Some(version.clone()),
                source,
            })?;
        applied.push(version);
    }
    Ok(applied)
}

/// Installs the registry, then runs the pending migrations of the shared set on
/// `public`, all in one transaction, with only `public` on the search path.
/// Returns the versions applied.
pub fn run_shared_migrations<S: MigrationSource<Pg>>(
    conn: &mut PgConnection,
    shared: S,
) -> Result<Vec<String>> {
    registry::install(conn)?;
    conn.transaction(|conn| {
        scope::set_search_path(conn, &ScopeKey::Public, "public".into(), true)?;
        run_pending(conn, "public", shared)
    })
}

/// Runs the pending migrations of the tenant set on one existing schema, in one
/// transaction (all or nothing), with only that schema on the search path, so
/// nothing can land in `public` and the schema keeps its own ledger. Returns the
/// versions applied; fails with [`Error::SchemaMissing`] if the schema is absent.
pub fn run_tenant_migrations<S: MigrationSource<Pg>>(
    conn: &mut PgConnection,
    schema: &SchemaName,
    tenant: S,
) -> Result<Vec<String>> {
    conn.transaction(|conn| migrate_schema_in_transaction(conn, schema, tenant))
}

/// The body of [`run_tenant_migrations`], for callers already in a transaction.
pub(crate) fn migrate_schema_in_transaction<S: MigrationSource<Pg>>(
    conn: &mut PgConnection,
    schema: &SchemaName,
    tenant: S,
) -> Result<Vec<String>> {
    // The tenant's schema alone: with the schema missing, set_search_path fails
    // instead of letting tables fall through to `public`.
    scope::set_search_path_only(conn, schema, true)?;
    run_pending(conn, schema.as_str(), tenant)
}
