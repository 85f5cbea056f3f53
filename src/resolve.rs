//! From a request's host to a tenant: normalisation, the domain lookup, the cache
//! in front of it and its invalidation. Framework-free; the web adapters only
//! turn a request into a [`RequestInfo`] and a [`Resolution`] into a response.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

#[cfg(feature = "sync")]
use crate::TenantPool;
use crate::registry::{self, Tenant};
use crate::{Domain, DomainError, Error, Result, SchemaName};

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

/// How hosts that are IP addresses are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum IpHosts {
    /// Serve the public site.
    Public,
    /// Answer 404.
    #[default]
    NotFound,
}

/// The parts of a request the resolver looks at.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestInfo<'a> {
    /// The `Host` header.
    pub host: Option<&'a str>,
    /// How many `Host` header fields the request carried. More than one is
    /// refused with [`Resolution::BadRequest`] (RFC 9112, section 3.2): a
    /// proxy that routes on the other copy would disagree about the tenant.
    pub host_fields: usize,
    /// The authority of an absolute-form request target
    /// (`GET http://acme.example.com/ HTTP/1.1`) or HTTP/2's `:authority`:
    /// it wins over `Host` (RFC 9112, section 3.2.2).
    pub target_authority: Option<&'a str>,
    /// Every `X-Forwarded-Host` field, joined with `,` in order; used only
    /// when the peer is a trusted proxy.
    pub x_forwarded_host: Option<&'a str>,
    /// Every `Forwarded` field, joined with `,` in order; its `host=` is used
    /// only when the peer is a trusted proxy.
    pub forwarded: Option<&'a str>,
    /// The address of the peer that sent the request (behind a proxy, the
    /// nearest proxy), for [`ResolverBuilder::trusted_proxies`].
    pub peer: Option<IpAddr>,
    /// The request path, for path-prefix routing.
    pub path: &'a str,
    /// Request headers as (lowercase name, value) pairs, for the
    /// [`Strategy::Header`] and [`Strategy::Custom`] strategies. The adapters
    /// fill it only when the resolver has such a strategy
    /// ([`Resolver::wants_headers`]).
    pub headers: &'a [(String, String)],
}

impl RequestInfo<'_> {
    /// The first value of header `name` (any case), if the request has it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A user function identifying a request's tenant (see [`Strategy::Custom`]).
pub type IdentifyFn =
    Arc<dyn Fn(&RequestInfo<'_>) -> Option<std::result::Result<SchemaName, String>> + Send + Sync>;

/// One way of finding a request's tenant; a resolver tries its strategies in
/// order ([`ResolverBuilder::strategies`]) and the first that identifies a
/// tenant (or refuses the request) decides. Whatever identifies a tenant, the
/// tenant must exist in the registry and be active to be served (suspended:
/// [`Resolution::Suspended`]; unknown: [`Resolution::NotFound`]).
#[derive(Clone)]
#[non_exhaustive]
pub enum Strategy {
    /// The request's host, looked up in the domains table; public domains,
    /// IP hosts, base domains and the path prefix as configured. It always
    /// decides, so strategies after it are never tried.
    Host,
    /// A header naming the tenant's schema (`X-Tenant: acme`), for API
    /// services. Absent: the next strategy. Not a valid schema name: 400.
    Header(String),
    /// A host one label below `base` names the tenant's schema directly,
    /// without a domain row (`acme.example.com` is schema `acme`), like
    /// apartment's subdomain elevator; the `excluded` labels (such as `www`)
    /// get the public site. Other hosts: the next strategy.
    Subdomain {
        /// The base domain.
        base: Domain,
        /// Labels that are not tenants (lowercase).
        excluded: Vec<String>,
    },
    /// A function over the request (a JWT claim, an API key):
    /// `Some(Ok(schema))` identifies the tenant, `Some(Err(reason))` refuses
    /// the request with 400, `None` passes to the next strategy.
    Custom(IdentifyFn),
}

impl std::fmt::Debug for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Strategy::Host => f.write_str("Host"),
            Strategy::Header(name) => f.debug_tuple("Header").field(name).finish(),
            Strategy::Subdomain { base, excluded } => f
                .debug_struct("Subdomain")
                .field("base", base)
                .field("excluded", excluded)
                .finish(),
            Strategy::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

impl Strategy {
    /// [`Strategy::Header`] with this header name.
    pub fn header(name: impl Into<String>) -> Self {
        Strategy::Header(name.into().to_ascii_lowercase())
    }

    /// [`Strategy::Subdomain`] below `base`, except the `excluded` labels.
    pub fn subdomain<I, S>(base: Domain, excluded: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Strategy::Subdomain {
            base,
            excluded: excluded
                .into_iter()
                .map(|s| s.into().to_ascii_lowercase())
                .collect(),
        }
    }

    /// [`Strategy::Custom`] with this function.
    pub fn custom(
        f: impl Fn(&RequestInfo<'_>) -> Option<std::result::Result<SchemaName, String>>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        Strategy::Custom(Arc::new(f))
    }
}

/// An address or network (`10.0.0.0/8`, `192.168.1.7`, `fd00::/8`) whose
/// peers are trusted proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyNet {
    addr: IpAddr,
    prefix: u8,
}

/// A proxy network that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not an IP address or network (expected e.g. 10.0.0.0/8 or ::1)")]
pub struct ProxyNetError {
    /// The text given.
    pub input: String,
}

impl std::str::FromStr for ProxyNet {
    type Err = ProxyNetError;

    fn from_str(s: &str) -> std::result::Result<Self, ProxyNetError> {
        let err = || ProxyNetError {
            input: s.to_owned(),
        };
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| err())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(err)?
            }
            Some(_) => return Err(err()),
            None => max,
        };
        Ok(ProxyNet { addr, prefix })
    }
}

