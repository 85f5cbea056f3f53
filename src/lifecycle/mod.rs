//! Tenant lifecycle: create (one or many, with an optional hook that runs in
//! the creation transaction), drop (with an optional hook), unregister while
//! keeping the schema and adopt such a schema again, rename, suspend and
//! activate. The checks between the registry and the database are in
//! `consistency`.

mod bulk;
mod drop;

#[cfg(feature = "sync")]
pub use bulk::{create_tenants, create_tenants_with};
#[cfg(any(feature = "deadpool", feature = "bb8"))]
pub use bulk::{create_tenants_async, create_tenants_async_with};
pub use drop::{ConfirmDrop, drop_tenant, drop_tenant_with, unregister_tenant_keep_schema};

use diesel::connection::TransactionManager;
use diesel::migration::MigrationSource;
use diesel::pg::Pg;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sql_types::{BigInt, Text};

use crate::citus::{self, ClusterMode};
use crate::conn::PgConn;
use crate::migrate::{MigrationSet, Target, apply_in_transaction};
use crate::registry::{self, Tenant, TenantStatus, lock_schema};
use crate::{Domain, Error, Result, SchemaName};

use diesel::prelude::*;

/// What to create: a schema name, a display name and the domains that route to it
/// (the first one becomes the primary domain).
#[derive(Debug, Clone)]
pub struct NewTenant {
    /// The tenant's schema.
    pub schema: SchemaName,
    /// The display name.
    pub name: String,
    /// Host names routed to the tenant; the first is primary.
    pub domains: Vec<Domain>,
    /// Give the tenant its own database role (see
    /// [`TenantPoolBuilder::tenant_roles`](crate::TenantPoolBuilder::tenant_roles)).
    pub role: bool,
}

impl NewTenant {
    /// A tenant with no domains.
    pub fn new(schema: SchemaName, name: impl Into<String>) -> Self {
        NewTenant {
            schema,
            name: name.into(),
            domains: Vec::new(),
            role: false,
        }
    }

    /// Also create the tenant's own `NOLOGIN` role, with rights on its schema
    /// and read access to `public` (needs `CREATEROLE`).
    pub fn with_role(mut self) -> Self {
        self.role = true;
        self
    }

    /// Adds a domain (the first one added is the primary domain).
    pub fn domain(mut self, domain: Domain) -> Self {
        self.domains.push(domain);
        self
    }
}

pub(crate) fn schema_error(schema: &SchemaName, action: &str) -> impl FnOnce(DieselError) -> Error {
    let schema = schema.as_str().to_owned();
    let action = format!("{action} schema {schema:?}");
    move |e| match &e {
        DieselError::DatabaseError(DatabaseErrorKind::Unknown, info)
            if info.message().contains("already exists") =>
        {
            Error::SchemaExists { schema }
        }
        DieselError::DatabaseError(DatabaseErrorKind::Unknown, info)
            if info.message().contains("does not exist") =>
        {
            Error::SchemaMissing { schema }
        }
        _ => Error::Database { action, source: e },
    }
}

/// Creates a tenant in one transaction: the registry row, `CREATE SCHEMA`, every
/// migration of the tenant set (recorded in the schema's own ledger and in the
/// journal), and the domains. If any step fails, nothing is left behind: no row,
/// no schema, no domain.
///
/// Expects the registry to be installed
/// ([`run_shared_migrations`](crate::run_shared_migrations) does it). A tenant set
/// with a migration marked `run_in_transaction = false` is refused.
///
/// To seed the new tenant in the same transaction, use [`create_tenant_with`].
pub fn create_tenant<S: MigrationSource<Pg>>(
    conn: &mut impl PgConn,
    new: &NewTenant,
    tenant_migrations: S,
) -> Result<Tenant> {
    create_one(conn, new, tenant_migrations, Creation::NewSchema, no_hook())
}

