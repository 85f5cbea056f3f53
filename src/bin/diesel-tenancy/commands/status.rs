//! `status`: a table of tenants with their schema, status, applied version,
//! pending migrations and last error (and their node on Citus).

use anyhow::Result;
use diesel::prelude::*;
use diesel_tenancy::citus::ClusterMode;
use diesel_tenancy::{MigrateOptions, MigrationReport, Outcome, Tenant, registry};
use serde_json::{Value, json};

use super::{Cluster, Ctx};
use crate::output::{Ended, Table, cluster_json, cluster_text};

#[derive(QueryableByName)]
struct MaxVersion {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    version: Option<String>,
}

/// A tenant's line of the table.
struct Row {
    tenant: Tenant,
    /// The latest version in its own ledger.
    applied: Option<String>,
    /// How many tenant migrations it has not run (none if unknown).
    pending: Option<usize>,
    /// Its schema does not exist.
    missing: bool,
    last_error: Option<String>,
}

pub(super) fn run(ctx: &Ctx) -> Result<Ended> {
    let plan = ctx.migrator()?.plan(
        &ctx.pool,
        &MigrateOptions::new().verify(true).include_suspended(true),
    )?;
    let mut conn = ctx.conn()?;
    let tenants = registry::list_tenants(&mut conn)?;
    let journal = registry::journal(&mut conn)?;
    let cluster = Cluster::read(&mut conn)?;
    let mut rows = Vec::new();
    for tenant in tenants {
        let (pending, missing) = match plan.tenant(tenant.schema().as_str()).map(|r| &r.outcome) {
            Some(Outcome::Pending { versions }) => (Some(versions.len()), false),
            Some(Outcome::SchemaMissing) => (None, true),
            _ => (None, false),
        };
        let applied = if missing {
            None
        } else {
            diesel::sql_query(format!(
                "SELECT max(version)::text AS version FROM {}.__diesel_schema_migrations",
                tenant.schema().quoted()
            ))
            .get_result::<MaxVersion>(&mut *conn)
            .ok()
            .and_then(|v| v.version)
        };
        let last_error = journal
            .iter()
            .find(|j| j.tenant_id == tenant.id())
            .and_then(|j| j.last_error.clone());
        rows.push(Row {
            tenant,
            applied,
            pending,
            missing,
            last_error,
        });
    }
    let shared_pending = shared_pending(&plan);
    ctx.out
        .print(status_json(&cluster, shared_pending, &rows), || {
            status_text(&cluster, shared_pending, &rows)
        });
    Ok(Ended::Ok)
}

/// How many shared migrations public has not run.
fn shared_pending(plan: &MigrationReport) -> usize {
    match &plan.shared {
        Some(Outcome::Pending { versions }) => versions.len(),
        _ => 0,
    }
}

fn status_json(cluster: &Cluster, shared_pending: usize, rows: &[Row]) -> Value {
    let mut value = cluster_json(cluster);
    value["shared_pending"] = json!(shared_pending);
    value["tenants"] = rows
        .iter()
        .map(|r| {
            let t = &r.tenant;
            json!({
                "schema": t.schema().as_str(),
                "status": t.status().as_str(),
                "applied_version": r.applied,
                "pending": r.pending,
                "schema_missing": r.missing,
                "last_error": r.last_error,
                "node": cluster.node_of(t.schema()),
            })
        })
        .collect();
    value
}

fn status_text(cluster: &Cluster, shared_pending: usize, rows: &[Row]) -> String {
    let mut table = Table::new(&[
        ("SCHEMA", 30),
        ("STATUS", 10),
        ("NODE", 22),
        ("VERSION", 16),
        ("PENDING", 8),
        ("LAST ERROR", 0),
    ]);
    if cluster.mode != ClusterMode::Citus {
        table.hide("NODE");
    }
    for r in rows {
        let t = &r.tenant;
        table.row(vec![
            t.schema().to_string(),
            t.status().as_str().to_owned(),
            cluster.node_of(t.schema()).unwrap_or_else(|| "-".into()),
            r.applied.as_deref().unwrap_or("-").to_owned(),
            if r.missing {
                "no schema".to_owned()
            } else {
                r.pending.map_or("-".into(), |p| p.to_string())
            },
            r.last_error.clone().unwrap_or_default(),
        ]);
    }
    format!(
        "{}\npublic: {shared_pending} pending\n{}",
        cluster_text(cluster),
        table.finish()
    )
}
