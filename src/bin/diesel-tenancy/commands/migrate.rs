//! `migrate`: the shared set on public, then the tenant set on every tenant.

use anyhow::Result;
use diesel_tenancy::{MigrateOptions, MigrationReport, Outcome};
use serde_json::{Value, json};

use super::{Ctx, schemas};
use crate::args;
use crate::output::{Ended, outcome_json};

pub(super) fn run(ctx: &Ctx, m: args::Migrate) -> Result<Ended> {
    let migrator = ctx.migrator()?;
    let mut options = MigrateOptions::new()
        .jobs(m.jobs)
        .fail_fast(m.fail_fast)
        .dry_run(m.plan)
        .verify(m.verify)
        .shared(!m.tenants_only)
        .on_progress(ctx.out.migrate_progress());
    if m.shared_only {
        options = options.tenants([]);
    } else if !m.schemas.is_empty() {
        options = options.tenants(schemas(&m.schemas)?);
    }
    let report = migrator.migrate_all(&ctx.pool, &options)?;
    ctx.out.print(report_json(&report), || report_text(&report));
    Ok(Ended::ok_if(report.is_success()))
}

fn report_json(report: &MigrationReport) -> Value {
    let t = report.totals();
    json!({
        "dry_run": report.dry_run,
        "shared": report.shared.as_ref().map(outcome_json),
        "tenants": report.tenants.iter().map(|r| {
            let mut v = outcome_json(&r.outcome);
            v["schema"] = json!(r.schema.as_str());
            v["elapsed_ms"] = json!(r.elapsed.as_secs_f64() * 1000.0);
            v
        }).collect::<Vec<_>>(),
        "totals": {
            "tenants": t.tenants, "applied": t.applied, "up_to_date": t.up_to_date,
            "pending": t.pending, "failed": t.failed, "locked": t.locked,
            "not_run": t.not_run, "migrations_applied": t.migrations_applied,
        },
        "decided_by_journal": report.decided_by_journal,
        "elapsed_ms": report.elapsed.as_secs_f64() * 1000.0,
    })
}

/// A line for public and each tenant (those the journal found up to date
/// left out), then the totals.
fn report_text(report: &MigrationReport) -> String {
    let mut out = String::new();
    if let Some(shared) = &report.shared {
        out += &format!("public: {shared}\n");
    }
    for r in &report.tenants {
        if matches!(r.outcome, Outcome::UpToDate)
            && report.decided_by_journal > 0
            && !report.dry_run
        {
            continue;
        }
        out += &format!("{}: {}\n", r.schema, r.outcome);
    }
    let t = report.totals();
    out += &format!(
        "{} tenants: {} migrated ({} migrations), {} up to date, {} pending, {} failed, {} locked, {} not run; {:.1}s",
        t.tenants,
        t.applied,
        t.migrations_applied,
        t.up_to_date,
        t.pending,
        t.failed,
        t.locked,
        t.not_run,
        report.elapsed.as_secs_f64()
    );
    out
}
