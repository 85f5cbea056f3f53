//! The tenant registry: the crate's own tables in `public`.
//!
//! `public.tenancy_tenants` holds one row per tenant, `public.tenancy_domains` the
//! host names that route to each, and `public.tenancy_migration_journal` each
//! tenant's latest migration and last migration error. [`install`] creates and upgrades them; it runs
//! before an application's shared migrations, which may reference them (for example
//! `REFERENCES public.tenancy_tenants (id)`). Every function here names its tables
//! with their schema, so it works whatever the connection's search path is, and
//! binds every value as a parameter.

use std::time::SystemTime;

use diesel::prelude::*;

use crate::conn::PgConn;
use diesel::result::{DatabaseErrorKind, Error as DieselError};

use crate::{Domain, Error, Result, SchemaName};

/// The registry's schema version that this release of the crate installs.
pub const REGISTRY_VERSION: i32 = STEPS.len() as i32;

/// The channel on which the registry's triggers announce every change to tenants
/// or domains, whichever process or tool made it.
pub const CHANGE_CHANNEL: &str = "diesel_tenancy_registry";

static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A counter that moves whenever this process changes the registry (or hears of
/// a change through [`CHANGE_CHANNEL`]); caches compare it to know they are stale.
pub fn generation() -> u64 {
    GENERATION.load(std::sync::atomic::Ordering::Acquire)
}

/// Marks every cached registry answer in this process as stale.
pub fn bump_generation() {
    GENERATION.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
}

/// Runs a registry write, then marks cached answers stale: after the write,
/// so that a lookup racing with it cannot cache the old answer under the new
/// generation. (Inside a transaction of the caller's, the write commits later:
/// other processes, and this one's listener, learn of it from the `NOTIFY`
/// sent at commit.)
fn after_write<T>(write: impl FnOnce() -> Result<T>) -> Result<T> {
    let result = write();
    bump_generation();
    result
}

/// Advisory lock key that serialises registry installs ("tenancy" in ASCII).
const INSTALL_LOCK: i64 = 0x0074_656e_616e_6379;

/// Registry upgrades, in order; step `n` brings the registry to version `n + 1`.
const STEPS: &[&str] = &[
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

mod tables {
    diesel::table! {
        public.tenancy_tenants (id) {
            id -> BigInt,
            schema_name -> Text,
            name -> Text,
            status -> Text,
            // `timestamptz` on the server. Its binary form is the same as
            // `timestamp`'s (microseconds since 2000-01-01 UTC), which is what
            // `SystemTime` decodes from; the column is only ever read.
            created_at -> Timestamp,
            role_name -> Nullable<Text>,
        }
    }

    diesel::table! {
        public.tenancy_domains (domain) {
            domain -> Text,
            tenant_id -> BigInt,
            is_primary -> Bool,
        }
    }

    diesel::joinable!(tenancy_domains -> tenancy_tenants (tenant_id));
    diesel::allow_tables_to_appear_in_same_query!(tenancy_tenants, tenancy_domains);
}

use tables::{tenancy_domains, tenancy_tenants};

/// Whether a tenant is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TenantStatus {
    /// Served normally.
    Active,
    /// Kept, but no connection is scoped to it and its hosts do not resolve.
    Suspended,
}

impl TenantStatus {
    /// The value stored in the registry.
    pub fn as_str(self) -> &'static str {
        match self {
            TenantStatus::Active => "active",
            TenantStatus::Suspended => "suspended",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        match s {
            "active" => Ok(TenantStatus::Active),
            "suspended" => Ok(TenantStatus::Suspended),
            other => Err(Error::CorruptRegistry {
                reason: format!("unknown tenant status {other:?}"),
            }),
        }
    }
}

/// A tenant as recorded in the registry.
///
/// Only the registry makes these, so holding one means the tenant was found (or
/// created) there; scoping a connection to it costs no registry query.
///
/// A `Tenant` is a snapshot of its registry row when it was looked up. A pool
/// refuses a snapshot whose status is suspended, but a snapshot taken before
/// [`suspend_tenant`](crate::suspend_tenant) still gets connections; fresh
/// lookups ([`TenantPool::tenant`](crate::TenantPool::tenant), the
/// [`Resolver`](crate::Resolver), whose cache the registry's notifications
/// invalidate) see the suspension. Look a tenant up per request or job rather
/// than holding the value for the life of a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    id: i64,
    schema: SchemaName,
    name: String,
    status: TenantStatus,
    created_at: SystemTime,
    role: Option<SchemaName>,
}

