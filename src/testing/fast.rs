//! A tenant made once per test process, and a connection to it per test
//! inside a transaction that is rolled back at the end (django-tenants'
//! `FastTenantTestCase`).

use std::sync::{Mutex, OnceLock};

use diesel::migration::{Migration, MigrationSource};
use diesel::pg::{Pg, PgConnection};
use diesel::prelude::*;

use super::TestingError;
use super::cluster::shared_cluster;
use super::database::{database_url_for, fresh_database_name, migrated, small_pool_builder};
use super::error::db_err;
use super::sql::{connect, sql_literal};
use crate::{Domain, Error, NewTenant, SchemaName, Tenant, TenantConnection, TenantPool};

/// What [`FastTenantOptions::on_create`] runs in the tenant's creation transaction,
/// as [`create_tenant_with`](crate::create_tenant_with)'s hook: with the
/// tenant's schema first on the search path.
pub type FastTenantHook = fn(&mut PgConnection, &Tenant) -> crate::Result<()>;

/// How [`FastTenant::with_options`] sets its tenant up: the schema name and
/// a creation hook.
#[derive(Debug, Clone, Copy)]
pub struct FastTenantOptions {
    schema: &'static str,
    hook: Option<FastTenantHook>,
}

impl FastTenantOptions {
    /// Schema `fasttest`, no hook.
    pub const fn new() -> Self {
        FastTenantOptions {
            schema: "fasttest",
            hook: None,
        }
    }

    /// The tenant's schema name instead of `fasttest` (checked at set-up: an
    /// invalid name fails every use with [`Error::InvalidSchemaName`]).
    pub const fn schema(self, schema: &'static str) -> Self {
        FastTenantOptions { schema, ..self }
    }

    /// Runs `hook` once, in the tenant's creation transaction, as
    /// [`create_tenant_with`](crate::create_tenant_with) does: data every
    /// test starts from. It is committed, so every test sees it, and what a
    /// test changes in it is rolled back.
    pub const fn on_create(self, hook: FastTenantHook) -> Self {
        FastTenantOptions {
            hook: Some(hook),
            ..self
        }
    }
}

impl Default for FastTenantOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// A tenant created once per test process (per test binary), and for each
/// test a connection scoped to it inside a transaction that is rolled back
/// when the test ends: tests do not see each other's rows and do not pay for
/// creating a tenant (django-tenants' `FastTenantTestCase`; what Diesel's
/// `begin_test_transaction` does for one connection).
///
/// Declare one as a `static`, with the application's migrations; the first
/// test that uses it makes a database of its own (as
/// [`TestDatabase::new`](super::TestDatabase::new) does: on `DATABASE_URL`
/// if set, else in the process's throwaway cluster), runs the shared
/// migrations and creates the tenant, with its domain
/// `<schema>.test.localhost` (see [`tenant_host`](super::tenant_host)) and
/// every tenant migration. Every later use in the process reuses it. A
/// failed set-up is not remembered: the next test tries again and reports
/// its own error.
///
/// ```
/// use diesel::prelude::*;
/// use diesel_migrations::{EmbeddedMigrations, embed_migrations};
/// use diesel_tenancy::testing::FastTenant;
///
/// const SHARED: EmbeddedMigrations = embed_migrations!("migrations_shared");
/// const TENANT: EmbeddedMigrations = embed_migrations!("migrations_tenant");
///
/// static TEST_TENANT: FastTenant<EmbeddedMigrations> = FastTenant::new(SHARED, TENANT);
///
/// diesel::table! {
///     customers (id) {
///         id -> BigInt,
///         name -> Text,
///         email -> Text,
///     }
/// }
///
/// // #[test]
/// fn a_customer_is_added() -> Result<(), Box<dyn std::error::Error>> {
///     let mut conn = TEST_TENANT.conn()?; // the tenant's schema, in a test transaction
///     diesel::insert_into(customers::table)
///         .values((customers::name.eq("Ann"), customers::email.eq("ann@example.com")))
///         .execute(&mut conn)?;
///     let names: Vec<String> = customers::table.select(customers::name).load(&mut conn)?;
///     assert_eq!(names, ["Ann"]);
///     Ok(()) // dropping `conn` rolls the insert back
/// }
/// # a_customer_is_added().unwrap();
/// ```
///
/// What the transaction means for the code under test:
///
/// - Code must run on the test's connection (`&mut PgConnection`). Code that
///   checks out its own connections from [`pool`](Self::pool) commits for
///   real, and its rows stay for later tests; give such code a tenant of its
///   own ([`create_tenant`](super::create_tenant)).
/// - Diesel's `conn.transaction(...)` in the code under test is a savepoint:
///   it commits into the test's transaction and is rolled back with it. The
///   test must not call [`TenantConnection::commit`].
/// - Tests of one binary run in parallel on the one tenant, each in its own
///   transaction. Rows one test writes are never visible to another, but two
///   tests that insert the same unique key at once wait for each other (the
///   second until the first rolls back), so give each test its own keys.
///   Sequences are not rolled back: ids keep growing.
/// - Statements that cannot run in a transaction (`CREATE INDEX
///   CONCURRENTLY`, `VACUUM`) fail, as in any test transaction.
///
/// The process never drops a `static`, so the database stays until the
/// process ends: in the throwaway cluster it goes with the cluster. On a
/// `DATABASE_URL` server it outlives the process; the next `FastTenant` set
/// up from the same machine drops those of processes that have ended
/// (databases named `dt_fast_*` whose comment names this machine and a
/// process that is gone, and that nobody is connected to).
pub struct FastTenant<S: 'static, T: 'static = S> {
    shared: S,
    tenant_migrations: T,
    options: FastTenantOptions,
    ready: OnceLock<Ready>,
    setting_up: Mutex<()>,
}

