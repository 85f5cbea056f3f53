//! `http`: the same handler served on loopback behind `TenancyLayer` with the
//! tenant pool and on a plain pool without it, under a built-in load
//! generator.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use axum::Router;
use axum::routing::get;
use diesel::prelude::*;
use diesel_tenancy::web::axum::{TenancyLayer, TenantDb, tenant_routing};
use diesel_tenancy::{Domain, RequestInfo, Resolver, Tenant, TenantPool};

use crate::fixture::{PlainPool, customers, plain_pool, tenants};
use crate::measure::{print_costs, take_turns};
use crate::{Bench, Mix, Rng, Warm, ms};

/// Rounds in which the variants take turns.
const HTTP_ROUNDS: usize = 5;

/// How long the resolver keeps a tenant: longer than any run, so that no
/// lookup joins the handler's checkouts on the tenant pool.
const RESOLVER_TTL: Duration = Duration::from_secs(24 * 3600);

/// Host names from random numbers.
type Hosts<'a> = &'a (dyn Fn(u64) -> String + Sync);

/// Sends `requests` GET requests over `clients` keep-alive connections to
/// `port`, with hosts from `host` (fed by random numbers from `seed`); returns
/// each request's latency.
fn load(
    port: u16,
    requests: usize,
    clients: usize,
    seed: u64,
    host: Hosts<'_>,
) -> Result<Vec<Duration>> {
    std::thread::scope(|s| -> Result<Vec<Duration>> {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let rng = Rng::new(seed * 64 + c as u64 + 1);
                s.spawn(move || client(port, requests / clients, rng, host))
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            all.extend(
                h.join()
                    .map_err(|_| anyhow::anyhow!("a client panicked"))??,
            );
        }
        Ok(all)
    })
}

/// One keep-alive connection's `requests` requests, with hosts from `host`
/// fed by `rng`.
fn client(port: u16, requests: usize, mut rng: Rng, host: Hosts<'_>) -> Result<Vec<Duration>> {
    use std::io::{BufRead, BufReader, Read, Write};
    let stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut out = Vec::with_capacity(requests);
    for _ in 0..requests {
        let t0 = Instant::now();
        write!(
            writer,
            "GET / HTTP/1.1\r\nHost: {}\r\n\r\n",
            host(rng.next())
        )?;
        let mut status = String::new();
        reader.read_line(&mut status)?;
        ensure!(status.starts_with("HTTP/1.1 200"), "response: {status}");
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line)?;
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse()?;
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        out.push(t0.elapsed());
    }
    Ok(out)
}

/// The same work in both apps: one blocking-pool task that reads the customers.
async fn names(conn_result: Result<Vec<String>>) -> String {
    match conn_result {
        Ok(names) => names.join(","),
        Err(e) => format!("error: {e}"),
    }
}

/// The handler on a plain pool, without the layer.
fn plain_app(plain_pool: PlainPool) -> Router {
    Router::new().route(
        "/",
        get(move || {
            let pool = plain_pool.clone();
            async move {
                let r = tokio::task::spawn_blocking(move || -> Result<Vec<String>> {
                    let mut conn = pool.get()?;
                    Ok(customers::table.select(customers::name).load(&mut *conn)?)
                })
                .await
                .map_err(anyhow::Error::from)
                .and_then(|r| r);
                names(r).await
            }
        }),
    )
}

/// The handler behind `TenancyLayer`, through `TenantDb`.
fn tenant_app(resolver: Resolver) -> Router {
    let tenant_router = Router::new().route(
        "/",
        get(|db: TenantDb| async move {
            let r = db
                .run(|c| customers::table.select(customers::name).load::<String>(c))
                .await
                .map_err(anyhow::Error::from)
                .and_then(|r| r.map_err(anyhow::Error::from));
            names(r).await
        }),
    );
    tenant_routing(Router::new(), tenant_router, TenancyLayer::new(resolver))
}

