//! Shared set-up for the integration tests: each test gets its own database.
#![allow(dead_code, missing_docs, unreachable_pub)]

use diesel::prelude::*;
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use diesel_tenancy::testing::{self, TestDatabase};
use diesel_tenancy::{Tenant, TenantPool, TenantPoolBuilder};

pub const SHARED: EmbeddedMigrations = embed_migrations!("migrations_shared");
pub const TENANT: EmbeddedMigrations = embed_migrations!("migrations_tenant");

diesel::table! {
    customers (id) {
        id -> BigInt,
        name -> Text,
        email -> Text,
    }
}

/// A database with the registry and shared migrations, and a pool of `size`.
pub fn setup(size: u32) -> (TestDatabase, TenantPool) {
    setup_with(size, |b| b)
}

/// [`setup`] with further pool settings.
pub fn setup_with(
    size: u32,
    settings: impl FnOnce(TenantPoolBuilder) -> TenantPoolBuilder,
) -> (TestDatabase, TenantPool) {
    let db = TestDatabase::new().expect("test database");
    let pool = settings(db.pool_builder().max_size(size))
        .build()
        .expect("pool");
    diesel_tenancy::run_shared_migrations(&mut pool.public().unwrap(), SHARED)
        .expect("shared migrations");
    (db, pool)
}

/// Creates tenants `prefix0..prefixN`, each holding one customer named after its
/// schema: the marker a read checks.
pub fn tenants_with_markers(pool: &TenantPool, prefix: &str, n: usize) -> Vec<Tenant> {
    (0..n)
        .map(|i| {
            let schema = format!("{prefix}{i}");
            let tenant = testing::create_tenant(pool, &schema, TENANT).expect("tenant");
            pool.with_tenant(&tenant, |conn| {
                diesel::insert_into(customers::table)
                    .values((
                        customers::name.eq(&schema),
                        customers::email.eq(format!("owner@{schema}.test")),
                    ))
                    .execute(conn)
            })
            .expect("marker");
            tenant
        })
        .collect()
}

/// The markers visible on a connection: exactly `[schema]` when scoped right.
pub fn markers(conn: &mut PgConnection) -> QueryResult<Vec<String>> {
    customers::table
        .select(customers::name)
        .order(customers::id)
        .load(conn)
}

/// A small deterministic PRNG (xorshift64*), so failures can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[derive(QueryableByName)]
pub struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub n: i64,
}

/// Runs `sql` (which selects one `bigint` column named `n`) on `public`.
pub fn count(pool: &TenantPool, sql: &str) -> i64 {
    diesel::sql_query(sql)
        .get_result::<Count>(&mut *pool.public().unwrap())
        .unwrap()
        .n
}

/// A migration directory of its own: a copy of the sample tenant set, to which a
/// test adds migrations.
pub struct MigrationDir {
    pub dir: std::path::PathBuf,
}

impl MigrationDir {
    /// A copy of `migrations_tenant`.
    pub fn tenant_copy() -> Self {
        Self::copy_of("migrations_tenant")
    }

    /// A copy of the project's migration directory `name`.
    pub fn copy_of(name: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "dt-migrations-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
        for entry in std::fs::read_dir(src).unwrap() {
            let entry = entry.unwrap();
            let to = dir.join(entry.file_name());
            std::fs::create_dir_all(&to).unwrap();
            for file in std::fs::read_dir(entry.path()).unwrap() {
                let file = file.unwrap();
                std::fs::copy(file.path(), to.join(file.file_name())).unwrap();
            }
        }
        MigrationDir { dir }
    }

    /// Adds a migration `<version>_<name>` with this `up.sql`.
    pub fn add(&self, version: &str, name: &str, up: &str) {
        let m = self.dir.join(format!("{version}_{name}"));
        std::fs::create_dir_all(&m).unwrap();
        std::fs::write(m.join("up.sql"), up).unwrap();
        std::fs::write(m.join("down.sql"), "").unwrap();
    }