/// The database, its pool and the tenant, once set up.
struct Ready {
    url: String,
    /// Session mode: set-up, and what [`FastTenant::pool`] hands out.
    pool: TenantPool,
    /// Transaction-scoped mode: the tests' connections.
    test_pool: TenantPool,
    tenant: Tenant,
}

impl<S, T> std::fmt::Debug for FastTenant<S, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastTenant")
            .field("schema", &self.options.schema)
            .field("ready", &self.ready.get().is_some())
            .finish_non_exhaustive()
    }
}

impl<S, T> FastTenant<S, T>
where
    S: MigrationSource<Pg> + Sync + 'static,
    T: MigrationSource<Pg> + Sync + 'static,
{
    /// A fast tenant (schema `fasttest`) on a database with the `shared`
    /// migrations, with every migration of `tenant_migrations` applied to it.
    /// Nothing happens until the first use.
    pub const fn new(shared: S, tenant_migrations: T) -> Self {
        Self::with_options(shared, tenant_migrations, FastTenantOptions::new())
    }

    /// [`new`](Self::new) with another schema name or a creation hook.
    ///
    /// ```
    /// use diesel::prelude::*;
    /// use diesel_migrations::{EmbeddedMigrations, embed_migrations};
    /// use diesel_tenancy::testing::{FastTenant, FastTenantOptions};
    ///
    /// const SHARED: EmbeddedMigrations = embed_migrations!("migrations_shared");
    /// const TENANT: EmbeddedMigrations = embed_migrations!("migrations_tenant");
    ///
    /// /// What every test starts from.
    /// fn products(conn: &mut PgConnection, _: &diesel_tenancy::Tenant) -> diesel_tenancy::Result<()> {
    ///     diesel::sql_query("INSERT INTO products (name, price_cents) VALUES ('tea', 450)")
    ///         .execute(conn)?;
    ///     Ok(())
    /// }
    ///
    /// static SHOP: FastTenant<EmbeddedMigrations> = FastTenant::with_options(
    ///     SHARED,
    ///     TENANT,
    ///     FastTenantOptions::new().schema("shop").on_create(products),
    /// );
    /// # let mut conn = SHOP.conn().unwrap();
    /// # let n: i64 = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>("count(*) FROM products"))
    /// #     .get_result(&mut conn)
    /// #     .unwrap();
    /// # assert_eq!(n, 1);
    /// # assert_eq!(SHOP.tenant().unwrap().schema().as_str(), "shop");
    /// ```
    pub const fn with_options(shared: S, tenant_migrations: T, options: FastTenantOptions) -> Self {
        FastTenant {
            shared,
            tenant_migrations,
            options,
            ready: OnceLock::new(),
            setting_up: Mutex::new(()),
        }
    }

    /// The tenant, created on first use.
    pub fn tenant(&self) -> Result<&Tenant, TestingError> {
        Ok(&self.ready()?.tenant)
    }

    /// A pool on the tenant's database (for set-up beyond the hook, or to
    /// look at what is committed). Connections from it are not in any test
    /// transaction: what they write stays.
    pub fn pool(&self) -> Result<&TenantPool, TestingError> {
        Ok(&self.ready()?.pool)
    }

    /// The URL of the tenant's database.
    pub fn database_url(&self) -> Result<&str, TestingError> {
        Ok(&self.ready()?.url)
    }

    /// A connection scoped to the tenant, inside a transaction that is
    /// rolled back when the connection is dropped. It comes from a pool in
    /// transaction-scoped mode (see
    /// [`TenantPoolBuilder::transaction_scoped`](crate::TenantPoolBuilder::transaction_scoped)):
    /// the checkout opens the transaction, and dropping the connection
    /// without [`commit`](TenantConnection::commit) (which a test should
    /// never call) rolls it back and returns the connection to the pool.
    pub fn conn(&self) -> Result<TenantConnection, TestingError> {
        let ready = self.ready()?;
        let conn = ready.test_pool.get(&ready.tenant)?;
        if !conn.in_own_transaction() {
            return Err(TestingError::Tenancy(Error::Unscopable {
                scope: ready.tenant.schema().as_str().to_owned(),
                reason: "the test pool handed out a connection outside a transaction".into(),
            }));
        }
        Ok(conn)
    }

    /// Runs `f` on a connection from [`conn`](Self::conn) and rolls back
    /// whatever it did, whether it returns `Ok` or `Err`.
    ///
    /// ```no_run
    /// # use diesel::prelude::*;
    /// # use diesel_migrations::{EmbeddedMigrations, embed_migrations};
    /// # use diesel_tenancy::testing::FastTenant;
    /// # const SHARED: EmbeddedMigrations = embed_migrations!("migrations_shared");
    /// # const TENANT: EmbeddedMigrations = embed_migrations!("migrations_tenant");
    /// # static TEST_TENANT: FastTenant<EmbeddedMigrations> = FastTenant::new(SHARED, TENANT);
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let inserted = TEST_TENANT.run(|conn| {
    ///     diesel::sql_query("INSERT INTO customers (name, email) VALUES ('Ann', 'ann@example.com')")
    ///         .execute(conn)
    ///         .map_err(|e| Box::new(e) as Box<dyn std::error::Error>)
    /// })?;
    /// assert_eq!(inserted, 1);
    /// # Ok(()) }
    /// ```
    pub fn run<R, E>(&self, f: impl FnOnce(&mut PgConnection) -> Result<R, E>) -> Result<R, E>
    where
        E: From<TestingError>,
    {
        let mut conn = self.conn()?;
        f(&mut conn)
    }

    /// A connection of its own to the tenant's database for async tests
    /// (diesel-async, without a pool: an async pool belongs to the runtime
    /// that made it, and each `#[tokio::test]` has its own), with the
    /// tenant's schema first on the search path, inside a test transaction.
    /// Dropping it closes it, which rolls the transaction back.
    ///
    /// The first use in the process sets the tenant up with blocking calls
    /// (once, on the calling thread).
    ///
    /// ```no_run
    /// # use diesel_migrations::{EmbeddedMigrations, embed_migrations};
    /// # use diesel_tenancy::testing::FastTenant;
    /// # const SHARED: EmbeddedMigrations = embed_migrations!("migrations_shared");
    /// # const TENANT: EmbeddedMigrations = embed_migrations!("migrations_tenant");
    /// # static TEST_TENANT: FastTenant<EmbeddedMigrations> = FastTenant::new(SHARED, TENANT);
    /// # async fn test() -> Result<(), Box<dyn std::error::Error>> {
    /// use diesel_async::RunQueryDsl;
    /// let mut conn = TEST_TENANT.conn_async().await?;
    /// diesel::sql_query("INSERT INTO customers (name, email) VALUES ('Ann', 'ann@example.com')")
    ///     .execute(&mut conn)
    ///     .await?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "async")]
    #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
    pub async fn conn_async(&self) -> Result<diesel_async::AsyncPgConnection, TestingError> {
        use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
        let ready = self.ready()?;
        let mut conn = AsyncPgConnection::establish(&ready.url)
            .await
            .map_err(db_err("connect to the fast tenant's database"))?;
        let path = crate::scope::ScopeKey::Tenant(ready.tenant.schema().clone(), None, None)
            .search_path(&[]);
        let set_path = diesel::sql_query("SELECT pg_catalog.set_config('search_path', $1, false)")
            .bind::<diesel::sql_types::Text, _>(path);
        RunQueryDsl::execute(set_path, &mut conn)
            .await
            .map_err(db_err("set the search path to the fast tenant"))?;
        conn.begin_test_transaction()
            .await
            .map_err(db_err("begin the test transaction"))?;
        Ok(conn)
    }

    fn ready(&self) -> Result<&Ready, TestingError> {
        if let Some(ready) = self.ready.get() {
            return Ok(ready);
        }
        // A test that panicked while holding the lock poisoned it; the lock
        // guards no data, so go on.
        let _setting_up = self
            .setting_up
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(ready) = self.ready.get() {
            return Ok(ready);
        }
        let ready = self.set_up()?;
        Ok(self.ready.get_or_init(|| ready))
    }

    fn set_up(&self) -> Result<Ready, TestingError> {
        let schema = SchemaName::new(self.options.schema).map_err(Error::from)?;
        let domain = Domain::parse(&format!("{schema}.test.localhost")).map_err(Error::from)?;
        let url = fast_database()?;
        let pool = migrated(
            small_pool_builder(&url).min_idle(Some(1)),
            Borrowed(&self.shared),
        )?;
        let new = NewTenant::new(schema.clone(), schema.as_str()).domain(domain);
        let migrations = Borrowed(&self.tenant_migrations);
        let tenant = pool.with_public(|conn| match self.options.hook {
            Some(hook) => crate::create_tenant_with(conn, &new, migrations, hook),
            None => crate::create_tenant(conn, &new, migrations),
        })?;
        let test_pool = small_pool_builder(&url)
            .max_size(16)
            .min_idle(Some(1))
            .transaction_scoped(true)
            // No transaction pooler in between: keep Diesel's statement cache.
            .statement_cache(true)
            .build()?;
        Ok(Ready {
            url,
            pool,
            test_pool,
            tenant,
        })
    }
}

/// A migration source seen through a reference (the lifecycle functions
/// take theirs by value).
struct Borrowed<'a, S>(&'a S);

impl<S: MigrationSource<Pg>> MigrationSource<Pg> for Borrowed<'_, S> {
    fn migrations(&self) -> diesel::migration::Result<Vec<Box<dyn Migration<Pg>>>> {
        self.0.migrations()
    }
}

