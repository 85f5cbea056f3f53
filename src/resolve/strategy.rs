//! The ways of identifying a request's tenant.

use super::*;
use std::sync::Arc;

use crate::{Domain, SchemaName};

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
