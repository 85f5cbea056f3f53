//! Applying one migration set to one schema: locked, in one transaction, with only
//! that schema on the search path, and journalled.

use std::time::Duration;

use diesel::migration::{CREATE_MIGRATIONS_TABLE, Migration};
use diesel::pg::Pg;
use diesel::sql_types::{Array, BigInt, Bool, Nullable, Text};

use crate::conn::PgConn;
use crate::{Error, Result, registry};

use diesel::prelude::*;

use super::{MigrationError, MigrationSet, Outcome, Target};

/// How a run treats a schema whose migration lock another run holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum LockMode {
    /// Wait for the other run (bounded by the lock timeout, if set). Once the
    /// lock is ours, the ledger is read again, so nothing is applied twice.
    #[default]
    Wait,
    /// Skip the schema and report it as [`Outcome::Locked`].
    Skip,
}

/// Lock and timeout settings for [`apply`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ApplySettings {
    pub(crate) lock: LockMode,
    pub(crate) lock_timeout: Option<Duration>,
    pub(crate) statement_timeout: Option<Duration>,
    /// Send each migration statement by statement (Citus mode; see
    /// [`statements`](super::statements)).
    pub(crate) split: bool,
}

enum Stop {
    Locked,
    Missing,
    /// A non-transactional migration found `current_schema()` was not the
    /// target's schema, and did not run.
    NotOnPath {
        version: String,
        current_schema: Option<String>,
    },
    Failed {
        version: Option<String>,
        error: MigrationError,
    },
}

impl From<diesel::result::Error> for Stop {
    fn from(e: diesel::result::Error) -> Self {
        Stop::Failed {
            version: None,
            error: MigrationError::new(e),
        }
    }
}

pub(super) fn millis(d: Option<Duration>) -> Option<String> {
    d.map(|d| format!("{}ms", d.as_millis().max(1)))
}

/// What [`prepare`] found: the lock, and the path and timeouts the
/// transaction had before (the caller's, when the batch runs inside a
/// transaction of the caller's).
#[derive(QueryableByName)]
struct Prepared {
    #[diesel(sql_type = Bool)]
    locked: bool,
    #[diesel(sql_type = Text)]
    search_path: String,
    #[diesel(sql_type = Text)]
    lock_timeout: String,
    #[diesel(sql_type = Text)]
    statement_timeout: String,
}

#[derive(QueryableByName)]
struct Version {
    #[diesel(sql_type = Text)]
    version: String,
}

/// In the current transaction: only the target on the path, the timeouts, and the
/// target's advisory lock, in one statement, which also remembers the values
/// they replace (`OFFSET 0` keeps the remembering first). Fails if the schema
/// is missing.
fn prepare(
    conn: &mut impl PgConn,
    target: Target<'_>,
    settings: &ApplySettings,
) -> Result<Prepared, Stop> {
    let lock = match settings.lock {
        LockMode::Wait => "pg_advisory_xact_lock(hashtextextended($4, 0))::text IS NOT NULL",
        LockMode::Skip => "pg_try_advisory_xact_lock(hashtextextended($4, 0))",
    };
    let sql = format!(
        "SELECT s.search_path, s.lock_timeout, s.statement_timeout, \
                set_config('search_path', $1, true) IS NOT NULL \
           AND set_config('lock_timeout', coalesce($2, s.lock_timeout), true) IS NOT NULL \
           AND set_config('statement_timeout', coalesce($3, s.statement_timeout), true) IS NOT NULL \
           AND {lock} AS locked \
         FROM (SELECT current_setting('search_path') AS search_path, \
                      current_setting('lock_timeout') AS lock_timeout, \
                      current_setting('statement_timeout') AS statement_timeout \
               OFFSET 0) s, \
              pg_catalog.pg_namespace WHERE nspname = $5"
    );
    let row = diesel::sql_query(sql)
        .bind::<Text, _>(target.path())
        .bind::<Nullable<Text>, _>(millis(settings.lock_timeout))
        .bind::<Nullable<Text>, _>(millis(settings.statement_timeout))
        .bind::<Text, _>(target.lock_key())
        .bind::<Text, _>(target.name())
        .get_result::<Prepared>(conn)
        .optional()?;
    match row {
        None => Err(Stop::Missing),
        Some(Prepared { locked: false, .. }) => Err(Stop::Locked),
        Some(prepared) => Ok(prepared),
    }
}