/// [`create_tenant`], then `hook`, all in the one creation transaction: seed
/// data or any further setup of the new tenant (stancl/tenancy's
/// `TenantCreated` pipeline, django-tenants' post-create signal), with
/// nothing left behind if it fails.
///
/// The hook runs last: after the migrations, the domains and the role (when
/// [`NewTenant::with_role`] asks for one), with the tenant's schema first on
/// the connection's search path, then `public` (`"<schema>", public,
/// pg_temp`), so unqualified names reach the tenant's tables and the shared
/// ones. It gets the same connection, as the user that creates the tenant
/// (not the tenant's role), and the new [`Tenant`]. When it returns, the
/// path is put back as it was. If it returns an error, the whole creation is
/// rolled back: no registry row, no schema, no domain, no role; the error is
/// returned as is, except that a Diesel error it passed on with `?` (which
/// arrives as [`Error::Database`] with the action `transaction`) names the
/// hook and the tenant instead.
///
/// The hook must not end the transaction itself (`COMMIT` or `ROLLBACK` sent
/// as SQL): that would commit or undo the steps before it behind the
/// creation's back. It is detected afterwards and reported as an
/// [`Error::Database`] whose source is Diesel's `BrokenTransactionManager`;
/// Diesel's own `conn.transaction(...)` inside the hook is a savepoint and
/// is fine.
///
/// `hook`'s connection is the caller's type, so a generic function serves
/// every entry point ([`create_tenants_with`], `create_tenants_async_with`,
/// the [`testing::FastTenant`](crate::testing::FastTenant) fixture):
///
/// ```
/// use diesel::prelude::*;
/// use diesel_migrations::{EmbeddedMigrations, embed_migrations};
/// use diesel_tenancy::{NewTenant, PgConn, Result, SchemaName, Tenant, create_tenant_with};
///
/// const SHARED: EmbeddedMigrations = embed_migrations!("migrations_shared");
/// const TENANT: EmbeddedMigrations = embed_migrations!("migrations_tenant");
///
/// /// Every new tenant starts on the free plan, with its owner as a customer.
/// fn seed(conn: &mut impl PgConn, tenant: &Tenant) -> Result<()> {
///     // Unqualified: `tenant_plans` is shared (public), `customers` the tenant's.
///     diesel::sql_query(
///         "INSERT INTO tenant_plans (tenant_id, plan_id) SELECT $1, id FROM plans WHERE name = 'free'",
///     )
///     .bind::<diesel::sql_types::BigInt, _>(tenant.id())
///     .execute(conn)?;
///     diesel::sql_query("INSERT INTO customers (name, email) VALUES ('Owner', 'owner@example.com')")
///         .execute(conn)?;
///     Ok(())
/// }
///
/// # fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
/// # let db = diesel_tenancy::testing::TestDatabase::new()?;
/// let pool = db.migrated_pool(SHARED)?;
/// let new = NewTenant::new(SchemaName::new("acme")?, "Acme");
/// let acme = pool.with_public(|conn| create_tenant_with(conn, &new, TENANT, seed))?;
///
/// let owners: i64 = pool.with_tenant(&acme, |conn| {
///     diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>("count(*) FROM customers"))
///         .get_result(conn)
/// })?;
/// assert_eq!(owners, 1);
/// # Ok(()) }
/// ```
pub fn create_tenant_with<C, S, H>(
    conn: &mut C,
    new: &NewTenant,
    tenant_migrations: S,
    hook: H,
) -> Result<Tenant>
where
    C: PgConn,
    S: MigrationSource<Pg>,
    H: FnOnce(&mut C, &Tenant) -> Result<()>,
{
    create_one(
        conn,
        new,
        tenant_migrations,
        Creation::NewSchema,
        Some(hook),
    )
}

