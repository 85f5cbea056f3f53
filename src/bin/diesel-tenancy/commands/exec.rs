//! `exec`: an SQL statement or file in every tenant (or the chosen ones), each
//! in its own transaction with only the tenant's schema on the search path,
//! `--jobs` at a time, through `TenantPool::for_each_tenant`.

use anyhow::{Context, Result};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_tenancy::{ForEachOptions, ForEachReport, RunOutcome, SchemaName};
use serde_json::{Value, json};

use super::{Ctx, schemas};
use crate::args;
use crate::output::{Ended, UsageError};

#[derive(QueryableByName)]
struct Head {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    current_schema: Option<String>,
}

/// Every tenant's result: nothing, or the error.
type Report = ForEachReport<(), anyhow::Error>;

pub(super) fn run(ctx: &Ctx, e: args::Exec) -> Result<Ended> {
    let sql = read_sql(&e)?;
    let bar = ctx.out.tenant_bar();
    let mut options = ForEachOptions::new()
        .jobs(e.jobs)
        .fail_fast(e.fail_fast)
        .on_progress(ctx.out.exec_progress(&bar));
    if !e.schemas.is_empty() {
        options = options.tenants(schemas(&e.schemas)?);
    }
    let report: Result<Report, _> = ctx.pool.for_each_tenant(&options, |tenant, conn| {
        exec_in_tenant(conn, tenant.schema(), &sql)
            .with_context(|| format!("in tenant {}", tenant.schema()))
    });
    bar.finish();
    let report = report?;
    ctx.out.print(report_json(&report), || report_text(&report));
    Ok(Ended::ok_if(report.is_success()))
}

/// A tenant's result: `result` is `ok`, `failed` or `not_run` (as in
/// `migrate`'s report), `ok` and `error` say the same for scripts that read
/// only those.
fn report_json(report: &Report) -> Value {
    let t = report.totals();
    json!({
        "tenants": report.tenants.iter().map(|r| json!({
            "schema": r.tenant.schema().as_str(),
            "result": match r.outcome {
                RunOutcome::Done(()) => "ok",
                RunOutcome::NotRun => "not_run",
                _ => "failed",
            },
            "ok": matches!(r.outcome, RunOutcome::Done(())),
            "error": r.outcome.error().map(|e| format!("{e:#}")),
            "elapsed_ms": r.elapsed.as_secs_f64() * 1000.0,
        })).collect::<Vec<_>>(),
        "ok": t.done,
        "failed": t.failed,
        "not_run": t.not_run,
        "totals": { "tenants": t.tenants, "ok": t.done, "failed": t.failed, "not_run": t.not_run },
        "elapsed_ms": report.elapsed.as_secs_f64() * 1000.0,
    })
}

/// A line per tenant, then the counts.
fn report_text(report: &Report) -> String {
    let mut out = String::new();
    for r in &report.tenants {
        out += &match &r.outcome {
            RunOutcome::Done(()) => format!("{}: ok", r.tenant.schema()),
            RunOutcome::NotRun => format!("{}: not run", r.tenant.schema()),
            other => match other.error() {
                Some(e) => format!("{}: failed: {e:#}", r.tenant.schema()),
                None => format!("{}: failed", r.tenant.schema()),
            },
        };
        out.push('\n');
    }
    let t = report.totals();
    out += &format!("{} ok, {} failed", t.done, t.failed);
    if t.not_run > 0 {
        out += &format!(", {} not run", t.not_run);
    }
    out
}

/// The SQL of `--sql`, or the contents of `--file`.
fn read_sql(e: &args::Exec) -> Result<String> {
    match (&e.sql, &e.file) {
        (Some(sql), _) => Ok(sql.clone()),
        (None, Some(file)) => Ok(std::fs::read_to_string(file)
            .map_err(|err| UsageError(format!("cannot read {}: {err}", file.display())))?),
        (None, None) => Err(UsageError("pass --sql or --file".into()).into()),
    }
}

/// Runs `sql` with only `schema` on the search path, as `migrate` runs
/// tenant migrations: an unqualified name never reaches `public` (shared
/// tables are written `public.plans`). The path is set for the tenant's
/// transaction (the one `for_each_tenant` gives each tenant) and read back on
/// the server first: if the schema is not at its head (dropped or renamed
/// meanwhile), nothing runs.
fn exec_in_tenant(conn: &mut PgConnection, schema: &SchemaName, sql: &str) -> Result<()> {
    let head = diesel::sql_query(
        "SELECT CASE WHEN set_config('search_path', $1, true) IS NOT NULL \
                THEN current_schema() END AS current_schema",
    )
    .bind::<diesel::sql_types::Text, _>(schema.quoted())
    .get_result::<Head>(conn)?;
    if head.current_schema.as_deref() != Some(schema.as_str()) {
        anyhow::bail!(
            "schema {:?} is not at the head of the search path (current_schema() is {}), so nothing was run",
            schema.as_str(),
            head.current_schema
                .map_or_else(|| "none".to_owned(), |s| format!("{s:?}"))
        );
    }
    conn.batch_execute(sql)?;
    Ok(())
}