/// Ends a batch that runs inside a transaction of the caller's (Diesel's
/// depth above one: the batch's own transaction, or the tenant creation's,
/// is a savepoint): puts back the path and timeouts [`prepare`] replaced, so
/// that the caller's next statements run where they ran before. A batch in a
/// transaction of its own needs nothing: its settings end with it.
fn restore_caller<C: PgConn>(conn: &mut C, prepared: &Prepared) -> QueryResult<()> {
    use diesel::connection::TransactionManager;
    let depth = C::TransactionManager::transaction_manager_status_mut(conn).transaction_depth();
    if !matches!(depth, Ok(Some(d)) if d.get() > 1) {
        return Ok(());
    }
    diesel::sql_query(
        "SELECT set_config('search_path', $1, true), set_config('lock_timeout', $2, true), \
                set_config('statement_timeout', $3, true)",
    )
    .bind::<Text, _>(&prepared.search_path)
    .bind::<Text, _>(&prepared.lock_timeout)
    .bind::<Text, _>(&prepared.statement_timeout)
    .execute(conn)?;
    Ok(())
}

fn applied_versions(conn: &mut impl PgConn) -> QueryResult<Vec<String>> {
    conn.batch_execute(CREATE_MIGRATIONS_TABLE)?;
    Ok(
        diesel::sql_query("SELECT version::text AS version FROM __diesel_schema_migrations")
            .load::<Version>(conn)?
            .into_iter()
            .map(|v| v.version)
            .collect(),
    )
}

fn run_migration(conn: &mut impl PgConn, m: &dyn Migration<Pg>, split: bool) -> Result<(), Stop> {
    let result = if split {
        super::statements::run_split(conn, m)
    } else {
        m.run(conn).map_err(MigrationError::new)
    };
    result.map_err(|error| Stop::Failed {
        version: Some(m.name().version().to_string()),
        error,
    })
}

/// Records versions in the schema's ledger and, for a tenant whose set is now
/// complete, the journal entry: in one statement, or in two when `split` (on
/// Citus the ledger is a distributed table and the journal a local one, which
/// one statement cannot modify together).
fn record(
    conn: &mut impl PgConn,
    target: Target<'_>,
    versions: &[String],
    complete: Option<&MigrationSet>,
    split: bool,
) -> QueryResult<()> {
    const LEDGER: &str =
        "INSERT INTO __diesel_schema_migrations (version) SELECT unnest($1::text[])";
    let journal = target.journal_id().zip(complete);
    if split || journal.is_none() {
        if !versions.is_empty() {
            diesel::sql_query(LEDGER)
                .bind::<Array<Text>, _>(versions)
                .execute(conn)?;
        }
        let Some((id, set)) = journal else {
            return Ok(());
        };
        diesel::sql_query(registry::complete_sql("$1", "$2", "$3"))
            .bind::<BigInt, _>(id)
            .bind::<Nullable<Text>, _>(set.versions.last())
            .bind::<Text, _>(&set.digest)
            .execute(conn)?;
    } else if let Some((id, set)) = journal {
        diesel::sql_query(format!(
            "WITH ledger AS ({LEDGER}) {}",
            registry::complete_sql("$2", "$3", "$4")
        ))
        .bind::<Array<Text>, _>(versions)
        .bind::<BigInt, _>(id)
        .bind::<Nullable<Text>, _>(set.versions.last())
        .bind::<Text, _>(&set.digest)
        .execute(conn)?;
    }
    Ok(())
}

/// What one transaction did.
struct Batch {
    applied: Vec<String>,
    /// Index into the pending list of a non-transactional migration to run next.
    next_non_transactional: Option<String>,
}

