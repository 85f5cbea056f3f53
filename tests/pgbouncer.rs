//! Behind PgBouncer in transaction pooling mode, the transaction-scoped mode
//! never reads another tenant's rows, and the session mode is shown to be unsafe
//! (which is why the transaction-scoped mode exists).
//!
//! Needs Debian's `pgbouncer`; without it the test says so and passes, unless
//! `DIESEL_TENANCY_REQUIRE_PGBOUNCER=1` is set (as CI does after installing it).
#![allow(missing_docs)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{Rng, markers, setup, tenants_with_markers};
use diesel_tenancy::testing::PgBouncer;
use diesel_tenancy::{Tenant, TenantPool};

struct Load {
    reads: usize,
    wrong: usize,
    errors: usize,
}

/// 8 threads, random tenants, every read checked.
fn run(pool: &TenantPool, tenants: &Arc<Vec<Tenant>>, per_thread: usize) -> Load {
    let reads = Arc::new(AtomicUsize::new(0));
    let wrong = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let (pool, tenants) = (pool.clone(), Arc::clone(tenants));
            let (reads, wrong, errors) = (reads.clone(), wrong.clone(), errors.clone());
            std::thread::spawn(move || {
                let mut rng = Rng::new(0xb0 + t as u64);
                for _ in 0..per_thread {
                    let tenant = &tenants[rng.below(tenants.len())];
                    match pool.with_tenant(tenant, markers) {
                        Ok(seen) => {
                            reads.fetch_add(1, Ordering::Relaxed);
                            if seen != [tenant.schema().as_str()] {
                                wrong.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    Load {
        reads: reads.load(Ordering::Relaxed),
        wrong: wrong.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
    }
}

#[test]
fn transaction_pooling_is_safe_only_in_transaction_scoped_mode() {
    if PgBouncer::binary().is_none() {
        let required = std::env::var("DIESEL_TENANCY_REQUIRE_PGBOUNCER").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "pgbouncer is required: apt-get install pgbouncer"
        );
        eprintln!(
            "SKIPPED the PgBouncer test: install pgbouncer (apt-get install pgbouncer) to run it"
        );
        return;
    }
    let (db, direct) = setup(2);
    let tenants = Arc::new(tenants_with_markers(&direct, "pgb", 20));
    let bouncer = PgBouncer::start(db.url(), "transaction", 3).unwrap();

    // Transaction-scoped: each unit of work is BEGIN; SET LOCAL ...; COMMIT, so
    // whichever server connection PgBouncer picks, the path travels with it.
    let safe = TenantPool::builder(bouncer.url())
        .max_size(8)
        .transaction_scoped(true)
        .build()
        .unwrap();
    let load = run(&safe, &tenants, 400);
    println!(
        "transaction-scoped behind PgBouncer 1.18 (transaction mode, 3 server connections): {} reads, {} wrong, {} errors",
        load.reads, load.wrong, load.errors
    );
    assert_eq!(load.reads, 8 * 400);
    assert_eq!(load.errors, 0);
    assert_eq!(
        load.wrong, 0,
        "wrong-tenant reads in transaction-scoped mode"
    );

    // Session mode through the same pooler: the path is set on one server
    // connection and the query may run on another.
    let unsafe_pool = TenantPool::builder(bouncer.url())
        .max_size(8)
        .statement_cache(false)
        .build()
        .unwrap();
    let load = run(&unsafe_pool, &tenants, 400);
    println!(
        "session mode behind the same PgBouncer: {} reads, {} wrong, {} errors",
        load.reads, load.wrong, load.errors
    );
    assert!(
        load.wrong > 0,
        "session mode behind a transaction pooler should have read other tenants' rows"
    );
}
