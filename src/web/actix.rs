//! actix-web integration: middleware that resolves the tenant once per request,
//! and extractors for the tenant and a tenant-scoped connection. Same behaviour
//! as the axum adapter; all logic lives in the [`Resolver`].
//!
//! ```no_run
//! use actix_web::{App, HttpServer, web};
//! use diesel_tenancy::web::actix::{CurrentTenant, Tenancy};
//! use diesel_tenancy::{Domain, Resolver, TenantPool};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = TenantPool::builder("postgres://localhost/app").build()?;
//! let resolver = Resolver::builder(pool)
//!     .public_domain(Domain::parse("example.com")?)
//!     .build()?;
//! HttpServer::new(move || {
//!     App::new().wrap(Tenancy::new(resolver.clone())).route(
//!         "/",
//!         web::get().to(|t: CurrentTenant| async move { format!("hello {}", t.0.name()) }),
//!     )
//! })
//! .bind("127.0.0.1:8000")?
//! .run()
//! .await?;
//! # Ok(()) }
//! ```

use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::rc::Rc;

use actix_web::body::EitherBody;
use actix_web::dev::{Payload, Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::http::{StatusCode, Uri};
use actix_web::{FromRequest, HttpMessage, HttpRequest, HttpResponse};
use diesel::pg::PgConnection;
use tracing::Instrument;

use super::{OwnedRequestInfo, not_found_html};
use crate::{Error, Resolution, Resolver, Tenant, TenantPool};

type NotFoundPage = std::sync::Arc<dyn Fn(&str) -> HttpResponse + Send + Sync>;
type SuspendedPage = std::sync::Arc<dyn Fn(&Tenant, &str) -> HttpResponse + Send + Sync>;

/// The answers for hosts the middleware does not let through.
#[derive(Clone, Default)]
struct Pages {
    not_found: Option<NotFoundPage>,
    suspended: Option<SuspendedPage>,
}

impl std::fmt::Debug for Pages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pages").finish_non_exhaustive()
    }
}

/// Middleware resolving each request's tenant (see [`Resolver`]); answers 404 for
/// hosts with no tenant, 503 for a suspended tenant's, 400 for malformed
/// hosts, 503 if the registry cannot be read. Sets the task-local tenant
/// ([`current_tenant`](crate::current_tenant), with the `async` feature) and
/// a `tenant_request` tracing span for the request.
#[derive(Clone, Debug)]
pub struct Tenancy {
    resolver: Resolver,
    /// Paths answered as public requests for every host, unresolved.
    bypass: std::sync::Arc<Vec<String>>,
    /// The registry listener, kept running while the middleware lives.
    listener: Option<std::sync::Arc<crate::ListenerGuard>>,
    /// Answer hosts with no tenant in JSON.
    json_not_found: bool,
    pages: Pages,
    #[cfg(any(feature = "deadpool", feature = "bb8"))]
    async_pool: Option<crate::AsyncTenantPool>,
}

impl Tenancy {
    /// Middleware resolving through `resolver`.
    pub fn new(resolver: Resolver) -> Self {
        Tenancy {
            resolver,
            bypass: std::sync::Arc::new(Vec::new()),
            listener: None,
            json_not_found: false,
            pages: Pages::default(),
            #[cfg(any(feature = "deadpool", feature = "bb8"))]
            async_pool: None,
        }
    }

    /// The response for hosts that serve no tenant (given the normalised
    /// host). Defaults to a plain 404 page (JSON with
    /// [`not_found_json`](Self::not_found_json)).
    pub fn not_found_page(
        mut self,
        page: impl Fn(&str) -> HttpResponse + Send + Sync + 'static,
    ) -> Self {
        self.pages.not_found = Some(std::sync::Arc::new(page));
        self
    }

