//! The axum layer and the actix middleware run each request in a `tenant_request` span that names the
//! tenant's schema, or `public`, so logs and traces say whose request it was.
//!
//! A test binary of its own: it installs the process's global tracing
//! subscriber, and no other test may race it for the span's callsite.

mod common;

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::Request;
use axum::routing::get;
use common::{TENANT, setup};
use diesel_tenancy::web::axum::{TenancyLayer, TenantDb, tenant_routing};
use diesel_tenancy::{Domain, NewTenant, Resolver, SchemaName, create_tenant};
use tower::ServiceExt;

/// Records the `tenant` field of every `tenant_request` span.
#[derive(Clone, Default)]
struct TenantSpans(Arc<Mutex<Vec<String>>>);

impl tracing::Subscriber for TenantSpans {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        struct Tenant(Option<String>);
        impl tracing::field::Visit for Tenant {
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                if field.name() == "tenant" {
                    self.0 = Some(value.to_owned());
                }
            }
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "tenant" {
                    self.0 = Some(format!("{value:?}"));
                }
            }
        }
        if span.metadata().name() == "tenant_request" {
            let mut tenant = Tenant(None);
            span.record(&mut tenant);
            self.0
                .lock()
                .unwrap()
                .push(tenant.0.unwrap_or_else(|| "<no tenant field>".into()));
        }
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        tracing::span::Id::from_u64(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {}
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

async fn status_of(app: &axum::Router, host: &str) -> u16 {
    let request = Request::builder()
        .uri("/")
        .header("host", host)
        .body(Body::empty())
        .unwrap();
    app.clone()
        .oneshot(request)
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_requests_run_in_a_tenant_span() {
    let spans = TenantSpans::default();
    tracing::subscriber::set_global_default(spans.clone()).expect("the only subscriber");
    let (_db, pool) = tokio::task::block_in_place(|| setup(2));
    tokio::task::block_in_place(|| {
        for schema in ["acme", "globex"] {
            let new = NewTenant::new(SchemaName::new(schema).unwrap(), schema)
                .domain(Domain::parse(&format!("{schema}.example.com")).unwrap());
            create_tenant(&mut pool.public().unwrap(), &new, TENANT).unwrap();
        }
    });
    let resolver = Resolver::builder(pool.clone())
        .public_domain(Domain::parse("example.com").unwrap())
        .build()
        .unwrap();
    let public = axum::Router::new().route("/", get(|| async { "public site" }));
    let tenant = axum::Router::new().route(
        "/",
        get(|db: TenantDb| async move {
            db.tenant()
                .map(|t| t.schema().to_string())
                .unwrap_or_default()
        }),
    );
    let resolver_clone = resolver.clone();
    let app = tenant_routing(public, tenant, TenancyLayer::new(resolver));
    for (host, expected) in [
        ("acme.example.com", "acme"),
        ("globex.example.com", "globex"),
        ("example.com", "public"),
    ] {
        spans.0.lock().unwrap().clear();
        assert_eq!(status_of(&app, host).await, 200, "{host}");
        assert_eq!(*spans.0.lock().unwrap(), [expected], "{host}");
    }
    // An unknown host gets its 404 without a tenant span.
    spans.0.lock().unwrap().clear();
    assert_eq!(status_of(&app, "nobody.example.com").await, 404);
    assert!(spans.0.lock().unwrap().is_empty());

    // The actix middleware alike (in this test: one global subscriber).
    use actix_web::{App, test, web};
    use diesel_tenancy::web::actix as ax;
    let actix = test::init_service(
        App::new()
            .wrap(ax::Tenancy::new(resolver_clone))
            .route("/", web::get().to(|| async { "ok" })),
    )
    .await;
    for (host, expected) in [("acme.example.com", "acme"), ("example.com", "public")] {
        spans.0.lock().unwrap().clear();
        let request = ax::TenantRequests::new(host).get("/").to_request();
        assert_eq!(
            test::call_service(&actix, request).await.status().as_u16(),
            200
        );
        assert_eq!(*spans.0.lock().unwrap(), [expected], "actix {host}");
    }
}