/// A resolver on `pool` that already holds every tenant's domain
/// (`t<i>.localhost`, registered here).
fn resolver(b: &Bench, pool: TenantPool, tenants: &[Tenant]) -> Result<Resolver> {
    let resolver = Resolver::builder(pool)
        .public_domain(Domain::parse("localhost")?)
        .cache_ttl(RESOLVER_TTL)
        .build()?;
    let hosts: Vec<String> = tenants
        .iter()
        .map(|t| format!("{}.localhost", t.schema()))
        .collect();
    let mut conn = b.pool.public()?;
    for (t, host) in tenants.iter().zip(&hosts) {
        diesel_tenancy::registry::add_domain(&mut conn, t, &Domain::parse(host)?, true)?;
    }
    // After the last change to the registry, which makes older answers stale.
    for host in &hosts {
        let request = RequestInfo {
            host: Some(host),
            host_fields: 1,
            path: "/",
            ..RequestInfo::default()
        };
        resolver.resolve(&request)?;
        ensure!(
            resolver.resolve_cached(&request).is_some(),
            "{host} is not in the resolver's cache"
        );
    }
    Ok(resolver)
}

pub(crate) fn http(b: &Bench) -> Result<()> {
    let requests = b.ops;
    let load_options = b.load(8, 8);
    let clients = load_options.threads;
    let tenants = tenants(b)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let plain = plain_app(plain_pool(b.db.url(), &tenants[0], load_options.pool)?);
    let tenant_pool = TenantPool::builder(b.db.url())
        .max_size(load_options.pool)
        .build()?;
    let tenant = tenant_app(resolver(b, tenant_pool.clone(), &tenants)?);
    let (plain_port, tenant_port) = rt.block_on(async {
        let a = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let b = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let ports = (a.local_addr()?.port(), b.local_addr()?.port());
        tokio::spawn(async move { axum::serve(a, plain).await });
        tokio::spawn(async move { axum::serve(b, tenant).await });
        Ok::<_, anyhow::Error>(ports)
    })?;
    let mix = Mix::new(load_options.mix, tenants.len());
    let random_host = |r: u64| format!("t{}.localhost", mix.index(r));
    // The same tenant for every request: no switching, the layer's and the
    // pool's own cost.
    let same_host = |_| "t0.localhost".to_owned();
    let variants: [(u16, Hosts<'_>); 3] = [
        (plain_port, &random_host),
        (tenant_port, &random_host),
        (tenant_port, &same_host),
    ];
    // Warm all (connections, caches), then take turns.
    for (port, host) in variants {
        load(port, requests / 10, clients, 0, host)?;
    }
    let mut latencies: Vec<Vec<Duration>> = vec![Vec::new(); variants.len()];
    // The switching variant's checkouts on the tenant pool (the
    // same-tenant variant shares the pool, so only its own turns count).
    let mut warm = Warm::default();
    let costs = take_turns(variants.len(), HTTP_ROUNDS, |turn, i| {
        let (port, host) = variants[i];
        let before = tenant_pool.stats();
        let got = load(port, requests / HTTP_ROUNDS, clients, turn as u64 + 1, host)?;
        if i == 1 {
            warm.add(before, tenant_pool.stats());
        }
        latencies[i].extend(&got);
        Ok(got.len())
    })?;
    print_costs("http", &["plain", "tenant", "same_tenant"], &costs);
    let rps: Vec<f64> = costs.iter().map(|c| 1e6 / c.wall).collect();
    let p99: Vec<f64> = latencies
        .iter_mut()
        .map(|l| {
            l.sort();
            ms(l[(l.len() * 99 / 100).min(l.len() - 1)])
        })
        .collect();
    println!(
        "RESULT scenario=http mix={} warm_hits={:.3} requests={} plain_rps={:.0} tenant_rps={:.0} ratio={:.3} plain_p99_ms={:.2} tenant_p99_ms={:.2} same_tenant_rps={:.0} same_tenant_ratio={:.3} same_tenant_p99_ms={:.2}",
        load_options.mix.name(),
        warm.hits(),
        latencies[0].len(),
        rps[0],
        rps[1],
        rps[1] / rps[0],
        p99[0],
        p99[1],
        rps[2],
        rps[2] / rps[0],
        p99[2]
    );
    rt.shutdown_background();
    Ok(())
}