impl ProxyNet {
    /// Whether `ip` is in this network (an IPv4-mapped IPv6 address counts as
    /// its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = |ip: IpAddr| -> (u128, u8) {
            match ip.to_canonical() {
                IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
                IpAddr::V6(v6) => (u128::from(v6), 128),
            }
        };
        let ((net, width), (ip, ip_width)) = (bits(self.addr), bits(ip));
        if width != ip_width {
            return false;
        }
        let shift = u32::from(width - self.prefix);
        shift >= 128 || (net >> shift) == (ip >> shift)
    }
}

/// Whose forwarded headers the resolver believes.
#[derive(Debug, Clone, Default)]
enum ForwardedTrust {
    /// Nobody's: `Host` decides.
    #[default]
    Never,
    /// Peers in these networks.
    Proxies(Vec<ProxyNet>),
    /// Every peer, whoever sent the request.
    AnyPeer,
}

/// A normalised host: a domain name or an IP address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A domain name, normalised as [`Domain`] is.
    Name(Domain),
    /// An IP address.
    Ip(IpAddr),
}

/// Normalises a `Host` header: lowercase, port and trailing dot removed,
/// international names IDNA-encoded; IP addresses (`127.0.0.1:8000`, `[::1]`)
/// recognised.
pub fn normalize_host(raw: &str) -> std::result::Result<Host, DomainError> {
    match Domain::parse(raw) {
        Ok(domain) => Ok(Host::Name(domain)),
        Err(DomainError::IpAddress { .. }) => {
            let bare = raw.trim_end_matches('.');
            let ip = if let Some(rest) = bare.strip_prefix('[') {
                rest.split_once(']').and_then(|(ip, port)| {
                    let port_ok = port.is_empty()
                        || port
                            .strip_prefix(':')
                            .is_some_and(|p| p.parse::<u16>().is_ok());
                    port_ok.then(|| ip.parse().ok()).flatten()
                })
            } else {
                bare.parse::<IpAddr>()
                    .ok()
                    .or_else(|| bare.rsplit_once(':').and_then(|(h, _)| h.parse().ok()))
            };
            ip.map(Host::Ip).ok_or(DomainError::Invalid {
                input: raw.chars().take(300).collect(),
                reason: "not a valid IP address",
            })
        }
        Err(e) => Err(e),
    }
}

#[derive(Clone)]
struct Entry {
    tenant: Option<Tenant>,
    /// For a domain key with the redirect option: the tenant's primary domain.
    primary: Option<Domain>,
    expires: Instant,
    generation: u64,
}

/// A bounded cache of domain lookups, found and not found alike.
struct Cache {
    map: HashMap<Box<str>, Entry>,
    order: VecDeque<Box<str>>,
    capacity: usize,
}

impl Cache {
    fn get(&self, key: &str, now: Instant, generation: u64) -> Option<&Entry> {
        let entry = self.map.get(key)?;
        (entry.expires > now && entry.generation == generation).then_some(entry)
    }

