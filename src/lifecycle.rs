//! Tenant lifecycle: create (one or many), drop, rename, suspend and
//! activate. The checks between the registry and the database are in
//! `consistency`.

use diesel::migration::MigrationSource;
use diesel::pg::Pg;
use diesel::result::{DatabaseErrorKind, Error as DieselError};

use crate::citus::{self, ClusterMode};
use crate::conn::{PgConn, Sessions};
use crate::migrate::{MigrationSet, Target, apply_in_transaction};
use crate::registry::{self, Tenant, TenantStatus, lock_schema};
use crate::{Domain, Error, Result, SchemaName, parallel};

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
pub fn create_tenant<S: MigrationSource<Pg>>(
    conn: &mut impl PgConn,
    new: &NewTenant,
    tenant_migrations: S,
) -> Result<Tenant> {
    let set = MigrationSet::load(&tenant_migrations, new.schema.as_str())?;
    let citus = citus::detect(conn)? == ClusterMode::Citus;
    create_with_set(conn, new, &set, citus)
}

/// [`create_tenant`] with the set loaded and the mode known (`citus`).
fn create_with_set(
    conn: &mut impl PgConn,
    new: &NewTenant,
    set: &MigrationSet,
    citus: bool,
) -> Result<Tenant> {
    let schema = &new.schema;
    committed(conn.transaction(|conn| {
        let tenant = registry::insert_tenant(conn, schema, &new.name)?;
        conn.batch_execute(&format!("CREATE SCHEMA {}", schema.quoted()))
            .map_err(schema_error(schema, "create"))?;
        let tenant = registry::with_schema_oid(conn, tenant)?;
        if citus {
            citus::distribute_new_schema(conn, schema)?;
        }
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
        if new.role {
            return create_role(conn, &tenant);
        }
        Ok(tenant)
    }))
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

/// Creates many tenants, `jobs` at a time, each exactly as [`create_tenant`]
/// does (its own transaction, all or nothing). Returns one result per entry of
/// `tenants`, in the same order; one failure does not stop the others.
#[cfg(feature = "sync")]
pub fn create_tenants<S: MigrationSource<Pg> + Sync>(
    pool: &crate::TenantPool,
    tenants: &[NewTenant],
    tenant_migrations: &S,
    jobs: usize,
) -> Vec<Result<Tenant>> {
    create_tenants_with(pool, tenants, tenant_migrations, jobs)
}

/// [`create_tenants`](crate::create_tenants) on an async pool, on tokio's
/// blocking threads (never a runtime worker), without libpq.
#[cfg(any(feature = "deadpool", feature = "bb8"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "deadpool", feature = "bb8"))))]
pub async fn create_tenants_async<S: MigrationSource<Pg> + Send + Sync + 'static>(
    pool: &crate::AsyncTenantPool,
    tenants: Vec<NewTenant>,
    tenant_migrations: S,
    jobs: usize,
) -> Vec<Result<Tenant>> {
    let sessions = pool.sessions(tokio::runtime::Handle::current());
    let n = tenants.len();
    tokio::task::spawn_blocking(move || {
        create_tenants_with(&sessions, &tenants, &tenant_migrations, jobs)
    })
    .await
    .unwrap_or_else(|e| {
        (0..n)
            .map(|_| {
                Err(Error::TaskFailed {
                    task: "tenant creation".into(),
                    reason: e.to_string(),
                })
            })
            .collect()
    })
}

/// [`create_tenants`] on any source of session connections.
pub(crate) fn create_tenants_with<P: Sessions, S: MigrationSource<Pg> + Sync>(
    pool: &P,
    tenants: &[NewTenant],
    tenant_migrations: &S,
    jobs: usize,
) -> Vec<Result<Tenant>> {
    let (results, _) = parallel::run(
        pool,
        tenants,
        jobs,
        parallel::RECYCLE_AFTER_SCHEMAS,
        || MigrationSet::load(tenant_migrations, "tenant set"),
        |set, worker, new| {
            let set = set.as_ref().map_err(|e| Error::Migration {
                schema: new.schema.as_str().to_owned(),
                version: None,
                source: crate::error::error_chain(e).into(),
            })?;
            let (conn, mode) = worker.conn_and_mode()?;
            create_with_set(conn, new, set, mode == ClusterMode::Citus)
        },
        |new| {
            Err(Error::TaskFailed {
                task: format!("create tenant {:?}", new.schema.as_str()),
                reason: "its worker thread panicked".into(),
            })
        },
    );
    results
}

/// The confirmation [`drop_tenant`] requires: dropping a tenant deletes its
/// schema with every table and row in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfirmDrop {
    /// Yes: delete the schema, all of its data, and the registry rows.
    DeleteSchemaAndAllItsData,
}

/// Drops a tenant in one transaction: its schema (`CASCADE`: every table and row
/// in it) and its registry rows (tenant, domains, journal). Waits for a
/// migration run working on the schema. A registry row whose schema is already
/// gone is removed all the same.
pub fn drop_tenant(
    conn: &mut impl PgConn,
    schema: &SchemaName,
    confirm: ConfirmDrop,
) -> Result<()> {
    let ConfirmDrop::DeleteSchemaAndAllItsData = confirm;
    committed(conn.transaction(|conn| {
        lock_schema(conn, schema)?;
        let role = registry::find_tenant(conn, schema)?.and_then(|t| t.role().cloned());
        if registry::delete_tenant_row(conn, schema)? == 0 {
            return Err(Error::TenantNotFound {
                schema: schema.as_str().to_owned(),
            });
        }
        conn.batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {} CASCADE",
            schema.quoted()
        ))
        .map_err(schema_error(schema, "drop"))?;
        if let Some(role) = role {
            let r = role.quoted();
            conn.batch_execute(&format!("DROP OWNED BY {r}; DROP ROLE {r};"))
                .map_err(Error::db(format!("drop role {role}")))?;
        }
        Ok(())
    }))
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