impl Tenant {
    /// The tenant's own database role, if it has one (see
    /// [`TenantPoolBuilder::tenant_roles`](crate::TenantPoolBuilder::tenant_roles)).
    pub fn role(&self) -> Option<&SchemaName> {
        self.role.as_ref()
    }

    /// The registry id.
    pub fn id(&self) -> i64 {
        self.id
    }
    /// The tenant's schema.
    pub fn schema(&self) -> &SchemaName {
        &self.schema
    }
    /// The display name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Active or suspended.
    pub fn status(&self) -> TenantStatus {
        self.status
    }
    /// Whether connections may be scoped to the tenant.
    pub fn is_active(&self) -> bool {
        self.status == TenantStatus::Active
    }
    /// When the tenant was registered.
    pub fn created_at(&self) -> SystemTime {
        self.created_at
    }
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = tenancy_tenants, check_for_backend(diesel::pg::Pg))]
struct TenantRow {
    id: i64,
    schema_name: String,
    name: String,
    status: String,
    created_at: SystemTime,
    role_name: Option<String>,
}

impl TryFrom<TenantRow> for Tenant {
    type Error = Error;
    fn try_from(row: TenantRow) -> Result<Tenant> {
        Ok(Tenant {
            id: row.id,
            schema: SchemaName::try_from(row.schema_name).map_err(|e| Error::CorruptRegistry {
                reason: e.to_string(),
            })?,
            name: row.name,
            status: TenantStatus::parse(&row.status)?,
            created_at: row.created_at,
            role: row
                .role_name
                .map(SchemaName::try_from)
                .transpose()
                .map_err(|e| Error::CorruptRegistry {
                    reason: e.to_string(),
                })?,
        })
    }
}

/// A domain that routes to a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainRecord {
    /// The normalised domain.
    pub domain: Domain,
    /// The tenant's registry id.
    pub tenant_id: i64,
    /// Whether this is the tenant's primary domain (at most one per tenant).
    pub is_primary: bool,
}

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
struct VersionRow {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Integer>)]
    version: Option<i32>,
}

diesel::define_sql_function! {
    /// `pg_advisory_xact_lock(key)`.
    fn pg_advisory_xact_lock(key: diesel::sql_types::BigInt);
}

fn unique_violation(e: &DieselError) -> Option<&str> {
    match e {
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
            Some(info.constraint_name().unwrap_or(""))
        }
        _ => None,
    }
}

/// A lookup's row, if any, as a [`Tenant`]; `action` names the lookup in
/// the error.
fn found(row: QueryResult<TenantRow>, action: impl Into<String>) -> Result<Option<Tenant>> {
    row.optional()
        .map_err(Error::db(action))?
        .map(Tenant::try_from)
        .transpose()
}

/// A domain lookup's row, if any, as the tenant and its primary domain.
fn found_with_primary(
    row: QueryResult<TenantAndPrimary>,
    domain: &Domain,
) -> Result<Option<(Tenant, Option<Domain>)>> {
    row.optional()
        .map_err(Error::db(format!(
            "find tenant by domain {:?}",
            domain.as_str()
        )))?
        .map(TenantAndPrimary::split)
        .transpose()
}

/// Adds a tenant row (status active). This writes the registry only; to create the
/// schema and run migrations as well, use [`create_tenant`](crate::create_tenant).
pub fn insert_tenant(conn: &mut impl PgConn, schema: &SchemaName, name: &str) -> Result<Tenant> {
    after_write(|| {
        let row = diesel::insert_into(tenancy_tenants::table)
            .values((
                tenancy_tenants::schema_name.eq(schema.as_str()),
                tenancy_tenants::name.eq(name),
            ))
            .returning(TenantRow::as_returning())
            .get_result(conn)
            .map_err(|e| match unique_violation(&e) {
                Some(_) => Error::TenantExists {
                    schema: schema.as_str().to_owned(),
                },
                None => Error::Database {
                    action: format!("register tenant {schema:?}", schema = schema.as_str()),
                    source: e,
                },
            })?;
        Tenant::try_from(row)
    })
}