/// Registers a schema that exists already, with no registry row, as a new
/// tenant, in one transaction: the registry row (a new id), the pending
/// migrations of the tenant set (read from the schema's own ledger, so a
/// schema that has them all gets none), its journal entry, the domains and
/// the role when [`NewTenant::with_role`] asks for one. It takes the
/// schema's lock, as the other lifecycle functions do. If any step fails,
/// nothing changes.
///
/// This is how a schema that [`unregister_tenant_keep_schema`] left behind
/// (or one restored from a dump) becomes a tenant again; its tables and rows
/// are kept as they are. Fails with [`Error::SchemaMissing`] if there is no
/// such schema and [`Error::TenantExists`] if a tenant has it already. On
/// Citus the schema keeps the distribution it has.
///
/// ```no_run
/// use diesel_migrations::{EmbeddedMigrations, embed_migrations};
/// use diesel_tenancy::{NewTenant, SchemaName, adopt_tenant_schema};
///
/// const TENANT: EmbeddedMigrations = embed_migrations!("migrations_tenant");
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let pool = diesel_tenancy::TenantPool::builder("postgres://localhost/app").build()?;
/// let new = NewTenant::new(SchemaName::new("acme")?, "Acme");
/// let acme = pool.with_public(|conn| adopt_tenant_schema(conn, &new, TENANT))?;
/// # Ok(()) }
/// ```
pub fn adopt_tenant_schema<S: MigrationSource<Pg>>(
    conn: &mut impl PgConn,
    new: &NewTenant,
    tenant_migrations: S,
) -> Result<Tenant> {
    create_one(
        conn,
        new,
        tenant_migrations,
        Creation::ExistingSchema,
        no_hook(),
    )
}

/// One tenant on the caller's connection: [`create_tenant`],
/// [`create_tenant_with`] and [`adopt_tenant_schema`].
fn create_one<C, S, H>(
    conn: &mut C,
    new: &NewTenant,
    tenant_migrations: S,
    creation: Creation,
    hook: Option<H>,
) -> Result<Tenant>
where
    C: PgConn,
    S: MigrationSource<Pg>,
    H: FnOnce(&mut C, &Tenant) -> Result<()>,
{
    let set = MigrationSet::load(&tenant_migrations, new.schema.as_str())?;
    let citus = citus::detect(conn)? == ClusterMode::Citus;
    create_with_set(conn, new, &set, citus, creation, hook)
}

/// Whether a creation makes the tenant's schema or takes over one that exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Creation {
    NewSchema,
    ExistingSchema,
}

/// The absent hook, typed for the generic functions that take `Option<H>`.
fn no_hook<C>() -> Option<fn(&mut C, &Tenant) -> Result<()>> {
    None
}

/// [`create_tenant`], [`create_tenant_with`] and [`adopt_tenant_schema`]
/// with the set loaded and the mode known (`citus`).
fn create_with_set<C, H>(
    conn: &mut C,
    new: &NewTenant,
    set: &MigrationSet,
    citus: bool,
    creation: Creation,
    hook: Option<H>,
) -> Result<Tenant>
where
    C: PgConn,
    H: FnOnce(&mut C, &Tenant) -> Result<()>,
{
    let schema = &new.schema;
    let session_path = match hook {
        Some(_) => session_path(conn)?,
        None => String::new(),
    };
    committed(conn.transaction(|conn| {
        let tenant = match creation {
            Creation::NewSchema => {
                let tenant = registry::insert_tenant(conn, schema, &new.name)?;
                conn.batch_execute(&format!("CREATE SCHEMA {}", schema.quoted()))
                    .map_err(schema_error(schema, "create"))?;
                let tenant = registry::with_schema_oid(conn, tenant)?;
                if citus {
                    citus::distribute_new_schema(conn, schema)?;
                }
                tenant
            }
            Creation::ExistingSchema => {
                lock_schema(conn, schema)?;
                let tenant = registry::insert_tenant(conn, schema, &new.name)?;
                let tenant = registry::with_schema_oid(conn, tenant)?;
                if tenant.schema_oid().is_none() {
                    return Err(Error::SchemaMissing {
                        schema: schema.as_str().to_owned(),
                    });
                }
                tenant
            }
        };
        apply_in_transaction(
            conn,
            Target::Tenant {
                schema,
                id: tenant.id(),
            },
            set,
            citus,
        )?;
        for (i, domain) in new.domains.iter().enumerate() {
            registry::add_domain(conn, &tenant, domain, i == 0)?;
        }
        let tenant = if new.role {
            create_role(conn, &tenant)?
        } else {
            tenant
        };
        if let Some(hook) = hook {
            run_hook(conn, &tenant, Stage::Creation, &session_path, hook)?;
        }
        Ok(tenant)
    }))
}

