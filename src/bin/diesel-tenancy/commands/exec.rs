//! `exec`: an SQL statement or file in every tenant (or the chosen ones), each
//! in its own transaction with only the tenant's schema on the search path.

use anyhow::{Context, Result};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_tenancy::{SchemaName, Tenant, registry};
use serde_json::json;

use super::Ctx;
use crate::args;
use crate::output::{Ended, UsageError};

#[derive(QueryableByName)]
struct Head {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    current_schema: Option<String>,
}

pub(super) fn run(ctx: &Ctx, e: args::Exec) -> Result<Ended> {
    let sql = read_sql(&e)?;
    let tenants = chosen_tenants(ctx, &e.schemas)?;
    // Each tenant's schema and its error, if it failed.
    let mut results = Vec::new();
    for t in &tenants {
        let error = ctx
            .pool
            .get(t)
            .map_err(anyhow::Error::from)
            .and_then(|mut conn| {
                exec_in_tenant(&mut conn, t.schema(), &sql)
                    .with_context(|| format!("in tenant {}", t.schema()))
            })
            .err()
            .map(|e| format!("{e:#}"));
        ctx.out
            .tenant_done(result_line(t.schema(), error.as_deref()));
        results.push((t.schema().to_string(), error));
    }
    let failed = results.iter().filter(|(_, e)| e.is_some()).count();
    ctx.out.print(
        json!({
            "tenants": results.iter().map(|(s, e)| json!({ "schema": s, "ok": e.is_none(), "error": e })).collect::<Vec<_>>(),
            "ok": results.len() - failed,
            "failed": failed,
        }),
        || {
            let mut out = String::new();
            for (s, e) in &results {
                out += &result_line(s, e.as_deref());
                out.push('\n');
            }
            out += &format!("{} ok, {failed} failed", results.len() - failed);
            out
        },
    );
    Ok(Ended::ok_if(failed == 0))
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

/// The tenants `names`, or every active tenant.
fn chosen_tenants(ctx: &Ctx, names: &[String]) -> Result<Vec<Tenant>> {
    if names.is_empty() {
        Ok(registry::list_tenants(&mut *ctx.conn()?)?
            .into_iter()
            .filter(Tenant::is_active)
            .collect())
    } else {
        names.iter().map(|s| ctx.tenant(s)).collect()
    }
}

/// `schema: ok`, or `schema: failed: error`.
fn result_line(schema: impl std::fmt::Display, error: Option<&str>) -> String {
    match error {
        None => format!("{schema}: ok"),
        Some(e) => format!("{schema}: failed: {e}"),
    }
}

/// Runs `sql` in one transaction with only `schema` on the search path, as
/// `migrate` runs tenant migrations: an unqualified name never reaches
/// `public` (shared tables are written `public.plans`). The path is set for the
/// transaction only, and read back on the server first: if the schema is not at
/// its head (dropped or renamed meanwhile), nothing runs.
fn exec_in_tenant(conn: &mut PgConnection, schema: &SchemaName, sql: &str) -> Result<()> {
    conn.transaction(|c| {
        let head = diesel::sql_query(
            "SELECT CASE WHEN set_config('search_path', $1, true) IS NOT NULL \
                    THEN current_schema() END AS current_schema",
        )
        .bind::<diesel::sql_types::Text, _>(schema.quoted())
        .get_result::<Head>(c)?;
        if head.current_schema.as_deref() != Some(schema.as_str()) {
            anyhow::bail!(
                "schema {:?} is not at the head of the search path (current_schema() is {}), so nothing was run",
                schema.as_str(),
                head.current_schema
                    .map_or_else(|| "none".to_owned(), |s| format!("{s:?}"))
            );
        }
        c.batch_execute(sql)?;
        Ok(())
    })
}
