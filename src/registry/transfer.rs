//! One tenant's registry rows as a document, and the SQL that writes them
//! back: what dumping a tenant and restoring it (here or in another database)
//! needs besides the schema itself (the CLI's `tenant dump` and `tenant
//! restore`).
//!
//! - [`with_export`] reads a tenant's registry rows (its row, domains and
//!   journal entry) as one JSON document, in a transaction whose snapshot it
//!   exports, so that a `pg_dump --snapshot` of the schema sees the same
//!   moment; it holds the schema's lock meanwhile (a migration, drop or
//!   rename of the schema waits).
//! - A restore runs, in one transaction: [`import_before_sql`], the schema's
//!   SQL (a `pg_dump --schema` script, which creates the schema under the
//!   name it was dumped from), and [`IMPORT_AFTER_SQL`]. Before the script,
//!   the statements lock the names involved, check that the new name and the
//!   domains are free, and, when the tenant comes back under a new name while
//!   a schema still has the old one, rename that schema aside. After it, they
//!   give the restored schema its new name, the old name back to the schema
//!   set aside, and insert the registry rows. Nothing of it is visible to other
//!   sessions before the commit, and a failure anywhere leaves nothing behind.

use diesel::prelude::*;
use diesel::sql_types::{Bool, Text};

use super::{get_tenant, lock_key};
use crate::conn::PgConn;
use crate::{Domain, Error, Result, SchemaName, Tenant};

/// A tenant's registry rows, read by [`with_export`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantExport {
    tenant: Tenant,
    document: String,
}

impl TenantExport {
    /// The tenant's registry row.
    pub fn tenant(&self) -> &Tenant {
        &self.tenant
    }

    /// The rows as one line of JSON:
    /// `{"tenant": {"id", "schema_name", "name", "status", "created_at",
    /// "role_name"}, "domains": [{"domain", "is_primary"}], "journal":
    /// {"latest_version", "set_digest", "migrated_at", "last_error",
    /// "last_error_version", "last_error_at"} or null}`, timestamps in ISO
    /// 8601. [`import_before_sql`] takes it back.
    pub fn document(&self) -> &str {
        &self.document
    }
}

/// The registry rows of one tenant as a JSON document (see
/// [`TenantExport::document`]): one statement.
const EXPORT_SQL: &str = "\
SELECT pg_catalog.json_build_object(
    'tenant', pg_catalog.json_build_object(
        'id', t.id, 'schema_name', t.schema_name, 'name', t.name,
        'status', t.status, 'created_at', t.created_at, 'role_name', t.role_name),
    'domains', (SELECT COALESCE(pg_catalog.json_agg(pg_catalog.json_build_object(
                    'domain', d.domain, 'is_primary', d.is_primary)
                    ORDER BY d.is_primary DESC, d.domain), '[]')
                FROM public.tenancy_domains d WHERE d.tenant_id = t.id),
    'journal', (SELECT pg_catalog.json_build_object(
                    'latest_version', j.latest_version, 'set_digest', j.set_digest,
                    'migrated_at', j.migrated_at, 'last_error', j.last_error,
                    'last_error_version', j.last_error_version,
                    'last_error_at', j.last_error_at)
                FROM public.tenancy_migration_journal j WHERE j.tenant_id = t.id)
)::text AS document
FROM public.tenancy_tenants t WHERE t.schema_name = $1";

