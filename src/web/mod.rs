//! Thin adapters from web frameworks to the [`Resolver`](crate::Resolver): they
//! turn a request into a [`RequestInfo`](crate::RequestInfo) and a
//! [`Resolution`](crate::Resolution) into a response. All tenancy logic lives in
//! the resolver.

#[cfg(feature = "actix")]
#[cfg_attr(docsrs, doc(cfg(feature = "actix")))]
pub mod actix;
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod axum;

/// The error for a blocking database task that did not complete (it panicked
/// or its runtime shut down): what the adapters' `TenantDb::run` returns then.
#[cfg(all(feature = "sync", any(feature = "axum", feature = "actix")))]
pub(crate) fn database_task_failed<R>(e: impl std::fmt::Display) -> Result<R, crate::Error> {
    Err(crate::Error::TaskFailed {
        task: "the database task".into(),
        reason: e.to_string(),
    })
}

/// The HTTP status and the text a response shows for the crate's error in a
/// handler: not found for an unknown tenant or domain, 503 for a suspended
/// tenant or one whose schema was renamed during the request (a retry
/// resolves it afresh), 400 for an invalid name, and 500 (with no detail: the cause is for
/// the logs, not the client) for everything else.
#[cfg(any(feature = "axum", feature = "actix"))]
pub(crate) fn error_status(e: &crate::Error) -> (u16, &'static str) {
    use crate::Error;
    match e {
        Error::TenantNotFound { .. }
        | Error::TenantIdNotFound { .. }
        | Error::DomainNotFound { .. } => (404, "not found"),
        Error::TenantSuspended { .. } | Error::SchemaReplaced { .. } => {
            (503, "service unavailable")
        }
        #[cfg(any(feature = "deadpool", feature = "bb8"))]
        Error::AsyncPool { .. } => (503, "service unavailable"),
        #[cfg(feature = "sync")]
        Error::Pool(_) => (503, "service unavailable"),
        Error::InvalidSchemaName(_) | Error::InvalidDomain(_) => (400, "bad request"),
        _ => (500, "internal server error"),
    }
}

/// The JSON body for a host that serves no tenant:
/// `{"error":"not_found","host":"..."}`, the host escaped for JSON.
#[cfg(any(feature = "axum", feature = "actix"))]
pub(crate) fn not_found_json(host: &str) -> String {
    format!("{{\"error\":\"not_found\",\"host\":{}}}", json_string(host))
}

/// `text` as a JSON string literal.
#[cfg(any(feature = "axum", feature = "actix"))]
fn json_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The request fields the resolver reads, owned, so resolution can move to a
/// blocking thread on a cache miss.
#[derive(Debug, Clone, Default)]
#[cfg_attr(not(any(feature = "axum", feature = "actix")), allow(dead_code))]
pub(crate) struct OwnedRequestInfo {
    pub(crate) host: Option<String>,
    pub(crate) host_fields: usize,
    pub(crate) target_authority: Option<String>,
    pub(crate) x_forwarded_host: Option<String>,
    pub(crate) forwarded: Option<String>,
    pub(crate) peer: Option<std::net::IpAddr>,
    pub(crate) path: String,
    pub(crate) headers: Vec<(String, String)>,
}

#[cfg_attr(not(any(feature = "axum", feature = "actix")), allow(dead_code))]
impl OwnedRequestInfo {
    /// The resolver's view of a request, from `fields(name)` (every field of
    /// that header, in order, as text; a field that is not text as U+FFFD, so
    /// that it will not parse), the request target's authority (absolute form
    /// or HTTP/2), the peer, the path and, when the resolver reads headers
    /// ([`Resolver::wants_headers`](crate::Resolver::wants_headers)), all of
    /// them. Both adapters build it here.
    pub(crate) fn from_request(
        fields: impl Fn(&'static str) -> Vec<String>,
        target_authority: Option<String>,
        peer: Option<std::net::IpAddr>,
        path: String,
        headers: Vec<(String, String)>,
    ) -> Self {
        let hosts = fields("host");
        let joined = |name| {
            let all = fields(name);
            (!all.is_empty()).then(|| all.join(","))
        };
        OwnedRequestInfo {
            host_fields: hosts.len(),
            host: hosts.into_iter().next(),
            target_authority,
            x_forwarded_host: joined("x-forwarded-host"),
            forwarded: joined("forwarded"),
            peer,
            path,
            headers,
        }
    }

    /// An owned copy of `info`.
    #[cfg(all(feature = "sync", feature = "async"))]
    pub(crate) fn from_info(info: &crate::RequestInfo<'_>) -> Self {
        OwnedRequestInfo {
            host: info.host.map(str::to_owned),
            host_fields: info.host_fields,
            target_authority: info.target_authority.map(str::to_owned),
            x_forwarded_host: info.x_forwarded_host.map(str::to_owned),
            forwarded: info.forwarded.map(str::to_owned),
            peer: info.peer,
            path: info.path.to_owned(),
            headers: info.headers.to_vec(),
        }
    }

    pub(crate) fn info(&self) -> crate::RequestInfo<'_> {
        crate::RequestInfo {
            host: self.host.as_deref(),
            host_fields: self.host_fields,
            target_authority: self.target_authority.as_deref(),
            x_forwarded_host: self.x_forwarded_host.as_deref(),
            forwarded: self.forwarded.as_deref(),
            peer: self.peer,
            path: &self.path,
            headers: &self.headers,
        }
    }