    /// The response for a suspended tenant's hosts (given the tenant and the
    /// normalised host). Defaults to a plain 503 page saying the site is
    /// suspended (JSON with [`not_found_json`](Self::not_found_json)).
    pub fn suspended_page(
        mut self,
        page: impl Fn(&Tenant, &str) -> HttpResponse + Send + Sync + 'static,
    ) -> Self {
        self.pages.suspended = Some(std::sync::Arc::new(page));
        self
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
    /// service as public requests, whatever their host: for health checks
    /// sent to the server's IP address. Repeatable; defaults to none.
    pub fn bypass_path(mut self, path: impl Into<String>) -> Self {
        std::sync::Arc::make_mut(&mut self.bypass).push(path.into());
        self
    }

    /// Starts the resolver's registry listener ([`Resolver::listen`]) and keeps
    /// it running for as long as this middleware (or a clone) lives.
    pub fn listen(mut self) -> Result<Self, Error> {
        self.listener = Some(std::sync::Arc::new(self.resolver.listen()?));
        Ok(self)
    }

    /// Answers hosts that serve no tenant with a JSON body,
    /// `{"error":"not_found","host":"..."}` (404), and suspended tenants'
    /// hosts with `{"error":"suspended","host":"..."}` (503), for API services.
    pub fn not_found_json(mut self) -> Self {
        self.json_not_found = true;
        self
    }
}

impl<S, B> Transform<S, ServiceRequest> for Tenancy
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    S::Future: 'static,
    B: 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type InitError = ();
    type Transform = TenancyMiddleware<S>;
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(TenancyMiddleware {
            service: Rc::new(service),
            resolver: self.resolver.clone(),
            bypass: std::sync::Arc::clone(&self.bypass),
            json_not_found: self.json_not_found,
            pages: self.pages.clone(),
            #[cfg(any(feature = "deadpool", feature = "bb8"))]
            async_pool: self
                .async_pool
                .clone()
                .or_else(|| self.resolver.async_pool().cloned()),
        }))
    }
}

/// The service [`Tenancy`] wraps around an inner service.
#[derive(Debug)]
pub struct TenancyMiddleware<S> {
    service: Rc<S>,
    resolver: Resolver,
    bypass: std::sync::Arc<Vec<String>>,
    json_not_found: bool,
    pages: Pages,
    #[cfg(any(feature = "deadpool", feature = "bb8"))]
    async_pool: Option<crate::AsyncTenantPool>,
}

/// What the middleware found, in the request extensions of every request it lets
/// through.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RequestScope {
    /// The blocking pool ([`TenantDb`] uses it), if the resolver has one.
    pub pool: Option<TenantPool>,
    /// The request's tenant, or `None` for the public site.
    pub tenant: Option<Tenant>,
    /// The async pool ([`TenantConn`] uses it), if there is one.
    #[cfg(any(feature = "deadpool", feature = "bb8"))]
    pub async_pool: Option<crate::AsyncTenantPool>,
}

fn strip_prefix(req: &mut ServiceRequest, len: usize) {
    let uri = req.uri();
    let path = OwnedRequestInfo::stripped_path(uri.path(), len);
    let path_and_query = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    if let Ok(new) = path_and_query.parse::<Uri>() {
        req.match_info_mut().get_mut().update(&new);
        req.head_mut().uri = new;
    }
}

type LocalFuture<T> = Pin<Box<dyn Future<Output = T>>>;

impl<S, B> Service<ServiceRequest> for TenancyMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    S::Future: 'static,
    B: 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Future = LocalFuture<Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, mut req: ServiceRequest) -> Self::Future {
        let service = Rc::clone(&self.service);
        let resolver = self.resolver.clone();
        let bypassed = self.bypass.iter().any(|p| p == req.path());
        let json_not_found = self.json_not_found;
        let pages = self.pages.clone();
        #[cfg(any(feature = "deadpool", feature = "bb8"))]
        let async_pool = self.async_pool.clone();
        Box::pin(async move {
            let info = request_info(&req, resolver.wants_headers());
            let resolution = super::resolve(&resolver, info, bypassed).await;
            if let Some(response) = refusal(&req, &resolution, &pages, json_not_found) {
                return Ok(req.into_response(response).map_into_right_body());
            }
            let tenant = match resolution {
                Ok(Resolution::Tenant {
                    tenant,
                    strip_prefix: prefix,
                }) => {
                    if let Some(len) = prefix {
                        strip_prefix(&mut req, len);
                    }
                    req.extensions_mut().insert(CurrentTenant(tenant.clone()));
                    Some(tenant)
                }
                _ => None,
            };
            let span = match &tenant {
                Some(t) => tracing::info_span!("tenant_request", tenant = %t.schema()),
                None => tracing::info_span!("tenant_request", tenant = "public"),
            };
            req.extensions_mut().insert(RequestScope {
                pool: resolver.pool().cloned(),
                tenant: tenant.clone(),
                #[cfg(any(feature = "deadpool", feature = "bb8"))]
                async_pool,
            });
            let call = service.call(req).instrument(span);
            #[cfg(feature = "async")]
            let response = match tenant {
                Some(tenant) => crate::with_current_tenant(tenant, call).await?,
                None => call.await?,
            };
            #[cfg(not(feature = "async"))]
            let response = {
                drop(tenant);
                call.await?
            };
            Ok(response.map_into_left_body())
        })
    }
}

