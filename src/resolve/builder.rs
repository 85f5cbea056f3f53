//! The resolver's settings.

use super::*;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{Domain, Error, Result, SchemaName};

/// Builds a [`Resolver`]. Every setting has a default, documented on its method.
#[derive(Debug, Clone)]
#[must_use]
pub struct ResolverBuilder {
    pub(super) pool: LookupPool,
    pub(super) public_domains: Vec<Domain>,
    pub(super) base_domains: Vec<Domain>,
    pub(super) default_tenant: Option<SchemaName>,
    pub(super) ip_hosts: IpHosts,
    pub(super) trust_forwarded: ForwardedTrust,
    pub(super) path_prefix: Option<String>,
    pub(super) capacity: usize,
    pub(super) ttl: Duration,
    pub(super) negative_ttl: Duration,
    pub(super) listen_url: Option<String>,
    pub(super) strategies: Vec<Strategy>,
    pub(super) show_public_if_no_tenant: bool,
    pub(super) redirect_to_primary: bool,
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
                cache: Mutex::new(Cache::new(self.capacity)),
                config: self,
            }),
        })
    }
}
