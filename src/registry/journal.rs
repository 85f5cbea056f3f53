//! The migration journal (one line per tenant: its latest migration and its
//! last error) and the per-schema lock that migrations, drop, rename and
//! Citus moves take.

use super::*;
use diesel::sql_types::Text;

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