/// One transactional batch: every pending migration up to the first one marked
/// `run_in_transaction = false`.
fn batch(
    conn: &mut impl PgConn,
    target: Target<'_>,
    set: &MigrationSet,
    settings: &ApplySettings,
) -> Result<Batch, Stop> {
    let prepared = prepare(conn, target, settings)?;
    let applied = applied_versions(conn)?;
    let pending = set.pending(&applied);
    let mut done = Vec::new();
    let mut next_non_transactional = None;
    for m in &pending {
        if !m.metadata().run_in_transaction() {
            next_non_transactional = Some(m.name().version().to_string());
            break;
        }
        run_migration(conn, *m, settings.split)?;
        done.push(m.name().version().to_string());
    }
    let complete = next_non_transactional.is_none().then_some(set);
    record(conn, target, &done, complete, settings.split)?;
    restore_caller(conn, &prepared)?;
    Ok(Batch {
        applied: done,
        next_non_transactional,
    })
}

/// The session settings a non-transactional migration changes, as they were
/// before, and whether the schema's migration lock was taken.
#[derive(QueryableByName)]
struct Entered {
    #[diesel(sql_type = Text)]
    search_path: String,
    #[diesel(sql_type = Text)]
    lock_timeout: String,
    #[diesel(sql_type = Text)]
    statement_timeout: String,
    #[diesel(sql_type = Bool)]
    locked: bool,
}

#[derive(QueryableByName)]
struct Head {
    #[diesel(sql_type = Nullable<Text>)]
    current_schema: Option<String>,
}

/// Outside a transaction, in one statement: remembers the session's path and
/// timeouts, sets the timeouts of `settings` for the session, then takes the
/// target's migration lock (session-level; waiting or not, as `settings.lock`
/// says). `OFFSET 0` keeps the remembering before the setting. If the
/// statement fails (a lock timeout), the server undoes its settings.
fn enter_session(
    conn: &mut impl PgConn,
    target: Target<'_>,
    settings: &ApplySettings,
) -> QueryResult<Entered> {
    let lock = match settings.lock {
        LockMode::Wait => "pg_advisory_lock(hashtextextended($3, 0))::text IS NOT NULL",
        LockMode::Skip => "pg_try_advisory_lock(hashtextextended($3, 0))",
    };
    let sql = format!(
        "SELECT s.search_path, s.lock_timeout, s.statement_timeout, \
                set_config('lock_timeout', coalesce($1, s.lock_timeout), false) IS NOT NULL \
            AND set_config('statement_timeout', coalesce($2, s.statement_timeout), false) IS NOT NULL \
            AND {lock} AS locked \
         FROM (SELECT current_setting('search_path') AS search_path, \
                      current_setting('lock_timeout') AS lock_timeout, \
                      current_setting('statement_timeout') AS statement_timeout \
               OFFSET 0) s"
    );
    diesel::sql_query(sql)
        .bind::<Nullable<Text>, _>(millis(settings.lock_timeout))
        .bind::<Nullable<Text>, _>(millis(settings.statement_timeout))
        .bind::<Text, _>(target.lock_key())
        .get_result::<Entered>(conn)
}

/// Puts the target alone on the session's search path and reads
/// `current_schema()` back, in one statement. Run once the lock is held, as a
/// statement of its own, so that it sees a schema dropped or renamed while the
/// lock was awaited (drop and rename take the same lock).
fn set_session_path(conn: &mut impl PgConn, target: Target<'_>) -> QueryResult<Option<String>> {
    Ok(diesel::sql_query(
        "SELECT CASE WHEN set_config('search_path', $1, false) IS NOT NULL \
                THEN current_schema() END AS current_schema",
    )
    .bind::<Text, _>(target.path())
    .get_result::<Head>(conn)?
    .current_schema)
}