/// The tenant with this schema, if registered (whatever its status).
pub fn find_tenant(conn: &mut impl PgConn, schema: &SchemaName) -> Result<Option<Tenant>> {
    let row = tenancy_tenants::table
        .filter(tenancy_tenants::schema_name.eq(schema.as_str()))
        .select(TenantRow::as_select())
        .first(conn);
    found(row, format!("find tenant {:?}", schema.as_str()))
}

/// The tenant with this schema (whatever its status), or [`Error::TenantNotFound`].
pub fn get_tenant(conn: &mut impl PgConn, schema: &SchemaName) -> Result<Tenant> {
    find_tenant(conn, schema)?.ok_or_else(|| Error::TenantNotFound {
        schema: schema.as_str().to_owned(),
    })
}

/// The tenant with this registry id, if any.
pub fn find_tenant_by_id(conn: &mut impl PgConn, id: i64) -> Result<Option<Tenant>> {
    let row = tenancy_tenants::table
        .find(id)
        .select(TenantRow::as_select())
        .first(conn);
    found(row, format!("find tenant with id {id}"))
}

/// Every registered tenant, ordered by schema name.
pub fn list_tenants(conn: &mut impl PgConn) -> Result<Vec<Tenant>> {
    tenancy_tenants::table
        .order(tenancy_tenants::schema_name)
        .select(TenantRow::as_select())
        .load(conn)
        .map_err(Error::db("list tenants"))?
        .into_iter()
        .map(Tenant::try_from)
        .collect()
}

/// Sets a tenant's status and returns the updated tenant.
pub fn set_tenant_status(
    conn: &mut impl PgConn,
    schema: &SchemaName,
    status: TenantStatus,
) -> Result<Tenant> {
    after_write(|| {
        let row = diesel::update(tenancy_tenants::table)
            .filter(tenancy_tenants::schema_name.eq(schema.as_str()))
            .set(tenancy_tenants::status.eq(status.as_str()))
            .returning(TenantRow::as_returning())
            .get_result(conn)
            .optional()
            .map_err(Error::db(format!(
                "set status of tenant {:?}",
                schema.as_str()
            )))?;
        match row {
            Some(row) => Tenant::try_from(row),
            None => Err(Error::TenantNotFound {
                schema: schema.as_str().to_owned(),
            }),
        }
    })
}

/// Routes `domain` to `tenant`. With `is_primary`, it becomes the tenant's primary
/// domain (any previous primary domain stays, as a secondary one).
pub fn add_domain(
    conn: &mut impl PgConn,
    tenant: &Tenant,
    domain: &Domain,
    is_primary: bool,
) -> Result<DomainRecord> {
    after_write(|| {
        let action = || format!("add domain {:?}", domain.as_str());
        conn.transaction(|conn| {
            if is_primary {
                diesel::update(tenancy_domains::table)
                    .filter(tenancy_domains::tenant_id.eq(tenant.id))
                    .set(tenancy_domains::is_primary.eq(false))
                    .execute(conn)
                    .map_err(Error::db(action()))?;
            }
            diesel::insert_into(tenancy_domains::table)
                .values((
                    tenancy_domains::domain.eq(domain.as_str()),
                    tenancy_domains::tenant_id.eq(tenant.id),
                    tenancy_domains::is_primary.eq(is_primary),
                ))
                .execute(conn)
                .map_err(|e| match (&e, unique_violation(&e)) {
                    (_, Some(_)) => Error::DomainTaken {
                        domain: domain.as_str().to_owned(),
                    },
                    (
                        DieselError::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, _),
                        None,
                    ) => Error::TenantNotFound {
                        schema: tenant.schema.as_str().to_owned(),
                    },
                    _ => Error::Database {
                        action: action(),
                        source: e,
                    },
                })?;
            Ok(DomainRecord {
                domain: domain.clone(),
                tenant_id: tenant.id,
                is_primary,
            })
        })
    })
}

