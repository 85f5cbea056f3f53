//! axum integration: a tower layer that resolves the tenant once per request,
//! extractors for the tenant and a tenant-scoped connection, and a helper that
//! serves a public router for public hosts and a tenant router for tenant hosts.
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use diesel_tenancy::web::axum::{CurrentTenant, TenancyLayer, tenant_routing};
//! use diesel_tenancy::{Domain, Resolver, TenantPool};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = TenantPool::builder("postgres://localhost/app").build()?;
//! let resolver = Resolver::builder(pool)
//!     .public_domain(Domain::parse("example.com")?)
//!     .build()?;
//! let public = Router::new().route("/", get(|| async { "the public site" }));
//! let tenant = Router::new().route(
//!     "/",
//!     get(|CurrentTenant(t): CurrentTenant| async move { format!("hello {}", t.name()) }),
//! );
//! let app = tenant_routing(public, tenant, TenancyLayer::new(resolver));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```

mod test_client;

pub use test_client::{TenantClient, TestResponse};

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts, Request};
use axum::http::header::{self, HeaderValue};
use axum::http::request::Parts;
use axum::http::{StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
#[cfg(feature = "sync")]
use diesel::pg::PgConnection;
use tower::{Layer, Service, ServiceExt};
use tracing::Instrument;

use super::{OwnedRequestInfo, not_found_html};
#[cfg(feature = "sync")]
use crate::TenantPool;
use crate::{Error, Resolution, Resolver, Tenant};

type NotFoundPage = Arc<dyn Fn(&str) -> Response + Send + Sync>;
type SuspendedPage = Arc<dyn Fn(&Tenant, &str) -> Response + Send + Sync>;

/// Resolves each request's tenant (see [`Resolver`]) and puts it in the request
/// extensions; answers 404 (or the configured page) for hosts with no tenant,
/// 400 for malformed hosts, and 503 if the registry cannot be read.
#[derive(Clone)]
pub struct TenancyLayer {
    resolver: Resolver,
    not_found: Option<NotFoundPage>,
    suspended: Option<SuspendedPage>,
    /// Paths answered by the public router for every host, unresolved.
    bypass: Arc<Vec<String>>,
    /// The registry listener, kept running as long as a clone of the layer
    /// (the app's router) lives.
    listener: Option<Arc<crate::ListenerGuard>>,
    #[cfg(any(feature = "deadpool", feature = "bb8"))]
    async_pool: Option<crate::AsyncTenantPool>,
}

impl std::fmt::Debug for TenancyLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenancyLayer")
            .field("resolver", &self.resolver)
            .finish_non_exhaustive()
    }
}

impl TenancyLayer {
    /// A layer resolving through `resolver`.
    pub fn new(resolver: Resolver) -> Self {
        TenancyLayer {
            resolver,
            not_found: None,
            suspended: None,
            bypass: Arc::new(Vec::new()),
            listener: None,
            #[cfg(any(feature = "deadpool", feature = "bb8"))]
            async_pool: None,
        }
    }

    /// The async pool the [`TenantConn`] extractor checks connections out of.
    /// Defaults to the resolver's, when it was built on an async pool.
    #[cfg(any(feature = "deadpool", feature = "bb8"))]
    #[cfg_attr(docsrs, doc(cfg(any(feature = "deadpool", feature = "bb8"))))]
    pub fn async_pool(mut self, pool: crate::AsyncTenantPool) -> Self {
        self.async_pool = Some(pool);
        self
    }