/// Undoes [`enter_session`]: the remembered path and timeouts (if the
/// statement got that far), and the session-level migration lock if this
/// session holds it.
fn leave_session(
    conn: &mut impl PgConn,
    target: Target<'_>,
    entered: Option<&Entered>,
) -> QueryResult<()> {
    diesel::sql_query(
        "SELECT set_config('search_path', coalesce($2, current_setting('search_path')), false), \
                set_config('lock_timeout', coalesce($3, current_setting('lock_timeout')), false), \
                set_config('statement_timeout', coalesce($4, current_setting('statement_timeout')), false), \
                (SELECT bool_or(pg_advisory_unlock(h.k)) \
                 FROM (SELECT hashtextextended($1, 0) AS k) h \
                 WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_locks \
                               WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid() \
                                 AND database = (SELECT oid FROM pg_catalog.pg_database \
                                                 WHERE datname = current_database()) \
                                 AND objsubid = 1 \
                                 AND classid::bigint = (h.k >> 32) & 4294967295 \
                                 AND objid::bigint = h.k & 4294967295))",
    )
    .bind::<Text, _>(target.lock_key())
    .bind::<Nullable<Text>, _>(entered.map(|e| &e.search_path))
    .bind::<Nullable<Text>, _>(entered.map(|e| &e.lock_timeout))
    .bind::<Nullable<Text>, _>(entered.map(|e| &e.statement_timeout))
    .execute(conn)?;
    Ok(())
}

/// A migration that cannot run in a transaction: on its own, under the
/// session-level form of the same lock, with the same lock mode and timeouts
/// as a batch, and only if the target's schema really is at the head of the
/// search path (a tenant dropped or renamed since the last batch, or one the
/// role cannot use, stops here and nothing runs). The session's path and
/// timeouts are put back afterwards.
fn non_transactional(
    conn: &mut impl PgConn,
    target: Target<'_>,
    set: &MigrationSet,
    settings: &ApplySettings,
    version: &str,
) -> Result<(), Stop> {
    let m = set
        .migrations
        .iter()
        .find(|m| m.name().version().to_string() == version)
        .expect("the version comes from this set");
    let entered = match enter_session(conn, target, settings) {
        Ok(entered) => entered,
        Err(e) => {
            // Best effort: the lock is released if the failure came after it.
            let _ = leave_session(conn, target, None);
            return Err(e.into());
        }
    };
    let result = (|| -> Result<(), Stop> {
        if !entered.locked {
            return Err(Stop::Locked);
        }
        let current_schema = set_session_path(conn, target)?;
        if current_schema.as_deref() != Some(target.name()) {
            return Err(Stop::NotOnPath {
                version: version.to_owned(),
                current_schema,
            });
        }
        if applied_versions(conn)?.iter().any(|v| v == version) {
            return Ok(());
        }
        run_migration(conn, &**m, settings.split)?;
        record(conn, target, &[version.to_owned()], None, settings.split)?;
        Ok(())
    })();
    let left = leave_session(conn, target, Some(&entered));
    result?;
    left?;
    Ok(())
}

/// Applies every pending migration of `set` to `target`: all transactional ones
/// in one transaction (a failure rolls the schema back to where it was).
pub(crate) fn apply(
    conn: &mut impl PgConn,
    target: Target<'_>,
    set: &MigrationSet,
    settings: &ApplySettings,
) -> Outcome {
    let mut versions = Vec::new();
    let mut non_transactional_done = Vec::new();
    loop {
        let result = conn
            .transaction(|conn| batch(conn, target, set, settings))
            .and_then(|batch| {
                versions.extend(batch.applied);
                match batch.next_non_transactional {
                    Some(v) => {
                        non_transactional(conn, target, set, settings, &v)?;
                        versions.push(v.clone());
                        non_transactional_done.push(v);
                        Ok(true)
                    }
                    None => Ok(false),
                }
            });
        match result {
            Ok(true) => continue,
            Ok(false) if versions.is_empty() => return Outcome::UpToDate,
            Ok(false) => {
                return Outcome::Applied {
                    versions,
                    non_transactional: non_transactional_done,
                };
            }
            Err(Stop::Locked) => return Outcome::Locked,
            Err(Stop::Missing) => return Outcome::SchemaMissing,
            Err(Stop::NotOnPath {
                version,
                current_schema,
            }) => {
                if let Some(id) = target.journal_id() {
                    let error = super::report::not_on_path(
                        target.name(),
                        &version,
                        current_schema.as_deref(),
                    );
                    registry::record_failure(conn, id, Some(&version), &error);
                }
                return Outcome::SchemaNotOnPath {
                    schema: target.name().to_owned(),
                    version,
                    current_schema,
                    applied: versions,
                };
            }
            Err(Stop::Failed { version, error }) => {
                if let Some(id) = target.journal_id() {
                    registry::record_failure(conn, id, version.as_deref(), &error.to_string());
                }
                return Outcome::Failed {
                    version,
                    error,
                    applied: non_transactional_done,
                };
            }
        }
    }
}