    /// The path with a tenant prefix of `len` bytes removed.
    pub(crate) fn stripped_path(path: &str, len: usize) -> &str {
        match path.get(len..) {
            Some("") | None => "/",
            Some(rest) => rest,
        }
    }
}

/// The request flow both adapters share: a bypassed path is public; else the
/// cache; on a miss, the lookup on an async connection (a resolver on an
/// async pool) or on a blocking thread (one on the blocking pool). The
/// adapters only turn headers into the [`OwnedRequestInfo`] and the
/// [`Resolution`](crate::Resolution) into a response.
#[cfg(any(feature = "axum", feature = "actix"))]
pub(crate) async fn resolve(
    resolver: &crate::Resolver,
    info: OwnedRequestInfo,
    bypassed: bool,
) -> crate::Result<crate::Resolution> {
    if bypassed {
        return Ok(crate::Resolution::Public);
    }
    if let Some(answer) = resolver.resolve_cached(&info.info()) {
        return answer;
    }
    #[cfg(feature = "async")]
    {
        resolver.resolve_async(&info.info()).await
    }
    #[cfg(not(feature = "async"))]
    {
        let resolver = resolver.clone();
        tokio::task::spawn_blocking(move || resolver.resolve(&info.info()))
            .await
            .unwrap_or_else(|e| {
                Err(crate::Error::TaskFailed {
                    task: "tenant resolution".into(),
                    reason: e.to_string(),
                })
            })
    }
}

/// Where a redirect to `to` goes: the same path and query on that host,
/// scheme-relative (the scheme the client used is kept).
#[cfg(any(feature = "axum", feature = "actix"))]
pub(crate) fn redirect_location(to: &crate::Domain, path_and_query: &str) -> String {
    format!("//{}{}", to.as_str(), path_and_query)
}

/// The async connection extractors' checkout (both adapters): the tenant's
/// connection, or `public`'s; on failure the status and text to answer with
/// (503 for a tenant suspended since the request was resolved, 404 for a
/// missing schema, 503 when no connection is available, logged).
#[cfg(all(
    any(feature = "axum", feature = "actix"),
    any(feature = "deadpool", feature = "bb8")
))]
pub(crate) async fn async_checkout(
    pool: &crate::AsyncTenantPool,
    tenant: Option<&crate::Tenant>,
) -> Result<crate::AsyncTenantConnection, (u16, &'static str)> {
    let conn = match tenant {
        Some(tenant) => pool.get(tenant).await,
        None => pool.public().await,
    };
    conn.map_err(|e| match e {
        crate::Error::TenantSuspended { .. } => (503, "suspended"),
        crate::Error::SchemaMissing { .. } => (404, "not found"),
        e => {
            tracing::error!(error = %crate::error::error_chain(&e), "no database connection");
            (503, "service unavailable")
        }
    })
}

/// The plain page for a host that serves no tenant.
#[cfg_attr(not(any(feature = "axum", feature = "actix")), allow(dead_code))]
pub(crate) fn not_found_html(host: &str) -> String {
    format!(
        "<!doctype html><title>Not found</title><h1>404 Not Found</h1><p>No site is served at {}.</p>",
        escape_html(host)
    )
}

/// The plain page for a suspended tenant's host (503).
#[cfg_attr(not(any(feature = "axum", feature = "actix")), allow(dead_code))]
pub(crate) fn suspended_html(host: &str) -> String {
    format!(
        "<!doctype html><title>Suspended</title><h1>503 Service Unavailable</h1><p>The site at {} is suspended.</p>",
        escape_html(host)
    )
}

/// The JSON body for a suspended tenant's host.
#[cfg(any(feature = "axum", feature = "actix"))]
pub(crate) fn suspended_json(host: &str) -> String {
    format!("{{\"error\":\"suspended\",\"host\":{}}}", json_string(host))
}

/// Escapes text for HTML.
#[cfg_attr(not(any(feature = "axum", feature = "actix")), allow(dead_code))]
pub(crate) fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
