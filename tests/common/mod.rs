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
