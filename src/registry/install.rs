//! The registry's tables: the steps that create and upgrade them.

use diesel::prelude::*;

use crate::conn::PgConn;
use crate::{Error, Result};

/// The registry's schema version that this release of the crate installs.
pub const REGISTRY_VERSION: i32 = STEPS.len() as i32;

/// Advisory lock key that serialises registry installs ("tenancy" in ASCII).
pub(super) const INSTALL_LOCK: i64 = 0x0074_656e_616e_6379;

/// Registry upgrades, in order; step `n` brings the registry to version `n + 1`.
pub(super) const STEPS: &[&str] = &[
    r#"
CREATE TABLE public.tenancy_tenants (
    id          bigserial   PRIMARY KEY,
    schema_name text        NOT NULL UNIQUE
        CHECK (schema_name ~ '^[a-z_][a-z0-9_]{0,62}$' AND schema_name NOT LIKE 'pg\_%'),
    name        text        NOT NULL,
    status      text        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE public.tenancy_domains (
    domain     text    PRIMARY KEY CHECK (domain = lower(domain) AND length(domain) <= 253),
    tenant_id  bigint  NOT NULL REFERENCES public.tenancy_tenants (id) ON DELETE CASCADE,
    is_primary boolean NOT NULL DEFAULT false
);
CREATE INDEX tenancy_domains_tenant ON public.tenancy_domains (tenant_id);
CREATE UNIQUE INDEX tenancy_domains_one_primary ON public.tenancy_domains (tenant_id) WHERE is_primary;
"#,
    r#"
CREATE TABLE public.tenancy_migration_journal (
    tenant_id          bigint      PRIMARY KEY REFERENCES public.tenancy_tenants (id) ON DELETE CASCADE,
    latest_version     text,
    set_digest         text,
    migrated_at        timestamptz,
    last_error         text,
    last_error_version text,
    last_error_at      timestamptz
);
"#,
    r#"
CREATE FUNCTION public.tenancy_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('diesel_tenancy_registry', TG_TABLE_NAME);
    RETURN NULL;
END
$$;
CREATE TRIGGER tenancy_tenants_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON public.tenancy_tenants FOR EACH STATEMENT EXECUTE FUNCTION public.tenancy_notify_change();
CREATE TRIGGER tenancy_domains_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON public.tenancy_domains FOR EACH STATEMENT EXECUTE FUNCTION public.tenancy_notify_change();
"#,
    r#"
ALTER TABLE public.tenancy_tenants ADD COLUMN role_name text
    CHECK (role_name ~ '^[a-z_][a-z0-9_]{0,62}$');
"#,
    // Row-level triggers for row changes: on Citus, a registry table that
    // joins a foreign-key chain with a reference table becomes a "Citus local
    // table" whose rows live in a shard table on the coordinator, and Citus
    // copies row-level triggers to that shard but not statement-level ones, so
    // a statement-level trigger would stay silent. TRUNCATE keeps its
    // statement-level trigger (it has no row form).
    r#"
DROP TRIGGER tenancy_tenants_notify ON public.tenancy_tenants;
DROP TRIGGER tenancy_domains_notify ON public.tenancy_domains;
CREATE TRIGGER tenancy_tenants_notify AFTER INSERT OR UPDATE OR DELETE
    ON public.tenancy_tenants FOR EACH ROW EXECUTE FUNCTION public.tenancy_notify_change();
CREATE TRIGGER tenancy_domains_notify AFTER INSERT OR UPDATE OR DELETE
    ON public.tenancy_domains FOR EACH ROW EXECUTE FUNCTION public.tenancy_notify_change();
CREATE TRIGGER tenancy_tenants_notify_truncate AFTER TRUNCATE
    ON public.tenancy_tenants FOR EACH STATEMENT EXECUTE FUNCTION public.tenancy_notify_change();
CREATE TRIGGER tenancy_domains_notify_truncate AFTER TRUNCATE
    ON public.tenancy_domains FOR EACH STATEMENT EXECUTE FUNCTION public.tenancy_notify_change();
"#,
    // For shared migrations: makes a shared table a Citus reference table
    // (copied to every node, so tenant tables can join and reference it); on a
    // single server, and for a table that is one already, it does nothing.
    r#"
CREATE FUNCTION public.tenancy_reference_table(tbl regclass) RETURNS void
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'citus') THEN
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition
               WHERE logicalrelid = tbl AND partmethod = 'n' AND repmodel = 't') THEN
        RETURN;
    END IF;
    PERFORM pg_catalog.create_reference_table(tbl);
END
$$;
"#,
];

/// Creates or upgrades the registry tables in `public` to [`REGISTRY_VERSION`].
///
/// Safe to call at every start: concurrent callers are serialised by an advisory
/// lock and an up-to-date registry costs three short statements.
pub fn install(conn: &mut impl PgConn) -> Result<()> {
    let db = || Error::db("install the tenant registry");
    conn.transaction(|conn| {
        diesel::select(pg_advisory_xact_lock(INSTALL_LOCK))
            .execute(conn)
            .map_err(db())?;
        conn.batch_execute(
            "CREATE TABLE IF NOT EXISTS public.tenancy_registry_version (version integer NOT NULL)",
        )
        .map_err(db())?;
        let current: Option<i32> =
            diesel::sql_query("SELECT max(version) AS version FROM public.tenancy_registry_version")
                .get_result::<VersionRow>(conn)
                .map_err(db())?
                .version;
        let current = current.unwrap_or(0);
        if current > REGISTRY_VERSION {
            return Err(Error::CorruptRegistry {
                reason: format!(
                    "the registry is at version {current}, newer than this release of diesel-tenancy knows ({REGISTRY_VERSION})"
                ),
            });
        }
        for (i, step) in STEPS.iter().enumerate().skip(current as usize) {
            conn.batch_execute(step).map_err(db())?;
            diesel::sql_query("INSERT INTO public.tenancy_registry_version (version) VALUES ($1)")
                .bind::<diesel::sql_types::Integer, _>(i as i32 + 1)
                .execute(conn)
                .map_err(db())?;
        }
        Ok(())
    })
}

#[derive(QueryableByName)]
pub(super) struct VersionRow {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Integer>)]
    pub(super) version: Option<i32>,
}

diesel::define_sql_function! {
    /// `pg_advisory_xact_lock(key)`.
    fn pg_advisory_xact_lock(key: diesel::sql_types::BigInt);
}

/// The registry version installed in this database (0: not installed).
pub fn installed_version(conn: &mut impl PgConn) -> Result<i32> {
    #[derive(QueryableByName)]
    struct Exists {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        exists: bool,
    }
    let db = || Error::db("read the registry version");
    let exists = diesel::sql_query(
        "SELECT to_regclass('public.tenancy_registry_version') IS NOT NULL AS exists",
    )
    .get_result::<Exists>(conn)
    .map_err(db())?
    .exists;
    if !exists {
        return Ok(0);
    }
    diesel::sql_query("SELECT max(version) AS version FROM public.tenancy_registry_version")
        .get_result::<VersionRow>(conn)
        .map(|r| r.version.unwrap_or(0))
        .map_err(db())
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_step_per_version() {
        assert_eq!(super::STEPS.len(), super::REGISTRY_VERSION as usize);
    }
}
