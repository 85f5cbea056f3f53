//! `testing::FastTenant`: one tenant per test binary, a rolled-back
//! transaction per test. The tests of this file share one `FastTenant`, as an
//! application's tests would; the last one measures what a test costs with
//! it and with a tenant of its own (run with `--nocapture` to see the
//! figures).
#![allow(missing_docs)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::{SHARED, TENANT, customers, markers};
use diesel::prelude::*;
use diesel_migrations::EmbeddedMigrations;
use diesel_tenancy::testing::{self, FastTenant, FastTenantOptions, TestDatabase};
use diesel_tenancy::{Tenant, registry};

/// How many times the tenant was created in this process.
static CREATED: AtomicUsize = AtomicUsize::new(0);

fn created(conn: &mut PgConnection, _: &Tenant) -> diesel_tenancy::Result<()> {
    CREATED.fetch_add(1, Ordering::SeqCst);
    diesel::sql_query("INSERT INTO products (name, price_cents) VALUES ('seeded', 100)")
        .execute(conn)?;
    Ok(())
}

static FAST: FastTenant<EmbeddedMigrations> = FastTenant::with_options(
    SHARED,
    TENANT,
    FastTenantOptions::new().schema("fast").on_create(created),
);

/// The tenant every test got (its address: the same value, made once).
static FIRST_SEEN: OnceLock<usize> = OnceLock::new();

/// Lets the two row tests meet, so that each checks its rows while the other
/// holds its own uncommitted; gives up after a while (tests run one at a
/// time with `--test-threads 1`).
fn meet(step: usize) {
    static ARRIVED: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());
    let (lock, arrived) = &ARRIVED;
    let mut n = lock.lock().unwrap();
    *n += 1;
    arrived.notify_all();
    let _unused = arrived
        .wait_timeout_while(n, Duration::from_secs(3), |n| *n < 2 * step)
        .unwrap();
}

fn committed_markers(tenant: &Tenant) -> Vec<String> {
    markers(&mut FAST.pool().unwrap().get(tenant).unwrap()).unwrap()
}

/// What both row tests do: insert a customer, see only it, and leave
/// nothing once the connection is dropped.
fn own_rows_only(name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let mut conn = FAST.conn()?;
    let tenant = FAST.tenant()?;
    let first = *FIRST_SEEN.get_or_init(|| tenant as *const Tenant as usize);
    assert_eq!(first, tenant as *const Tenant as usize, "one tenant value");
    assert_eq!(CREATED.load(Ordering::SeqCst), 1, "created once");
    let tenants = FAST.pool()?.with_public(registry::list_tenants)?;
    assert_eq!(tenants.len(), 1, "one tenant in the database");

    let seeded: Vec<String> = diesel::sql_query("SELECT name AS name FROM products")
        .load::<Name>(&mut conn)?
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(seeded, ["seeded"], "the hook's rows are there");

    diesel::insert_into(customers::table)
        .values((
            customers::name.eq(name),
            customers::email.eq(format!("{name}@example.com")),
        ))
        .execute(&mut conn)?;
    // A savepoint inside the test's transaction, as code under test makes.
    conn.transaction(|conn| {
        diesel::update(customers::table.filter(customers::name.eq(name)))
            .set(customers::email.eq(format!("{name}@example.org")))
            .execute(conn)
    })?;
    meet(1);
    assert_eq!(markers(&mut conn)?, [name], "only this test's rows");
    meet(2);
    drop(conn);

    assert!(
        !committed_markers(tenant).iter().any(|m| m == name),
        "rolled back"
    );
    Ok(())
}

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = diesel::sql_types::Text)]
    name: String,
}

#[test]
fn a_test_sees_only_its_own_rows() -> Result<(), Box<dyn std::error::Error>> {
    own_rows_only("first")
}

#[test]
fn another_test_sees_only_its_own_rows() -> Result<(), Box<dyn std::error::Error>> {
    own_rows_only("second")
}

#[tokio::test]
async fn an_async_test_gets_its_own_rolled_back_transaction()
-> Result<(), Box<dyn std::error::Error>> {
    use diesel_async::RunQueryDsl as Async;
    let mut conn = FAST.conn_async().await?;
    let insert = diesel::insert_into(customers::table).values((
        customers::name.eq("async"),
        customers::email.eq("async@example.com"),
    ));
    Async::execute(insert, &mut conn).await?;
    let seen: Vec<String> =
        Async::load(customers::table.select(customers::name), &mut conn).await?;
    assert_eq!(seen, ["async"]);
    drop(conn);
    let tenant = FAST.tenant()?.clone();
    let after = tokio::task::spawn_blocking(move || committed_markers(&tenant)).await?;
    assert!(!after.iter().any(|m| m == "async"), "rolled back");
    Ok(())
}

/// The figures in the README's testing section: what a test's database work
/// costs in a tenant of its own (created for it, as `testing::create_tenant`
/// does) and with the fast tenant (a checkout that opens the transaction and
/// sets the path, the work, `ROLLBACK`), and the fast tenant's one-off
/// set-up.
#[test]
fn a_fast_tenant_test_costs_less_than_creating_a_tenant() -> Result<(), Box<dyn std::error::Error>>
{
    const RUNS: u32 = 20;
    /// A test's own work: one insert and one read.
    fn work(conn: &mut PgConnection, i: u32) -> QueryResult<()> {
        diesel::insert_into(customers::table)
            .values((
                customers::name.eq(format!("m{i}")),
                customers::email.eq(format!("m{i}@example.com")),
            ))
            .execute(conn)?;
        assert_eq!(markers(conn)?.len(), 1);
        Ok(())
    }

    static MEASURED: FastTenant<EmbeddedMigrations> =
        FastTenant::with_options(SHARED, TENANT, FastTenantOptions::new().schema("measured"));
    FAST.tenant()?; // the throwaway cluster is up: not part of the set-up measured
    let started = Instant::now();
    MEASURED.tenant()?;
    let set_up = started.elapsed();

    let started = Instant::now();
    for i in 0..RUNS {
        work(&mut *MEASURED.conn()?, i)?;
    }
    let fast = started.elapsed() / RUNS;

    let db = TestDatabase::new()?;
    let pool = db.migrated_pool(SHARED)?;
    let started = Instant::now();
    for i in 0..RUNS {
        let tenant = testing::create_tenant(&pool, &format!("own{i}"), TENANT)?;
        work(&mut *pool.get(&tenant)?, i)?;
    }
    let own = started.elapsed() / RUNS;

    println!(
        "RESULT fast_tenant runs={RUNS} own_tenant_ms_per_test={:.3} fast_tenant_ms_per_test={:.3} \
         ratio={:.1} fast_tenant_set_up_ms={:.1}",
        own.as_secs_f64() * 1e3,
        fast.as_secs_f64() * 1e3,
        own.as_secs_f64() / fast.as_secs_f64(),
        set_up.as_secs_f64() * 1e3,
    );
    assert!(fast < own, "fast {fast:?} against own {own:?}");
    Ok(())
}
