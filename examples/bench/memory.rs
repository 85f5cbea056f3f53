//! `memory`: a pooled connection's backend memory over many tenants, with the
//! pool's recycle rule and without it.

use anyhow::{Result, ensure};
use diesel_tenancy::TenantPool;

use crate::Bench;
use crate::fixture::{backend_bytes, lookup, tenants};

/// The documented cap on a pooled connection's backend memory with the
/// default recycle rule (1,000 distinct schemas), for the sample app's 4
/// tables.
const MEMORY_CAP_MB: f64 = 32.0;

pub(crate) fn memory(b: &Bench) -> Result<()> {
    let n = b.n;
    let tenants = tenants(b)?;
    // With the pool's default rule, and with the rule off.
    let peak = |recycle: bool| -> Result<f64> {
        let mut builder = TenantPool::builder(b.db.url()).max_size(1);
        if !recycle {
            builder = builder.recycle_after_schemas(None);
        }
        let one = builder.build()?;
        let mut peak: i64 = 0;
        for (i, t) in tenants.iter().enumerate() {
            let mut conn = one.get(t)?;
            ensure!(lookup(&mut conn)? == t.schema().as_str(), "wrong tenant");
            if i % 50 == 49 || i + 1 == tenants.len() {
                peak = peak.max(backend_bytes(&mut conn)?);
            }
        }
        Ok(peak as f64 / (1024.0 * 1024.0))
    };
    let recycled = peak(true)?;
    let unrecycled = peak(false)?;
    println!(
        "RESULT scenario=memory tenants={n} recycled_peak_mb={recycled:.1} unrecycled_peak_mb={unrecycled:.1} cap_mb={MEMORY_CAP_MB:.0}"
    );
    ensure!(
        recycled < MEMORY_CAP_MB,
        "a recycled connection passed the cap"
    );
    Ok(())
}