    fn insert(&mut self, key: &str, entry: Entry) {
        if self.capacity == 0 {
            return;
        }
        if self.map.insert(key.into(), entry).is_none() {
            self.order.push_back(key.into());
        }
        while self.map.len() > self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
    }

    fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
    }
}

/// Builds a [`Resolver`]. Every setting has a default, documented on its method.
#[derive(Debug, Clone)]
#[must_use]
pub struct ResolverBuilder {
    pool: LookupPool,
    public_domains: Vec<Domain>,
    base_domains: Vec<Domain>,
    default_tenant: Option<SchemaName>,
    ip_hosts: IpHosts,
    trust_forwarded: ForwardedTrust,
    path_prefix: Option<String>,
    capacity: usize,
    ttl: Duration,
    negative_ttl: Duration,
    listen_url: Option<String>,
    strategies: Vec<Strategy>,
    show_public_if_no_tenant: bool,
    redirect_to_primary: bool,
}

impl ResolverBuilder {
    /// The strategies that find a request's tenant, tried in order (see
    /// [`Strategy`]). Defaults to `[Strategy::Host]`. A chain without
    /// `Strategy::Host` never looks at domains: a request no strategy
    /// identifies gets the public site.
    pub fn strategies(mut self, chain: impl IntoIterator<Item = Strategy>) -> Self {
        self.strategies = chain.into_iter().collect();
        self
    }

    /// Redirect requests on a tenant's secondary domains to its primary
    /// domain ([`Resolution::Redirect`]; the adapters answer 308 with the same
    /// path), so each tenant has one canonical address. A tenant without a
    /// primary domain is served on all of its domains. Defaults to `false`.
    pub fn redirect_to_primary_domain(mut self, redirect: bool) -> Self {
        self.redirect_to_primary = redirect;
        self
    }

    /// Serve the public site, instead of a 404, for requests that identify no
    /// tenant (django-tenants' `SHOW_PUBLIC_IF_NO_TENANT_FOUND`). Defaults to
    /// `false`.
    pub fn show_public_if_no_tenant(mut self, show: bool) -> Self {
        self.show_public_if_no_tenant = show;
        self
    }

    /// The database URL [`Resolver::listen`] connects to, when it should not
    /// be the pool's (behind a transaction pooler such as PgBouncer, `LISTEN`
    /// needs a direct connection to the server). Defaults to the pool's URL.
    pub fn listen_url(mut self, url: impl Into<String>) -> Self {
        self.listen_url = Some(url.into());
        self
    }

    /// A host that serves the public site (repeatable), e.g. `example.com`.
    /// Defaults to none.
    pub fn public_domain(mut self, domain: Domain) -> Self {
        self.public_domains.push(domain);
        self
    }

    /// A base domain (repeatable): a host that is neither one of them nor below one
    /// of them gets [`Resolution::BadRequest`] (400) instead of a 404. Defaults to
    /// none (every host is looked up).
    pub fn base_domain(mut self, domain: Domain) -> Self {
        self.base_domains.push(domain);
        self
    }

    /// Serve this tenant for hosts that match no domain, instead of a 404.
    /// Defaults to none.
    pub fn default_tenant(mut self, schema: SchemaName) -> Self {
        self.default_tenant = Some(schema);
        self
    }

    /// What IP-address hosts get. Defaults to [`IpHosts::NotFound`].
    pub fn ip_hosts(mut self, policy: IpHosts) -> Self {
        self.ip_hosts = policy;
        self
    }

    /// Proxies whose forwarded headers are believed: when the request's peer
    /// ([`RequestInfo::peer`]) is in one of these networks, the host comes from
    /// the value the nearest proxy set (the last `X-Forwarded-Host` value, or
    /// the last `host=` of `Forwarded`); a client's own forged values come
    /// before it and are ignored, as Rails' `trusted_proxies` and Laravel's
    /// TrustProxies do. Requests from other peers use `Host`. Defaults to no
    /// proxy (forwarded headers ignored). Repeatable.
    pub fn trusted_proxies(mut self, nets: impl IntoIterator<Item = ProxyNet>) -> Self {
        let mut list = match std::mem::take(&mut self.trust_forwarded) {
            ForwardedTrust::Proxies(list) => list,
            _ => Vec::new(),
        };
        list.extend(nets);
        self.trust_forwarded = ForwardedTrust::Proxies(list);
        self
    }

