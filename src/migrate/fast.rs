//! The one-round-trip step for a tenant whose journal says which versions it
//! has.

use super::apply::millis;
use super::*;
use diesel::migration::Migration;

use crate::conn::PgConn;
use crate::registry;

use super::Outcome;

/// A text as an SQL string literal (standard-conforming strings, which
/// Diesel's sessions and the reset keep).
pub(super) fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A list of versions as an SQL `text[]` literal.
pub(super) fn text_array(versions: &[String]) -> String {
    let items: Vec<String> = versions.iter().map(|v| literal(v)).collect();
    format!("ARRAY[{}]::text[]", items.join(", "))
}

/// The fast path of [`apply`] for a tenant whose journal says it has the
/// first `known` versions of `set`: the whole step in one round trip (one
/// multi-statement text: the transaction, the path, the timeouts and the
/// lock, a guard that the ledger holds exactly those versions, the pending
/// migrations, the ledger rows, the journal entry, the commit). `None` when
/// the fast path does not apply (Citus, a non-transactional migration, a
/// migration that is not plain SQL, `LockMode::Skip`) or the step failed for
/// any reason (the guard, the migration, the lock timeout): the transaction
/// is rolled back and the caller takes the careful path, which reports
/// failures precisely.
pub(crate) fn apply_fast(
    conn: &mut impl PgConn,
    target: Target<'_>,
    set: &MigrationSet,
    known: usize,
    settings: &ApplySettings,
) -> Option<Outcome> {
    let Target::Tenant { schema, id } = target else {
        return None;
    };
    if settings.split || settings.lock != LockMode::Wait || known >= set.migrations.len() {
        return None;
    }
    let pending = &set.migrations[known..];
    if pending.iter().any(|m| !m.metadata().run_in_transaction()) {
        return None;
    }
    let mut sql = String::from("BEGIN;\n");
    let mut settings_sql = format!(
        "SELECT set_config('search_path', {}, true)",
        literal(&target.path())
    );
    for (name, value) in [
        ("lock_timeout", millis(settings.lock_timeout)),
        ("statement_timeout", millis(settings.statement_timeout)),
    ] {
        if let Some(value) = value {
            settings_sql += &format!(", set_config('{name}', {}, true)", literal(&value));
        }
    }
    settings_sql += &format!(
        ", pg_advisory_xact_lock(hashtextextended({}, 0));\n",
        literal(&target.lock_key())
    );
    sql += &settings_sql;
    let ledger = target.ledger();
    sql += &format!(
        "DO $tenancy_guard$ BEGIN IF (SELECT count(DISTINCT version) FROM {ledger} WHERE version = ANY({known_versions})) <> {known} \
         OR EXISTS (SELECT 1 FROM {ledger} WHERE version = ANY({pending_versions})) \
         THEN RAISE EXCEPTION 'diesel_tenancy: the ledger of % disagrees with the journal', {schema_literal}; END IF; END $tenancy_guard$;\n",
        known_versions = text_array(&set.versions[..known]),
        pending_versions = text_array(&set.versions[known..]),
        schema_literal = literal(schema.as_str()),
    );
    for m in pending {
        for text in super::statements::captured(&**m)? {
            sql += &text;
            // A newline first: the text may end in a `--` comment.
            sql += "\n;\n";
        }
    }
    let rows: Vec<String> = set.versions[known..]
        .iter()
        .map(|v| format!("({})", literal(v)))
        .collect();
    sql += &format!(
        "INSERT INTO {ledger} (version) VALUES {};\n",
        rows.join(", ")
    );
    let latest = set
        .versions
        .last()
        .map_or("NULL".to_owned(), |v| literal(v));
    sql += &registry::complete_sql(&id.to_string(), &latest, &literal(&set.digest));
    sql += ";\n";
    sql += "COMMIT;";
    match conn.batch_execute(&sql) {
        Ok(()) => Some(Outcome::Applied {
            versions: set.versions[known..].to_vec(),
            non_transactional: Vec::new(),
        }),
        Err(_) => {
            // The text stopped at the failure, inside its transaction.
            let _ = conn.batch_execute("ROLLBACK");
            None
        }
    }
}