/// Makes the fast tenant's database and returns its URL: on `DATABASE_URL`
/// if set (commented with this machine and process, after dropping those
/// of ended processes), else in the process's throwaway cluster.
fn fast_database() -> Result<String, TestingError> {
    let (admin_url, external) = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => (url, true),
        _ => (shared_cluster()?.admin_url().to_owned(), false),
    };
    let name = fresh_database_name("dt_fast");
    let mut admin = connect(&admin_url)?;
    if external {
        drop_leftovers(&mut admin);
    }
    use diesel::connection::SimpleConnection;
    admin
        .batch_execute(&format!("CREATE DATABASE {}", name.quoted()))
        .map_err(db_err(format!("create test database {name}")))?;
    if external {
        let comment = sql_literal(&owner_comment(&host_name(), std::process::id()));
        admin
            .batch_execute(&format!(
                "COMMENT ON DATABASE {} IS {comment}",
                name.quoted()
            ))
            .map_err(db_err(format!("comment on test database {name}")))?;
    }
    database_url_for(&admin_url, name.as_str())
}

/// The comment that names the process owning a fast tenant's database.
fn owner_comment(host: &str, pid: u32) -> String {
    format!("diesel-tenancy fast tenant; host={host}; pid={pid}")
}

/// The (host, pid) of an [`owner_comment`].
fn parse_owner(comment: &str) -> Option<(&str, u32)> {
    let rest = comment.strip_prefix("diesel-tenancy fast tenant; host=")?;
    let (host, pid) = rest.rsplit_once("; pid=")?;
    Some((host, pid.parse().ok()?))
}