/// Reads the registry rows of the tenant `schema` and calls `f` with them and
/// the id of the transaction's exported snapshot (`pg_export_snapshot()`),
/// for `pg_dump --snapshot=<id>` to dump the schema as of the same moment.
///
/// `f` runs inside that transaction (repeatable read, read only), which must
/// stay open until `pg_dump` has started; the schema's lock (the one
/// migrations, [`drop_tenant`](crate::drop_tenant) and
/// [`rename_tenant`](crate::rename_tenant) take) is held from before the
/// snapshot until `f` returns, so no migration of the schema commits between
/// the registry read and the dump. The lock is a session lock, released on
/// return; a pooled connection also releases it when the borrow ends.
///
/// [`Error::TenantNotFound`] if no tenant has this schema.
pub fn with_export<C: PgConn, T>(
    conn: &mut C,
    schema: &SchemaName,
    f: impl FnOnce(&mut C, &TenantExport, &str) -> Result<T>,
) -> Result<T> {
    let key = lock_key(schema.as_str());
    diesel::sql_query("SELECT pg_catalog.pg_advisory_lock(pg_catalog.hashtextextended($1, 0))")
        .bind::<Text, _>(&key)
        .execute(conn)
        .map_err(Error::db(format!("lock schema {:?}", schema.as_str())))?;
    let result = conn.transaction(|conn| {
        conn.batch_execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .map_err(Error::db("start the export's transaction"))?;
        let tenant = get_tenant(conn, schema)?;
        let document = diesel::sql_query(EXPORT_SQL)
            .bind::<Text, _>(schema.as_str())
            .get_result::<Document>(conn)
            .map_err(Error::db(format!(
                "export the registry rows of tenant {:?}",
                schema.as_str()
            )))?
            .document;
        let snapshot = diesel::sql_query("SELECT pg_catalog.pg_export_snapshot() AS document")
            .get_result::<Document>(conn)
            .map_err(Error::db("export the transaction's snapshot"))?
            .document;
        f(conn, &TenantExport { tenant, document }, &snapshot)
    });
    let unlocked = diesel::sql_query(
        "SELECT pg_catalog.pg_advisory_unlock(pg_catalog.hashtextextended($1, 0))",
    )
    .bind::<Text, _>(&key)
    .execute(conn)
    .map_err(Error::db(format!("unlock schema {:?}", schema.as_str())));
    let value = result?;
    unlocked?;
    Ok(value)
}

#[derive(QueryableByName)]
struct Document {
    #[diesel(sql_type = Text)]
    document: String,
}

/// Checks, before a restore starts, what [`import_before_sql`] checks again
/// inside the restore's transaction, so that the usual refusals come as typed
/// errors: [`Error::TenantExists`] if a tenant is registered under `into`,
/// [`Error::SchemaExists`] if a schema is named `into`, and
/// [`Error::DomainTaken`] for the first of `domains` assigned to a tenant.
pub fn check_import(conn: &mut impl PgConn, into: &SchemaName, domains: &[Domain]) -> Result<()> {
    #[derive(QueryableByName)]
    struct Taken {
        #[diesel(sql_type = Bool)]
        tenant: bool,
        #[diesel(sql_type = Bool)]
        schema: bool,
    }
    let taken = diesel::sql_query(
        "SELECT EXISTS (SELECT 1 FROM public.tenancy_tenants WHERE schema_name = $1) AS tenant, \
                pg_catalog.to_regnamespace(pg_catalog.quote_ident($1)) IS NOT NULL AS schema",
    )
    .bind::<Text, _>(into.as_str())
    .get_result::<Taken>(conn)
    .map_err(Error::db(format!("check schema name {:?}", into.as_str())))?;
    let name = into.as_str().to_owned();
    if taken.tenant {
        return Err(Error::TenantExists { schema: name });
    }
    if taken.schema {
        return Err(Error::SchemaExists { schema: name });
    }
    for domain in domains {
        if super::find_tenant_by_domain(conn, domain)?.is_some() {
            return Err(Error::DomainTaken {
                domain: domain.as_str().to_owned(),
            });
        }
    }
    Ok(())
}

/// The statements a restore runs first in its transaction: they hand the
/// registry `document` (from [`TenantExport::document`]), the schema name
/// `into` the tenant comes back under, and whether to restore its domains,
/// to the statements of the import (as transaction-local settings, the
/// values hex-encoded), and then:
///
/// - take the locks of the dumped schema name and of `into` (the ones
///   migrations, drop and rename take), in name order;
/// - refuse if a tenant is registered under `into`, a schema is named `into`,
///   or (with domains) a domain is assigned to a tenant;
/// - if `into` is not the dumped name and a schema has the dumped name,
///   rename that schema aside (inside the transaction: no other session sees
///   it move), so that the dump's script, which names the dumped schema,
///   creates and fills the restored one and touches nothing of the other
///   (its `setval` calls, which no rollback undoes, included).
pub fn import_before_sql(document: &str, into: &SchemaName, domains: bool) -> String {
    format!(
        "SELECT pg_catalog.set_config('diesel_tenancy.import', \
            pg_catalog.convert_from(pg_catalog.decode('{}', 'hex'), 'UTF8'), true), \
         pg_catalog.set_config('diesel_tenancy.import_schema', \
            pg_catalog.convert_from(pg_catalog.decode('{}', 'hex'), 'UTF8'), true), \
         pg_catalog.set_config('diesel_tenancy.import_domains', '{}', true);\n{IMPORT_BEFORE_SQL}\n",
        hex(document.as_bytes()),
        hex(into.as_str().as_bytes()),
        if domains { "on" } else { "off" },
    )
}

