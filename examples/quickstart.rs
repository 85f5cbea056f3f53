#![allow(missing_docs)]
//! Two tenants, one database: each writes its own rows and sees only its own.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! With `DATABASE_URL` unset it starts a throwaway PostgreSQL cluster from the
//! machine's binaries and removes it on exit; with `DATABASE_URL` set it uses that
//! database (and can be run again: existing tenants are reused).

use anyhow::{Context, Result, ensure};
use diesel::prelude::*;
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use diesel_tenancy::testing::TestDatabase;
use diesel_tenancy::{
    Domain, Error, NewTenant, SchemaName, Tenant, TenantPool, create_tenant, registry,
    run_shared_migrations,
};

const SHARED: EmbeddedMigrations = embed_migrations!("migrations_shared");
const TENANT: EmbeddedMigrations = embed_migrations!("migrations_tenant");

// Unqualified table: it resolves in whichever tenant the connection is scoped to.
diesel::table! {
    products (id) {
        id -> BigInt,
        name -> Text,
        price_cents -> Integer,
    }
}

fn tenant(pool: &TenantPool, schema: &str, name: &str, domain: &str) -> Result<Tenant> {
    let new = NewTenant::new(SchemaName::new(schema)?, name).domain(Domain::parse(domain)?);
    match create_tenant(&mut *pool.public()?, &new, TENANT) {
        Ok(tenant) => {
            println!("created tenant {schema:?} ({name}) at {domain}");
            Ok(tenant)
        }
        Err(Error::TenantExists { .. }) => Ok(pool.tenant(schema)?),
        Err(e) => Err(e).with_context(|| format!("creating tenant {schema}")),
    }
}

fn main() -> Result<()> {
    // Keep the throwaway database alive until the end of main.
    let (_throwaway, url) = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => (None, url),
        _ => {
            println!("DATABASE_URL is not set: starting a throwaway PostgreSQL cluster");
            let db = TestDatabase::new()?;
            let url = db.url().to_owned();
            (Some(db), url)
        }
    };

    let pool = TenantPool::builder(url).max_size(4).build()?;
    let applied = run_shared_migrations(&mut *pool.public()?, SHARED)?;
    println!("shared migrations applied to public: {applied:?}");

    let acme = tenant(&pool, "acme", "Acme Corp", "acme.localhost")?;
    let globex = tenant(&pool, "globex", "Globex Inc", "globex.localhost")?;

    // Each tenant writes through the same pool, with the same unqualified table.
    for (tenant, product, price) in [(&acme, "Anvil", 4999), (&globex, "Hammock", 12900)] {
        pool.with_tenant(tenant, |conn| {
            diesel::insert_into(products::table)
                .values((products::name.eq(product), products::price_cents.eq(price)))
                .execute(conn)
        })?;
    }

    // Each sees only its own rows.
    for (tenant, own) in [(&acme, "Anvil"), (&globex, "Hammock")] {
        let names: Vec<String> = pool.with_tenant(tenant, |conn| {
            products::table.select(products::name).load(conn)
        })?;
        println!("{:>7} sees products {names:?}", tenant.schema().as_str());
        ensure!(
            names.iter().all(|n| n == own),
            "tenant {} saw another tenant's rows: {names:?}",
            tenant.schema()
        );
    }

    // Shared data and the registry live in public.
    let mut conn = pool.public()?;
    for t in registry::list_tenants(&mut conn)? {
        let domains: Vec<String> = registry::list_domains(&mut conn, &t)?
            .into_iter()
            .map(|d| d.domain.to_string())
            .collect();
        println!(
            "registry: {} ({}), {:?}, domains {domains:?}",
            t.schema(),
            t.name(),
            t.status()
        );
    }
    let stats = pool.stats();
    println!(
        "{} scoped checkouts, {} of which had to set the search path",
        stats.scoped, stats.path_sets
    );
    Ok(())
}
