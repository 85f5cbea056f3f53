//! An axum service that serves tenants with diesel-tenancy's async pool alone:
//! no blocking pool, no libpq (`cargo tree -e normal` shows no `pq-sys`).
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/app cargo run --manifest-path examples/async_only/Cargo.toml
//! ```
//!
//! It migrates (shared set, then every tenant), creates two tenants with a
//! customer each, resolves each request's tenant from its host (misses looked
//! up on an async connection, invalidated through a tokio-postgres `LISTEN`),
//! and serves `GET /` per tenant. With `--self-test` it serves on a free port,
//! requests each tenant's page, the public site and an unknown host, checks the
//! answers and exits (0 when all hold).

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use axum::Router;
use axum::routing::get;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use diesel_tenancy::web::axum::{CurrentTenant, TenancyLayer, TenantConn, tenant_routing};
use diesel_tenancy::{
    AsyncTenantPool, Domain, Error, MigrateOptions, Migrator, NewTenant, Resolver, SchemaName,
    Tenant, create_tenant, registry,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SHARED: EmbeddedMigrations = embed_migrations!("../../migrations_shared");
const TENANT: EmbeddedMigrations = embed_migrations!("../../migrations_tenant");

diesel::table! {
    customers (id) {
        id -> BigInt,
        name -> Text,
        email -> Text,
    }
}

/// Creates the tenant (or finds it, on a second run) with one customer.
async fn tenant(pool: &AsyncTenantPool, schema: &str, host: &str) -> Result<Tenant> {
    let new = NewTenant::new(SchemaName::new(schema)?, schema).domain(Domain::parse(host)?);
    let schema = new.schema.clone();
    let tenant = match pool
        .blocking(move |conn| create_tenant(conn, &new, TENANT))
        .await?
    {
        Ok(tenant) => tenant,
        Err(Error::TenantExists { .. }) => {
            pool.blocking(move |conn| registry::get_tenant(conn, &schema))
                .await??
        }
        Err(e) => return Err(e.into()),
    };
    let owner = format!("owner of {}", tenant.schema());
    pool.with_tenant(&tenant, async |conn| {
        diesel::delete(customers::table).execute(conn).await?;
        diesel::insert_into(customers::table)
            .values((
                customers::name.eq(&owner),
                customers::email.eq("owner@example.com"),
            ))
            .execute(conn)
            .await
    })
    .await?;
    Ok(tenant)
}

/// A tenant's page: its customers, read on its own connection.
async fn customers_page(
    CurrentTenant(tenant): CurrentTenant,
    mut conn: TenantConn,
) -> Result<String, Error> {
    let names: Vec<String> = customers::table
        .select(customers::name)
        .order(customers::id)
        .load(&mut **conn)
        .await?;
    Ok(format!("{}: {}", tenant.schema(), names.join(", ")))
}

/// One HTTP/1.1 request to `addr` with `host`: the status and the body.
async fn get_page(addr: std::net::SocketAddr, host: &str) -> Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status line")?;
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    Ok((status, body))
}

#[tokio::main]
async fn main() -> Result<()> {
    let self_test = std::env::args().any(|a| a == "--self-test");
    let url = std::env::var("DATABASE_URL").context("set DATABASE_URL to a PostgreSQL database")?;
    let pool = AsyncTenantPool::builder(url).max_size(4).build()?;
    let report = Migrator::new(SHARED, TENANT)
        .migrate_all_async(&pool, &MigrateOptions::new())
        .await?;
    ensure!(report.is_success(), "migrations failed: {report:?}");
    tenant(&pool, "acme", "acme.localhost").await?;
    tenant(&pool, "globex", "globex.localhost").await?;

    let resolver = Resolver::builder(pool.clone())
        .public_domain(Domain::parse("localhost")?)
        .build()?;
    let _listener = resolver.listen_async().await?;
    let public = Router::new().route("/", get(|| async { "the public site" }));
    let tenants = Router::new().route("/", get(customers_page));
    let app = tenant_routing(public, tenants, TenancyLayer::new(resolver));

    let port = if self_test {
        0
    } else {
        std::env::var("PORT").map_or(Ok(8000), |p| p.parse())?
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    if !self_test {
        println!("serving on http://acme.localhost:{port}/ and http://globex.localhost:{port}/");
        axum::serve(listener, app).await?;
        return Ok(());
    }
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let expected = [
        ("acme.localhost", 200, "acme: owner of acme"),
        ("globex.localhost", 200, "globex: owner of globex"),
        ("localhost", 200, "the public site"),
        ("nobody.localhost", 404, ""),
    ];
    for (host, status, body) in expected {
        let (got_status, got_body) =
            tokio::time::timeout(Duration::from_secs(10), get_page(addr, host)).await??;
        if got_status != status || !got_body.contains(body) {
            bail!("{host}: expected {status} {body:?}, got {got_status} {got_body:?}");
        }
        println!(
            "{host}: {got_status} {}",
            got_body.lines().next().unwrap_or("")
        );
    }
    server.abort();
    println!("self-test passed");
    Ok(())
}
