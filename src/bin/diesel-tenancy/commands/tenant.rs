//! `tenant`: create, drop, rename, suspend, activate, list and show tenants
//! (`tenant move` and `tenant distribute` are in `citus`, `tenant dump` and
//! `tenant restore` in `dump`).

use anyhow::Result;
use diesel_tenancy::DomainRecord;
use diesel_tenancy::citus::{self, ClusterMode, NodeAddr};
use diesel_tenancy::registry::JournalEntry;
use diesel_tenancy::{
    ConfirmDrop, MigrateOptions, NewTenant, Outcome, Tenant, activate_tenant, create_tenant,
    drop_tenant, registry, rename_tenant, suspend_tenant, unregister_tenant_keep_schema,
};
use serde_json::{Value, json};

use super::{Ctx, domain, schema};
use crate::args::Tenant as T;
use crate::output::{Ended, Table, UsageError, outcome_json, tenant_json};

pub(super) fn run(ctx: &Ctx, command: T) -> Result<Ended> {
    match command {
        T::Create {
            schema,
            name,
            domains,
            with_role,
        } => create(ctx, schema, name, &domains, with_role)?,
        T::Drop {
            schema,
            keep_schema: true,
            ..
        } => unregister(ctx, &schema)?,
        T::Drop {
            schema,
            yes_delete_all_data,
            ..
        } => drop_confirmed(ctx, &schema, yes_delete_all_data)?,
        T::Rename { from, to } => {
            let tenant = rename_tenant(&mut *ctx.conn()?, &schema(&from)?, &schema(&to)?)?;
            changed(ctx, &tenant, format!("renamed {from} to {to}"));
        }
        T::Suspend { schema: name } => {
            let tenant = suspend_tenant(&mut *ctx.conn()?, &schema(&name)?)?;
            changed(ctx, &tenant, format!("suspended {name}"));
        }
        T::Activate { schema: name } => {
            let tenant = activate_tenant(&mut *ctx.conn()?, &schema(&name)?)?;
            changed(ctx, &tenant, format!("activated {name}"));
        }
        T::Move { schema, to, mode } => super::citus::move_tenant(ctx, &schema, &to, &mode)?,
        T::Distribute { schemas, all } => super::citus::distribute(ctx, &schemas, all)?,
        T::Dump { schema, output } => super::dump::dump(ctx, &schema, output.as_deref())?,
        T::Restore {
            file,
            as_schema,
            without_domains,
        } => super::dump::restore(ctx, &file, as_schema.as_deref(), without_domains)?,
        T::List => list(ctx)?,
        T::Show { schema } => show(ctx, &schema)?,
    }
    Ok(Ended::Ok)
}

/// Prints a tenant that a command changed: its row, or `text`.
fn changed(ctx: &Ctx, tenant: &Tenant, text: String) {
    ctx.out.print(tenant_json(tenant), || text);
}

fn create(
    ctx: &Ctx,
    name: String,
    display: Option<String>,
    domains: &[String],
    with_role: bool,
) -> Result<()> {
    let mut new = NewTenant::new(schema(&name)?, display.unwrap_or(name));
    if with_role {
        new = new.with_role();
    }
    for d in domains {
        new = new.domain(domain(d)?);
    }
    let tenant = create_tenant(&mut *ctx.conn()?, &new, ctx.tenant_set()?)?;
    ctx.out.print(tenant_json(&tenant), || {
        format!("created tenant {} ({})", tenant.schema(), tenant.name())
    });
    Ok(())
}

/// Drops the tenant `name` if the user confirmed that its data goes too.
fn drop_confirmed(ctx: &Ctx, name: &str, yes_delete_all_data: bool) -> Result<()> {
    let schema = schema(name)?;
    if !yes_delete_all_data {
        return Err(UsageError(format!(
            "refusing to drop tenant {name:?}: this deletes schema {name:?} and all its data; pass --yes-delete-all-data to confirm"
        ))
        .into());
    }
    drop_tenant(
        &mut *ctx.conn()?,
        &schema,
        ConfirmDrop::DeleteSchemaAndAllItsData,
    )?;
    ctx.out.print(json!({ "dropped": schema.as_str() }), || {
        format!("dropped tenant {schema} and its schema")
    });
    Ok(())
}

