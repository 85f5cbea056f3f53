//! A client for an application's tests: requests straight into the router,
//! no server and no socket, each with a tenant's host.

use super::*;

/// Requests to an axum app in process, sent as one host's, for testing a
/// multi-tenant app's handlers in a few lines (django-tenants' `TenantClient`):
/// every request gets the host in its `Host` header and goes through the
/// app's layers, [`TenancyLayer`] included.
///
/// ```no_run
/// # async fn run(app: axum::Router, tenant: diesel_tenancy::Tenant) {
/// use diesel_tenancy::web::axum::TenantClient;
/// let client = TenantClient::new(app, "acme.example.com");
/// let page = client.get("/products").await;
/// assert_eq!(page.status, 200);
/// assert!(page.body.contains("anvil"));
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct TenantClient {
    app: Router,
    host: String,
}

/// What a [`TenantClient`] request got back.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct TestResponse {
    /// The status code.
    pub status: u16,
    /// The response headers.
    pub headers: axum::http::HeaderMap,
    /// The body, as text (invalid UTF-8 replaced).
    pub body: String,
}

impl TenantClient {
    /// A client sending requests to `app` as `host`'s.
    pub fn new(app: Router, host: impl Into<String>) -> Self {
        TenantClient {
            app,
            host: host.into(),
        }
    }

    /// The host the requests are sent as.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> TestResponse {
        self.send(Request::get(path).body(Body::empty())).await
    }

    /// `POST path` with a URL-encoded form.
    pub async fn post_form(&self, path: &str, form: &[(&str, &str)]) -> TestResponse {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        self.send(
            Request::post(path)
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(body)),
        )
        .await
    }

    /// Any request, with this client's host set as its `Host` (replacing one
    /// it has).
    pub async fn request(&self, mut request: Request) -> TestResponse {
        match HeaderValue::from_str(&self.host) {
            Ok(host) => {
                request.headers_mut().insert(header::HOST, host);
            }
            Err(_) => {
                request.headers_mut().remove(header::HOST);
            }
        }
        let response = match self.app.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("(the body could not be read: {e})"));
        TestResponse {
            status,
            headers,
            body,
        }
    }

    async fn send(&self, request: axum::http::Result<Request>) -> TestResponse {
        match request {
            Ok(request) => self.request(request).await,
            Err(e) => TestResponse {
                status: 0,
                headers: axum::http::HeaderMap::new(),
                body: format!("(the request could not be built: {e})"),
            },
        }
    }
}
