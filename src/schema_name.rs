//! Validated tenant schema names and the one function that quotes them into SQL.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;

/// The longest identifier PostgreSQL keeps without truncating it (`NAMEDATALEN - 1`).
pub const MAX_SCHEMA_NAME_LEN: usize = 63;

/// Schema names no tenant may take: PostgreSQL's own and the ones this crate keeps
/// for itself.
pub const RESERVED_SCHEMA_NAMES: &[&str] = &["public", "information_schema", "diesel_tenancy"];

/// A valid tenant schema name.
///
/// A value of this type can only be made by parsing, which checks that the name
/// matches `^[a-z_][a-z0-9_]*$`, is 1 to 63 bytes long, does not start with `pg_`
/// and is not one of [`RESERVED_SCHEMA_NAMES`]. Whatever reaches SQL as an
/// identifier in this crate is a `SchemaName`, quoted by one function.
///
/// ```
/// use diesel_tenancy::{SchemaName, SchemaNameError};
///
/// let name: SchemaName = "acme".parse()?;
/// assert_eq!(name.as_str(), "acme");
/// assert_eq!(
///     "a; DROP SCHEMA public".parse::<SchemaName>(),
///     Err(SchemaNameError::InvalidChar { name: "a; DROP SCHEMA public".into(), ch: ';', index: 1 })
/// );
/// assert!(matches!("public".parse::<SchemaName>(), Err(SchemaNameError::Reserved { .. })));
/// # Ok::<(), SchemaNameError>(())
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SchemaName(Box<str>);

/// Why a string is not a valid [`SchemaName`]. Each variant names the rule that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaNameError {
    /// The name is the empty string.
    #[error("schema name is empty")]
    Empty,
    /// The name is longer than [`MAX_SCHEMA_NAME_LEN`] bytes.
    #[error("schema name {name:?} is {len} bytes long; the limit is 63")]
    TooLong {
        /// The rejected name.
        name: String,
        /// Its length in bytes.
        len: usize,
    },
    /// The first character is not a lowercase ASCII letter or `_`.
    #[error("schema name {name:?} must start with a lowercase ASCII letter or '_', not {ch:?}")]
    InvalidStart {
        /// The rejected name.
        name: String,
        /// The offending first character.
        ch: char,
    },
    /// A character other than a lowercase ASCII letter, digit or `_`.
    #[error(
        "schema name {name:?} has {ch:?} at byte {index}; only lowercase ASCII letters, digits and '_' are allowed"
    )]
    InvalidChar {
        /// The rejected name.
        name: String,
        /// The offending character.
        ch: char,
        /// Its byte offset in the name.
        index: usize,
    },
    /// The name starts with `pg_`, which PostgreSQL reserves for system schemas.
    #[error("schema name {name:?} starts with \"pg_\", which PostgreSQL reserves")]
    SystemPrefix {
        /// The rejected name.
        name: String,
    },
    /// The name is one of [`RESERVED_SCHEMA_NAMES`].
    #[error("schema name {name:?} is reserved")]
    Reserved {
        /// The rejected name.
        name: String,
    },
}

impl SchemaName {
    /// Parses and validates a schema name. See the type's docs for the rules.
    pub fn new(name: &str) -> Result<Self, SchemaNameError> {
        validate(name)?;
        Ok(SchemaName(name.into()))
    }

    /// The name as a string slice (unquoted).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as a quoted SQL identifier, for example `"acme"`.
    ///
    /// This is the only function in the crate that turns a name into SQL text.
    pub fn quoted(&self) -> String {
        quote_ident(self)
    }
}

/// Quotes a validated schema name as an SQL identifier: wrapped in double quotes,
/// with any embedded double quote doubled (validation already rules them out; the
/// doubling makes the function safe on its own).
pub(crate) fn quote_ident(name: &SchemaName) -> String {
    let mut out = String::with_capacity(name.0.len() + 2);
    out.push('"');
    for ch in name.0.chars() {
        if ch == '"' {
            out.push('"');
        }
        out.push(ch);
    }
    out.push('"');
    out
}

fn validate(name: &str) -> Result<(), SchemaNameError> {
    let mut chars = name.char_indices();
    let Some((_, first)) = chars.next() else {
        return Err(SchemaNameError::Empty);
    };
    if !(first.is_ascii_lowercase() || first == '_') {
        return Err(SchemaNameError::InvalidStart {
            name: name.into(),
            ch: first,
        });
    }
    if let Some((index, ch)) =
        chars.find(|&(_, c)| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
    {
        return Err(SchemaNameError::InvalidChar {
            name: name.into(),
            ch,
            index,
        });
    }
    if name.len() > MAX_SCHEMA_NAME_LEN {
        return Err(SchemaNameError::TooLong {
            name: name.into(),
            len: name.len(),
        });
    }
    if name.starts_with("pg_") {
        return Err(SchemaNameError::SystemPrefix { name: name.into() });
    }
    if RESERVED_SCHEMA_NAMES.contains(&name) {
        return Err(SchemaNameError::Reserved { name: name.into() });
    }
    Ok(())
}

impl FromStr for SchemaName {
    type Err = SchemaNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SchemaName::new(s)
    }
}

impl TryFrom<&str> for SchemaName {
    type Error = SchemaNameError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        SchemaName::new(s)
    }
}

impl TryFrom<String> for SchemaName {
    type Error = SchemaNameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        validate(&s)?;
        Ok(SchemaName(s.into_boxed_str()))
    }
}

impl AsRef<str> for SchemaName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for SchemaName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SchemaName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl fmt::Debug for SchemaName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SchemaName({:?})", &*self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_names() {
        for ok in ["a", "_", "acme", "acme_2", "t0123456789", &"a".repeat(63)] {
            assert_eq!(SchemaName::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn reports_the_rule_that_failed() {
        assert_eq!(SchemaName::new(""), Err(SchemaNameError::Empty));
        assert!(matches!(
            SchemaName::new(&"a".repeat(64)),
            Err(SchemaNameError::TooLong { len: 64, .. })
        ));
        assert!(matches!(
            SchemaName::new("1abc"),
            Err(SchemaNameError::InvalidStart { ch: '1', .. })
        ));
        assert!(matches!(
            SchemaName::new("Acme"),
            Err(SchemaNameError::InvalidStart { ch: 'A', .. })
        ));
        assert!(matches!(
            SchemaName::new("ac\"me"),
            Err(SchemaNameError::InvalidChar {
                ch: '"',
                index: 2,
                ..
            })
        ));
        // Cyrillic 'а' looks like Latin 'a'.
        assert!(matches!(
            SchemaName::new("\u{430}cme"),
            Err(SchemaNameError::InvalidStart { .. })
        ));
        assert!(matches!(
            SchemaName::new("pg_catalog"),
            Err(SchemaNameError::SystemPrefix { .. })
        ));
        for reserved in RESERVED_SCHEMA_NAMES {
            assert!(matches!(
                SchemaName::new(reserved),
                Err(SchemaNameError::Reserved { .. })
            ));
        }
    }

    #[test]
    fn quoting_wraps_in_double_quotes() {
        assert_eq!(SchemaName::new("acme").unwrap().quoted(), "\"acme\"");
    }
}