/// The parts of an actix request the resolver reads. Never
/// `connection_info()`: it trusts forwarded headers on its own.
fn request_info(req: &ServiceRequest, with_headers: bool) -> OwnedRequestInfo {
    let text =
        |v: &actix_web::http::header::HeaderValue| v.to_str().unwrap_or("\u{fffd}").to_owned();
    let headers = if with_headers {
        req.headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), text(v)))
            .collect()
    } else {
        Vec::new()
    };
    OwnedRequestInfo::from_request(
        |name| req.headers().get_all(name).map(text).collect(),
        req.uri().authority().map(|a| a.as_str().to_owned()),
        req.peer_addr().map(|a| a.ip()),
        req.path().to_owned(),
        headers,
    )
}

/// The response to a request that is served neither a tenant nor the public
/// site (unknown or suspended host, redirect, bad request, failed lookup);
/// `None` for one that is.
fn refusal(
    req: &ServiceRequest,
    resolution: &crate::Result<Resolution>,
    pages: &Pages,
    json: bool,
) -> Option<HttpResponse> {
    Some(match resolution {
        Ok(Resolution::Tenant { .. } | Resolution::Public) => return None,
        Ok(Resolution::NotFound { host }) => match &pages.not_found {
            Some(page) => page(host),
            None if json => HttpResponse::NotFound()
                .content_type("application/json")
                .body(super::not_found_json(host)),
            None => HttpResponse::NotFound()
                .content_type("text/html; charset=utf-8")
                .body(not_found_html(host)),
        },
        Ok(Resolution::Suspended { tenant, host }) => {
            let mut response = HttpResponse::build(StatusCode::SERVICE_UNAVAILABLE);
            match &pages.suspended {
                Some(page) => page(tenant, host),
                None if json => response
                    .content_type("application/json")
                    .body(super::suspended_json(host)),
                None => response
                    .content_type("text/html; charset=utf-8")
                    .body(super::suspended_html(host)),
            }
        }
        Ok(Resolution::Redirect { to, .. }) => {
            let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
            HttpResponse::PermanentRedirect()
                .insert_header((
                    actix_web::http::header::LOCATION,
                    super::redirect_location(to, target),
                ))
                .finish()
        }
        Ok(Resolution::BadRequest { reason }) => {
            HttpResponse::BadRequest().body(format!("bad request: {reason}"))
        }
        Err(e) => {
            tracing::error!(error = %crate::error::error_chain(e), "tenant resolution failed");
            HttpResponse::build(StatusCode::SERVICE_UNAVAILABLE).body("service unavailable")
        }
    })
}

/// The request's tenant. Fails with 404 on public hosts (and 500 if the
/// [`Tenancy`] middleware is missing).
#[derive(Debug, Clone)]
pub struct CurrentTenant(pub Tenant);

impl FromRequest for CurrentTenant {
    type Error = actix_web::Error;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let extensions = req.extensions();
        ready(match extensions.get::<CurrentTenant>() {
            Some(t) => Ok(t.clone()),
            None if extensions.get::<RequestScope>().is_some() => {
                Err(actix_web::error::ErrorNotFound("not found"))
            }
            None => Err(missing_middleware()),
        })
    }
}

fn missing_middleware() -> actix_web::Error {
    actix_web::error::ErrorInternalServerError("the Tenancy middleware is not installed")
}

/// A database handle scoped to the request: the tenant's schema on tenant hosts,
/// `public` on public hosts. Work runs on actix's blocking pool. Needs a
/// resolver on a [`TenantPool`] (500 otherwise; with an async pool, use
/// [`TenantConn`]).
#[derive(Debug, Clone)]
pub struct TenantDb {
    pool: TenantPool,
    tenant: Option<Tenant>,
}

impl FromRequest for TenantDb {
    type Error = actix_web::Error;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let extensions = req.extensions();
        ready(match extensions.get::<RequestScope>() {
            None => Err(missing_middleware()),
            Some(RequestScope { pool: None, .. }) => {
                Err(actix_web::error::ErrorInternalServerError(
                    "TenantDb needs a resolver on a TenantPool; this one has an async pool (use TenantConn)",
                ))
            }
            Some(RequestScope {
                pool: Some(pool),
                tenant,
                ..
            }) => Ok(TenantDb {
                pool: pool.clone(),
                tenant: tenant.clone(),
            }),
        })
    }
}

impl TenantDb {
    /// The request's tenant, or `None` on the public site.
    pub fn tenant(&self) -> Option<&Tenant> {
        self.tenant.as_ref()
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
        actix_web::web::block(move || pool.run_scoped(tenant.as_ref(), f, Result::is_ok))
            .await
            .unwrap_or_else(super::database_task_failed)
    }
}

