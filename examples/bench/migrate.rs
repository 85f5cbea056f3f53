//! `create`, `migrate`, `noop` and `citus`: creating and migrating tenants,
//! beside the same SQL sent by hand over one connection.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_tenancy::{MigrateOptions, Migrator, SchemaName, TenantPool, run_shared_migrations};

use crate::fixture::{SHARED, create_timed};
use crate::{Bench, ms};

/// The migration `migrate` adds to every tenant.
const ADD_LOYALTY: (&str, &str) = (
    "2025-03-01-000000_add_loyalty",
    "ALTER TABLE customers ADD COLUMN loyalty_points integer NOT NULL DEFAULT 0;",
);

fn result(scenario: &str, n: usize, total: Duration, floor_total: Duration) {
    println!(
        "RESULT scenario={scenario} tenants={n} total_ms={:.1} ms_per_tenant={:.3} floor_ms_per_tenant={:.3} floor_total_ms={:.1}",
        ms(total),
        ms(total) / n as f64,
        ms(floor_total) / n as f64,
        ms(floor_total)
    );
}

/// The floor's one connection.
fn floor_conn(b: &Bench) -> Result<PgConnection> {
    Ok(PgConnection::establish(b.db.url())?)
}

pub(crate) fn create(b: &Bench) -> Result<()> {
    let mut floor_conn = floor_conn(b)?;
    let total = create_timed(&b.pool, &b.set, "t", b.n, b.jobs)?;
    // Floor: CREATE SCHEMA and the same migrations' SQL, one connection.
    let ddl = b.set.up_sql()?.join("\n");
    let floor = per_schema(&mut floor_conn, "floor", b.n, |schema| {
        format!("BEGIN; CREATE SCHEMA {schema}; SET LOCAL search_path TO {schema}; {ddl}; COMMIT;")
    })?;
    result("create", b.n, total, floor);
    Ok(())
}

/// How long `statement(schema)` takes on `conn` for the quoted schemas
/// `<prefix>0..<prefix>N`, one after another.
fn per_schema(
    conn: &mut PgConnection,
    prefix: &str,
    n: usize,
    statement: impl Fn(&str) -> String,
) -> Result<Duration> {
    let started = Instant::now();
    for i in 0..n {
        let schema = SchemaName::new(&format!("{prefix}{i}"))?.quoted();
        conn.batch_execute(&statement(&schema))?;
    }
    Ok(started.elapsed())
}

pub(crate) fn migrate(b: &Bench) -> Result<()> {
    let mut floor_conn = floor_conn(b)?;
    let n = b.n;
    create_timed(&b.pool, &b.set, "t", n, b.jobs)?;
    let migrator = Migrator::new(SHARED, b.set.source()?);
    b.set.add(ADD_LOYALTY.0, ADD_LOYALTY.1)?;
    let options = MigrateOptions::new().jobs(b.jobs);
    let started = Instant::now();
    let report = migrator.migrate_all(&b.pool, &options)?;
    let total = started.elapsed();
    ensure!(
        report.is_success(),
        "migration failed: {:?}",
        report.failures().next()
    );
    ensure!(
        report.totals().applied == n,
        "applied to {} tenants",
        report.totals().applied
    );
    // Floor: the same ALTER TABLE on every schema, one connection.
    let floor = per_schema(&mut floor_conn, "t", n, |schema| {
        format!("ALTER TABLE {schema}.customers ADD COLUMN floor_points integer NOT NULL DEFAULT 0")
    })?;
    result("migrate", n, total, floor);
    Ok(())
}

pub(crate) fn noop(b: &Bench) -> Result<()> {
    let mut floor_conn = floor_conn(b)?;
    let n = b.n;
    create_timed(&b.pool, &b.set, "t", n, b.jobs)?;
    let migrator = Migrator::new(SHARED, b.set.source()?);
    let options = MigrateOptions::new().jobs(b.jobs);
    // One warm-up run, then the measured one.
    migrator.migrate_all(&b.pool, &options)?;
    let started = Instant::now();
    let report = migrator.migrate_all(&b.pool, &options)?;
    let total = started.elapsed();
    ensure!(
        report.decided_by_journal == n,
        "journal decided {}",
        report.decided_by_journal
    );
    // Floor: the one query that lists tenants with their journal entry.
    let started = Instant::now();
    floor_conn.batch_execute(
        "SELECT t.id, t.schema_name, t.status, j.set_digest FROM public.tenancy_tenants t \
         LEFT JOIN public.tenancy_migration_journal j ON j.tenant_id = t.id ORDER BY t.schema_name",
    )?;
    result("noop", n, total, started.elapsed());
    Ok(())
}

/// The same creation and migration on this single server and on a Citus
/// coordinator with one worker, in one run.
pub(crate) fn citus(b: &Bench) -> Result<()> {
    let n = b.n;
    let citus_db = diesel_tenancy::testing::CitusDatabase::new()
        .context("a Citus database (is Citus installed?)")?;
    let citus_pool = citus_db
        .pool_builder()
        .max_size(b.jobs as u32 + 1)
        .build()?;
    run_shared_migrations(&mut *citus_pool.public()?, SHARED)?;
    let pools: [(&str, &TenantPool); 2] = [("single", &b.pool), ("citus", &citus_pool)];
    let mut created = Vec::new();
    for (mode, pool) in pools {
        created.push((mode, create_timed(pool, &b.set, "t", n, b.jobs)?));
    }
    b.set.add(
        ADD_LOYALTY.0,
        &format!(
            "{}\nCREATE INDEX customers_loyalty ON customers (loyalty_points);",
            ADD_LOYALTY.1
        ),
    )?;
    let mut migrated = Vec::new();
    for (mode, pool) in pools {
        let migrator = Migrator::new(SHARED, b.set.source()?);
        let started = Instant::now();
        let report = migrator.migrate_all(pool, &MigrateOptions::new().jobs(b.jobs))?;
        ensure!(
            report.is_success() && report.totals().applied == n,
            "{mode}: {:?}",
            report.failures().next()
        );
        migrated.push((mode, started.elapsed()));
    }
    for (scenario, runs) in [("create", &created), ("migrate", &migrated)] {
        let single = runs[0].1;
        for (mode, total) in runs.iter() {
            println!(
                "RESULT scenario={scenario} mode={mode} tenants={n} total_ms={:.1} ms_per_tenant={:.3} single_ms_per_tenant={:.3} vs_single={:.2}",
                ms(*total),
                ms(*total) / n as f64,
                ms(single) / n as f64,
                total.as_secs_f64() / single.as_secs_f64()
            );
        }
    }
    Ok(())
}