/// The statements a restore runs last in its transaction, after the schema's
/// script: give the restored schema its name (and the dumped name back to a
/// schema set aside), then insert the tenant's row, its domains (unless left
/// out), its journal entry and, if it had its own role, a new one (named after
/// this database and the tenant's id, with the rights
/// [`NewTenant::with_role`](crate::NewTenant::with_role) gives; needs
/// `CREATEROLE`).
///
/// The tenant keeps its id if no tenant has it (the id sequence is moved past
/// it if behind, so no later tenant is given it; sequences are not
/// transactional, so a failed restore may leave the sequence moved on, and
/// nothing else); otherwise it gets a new id from the sequence.
pub const IMPORT_AFTER_SQL: &str = r#"DO $diesel_tenancy$
DECLARE
    doc jsonb := pg_catalog.current_setting('diesel_tenancy.import')::jsonb;
    t jsonb := doc -> 'tenant';
    original text := t ->> 'schema_name';
    target text := pg_catalog.current_setting('diesel_tenancy.import_schema');
    aside text := pg_catalog.current_setting('diesel_tenancy.import_aside');
    with_domains boolean := pg_catalog.current_setting('diesel_tenancy.import_domains')::boolean;
    seq regclass := pg_catalog.pg_get_serial_sequence('public.tenancy_tenants', 'id')::regclass;
    old_id bigint := (t ->> 'id')::bigint;
    new_id bigint;
    new_role text;
BEGIN
    IF pg_catalog.to_regnamespace(pg_catalog.quote_ident(original)) IS NULL THEN
        RAISE EXCEPTION 'the dump did not create schema %', original;
    END IF;
    IF target <> original THEN
        EXECUTE pg_catalog.format('ALTER SCHEMA %I RENAME TO %I', original, target);
        IF aside <> '' THEN
            EXECUTE pg_catalog.format('ALTER SCHEMA %I RENAME TO %I', aside, original);
        END IF;
    END IF;
    IF old_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM public.tenancy_tenants WHERE id = old_id) THEN
        new_id := old_id;
        IF old_id > COALESCE(pg_catalog.pg_sequence_last_value(seq), 0) THEN
            PERFORM pg_catalog.setval(seq, old_id);
        END IF;
    ELSE
        new_id := pg_catalog.nextval(seq);
    END IF;
    INSERT INTO public.tenancy_tenants (id, schema_name, name, status, created_at)
    VALUES (new_id, target, t ->> 'name', COALESCE(t ->> 'status', 'active'),
            COALESCE((t ->> 'created_at')::timestamptz, pg_catalog.now()));
    IF with_domains THEN
        INSERT INTO public.tenancy_domains (domain, tenant_id, is_primary)
        SELECT x.domain, new_id, COALESCE(x.is_primary, false)
        FROM pg_catalog.jsonb_to_recordset(COALESCE(doc -> 'domains', '[]')) AS x(domain text, is_primary boolean);
    END IF;
    IF pg_catalog.jsonb_typeof(doc -> 'journal') = 'object' THEN
        INSERT INTO public.tenancy_migration_journal
            (tenant_id, latest_version, set_digest, migrated_at, last_error, last_error_version, last_error_at)
        SELECT new_id, j.latest_version, j.set_digest, j.migrated_at, j.last_error, j.last_error_version, j.last_error_at
        FROM pg_catalog.jsonb_to_record(doc -> 'journal') AS j(latest_version text, set_digest text,
            migrated_at timestamptz, last_error text, last_error_version text, last_error_at timestamptz);
    END IF;
    IF t ->> 'role_name' IS NOT NULL THEN
        SELECT pg_catalog.format('dt_%s_%s', d.oid, new_id) INTO new_role
        FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database();
        EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', new_role);
        EXECUTE pg_catalog.format('GRANT %I TO CURRENT_USER', new_role);
        EXECUTE pg_catalog.format('GRANT USAGE ON SCHEMA %I TO %I', target, new_role);
        EXECUTE pg_catalog.format('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA %I TO %I', target, new_role);
        EXECUTE pg_catalog.format('GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA %I TO %I', target, new_role);
        EXECUTE pg_catalog.format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO %I', target, new_role);
        EXECUTE pg_catalog.format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO %I', target, new_role);
        EXECUTE pg_catalog.format('GRANT USAGE ON SCHEMA public TO %I', new_role);
        EXECUTE pg_catalog.format('GRANT SELECT ON ALL TABLES IN SCHEMA public TO %I', new_role);
        UPDATE public.tenancy_tenants SET role_name = new_role WHERE id = new_id;
    END IF;