/// Removes a domain; [`Error::DomainNotFound`] if it was not registered.
pub fn remove_domain(conn: &mut impl PgConn, domain: &Domain) -> Result<()> {
    after_write(|| {
        let n = diesel::delete(tenancy_domains::table.find(domain.as_str()))
            .execute(conn)
            .map_err(Error::db(format!("remove domain {:?}", domain.as_str())))?;
        if n == 0 {
            return Err(Error::DomainNotFound {
                domain: domain.as_str().to_owned(),
            });
        }
        Ok(())
    })
}

/// The domains of a tenant, primary first.
pub fn list_domains(conn: &mut impl PgConn, tenant: &Tenant) -> Result<Vec<DomainRecord>> {
    let rows: Vec<(String, i64, bool)> = tenancy_domains::table
        .filter(tenancy_domains::tenant_id.eq(tenant.id))
        .order((tenancy_domains::is_primary.desc(), tenancy_domains::domain))
        .load(conn)
        .map_err(Error::db(format!(
            "list domains of tenant {:?}",
            tenant.schema.as_str()
        )))?;
    rows.into_iter()
        .map(|(domain, tenant_id, is_primary)| {
            Ok(DomainRecord {
                domain: Domain::parse(&domain).map_err(|e| Error::CorruptRegistry {
                    reason: e.to_string(),
                })?,
                tenant_id,
                is_primary,
            })
        })
        .collect()
}

/// The tenant a domain routes to, if any (whatever its status). One indexed query.
pub fn find_tenant_by_domain(conn: &mut impl PgConn, domain: &Domain) -> Result<Option<Tenant>> {
    let row = tenancy_domains::table
        .inner_join(tenancy_tenants::table)
        .filter(tenancy_domains::domain.eq(domain.as_str()))
        .select(TenantRow::as_select())
        .first(conn);
    found(row, format!("find tenant by domain {:?}", domain.as_str()))
}

/// The SQL of [`find_tenant_and_primary_by_domain`]: the tenant a domain
/// routes to, with the tenant's primary domain.
const TENANT_AND_PRIMARY: &str = "\
    SELECT t.id, t.schema_name, t.name, t.status, t.created_at, t.role_name, \
           (SELECT p.domain FROM public.tenancy_domains p \
            WHERE p.tenant_id = t.id AND p.is_primary LIMIT 1) AS primary_domain \
    FROM public.tenancy_domains d JOIN public.tenancy_tenants t ON t.id = d.tenant_id \
    WHERE d.domain = $1";

#[derive(QueryableByName)]
struct TenantAndPrimary {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    id: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    schema_name: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    name: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    status: String,
    #[diesel(sql_type = diesel::sql_types::Timestamp)]
    created_at: SystemTime,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    role_name: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    primary_domain: Option<String>,
}

impl TenantAndPrimary {
    fn split(self) -> Result<(Tenant, Option<Domain>)> {
        let primary = self
            .primary_domain
            .as_deref()
            .map(Domain::parse)
            .transpose()?;
        let tenant = Tenant::try_from(TenantRow {
            id: self.id,
            schema_name: self.schema_name,
            name: self.name,
            status: self.status,
            created_at: self.created_at,
            role_name: self.role_name,
        })?;
        Ok((tenant, primary))
    }
}

/// The tenant `domain` routes to, and that tenant's primary domain, in one
/// query (for redirecting secondary domains to the primary one).
#[cfg(feature = "sync")]
pub(crate) fn find_tenant_and_primary_by_domain(
    conn: &mut impl PgConn,
    domain: &Domain,
) -> Result<Option<(Tenant, Option<Domain>)>> {
    let row = diesel::sql_query(TENANT_AND_PRIMARY)
        .bind::<diesel::sql_types::Text, _>(domain.as_str())
        .get_result::<TenantAndPrimary>(conn);
    found_with_primary(row, domain)
}

/// [`find_tenant_and_primary_by_domain`] on an async connection.
#[cfg(any(feature = "deadpool", feature = "bb8"))]
pub(crate) async fn find_tenant_and_primary_by_domain_async(
    conn: &mut diesel_async::AsyncPgConnection,
    domain: &Domain,
) -> Result<Option<(Tenant, Option<Domain>)>> {
    let query =
        diesel::sql_query(TENANT_AND_PRIMARY).bind::<diesel::sql_types::Text, _>(domain.as_str());
    let row = diesel_async::RunQueryDsl::get_result::<TenantAndPrimary>(query, conn).await;
    found_with_primary(row, domain)
}