    /// Believes forwarded headers from every peer, as if every peer were a
    /// trusted proxy. DANGEROUS: any client that reaches the app directly
    /// picks its tenant with `X-Forwarded-Host`. Only for apps that no client
    /// can reach but through a proxy that sets the header, and whose peer
    /// address is unknown; prefer [`trusted_proxies`](Self::trusted_proxies).
    pub fn trust_any_forwarded_host_dangerously(mut self) -> Self {
        self.trust_forwarded = ForwardedTrust::AnyPeer;
        self
    }

    /// `true`: [`trust_any_forwarded_host_dangerously`](Self::trust_any_forwarded_host_dangerously);
    /// `false`: trust no proxy.
    #[deprecated(
        note = "use trusted_proxies, or trust_any_forwarded_host_dangerously if every peer is a proxy"
    )]
    pub fn trust_forwarded_host(mut self, trust: bool) -> Self {
        self.trust_forwarded = if trust {
            ForwardedTrust::AnyPeer
        } else {
            ForwardedTrust::Never
        };
        self
    }

    /// Path-prefix routing for apps that cannot use subdomains: on a public host,
    /// `<prefix><schema>/...` is routed to that tenant with the prefix stripped,
    /// e.g. `"/t/"`. Defaults to off.
    pub fn path_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.path_prefix = Some(prefix.into());
        self
    }

    /// Most domains cached. Defaults to 10,000.
    pub fn cache_capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// How long a found tenant stays cached (changes made through this crate
    /// invalidate at once). Defaults to 60 seconds.
    pub fn cache_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long a not-found answer stays cached. Defaults to 10 seconds.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = ttl;
        self
    }

    /// The resolver.
    pub fn build(self) -> Result<Resolver> {
        if let Some(prefix) = &self.path_prefix {
            if !prefix.starts_with('/') || !prefix.ends_with('/') || prefix.len() < 2 {
                return Err(Error::Config {
                    reason: format!("path prefix {prefix:?} must start and end with '/'"),
                });
            }
        }
        Ok(Resolver {
            inner: Arc::new(Inner {
                cache: Mutex::new(Cache {
                    map: HashMap::new(),
                    order: VecDeque::new(),
                    capacity: self.capacity,
                }),
                config: self,
            }),
        })
    }
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
    /// with [`Error::Refused`].
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
                        Err(Error::Refused {
                            reason: format!("tenant resolution panicked: {e}"),
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

    /// The host the request is for: a trusted proxy's forwarded host, the
    /// absolute-form target's authority, or `Host`.
    /// `Err` (a 400) when a trusted proxy's headers are malformed or
    /// contradict each other.
    fn request_host<'r>(
        &self,
        request: &RequestInfo<'r>,
    ) -> std::result::Result<Option<&'r str>, String> {
        let config = &self.inner.config;
        let trusted = match &config.trust_forwarded {
            ForwardedTrust::Never => false,
            ForwardedTrust::AnyPeer => true,
            ForwardedTrust::Proxies(nets) => request
                .peer
                .is_some_and(|peer| nets.iter().any(|net| net.contains(peer))),
        };
        let forwarded = if trusted {
            // The nearest proxy's value: the last element of each header.
            let x_forwarded = match request.x_forwarded_host {
                Some(list) => match list.rsplit(',').next().map(str::trim) {
                    Some("") | None => {
                        return Err("the last X-Forwarded-Host element is empty".into());
                    }
                    Some(last) => Some(last),
                },
                None => None,
            };
            let forwarded = match request.forwarded {
                Some(header) => forwarded_host(header)?,
                None => None,
            };
            match (x_forwarded, forwarded) {
                (Some(a), Some(b)) if !a.eq_ignore_ascii_case(b) => {
                    return Err(format!(
                        "X-Forwarded-Host ({a}) and Forwarded (host={b}) name different hosts"
                    ));
                }
                (a, b) => a.or(b),
            }
        } else {
            None
        };
        Ok(forwarded.or(request.target_authority).or(request.host))
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

    fn cached(&self, key: &str) -> Option<Option<Tenant>> {
        let cache = self.inner.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(key, Instant::now(), registry::generation())
            .map(|e| e.tenant.clone())
    }

    /// A cached domain lookup: the tenant, and the primary domain stored
    /// with it (with the redirect option).
    fn cached_domain(&self, key: &str) -> Option<(Option<Tenant>, Option<Domain>)> {
        let cache = self.inner.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(key, Instant::now(), registry::generation())
            .map(|e| (e.tenant.clone(), e.primary.clone()))
    }

    /// The blocking pool, which the blocking lookups need.
    #[cfg(feature = "sync")]
    fn blocking_pool(&self) -> Result<&TenantPool> {
        self.pool().ok_or_else(|| Error::Refused {
            reason: "this resolver looks tenants up through an async pool: \
                     call Resolver::resolve_async"
                .into(),
        })
    }

    #[cfg(feature = "sync")]
    fn load(
        &self,
        key: &str,
        query: impl FnOnce(&mut crate::TenantConnection) -> Result<Option<Tenant>>,
    ) -> Result<Option<Tenant>> {
        // Read the generation first: a change committed during the query makes
        // this answer stale at once.
        let generation = registry::generation();
        let pool = self.blocking_pool()?;
        let found = query(&mut pool.public()?)?;
        self.store(key, generation, &found);
        Ok(found)
    }

    /// [`load`](Self::load) of a domain with the tenant's primary domain.
    #[cfg(feature = "sync")]
    fn load_with_primary(
        &self,
        key: &str,
        domain: &Domain,
    ) -> Result<(Option<Tenant>, Option<Domain>)> {
        let generation = registry::generation();
        let pool = self.blocking_pool()?;
        let found = registry::find_tenant_and_primary_by_domain(&mut pool.public()?, domain)?;
        let (tenant, primary) = found.map_or((None, None), |(t, p)| (Some(t), p));
        self.store_with_primary(key, generation, &tenant, primary.clone());
        Ok((tenant, primary))
    }

    /// Caches an answer read under `generation`.
    fn store(&self, key: &str, generation: u64, found: &Option<Tenant>) {
        self.store_with_primary(key, generation, found, None);
    }

    /// Caches a domain lookup's answer with the tenant's primary domain.
    fn store_with_primary(
        &self,
        key: &str,
        generation: u64,
        found: &Option<Tenant>,
        primary: Option<Domain>,
    ) {
        let ttl = if found.is_some() {
            self.inner.config.ttl
        } else {
            self.inner.config.negative_ttl
        };
        let mut cache = self.inner.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.insert(
            key,
            Entry {
                tenant: found.clone(),
                primary,
                expires: Instant::now() + ttl,
                generation,
            },
        );
    }

    /// Drops every cached answer.
    pub fn invalidate_all(&self) {
        self.inner
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Starts listening on [`registry::CHANGE_CHANNEL`] and drops every
    /// cached answer (in this process) when any process changes tenants or
    /// domains; stops when the returned guard is dropped. If its connection
    /// fails, it reconnects and invalidates, since it may have missed a change.
    ///
    /// With a blocking pool this is a thread on a libpq connection, and fails
    /// if that cannot connect. With an async pool it is a task on the current
    /// tokio runtime (this fails outside one) on a connection of its own,
    /// which connects in the background; [`listen_async`](Self::listen_async)
    /// connects first and reports a failure.
    pub fn listen(&self) -> Result<ListenerGuard> {
        match &self.inner.config.pool {
            #[cfg(feature = "sync")]
            LookupPool::Sync(pool) => self.listen_thread(
                self.inner
                    .config
                    .listen_url
                    .clone()
                    .unwrap_or_else(|| pool.database_url().to_owned()),
            ),
            #[cfg(any(feature = "deadpool", feature = "bb8"))]
            LookupPool::Async(pool) => {
                let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::Config {
                    reason: "Resolver::listen on an async pool needs a tokio runtime".into(),
                })?;
                Ok(self.listen_task(&runtime, self.async_listen_url(pool), None))
            }
        }
    }

    /// [`listen`](Self::listen) from async code: with an async pool, connects
    /// the listener first (and fails if it cannot); with a blocking pool, the
    /// same as `listen` on a blocking thread.
    #[cfg(feature = "async")]
    pub async fn listen_async(&self) -> Result<ListenerGuard> {
        match &self.inner.config.pool {
            #[cfg(feature = "sync")]
            LookupPool::Sync(_) => {
                let me = self.clone();
                tokio::task::spawn_blocking(move || me.listen())
                    .await
                    .map_err(|e| Error::Config {
                        reason: format!("could not start the listener: {e}"),
                    })?
            }
            #[cfg(any(feature = "deadpool", feature = "bb8"))]
            LookupPool::Async(pool) => {
                let url = self.async_listen_url(pool);
                let first = listener_async::connect(&url).await?;
                Ok(self.listen_task(&tokio::runtime::Handle::current(), url, Some(first)))
            }
        }
    }

    #[cfg(any(feature = "deadpool", feature = "bb8"))]
    fn async_listen_url(&self, pool: &crate::AsyncTenantPool) -> String {
        self.inner
            .config
            .listen_url
            .clone()
            .unwrap_or_else(|| pool.database_url().to_owned())
    }

    #[cfg(any(feature = "deadpool", feature = "bb8"))]
    fn listen_task(
        &self,
        runtime: &tokio::runtime::Handle,
        url: String,
        first: Option<listener_async::Listening>,
    ) -> ListenerGuard {
        let stop = Arc::new(AtomicBool::new(false));
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let flag = Arc::clone(&stop);
        let task = runtime.spawn(listener_async::run(url, first, move || {
            !flag.load(Ordering::Relaxed) && weak.strong_count() > 0
        }));
        ListenerGuard {
            stop,
            running: Running::Task(task.abort_handle()),
        }
    }

    #[cfg(feature = "sync")]
    fn listen_thread(&self, url: String) -> Result<ListenerGuard> {
        use diesel::connection::SimpleConnection;
        let mut conn = connect_listener(&url)?;
        let stop = Arc::new(AtomicBool::new(false));
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let flag = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("diesel-tenancy-listen".into())
            .spawn(move || {
                let mut pinged = Instant::now();
                while !flag.load(Ordering::Relaxed) && weak.strong_count() > 0 {
                    let mut heard = false;
                    let mut broken = false;
                    for n in conn.notifications_iter() {
                        match n {
                            Ok(_) => heard = true,
                            Err(_) => {
                                broken = true;
                                break;
                            }
                        }
                    }
                    // A connection that died without a word (a half-open TCP
                    // connection) only shows when something is sent on it.
                    if !broken && pinged.elapsed() >= LISTENER_KEEPALIVE {
                        pinged = Instant::now();
                        broken = conn.batch_execute("SELECT 1").is_err();
                    }
                    if broken {
                        registry::bump_generation();
                        loop {
                            if flag.load(Ordering::Relaxed) {
                                return;
                            }
                            std::thread::sleep(Duration::from_millis(500));
                            if let Ok(c) = connect_listener(&url) {
                                conn = c;
                                break;
                            }
                        }
                        registry::bump_generation();
                    } else if heard {
                        registry::bump_generation();
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = conn.batch_execute("UNLISTEN *");
            })
            .map_err(|e| Error::Config {
                reason: format!("could not start the listener thread: {e}"),
            })?;
        Ok(ListenerGuard {
            stop,
            running: Running::Thread(Some(handle)),
        })
    }
}

/// How often the registry listener checks that its connection still works.
const LISTENER_KEEPALIVE: Duration = Duration::from_secs(10);

/// The `application_name` of the registry listener's connection, by which it
/// can be found in `pg_stat_activity`.
pub const LISTENER_APPLICATION_NAME: &str = "diesel-tenancy-listener";

/// `url` with the listener's `application_name` added (a URL or a libpq
/// key=value string).
fn listener_url(url: &str) -> String {
    if url.contains("://") {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}application_name={LISTENER_APPLICATION_NAME}")
    } else {
        format!("{url} application_name={LISTENER_APPLICATION_NAME}")
    }
}

#[cfg(feature = "sync")]
fn connect_listener(url: &str) -> Result<diesel::PgConnection> {
    use diesel::Connection;
    use diesel::connection::SimpleConnection;
    let mut conn = diesel::PgConnection::establish(&listener_url(url)).map_err(Error::Connect)?;
    conn.batch_execute(&format!("LISTEN {}", registry::CHANGE_CHANNEL))
        .map_err(Error::db("listen for registry changes"))?;
    Ok(conn)
}

/// The registry listener on an async connection of its own (tokio-postgres,
/// so no libpq), for resolvers on an async pool.
#[cfg(any(feature = "deadpool", feature = "bb8"))]
mod listener_async {
    use std::time::Duration;

    use futures_util::StreamExt;
    use tokio::sync::mpsc;

    use crate::{Error, Result, registry};

    /// A connected listener: notifications arrive on the channel; it closes
    /// when the connection ends.
    pub(super) struct Listening {
        client: tokio_postgres::Client,
        heard: mpsc::UnboundedReceiver<()>,
    }

    /// Connects and sends `LISTEN`.
    pub(super) async fn connect(url: &str) -> Result<Listening> {
        let (client, mut connection) =
            tokio_postgres::connect(&super::listener_url(url), tokio_postgres::NoTls)
                .await
                .map_err(|e| Error::Config {
                    reason: format!("the registry listener could not connect: {e}"),
                })?;
        let (tx, heard) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(|cx| connection.poll_message(cx));
            while let Some(Ok(message)) = messages.next().await {
                if matches!(message, tokio_postgres::AsyncMessage::Notification(_))
                    && tx.send(()).is_err()
                {
                    return;
                }
            }
        });
        client
            .batch_execute(&format!("LISTEN {}", registry::CHANGE_CHANNEL))
            .await
            .map_err(|e| Error::Config {
                reason: format!("the registry listener could not LISTEN: {e}"),
            })?;
        Ok(Listening { client, heard })
    }

    /// Invalidates on every notification while `running()`, reconnecting
    /// (and invalidating, since changes may have been missed) when the
    /// connection ends.
    pub(super) async fn run(url: String, first: Option<Listening>, running: impl Fn() -> bool) {
        let mut current = first;
        while running() {
            let mut listening = match current.take() {
                Some(l) => l,
                None => match connect(&url).await {
                    Ok(l) => {
                        registry::bump_generation();
                        l
                    }
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                },
            };
            let mut pinged = tokio::time::Instant::now();
            loop {
                match tokio::time::timeout(Duration::from_millis(500), listening.heard.recv()).await
                {
                    Ok(Some(())) => registry::bump_generation(),
                    Ok(None) => {
                        registry::bump_generation();
                        break;
                    }
                    Err(_) if !running() => return,
                    Err(_) => {}
                }
                // A connection that died without a word only shows when
                // something is sent on it.
                if pinged.elapsed() >= super::LISTENER_KEEPALIVE {
                    pinged = tokio::time::Instant::now();
                    let ping = listening.client.simple_query("SELECT 1");
                    if !matches!(
                        tokio::time::timeout(Duration::from_secs(5), ping).await,
                        Ok(Ok(_))
                    ) {
                        registry::bump_generation();
                        break;
                    }
                }
            }
        }
    }
}

