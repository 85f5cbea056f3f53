//! From a request's host to a tenant: normalisation, the domain lookup, the cache
//! in front of it and its invalidation. Framework-free; the web adapters only
//! turn a request into a [`RequestInfo`] and a [`Resolution`] into a response.
//!
//! - [`request`]: the request's parts, host normalisation and forwarded headers;
//! - [`strategy`]: the ways of identifying a tenant;
//! - [`builder`]: the resolver's settings;
//! - [`cache`]: the cache of lookups and the lookups behind it;
//! - [`listen`]: invalidation by the registry's notifications.

mod builder;
mod cache;
mod listen;
mod request;
mod strategy;

use std::sync::{Arc, Mutex};
use std::time::Duration;

#[cfg(feature = "sync")]
use crate::TenantPool;
use crate::registry::{self, Tenant};
use crate::{Domain, Result, SchemaName};

pub use builder::ResolverBuilder;
use cache::Cache;
pub use listen::{LISTENER_APPLICATION_NAME, ListenerGuard};
use request::{ForwardedTrust, plain_path};
pub use request::{Host, IpHosts, ProxyNet, ProxyNetError, RequestInfo, normalize_host};
pub use strategy::{IdentifyFn, Strategy};

/// The pool a [`Resolver`] looks tenants up through: the blocking
/// [`TenantPool`] or the [`AsyncTenantPool`](crate::AsyncTenantPool). Both
/// convert into it, so `Resolver::builder(pool)` takes either.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum LookupPool {
    /// The blocking pool: [`Resolver::resolve`] works, and
    /// [`Resolver::resolve_async`] runs misses on a blocking thread.
    #[cfg(feature = "sync")]
    Sync(TenantPool),
    /// The async pool: [`Resolver::resolve_async`] looks misses up on an
    /// async connection (no libpq, no blocking thread).
    #[cfg(any(feature = "deadpool", feature = "bb8"))]
    Async(crate::AsyncTenantPool),
}

#[cfg(feature = "sync")]
impl From<TenantPool> for LookupPool {
    fn from(pool: TenantPool) -> Self {
        LookupPool::Sync(pool)
    }
}

#[cfg(any(feature = "deadpool", feature = "bb8"))]
impl From<crate::AsyncTenantPool> for LookupPool {
    fn from(pool: crate::AsyncTenantPool) -> Self {
        LookupPool::Async(pool)
    }
}

/// What a request's host (and, in path-prefix mode, its path) resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Resolution {
    /// A tenant's host (or a public host with a tenant path prefix).
    Tenant {
        /// The tenant, active.
        tenant: Tenant,
        /// With path-prefix routing, the length of the prefix (`/t/<tenant>`)
        /// to strip from the path before routing.
        strip_prefix: Option<usize>,
    },
    /// One of the public domains: the public site.
    Public,
    /// A secondary domain of a tenant, with
    /// [`ResolverBuilder::redirect_to_primary_domain`]: answer a permanent
    /// redirect to the same path on the tenant's primary domain.
    Redirect {
        /// The tenant.
        tenant: Tenant,
        /// The primary domain to redirect to.
        to: Domain,
    },
    /// A suspended tenant's host: answer 503 (a page saying the site is
    /// suspended), not the 404 of an unknown host.
    Suspended {
        /// The tenant, suspended.
        tenant: Tenant,
        /// The normalised host.
        host: String,
    },
    /// No tenant here: answer 404.
    NotFound {
        /// The normalised host.
        host: String,
    },
    /// The host is malformed, or outside every configured base domain: answer 400.
    BadRequest {
        /// Why, for the response body.
        reason: String,
    },
}

struct Inner {
    config: ResolverBuilder,
    cache: Mutex<Cache>,
}

/// Resolves request hosts to tenants, with a cache in front of the registry.
///
/// A cache hit costs no query. Cached answers are dropped at once when this
/// process changes the registry, and within milliseconds when another process
/// does, once [`Resolver::listen`] runs. Cloning is cheap and shares the cache.
#[derive(Clone)]
pub struct Resolver {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("public_domains", &self.inner.config.public_domains)
            .finish_non_exhaustive()
    }
}

/// The registry lookup the cache stands in front of.
enum Lookup {
    Done(Resolution),
    Domain(Domain),
    /// A tenant named by schema; with path-prefix routing, the prefix length
    /// to strip.
    Schema(SchemaName, Option<usize>),
}