/// [`find_tenant`] on an async connection (one query, no libpq).
#[cfg(any(feature = "deadpool", feature = "bb8"))]
pub(crate) async fn find_tenant_async(
    conn: &mut diesel_async::AsyncPgConnection,
    schema: &SchemaName,
) -> Result<Option<Tenant>> {
    let query = tenancy_tenants::table
        .filter(tenancy_tenants::schema_name.eq(schema.as_str()))
        .select(TenantRow::as_select())
        .limit(1);
    let row = diesel_async::RunQueryDsl::get_result(query, conn).await;
    found(row, format!("find tenant {:?}", schema.as_str()))
}

/// [`find_tenant_by_domain`] on an async connection (one query, no libpq).
#[cfg(any(feature = "deadpool", feature = "bb8"))]
pub(crate) async fn find_tenant_by_domain_async(
    conn: &mut diesel_async::AsyncPgConnection,
    domain: &Domain,
) -> Result<Option<Tenant>> {
    let query = tenancy_domains::table
        .inner_join(tenancy_tenants::table)
        .filter(tenancy_domains::domain.eq(domain.as_str()))
        .select(TenantRow::as_select())
        .limit(1);
    let row = diesel_async::RunQueryDsl::get_result(query, conn).await;
    found(row, format!("find tenant by domain {:?}", domain.as_str()))
}

/// Deletes a tenant's row (its domains and journal entry go with it). Returns
/// the number of rows deleted. The schema is not touched: see
/// [`drop_tenant`](crate::drop_tenant).
pub(crate) fn delete_tenant_row(conn: &mut impl PgConn, schema: &SchemaName) -> Result<usize> {
    after_write(|| {
        diesel::delete(tenancy_tenants::table)
            .filter(tenancy_tenants::schema_name.eq(schema.as_str()))
            .execute(conn)
            .map_err(Error::db(format!("delete tenant {:?}", schema.as_str())))
    })
}

/// Points a tenant's row at a new schema name.
pub(crate) fn rename_tenant_row(
    conn: &mut impl PgConn,
    from: &SchemaName,
    to: &SchemaName,
) -> Result<Tenant> {
    after_write(|| {
        let row = diesel::update(tenancy_tenants::table)
            .filter(tenancy_tenants::schema_name.eq(from.as_str()))
            .set(tenancy_tenants::schema_name.eq(to.as_str()))
            .returning(TenantRow::as_returning())
            .get_result(conn)
            .optional()
            .map_err(|e| match unique_violation(&e) {
                Some(_) => Error::TenantExists {
                    schema: to.as_str().to_owned(),
                },
                None => Error::Database {
                    action: format!("rename tenant {:?}", from.as_str()),
                    source: e,
                },
            })?;
        match row {
            Some(row) => Tenant::try_from(row),
            None => Err(Error::TenantNotFound {
                schema: from.as_str().to_owned(),
            }),
        }
    })
}

/// A tenant's line in the migration journal.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct JournalEntry {
    /// The tenant's registry id.
    pub tenant_id: i64,
    /// The latest version of the tenant set applied when the set was last
    /// completed.
    pub latest_version: Option<String>,
    /// The last migration error, if the last attempt failed.
    pub last_error: Option<String>,
    /// The version that failed.
    pub last_error_version: Option<String>,
}

#[derive(QueryableByName)]
struct JournalRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    tenant_id: i64,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    latest_version: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    last_error: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    last_error_version: Option<String>,
}

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

/// Records a tenant's role name.
pub(crate) fn set_role_name(conn: &mut impl PgConn, id: i64, role: &SchemaName) -> Result<Tenant> {
    after_write(|| {
        let row = diesel::update(tenancy_tenants::table.find(id))
            .set(tenancy_tenants::role_name.eq(role.as_str()))
            .returning(TenantRow::as_returning())
            .get_result(conn)
            .map_err(Error::db(format!("record role {role}")))?;
        Tenant::try_from(row)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_step_per_version() {
        assert_eq!(super::STEPS.len(), super::REGISTRY_VERSION as usize);
    }
}