    /// Requests for exactly this path skip tenant resolution and reach the
    /// inner service as public requests, whatever their host: for health
    /// checks, which load balancers send to the server's IP address (an IP
    /// host otherwise gets the tenant 404, see [`IpHosts`](crate::IpHosts)).
    /// With [`tenant_routing`], put the route on the public router.
    /// Repeatable; defaults to none.
    pub fn bypass_path(mut self, path: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.bypass).push(path.into());
        self
    }

    /// Starts the resolver's registry listener ([`Resolver::listen`]) and keeps
    /// it running for as long as this layer or a clone of it lives, that is,
    /// as long as the app's router does. Fails if the listener cannot connect.
    pub fn listen(mut self) -> Result<Self, Error> {
        self.listener = Some(Arc::new(self.resolver.listen()?));
        Ok(self)
    }

    /// Answers hosts that serve no tenant with a JSON body,
    /// `{"error":"not_found","host":"..."}` (404), and suspended tenants'
    /// hosts with `{"error":"suspended","host":"..."}` (503), for API services.
    pub fn not_found_json(self) -> Self {
        let json = |status, body| {
            (
                status,
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                body,
            )
                .into_response()
        };
        self.suspended_page(move |_, host| {
            json(StatusCode::SERVICE_UNAVAILABLE, super::suspended_json(host))
        })
        .not_found_page(move |host| json(StatusCode::NOT_FOUND, super::not_found_json(host)))
    }

    /// The response for a suspended tenant's hosts (given the tenant and the
    /// normalised host). Defaults to a plain 503 page saying the site is
    /// suspended.
    pub fn suspended_page(
        mut self,
        page: impl Fn(&Tenant, &str) -> Response + Send + Sync + 'static,
    ) -> Self {
        self.suspended = Some(Arc::new(page));
        self
    }

    /// The response for hosts that serve no tenant (given the normalised host).
    /// Defaults to a plain 404 page.
    pub fn not_found_page(
        mut self,
        page: impl Fn(&str) -> Response + Send + Sync + 'static,
    ) -> Self {
        self.not_found = Some(Arc::new(page));
        self
    }
}

impl<S> Layer<S> for TenancyLayer {
    type Service = TenancyService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        TenancyService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`TenancyLayer`] wraps around an inner service.
#[derive(Clone, Debug)]
pub struct TenancyService<S> {
    inner: S,
    layer: TenancyLayer,
}

/// What the layer found, in the request extensions of every request it lets
/// through: the pools and the tenant (`None` on public hosts).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RequestScope {
    /// The blocking pool ([`TenantDb`] uses it), if the resolver has one.
    #[cfg(feature = "sync")]
    pub pool: Option<TenantPool>,
    /// The request's tenant, or `None` for the public site.
    pub tenant: Option<Tenant>,
    /// The async pool, if the layer has one.
    #[cfg(any(feature = "deadpool", feature = "bb8"))]
    pub async_pool: Option<crate::AsyncTenantPool>,
}

fn request_info(req: &Request, resolver: &Resolver) -> OwnedRequestInfo {
    let headers = if resolver.wants_headers() {
        req.headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    v.to_str().unwrap_or("\u{fffd}").to_owned(),
                )
            })
            .collect()
    } else {
        Vec::new()
    };
    OwnedRequestInfo::from_request(
        |name| {
            req.headers()
                .get_all(name)
                .iter()
                .map(|v: &HeaderValue| v.to_str().unwrap_or("\u{fffd}").to_owned())
                .collect()
        },
        req.uri().authority().map(|a| a.as_str().to_owned()),
        req.extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip()),
        req.uri().path().to_owned(),
        headers,
    )
}