/// Keeps [`Resolver::listen`]'s listener running; dropping it stops it.
#[derive(Debug)]
pub struct ListenerGuard {
    stop: Arc<AtomicBool>,
    running: Running,
}

#[derive(Debug)]
enum Running {
    #[cfg(feature = "sync")]
    Thread(Option<std::thread::JoinHandle<()>>),
    #[cfg(any(feature = "deadpool", feature = "bb8"))]
    Task(tokio::task::AbortHandle),
}

impl Drop for ListenerGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        match &mut self.running {
            #[cfg(feature = "sync")]
            Running::Thread(handle) => {
                if let Some(handle) = handle.take() {
                    let _ = handle.join();
                }
            }
            #[cfg(any(feature = "deadpool", feature = "bb8"))]
            Running::Task(task) => task.abort(),
        }
    }
}

/// Whether a path is free of what proxies normalise differently: `.` and
/// `..` segments, empty segments (`//`), and escaped dots or slashes.
fn plain_path(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    !["%2e", "%2f", "%5c", "\\", "//"]
        .iter()
        .any(|bad| lower.contains(bad))
        && path.split('/').all(|seg| seg != "." && seg != "..")
}

/// Splits `text` at `sep` outside `"..."` quoted strings; `Err` for an
/// unterminated quote or a backslash escape (no host needs one).
fn split_unquoted(text: &str, sep: u8) -> std::result::Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, b) in text.bytes().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b'\\' if quoted => return Err("Forwarded has an escape in a quoted string".into()),
            _ if b == sep && !quoted => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if quoted {
        return Err("Forwarded has an unterminated quoted string".into());
    }
    parts.push(&text[start..]);
    Ok(parts)
}

