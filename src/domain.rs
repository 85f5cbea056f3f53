//! Normalised domain names, as stored in the registry and matched against hosts.

use std::fmt;
use std::str::FromStr;

/// The longest domain name DNS allows, in bytes, without the trailing dot.
pub const MAX_DOMAIN_LEN: usize = 253;

/// A domain name in the one form the registry stores and compares: lowercase
/// ASCII, international names IDNA-encoded (through the `url` crate), no port,
/// no trailing dot.
///
/// ```
/// use diesel_tenancy::Domain;
///
/// assert_eq!(Domain::parse("ACME.Example.com.")?.as_str(), "acme.example.com");
/// assert_eq!(Domain::parse("acme.example.com:8080")?.as_str(), "acme.example.com");
/// assert_eq!(Domain::parse("bücher.example")?.as_str(), "xn--bcher-kva.example");
/// assert!(Domain::parse("acme.example.com; DROP TABLE x").is_err());
/// # Ok::<(), diesel_tenancy::DomainError>(())
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Domain(Box<str>);

/// Why a string is not a valid [`Domain`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DomainError {
    /// Nothing is left once the port and trailing dot are removed.
    #[error("domain is empty")]
    Empty,
    /// Longer than [`MAX_DOMAIN_LEN`] bytes once encoded.
    #[error("domain {input:?} is longer than 253 bytes")]
    TooLong {
        /// The rejected input (cut to 300 bytes at most).
        input: String,
    },
    /// An IP address, not a name.
    #[error("{input:?} is an IP address, not a domain name")]
    IpAddress {
        /// The rejected input.
        input: String,
    },
    /// The port after `:` is not a number from 0 to 65535.
    #[error("domain {input:?} has an invalid port")]
    InvalidPort {
        /// The rejected input.
        input: String,
    },
    /// Not a valid (internationalised) domain name.
    #[error("domain {input:?} is not a valid domain name: {reason}")]
    Invalid {
        /// The rejected input (cut to 300 bytes at most).
        input: String,
        /// Which rule failed.
        reason: &'static str,
    },
}

fn shorten(input: &str) -> String {
    let mut end = input.len().min(300);
    while !input.is_char_boundary(end) {
        end -= 1;
    }
    input[..end].to_owned()
}

impl Domain {
    /// Normalises and validates a domain name (a port, if any, is dropped).
    // One function on purpose: each step narrows what the next may see (size,
    // port, IDNA mapping, labels), and the order is the security argument.
    pub fn parse(input: &str) -> Result<Self, DomainError> {
        // Anything much longer than a domain can be is refused before any work.
        if input.len() > 4 * MAX_DOMAIN_LEN {
            return Err(DomainError::TooLong {
                input: shorten(input),
            });
        }
        let invalid = |reason| DomainError::Invalid {
            input: shorten(input),
            reason,
        };
        if input.starts_with('[') {
            return Err(DomainError::IpAddress {
                input: input.into(),
            });
        }
        let host = match input.rsplit_once(':') {
            Some((host, port)) => {
                if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(DomainError::InvalidPort {
                        input: shorten(input),
                    });
                }
                if port.parse::<u16>().is_err() {
                    return Err(DomainError::InvalidPort {
                        input: shorten(input),
                    });
                }
                host
            }
            None => input,
        };
        let host = host.strip_suffix('.').unwrap_or(host);
        if host.is_empty() {
            return Err(DomainError::Empty);
        }
        if host
            .chars()
            .any(|c| c.is_ascii_control() || c.is_whitespace())
        {
            return Err(invalid("it contains whitespace or control characters"));
        }
        // The URL host parser below decodes percent-escapes (`%61` is `a`): a
        // proxy that does not would see another host than this crate routes.
        if host.contains('%') {
            return Err(invalid("it contains a percent-escape"));
        }
        let ascii = match url::Host::parse(host) {
            Ok(url::Host::Domain(d)) => d,
            Ok(url::Host::Ipv4(_) | url::Host::Ipv6(_)) => {
                return Err(DomainError::IpAddress {
                    input: input.into(),
                });
            }
            Err(_) => return Err(invalid("IDNA encoding failed")),
        };
        if ascii.len() > MAX_DOMAIN_LEN {
            return Err(DomainError::TooLong {
                input: shorten(input),
            });
        }
        for label in ascii.split('.') {
            if label.is_empty() {
                return Err(invalid("it has an empty label"));
            }
            if label.len() > 63 {
                return Err(invalid("a label is longer than 63 bytes"));
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(invalid(
                    "only letters, digits and '-' are allowed in a label",
                ));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(invalid("a label starts or ends with '-'"));
            }
        }
        // Homographs: a label mixing Latin, Cyrillic or Greek letters (such as
        // "аpple" with a Cyrillic "а") is refused, as browsers refuse to show it.
        let (unicode, _) = idna::domain_to_unicode(&ascii);
        if unicode.split('.').any(mixes_scripts) {
            return Err(invalid("a label mixes Latin, Cyrillic or Greek letters"));
        }
        Ok(Domain(ascii.into_boxed_str()))
    }

    /// The normalised name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether a label has letters from more than one of Latin, Cyrillic and Greek.
fn mixes_scripts(label: &str) -> bool {
    let (mut latin, mut cyrillic, mut greek) = (false, false, false);
    for c in label.chars().filter(|c| c.is_alphabetic()) {
        match c as u32 {
            0x0041..=0x024F => latin = true,
            0x0370..=0x03FF | 0x1F00..=0x1FFF => greek = true,
            0x0400..=0x052F => cyrillic = true,
            _ => {}
        }
    }
    u8::from(latin) + u8::from(cyrillic) + u8::from(greek) > 1
}

impl FromStr for Domain {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Domain::parse(s)
    }
}

impl AsRef<str> for Domain {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl fmt::Debug for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Domain({:?})", &*self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises() {
        let d = |s| Domain::parse(s).map(|d| d.as_str().to_owned());
        assert_eq!(d("Acme.Example.COM").unwrap(), "acme.example.com");
        assert_eq!(d("acme.localhost:8000").unwrap(), "acme.localhost");
        assert_eq!(d("acme.localhost.").unwrap(), "acme.localhost");
        assert_eq!(d("München.de").unwrap(), "xn--mnchen-3ya.de");
    }

    #[test]
    fn rejects() {
        for bad in [
            "",
            ".",
            ":80",
            "a..b",
            "-a.com",
            "a_b.com",
            "a b.com",
            "a.com:99999",
            "a.com:x",
            "a'.com",
            "a\0.com",
            "127.0.0.1",
            "[::1]",
            "[::1]:80",
        ] {
            assert!(Domain::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(Domain::parse(&format!("{}.com", "a".repeat(64))).is_err());
        assert!(Domain::parse(&"a.".repeat(200)).is_err());
        assert!(Domain::parse(&"a".repeat(8192)).is_err());
        // Mixed scripts, spelled in Unicode or in punycode.
        assert!(Domain::parse("\u{430}pple.com").is_err());
        let punycode = url::Host::parse("\u{430}pple.com").unwrap().to_string();
        assert!(Domain::parse(&punycode).is_err(), "{punycode}");
        // One script is fine, in any script.
        assert!(Domain::parse("\u{43f}\u{440}\u{438}\u{43c}\u{435}\u{440}.\u{440}\u{444}").is_ok());
    }
}
