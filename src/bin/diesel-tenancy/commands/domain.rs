//! `domain`: add, remove and list the domains that route to tenants.

use anyhow::Result;
use diesel_tenancy::registry;
use serde_json::json;

use super::{Ctx, domain, schema};
use crate::args::Domain as D;
use crate::output::{Ended, Table};

pub(super) fn run(ctx: &Ctx, command: D) -> Result<Ended> {
    match command {
        D::Add {
            schema: name,
            domain: d,
            primary,
        } => {
            let d = domain(&d)?;
            let tenant = ctx.tenant(&name)?;
            registry::add_domain(&mut *ctx.conn()?, &tenant, &d, primary)?;
            ctx.out.print(
                json!({ "domain": d.as_str(), "schema": name, "primary": primary }),
                || format!("{d} now routes to {name}"),
            );
        }
        D::Remove { domain: d } => {
            let d = domain(&d)?;
            registry::remove_domain(&mut *ctx.conn()?, &d)?;
            ctx.out
                .print(json!({ "removed": d.as_str() }), || format!("removed {d}"));
        }
        D::List { schema: name } => list(ctx, name.as_deref())?,
    }
    Ok(Ended::Ok)
}

/// The domains of the tenant `name`, or of every tenant.
fn list(ctx: &Ctx, name: Option<&str>) -> Result<()> {
    let mut conn = ctx.conn()?;
    let tenants = match name {
        Some(name) => vec![registry::get_tenant(&mut conn, &schema(name)?)?],
        None => registry::list_tenants(&mut conn)?,
    };
    let mut rows = Vec::new();
    for t in &tenants {
        for d in registry::list_domains(&mut conn, t)? {
            rows.push((d.domain.to_string(), t.schema().to_string(), d.is_primary));
        }
    }
    ctx.out.print(
        json!({ "domains": rows.iter().map(|(d, s, p)| json!({ "domain": d, "schema": s, "primary": p })).collect::<Vec<_>>() }),
        || {
            let mut table = Table::new(&[("DOMAIN", 40), ("SCHEMA", 30), ("PRIMARY", 0)]);
            for (d, s, p) in &rows {
                table.row(vec![d.clone(), s.clone(), if *p { "yes" } else { "" }.to_owned()]);
            }
            table.finish()
        },
    );
    Ok(())
}
