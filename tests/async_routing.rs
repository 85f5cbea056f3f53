//! An async-only service: the resolver, the axum layer, the `TenantConn`
//! extractor and the registry listener all on the async pool (what an app
//! built without the `sync` feature has), against a real database.
#![allow(missing_docs)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use common::{Rng, customers};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use diesel_tenancy::web::axum::{CurrentTenant, TenancyLayer, TenantConn, tenant_routing};
use diesel_tenancy::{
    AsyncTenantPool, Domain, Error, Migrator, NewTenant, Resolver, SchemaName, Tenant,
    create_tenant,
};
use http_body_util::BodyExt;
use tower::ServiceExt;

async fn page(CurrentTenant(tenant): CurrentTenant, mut conn: TenantConn) -> Result<String, Error> {
    let names: Vec<String> = customers::table
        .select(customers::name)
        .order(customers::id)
        .load(&mut **conn)
        .await?;
    Ok(format!("{}:{}", tenant.schema(), names.join(",")))
}

async fn get_page(app: &Router, host: &str) -> (StatusCode, String) {
    let response = app
        .clone()
        .oneshot(
            Request::builder()
                .uri("/")
                .header("host", host)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Tenants `arout0..n` at `arout<i>.example.com`, each with one customer
/// named after its schema, made through the async pool only.
async fn tenants(pool: &AsyncTenantPool, n: usize) -> Vec<Tenant> {
    Migrator::new(common::SHARED, common::TENANT)
        .migrate_shared_async(pool)
        .await
        .unwrap();
    let mut made = Vec::new();
    for i in 0..n {
        let schema = format!("arout{i}");
        let new = NewTenant::new(SchemaName::new(&schema).unwrap(), &schema)
            .domain(Domain::parse(&format!("{schema}.example.com")).unwrap());
        let tenant = pool
            .blocking(move |conn| create_tenant(conn, &new, common::TENANT))
            .await
            .unwrap()
            .unwrap();
        let name = schema.clone();
        pool.with_tenant(&tenant, async |conn| {
            diesel::insert_into(customers::table)
                .values((customers::name.eq(&name), customers::email.eq("o@x.test")))
                .execute(conn)
                .await
        })
        .await
        .unwrap();
        made.push(tenant);
    }
    made
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_async_only_service_routes_and_never_serves_another_tenant() {
    let db = diesel_tenancy::testing::TestDatabase::new().unwrap();
    let pool = AsyncTenantPool::builder(db.url())
        .max_size(4)
        .build()
        .unwrap();
    let made = tenants(&pool, 6).await;
    let resolver = Resolver::builder(pool.clone())
        .public_domain(Domain::parse("example.com").unwrap())
        .cache_ttl(Duration::from_secs(3600))
        .build()
        .unwrap();
    assert!(
        resolver.pool().is_none(),
        "the resolver has no blocking pool"
    );
    let layer = TenancyLayer::new(resolver.clone());
    let app = tenant_routing(
        Router::new().route("/", get(|| async { "public" })),
        Router::new().route("/", get(page)),
        layer,
    );
    assert_eq!(
        get_page(&app, "arout0.example.com").await,
        (StatusCode::OK, "arout0:arout0".into())
    );
    assert_eq!(
        get_page(&app, "example.com").await,
        (StatusCode::OK, "public".into())
    );
    assert_eq!(
        get_page(&app, "nobody.example.com").await.0,
        StatusCode::NOT_FOUND
    );

    // Concurrent requests to random tenants: each page shows its own tenant.
    let (served, wrong) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let tasks: Vec<_> = (0..8u64)
        .map(|seed| {
            let (app, served, wrong) = (app.clone(), served.clone(), wrong.clone());
            let n = made.len();
            tokio::spawn(async move {
                let mut rng = Rng::new(seed + 11);
                for _ in 0..40 {
                    let i = rng.below(n);
                    let (status, body) = get_page(&app, &format!("arout{i}.example.com")).await;
                    served.fetch_add(1, Ordering::Relaxed);
                    if status != StatusCode::OK || body != format!("arout{i}:arout{i}") {
                        wrong.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(AtomicUsize::load(&served, Ordering::Relaxed), 320);
    assert_eq!(AtomicUsize::load(&wrong, Ordering::Relaxed), 0);

    // Another process moves a domain: the async listener hears it.
    let _listener = resolver.listen_async().await.unwrap();
    let mut other = pool.public().await.unwrap();
    diesel_async::SimpleAsyncConnection::batch_execute(
        &mut *other,
        "UPDATE tenancy_domains SET is_primary = false, tenant_id = (SELECT id FROM tenancy_tenants WHERE schema_name = 'arout1') \
         WHERE domain = 'arout0.example.com'",
    )
    .await
    .unwrap();
    drop(other);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, body) = get_page(&app, "arout0.example.com").await;
        if body == "arout1:arout1" {
            break;
        }
        assert!(Instant::now() < deadline, "still served {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
