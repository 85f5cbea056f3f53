//! `doctor`: registry rows without schemas, schemas without rows, tenants
//! behind and (on Citus) tenants not distributed; with `--fix`, what can be
//! fixed safely.

use anyhow::Result;
use diesel_tenancy::citus;
use diesel_tenancy::{
    ConsistencyReport, MigrateOptions, SchemaName, Tenant, check_consistency,
    repair_missing_schemas,
};
use serde_json::{Value, json};

use super::{Cluster, Ctx};
use crate::output::{Ended, cluster_json, cluster_text};

/// What `doctor` found (after fixing, with `--fix`).
struct Findings {
    report: ConsistencyReport,
    cluster: Cluster,
    undistributed: Vec<SchemaName>,
    /// A line per fix made.
    fixed: Vec<String>,
}

impl Findings {
    fn consistent(&self) -> bool {
        self.report.is_consistent() && self.undistributed.is_empty()
    }
}

/// The slow parts (the check reads every tenant's ledger; the fixes create
/// and migrate schemas) show a spinner or a bar on a terminal.
pub(super) fn run(ctx: &Ctx, fix: bool) -> Result<Ended> {
    let mut report = check(ctx)?;
    let mut fixed = Vec::new();
    if fix {
        fixed = repair(ctx, &report)?;
        report = check(ctx)?;
    }
    let mut conn = ctx.conn()?;
    let cluster = Cluster::read(&mut conn)?;
    let undistributed = citus::undistributed_tenants(&mut conn)?;
    drop(conn);
    let findings = Findings {
        report,
        cluster,
        undistributed,
        fixed,
    };
    ctx.out
        .print(findings_json(&findings), || findings_text(&findings));
    Ok(Ended::ok_if(findings.consistent()))
}

/// The registry against the database, each tenant's ledger read.
fn check(ctx: &Ctx) -> Result<ConsistencyReport> {
    let _spinner = ctx
        .out
        .spinner("checking the registry and every tenant's migration ledger");
    Ok(check_consistency(&mut *ctx.conn()?, ctx.tenant_set()?)?)
}

/// Creates and migrates the missing schemas, migrates the tenants behind; a
/// line for each.
fn repair(ctx: &Ctx, report: &ConsistencyReport) -> Result<Vec<String>> {
    let mut fixed = Vec::new();
    let repaired = {
        let _spinner = ctx.out.spinner("creating and migrating missing schemas");
        repair_missing_schemas(&mut *ctx.conn()?, ctx.tenant_set()?)?
    };
    for t in repaired {
        fixed.push(format!(
            "created and migrated the missing schema of {}",
            t.schema()
        ));
    }
    let behind: Vec<SchemaName> = report
        .tenants_behind
        .iter()
        .map(|(t, _)| t.schema().clone())
        .collect();
    if !behind.is_empty() {
        let bar = ctx.out.tenant_bar();
        let migrated = ctx.migrator()?.migrate_all(
            &ctx.pool,
            &MigrateOptions::new()
                .shared(false)
                .tenants(behind)
                .on_progress(ctx.out.bar_progress(&bar)),
        );
        bar.finish();
        let migrated = migrated?;
        for r in &migrated.tenants {
            fixed.push(format!("{}: {}", r.schema, r.outcome));
        }
    }
    Ok(fixed)
}

fn findings_json(f: &Findings) -> Value {
    let names = |v: &[Tenant]| v.iter().map(|t| t.schema().to_string()).collect::<Vec<_>>();
    json!({
        "mode": f.cluster.mode.as_str(),
        "nodes": cluster_json(&f.cluster)["nodes"],
        "not_distributed": f.undistributed.iter().map(SchemaName::as_str).collect::<Vec<_>>(),
        "consistent": f.consistent(),
        "rows_without_schema": names(&f.report.rows_without_schema),
        "schemas_without_row": f.report.schemas_without_row,
        "tenants_behind": f.report.tenants_behind.iter().map(|(t, v)| json!({ "schema": t.schema().as_str(), "pending": v })).collect::<Vec<_>>(),
        "fixed": f.fixed,
    })
}

fn findings_text(f: &Findings) -> String {
    let mut out = format!("{}\n", cluster_text(&f.cluster));
    for s in &f.undistributed {
        out +=
            &format!("tenant not distributed: {s} (tenant distribute {s} places it on a node)\n");
    }
    for line in &f.fixed {
        out += &format!("fixed: {line}\n");
    }
    for t in &f.report.rows_without_schema {
        out += &format!(
            "registry row without schema: {} (doctor --fix creates and migrates it)\n",
            t.schema()
        );
    }
    for s in &f.report.schemas_without_row {
        out += &format!(
            "schema without registry row: {s} (left alone: drop it or register it yourself)\n"
        );
    }
    for (t, v) in &f.report.tenants_behind {
        out += &format!("tenant behind: {} ({} pending)\n", t.schema(), v.len());
    }
    if f.consistent() {
        out += "consistent";
    }
    out.trim_end().to_owned()
}
