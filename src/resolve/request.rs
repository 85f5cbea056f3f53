//! The parts of a request the resolver reads: the host and its normalisation,
//! trusted proxies and their forwarded headers, the path.

use super::*;
use std::net::IpAddr;

use crate::{Domain, DomainError};

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
pub(super) enum ForwardedTrust {
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

impl Resolver {
    /// The host the request is for: a trusted proxy's forwarded host, the
    /// absolute-form target's authority, or `Host`.
    /// `Err` (a 400) when a trusted proxy's headers are malformed or
    /// contradict each other.
    pub(super) fn request_host<'r>(
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
}

/// Whether a path is free of what proxies normalise differently: `.` and
/// `..` segments, empty segments (`//`), and escaped dots or slashes.
pub(super) fn plain_path(path: &str) -> bool {
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
