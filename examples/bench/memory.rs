//! `memory`: a pooled connection's backend memory over many tenants with
//! `TABLES` tables each, with the pool's memory cap and without any recycle
//! rule.

use anyhow::{Result, ensure};
use diesel::connection::SimpleConnection;
use diesel_tenancy::{MEMORY_SAMPLE_NEW_SCHEMAS, TenantPool};

use crate::Bench;
use crate::fixture::{backend_bytes, lookup, tenants};

/// Tables per tenant: an application larger than the sample app's 4.
const TABLES: usize = 50;

/// The memory cap the scenario sets (the pool's default is 64 MB).
const CAP_MB: u64 = 64;

pub(crate) fn memory(b: &Bench) -> Result<()> {
    let n = b.n;
    let tenants = tenants(b)?;
    // Each tenant gets TABLES more tables, each with a primary key and an index.
    let ddl: String = (0..TABLES)
        .map(|i| {
            format!(
                "CREATE TABLE extra_{i} (id bigint PRIMARY KEY, name text NOT NULL, n int); \
                 CREATE INDEX ON extra_{i} (name);"
            )
        })
        .collect();
    // One query touching every table, so that a checkout loads each one's
    // catalog entries into the backend, as an application's pages would.
    let touch: String = (0..TABLES)
        .map(|i| format!("SELECT count(*) FROM extra_{i} WHERE name = 'x'"))
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    for t in &tenants {
        b.pool.with_tenant(t, |conn| conn.batch_execute(&ddl))?;
    }
    let peak = |capped: bool| -> Result<(f64, u64)> {
        let one = TenantPool::builder(b.db.url())
            .max_size(1)
            .recycle_after_schemas(None)
            .recycle_above_memory_mb(capped.then_some(CAP_MB))
            .build()?;
        let mut peak: i64 = 0;
        for t in &tenants {
            let mut conn = one.get(t)?;
            ensure!(lookup(&mut conn)? == t.schema().as_str(), "wrong tenant");
            conn.batch_execute(&touch)?;
            peak = peak.max(backend_bytes(&mut conn)?);
        }
        Ok((peak as f64 / (1024.0 * 1024.0), one.stats().memory_recycles))
    };
    let (capped, recycles) = peak(true)?;
    let (uncapped, _) = peak(false)?;
    println!(
        "RESULT scenario=memory tables={TABLES} tenants={n} recycled_peak_mb={capped:.1} unrecycled_peak_mb={uncapped:.1} cap_mb={CAP_MB} recycles={recycles}"
    );
    // The cap is checked before the checkout that follows every
    // MEMORY_SAMPLE_NEW_SCHEMAS new schemas, and a connection past it serves
    // that checkout's borrow before it is replaced: a backend just under the
    // cap at one sample passes it by at most MEMORY_SAMPLE_NEW_SCHEMAS + 1
    // tenants' catalog entries; one more tenant allows for the per-tenant
    // figure being an average over the uncapped run.
    let per_tenant_mb = uncapped / n as f64;
    let bound = CAP_MB as f64 + f64::from(MEMORY_SAMPLE_NEW_SCHEMAS + 2) * per_tenant_mb;
    ensure!(
        capped <= bound,
        "a capped connection reached {capped:.1} MB, past the {bound:.1} MB bound"
    );
    Ok(())
}
