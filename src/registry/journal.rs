//! The migration journal (one line per tenant: its latest migration and its
//! last error) and the per-schema lock that migrations, drop, rename and
//! Citus moves take.

use super::*;
use diesel::sql_types::{BigInt, Nullable, Text};

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

/// A tenant as a migration run sees it: its id, schema and status, and the
/// digest of the tenant set the journal says it completed.
#[derive(Debug)]
pub(crate) struct JournalTenant {
    pub(crate) id: i64,
    pub(crate) schema: SchemaName,
    pub(crate) status: TenantStatus,
    pub(crate) set_digest: Option<String>,
}

/// Every tenant with its journal digest, by schema name: one query.
pub(crate) fn tenants_with_digest(conn: &mut impl PgConn) -> Result<Vec<JournalTenant>> {
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
    }
    diesel::sql_query(
        "SELECT t.id, t.schema_name, t.status, j.set_digest \
         FROM public.tenancy_tenants t \
         LEFT JOIN public.tenancy_migration_journal j ON j.tenant_id = t.id \
         ORDER BY t.schema_name",
    )
    .load::<Row>(conn)
    .map_err(Error::db("list tenants to migrate"))?
    .into_iter()
    .map(|r| {
        Ok(JournalTenant {
            id: r.id,
            schema: SchemaName::try_from(r.schema_name).map_err(|e| Error::CorruptRegistry {
                reason: e.to_string(),
            })?,
            status: TenantStatus::parse(&r.status)?,
            set_digest: r.set_digest,
        })
    })
    .collect()
}