/// Removes the tenant `name` from the registry and keeps its schema.
fn unregister(ctx: &Ctx, name: &str) -> Result<()> {
    let schema = schema(name)?;
    let tenant = unregister_tenant_keep_schema(&mut *ctx.conn()?, &schema)?;
    ctx.out.print(
        json!({ "unregistered": schema.as_str(), "id": tenant.id(), "schema_kept": true }),
        || {
            format!(
                "removed tenant {schema} from the registry; schema {schema} and its data are kept"
            )
        },
    );
    Ok(())
}

fn list(ctx: &Ctx) -> Result<()> {
    let tenants = registry::list_tenants(&mut *ctx.conn()?)?;
    ctx.out.print(
        json!({ "tenants": tenants.iter().map(tenant_json).collect::<Vec<_>>() }),
        || {
            let mut table = Table::new(&[("SCHEMA", 30), ("STATUS", 10), ("NAME", 0)]);
            for t in &tenants {
                table.row(vec![
                    t.schema().to_string(),
                    t.status().as_str().to_owned(),
                    t.name().to_owned(),
                ]);
            }
            table.finish()
        },
    );
    Ok(())
}

/// What `tenant show` tells of a tenant.
struct Shown {
    tenant: Tenant,
    domains: Vec<DomainRecord>,
    journal: Option<JournalEntry>,
    mode: ClusterMode,
    node: Option<NodeAddr>,
    /// Its tenant migrations, read from its own ledger.
    migrations: Option<Outcome>,
}

fn show(ctx: &Ctx, name: &str) -> Result<()> {
    let tenant = ctx.tenant(name)?;
    let mut conn = ctx.conn()?;
    let domains = registry::list_domains(&mut conn, &tenant)?;
    let journal = registry::journal(&mut conn)?
        .into_iter()
        .find(|j| j.tenant_id == tenant.id());
    let mode = citus::detect(&mut conn)?;
    let node = citus::placement(&mut conn, tenant.schema())?;
    drop(conn);
    let plan = ctx.migrator()?.plan(
        &ctx.pool,
        &MigrateOptions::new()
            .shared(false)
            .verify(true)
            .tenants([tenant.schema().clone()]),
    )?;
    let migrations = plan.tenants.first().map(|r| r.outcome.clone());
    let shown = Shown {
        tenant,
        domains,
        journal,
        mode,
        node,
        migrations,
    };
    ctx.out.print(show_json(&shown), || show_text(&shown));
    Ok(())
}

fn show_json(shown: &Shown) -> Value {
    let journal = shown.journal.as_ref();
    let mut value = tenant_json(&shown.tenant);
    value["domains"] = json!(
        shown
            .domains
            .iter()
            .map(|d| json!({ "domain": d.domain.as_str(), "primary": d.is_primary }))
            .collect::<Vec<_>>()
    );
    value["latest_version"] = json!(journal.and_then(|j| j.latest_version.clone()));
    value["last_error"] = json!(journal.and_then(|j| j.last_error.clone()));
    value["migrations"] = shown.migrations.as_ref().map_or(Value::Null, outcome_json);
    value["mode"] = json!(shown.mode.as_str());
    value["node"] = json!(shown.node.as_ref().map(ToString::to_string));
    value
}

fn show_text(shown: &Shown) -> String {
    let tenant = &shown.tenant;
    let mut out = format!(
        "tenant {} ({}), {}\ndomains: {}",
        tenant.schema(),
        tenant.name(),
        tenant.status().as_str(),
        shown
            .domains
            .iter()
            .map(|d| if d.is_primary {
                format!("{} (primary)", d.domain)
            } else {
                d.domain.to_string()
            })
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(outcome) = &shown.migrations {
        out += &format!("\nmigrations: {outcome}");
    }
    if shown.mode == ClusterMode::Citus {
        out += &format!(
            "\nnode: {}",
            shown.node.as_ref().map_or(
                "none (not distributed, or no tables)".to_owned(),
                ToString::to_string
            )
        );
    }
    if let Some(error) = shown.journal.as_ref().and_then(|j| j.last_error.as_ref()) {
        out += &format!("\nlast error: {error}");
    }
    out
}