/// Which lifecycle hook runs, for errors.
#[derive(Debug, Clone, Copy)]
enum Stage {
    Creation,
    Drop,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Creation => "creation",
            Stage::Drop => "drop",
        })
    }
}

/// Runs a lifecycle hook inside the current transaction with `"<schema>",
/// public, pg_temp` as the search path, then puts back the path it found
/// (one statement before, one after). A Diesel error the hook passed on
/// with `?` gets an action naming the hook; a hook that ended the
/// transaction itself is caught by comparing the transaction id and
/// Diesel's transaction depth before and after.
/// The caller's search path before a lifecycle transaction with a hook
/// begins: the session's, which a hook that sets the path for the session
/// must not change for the rest of the caller's borrow.
pub(super) fn session_path(conn: &mut impl PgConn) -> Result<String> {
    #[derive(QueryableByName)]
    struct Path {
        #[diesel(sql_type = Text)]
        path: String,
    }
    diesel::sql_query("SELECT pg_catalog.current_setting('search_path') AS path")
        .get_result::<Path>(conn)
        .map(|p| p.path)
        .map_err(Error::db("read the search path"))
}

fn run_hook<C, H>(
    conn: &mut C,
    tenant: &Tenant,
    stage: Stage,
    session_path: &str,
    hook: H,
) -> Result<()>
where
    C: PgConn,
    H: FnOnce(&mut C, &Tenant) -> Result<()>,
{
    #[derive(QueryableByName)]
    struct Entered {
        #[diesel(sql_type = Text)]
        path: String,
        #[diesel(sql_type = BigInt)]
        xid: i64,
    }
    let depth = |conn: &mut C| {
        C::TransactionManager::transaction_manager_status_mut(conn)
            .transaction_depth()
            .ok()
            .flatten()
    };
    let before = depth(conn);
    let schema = tenant.schema();
    let action = format!("{stage} hook of tenant {:?}", schema.as_str());
    let entered = diesel::sql_query(
        "SELECT s.path, pg_catalog.txid_current() AS xid, \
                pg_catalog.set_config('search_path', $1, true) IS NOT NULL AS entered \
         FROM (SELECT pg_catalog.current_setting('search_path') AS path OFFSET 0) s",
    )
    .bind::<Text, _>(format!("{}, public, pg_temp", schema.quoted()))
    .get_result::<Entered>(conn)
    .map_err(Error::db(format!("set the search path for the {action}")))?;
    hook(conn, tenant).map_err(|e| match e {
        Error::Database { action: a, source } if a == "transaction" => Error::Database {
            action: format!("the {action}"),
            source,
        },
        other => other,
    })?;
    // Both levels: a hook that set the path for the session (`SET` without
    // `LOCAL`) would otherwise leave it to the rest of the caller's borrow
    // once the transaction ends. The session value becomes the path the
    // caller had (a statement the pool's watch does not take for harmless, so
    // a pooled connection is reset when its borrow ends).
    let left = diesel::sql_query(
        "SELECT pg_catalog.set_config('search_path', $1, false) IS NOT NULL AND \
                pg_catalog.set_config('search_path', $2, true) IS NOT NULL AS entered, \
                pg_catalog.current_setting('search_path') AS path, \
                pg_catalog.txid_current() AS xid",
    )
    .bind::<Text, _>(session_path)
    .bind::<Text, _>(&entered.path)
    .get_result::<Entered>(conn)
    .map_err(Error::db(format!(
        "restore the search path after the {action}"
    )))?;
    if left.xid != entered.xid || depth(conn) != before {
        // Diesel follows the server (libpq's transaction status) and may
        // believe no transaction is open any more: open one, so that the
        // rollback the caller's `transaction` makes succeeds and this error
        // is the one returned.
        if depth(conn).is_none() {
            let _ = C::TransactionManager::begin_transaction(conn);
        }
        return Err(Error::Database {
            action: format!(
                "the {action} (it ended the transaction itself with COMMIT or ROLLBACK, \
                 so the steps before it may have been committed: check the tenant)"
            ),
            source: DieselError::BrokenTransactionManager,
        });
    }
    Ok(())
}