    /// Adds a migration marked `run_in_transaction = false`.
    pub fn add_non_transactional(&self, version: &str, name: &str, up: &str) {
        self.add(version, name, up);
        std::fs::write(
            self.dir
                .join(format!("{version}_{name}"))
                .join("metadata.toml"),
            "run_in_transaction = false\n",
        )
        .unwrap();
    }

    pub fn source(&self) -> diesel_migrations::FileBasedMigrations {
        diesel_migrations::FileBasedMigrations::from_path(&self.dir).unwrap()
    }
}

impl Drop for MigrationDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether `schema.table` has `column`.
pub fn has_column(pool: &TenantPool, schema: &str, table: &str, column: &str) -> bool {
    diesel::sql_query(
        "SELECT count(*) AS n FROM information_schema.columns \
         WHERE table_schema = $1 AND table_name = $2 AND column_name = $3",
    )
    .bind::<diesel::sql_types::Text, _>(schema)
    .bind::<diesel::sql_types::Text, _>(table)
    .bind::<diesel::sql_types::Text, _>(column)
    .get_result::<Count>(&mut *pool.public().unwrap())
    .unwrap()
    .n == 1
}

/// Whether `schema`'s own ledger records `version`.
pub fn ledger_has(pool: &TenantPool, schema: &str, version: &str) -> bool {
    let qualified = match schema {
        "public" => "public".to_owned(),
        tenant => diesel_tenancy::SchemaName::new(tenant).unwrap().quoted(),
    };
    let sql = format!(
        "SELECT count(*) AS n FROM {qualified}.__diesel_schema_migrations WHERE version = $1"
    );
    diesel::sql_query(sql)
        .bind::<diesel::sql_types::Text, _>(version)
        .get_result::<Count>(&mut *pool.public().unwrap())
        .unwrap()
        .n
        == 1
}

/// `n` tenants `prefix0..` created through the bulk API with `migrations`.
pub fn bulk_tenants(
    pool: &TenantPool,
    prefix: &str,
    n: usize,
    migrations: &diesel_migrations::FileBasedMigrations,
) -> Vec<Tenant> {
    let news: Vec<_> = (0..n)
        .map(|i| {
            diesel_tenancy::NewTenant::new(
                diesel_tenancy::SchemaName::new(&format!("{prefix}{i}")).unwrap(),
                format!("Tenant {i}"),
            )
        })
        .collect();
    diesel_tenancy::create_tenants(pool, &news, migrations, 2)
        .into_iter()
        .map(|r| r.expect("create tenant"))
        .collect()
}

/// A request to `host`, path `/`.
pub fn info(host: &str) -> diesel_tenancy::RequestInfo<'_> {
    diesel_tenancy::RequestInfo {
        host: Some(host),
        path: "/",
        ..diesel_tenancy::RequestInfo::default()
    }
}

/// The schema a resolution routes to, if a tenant.
pub fn tenant_of(resolution: diesel_tenancy::Resolution) -> Option<String> {
    match resolution {
        diesel_tenancy::Resolution::Tenant { tenant, .. } => Some(tenant.schema().to_string()),
        _ => None,
    }
}

/// The tenants the recycle tests borrow, in order, with
/// `recycle_after_schemas(Some(3))`: t0 and t1 back and forth (two schemas),
/// t2 (the third: the connection is replaced after that borrow), t3 t0 t1 (a
/// new connection's three), then t2 on a third connection.
pub const RECYCLE_ORDER: [usize; 11] = [0, 1, 0, 1, 0, 1, 2, 3, 0, 1, 2];

/// Checks the backend pids seen along [`RECYCLE_ORDER`].
pub fn assert_recycled_after_three_schemas(pids: &[i32]) {
    assert!(pids[..7].iter().all(|p| *p == pids[0]), "{pids:?}");
    assert!(pids[7..10].iter().all(|p| *p == pids[7]), "{pids:?}");
    assert_ne!(pids[7], pids[0], "{pids:?}");
    assert_ne!(pids[10], pids[7], "{pids:?}");
    assert_ne!(pids[10], pids[0], "{pids:?}");
}
