//! The migration journal (one line per tenant: its latest migration and its
//! last error) and the per-schema lock that migrations, drop, rename and
//! Citus moves take.

use super::*;
use diesel::sql_types::{BigInt, Bool, Nullable, Text};

use crate::conn::PgConn;
use crate::{Error, Result, SchemaName};

use diesel::prelude::*;

/// Every tenant's journal entry (tenants never migrated have none).
pub fn journal(conn: &mut impl PgConn) -> Result<Vec<JournalEntry>> {
    Ok(diesel::sql_query(
        "SELECT tenant_id, latest_version, last_error, last_error_version \
         FROM public.tenancy_migration_journal ORDER BY tenant_id",
    )
    .load::<JournalRow>(conn)
    .map_err(Error::db("read the migration journal"))?
    .into_iter()
    .map(|r| JournalEntry {
        tenant_id: r.tenant_id,
        latest_version: r.latest_version,
        last_error: r.last_error,
        last_error_version: r.last_error_version,
    })
    .collect())
}

/// The text whose hash is the advisory-lock key of schema `name`: migrations,
/// drop, rename and Citus moves of one schema all take this lock, so they
/// exclude each other.
pub(crate) fn lock_key(name: &str) -> String {
    format!("diesel_tenancy:{name}")
}

/// Takes `schema`'s lock for the rest of the current transaction, waiting for
/// a holder to finish.
pub(crate) fn lock_schema(conn: &mut impl PgConn, schema: &SchemaName) -> Result<()> {
    diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind::<Text, _>(lock_key(schema.as_str()))
        .execute(conn)
        .map_err(Error::db(format!("lock schema {:?}", schema.as_str())))?;
    Ok(())
}

/// The statement that records a tenant's completed set in the journal (and
/// clears its last error), with the three values given as SQL expressions:
/// bind parameters (`$1`) or quoted literals, for the batched fast path.
pub(crate) fn complete_sql(tenant_id: &str, latest_version: &str, set_digest: &str) -> String {
    format!(
        "INSERT INTO public.tenancy_migration_journal \
             (tenant_id, latest_version, set_digest, migrated_at, last_error, last_error_version, last_error_at) \
         VALUES ({tenant_id}, {latest_version}, {set_digest}, now(), NULL, NULL, NULL) \
         ON CONFLICT (tenant_id) DO UPDATE SET latest_version = EXCLUDED.latest_version, \
             set_digest = EXCLUDED.set_digest, migrated_at = EXCLUDED.migrated_at, \
             last_error = NULL, last_error_version = NULL, last_error_at = NULL"
    )
}

/// Records a failure in the journal (outside the rolled-back transaction).
/// Best effort: the migration report carries the failure either way.
pub(crate) fn record_failure(conn: &mut impl PgConn, id: i64, version: Option<&str>, error: &str) {
    let _ = diesel::sql_query(
        "INSERT INTO public.tenancy_migration_journal (tenant_id, last_error, last_error_version, last_error_at) \
         VALUES ($1, $2, $3, now()) \
         ON CONFLICT (tenant_id) DO UPDATE SET last_error = EXCLUDED.last_error, \
             last_error_version = EXCLUDED.last_error_version, last_error_at = EXCLUDED.last_error_at",
    )
    .bind::<BigInt, _>(id)
    .bind::<Text, _>(error)
    .bind::<Nullable<Text>, _>(version)
    .execute(conn);
}

/// A tenant's journal entry next to what the catalog and the tenant's own
/// migration ledger say, from [`check_journal`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct JournalCheck {
    /// The tenant's registry id.
    pub tenant_id: i64,
    /// The tenant's schema.
    pub schema: SchemaName,
    /// Active or suspended.
    pub status: TenantStatus,
    /// The newest version of the tenant set the journal says the tenant has
    /// (`None`: never migrated).
    pub journal_latest: Option<String>,
    /// Whether the schema exists.
    pub schema_exists: bool,
    /// The newest version in the schema's own ledger
    /// (`__diesel_schema_migrations`); `None` when it has no ledger, is
    /// empty, or was not read (see [`check_journal`]).
    pub ledger_newest: Option<String>,
    /// Whether the ledger was read.
    pub ledger_read: bool,
    pub(crate) set_digest: Option<String>,
}

impl JournalCheck {
    /// Whether the journal can be trusted for this tenant: the schema exists
    /// and (when read) its ledger's newest version is the one the journal
    /// records.
    pub fn agrees(&self) -> bool {
        self.schema_exists && (!self.ledger_read || self.ledger_newest == self.journal_latest)
    }
}