/// The crate's error as a response, so handlers can return
/// `Result<_, diesel_tenancy::Error>`: 404 for an unknown tenant or domain, 503
/// for a suspended tenant, 400 for an invalid name, 500 (with no detail) for
/// the rest. The error is logged with `tracing` at `error` level for 500s.
impl actix_web::ResponseError for Error {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(super::error_status(self).0)
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let (status, text) = super::error_status(self);
        if status == 500 {
            tracing::error!(error = %crate::error::error_chain(self), "request failed");
        }
        HttpResponse::build(self.status_code()).body(text)
    }
}

/// Test requests sent as one host's, for testing a multi-tenant app's
/// handlers (django-tenants' `TenantClient`): `actix_web::test::TestRequest`s
/// with the host in their `Host` header, for `test::call_service`.
///
/// ```no_run
/// # async fn run() {
/// use actix_web::{App, test, web};
/// use diesel_tenancy::web::actix::TenantRequests;
/// # let tenancy: diesel_tenancy::web::actix::Tenancy = unimplemented!();
/// let app = test::init_service(
///     App::new().wrap(tenancy).route("/", web::get().to(|| async { "hi" })),
/// )
/// .await;
/// let acme = TenantRequests::new("acme.example.com");
/// let response = test::call_service(&app, acme.get("/").to_request()).await;
/// assert_eq!(response.status().as_u16(), 200);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct TenantRequests {
    host: String,
}

impl TenantRequests {
    /// Requests sent as `host`'s.
    pub fn new(host: impl Into<String>) -> Self {
        TenantRequests { host: host.into() }
    }

    /// The host the requests are sent as.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> actix_web::test::TestRequest {
        self.request(actix_web::test::TestRequest::get().uri(path))
    }

    /// `POST path`.
    pub fn post(&self, path: &str) -> actix_web::test::TestRequest {
        self.request(actix_web::test::TestRequest::post().uri(path))
    }

    /// `request` with this host as its `Host`.
    pub fn request(&self, request: actix_web::test::TestRequest) -> actix_web::test::TestRequest {
        request.insert_header((actix_web::http::header::HOST, self.host.as_str()))
    }
}

/// An async connection scoped to the request (the tenant's schema on tenant
/// hosts, `public` on public hosts), from the async pool (the resolver's, or
/// [`Tenancy::async_pool`]). Use it with `diesel_async::RunQueryDsl` on
/// `&mut *conn`. Rejects with 500 if there is no async pool, 503 for a tenant
/// suspended since the request was resolved, 404 for a missing schema, 503 if
/// no connection is available.
#[cfg(any(feature = "deadpool", feature = "bb8"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "deadpool", feature = "bb8"))))]
#[derive(Debug)]
pub struct TenantConn(pub crate::AsyncTenantConnection);

#[cfg(any(feature = "deadpool", feature = "bb8"))]
impl FromRequest for TenantConn {
    type Error = actix_web::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let scope = req.extensions().get::<RequestScope>().cloned();
        Box::pin(async move {
            let scope = scope.ok_or_else(missing_middleware)?;
            let pool = scope.async_pool.ok_or_else(|| {
                actix_web::error::ErrorInternalServerError(
                    "the Tenancy middleware has no async pool",
                )
            })?;
            super::async_checkout(&pool, scope.tenant.as_ref())
                .await
                .map(TenantConn)
                .map_err(|(status, text)| match status {
                    404 => actix_web::error::ErrorNotFound(text),
                    _ => actix_web::error::ErrorServiceUnavailable(text),
                })
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

/// A guard matching requests the [`Tenancy`] middleware resolved to a tenant:
/// with [`public_guard`], the public/tenant route split (django-tenant-schemas'
/// `PUBLIC_SCHEMA_URLCONF`):
///
/// ```no_run
/// use actix_web::{App, web};
/// use diesel_tenancy::web::actix::{Tenancy, public_guard, tenant_guard};
/// # fn app(tenancy: Tenancy) {
/// let app = App::new()
///     .wrap(tenancy)
///     .service(web::scope("").guard(tenant_guard()).route("/", web::get().to(|| async { "a tenant" })))
///     .service(web::scope("").guard(public_guard()).route("/", web::get().to(|| async { "the public site" })));
/// # }
/// ```
pub fn tenant_guard() -> impl actix_web::guard::Guard {
    actix_web::guard::fn_guard(|ctx| ctx.req_data().get::<CurrentTenant>().is_some())
}

/// A guard matching requests the [`Tenancy`] middleware resolved to the public
/// site (see [`tenant_guard`]).
pub fn public_guard() -> impl actix_web::guard::Guard {
    actix_web::guard::fn_guard(|ctx| {
        let data = ctx.req_data();
        data.get::<RequestScope>().is_some() && data.get::<CurrentTenant>().is_none()
    })
}
