//! `soak`: many checkouts over all tenants from several threads, with
//! misbehaving borrowers and writes among them, checked for wrong reads, lost
//! writes and leaked connections.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Result, ensure};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_tenancy::{Tenant, TenantPool};

use crate::fixture::{backend_bytes, lookup, tenants};
use crate::misbehave::{self, Misbehaviour};
use crate::{Bench, Rng};

const THREADS: usize = 4;

/// What the soak threads count, shared among them.
struct Tally {
    wrong: AtomicUsize,
    misbehaved: AtomicUsize,
    /// Rows written and seen committed, per tenant index.
    written: Mutex<Vec<usize>>,
    peak_bytes: AtomicU64,
    peak_size: AtomicUsize,
}

pub(crate) fn soak(b: &Bench) -> Result<()> {
    let (n, ops, recycle) = (b.n, b.ops, b.recycle);
    let tenants = tenants(b)?;
    b.pool.public()?.batch_execute(misbehave::setup_sql())?;
    // Borrowers that misbehave: every catalog entry that neither panics nor
    // needs an async borrow to be dropped.
    let catalog: Vec<Misbehaviour> = misbehave::catalog()
        .into_iter()
        .filter(|m| !m.panics() && !m.cancels_borrow())
        .collect();
    let soak_pool = TenantPool::builder(b.db.url())
        .max_size(THREADS as u32)
        .recycle_after_schemas(b.recycle_rule())
        .build()?;
    let tally = Tally {
        wrong: AtomicUsize::new(0),
        misbehaved: AtomicUsize::new(0),
        written: Mutex::new(vec![0; tenants.len()]),
        peak_bytes: AtomicU64::new(0),
        peak_size: AtomicUsize::new(0),
    };
    let started = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (pool, tenants, catalog, tally) = (&soak_pool, &tenants, &catalog, &tally);
                s.spawn(move || soak_thread(pool, tenants, catalog, tally, t, ops / THREADS))
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("a soak thread panicked"))??;
        }
        Ok(())
    })?;
    let elapsed = started.elapsed();
    let state = soak_pool.r2d2().state();
    let leaked = state.connections - state.idle_connections;
    let written = tally.written.lock().expect("not poisoned").clone();
    let lost_writes = lost_writes(b, &tenants, &written)?;
    let wrong = tally.wrong.load(Ordering::Relaxed);
    println!(
        "RESULT scenario=soak tenants={n} ops={ops} recycle_after={recycle} misbehaving_borrows={} ops_per_s={:.0} wrong_reads={wrong} lost_writes={lost_writes} leaked_connections={leaked} peak_backend_mb={:.1} peak_pool_size={}",
        tally.misbehaved.load(Ordering::Relaxed),
        ops as f64 / elapsed.as_secs_f64(),
        tally.peak_bytes.load(Ordering::Relaxed) as f64 / (1024.0 * 1024.0),
        tally.peak_size.load(Ordering::Relaxed)
    );
    ensure!(wrong == 0, "wrong-tenant reads");
    ensure!(lost_writes == 0, "writes reported committed but missing");
    ensure!(leaked == 0, "connections still checked out after the run");
    Ok(())
}

/// One soak thread's `ops` operations: one in 20 a misbehaving borrower, one
/// in 20 a write, the rest reads that check the tenant (and every 100th
/// samples the backend's memory and the pool's size).
fn soak_thread(
    pool: &TenantPool,
    tenants: &[Tenant],
    catalog: &[Misbehaviour],
    tally: &Tally,
    thread: usize,
    ops: usize,
) -> Result<()> {
    let mut rng = Rng::new(thread as u64 + 1);
    for i in 0..ops {
        let index = rng.below(tenants.len());
        let tenant = &tenants[index];
        if i % 20 == 7 {
            // A misbehaving borrower, its errors ignored.
            let entry = &catalog[rng.below(catalog.len())];
            let other = tenants[rng.below(tenants.len())].schema().as_str();
            let mut conn = pool.get(tenant)?;
            entry.run_sync(&mut conn, tenant.schema().as_str(), other);
            tally.misbehaved.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if i % 20 == 13 {
            // A write, counted once it is reported committed.
            let inserted = pool.with_tenant(tenant, |conn| {
                diesel::sql_query("INSERT INTO customers (name, email) VALUES ('soak', 'soak')")
                    .execute(conn)
            });
            if inserted.is_ok() {
                tally.written.lock().expect("not poisoned")[index] += 1;
            }
            continue;
        }
        let mut conn = pool.get(tenant)?;
        if lookup(&mut conn)? != tenant.schema().as_str() {
            tally.wrong.fetch_add(1, Ordering::Relaxed);
        }
        if i % 100 == 0 {
            let bytes = backend_bytes(&mut conn)?;
            tally.peak_bytes.fetch_max(bytes as u64, Ordering::Relaxed);
            let size = pool.r2d2().state().connections as usize;
            tally.peak_size.fetch_max(size, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// The writes reported committed that a fresh pool cannot find.
fn lost_writes(b: &Bench, tenants: &[Tenant], written: &[usize]) -> Result<usize> {
    let witness = TenantPool::builder(b.db.url()).max_size(1).build()?;
    let mut lost = 0usize;
    for (tenant, &expected) in tenants.iter().zip(written) {
        let found: i64 = witness.with_tenant(tenant, |conn| {
            diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
                "(SELECT count(*) FROM customers WHERE name = 'soak')",
            ))
            .get_result(conn)
        })?;
        lost += expected.saturating_sub(found as usize);
    }
    Ok(lost)
}