/// Every tenant's journal entry checked against the catalog and the tenant's
/// ledger, in one statement however many tenants there are (the server reads
/// each ledger's newest version with an index scan). `read_ledgers: false`
/// checks only that each schema exists (what `migrate_all` does on Citus,
/// where each ledger is a distributed table and reading 10,000 of them would
/// be 10,000 distributed queries).
///
/// It catches a schema dropped, or restored from an older dump, or a ledger
/// whose newest row was changed, behind the journal's back. It does not catch
/// a ledger row deleted in the middle or a table changed by hand: reading
/// every ledger in full (`MigrateOptions::verify`) catches the first, nothing
/// the second.
///
/// It never waits on a tenant's lock: a ledger another session holds locked
/// exclusively (a migration in progress) is not read, and if a lock is taken
/// in the instant between, the check gives up on ledgers after 2 seconds and
/// checks only the schemas.
pub fn check_journal(conn: &mut impl PgConn, read_ledgers: bool) -> Result<Vec<JournalCheck>> {
    if !read_ledgers {
        return load_checks(conn, false);
    }
    let checked = conn.transaction(|conn| {
        diesel::sql_query("SELECT pg_catalog.set_config('lock_timeout', '2s', true)")
            .execute(conn)
            .map_err(Error::db("check the migration journal"))?;
        load_checks(conn, true)
    });
    match checked {
        Err(Error::Database {
            source: diesel::result::Error::DatabaseError(_, info),
            ..
        }) if info.message().contains("lock timeout") => load_checks(conn, false),
        other => other,
    }
}

fn load_checks(conn: &mut impl PgConn, read_ledgers: bool) -> Result<Vec<JournalCheck>> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = BigInt)]
        id: i64,
        #[diesel(sql_type = Text)]
        schema_name: String,
        #[diesel(sql_type = Text)]
        status: String,
        #[diesel(sql_type = Nullable<Text>)]
        set_digest: Option<String>,
        #[diesel(sql_type = Nullable<Text>)]
        latest_version: Option<String>,
        #[diesel(sql_type = Bool)]
        schema_exists: bool,
        #[diesel(sql_type = Nullable<Text>)]
        ledger_newest: Option<String>,
        #[diesel(sql_type = Bool)]
        ledger_read: bool,
    }
    diesel::sql_query(
        "SELECT t.id, t.schema_name, t.status, j.set_digest, j.latest_version, \
                n.oid IS NOT NULL AS schema_exists, \
                CASE WHEN $1 AND l.oid IS NOT NULL AND x.relation IS NULL THEN \
                  (pg_catalog.xpath('/row/v/text()', pg_catalog.query_to_xml(pg_catalog.format( \
                     'SELECT max(version) AS v FROM %I.__diesel_schema_migrations', t.schema_name), \
                     false, true, '')))[1]::text \
                END AS ledger_newest, \
                ($1 AND n.oid IS NOT NULL AND x.relation IS NULL) AS ledger_read \
         FROM public.tenancy_tenants t \
         LEFT JOIN public.tenancy_migration_journal j ON j.tenant_id = t.id \
         LEFT JOIN pg_catalog.pg_namespace n ON n.nspname = t.schema_name \
         LEFT JOIN pg_catalog.pg_class l \
           ON l.relnamespace = n.oid AND l.relname = '__diesel_schema_migrations' \
         LEFT JOIN (SELECT DISTINCT relation FROM pg_catalog.pg_locks \
                    WHERE mode = 'AccessExclusiveLock' AND relation IS NOT NULL) x \
           ON x.relation = l.oid \
         ORDER BY t.schema_name",
    )
    .bind::<Bool, _>(read_ledgers)
    .load::<Row>(conn)
    .map_err(Error::db("check the migration journal"))?
    .into_iter()
    .map(|r| {
        Ok(JournalCheck {
            tenant_id: r.id,
            schema: SchemaName::try_from(r.schema_name).map_err(|e| Error::CorruptRegistry {
                reason: e.to_string(),
            })?,
            status: TenantStatus::parse(&r.status)?,
            journal_latest: r.latest_version,
            schema_exists: r.schema_exists,
            ledger_newest: r.ledger_newest,
            ledger_read: r.ledger_read,
            set_digest: r.set_digest,
        })
    })
    .collect()
}
