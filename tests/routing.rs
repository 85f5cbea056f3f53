//! Host routing through the resolver and both web adapters, with explicit `Host`
//! headers against a real database.
#![allow(missing_docs)]

mod common;

use common::{info, tenant_of};

use axum::body::Body;
use axum::http::Request;
use common::{TENANT, markers, setup};
use diesel::connection::SimpleConnection;
use diesel_tenancy::web::{actix as ax, axum as am};
use diesel_tenancy::{
    Domain, IpHosts, NewTenant, RequestInfo, Resolution, Resolver, SchemaName, TenantPool,
    create_tenant, registry,
};
use http_body_util::BodyExt;
use tower::ServiceExt;

fn domain(s: &str) -> Domain {
    Domain::parse(s).unwrap()
}

/// acme (acme.example.com, shared.example.com), globex (globex.example.com,
/// bücher.example), sleepy (suspended, sleepy.example.com); each tenant's
/// `customers` holds one row named after its schema.
fn world() -> (diesel_tenancy::testing::TestDatabase, TenantPool) {
    let (db, pool) = setup(4);
    for (schema, domains) in [
        ("acme", &["acme.example.com", "shared.example.com"][..]),
        ("globex", &["globex.example.com", "bücher.example"][..]),
        ("sleepy", &["sleepy.example.com"][..]),
    ] {
        let mut new = NewTenant::new(SchemaName::new(schema).unwrap(), schema);
        for d in domains {
            new = new.domain(domain(d));
        }
        let t = create_tenant(&mut pool.public().unwrap(), &new, TENANT).unwrap();
        pool.with_tenant(&t, |conn| {
            conn.batch_execute(&format!(
                "INSERT INTO customers (name, email) VALUES ('{schema}', 'x@{schema}')"
            ))
        })
        .unwrap();
    }
    diesel_tenancy::suspend_tenant(
        &mut pool.public().unwrap(),
        &SchemaName::new("sleepy").unwrap(),
    )
    .unwrap();
    (db, pool)
}

fn resolver(pool: &TenantPool) -> diesel_tenancy::ResolverBuilder {
    Resolver::builder(pool.clone()).public_domain(domain("example.com"))
}

fn trusted_resolver(pool: &TenantPool) -> Resolver {
    resolver(pool)
        .trusted_proxies(["10.0.0.0/8".parse().unwrap()])
        .build()
        .unwrap()
}

/// One request: headers (a name given twice is sent as two fields), its
/// target, its peer address, and what must come back.
struct Case {
    headers: &'static [(&'static str, &'static str)],
    uri: &'static str,
    peer: Option<&'static str>,
    status: u16,
    body: &'static str,
}

/// A case's defaults: origin-form target `/`, no known peer.
const PLAIN: Case = Case {
    headers: &[],
    uri: "/",
    peer: None,
    status: 0,
    body: "",
};

