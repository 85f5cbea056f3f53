//! Creating many tenants at once, on a bounded number of connections.

use super::*;
use diesel::migration::MigrationSource;
use diesel::pg::Pg;

use crate::citus::ClusterMode;
use crate::conn::Sessions;
use crate::migrate::MigrationSet;
use crate::registry::Tenant;
use crate::{Error, Result, parallel};

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
    create_tenants_on(pool, tenants, tenant_migrations, jobs, no_hook())
}

/// [`create_tenants`], with `hook` run in each tenant's creation transaction
/// as [`create_tenant_with`] runs it: last, with the tenant's schema first
/// on the search path. Each tenant is still all or nothing: one whose hook
/// fails leaves nothing behind and gets the error in its result, and the
/// others are created. The hook runs on the worker threads, several at once,
/// each on its own connection.
///
/// ```no_run
/// use diesel::prelude::*;
/// use diesel_migrations::{EmbeddedMigrations, embed_migrations};
/// use diesel_tenancy::{NewTenant, SchemaName, create_tenants_with};
///
/// const TENANT: EmbeddedMigrations = embed_migrations!("migrations_tenant");
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let pool = diesel_tenancy::TenantPool::builder("postgres://localhost/app").build()?;
/// let tenants: Vec<NewTenant> = (0..100)
///     .map(|i| Ok(NewTenant::new(SchemaName::new(&format!("shop{i}"))?, format!("Shop {i}"))))
///     .collect::<Result<_, diesel_tenancy::Error>>()?;
/// let results = create_tenants_with(&pool, &tenants, &TENANT, 4, |conn, tenant| {
///     diesel::sql_query("INSERT INTO customers (name, email) VALUES ($1, 'owner@example.com')")
///         .bind::<diesel::sql_types::Text, _>(tenant.name())
///         .execute(conn)?;
///     Ok(())
/// });
/// for (new, result) in tenants.iter().zip(&results) {
///     if let Err(e) = result {
///         eprintln!("{}: {e}", new.schema);
///     }
/// }
/// # Ok(()) }
/// ```
#[cfg(feature = "sync")]
pub fn create_tenants_with<S, H>(
    pool: &crate::TenantPool,
    tenants: &[NewTenant],
    tenant_migrations: &S,
    jobs: usize,
    hook: H,
) -> Vec<Result<Tenant>>
where
    S: MigrationSource<Pg> + Sync,
    H: Fn(&mut diesel::PgConnection, &Tenant) -> Result<()> + Sync,
{
    let hook = |conn: &mut crate::TenantConnection, tenant: &Tenant| hook(conn, tenant);
    create_tenants_on(pool, tenants, tenant_migrations, jobs, Some(hook))
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
    create_tenants_async_on(pool, tenants, tenant_migrations, jobs, no_hook()).await
}

/// [`create_tenants_with`](crate::create_tenants_with) on an async pool: the
/// hook gets the worker's connection as a blocking Diesel connection (the
/// one [`AsyncTenantPool::blocking`](crate::AsyncTenantPool::blocking) hands
/// out) and runs on tokio's blocking threads.
///
/// ```no_run
/// use diesel::prelude::*;
/// use diesel_migrations::{EmbeddedMigrations, embed_migrations};
/// use diesel_tenancy::{NewTenant, SchemaName, create_tenants_async_with};
///
/// const TENANT: EmbeddedMigrations = embed_migrations!("migrations_tenant");
///
/// # async fn run(pool: diesel_tenancy::AsyncTenantPool) -> Result<(), Box<dyn std::error::Error>> {
/// let tenants = vec![NewTenant::new(SchemaName::new("acme")?, "Acme")];
/// let results = create_tenants_async_with(&pool, tenants, TENANT, 4, |conn, _tenant| {
///     diesel::sql_query("INSERT INTO customers (name, email) VALUES ('Owner', 'owner@example.com')")
///         .execute(conn)?;
///     Ok(())
/// })
/// .await;
/// # Ok(()) }
/// ```
#[cfg(any(feature = "deadpool", feature = "bb8"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "deadpool", feature = "bb8"))))]
pub async fn create_tenants_async_with<S, H>(
    pool: &crate::AsyncTenantPool,
    tenants: Vec<NewTenant>,
    tenant_migrations: S,
    jobs: usize,
    hook: H,
) -> Vec<Result<Tenant>>
where
    S: MigrationSource<Pg> + Send + Sync + 'static,
    H: Fn(&mut crate::BlockingConnection, &Tenant) -> Result<()> + Send + Sync + 'static,
{
    create_tenants_async_on(pool, tenants, tenant_migrations, jobs, Some(hook)).await
}

/// [`create_tenants_async`] with an optional hook.
#[cfg(any(feature = "deadpool", feature = "bb8"))]
pub(super) async fn create_tenants_async_on<S, H>(
    pool: &crate::AsyncTenantPool,
    tenants: Vec<NewTenant>,
    tenant_migrations: S,
    jobs: usize,
    hook: Option<H>,
) -> Vec<Result<Tenant>>
where
    S: MigrationSource<Pg> + Send + Sync + 'static,
    H: Fn(&mut crate::BlockingConnection, &Tenant) -> Result<()> + Send + Sync + 'static,
{
    let sessions = pool.sessions(tokio::runtime::Handle::current());
    let n = tenants.len();
    tokio::task::spawn_blocking(move || {
        create_tenants_on(&sessions, &tenants, &tenant_migrations, jobs, hook)
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

/// [`create_tenants`] on any source of session connections, with an
/// optional hook.
pub(crate) fn create_tenants_on<P, S, H>(
    pool: &P,
    tenants: &[NewTenant],
    tenant_migrations: &S,
    jobs: usize,
    hook: Option<H>,
) -> Vec<Result<Tenant>>
where
    P: Sessions,
    S: MigrationSource<Pg> + Sync,
    H: Fn(&mut P::Conn, &Tenant) -> Result<()> + Sync,
{
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
            let citus = mode == ClusterMode::Citus;
            create_with_set(conn, new, set, citus, Creation::NewSchema, hook.as_ref())
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
