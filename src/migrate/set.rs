//! A migration set loaded once per worker, and the schema it is applied to.

use diesel::migration::{Migration, MigrationSource};
use diesel::pg::Pg;

use crate::registry::lock_key;
use crate::{Error, Result, SchemaName};

/// A migration set loaded once per worker, sorted by version.
pub(crate) struct MigrationSet {
    pub(super) migrations: Vec<Box<dyn Migration<Pg>>>,
    pub(super) versions: Vec<String>,
    pub(super) digest: String,
    /// The digest of each proper prefix of the set (`versions[..k]`), mapped
    /// to `k`: a journal entry with one of them says which versions a tenant
    /// has.
    pub(super) prefixes: std::collections::HashMap<String, usize>,
}

impl MigrationSet {
    pub(crate) fn load<S: MigrationSource<Pg>>(source: &S, schema: &str) -> Result<Self> {
        let mut migrations = source.migrations().map_err(|source| Error::Migration {
            schema: schema.to_owned(),
            version: None,
            source,
        })?;
        migrations.sort_by_key(|m| m.name().version().to_string());
        let versions: Vec<String> = migrations
            .iter()
            .map(|m| m.name().version().to_string())
            .collect();
        let digest = digest(&versions);
        let prefixes = (0..versions.len())
            .map(|k| (self::digest(&versions[..k]), k))
            .collect();
        Ok(MigrationSet {
            migrations,
            versions,
            digest,
            prefixes,
        })
    }

    /// The set's versions, in order.
    pub(crate) fn versions(&self) -> &[String] {
        &self.versions
    }

    /// A short fingerprint of the set's versions: equal digests, same set.
    pub(crate) fn digest(&self) -> &str {
        &self.digest
    }

    /// How many leading versions of this set a tenant has, if its journal
    /// digest is that of a proper prefix of the set.
    pub(crate) fn known_prefix(&self, journal_digest: &str) -> Option<usize> {
        self.prefixes.get(journal_digest).copied()
    }

    pub(crate) fn pending(&self, applied: &[String]) -> Vec<&dyn Migration<Pg>> {
        self.migrations
            .iter()
            .zip(&self.versions)
            .filter(|(_, v)| !applied.contains(v))
            .map(|(m, _)| &**m)
            .collect()
    }
}

/// FNV-1a over the versions, hex-encoded.
pub(super) fn digest(versions: &[String]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in versions.join("\n").bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}-{}", versions.len())
}

/// Where a set is applied.
#[derive(Clone, Copy)]
pub(crate) enum Target<'a> {
    /// The shared set, on `public`.
    Public,
    /// A tenant's schema; `id` is its registry id, for the journal.
    Tenant { schema: &'a SchemaName, id: i64 },
}

impl Target<'_> {
    pub(crate) fn name(&self) -> &str {
        match self {
            Target::Public => "public",
            Target::Tenant { schema, .. } => schema.as_str(),
        }
    }

    /// The search path while migrating: the schema alone.
    pub(super) fn path(&self) -> String {
        match self {
            Target::Public => "public".to_owned(),
            Target::Tenant { schema, .. } => schema.quoted(),
        }
    }

    pub(super) fn ledger(&self) -> String {
        match self {
            Target::Public => "public.__diesel_schema_migrations".to_owned(),
            Target::Tenant { schema, .. } => {
                format!("{}.__diesel_schema_migrations", schema.quoted())
            }
        }
    }

    pub(super) fn lock_key(&self) -> String {
        lock_key(self.name())
    }

    pub(super) fn journal_id(&self) -> Option<i64> {
        match self {
            Target::Public => None,
            Target::Tenant { id, .. } => Some(*id),
        }
    }
}