const CASES: &[Case] = &[
    Case {
        headers: &[("host", "acme.example.com")],
        status: 200,
        body: "tenant acme sees [\"acme\"]",
        ..PLAIN
    },
    Case {
        headers: &[("host", "globex.example.com")],
        status: 200,
        body: "tenant globex sees [\"globex\"]",
        ..PLAIN
    },
    Case {
        headers: &[("host", "example.com")],
        status: 200,
        body: "public site",
        ..PLAIN
    },
    Case {
        headers: &[("host", "nobody.example.com")],
        status: 404,
        body: "404 Not Found",
        ..PLAIN
    },
    Case {
        headers: &[("host", "ACME.Example.COM:8443")],
        status: 200,
        body: "tenant acme",
        ..PLAIN
    },
    Case {
        headers: &[("host", "acme.example.com.")],
        status: 200,
        body: "tenant acme",
        ..PLAIN
    },
    Case {
        headers: &[("host", "xn--bcher-kva.example")],
        status: 200,
        body: "tenant globex",
        ..PLAIN
    },
    Case {
        headers: &[("host", "XN--BCHER-KVA.EXAMPLE:80")],
        status: 200,
        body: "tenant globex",
        ..PLAIN
    },
    Case {
        headers: &[("host", "acme..example.com")],
        status: 400,
        body: "bad request",
        ..PLAIN
    },
    Case {
        headers: &[("host", "acme.example.com:99999")],
        status: 400,
        body: "bad request",
        ..PLAIN
    },
    Case {
        headers: &[("host", "sleepy.example.com")],
        status: 503,
        body: "The site at sleepy.example.com is suspended",
        ..PLAIN
    },
    Case {
        headers: &[("host", "127.0.0.1:8000")],
        status: 404,
        body: "404",
        ..PLAIN
    },
    // Forwarded headers are ignored unless trusted.
    Case {
        headers: &[
            ("host", "proxy.internal"),
            ("x-forwarded-host", "acme.example.com"),
        ],
        status: 404,
        body: "404",
        ..PLAIN
    },
    Case {
        headers: &[
            ("host", "example.com"),
            ("forwarded", "host=acme.example.com"),
        ],
        status: 200,
        body: "public site",
        ..PLAIN
    },
    // An IPv6 literal is an IP host (404 by default), and raw UTF-8 in
    // `Host` is refused (clients send the punycode form).
    Case {
        headers: &[("host", "[::1]:8000")],
        status: 404,
        body: "404",
        ..PLAIN
    },
    Case {
        headers: &[("host", "bücher.example")],
        status: 400,
        body: "bad request",
        ..PLAIN
    },
    // A percent-escape that decodes to a tenant's host is refused, not
    // decoded (a proxy in front may not decode it).
    Case {
        headers: &[("host", "%61cme.example.com")],
        status: 400,
        body: "bad request",
        ..PLAIN
    },
    // Two Host fields: refused, whatever they say (RFC 9112 3.2).
    Case {
        headers: &[("host", "acme.example.com"), ("host", "globex.example.com")],
        status: 400,
        body: "bad request",
        ..PLAIN
    },
    Case {
        headers: &[("host", "acme.example.com"), ("host", "acme.example.com")],
        status: 400,
        body: "bad request",
        ..PLAIN
    },
    // An absolute-form target's authority wins over Host (RFC 9112 3.2.2).
    Case {
        headers: &[("host", "globex.example.com")],
        uri: "http://acme.example.com/",
        status: 200,
        body: "tenant acme sees [\"acme\"]",
        ..PLAIN
    },
    // Forwarded headers from a peer that is no trusted proxy: ignored.
    Case {
        headers: &[
            ("host", "example.com"),
            ("x-forwarded-host", "acme.example.com"),
        ],
        peer: Some("10.1.2.3"),
        status: 200,
        body: "public site",
        ..PLAIN
    },
];

/// With `trusted_proxies(10.0.0.0/8)`.
const TRUSTED_CASES: &[Case] = &[
    // From a trusted proxy: the value it set, the last; a client's forged
    // value before it is ignored.
    Case {
        headers: &[
            ("host", "proxy.internal"),
            ("x-forwarded-host", "evil.example.com, acme.example.com"),
        ],
        peer: Some("10.1.2.3"),
        status: 200,
        body: "tenant acme",
        ..PLAIN
    },
    Case {
        headers: &[
            ("host", "proxy.internal"),
            ("x-forwarded-host", "globex.example.com"),
            ("x-forwarded-host", "acme.example.com"),
        ],
        peer: Some("10.1.2.3"),
        status: 200,
        body: "tenant acme",
        ..PLAIN
    },
    Case {
        headers: &[
            ("host", "proxy.internal"),
            (
                "forwarded",
                "host=evil.example.com, for=10.0.0.1;host=globex.example.com",
            ),
        ],
        peer: Some("::ffff:10.9.9.9"),
        status: 200,
        body: "tenant globex",
        ..PLAIN
    },
    // From any other peer, or an unknown one: Host decides.
    Case {
        headers: &[
            ("host", "example.com"),
            ("x-forwarded-host", "acme.example.com"),
        ],
        peer: Some("203.0.113.9"),
        status: 200,
        body: "public site",
        ..PLAIN
    },
    Case {
        headers: &[
            ("host", "example.com"),
            ("x-forwarded-host", "acme.example.com"),
        ],
        status: 200,
        body: "public site",
        ..PLAIN
    },
];