fn strip_prefix(req: &mut Request, len: usize) {
    let uri = req.uri();
    let path = OwnedRequestInfo::stripped_path(uri.path(), len);
    let path_and_query = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    if let Ok(pq) = path_and_query.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

impl<S> Service<Request> for TenancyService<S>
where
    S: Service<Request, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let layer = self.layer.clone();
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let info = request_info(&req, &layer.resolver);
            let bypassed = layer.bypass.iter().any(|p| p == req.uri().path());
            let resolution = super::resolve(&layer.resolver, info, bypassed).await;
            #[cfg(feature = "sync")]
            let pool = layer.resolver.pool().cloned();
            #[cfg(any(feature = "deadpool", feature = "bb8"))]
            let async_pool = layer
                .async_pool
                .clone()
                .or_else(|| layer.resolver.async_pool().cloned());
            match resolution {
                Ok(Resolution::Tenant {
                    tenant,
                    strip_prefix: prefix,
                }) => {
                    if let Some(len) = prefix {
                        strip_prefix(&mut req, len);
                    }
                    let span = tracing::info_span!("tenant_request", tenant = %tenant.schema());
                    req.extensions_mut().insert(CurrentTenant(tenant.clone()));
                    req.extensions_mut().insert(RequestScope {
                        #[cfg(feature = "sync")]
                        pool,
                        tenant: Some(tenant.clone()),
                        #[cfg(any(feature = "deadpool", feature = "bb8"))]
                        async_pool,
                    });
                    let call = inner.call(req).instrument(span);
                    #[cfg(any(feature = "deadpool", feature = "bb8"))]
                    let call = crate::with_current_tenant(tenant, call);
                    #[cfg(not(any(feature = "deadpool", feature = "bb8")))]
                    let _ = tenant;
                    call.await
                }
                Ok(Resolution::Public) => {
                    let span = tracing::info_span!("tenant_request", tenant = "public");
                    req.extensions_mut().insert(RequestScope {
                        #[cfg(feature = "sync")]
                        pool,
                        tenant: None,
                        #[cfg(any(feature = "deadpool", feature = "bb8"))]
                        async_pool,
                    });
                    inner.call(req).instrument(span).await
                }
                Ok(Resolution::NotFound { host }) => Ok(match &layer.not_found {
                    Some(page) => page(&host),
                    None => (StatusCode::NOT_FOUND, Html(not_found_html(&host))).into_response(),
                }),
                Ok(Resolution::Suspended { tenant, host }) => Ok(match &layer.suspended {
                    Some(page) => page(&tenant, &host),
                    None => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        Html(super::suspended_html(&host)),
                    )
                        .into_response(),
                }),
                Ok(Resolution::Redirect { to, .. }) => {
                    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
                    Ok((
                        StatusCode::PERMANENT_REDIRECT,
                        [(header::LOCATION, super::redirect_location(&to, target))],
                    )
                        .into_response())
                }
                Ok(Resolution::BadRequest { reason }) => {
                    Ok((StatusCode::BAD_REQUEST, format!("bad request: {reason}")).into_response())
                }
                Err(e) => {
                    tracing::error!(error = %crate::error::error_chain(&e), "tenant resolution failed");
                    Ok((StatusCode::SERVICE_UNAVAILABLE, "service unavailable").into_response())
                }
            }
        })
    }
}

/// The request's tenant. Rejects with 404 on public hosts (and 500 if the
/// [`TenancyLayer`] is missing).
#[derive(Debug, Clone)]
pub struct CurrentTenant(pub Tenant);

impl<S: Send + Sync> FromRequestParts<S> for CurrentTenant {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<CurrentTenant>() {
            Some(t) => Ok(t.clone()),
            None if parts.extensions.get::<RequestScope>().is_some() => {
                Err((StatusCode::NOT_FOUND, "not found").into_response())
            }
            None => Err(missing_layer()),
        }
    }
}

fn missing_layer() -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        "the TenancyLayer is not installed on this route",
    )
        .into_response()
}

/// A database handle scoped to the request: the tenant's schema on tenant hosts,
/// `public` on public hosts. Diesel is synchronous, so work runs on a blocking
/// thread through [`TenantDb::run`]. Needs a resolver built on a
/// [`TenantPool`] (rejects with 500 otherwise; with an async pool, use
/// [`TenantConn`]).
#[cfg(feature = "sync")]
#[derive(Debug, Clone)]
pub struct TenantDb {
    pool: TenantPool,
    tenant: Option<Tenant>,
}

#[cfg(feature = "sync")]
impl<S: Send + Sync> FromRequestParts<S> for TenantDb {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let scope = parts
            .extensions
            .get::<RequestScope>()
            .ok_or_else(missing_layer)?;
        let pool = scope.pool.clone().ok_or_else(|| {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "TenantDb needs a resolver on a TenantPool; this one has an async pool (use TenantConn)",
            )
                .into_response()
        })?;
        Ok(TenantDb {
            pool,
            tenant: scope.tenant.clone(),
        })
    }
}

