//! Shared migrations on `public`, tenant migrations on every tenant schema.

mod apply;
mod fast;
mod migrator;
mod options;
mod report;
mod set;
mod statements;

pub(crate) use crate::error::error_chain;

use apply::{ApplySettings, apply, pending_versions, plan};
use diesel::migration::MigrationSource;
use diesel::pg::Pg;
use fast::apply_fast;

use crate::citus::{self, ClusterMode};
use crate::conn::PgConn;
use crate::{Error, Result, Tenant, registry};

pub use apply::LockMode;
pub(crate) use apply::apply_in_transaction;
pub use report::{MigrationError, MigrationReport, Outcome, TenantReport, Totals};
pub(crate) use set::{MigrationSet, Target};

fn outcome_to_result(schema: &str, outcome: Outcome) -> Result<Vec<String>> {
    match outcome {
        Outcome::Applied { versions, .. } => Ok(versions),
        Outcome::UpToDate => Ok(Vec::new()),
        Outcome::Failed { version, error, .. } => Err(Error::Migration {
            schema: schema.to_owned(),
            version,
            source: error.into(),
        }),
        Outcome::SchemaNotOnPath {
            schema: expected,
            version,
            current_schema,
            ..
        } => Err(Error::Migration {
            schema: schema.to_owned(),
            source: report::not_on_path(&expected, &version, current_schema.as_deref()).into(),
            version: Some(version),
        }),
        Outcome::SchemaMissing => Err(Error::SchemaMissing {
            schema: schema.to_owned(),
        }),
        Outcome::Locked => Err(Error::SchemaLocked {
            schema: schema.to_owned(),
        }),
        Outcome::Pending { .. } | Outcome::NotRun => Ok(Vec::new()),
    }
}

/// Installs the registry, then applies the pending migrations of the shared set on
/// `public`, in one transaction, with only `public` on the search path. Returns
/// the versions applied.
pub fn run_shared_migrations<S: MigrationSource<Pg>>(
    conn: &mut impl PgConn,
    shared: S,
) -> Result<Vec<String>> {
    registry::install(conn)?;
    let set = MigrationSet::load(&shared, "public")?;
    let settings = settings_for(conn)?;
    let outcome = apply(conn, Target::Public, &set, &settings);
    outcome_to_result("public", outcome)
}

/// Applies the pending migrations of the tenant set to one tenant, in one
/// transaction (all or nothing), with only its schema on the search path, so
/// nothing can land in `public` and the schema keeps its own ledger. Returns the
/// versions applied; fails if the schema is missing.
pub fn run_tenant_migrations<S: MigrationSource<Pg>>(
    conn: &mut impl PgConn,
    tenant: &Tenant,
    migrations: S,
) -> Result<Vec<String>> {
    let set = MigrationSet::load(&migrations, tenant.schema().as_str())?;
    let target = Target::Tenant {
        schema: tenant.schema(),
        id: tenant.id(),
    };
    let settings = settings_for(conn)?;
    let outcome = apply(conn, target, &set, &settings);
    outcome_to_result(tenant.schema().as_str(), outcome)
}

/// Default settings for the database's mode.
fn settings_for(conn: &mut impl PgConn) -> Result<ApplySettings> {
    Ok(ApplySettings {
        split: citus::detect(conn)? == ClusterMode::Citus,
        ..ApplySettings::default()
    })
}

/// The versions of `set` not yet applied to `target` (reads its ledger).
pub(crate) fn pending_versions_of(
    conn: &mut impl PgConn,
    target: Target<'_>,
    set: &MigrationSet,
) -> Result<Vec<String>> {
    match pending_versions(conn, target, set) {
        Ok(Some(versions)) => Ok(versions),
        Ok(None) => Err(Error::SchemaMissing {
            schema: match target {
                Target::Public => "public".to_owned(),
                Target::Tenant { schema, .. } => schema.as_str().to_owned(),
            },
        }),
        Err(error) => Err(Error::Migration {
            schema: target.name().to_owned(),
            version: None,
            source: error.into(),
        }),
    }
}

pub use migrator::Migrator;
pub use options::{MigrateOptions, Progress};