fn body_for(tenant: Option<&diesel_tenancy::Tenant>, seen: Vec<String>) -> String {
    match tenant {
        Some(t) => format!("tenant {} sees {seen:?}", t.schema()),
        None => "public site".to_owned(),
    }
}

fn axum_app(resolver: Resolver) -> axum::Router {
    use axum::routing::get;
    let public = axum::Router::new().route("/", get(|| async { "public site" }));
    let tenant = axum::Router::new().route(
        "/",
        get(|db: am::TenantDb| async move {
            let seen = db.run(markers).await.unwrap().unwrap();
            body_for(db.tenant(), seen)
        }),
    );
    am::tenant_routing(public, tenant, am::TenancyLayer::new(resolver))
}

async fn axum_call(app: &axum::Router, headers: &[(&str, &str)]) -> (u16, String) {
    axum_request(app, headers, "/", None).await
}

async fn axum_request(
    app: &axum::Router,
    headers: &[(&str, &str)],
    uri: &str,
    peer: Option<&str>,
) -> (u16, String) {
    let mut req = Request::builder().uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut req = req.body(Body::empty()).unwrap();
    if let Some(peer) = peer {
        let addr = std::net::SocketAddr::new(peer.parse().unwrap(), 40000);
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(addr));
    }
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn check(adapter: &str, case: &Case, (status, body): (u16, String)) {
    assert_eq!(status, case.status, "{adapter} {:?}: {body}", case.headers);
    assert!(
        body.contains(case.body),
        "{adapter} {:?}: {body:?} lacks {:?}",
        case.headers,
        case.body
    );
    // No data where it must not be: a tenant page shows that tenant's rows
    // and no one else's, and an error shows neither tenant nor public data.
    if let Some(rest) = body.strip_prefix("tenant ") {
        let (tenant, seen) = rest.split_once(" sees ").unwrap_or((rest, ""));
        assert_eq!(
            seen,
            format!("[\"{tenant}\"]"),
            "{adapter} {:?}: another tenant's data in {body:?}",
            case.headers
        );
    }
    if status != 200 {
        assert!(
            !body.contains(" sees ") && !body.contains("public site"),
            "{adapter} {:?}: data in an error: {body:?}",
            case.headers
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_routes_by_host() {
    let (_db, pool) = world();
    let app = axum_app(resolver(&pool).build().unwrap());
    for case in CASES {
        check(
            "axum",
            case,
            axum_request(&app, case.headers, case.uri, case.peer).await,
        );
    }
    let trusted = axum_app(trusted_resolver(&pool));
    for case in TRUSTED_CASES {
        check(
            "axum trusted",
            case,
            axum_request(&trusted, case.headers, case.uri, case.peer).await,
        );
    }
}

mod actix_app {
    use super::*;
    use actix_web::{App, test, web};

    async fn handler(db: ax::TenantDb) -> String {
        if db.tenant().is_none() {
            return body_for(None, Vec::new());
        }
        let seen = db.run(markers).await.unwrap().unwrap();
        body_for(db.tenant(), seen)
    }

    pub(super) async fn run_cases(resolver: Resolver, cases: &[Case]) {
        let app = test::init_service(
            App::new()
                .wrap(ax::Tenancy::new(resolver))
                .route("/", web::get().to(handler))
                .route(
                    "/whoami",
                    web::get().to(|t: ax::CurrentTenant| async move { t.0.schema().to_string() }),
                ),
        )
        .await;
        for case in cases {
            let mut req = test::TestRequest::get().uri(case.uri);
            for (k, v) in case.headers {
                req = req.append_header((*k, *v));
            }
            if let Some(peer) = case.peer {
                req = req.peer_addr(std::net::SocketAddr::new(peer.parse().unwrap(), 40000));
            }
            let res = test::call_service(&app, req.to_request()).await;
            let status = res.status().as_u16();
            let body = test::read_body(res).await;
            check(
                "actix",
                case,
                (status, String::from_utf8_lossy(&body).into_owned()),
            );
        }
        // The tenant extractor refuses public requests.
        let req = test::TestRequest::get()
            .uri("/whoami")
            .insert_header(("host", "example.com"))
            .to_request();
        assert_eq!(test::call_service(&app, req).await.status().as_u16(), 404);
    }

    /// Health checks on any host (an IP included), JSON 404s, the listener
    /// owned by the middleware, and the crate's error as a response.
    #[actix_web::test]
    async fn actix_bypass_json_not_found_and_error_responses() {
        let (_db, pool) = world();
        let tenancy = ax::Tenancy::new(resolver(&pool).build().unwrap())
            .bypass_path("/healthz")
            .not_found_json()
            .listen()
            .unwrap();
        let app = test::init_service(
            App::new()
                .wrap(tenancy)
                .route("/healthz", web::get().to(|| async { "ok" }))
                .route(
                    "/missing",
                    web::get().to(|db: ax::TenantDb| async move {
                        db.try_run(|_| {
                            Err::<String, _>(diesel_tenancy::Error::TenantNotFound {
                                schema: "nobody".into(),
                            })
                        })
                        .await
                    }),
                ),
        )
        .await;
        let call = |host: &'static str, uri: &'static str| {
            test::TestRequest::get()
                .uri(uri)
                .insert_header(("host", host))
                .to_request()
        };
        let res = test::call_service(&app, call("10.0.0.7", "/healthz")).await;
        assert_eq!(res.status().as_u16(), 200);
        assert_eq!(test::read_body(res).await, "ok");
        let res = test::call_service(&app, call("nobody.example.com", "/healthz")).await;
        assert_eq!(res.status().as_u16(), 200);
        let res = test::call_service(&app, call("nobody.example.com", "/")).await;
        assert_eq!(res.status().as_u16(), 404);
        assert_eq!(
            test::read_body(res).await,
            r#"{"error":"not_found","host":"nobody.example.com"}"#
        );
        let res = test::call_service(&app, call("example.com", "/missing")).await;
        assert_eq!(res.status().as_u16(), 404);
    }

    #[actix_web::test]
    async fn actix_routes_by_host() {
        let (_db, pool) = world();
        run_cases(resolver(&pool).build().unwrap(), CASES).await;
        run_cases(trusted_resolver(&pool), TRUSTED_CASES).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_domain_routes_to_its_new_owner_at_once() {
    let (_db, pool) = world();
    let app = axum_app(resolver(&pool).build().unwrap());
    let host = [("host", "shared.example.com")];
    assert!(axum_call(&app, &host).await.1.contains("tenant acme"));
    // Moved through the registry API in this process: the next request follows.
    let mut conn = pool.public().unwrap();
    let globex = registry::get_tenant(&mut conn, &SchemaName::new("globex").unwrap()).unwrap();
    registry::remove_domain(&mut conn, &domain("shared.example.com")).unwrap();
    registry::add_domain(&mut conn, &globex, &domain("shared.example.com"), false).unwrap();
    drop(conn);
    assert!(axum_call(&app, &host).await.1.contains("tenant globex"));
}

#[test]
fn fallbacks_prefixes_and_ip_hosts() {
    let (_db, pool) = world();
    // A default tenant instead of 404.
    let r = resolver(&pool)
        .default_tenant(SchemaName::new("acme").unwrap())
        .build()
        .unwrap();
    assert_eq!(
        tenant_of(r.resolve(&info("nobody.example.com")).unwrap()).as_deref(),
        Some("acme")
    );
    // Hosts outside every base domain get 400.
    let r = resolver(&pool)
        .base_domain(domain("example.com"))
        .build()
        .unwrap();
    assert!(matches!(
        r.resolve(&info("evil.test")).unwrap(),
        Resolution::BadRequest { .. }
    ));
    assert!(matches!(
        r.resolve(&info("notexample.com")).unwrap(),
        Resolution::BadRequest { .. }
    ));
    assert!(matches!(
        r.resolve(&info("nobody.example.com")).unwrap(),
        Resolution::NotFound { .. }
    ));
    // IP hosts: public site by configuration.
    let r = resolver(&pool).ip_hosts(IpHosts::Public).build().unwrap();
    assert_eq!(
        r.resolve(&info("127.0.0.1:8000")).unwrap(),
        Resolution::Public
    );
    assert_eq!(r.resolve(&info("[::1]:8000")).unwrap(), Resolution::Public);
    // Path prefixes on the public host.
    let r = resolver(&pool).path_prefix("/t/").build().unwrap();
    let prefixed = RequestInfo {
        host: Some("example.com"),
        path: "/t/globex/products",
        ..RequestInfo::default()
    };
    match r.resolve(&prefixed).unwrap() {
        Resolution::Tenant {
            tenant,
            strip_prefix,
        } => {
            assert_eq!(tenant.schema().as_str(), "globex");
            assert_eq!(&prefixed.path[strip_prefix.unwrap()..], "/products");
        }
        other => panic!("{other:?}"),
    }
    let unknown = RequestInfo {
        path: "/t/nobody/",
        ..prefixed
    };
    assert!(matches!(
        r.resolve(&unknown).unwrap(),
        Resolution::NotFound { .. }
    ));
    let bad = RequestInfo {
        path: "/t/Bad;Name/",
        ..prefixed
    };
    assert!(matches!(
        r.resolve(&bad).unwrap(),
        Resolution::NotFound { .. }
    ));
    // Bad input never panics and is never looked up.
    for host in [
        "",
        " ",
        "a\u{0}b",
        &"a".repeat(8192),
        "[::1",
        "acme.example.com:",
    ] {
        assert!(
            matches!(
                r.resolve(&info(host)).unwrap(),
                Resolution::BadRequest { .. }
            ),
            "{host:?}"
        );
    }
    let none = RequestInfo {
        host: None,
        path: "/",
        ..RequestInfo::default()
    };
    assert!(matches!(
        r.resolve(&none).unwrap(),
        Resolution::BadRequest { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_strips_the_path_prefix() {
    use axum::routing::get;
    let (_db, pool) = world();
    let r = resolver(&pool).path_prefix("/t/").build().unwrap();
    let public = axum::Router::new().route("/", get(|| async { "public site" }));
    let tenant = axum::Router::new().route(
        "/products",
        get(|am::CurrentTenant(t): am::CurrentTenant| async move {
            format!("products of {}", t.schema())
        }),
    );
    let app = am::tenant_routing(public, tenant, am::TenancyLayer::new(r));
    let res = app
        .oneshot(
            Request::builder()
                .uri("/t/acme/products?page=2")
                .header("host", "example.com")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"products of acme");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_async_connection_extractor_and_task_tenant() {
    use axum::routing::get;
    use diesel::prelude::QueryDsl;
    use diesel_async::RunQueryDsl;
    let (db, pool) = tokio::task::block_in_place(world);
    let async_pool = diesel_tenancy::AsyncTenantPool::builder(db.url())
        .max_size(2)
        .build()
        .unwrap();
    let tenant = axum::Router::new().route(
        "/",
        get(|mut conn: am::TenantConn| async move {
            let seen: Vec<String> = common::customers::table
                .select(common::customers::name)
                .load(&mut **conn)
                .await
                .unwrap();
            let task = diesel_tenancy::current_tenant().map(|t| t.schema().to_string());
            format!("{seen:?} task {task:?}")
        }),
    );
    let public = axum::Router::new().route("/", get(|| async { "public site" }));
    let layer = am::TenancyLayer::new(resolver(&pool).build().unwrap()).async_pool(async_pool);
    let app = am::tenant_routing(public, tenant, layer);
    for schema in ["acme", "globex", "acme"] {
        let host = format!("{schema}.example.com");
        let (status, body) = axum_call(&app, &[("host", &host)]).await;
        assert_eq!(status, 200);
        assert_eq!(body, format!("[\"{schema}\"] task Some(\"{schema}\")"));
    }
}

/// The axum layer's JSON 404 and the crate's error as an axum response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_json_not_found_and_error_responses() {
    use axum::routing::get;
    let (_db, pool) = world();
    let public = axum::Router::new().route(
        "/",
        get(|db: am::TenantDb| async move {
            db.try_run(|_| {
                Err::<String, _>(diesel_tenancy::Error::TenantSuspended {
                    schema: "acme".into(),
                })
            })
            .await
        }),
    );
    let layer = am::TenancyLayer::new(resolver(&pool).build().unwrap()).not_found_json();
    let app = am::tenant_routing(public, axum::Router::new(), layer);
    assert_eq!(
        axum_call(&app, &[("host", "nobody.example.com")]).await,
        (
            404,
            r#"{"error":"not_found","host":"nobody.example.com"}"#.to_string()
        )
    );
    assert_eq!(
        axum_call(&app, &[("host", "sleepy.example.com")]).await,
        (
            503,
            r#"{"error":"suspended","host":"sleepy.example.com"}"#.to_string()
        )
    );
    assert_eq!(
        axum_call(&app, &[("host", "example.com")]).await,
        (503, "service unavailable".to_string())
    );
}

/// Every identification strategy, through both adapters: a header, a
/// subdomain of a base domain without a domain row, a function over the
/// request (an API key), and the public site when nothing matches.
mod strategies {
    use super::*;
    use diesel_tenancy::Strategy;

    /// The world, plus tenant `bare`, which has no domain row.
    fn world_with_bare() -> (diesel_tenancy::testing::TestDatabase, TenantPool) {
        let (db, pool) = world();
        let bare = create_tenant(
            &mut pool.public().unwrap(),
            &NewTenant::new(SchemaName::new("bare").unwrap(), "bare"),
            TENANT,
        )
        .unwrap();
        pool.with_tenant(&bare, |conn| {
            conn.batch_execute("INSERT INTO customers (name, email) VALUES ('bare', 'o@bare.test')")
        })
        .unwrap();
        (db, pool)
    }

    fn chain(pool: &TenantPool) -> Resolver {
        resolver(pool)
            .strategies([
                Strategy::header("X-Tenant"),
                Strategy::custom(|req| {
                    req.header("x-api-key").map(|key| {
                        key.strip_prefix("key-")
                            .and_then(|s| SchemaName::new(s).ok())
                            .ok_or_else(|| "unknown API key".to_owned())
                    })
                }),
                Strategy::subdomain(domain("apps.example.com"), ["www"]),
                Strategy::Host,
            ])
            .build()
            .unwrap()
    }

    const CASES: &[Case] = &[
        // The header names the tenant, whatever the host.
        Case {
            headers: &[("host", "example.com"), ("x-tenant", "globex")],
            status: 200,
            body: "tenant globex sees [\"globex\"]",
            ..PLAIN
        },
        Case {
            headers: &[("host", "acme.example.com"), ("x-tenant", "bare")],
            status: 200,
            body: "tenant bare sees [\"bare\"]",
            ..PLAIN
        },
        Case {
            headers: &[("host", "example.com"), ("x-tenant", "nobody")],
            status: 404,
            body: "404",
            ..PLAIN
        },
        Case {
            headers: &[("host", "example.com"), ("x-tenant", "sleepy")],
            status: 503,
            body: "suspended",
            ..PLAIN
        },
        Case {
            headers: &[("host", "example.com"), ("x-tenant", "Robert'); DROP")],
            status: 400,
            body: "bad request",
            ..PLAIN
        },
        // The function: an API key.
        Case {
            headers: &[("host", "example.com"), ("x-api-key", "key-acme")],
            status: 200,
            body: "tenant acme sees [\"acme\"]",
            ..PLAIN
        },
        Case {
            headers: &[("host", "example.com"), ("x-api-key", "stolen")],
            status: 400,
            body: "unknown API key",
            ..PLAIN
        },
        // A subdomain of the base names the schema, no domain row needed.
        Case {
            headers: &[("host", "bare.apps.example.com")],
            status: 200,
            body: "tenant bare sees [\"bare\"]",
            ..PLAIN
        },
        Case {
            headers: &[("host", "www.apps.example.com")],
            status: 200,
            body: "public site",
            ..PLAIN
        },
        Case {
            headers: &[("host", "nobody.apps.example.com")],
            status: 404,
            body: "404",
            ..PLAIN
        },
        // Nothing identifies a tenant: the host decides, as before.
        Case {
            headers: &[("host", "acme.example.com")],
            status: 200,
            body: "tenant acme sees [\"acme\"]",
            ..PLAIN
        },
        Case {
            headers: &[("host", "nobody.example.com")],
            status: 404,
            body: "404",
            ..PLAIN
        },
    ];

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn axum_strategies() {
        let (_db, pool) = world_with_bare();
        let app = axum_app(chain(&pool));
        for case in CASES {
            check(
                "axum",
                case,
                axum_request(&app, case.headers, case.uri, case.peer).await,
            );
        }
        // Public instead of 404 when nothing matches.
        let lenient = axum_app(
            resolver(&pool)
                .show_public_if_no_tenant(true)
                .build()
                .unwrap(),
        );
        assert_eq!(
            axum_call(&lenient, &[("host", "nobody.example.com")]).await,
            (200, "public site".to_owned())
        );
    }

    #[actix_web::test]
    async fn actix_strategies() {
        let (_db, pool) = world_with_bare();
        actix_app::run_cases(chain(&pool), CASES).await;
    }
}

/// The test clients: requests sent as a tenant's host reach that tenant, in
/// both adapters, with the host `testing::create_tenant` registers.
mod test_clients {
    use super::*;
    use diesel_tenancy::testing;

    fn one_tenant() -> (
        diesel_tenancy::testing::TestDatabase,
        TenantPool,
        diesel_tenancy::Tenant,
    ) {
        let (db, pool) = setup(2);
        let t = testing::create_tenant(&pool, "tclient", TENANT).unwrap();
        pool.with_tenant(&t, |conn| {
            conn.batch_execute("INSERT INTO customers (name, email) VALUES ('tclient', 'o@t.test')")
        })
        .unwrap();
        (db, pool, t)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn axum_tenant_client() {
        let (_db, pool, t) = one_tenant();
        let app = axum_app(Resolver::builder(pool.clone()).build().unwrap());
        let client = am::TenantClient::new(app.clone(), testing::tenant_host(&t));
        let page = client.get("/").await;
        assert_eq!(page.status, 200, "{}", page.body);
        assert_eq!(page.body, "tenant tclient sees [\"tclient\"]");
        // A form post reaches the tenant router (which has no POST route).
        let posted = client.post_form("/", &[("name", "x")]).await;
        assert_eq!(posted.status, 405);
        let nobody = am::TenantClient::new(app, "nobody.test.localhost");
        assert_eq!(nobody.get("/").await.status, 404);
    }

    #[actix_web::test]
    async fn actix_tenant_requests() {
        use actix_web::{App, test, web};
        let (_db, pool, t) = one_tenant();
        let app = test::init_service(
            App::new()
                .wrap(ax::Tenancy::new(
                    Resolver::builder(pool.clone()).build().unwrap(),
                ))
                .route(
                    "/",
                    web::get().to(|db: ax::TenantDb| async move {
                        let seen = db.run(markers).await.unwrap().unwrap();
                        body_for(db.tenant(), seen)
                    }),
                ),
        )
        .await;
        let tenant = ax::TenantRequests::new(testing::tenant_host(&t));
        let res = test::call_service(&app, tenant.get("/").to_request()).await;
        assert_eq!(res.status().as_u16(), 200);
        let body = test::read_body(res).await;
        assert_eq!(&body[..], b"tenant tclient sees [\"tclient\"]");
        let nobody = ax::TenantRequests::new("nobody.test.localhost");
        let res = test::call_service(&app, nobody.get("/").to_request()).await;
        assert_eq!(res.status().as_u16(), 404);
    }
}

/// actix at parity with axum: the public/tenant split by guards, custom
/// not-found and suspended pages, the async connection extractor and the
/// task-local tenant.
mod actix_parity {
    use super::*;
    use actix_web::{App, HttpResponse, test, web};

    #[actix_web::test]
    async fn actix_split_pages_async_connections_and_the_task_tenant() {
        let (db, pool) = world();
        let apool = diesel_tenancy::AsyncTenantPool::builder(db.url())
            .max_size(2)
            .build()
            .unwrap();
        let tenancy = ax::Tenancy::new(resolver(&pool).build().unwrap())
            .async_pool(apool)
            .not_found_page(|host| HttpResponse::NotFound().body(format!("no {host} here")))
            .suspended_page(|tenant, _| {
                HttpResponse::ServiceUnavailable().body(format!("{} is resting", tenant.schema()))
            });
        let app = test::init_service(
            App::new()
                .wrap(tenancy)
                .service(web::scope("").guard(ax::tenant_guard()).route(
                    "/",
                    web::get().to(|mut conn: ax::TenantConn| async move {
                        use diesel::QueryDsl;
                        let query = common::customers::table.select(common::customers::name);
                        let names: Vec<String> =
                            diesel_async::RunQueryDsl::load(query, &mut **conn)
                                .await
                                .unwrap();
                        let task = diesel_tenancy::current_tenant()
                            .map(|t| t.schema().to_string())
                            .unwrap_or_default();
                        format!("tenant {} task {task}", names.join(","))
                    }),
                ))
                .service(
                    web::scope("")
                        .guard(ax::public_guard())
                        .route("/", web::get().to(|| async { "public site" })),
                ),
        )
        .await;
        for (host, status, body) in [
            ("acme.example.com", 200, "tenant acme task acme"),
            ("globex.example.com", 200, "tenant globex task globex"),
            ("example.com", 200, "public site"),
            ("nobody.example.com", 404, "no nobody.example.com here"),
            ("sleepy.example.com", 503, "sleepy is resting"),
        ] {
            let res =
                test::call_service(&app, ax::TenantRequests::new(host).get("/").to_request()).await;
            assert_eq!(res.status().as_u16(), status, "{host}");
            let got = test::read_body(res).await;
            assert_eq!(String::from_utf8_lossy(&got), body, "{host}");
        }
    }
}

/// `redirect_to_primary_domain`: a secondary domain answers 308 to the same
/// path on the primary one, in both adapters and through the async lookup.
mod redirects {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn secondary_domains_redirect_to_the_primary_one() {
        let (db, pool) = world();
        let app = axum_app(
            resolver(&pool)
                .redirect_to_primary_domain(true)
                .build()
                .unwrap(),
        );
        let shared = am::TenantClient::new(app.clone(), "shared.example.com");
        let moved = shared.get("/products?page=2").await;
        assert_eq!(moved.status, 308);
        assert_eq!(
            moved.headers["location"],
            "//acme.example.com/products?page=2"
        );
        let primary = am::TenantClient::new(app, "acme.example.com")
            .get("/")
            .await;
        assert_eq!(primary.status, 200);
        assert!(primary.body.contains("tenant acme"));

        // The async pool's lookup alike.
        let apool = diesel_tenancy::AsyncTenantPool::builder(db.url())
            .max_size(2)
            .build()
            .unwrap();
        let resolver = Resolver::builder(apool)
            .public_domain(domain("example.com"))
            .redirect_to_primary_domain(true)
            .build()
            .unwrap();
        let info = |host| RequestInfo {
            host: Some(host),
            path: "/",
            ..RequestInfo::default()
        };
        match resolver
            .resolve_async(&info("bücher.example"))
            .await
            .unwrap()
        {
            Resolution::Redirect { to, tenant } => {
                assert_eq!(to.as_str(), "globex.example.com");
                assert_eq!(tenant.schema().as_str(), "globex");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            resolver
                .resolve_async(&info("globex.example.com"))
                .await
                .unwrap(),
            Resolution::Tenant { .. }
        ));
    }

    #[actix_web::test]
    async fn actix_redirects_too() {
        use actix_web::{App, test};
        let (_db, pool) = world();
        let app = test::init_service(
            App::new()
                .wrap(ax::Tenancy::new(
                    resolver(&pool)
                        .redirect_to_primary_domain(true)
                        .build()
                        .unwrap(),
                ))
                .route("/", actix_web::web::get().to(|| async { "ok" })),
        )
        .await;
        let req = ax::TenantRequests::new("shared.example.com")
            .get("/x?y=1")
            .to_request();
        let res = test::call_service(&app, req).await;
        assert_eq!(res.status().as_u16(), 308, "{:?}", res.headers());
        assert_eq!(
            res.headers().get("location").and_then(|v| v.to_str().ok()),
            Some("//acme.example.com/x?y=1")
        );
    }
}