impl Resolver {
    /// A builder for a resolver that looks domains up through `pool`, a
    /// [`TenantPool`] or an [`AsyncTenantPool`](crate::AsyncTenantPool).
    pub fn builder(pool: impl Into<LookupPool>) -> ResolverBuilder {
        ResolverBuilder {
            pool: pool.into(),
            public_domains: Vec::new(),
            base_domains: Vec::new(),
            default_tenant: None,
            ip_hosts: IpHosts::NotFound,
            trust_forwarded: ForwardedTrust::Never,
            path_prefix: None,
            capacity: 10_000,
            ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(10),
            listen_url: None,
            strategies: vec![Strategy::Host],
            show_public_if_no_tenant: false,
            redirect_to_primary: false,
        }
    }

    /// The pool the resolver looks tenants up with.
    pub fn lookup_pool(&self) -> &LookupPool {
        &self.inner.config.pool
    }

    /// The blocking pool the resolver looks tenants up with, if it has one.
    #[cfg(feature = "sync")]
    pub fn pool(&self) -> Option<&TenantPool> {
        match &self.inner.config.pool {
            LookupPool::Sync(pool) => Some(pool),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// The async pool the resolver looks tenants up with, if it has one.
    #[cfg(any(feature = "deadpool", feature = "bb8"))]
    pub fn async_pool(&self) -> Option<&crate::AsyncTenantPool> {
        match &self.inner.config.pool {
            LookupPool::Async(pool) => Some(pool),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// Resolves a request, querying the registry on a cache miss (blocking; from
    /// async code, use [`Resolver::resolve_async`]). A resolver built on an
    /// async pool answers misses only through `resolve_async`: here they fail
    /// with [`Error::AsyncPoolOnly`](crate::Error::AsyncPoolOnly).
    #[cfg(feature = "sync")]
    pub fn resolve(&self, request: &RequestInfo<'_>) -> Result<Resolution> {
        match self.classify(request) {
            Lookup::Done(resolution) => Ok(resolution),
            Lookup::Domain(domain) => {
                let key = domain.as_str();
                let (found, primary) = match self.cached_domain(key) {
                    Some(cached) => cached,
                    None if self.inner.config.redirect_to_primary => {
                        self.load_with_primary(key, &domain)?
                    }
                    None => (
                        self.load(key, |conn| registry::find_tenant_by_domain(conn, &domain))?,
                        None,
                    ),
                };
                self.domain_answer(domain, found, primary, |key, schema| {
                    self.load(key, |conn| registry::find_tenant(conn, schema))
                })
            }
            Lookup::Schema(schema, len) => {
                let key = format!("/{schema}");
                let found = match self.cached(&key) {
                    Some(found) => found,
                    None => self.load(&key, |conn| registry::find_tenant(conn, &schema))?,
                };
                Ok(self.tenant_answer(found, len, schema.as_str()))
            }
        }
    }

    /// Resolves a request from async code: a cache hit answers at once; a
    /// miss is looked up on an async connection (async pool), or on a
    /// blocking thread (blocking pool), never blocking the runtime.
    #[cfg(feature = "async")]
    pub async fn resolve_async(&self, request: &RequestInfo<'_>) -> Result<Resolution> {
        if let Some(answer) = self.resolve_cached(request) {
            return answer;
        }
        match &self.inner.config.pool {
            #[cfg(any(feature = "deadpool", feature = "bb8"))]
            LookupPool::Async(pool) => {
                let pool = pool.clone();
                match self.classify(request) {
                    Lookup::Done(resolution) => Ok(resolution),
                    Lookup::Domain(domain) => {
                        let generation = registry::generation();
                        let mut conn = pool.public().await?;
                        let (found, primary) = if self.inner.config.redirect_to_primary {
                            let found = registry::find_tenant_and_primary_by_domain_async(
                                &mut conn, &domain,
                            )
                            .await?;
                            let (tenant, primary) =
                                found.map_or((None, None), |(t, p)| (Some(t), p));
                            self.store_with_primary(
                                domain.as_str(),
                                generation,
                                &tenant,
                                primary.clone(),
                            );
                            (tenant, primary)
                        } else {
                            let found =
                                registry::find_tenant_by_domain_async(&mut conn, &domain).await?;
                            self.store(domain.as_str(), generation, &found);
                            (found, None)
                        };
                        let fallback = match self.uncached_fallback(&found) {
                            Some(schema) => {
                                let tenant =
                                    registry::find_tenant_async(&mut conn, &schema).await?;
                                self.store(&format!("/{schema}"), generation, &tenant);
                                Some(tenant)
                            }
                            None => None,
                        };
                        drop(conn);
                        self.domain_answer(domain, found, primary, |_, _| Ok(fallback.flatten()))
                    }
                    Lookup::Schema(schema, len) => {
                        let generation = registry::generation();
                        let mut conn = pool.public().await?;
                        let found = registry::find_tenant_async(&mut conn, &schema).await?;
                        drop(conn);
                        self.store(&format!("/{schema}"), generation, &found);
                        Ok(self.tenant_answer(found, len, schema.as_str()))
                    }
                }
            }
            #[cfg(feature = "sync")]
            LookupPool::Sync(_) => {
                let resolver = self.clone();
                let request = crate::web::OwnedRequestInfo::from_info(request);
                tokio::task::spawn_blocking(move || resolver.resolve(&request.info()))
                    .await
                    .unwrap_or_else(|e| {
                        Err(crate::Error::TaskFailed {
                            task: "tenant resolution".into(),
                            reason: e.to_string(),
                        })
                    })
            }
        }
    }

    /// Resolves a request from the cache alone: `None` on a miss (then call
    /// [`Resolver::resolve`], off the async executor).
    pub fn resolve_cached(&self, request: &RequestInfo<'_>) -> Option<Result<Resolution>> {
        match self.classify(request) {
            Lookup::Done(resolution) => Some(Ok(resolution)),
            Lookup::Domain(domain) => {
                let (found, primary) = self.cached_domain(domain.as_str())?;
                if let Some(schema) = &self.inner.config.default_tenant {
                    if found.is_none() && self.cached(&format!("/{schema}")).is_none() {
                        return None;
                    }
                }
                Some(self.domain_answer(domain, found, primary, |_, _| Ok(None)))
            }
            Lookup::Schema(schema, len) => {
                let found = self.cached(&format!("/{schema}"))?;
                Some(Ok(self.tenant_answer(found, len, schema.as_str())))
            }
        }
    }

    /// Whether the adapters must fill [`RequestInfo::headers`]: a header or
    /// custom strategy reads them.
    pub fn wants_headers(&self) -> bool {
        self.inner
            .config
            .strategies
            .iter()
            .any(|s| matches!(s, Strategy::Header(_) | Strategy::Custom(_)))
    }

    fn classify(&self, request: &RequestInfo<'_>) -> Lookup {
        let lookup = self.classify_chain(request);
        match lookup {
            Lookup::Done(Resolution::NotFound { .. })
                if self.inner.config.show_public_if_no_tenant =>
            {
                Lookup::Done(Resolution::Public)
            }
            other => other,
        }
    }

    fn classify_chain(&self, request: &RequestInfo<'_>) -> Lookup {
        if request.host_fields > 1 {
            return Lookup::Done(Resolution::BadRequest {
                reason: format!("the request has {} Host header fields", request.host_fields),
            });
        }
        for strategy in &self.inner.config.strategies {
            let schema = |name: &str| match SchemaName::new(name) {
                Ok(schema) => Lookup::Schema(schema, None),
                Err(e) => Lookup::Done(Resolution::BadRequest {
                    reason: e.to_string(),
                }),
            };
            match strategy {
                Strategy::Host => return self.classify_host(request),
                Strategy::Header(name) => {
                    let fields = request
                        .headers
                        .iter()
                        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                        .count();
                    if fields > 1 {
                        return Lookup::Done(Resolution::BadRequest {
                            reason: format!("the request has {fields} {name} header fields"),
                        });
                    }
                    if let Some(value) = request.header(name) {
                        return schema(value.trim());
                    }
                }
                Strategy::Custom(identify) => match identify(request) {
                    Some(Ok(found)) => return Lookup::Schema(found, None),
                    Some(Err(reason)) => return Lookup::Done(Resolution::BadRequest { reason }),
                    None => {}
                },
                Strategy::Subdomain { base, excluded } => {
                    let raw = match self.request_host(request) {
                        Ok(raw) => raw,
                        Err(reason) => return Lookup::Done(Resolution::BadRequest { reason }),
                    };
                    let Some(Ok(Host::Name(domain))) = raw.map(normalize_host) else {
                        continue;
                    };
                    let Some(label) = domain
                        .as_str()
                        .strip_suffix(base.as_str())
                        .and_then(|head| head.strip_suffix('.'))
                    else {
                        continue;
                    };
                    if label.contains('.') {
                        continue;
                    }
                    if excluded.iter().any(|e| e == label) {
                        return Lookup::Done(Resolution::Public);
                    }
                    return match SchemaName::new(label) {
                        Ok(found) => Lookup::Schema(found, None),
                        Err(_) => Lookup::Done(Resolution::NotFound {
                            host: domain.to_string(),
                        }),
                    };
                }
            }
        }
        Lookup::Done(Resolution::Public)
    }

    fn classify_host(&self, request: &RequestInfo<'_>) -> Lookup {
        let config = &self.inner.config;
        let raw = match self.request_host(request) {
            Ok(raw) => raw,
            Err(reason) => return Lookup::Done(Resolution::BadRequest { reason }),
        };
        let Some(raw) = raw else {
            return Lookup::Done(Resolution::BadRequest {
                reason: "the request has no Host header".into(),
            });
        };
        let host = match normalize_host(raw) {
            Ok(host) => host,
            Err(e) => {
                return Lookup::Done(Resolution::BadRequest {
                    reason: e.to_string(),
                });
            }
        };
        let domain = match host {
            Host::Ip(_) => {
                return Lookup::Done(match config.ip_hosts {
                    IpHosts::Public => Resolution::Public,
                    IpHosts::NotFound => Resolution::NotFound { host: raw.into() },
                });
            }
            Host::Name(domain) => domain,
        };
        if config.public_domains.contains(&domain) {
            if config.path_prefix.is_some() && !plain_path(request.path) {
                return Lookup::Done(Resolution::BadRequest {
                    reason: "the path has dot segments, empty segments or escaped dots or slashes"
                        .into(),
                });
            }
            return match self.prefixed_schema(request.path) {
                Some(Ok((schema, len))) => Lookup::Schema(schema, Some(len)),
                Some(Err(_)) => Lookup::Done(Resolution::NotFound {
                    host: domain.to_string(),
                }),
                None => Lookup::Done(Resolution::Public),
            };
        }
        if !config.base_domains.is_empty()
            && !config.base_domains.iter().any(|base| {
                domain == *base
                    || domain
                        .as_str()
                        .strip_suffix(base.as_str())
                        .is_some_and(|head| head.ends_with('.'))
            })
        {
            return Lookup::Done(Resolution::BadRequest {
                reason: format!("{domain} is not served here"),
            });
        }
        Lookup::Domain(domain)
    }

    /// In path-prefix mode, the tenant schema named by the path.
    fn prefixed_schema(
        &self,
        path: &str,
    ) -> Option<std::result::Result<(SchemaName, usize), crate::SchemaNameError>> {
        let prefix = self.inner.config.path_prefix.as_deref()?;
        let rest = path.strip_prefix(prefix)?;
        let name = rest.split('/').next().unwrap_or("");
        Some(SchemaName::new(name).map(|s| (s, prefix.len() + name.len())))
    }

    /// The answer for a domain lookup: the tenant found, or (with a default
    /// tenant set) the default tenant, `fallback` loading it on a cache miss.
    fn domain_answer(
        &self,
        domain: Domain,
        found: Option<Tenant>,
        primary: Option<Domain>,
        fallback: impl FnOnce(&str, &SchemaName) -> Result<Option<Tenant>>,
    ) -> Result<Resolution> {
        if found.is_none() {
            if let Some(schema) = &self.inner.config.default_tenant {
                let key = format!("/{schema}");
                let fallback = match self.cached(&key) {
                    Some(found) => found,
                    None => fallback(&key, schema)?,
                };
                return Ok(self.tenant_answer(fallback, None, domain.as_str()));
            }
        }
        if self.inner.config.redirect_to_primary {
            if let Some(tenant) = found.as_ref().filter(|t| t.is_active()) {
                if let Some(primary) = primary {
                    if primary != domain {
                        return Ok(Resolution::Redirect {
                            tenant: tenant.clone(),
                            to: primary,
                        });
                    }
                }
            }
        }
        Ok(self.tenant_answer(found, None, domain.as_str()))
    }

    /// The default tenant's schema when `found` is empty and one is set and
    /// not cached, for the async path to load first.
    #[cfg(any(feature = "deadpool", feature = "bb8"))]
    fn uncached_fallback(&self, found: &Option<Tenant>) -> Option<SchemaName> {
        let schema = self.inner.config.default_tenant.as_ref()?;
        (found.is_none() && self.cached(&format!("/{schema}")).is_none()).then(|| schema.clone())
    }

    fn tenant_answer(
        &self,
        found: Option<Tenant>,
        strip_prefix: Option<usize>,
        host: &str,
    ) -> Resolution {
        match found {
            Some(tenant) if tenant.is_active() => Resolution::Tenant {
                tenant,
                strip_prefix,
            },
            Some(tenant) => Resolution::Suspended {
                tenant,
                host: host.into(),
            },
            None if self.inner.config.show_public_if_no_tenant => Resolution::Public,
            None => Resolution::NotFound { host: host.into() },
        }
    }
}