/// Creates `tenant`'s role (named `dt_<database oid>_<tenant id>`, unique in the
/// cluster) with rights on its schema, now and for tables made later by the
/// same user, and read access to `public`; records it in the registry.
fn create_role(conn: &mut impl PgConn, tenant: &Tenant) -> Result<Tenant> {
    #[derive(QueryableByName)]
    struct Oid {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        oid: i64,
    }
    let oid = diesel::sql_query(
        "SELECT oid::int8 AS oid FROM pg_catalog.pg_database WHERE datname = current_database()",
    )
    .get_result::<Oid>(conn)
    .map_err(Error::db("read the database oid"))?
    .oid;
    let role = SchemaName::new(&format!("dt_{oid}_{}", tenant.id()))?;
    let (r, s) = (role.quoted(), tenant.schema().quoted());
    conn.batch_execute(&format!(
        "CREATE ROLE {r} NOLOGIN; \
         GRANT {r} TO CURRENT_USER; \
         GRANT USAGE ON SCHEMA {s} TO {r}; \
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {s} TO {r}; \
         GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA {s} TO {r}; \
         ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {r}; \
         ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO {r}; \
         GRANT USAGE ON SCHEMA public TO {r}; \
         GRANT SELECT ON ALL TABLES IN SCHEMA public TO {r};"
    ))
    .map_err(Error::db(format!(
        "create role {role} for tenant {:?}",
        tenant.schema().as_str()
    )))?;
    registry::set_role_name(conn, tenant.id(), &role)
}

/// Gives an existing tenant its own role if it has none (one transaction).
pub fn ensure_tenant_role(conn: &mut impl PgConn, schema: &SchemaName) -> Result<Tenant> {
    committed(conn.transaction(|conn| {
        lock_schema(conn, schema)?;
        let tenant = registry::get_tenant(conn, schema)?;
        if tenant.role().is_some() {
            return Ok(tenant);
        }
        create_role(conn, &tenant)
    }))
}

/// Caches of registry answers in this process are stale once a registry change
/// commits (the triggers tell other processes).
fn committed<T>(result: Result<T>) -> Result<T> {
    if result.is_ok() {
        registry::bump_generation();
    }
    result
}

/// Renames a tenant's schema and its registry row together, in one transaction.
pub fn rename_tenant(conn: &mut impl PgConn, from: &SchemaName, to: &SchemaName) -> Result<Tenant> {
    committed(conn.transaction(|conn| {
        lock_schema(conn, from)?;
        lock_schema(conn, to)?;
        let tenant = registry::rename_tenant_row(conn, from, to)?;
        conn.batch_execute(&format!(
            "ALTER SCHEMA {} RENAME TO {}",
            from.quoted(),
            to.quoted()
        ))
        .map_err(|e| match schema_error(to, "rename")(e) {
            Error::SchemaMissing { .. } => Error::SchemaMissing {
                schema: from.as_str().to_owned(),
            },
            other => other,
        })?;
        registry::with_schema_oid(conn, tenant)
    }))
}

/// Suspends a tenant: lookups of it fail with [`Error::TenantSuspended`] until
/// it is activated again, and so do checkouts for the returned value. A
/// [`Tenant`] looked up before is a snapshot and still gets connections (see
/// [`Tenant`]).
pub fn suspend_tenant(conn: &mut impl PgConn, schema: &SchemaName) -> Result<Tenant> {
    registry::set_tenant_status(conn, schema, TenantStatus::Suspended)
}

/// Activates a suspended tenant.
pub fn activate_tenant(conn: &mut impl PgConn, schema: &SchemaName) -> Result<Tenant> {
    registry::set_tenant_status(conn, schema, TenantStatus::Active)
}
