//! The pool swap is literal: a plain diesel + r2d2 app (`tests/notes_app`)
//! builds and passes its own test with only its manager swapped, and the
//! swapped pool then also serves tenants, never mixing the two up.
#![allow(missing_docs, unreachable_pub)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{Rng, markers, tenants_with_markers};
use diesel_tenancy::testing::TestDatabase;
use diesel_tenancy::{TenantConnection, TenantPool};

mod plain {
    pub type Manager = diesel::r2d2::ConnectionManager<diesel::PgConnection>;
    pub fn manager(database_url: &str) -> Manager {
        Manager::new(database_url)
    }
    include!("notes_app/app.rs");
}

mod swapped {
    pub type Manager = diesel_tenancy::TenantConnectionManager;
    pub fn manager(database_url: &str) -> Manager {
        Manager::new(database_url).expect("manager")
    }
    include!("notes_app/app.rs");
}

#[test]
fn the_plain_app_passes_its_test() {
    let db = TestDatabase::new().unwrap();
    plain::the_apps_test(db.url());
}

#[test]
fn the_app_with_only_its_manager_swapped_passes_the_same_test() {
    let db = TestDatabase::new().unwrap();
    swapped::the_apps_test(db.url());
}

/// The app's own pool, wrapped, serves tenants; plain borrows of the same
/// connections still run on `public`, whatever tenant the connection served
/// last, under concurrent load.
#[test]
fn the_swapped_pool_serves_tenants_and_plain_borrows_without_mixing_them() {
    let db = TestDatabase::new().unwrap();
    let app_pool = swapped::pool(db.url());
    swapped::migrate(&app_pool);
    swapped::add_note(&app_pool, "public note").unwrap();
    let pool = TenantPool::from_r2d2(app_pool.clone()).unwrap();
    pool.with_public(|conn| diesel_tenancy::run_shared_migrations(conn, common::SHARED))
        .unwrap();
    let tenants = Arc::new(tenants_with_markers(&pool, "swap", 6));

    // A tenant borrow through the app's own r2d2 pool, then a plain one.
    let mut scoped = TenantConnection::scope(app_pool.get().unwrap(), &tenants[0]).unwrap();
    assert_eq!(markers(&mut scoped).unwrap(), ["swap0"]);
    drop(scoped);
    assert_eq!(swapped::list_notes(&app_pool), ["public note"]);

    let wrong = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let (app_pool, pool, tenants, wrong) = (
                app_pool.clone(),
                pool.clone(),
                Arc::clone(&tenants),
                Arc::clone(&wrong),
            );
            std::thread::spawn(move || {
                let mut rng = Rng::new(0x5a + t);
                for _ in 0..300 {
                    if rng.below(3) == 0 {
                        if swapped::list_notes(&app_pool) != ["public note"] {
                            wrong.fetch_add(1, Ordering::Relaxed);
                        }
                    } else {
                        let tenant = &tenants[rng.below(tenants.len())];
                        let seen = pool.with_tenant(tenant, markers).unwrap();
                        if seen != [tenant.schema().as_str()] {
                            wrong.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(wrong.load(Ordering::Relaxed), 0, "wrong reads");
    // The notes table exists once, in public: a plain borrow never ran its
    // migrations in a tenant schema.
    let schemas = common::count(
        &pool,
        "SELECT count(*) AS n FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relname = 'notes' AND n.nspname <> 'public'",
    );
    assert_eq!(schemas, 0);
}

/// A plain borrow that changes a setting and is then scoped to a tenant is
/// still reset when it goes back: what it sent before the scoping counts.
#[test]
fn a_plain_borrow_scoped_later_is_still_reset() {
    use diesel::connection::SimpleConnection;
    use diesel::prelude::*;
    let db = TestDatabase::new().unwrap();
    let app_pool = r2d2::Pool::builder()
        .max_size(1)
        .build(diesel_tenancy::TenantConnectionManager::new(db.url()).unwrap())
        .unwrap();
    let pool = TenantPool::from_r2d2(app_pool.clone()).unwrap();
    pool.with_public(|conn| diesel_tenancy::run_shared_migrations(conn, common::SHARED))
        .unwrap();
    let tenant = tenants_with_markers(&pool, "late", 1).remove(0);
    let mut plain = app_pool.get().unwrap();
    plain
        .batch_execute("SET statement_timeout = '4242s'")
        .unwrap();
    let scoped = TenantConnection::scope(plain, &tenant).unwrap();
    drop(scoped);
    let timeout: String = pool
        .with_tenant(&tenant, |conn| {
            diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(
                "current_setting('statement_timeout')",
            ))
            .get_result(conn)
        })
        .unwrap();
    assert_eq!(timeout, "0");
}
