//! Recycling by backend memory: a connection whose backend passes the cap is
//! replaced after its borrow, whatever the tables per tenant, and a database
//! user that may not read the backend's memory keeps working on the schema
//! count alone.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{markers, setup_with, tenants_with_markers};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_tenancy::{MEMORY_SAMPLE_NEW_SCHEMAS, TenantPool};

#[derive(QueryableByName)]
struct Pid {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pid: i32,
}

fn pid(conn: &mut PgConnection) -> QueryResult<i32> {
    diesel::sql_query("SELECT pg_backend_pid() AS pid")
        .get_result::<Pid>(conn)
        .map(|p| p.pid)
}

/// Every backend passes a 1 MB cap, so each sample replaces its connection;
/// four threads on two connections keep reading their own tenant's marker
/// throughout.
#[test]
fn a_backend_past_the_memory_cap_is_replaced_and_reads_stay_right() {
    let (_db, pool) = setup_with(2, |b| {
        b.recycle_above_memory_mb(Some(1))
            .recycle_after_schemas(None)
    });
    let tenants = Arc::new(tenants_with_markers(&pool, "mem", 40));
    let before = pool.stats();
    let pids = Arc::new(std::sync::Mutex::new(HashSet::new()));
    let wrong = Arc::new(AtomicUsize::new(0));
    let rounds = 200;
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let (pool, tenants, pids, wrong) =
                (pool.clone(), tenants.clone(), pids.clone(), wrong.clone());
            std::thread::spawn(move || {
                for r in 0..rounds {
                    let t = &tenants[(i * 7 + r) % tenants.len()];
                    let (seen, p) = pool
                        .with_tenant(t, |c| {
                            Ok::<_, diesel::result::Error>((markers(c)?, pid(c)?))
                        })
                        .unwrap();
                    if seen != vec![t.schema().to_string()] {
                        wrong.fetch_add(1, Ordering::Relaxed);
                    }
                    pids.lock().unwrap().insert(p);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let stats = pool.stats();
    let (samples, recycles) = (
        stats.memory_samples - before.memory_samples,
        stats.memory_recycles - before.memory_recycles,
    );
    let backends = pids.lock().unwrap().len();
    assert!(!stats.memory_unreadable);
    println!(
        "memory cap: {} checkouts, {samples} samples, {recycles} replaced, {backends} backends",
        4 * rounds
    );
    assert_eq!(wrong.load(Ordering::Relaxed), 0, "wrong-tenant reads");
    assert!(samples >= 2, "{samples} samples");
    assert!(recycles >= 2, "{recycles} replaced");
    assert!(backends > 2, "only {backends} backends: none was replaced");
}

/// A user without `pg_read_all_stats`: the first sample fails, sampling stops,
/// and checkouts go on unharmed.
#[test]
fn without_the_right_to_read_memory_the_pool_keeps_working() {
    let (db, admin) = setup_with(1, |b| b);
    let n = MEMORY_SAMPLE_NEW_SCHEMAS as usize + 4;
    let tenants = tenants_with_markers(&admin, "nomem", n);
    let mut grants = String::from("CREATE ROLE mem_app LOGIN;");
    for t in &tenants {
        grants += &format!(
            "GRANT USAGE ON SCHEMA {0} TO mem_app; GRANT SELECT ON ALL TABLES IN SCHEMA {0} TO mem_app;",
            t.schema().quoted()
        );
    }
    admin.public().unwrap().batch_execute(&grants).unwrap();
    let url = db.url().replacen("postgres@", "mem_app@", 1);
    assert_ne!(url, db.url(), "the test URL names the user postgres");
    let pool = TenantPool::builder(url)
        .max_size(1)
        .recycle_above_memory_mb(Some(1))
        .build()
        .unwrap();
    // More schemas than the sampling threshold: a sample is due, and fails.
    for r in 0..(3 * n) {
        let t = &tenants[r % n];
        assert_eq!(
            pool.with_tenant(t, markers).unwrap(),
            vec![t.schema().to_string()]
        );
    }
    let stats = pool.stats();
    assert!(stats.memory_unreadable, "no sample was tried");
    assert_eq!((stats.memory_samples, stats.memory_recycles), (0, 0));
}
