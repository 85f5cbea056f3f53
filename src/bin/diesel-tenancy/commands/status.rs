//! `status`: a table of tenants with their schema, status, applied version,
//! pending migrations and last error (and their node on Citus).

use anyhow::Result;
use diesel_tenancy::citus::ClusterMode;
use diesel_tenancy::registry::JournalCheck;
use diesel_tenancy::{
    MigrateOptions, MigrationReport, Outcome, SchemaName, TenantStatus, registry,
};
use serde_json::{Value, json};

use super::{Cluster, Ctx};
use crate::output::{Ended, Table, cluster_json, cluster_text};

/// A tenant's line of the table.
struct Row {
    schema: SchemaName,
    status: TenantStatus,
    /// The latest version in its own ledger (on Citus, the journal's record).
    applied: Option<String>,
    /// How many tenant migrations it has not run (none if unknown).
    pending: Option<usize>,
    /// Its schema does not exist.
    missing: bool,
    last_error: Option<String>,
}

/// The table: the pending migrations from a plan that reads every tenant's
/// ledger (the slow part, with a bar on a terminal); the applied versions
/// and the missing schemas from one statement for all tenants
/// (`registry::check_journal`) rather than a query per tenant.
pub(super) fn run(ctx: &Ctx) -> Result<Ended> {
    let bar = ctx.out.tenant_bar();
    let plan = ctx.migrator()?.plan(
        &ctx.pool,
        &MigrateOptions::new()
            .verify(true)
            .include_suspended(true)
            .on_progress(ctx.out.bar_progress(&bar)),
    );
    bar.finish();
    let plan = plan?;
    let mut conn = ctx.conn()?;
    let cluster = Cluster::read(&mut conn)?;
    let checks = {
        let _spinner = ctx.out.spinner("reading every tenant's migration ledger");
        // On Citus each ledger is a distributed table: the journal's record
        // stands in for it, as in `migrate`.
        registry::check_journal(&mut conn, cluster.mode != ClusterMode::Citus)?
    };
    let journal = registry::journal(&mut conn)?;
    drop(conn);
    let rows: Vec<Row> = checks
        .into_iter()
        .map(|check| row(check, &plan, &journal))
        .collect();
    let shared_pending = shared_pending(&plan);
    ctx.out
        .print(status_json(&cluster, shared_pending, &rows), || {
            status_text(&cluster, shared_pending, &rows)
        });
    Ok(Ended::Ok)
}

fn row(check: JournalCheck, plan: &MigrationReport, journal: &[registry::JournalEntry]) -> Row {
    let (pending, planned_missing) = match plan.tenant(check.schema.as_str()).map(|r| &r.outcome) {
        Some(Outcome::Pending { versions }) => (Some(versions.len()), false),
        Some(Outcome::SchemaMissing) => (None, true),
        _ => (None, false),
    };
    let missing = planned_missing || !check.schema_exists;
    let applied = match (missing, check.ledger_read) {
        (true, _) => None,
        (false, true) => check.ledger_newest,
        (false, false) => check.journal_latest,
    };
    let last_error = journal
        .iter()
        .find(|j| j.tenant_id == check.tenant_id)
        .and_then(|j| j.last_error.clone());
    Row {
        schema: check.schema,
        status: check.status,
        applied,
        pending: if missing { None } else { pending },
        missing,
        last_error,
    }
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
            json!({
                "schema": r.schema.as_str(),
                "status": r.status.as_str(),
                "applied_version": r.applied,
                "pending": r.pending,
                "schema_missing": r.missing,
                "last_error": r.last_error,
                "node": cluster.node_of(&r.schema),
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
        table.row(vec![
            r.schema.to_string(),
            r.status.as_str().to_owned(),
            cluster.node_of(&r.schema).unwrap_or_else(|| "-".into()),
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