/// For a caller already in a transaction (tenant creation): applies every
/// migration of the set, all of which must be transactional.
pub(crate) fn apply_in_transaction(
    conn: &mut impl PgConn,
    target: Target<'_>,
    set: &MigrationSet,
    split: bool,
) -> Result<Vec<String>> {
    let to_error = |stop| match stop {
        Stop::Locked => Error::SchemaLocked {
            schema: target.name().to_owned(),
        },
        Stop::Missing => Error::SchemaMissing {
            schema: target.name().to_owned(),
        },
        Stop::NotOnPath {
            version,
            current_schema,
        } => Error::Migration {
            schema: target.name().to_owned(),
            source: super::report::not_on_path(target.name(), &version, current_schema.as_deref())
                .into(),
            version: Some(version),
        },
        Stop::Failed { version, error } => Error::Migration {
            schema: target.name().to_owned(),
            version,
            source: error.into(),
        },
    };
    let settings = ApplySettings {
        split,
        ..ApplySettings::default()
    };
    let batch = batch(conn, target, set, &settings).map_err(to_error)?;
    if let Some(version) = batch.next_non_transactional {
        return Err(Error::NonTransactionalMigration {
            schema: target.name().to_owned(),
            version,
        });
    }
    Ok(batch.applied)
}

/// Dry run: the versions `set` would apply to `target` (`None`: the schema does
/// not exist). Reads the ledger without locking or writing anything.
pub(crate) fn pending_versions(
    conn: &mut impl PgConn,
    target: Target<'_>,
    set: &MigrationSet,
) -> Result<Option<Vec<String>>, MigrationError> {
    #[derive(QueryableByName)]
    struct Exists {
        #[diesel(sql_type = Bool)]
        schema: bool,
        #[diesel(sql_type = Bool)]
        ledger: bool,
    }
    let exists = diesel::sql_query(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1) AS schema, \
                to_regclass($2) IS NOT NULL AS ledger",
    )
    .bind::<Text, _>(target.name())
    .bind::<Text, _>(target.ledger())
    .get_result::<Exists>(conn)
    .map_err(MigrationError::new)?;
    if !exists.schema {
        return Ok(None);
    }
    let applied: Vec<String> = if exists.ledger {
        diesel::sql_query(format!(
            "SELECT version::text AS version FROM {}",
            target.ledger()
        ))
        .load::<Version>(conn)
        .map_err(MigrationError::new)?
        .into_iter()
        .map(|v| v.version)
        .collect()
    } else {
        Vec::new()
    };
    Ok(Some(
        set.pending(&applied)
            .iter()
            .map(|m| m.name().version().to_string())
            .collect(),
    ))
}

/// A dry run's outcome for one schema.
pub(crate) fn plan(conn: &mut impl PgConn, target: Target<'_>, set: &MigrationSet) -> Outcome {
    match pending_versions(conn, target, set) {
        Ok(Some(versions)) => Outcome::Pending { versions },
        Ok(None) => Outcome::SchemaMissing,
        Err(error) => Outcome::Failed {
            version: None,
            error,
            applied: Vec::new(),
        },
    }
}