/// This machine's name (empty if unknown: then nothing counts as ours).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

/// Drops the fast tenants' databases that processes of this machine left
/// on the server and that nobody uses. Best effort: a database whose owner
/// cannot be told, or that someone is connected to, is left alone.
fn drop_leftovers(admin: &mut PgConnection) {
    #[derive(QueryableByName)]
    struct Leftover {
        #[diesel(sql_type = diesel::sql_types::Text)]
        name: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        comment: String,
    }
    let host = host_name();
    if host.is_empty() || !std::path::Path::new("/proc/self").exists() {
        return;
    }
    let Ok(leftovers) = diesel::sql_query(
        "SELECT datname::text AS name, pg_catalog.shobj_description(oid, 'pg_database') AS comment \
         FROM pg_catalog.pg_database \
         WHERE datname LIKE 'dt\\_fast\\_%' \
           AND pg_catalog.shobj_description(oid, 'pg_database') IS NOT NULL",
    )
    .load::<Leftover>(admin) else {
        return;
    };
    for leftover in leftovers {
        let ours_and_ended = parse_owner(&leftover.comment).is_some_and(|(h, pid)| {
            h == host && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        });
        let Ok(name) = SchemaName::new(&leftover.name) else {
            continue;
        };
        if ours_and_ended {
            // Without FORCE: refused while anyone is connected.
            use diesel::connection::SimpleConnection;
            let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {}", name.quoted()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_comments_round_trip_and_foreign_ones_are_not_ours() {
        let comment = owner_comment("ci-runner; 7", 4242);
        assert_eq!(parse_owner(&comment), Some(("ci-runner; 7", 4242)));
        assert_eq!(parse_owner("someone else's database"), None);
        assert_eq!(
            parse_owner("diesel-tenancy fast tenant; host=h; pid=x"),
            None
        );
    }
}
