//! In transaction-scoped mode every helper that writes through the pool
//! commits what it reports: migrations, tenant creation (single and bulk),
//! `with_public` and `with_tenant` on `Ok`. Checked directly and behind the
//! real PgBouncer in transaction pooling mode, each time by a second,
//! session-mode pool that reads what was committed.
#![allow(missing_docs)]

mod common;

use common::{SHARED, TENANT, count, customers, markers};
use diesel::prelude::*;
use diesel_tenancy::testing::{PgBouncer, TestDatabase};
use diesel_tenancy::{
    MigrateOptions, Migrator, NewTenant, SchemaName, TenantPool, create_tenant, create_tenants,
    run_shared_migrations,
};

fn new_tenant(schema: &str) -> NewTenant {
    NewTenant::new(SchemaName::new(schema).unwrap(), schema)
}

/// Runs every writing helper through a transaction-scoped pool on `url`, then
/// checks through `witness` (a session pool on the database itself).
fn everything_is_committed(url: &str, witness: &TenantPool, prefix: &str) {
    let pool = TenantPool::builder(url)
        .max_size(3)
        .transaction_scoped(true)
        .build()
        .unwrap();
    let report = Migrator::new(SHARED, TENANT)
        .migrate_all(&pool, &MigrateOptions::default())
        .unwrap()
        .into_result()
        .unwrap();
    assert!(report.shared.is_some());
    // The README's way to run the shared set by hand.
    pool.with_public(|conn| run_shared_migrations(conn, SHARED))
        .unwrap();
    let bulk: Vec<NewTenant> = (0..3)
        .map(|i| new_tenant(&format!("{prefix}b{i}")))
        .collect();
    for created in create_tenants(&pool, &bulk, &TENANT, 2) {
        created.unwrap();
    }
    let single = pool
        .with_public(|conn| create_tenant(conn, &new_tenant(&format!("{prefix}s")), TENANT))
        .unwrap();
    pool.with_tenant(&single, |conn| {
        diesel::insert_into(customers::table)
            .values((customers::name.eq("kept"), customers::email.eq("k@x")))
            .execute(conn)
    })
    .unwrap();
    let rolled_back: Result<(), diesel_tenancy::Error> = pool.with_tenant(&single, |conn| {
        diesel::insert_into(customers::table)
            .values((customers::name.eq("gone"), customers::email.eq("g@x")))
            .execute(conn)?;
        Err(diesel_tenancy::Error::Config {
            reason: "the closure failed".into(),
        })
    });
    assert!(rolled_back.is_err());
    // A guard dropped without commit rolls back; one committed keeps its work.
    {
        let mut guard = pool.get(&single).unwrap();
        diesel::insert_into(customers::table)
            .values((customers::name.eq("dropped"), customers::email.eq("d@x")))
            .execute(&mut *guard)
            .unwrap();
    }
    let mut guard = pool.get(&single).unwrap();
    diesel::insert_into(customers::table)
        .values((customers::name.eq("committed"), customers::email.eq("c@x")))
        .execute(&mut *guard)
        .unwrap();
    guard.commit().unwrap();

    // What the session-mode witness sees.
    let tenants = count(
        witness,
        &format!(
            "SELECT count(*) AS n FROM public.tenancy_tenants WHERE schema_name LIKE '{prefix}%'"
        ),
    );
    assert_eq!(tenants, 4, "every created tenant is registered");
    for i in 0..3 {
        let t = witness.tenant(&format!("{prefix}b{i}")).unwrap();
        assert!(witness.with_tenant(&t, markers).unwrap().is_empty());
    }
    let t = witness.tenant(&format!("{prefix}s")).unwrap();
    assert_eq!(
        witness.with_tenant(&t, markers).unwrap(),
        vec!["kept".to_string(), "committed".to_string()]
    );
    assert_eq!(count(witness, "SELECT count(*) AS n FROM public.plans"), 2);
}

#[test]
fn transaction_scoped_mode_commits_what_every_helper_reports() {
    let db = TestDatabase::new().unwrap();
    let witness = db.pool_builder().max_size(2).build().unwrap();
    everything_is_committed(db.url(), &witness, "direct");
}

#[test]
fn transaction_scoped_mode_commits_behind_pgbouncer() {
    if PgBouncer::binary().is_none() {
        let required = std::env::var("DIESEL_TENANCY_REQUIRE_PGBOUNCER").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "pgbouncer is required: apt-get install pgbouncer"
        );
        eprintln!("SKIPPED: install pgbouncer (apt-get install pgbouncer) to run this test");
        return;
    }
    let db = TestDatabase::new().unwrap();
    let witness = db.pool_builder().max_size(2).build().unwrap();
    let bouncer = PgBouncer::start(db.url(), "transaction", 3).unwrap();
    everything_is_committed(bouncer.url(), &witness, "bounced");
}