/// The `host=` of the last element of a `Forwarded` header (RFC 7239): the
/// element the nearest proxy added; `None` when it has no `host=`. The whole
/// header must parse (quoted strings, `token=value` pairs without spaces
/// around `=`, each parameter once per element); anything else is `Err`.
fn forwarded_host(header: &str) -> std::result::Result<Option<&str>, String> {
    let token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:[]".contains(&b))
    };
    let elements = split_unquoted(header, b',')?;
    let mut last_host = None;
    for (i, element) in elements.iter().enumerate() {
        let element = element.trim_matches(|c| c == ' ' || c == '\t');
        if element.is_empty() && i + 1 == elements.len() {
            return Err("the last Forwarded element is empty".into());
        }
        let mut seen: Vec<String> = Vec::new();
        let mut host = None;
        for pair in split_unquoted(element, b';')? {
            if pair.is_empty() {
                continue;
            }
            let Some((name, value)) = pair.split_once('=') else {
                return Err(format!("Forwarded has a pair without '=': {pair:?}"));
            };
            if !token(name) || name.contains([':', '[', ']']) {
                return Err(format!("Forwarded has a bad parameter name: {name:?}"));
            }
            let lower = name.to_ascii_lowercase();
            if seen.contains(&lower) {
                return Err(format!("Forwarded repeats {name:?} in one element"));
            }
            seen.push(lower);
            let value = match value.strip_prefix('"') {
                Some(rest) => rest
                    .strip_suffix('"')
                    .filter(|inner| !inner.contains('"'))
                    .ok_or_else(|| format!("Forwarded has a bad quoted value: {value:?}"))?,
                None if token(value) => value,
                None => return Err(format!("Forwarded has a bad value: {value:?}")),
            };
            if name.eq_ignore_ascii_case("host") {
                host = Some(value);
            }
        }
        last_host = host;
    }
    Ok(last_host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_normalise() {
        let name = |s: &str| match normalize_host(s).unwrap() {
            Host::Name(d) => d.to_string(),
            Host::Ip(ip) => ip.to_string(),
        };
        assert_eq!(name("ACME.Example.com:8000"), "acme.example.com");
        assert_eq!(name("acme.localhost."), "acme.localhost");
        assert_eq!(name("127.0.0.1:8000"), "127.0.0.1");
        assert_eq!(name("[::1]:8000"), "::1");
        assert_eq!(name("Bücher.example"), "xn--bcher-kva.example");
        assert!(normalize_host("a b").is_err());
        assert!(normalize_host(&"a".repeat(8192)).is_err());
        assert!(normalize_host("[::1").is_err());
    }

    #[test]
    fn forwarded_header_host() {
        assert_eq!(
            forwarded_host("for=1.2.3.4;host=acme.example.com;proto=https"),
            Ok(Some("acme.example.com"))
        );
        // Only the last element, the nearest proxy's, counts.
        assert_eq!(forwarded_host("host=\"a.b\", host=c.d"), Ok(Some("c.d")));
        assert_eq!(forwarded_host("host=a.b, for=1.2.3.4"), Ok(None));
        assert_eq!(forwarded_host("for=1.2.3.4"), Ok(None));
        assert_eq!(forwarded_host("host=\"[::1]:80\""), Ok(Some("[::1]:80")));
        for bad in [
            "for=\"x,host=a\", for=10.0.0.1;host",
            "host=\"a.b",
            "host = a.b",
            "host=a.b;host=c.d",
            "host=\"a\\\"b\"",
            "host=a.b,",
            "host=a b",
        ] {
            assert!(forwarded_host(bad).is_err(), "{bad:?}");
        }
        assert!(plain_path("/t/acme/x"));
        for bad in [
            "/t/acme/../globex/",
            "/x/../t/acme/",
            "//t/acme/",
            "/t/acme/%2e%2e/x",
            "/t/%2Facme",
            "/t/./acme",
        ] {
            assert!(!plain_path(bad), "{bad:?}");
        }
    }

    #[test]
    fn proxy_networks() {
        let net = |s: &str| s.parse::<ProxyNet>().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(net("10.0.0.0/8").contains(ip("10.200.3.4")));
        assert!(!net("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(net("10.0.0.0/8").contains(ip("::ffff:10.1.2.3")));
        assert!(net("192.168.1.7").contains(ip("192.168.1.7")));
        assert!(!net("192.168.1.7").contains(ip("192.168.1.8")));
        assert!(net("0.0.0.0/0").contains(ip("8.8.8.8")));
        assert!(!net("0.0.0.0/0").contains(ip("::1")));
        assert!(net("fd00::/8").contains(ip("fd12::1")));
        assert!(!net("fd00::/8").contains(ip("fe80::1")));
        assert!(net("::/0").contains(ip("2001:db8::1")));
        for bad in [
            "",
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0/8",
            "::1/129",
            "x",
            "10.0.0.0/+8",
            "1.2.3.4/08x",
        ] {
            assert!(bad.parse::<ProxyNet>().is_err(), "{bad:?}");
        }
    }
}