#[cfg(feature = "sync")]
impl TenantDb {
    /// The request's tenant, or `None` on the public site.
    pub fn tenant(&self) -> Option<&Tenant> {
        self.tenant.as_ref()
    }

    /// The pool.
    pub fn pool(&self) -> &TenantPool {
        &self.pool
    }

    /// [`run`](Self::run) with the two errors in one: the closure's error
    /// type also takes the crate's, so a handler needs one `?`:
    /// `db.try_run(|conn| notes.load(conn)).await?` where the handler returns
    /// `Result<_, diesel_tenancy::Error>` (which is a response), or any error
    /// type that converts from both [`Error`] and `diesel::result::Error`.
    pub async fn try_run<F, T, E>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut PgConnection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<Error> + Send + 'static,
    {
        self.run(f).await.map_err(E::from)?
    }

    /// Runs `f` on a scoped connection, on a blocking thread. In
    /// transaction-scoped mode the work is committed when `f` returns `Ok` and
    /// rolled back when it returns `Err`.
    pub async fn run<F, T, E>(&self, f: F) -> Result<Result<T, E>, Error>
    where
        F: FnOnce(&mut PgConnection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        let (pool, tenant) = (self.pool.clone(), self.tenant.clone());
        tokio::task::spawn_blocking(move || pool.run_scoped(tenant.as_ref(), f, Result::is_ok))
            .await
            .unwrap_or_else(super::database_task_failed)
    }
}

/// Serves `public` on public hosts and `tenant` on tenant hosts, both behind
/// `layer`: the equivalent of django-tenant-schemas' `PUBLIC_SCHEMA_URLCONF`.
pub fn tenant_routing(public: Router, tenant: Router, layer: TenancyLayer) -> Router {
    let dispatch = tower::service_fn(move |req: Request<Body>| {
        let router = if req.extensions().get::<CurrentTenant>().is_some() {
            tenant.clone()
        } else {
            public.clone()
        };
        async move { Ok::<_, Infallible>(router.oneshot(req).await.into_response()) }
    });
    Router::new().fallback_service(dispatch).layer(layer)
}

/// An async connection scoped to the request (the tenant's schema on tenant
/// hosts, `public` on public hosts), from the pool given to
/// [`TenancyLayer::async_pool`]. Use it with `diesel_async::RunQueryDsl` on
/// `&mut *conn`. Rejects with 500 if the layer has no async pool, 503 for a
/// tenant suspended since the request was resolved, 404 for a missing schema,
/// 503 if no connection is available.
#[cfg(any(feature = "deadpool", feature = "bb8"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "deadpool", feature = "bb8"))))]
#[derive(Debug)]
pub struct TenantConn(pub crate::AsyncTenantConnection);

#[cfg(any(feature = "deadpool", feature = "bb8"))]
impl<S: Send + Sync> FromRequestParts<S> for TenantConn {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let scope = parts
            .extensions
            .get::<RequestScope>()
            .cloned()
            .ok_or_else(missing_layer)?;
        let pool = scope.async_pool.ok_or_else(|| {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the TenancyLayer has no async pool",
            )
                .into_response()
        })?;
        super::async_checkout(&pool, scope.tenant.as_ref())
            .await
            .map(TenantConn)
            .map_err(|(status, text)| {
                let status =
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                (status, text).into_response()
            })
    }
}

#[cfg(any(feature = "deadpool", feature = "bb8"))]
impl std::ops::Deref for TenantConn {
    type Target = crate::AsyncTenantConnection;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

#[cfg(any(feature = "deadpool", feature = "bb8"))]
impl std::ops::DerefMut for TenantConn {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

/// The crate's error as a response, so handlers can return
/// `Result<_, diesel_tenancy::Error>`: 404 for an unknown tenant or domain, 503
/// for a suspended tenant, 400 for an invalid name, 500 (with no detail) for
/// the rest. The error is logged with `tracing` at `error` level for 500s.
impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, text) = super::error_status(&self);
        if status == 500 {
            tracing::error!(error = %crate::error::error_chain(&self), "request failed");
        }
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, text).into_response()
    }
}