END
$diesel_tenancy$;
"#;

/// The checks and the rename aside of [`import_before_sql`].
const IMPORT_BEFORE_SQL: &str = r#"DO $diesel_tenancy$
DECLARE
    doc jsonb := pg_catalog.current_setting('diesel_tenancy.import')::jsonb;
    original text := doc #>> '{tenant,schema_name}';
    target text := pg_catalog.current_setting('diesel_tenancy.import_schema');
    with_domains boolean := pg_catalog.current_setting('diesel_tenancy.import_domains')::boolean;
    aside text := '';
    name text;
    taken text;
BEGIN
    IF original IS NULL OR original !~ '^[a-z_][a-z0-9_]{0,62}$' THEN
        RAISE EXCEPTION 'the registry document names no valid tenant schema';
    END IF;
    FOR name IN SELECT DISTINCT n FROM pg_catalog.unnest(ARRAY[original, target]) AS n ORDER BY n LOOP
        PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('diesel_tenancy:' || name, 0));
    END LOOP;
    IF EXISTS (SELECT 1 FROM public.tenancy_tenants WHERE schema_name = target) THEN
        RAISE EXCEPTION USING ERRCODE = 'unique_violation',
            MESSAGE = pg_catalog.format('tenant %s already exists', pg_catalog.to_json(target));
    END IF;
    IF pg_catalog.to_regnamespace(pg_catalog.quote_ident(target)) IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'duplicate_schema',
            MESSAGE = pg_catalog.format('schema %s already exists in the database', pg_catalog.to_json(target));
    END IF;
    IF with_domains THEN
        SELECT x.domain INTO taken
        FROM pg_catalog.jsonb_to_recordset(COALESCE(doc -> 'domains', '[]')) AS x(domain text)
        JOIN public.tenancy_domains d ON d.domain = x.domain LIMIT 1;
        IF taken IS NOT NULL THEN
            RAISE EXCEPTION USING ERRCODE = 'unique_violation',
                MESSAGE = pg_catalog.format('domain %s is already assigned to a tenant', pg_catalog.to_json(taken));
        END IF;
    END IF;
    IF target <> original AND pg_catalog.to_regnamespace(pg_catalog.quote_ident(original)) IS NOT NULL THEN
        aside := 'dt_restore_aside_' || pg_catalog.txid_current();
        EXECUTE pg_catalog.format('ALTER SCHEMA %I RENAME TO %I', original, aside);
    END IF;
    PERFORM pg_catalog.set_config('diesel_tenancy.import_aside', aside, true);
END
$diesel_tenancy$;"#;

/// `bytes` in lowercase hexadecimal, for `decode(..., 'hex')`.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_encodes_every_byte() {
        assert_eq!(hex(b"a'\"\\\n\xff"), "6127225c0aff");
        assert_eq!(hex(b""), "");
    }

    #[test]
    fn the_values_reach_the_sql_only_hex_encoded() {
        let into = SchemaName::new("acme_copy").unwrap();
        let sql = import_before_sql("{\"x\": \"'; DROP TABLE t; --\"}", &into, true);
        assert!(!sql.contains("DROP TABLE t"), "{sql}");
        assert!(sql.contains(&hex(b"acme_copy")), "{sql}");
        assert!(sql.contains("'on'"), "{sql}");
    }
}
