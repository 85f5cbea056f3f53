//! Benchmarks, each beside a floor measured in the same run.
//!
//! ```text
//! cargo run --release --example bench -- create  --tenants 1000
//! cargo run --release --example bench -- migrate --tenants 10000
//! cargo run --release --example bench -- noop    --tenants 10000
//! cargo run --release --example bench -- checkout       --tenants 1000 --ops 50000
//! cargo run --release --example bench -- checkout-async --tenants 1000 --ops 50000
//! cargo run --release --example bench -- soak --tenants 1000 --ops 200000
//! cargo run --release --example bench -- memory --tenants 10000
//! cargo run --release --example bench -- http --tenants 1000 --ops 20000
//! ```
//!
//! `http` serves the same handler (list a tenant's customers through
//! `TenantDb`, the tutorial's extractor) two ways on loopback: behind
//! `TenancyLayer` with the tenant pool, and on a plain r2d2 pool pinned to one
//! tenant without the layer. A built-in load generator sends `ops` keep-alive
//! requests from 8 connections to each, with `Host: t<random>.localhost`, and
//! prints `RESULT scenario=http requests=<n> plain_rps=<x> tenant_rps=<x>
//! ratio=<r> plain_p99_ms=<x> tenant_p99_ms=<x>`.
//!
//! `memory` reads every tenant once, in order, through a pool of one connection,
//! with the default recycle rule and without it, sampling the backend's memory
//! (`pg_backend_memory_contexts`) every 50 tenants, and prints `RESULT
//! scenario=memory tenants=<n> recycled_peak_mb=<x> unrecycled_peak_mb=<x>
//! cap_mb=<x>`; it fails if the recycled peak passes the documented cap.
//!
//! `soak` runs `ops` checkouts over all tenants from 4 threads on a pool of 4
//! (connections replaced after `--recycle` distinct schemas: 1,000 by default
//! as in the pool, 0 for never): one in 20 borrows is a misbehaving borrower
//! drawn from the catalog of `tests/common/misbehave.rs` (all but the ones that
//! panic or need an async cancellation), one in 20 writes a row, the rest read
//! and check. It samples each backend's memory (`pg_backend_memory_contexts`)
//! every 100 operations per thread, counts the writes reported committed that a
//! fresh pool cannot find, and prints `RESULT scenario=soak tenants=<n> ops=<n>
//! misbehaving_borrows=<n> ops_per_s=<x> wrong_reads=<n> lost_writes=<n>
//! leaked_connections=<n> peak_backend_mb=<x> peak_pool_size=<n>`.
//!
//! The checkout scenarios check a connection out and run a primary-key lookup
//! `ops` times, one at a time: on a plain pool whose connections sit on one
//! tenant's path (diesel's r2d2 pool, or diesel-async's deadpool or bb8 pool,
//! each with its default liveness check), on a tenant pool serving that same
//! tenant, and on another tenant pool switching among all tenants at random.
//! The variants
//! take turns in 100 rounds, in a new random order each round, so that this
//! machine's drift in speed, and any effect one variant has on the next, falls
//! on all alike. Before measuring they pin this process to the first CPU and the
//! local server's processes to the last (`taskset`), so that every pool's round
//! trips cross between the same two CPUs. They print `RESULT scenario=checkout
//! ops=<n> plain_us=<x> same_us=<x> switch_us=<x> same_ratio=<r>
//! switch_ratio=<r> plain_again_us=<x> aa_ratio=<r>`, a ratio being the tenant
//! pool's throughput over the plain pool's; `aa_ratio` compares the plain pool
//! with a second, identical plain pool measured alongside, so it shows how far
//! from 1.000 two equal things land in that run. One `COST` line per variant
//! gives the wall time, this process's CPU time and the server's CPU time per
//! operation. `checkout` adds the floor for switching, a plain pool setting the
//! path by hand with the same two round trips per checkout and lookup (`RESULT
//! scenario=checkout-floor`). `checkout-async` measures
//! the sync pool first, in the same run, then the async tenant pool on each of
//! diesel-async's pools against a plain pool of the same kind (the eight
//! variants taking turns together), and prints one line per pool: `RESULT
//! scenario=checkout-async pool=<deadpool|bb8> ops=<n> ...`. `--recycle N`
//! sets the switching pool's recycle rule (distinct schemas; 0 for never).
//!
//! `citus` creates N tenants and then runs one new migration (a column and an
//! index) on every one of them, on this single server and on a Citus
//! coordinator with one worker (`testing::CitusDatabase`, so Citus must be
//! installed), and prints `RESULT scenario=<create|migrate> mode=<single|citus>
//! tenants=<N> total_ms=<t> ms_per_tenant=<x> single_ms_per_tenant=<s>
//! vs_single=<ratio>`.
//!
//! Options: `--tenants N` (default 1000), `--jobs J` (parallel workers, default 2).
//! Uses a fresh database on the server at `DATABASE_URL` if set (dropped
//! afterwards), otherwise a throwaway PostgreSQL cluster. Each scenario ends with
//! one line `RESULT scenario=<name> tenants=<N> total_ms=<t> ms_per_tenant=<x>
//! floor_ms_per_tenant=<f> floor_total_ms=<F>`; the floor is the same DDL sent as plain SQL over one
//! connection (for `noop`: the one query that lists tenants and their journal).
#![allow(missing_docs)]

#[path = "../tests/common/misbehave.rs"]
mod misbehave;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_migrations::{EmbeddedMigrations, FileBasedMigrations, embed_migrations};
use diesel_tenancy::testing::TestDatabase;
use diesel_tenancy::{
    MigrateOptions, Migrator, NewTenant, SchemaName, TenantPool, create_tenants,
    run_shared_migrations,
};

const SHARED: EmbeddedMigrations = embed_migrations!("migrations_shared");

struct Args {
    scenario: String,
    tenants: usize,
    jobs: usize,
    ops: usize,
    recycle: u64,
}

fn args() -> Result<Args> {
    let mut it = std::env::args().skip(1);
    let scenario = it
        .next()
        .context("usage: bench <create|migrate|noop|checkout|checkout-async> [--tenants N] [--jobs J] [--ops N]")?;
    let mut args = Args {
        scenario,
        tenants: 1000,
        jobs: 2,
        ops: 50_000,
        recycle: 1000,
    };
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--tenants" => args.tenants = value.parse()?,
            "--jobs" => args.jobs = value.parse()?,
            "--ops" => args.ops = value.parse()?,
            "--recycle" => args.recycle = value.parse()?,
            other => bail!("unknown option {other}"),
        }
    }
    Ok(args)
}

/// A copy of the sample tenant migrations that the bench can add to.
struct TenantSet {
    dir: PathBuf,
}

impl TenantSet {
    fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("dt-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations_tenant");
        for entry in std::fs::read_dir(src)? {
            let entry = entry?;
            std::fs::create_dir_all(dir.join(entry.file_name()))?;
            for file in std::fs::read_dir(entry.path())? {
                let file = file?;
                std::fs::copy(
                    file.path(),
                    dir.join(entry.file_name()).join(file.file_name()),
                )?;
            }
        }
        Ok(TenantSet { dir })
    }

    fn source(&self) -> Result<FileBasedMigrations> {
        Ok(FileBasedMigrations::from_path(&self.dir)?)
    }

    /// The up.sql of every migration, in order.
    fn up_sql(&self) -> Result<Vec<String>> {
        let mut dirs: Vec<_> = std::fs::read_dir(&self.dir)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        dirs.sort();
        dirs.iter()
            .map(|d| Ok(std::fs::read_to_string(d.join("up.sql"))?))
            .collect()
    }

    fn add(&self, name: &str, up: &str) -> Result<()> {
        let m = self.dir.join(name);
        std::fs::create_dir_all(&m)?;
        std::fs::write(m.join("up.sql"), up)?;
        std::fs::write(m.join("down.sql"), "")?;
        Ok(())
    }
}

impl Drop for TenantSet {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn create(
    pool: &TenantPool,
    set: &TenantSet,
    prefix: &str,
    n: usize,
    jobs: usize,
) -> Result<Duration> {
    let news: Vec<_> = (0..n)
        .map(|i| {
            Ok(NewTenant::new(
                SchemaName::new(&format!("{prefix}{i}"))?,
                format!("Tenant {i}"),
            ))
        })
        .collect::<Result<_>>()?;
    let source = set.source()?;
    let started = Instant::now();
    let results = create_tenants(pool, &news, &source, jobs);
    let elapsed = started.elapsed();
    let failed = results.iter().filter(|r| r.is_err()).count();
    ensure!(
        failed == 0,
        "{failed} tenants failed: {:?}",
        results.iter().find(|r| r.is_err())
    );
    Ok(elapsed)
}

fn result(scenario: &str, n: usize, total: Duration, floor_total: Duration) {
    println!(
        "RESULT scenario={scenario} tenants={n} total_ms={:.1} ms_per_tenant={:.3} floor_ms_per_tenant={:.3} floor_total_ms={:.1}",
        ms(total),
        ms(total) / n as f64,
        ms(floor_total) / n as f64,
        ms(floor_total)
    );
}

fn main() -> Result<()> {
    let args = args()?;
    let db = TestDatabase::new()?;
    let pool = TenantPool::builder(db.url())
        .max_size(args.jobs as u32 + 1)
        .build()?;
    run_shared_migrations(&mut *pool.public()?, SHARED)?;
    let set = TenantSet::new()?;
    let mut floor_conn = PgConnection::establish(db.url())?;
    eprintln!(
        "bench: scenario {}, {} tenants, {} jobs, {} cores",
        args.scenario,
        args.tenants,
        args.jobs,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let n = args.tenants;
    let recycle = (args.recycle > 0).then_some(args.recycle);
    match args.scenario.as_str() {
        "create" => {
            let total = create(&pool, &set, "t", n, args.jobs)?;
            // Floor: CREATE SCHEMA and the same migrations' SQL, one connection.
            let ddl = set.up_sql()?.join("\n");
            let started = Instant::now();
            for i in 0..n {
                let schema = SchemaName::new(&format!("floor{i}"))?.quoted();
                floor_conn.batch_execute(&format!(
                    "BEGIN; CREATE SCHEMA {schema}; SET LOCAL search_path TO {schema}; {ddl}; COMMIT;"
                ))?;
            }
            result("create", n, total, started.elapsed());
        }
        "migrate" => {
            create(&pool, &set, "t", n, args.jobs)?;
            let migrator = Migrator::new(SHARED, set.source()?);
            set.add(
                "2025-03-01-000000_add_loyalty",
                "ALTER TABLE customers ADD COLUMN loyalty_points integer NOT NULL DEFAULT 0;",
            )?;
            let options = MigrateOptions::new().jobs(args.jobs);
            let started = Instant::now();
            let report = migrator.migrate_all(&pool, &options)?;
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
            let started = Instant::now();
            for i in 0..n {
                let schema = SchemaName::new(&format!("t{i}"))?.quoted();
                floor_conn.batch_execute(&format!(
                    "ALTER TABLE {schema}.customers ADD COLUMN floor_points integer NOT NULL DEFAULT 0"
                ))?;
            }
            result("migrate", n, total, started.elapsed());
        }
        "citus" => {
            // The same creation and migration on this single server and on a
            // Citus coordinator with one worker, in one run.
            let citus_db = diesel_tenancy::testing::CitusDatabase::new()
                .context("a Citus database (is Citus installed?)")?;
            let citus_pool = citus_db
                .pool_builder()
                .max_size(args.jobs as u32 + 1)
                .build()?;
            run_shared_migrations(&mut *citus_pool.public()?, SHARED)?;
            let pools = [("single", &pool), ("citus", &citus_pool)];
            let mut created = Vec::new();
            for (mode, pool) in pools {
                created.push((mode, create(pool, &set, "t", n, args.jobs)?));
            }
            set.add(
                "2025-03-01-000000_add_loyalty",
                "ALTER TABLE customers ADD COLUMN loyalty_points integer NOT NULL DEFAULT 0;\n\
                 CREATE INDEX customers_loyalty ON customers (loyalty_points);",
            )?;
            let mut migrated = Vec::new();
            for (mode, pool) in pools {
                let migrator = Migrator::new(SHARED, set.source()?);
                let started = Instant::now();
                let report = migrator.migrate_all(pool, &MigrateOptions::new().jobs(args.jobs))?;
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
        }
        "noop" => {
            create(&pool, &set, "t", n, args.jobs)?;
            let migrator = Migrator::new(SHARED, set.source()?);
            let options = MigrateOptions::new().jobs(args.jobs);
            // One warm-up run, then the measured one.
            migrator.migrate_all(&pool, &options)?;
            let started = Instant::now();
            let report = migrator.migrate_all(&pool, &options)?;
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
        }
        "http" => checkout::http(&db, &pool, &set, n, args.ops, args.jobs)?,
        "memory" => checkout::memory(&db, &pool, &set, n, args.jobs)?,
        "soak" => checkout::soak(&db, &pool, &set, n, args.ops, args.jobs, args.recycle)?,
        "checkout" => checkout::sync(&db, &pool, &set, n, args.ops, args.jobs, recycle)?,
        "checkout-async" => {
            checkout::asynchronous(&db, &pool, &set, n, args.ops, args.jobs, recycle)?
        }
        other => {
            bail!("unknown scenario {other:?}: create, migrate, noop, checkout or checkout-async")
        }
    }
    Ok(())
}

/// xorshift64: the benches' tenant choices, the same on every run.
struct Rng(u64);

impl Rng {
    fn new(stream: u64) -> Self {
        Rng(0x9e37_79b9_7f4a_7c15 ^ stream)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Fisher-Yates.
    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, (self.next() % (i as u64 + 1)) as usize);
        }
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// CPU time so far, in nanoseconds, of this process (all threads) and of the
/// PostgreSQL server's processes on this machine: the live ones (from
/// `/proc/*/schedstat`) and those that have exited (their parent's `cutime` and
/// `cstime` in `/proc/*/stat`, in 10 ms ticks), so that replaced connections
/// count too. Zero where `/proc` cannot be read.
fn cpu_ns() -> (u64, u64) {
    fn run_ns(path: &Path) -> u64 {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }
    let mut client = 0;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            client += run_ns(&t.path().join("schedstat"));
        }
    }
    let mut server = 0;
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.flatten() {
            let dir = p.path();
            if std::fs::read_to_string(dir.join("comm")).is_ok_and(|c| c.trim() == "postgres") {
                server += run_ns(&dir.join("schedstat"));
                // Fields 16 and 17 of stat: exited children's user and system time.
                if let Ok(stat) = std::fs::read_to_string(dir.join("stat")) {
                    let after_name = stat.rsplit(')').next().unwrap_or("");
                    let fields: Vec<u64> = after_name
                        .split_whitespace()
                        .map(|f| f.parse().unwrap_or(0))
                        .collect();
                    if fields.len() > 14 {
                        server += (fields[13] + fields[14]) * 10_000_000;
                    }
                }
            }
        }
    }
    (client, server)
}

/// Per-operation figures of one variant, in microseconds.
#[derive(Clone, Copy, Default)]
struct Cost {
    /// Wall-clock time.
    wall: f64,
    /// CPU time of this process (the pool, Diesel, libpq, the runtime).
    client: f64,
    /// CPU time of the PostgreSQL server's processes.
    server: f64,
}

/// Sums (wall, client, server) over the segments of one variant.
#[derive(Default)]
struct Meter {
    wall: Duration,
    client_ns: u64,
    server_ns: u64,
}

impl Meter {
    fn start() -> (Instant, (u64, u64)) {
        (Instant::now(), cpu_ns())
    }

    fn stop(&mut self, (started, (c0, s0)): (Instant, (u64, u64))) {
        self.wall += started.elapsed();
        let (c1, s1) = cpu_ns();
        self.client_ns += c1.saturating_sub(c0);
        self.server_ns += s1.saturating_sub(s0);
    }

    fn per_op(&self, ops: usize) -> Cost {
        let ops = ops as f64;
        Cost {
            wall: self.wall.as_secs_f64() * 1e6 / ops,
            client: self.client_ns as f64 / 1e3 / ops,
            server: self.server_ns as f64 / 1e3 / ops,
        }
    }
}

/// Prints where each variant's time went: one `COST` line per variant.
fn print_costs(scenario: &str, names: &[&str], costs: &[Cost]) {
    for (name, c) in names.iter().zip(costs) {
        println!(
            "COST scenario={scenario} variant={name} wall_us={:.1} client_cpu_us={:.1} server_cpu_us={:.1} waiting_us={:.1}",
            c.wall,
            c.client,
            c.server,
            (c.wall - c.client - c.server).max(0.0)
        );
    }
}

/// Pins this process to the first CPU and the local PostgreSQL server's
/// processes (the postmaster, so its future backends too) to the last, with
/// `taskset`. Without it, whether a pool's backend happens to share a CPU with
/// the client decides its round-trip cost (a wake-up on another CPU is dearer
/// in a VM), so two identical pools measured in one run differed by 10%.
fn pin_processes() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        return;
    }
    let taskset = |cpu: usize, pid: &str| {
        std::process::Command::new("taskset")
            .args(["-a", "-p", "-c", &cpu.to_string(), pid])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let mut server = 0;
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.flatten() {
            let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
            if comm.trim() == "postgres" && taskset(cpus - 1, &p.file_name().to_string_lossy()) {
                server += 1;
            }
        }
    }
    let client = taskset(0, &std::process::id().to_string());
    eprintln!(
        "bench: pinned {server} server processes to CPU {} and this process{} to CPU 0",
        cpus - 1,
        if client { "" } else { " (failed)" }
    );
}

/// Rounds in which the checkout scenarios interleave their variants.
const ROUNDS: usize = 100;

/// Microseconds per call of each variant: a warm-up of `ops / 10` calls each,
/// then `ops` calls each in [`ROUNDS`] interleaved rounds (in a new random
/// order every round), so that drift in this machine's speed during the run,
/// and any effect one variant has on the next, falls on every variant alike.
fn interleaved(ops: usize, variants: &mut [&mut dyn FnMut() -> Result<()>]) -> Result<Vec<Cost>> {
    let mut meters: Vec<Meter> = variants.iter().map(|_| Meter::default()).collect();
    for v in variants.iter_mut() {
        for _ in 0..ops / 10 {
            v()?;
        }
    }
    for i in turns(variants.len(), ROUNDS) {
        let started = Meter::start();
        for _ in 0..ops / ROUNDS {
            variants[i]()?;
        }
        meters[i].stop(started);
    }
    Ok(per_op(&meters, ops))
}

/// The order of the interleaved segments: `rounds` rounds, each a new random
/// order of the variants.
fn turns(variants: usize, rounds: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..variants).collect();
    let mut rng = Rng::new(u64::MAX);
    (0..rounds)
        .flat_map(|_| {
            rng.shuffle(&mut order);
            order.clone()
        })
        .collect()
}

/// Each meter's figures per operation, for `ops` operations a variant.
fn per_op(meters: &[Meter], ops: usize) -> Vec<Cost> {
    meters
        .iter()
        .map(|m| m.per_op(ops / ROUNDS * ROUNDS))
        .collect()
}

type BoxFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + 'a>>;

/// Boxes an async variant for [`interleaved_async`].
fn variant<'a>(f: impl FnMut() -> BoxFuture<'a> + 'a) -> Box<dyn FnMut() -> BoxFuture<'a> + 'a> {
    Box::new(f)
}

/// [`interleaved`] for async variants.
async fn interleaved_async<'a>(
    ops: usize,
    variants: &mut [Box<dyn FnMut() -> BoxFuture<'a> + 'a>],
) -> Result<Vec<Cost>> {
    let mut meters: Vec<Meter> = variants.iter().map(|_| Meter::default()).collect();
    for v in variants.iter_mut() {
        for _ in 0..ops / 10 {
            v().await?;
        }
    }
    for i in turns(variants.len(), ROUNDS) {
        let started = Meter::start();
        for _ in 0..ops / ROUNDS {
            variants[i]().await?;
        }
        meters[i].stop(started);
    }
    Ok(per_op(&meters, ops))
}

mod checkout {
    use super::*;
    use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool};

    diesel::table! {
        customers (id) {
            id -> BigInt,
            name -> Text,
            email -> Text,
        }
    }

    /// Tenants t0..tN, each with one customer named after its schema.
    pub(super) fn tenants(
        pool: &TenantPool,
        set: &TenantSet,
        n: usize,
        jobs: usize,
    ) -> Result<Vec<diesel_tenancy::Tenant>> {
        create(pool, set, "t", n, jobs)?;
        let tenants = diesel_tenancy::registry::list_tenants(&mut *pool.public()?)?;
        for t in &tenants {
            pool.with_tenant(t, |conn| {
                diesel::insert_into(customers::table)
                    .values((
                        customers::id.eq(1),
                        customers::name.eq(t.schema().as_str()),
                        customers::email.eq("owner@example.com"),
                    ))
                    .execute(conn)
            })?;
        }
        Ok(tenants)
    }

    #[derive(Debug)]
    struct OnTenant(String);

    impl CustomizeConnection<PgConnection, diesel::r2d2::Error> for OnTenant {
        fn on_acquire(&self, conn: &mut PgConnection) -> Result<(), diesel::r2d2::Error> {
            conn.batch_execute(&format!("SET search_path TO {}, public", self.0))
                .map_err(diesel::r2d2::Error::QueryError)
        }
    }

    fn lookup(conn: &mut PgConnection) -> QueryResult<String> {
        customers::table.find(1).select(customers::name).first(conn)
    }

    /// The `RESULT` line of a checkout scenario. `aa_ratio` compares the plain
    /// pool with a second, identical plain pool measured alongside: how far from
    /// 1.000 two equal things land in this run (this machine's noise floor for
    /// the other ratios).
    fn line(scenario: &str, ops: usize, costs: &[Cost]) {
        let (plain, same, switch, again) =
            (costs[0].wall, costs[1].wall, costs[2].wall, costs[3].wall);
        println!(
            "RESULT scenario={scenario} ops={ops} plain_us={plain:.1} same_us={same:.1} switch_us={switch:.1} same_ratio={:.3} switch_ratio={:.3} plain_again_us={again:.1} aa_ratio={:.3}",
            plain / same,
            plain / switch,
            plain / again
        );
    }

    pub(super) fn sync(
        db: &TestDatabase,
        pool: &TenantPool,
        set: &TenantSet,
        n: usize,
        ops: usize,
        jobs: usize,
        recycle: Option<u64>,
    ) -> Result<()> {
        let tenants = tenants(pool, set, n, jobs)?;
        measure_sync(db, &tenants, ops, recycle)
    }

    fn measure_sync(
        db: &TestDatabase,
        tenants: &[diesel_tenancy::Tenant],
        ops: usize,
        recycle: Option<u64>,
    ) -> Result<()> {
        pin_processes();
        let first = &tenants[0];
        let plain = Pool::builder()
            .max_size(2)
            .connection_customizer(Box::new(OnTenant(first.schema().quoted())))
            .build(ConnectionManager::<PgConnection>::new(db.url()))?;
        // One tenant pool serving one tenant, another switching: each variant's
        // backends hold only what that variant touched, as in an application.
        let one_tenant_pool = TenantPool::builder(db.url()).max_size(2).build()?;
        let tenant_pool = TenantPool::builder(db.url())
            .max_size(2)
            .recycle_after_schemas(recycle)
            .build()?;
        let mut plain_lookup = || -> Result<()> {
            ensure!(lookup(&mut *plain.get()?)? == first.schema().as_str());
            Ok(())
        };
        let plain_again = Pool::builder()
            .max_size(2)
            .connection_customizer(Box::new(OnTenant(first.schema().quoted())))
            .build(ConnectionManager::<PgConnection>::new(db.url()))?;
        let mut again = || -> Result<()> {
            ensure!(lookup(&mut *plain_again.get()?)? == first.schema().as_str());
            Ok(())
        };
        let mut same = || -> Result<()> {
            ensure!(lookup(&mut *one_tenant_pool.get(first)?)? == first.schema().as_str());
            Ok(())
        };
        let mut rng = Rng::new(0);
        let mut switch = || -> Result<()> {
            let t = rng.pick(tenants);
            ensure!(
                lookup(&mut *tenant_pool.get(t)?)? == t.schema().as_str(),
                "wrong tenant"
            );
            Ok(())
        };
        // The floor for switching: a plain pool setting the path by hand, with
        // the same round trips as the tenant pool (two per checkout and
        // lookup): r2d2's own liveness check is off and the statement that
        // sets the path is the check (it fails on a dead connection).
        let mut rng = Rng::new(1);
        let by_hand = Pool::builder()
            .max_size(2)
            .test_on_check_out(false)
            .build(ConnectionManager::<PgConnection>::new(db.url()))?;
        let mut floor = || -> Result<()> {
            let t = rng.pick(tenants);
            let mut conn = by_hand.get()?;
            conn.batch_execute(&format!(
                "SET search_path TO {}, public",
                t.schema().quoted()
            ))?;
            ensure!(lookup(&mut conn)? == t.schema().as_str(), "wrong tenant");
            Ok(())
        };
        let costs = interleaved(
            ops,
            &mut [
                &mut plain_lookup,
                &mut same,
                &mut switch,
                &mut again,
                &mut floor,
            ],
        )?;
        print_costs(
            "checkout",
            &["plain", "same", "switch", "plain_again", "floor_switch"],
            &costs,
        );
        let (plain_us, switch_us, floor_switch_us) = (costs[0].wall, costs[2].wall, costs[4].wall);
        line("checkout", ops, &costs);
        println!(
            "RESULT scenario=checkout-floor ops={ops} plain_us={plain_us:.1} floor_switch_us={floor_switch_us:.1} switch_us={switch_us:.1} switch_vs_floor={:.3}",
            floor_switch_us / switch_us
        );
        Ok(())
    }

    /// Sends `requests` GET requests over 8 keep-alive connections to `port`,
    /// with hosts from `host` (fed by random numbers from `seed`); returns each
    /// request's latency.
    fn load(
        port: u16,
        requests: usize,
        seed: u64,
        host: &(dyn Fn(u64) -> String + Sync),
    ) -> Result<Vec<Duration>> {
        use std::io::{BufRead, BufReader, Read, Write};
        const CLIENTS: usize = 8;
        std::thread::scope(|s| -> Result<Vec<Duration>> {
            let handles: Vec<_> = (0..CLIENTS)
                .map(|c| {
                    let host = &host;
                    s.spawn(move || -> Result<Vec<Duration>> {
                        let stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
                        stream.set_nodelay(true)?;
                        let mut writer = stream.try_clone()?;
                        let mut reader = BufReader::new(stream);
                        let mut rng = Rng::new(seed * 64 + c as u64 + 1);
                        let mut out = Vec::with_capacity(requests / CLIENTS);
                        for _ in 0..requests / CLIENTS {
                            let t0 = Instant::now();
                            write!(
                                writer,
                                "GET / HTTP/1.1\r\nHost: {}\r\n\r\n",
                                host(rng.next())
                            )?;
                            let mut status = String::new();
                            reader.read_line(&mut status)?;
                            ensure!(status.starts_with("HTTP/1.1 200"), "response: {status}");
                            let mut length = 0usize;
                            loop {
                                let mut line = String::new();
                                reader.read_line(&mut line)?;
                                if line == "\r\n" {
                                    break;
                                }
                                if let Some(v) =
                                    line.to_ascii_lowercase().strip_prefix("content-length:")
                                {
                                    length = v.trim().parse()?;
                                }
                            }
                            let mut body = vec![0; length];
                            reader.read_exact(&mut body)?;
                            out.push(t0.elapsed());
                        }
                        Ok(out)
                    })
                })
                .collect();
            let mut all = Vec::new();
            for h in handles {
                all.extend(
                    h.join()
                        .map_err(|_| anyhow::anyhow!("a client panicked"))??,
                );
            }
            Ok(all)
        })
    }

    pub(super) fn http(
        db: &TestDatabase,
        pool: &TenantPool,
        set: &TenantSet,
        n: usize,
        requests: usize,
        jobs: usize,
    ) -> Result<()> {
        use axum::Router;
        use axum::routing::get;
        use diesel_tenancy::web::axum::{TenancyLayer, TenantDb, tenant_routing};

        let tenants = tenants(pool, set, n, jobs)?;
        {
            let mut conn = pool.public()?;
            for t in &tenants {
                let domain = diesel_tenancy::Domain::parse(&format!("{}.localhost", t.schema()))?;
                diesel_tenancy::registry::add_domain(&mut conn, t, &domain, true)?;
            }
        }
        let first = tenants[0].clone();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        // The same work in both: one blocking-pool task that reads the customers.
        async fn names(conn_result: Result<Vec<String>>) -> String {
            match conn_result {
                Ok(names) => names.join(","),
                Err(e) => format!("error: {e}"),
            }
        }
        let plain_pool = Pool::builder()
            .max_size(8)
            .connection_customizer(Box::new(OnTenant(first.schema().quoted())))
            .build(ConnectionManager::<PgConnection>::new(db.url()))?;
        let plain_app = Router::new().route(
            "/",
            get(move || {
                let pool = plain_pool.clone();
                async move {
                    let r = tokio::task::spawn_blocking(move || -> Result<Vec<String>> {
                        let mut conn = pool.get()?;
                        Ok(customers::table.select(customers::name).load(&mut *conn)?)
                    })
                    .await
                    .map_err(anyhow::Error::from)
                    .and_then(|r| r);
                    names(r).await
                }
            }),
        );
        let tenant_pool = TenantPool::builder(db.url()).max_size(8).build()?;
        let resolver = diesel_tenancy::Resolver::builder(tenant_pool)
            .public_domain(diesel_tenancy::Domain::parse("localhost")?)
            .build()?;
        let tenant_router = Router::new().route(
            "/",
            get(|db: TenantDb| async move {
                let r = db
                    .run(|c| customers::table.select(customers::name).load::<String>(c))
                    .await
                    .map_err(anyhow::Error::from)
                    .and_then(|r| r.map_err(anyhow::Error::from));
                names(r).await
            }),
        );
        let tenant_app = tenant_routing(Router::new(), tenant_router, TenancyLayer::new(resolver));
        let (plain_port, tenant_port) = rt.block_on(async {
            let a = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let b = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let ports = (a.local_addr()?.port(), b.local_addr()?.port());
            tokio::spawn(async move { axum::serve(a, plain_app).await });
            tokio::spawn(async move { axum::serve(b, tenant_app).await });
            Ok::<_, anyhow::Error>(ports)
        })?;
        let count = tenants.len() as u64;
        let random_host = |r: u64| format!("t{}.localhost", r % count);
        // The same tenant for every request: no switching, the layer's and the
        // pool's own cost.
        let same_host = |_| "t0.localhost".to_owned();
        let variants: [(u16, &(dyn Fn(u64) -> String + Sync)); 3] = [
            (plain_port, &random_host),
            (tenant_port, &random_host),
            (tenant_port, &same_host),
        ];
        // Warm all (connections, caches, the resolver cache), then take turns.
        for (port, host) in variants {
            load(port, requests / 10, 0, host)?;
        }
        const HTTP_ROUNDS: usize = 5;
        let mut meters: Vec<Meter> = variants.iter().map(|_| Meter::default()).collect();
        let mut latencies: Vec<Vec<Duration>> = vec![Vec::new(); variants.len()];
        for (turn, i) in turns(variants.len(), HTTP_ROUNDS).into_iter().enumerate() {
            let (port, host) = variants[i];
            let started = Meter::start();
            latencies[i].extend(load(port, requests / HTTP_ROUNDS, turn as u64 + 1, host)?);
            meters[i].stop(started);
        }
        let costs: Vec<Cost> = meters
            .iter()
            .zip(&latencies)
            .map(|(m, l)| m.per_op(l.len()))
            .collect();
        print_costs("http", &["plain", "tenant", "same_tenant"], &costs);
        let rps: Vec<f64> = costs.iter().map(|c| 1e6 / c.wall).collect();
        let p99: Vec<f64> = latencies
            .iter_mut()
            .map(|l| {
                l.sort();
                ms(l[(l.len() * 99 / 100).min(l.len() - 1)])
            })
            .collect();
        println!(
            "RESULT scenario=http requests={} plain_rps={:.0} tenant_rps={:.0} ratio={:.3} plain_p99_ms={:.2} tenant_p99_ms={:.2} same_tenant_rps={:.0} same_tenant_ratio={:.3} same_tenant_p99_ms={:.2}",
            latencies[0].len(),
            rps[0],
            rps[1],
            rps[1] / rps[0],
            p99[0],
            p99[1],
            rps[2],
            rps[2] / rps[0],
            p99[2]
        );
        rt.shutdown_background();
        Ok(())
    }

    /// The documented cap on a pooled connection's backend memory with the
    /// default recycle rule (1,000 distinct schemas), for the sample app's 4
    /// tables.
    const MEMORY_CAP_MB: f64 = 32.0;

    pub(super) fn memory(
        db: &TestDatabase,
        pool: &TenantPool,
        set: &TenantSet,
        n: usize,
        jobs: usize,
    ) -> Result<()> {
        let tenants = tenants(pool, set, n, jobs)?;
        // With the pool's default rule, and with the rule off.
        let peak = |recycle: bool| -> Result<f64> {
            let mut builder = TenantPool::builder(db.url()).max_size(1);
            if !recycle {
                builder = builder.recycle_after_schemas(None);
            }
            let one = builder.build()?;
            let mut peak: i64 = 0;
            for (i, t) in tenants.iter().enumerate() {
                let mut conn = one.get(t)?;
                ensure!(lookup(&mut conn)? == t.schema().as_str(), "wrong tenant");
                if i % 50 == 49 || i + 1 == tenants.len() {
                    let bytes: i64 = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
                        "(SELECT sum(total_bytes)::bigint FROM pg_backend_memory_contexts)",
                    ))
                    .get_result(&mut *conn)?;
                    peak = peak.max(bytes);
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

    pub(super) fn soak(
        db: &TestDatabase,
        pool: &TenantPool,
        set: &TenantSet,
        n: usize,
        ops: usize,
        jobs: usize,
        recycle: u64,
    ) -> Result<()> {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
        const THREADS: usize = 4;
        let tenants = Arc::new(tenants(pool, set, n, jobs)?);
        pool.public()?
            .batch_execute(super::misbehave::setup_sql())?;
        // Borrowers that misbehave: every catalog entry that neither panics
        // nor needs an async borrow to be dropped.
        let catalog: Arc<Vec<super::misbehave::Misbehaviour>> = Arc::new(
            super::misbehave::catalog()
                .into_iter()
                .filter(|m| !m.panics() && !m.cancels_borrow())
                .collect(),
        );
        let soak_pool = TenantPool::builder(db.url())
            .max_size(THREADS as u32)
            .recycle_after_schemas((recycle > 0).then_some(recycle))
            .build()?;
        let wrong = Arc::new(AtomicUsize::new(0));
        let misbehaved = Arc::new(AtomicUsize::new(0));
        // Rows each thread wrote and saw committed, per tenant index.
        let written = Arc::new(std::sync::Mutex::new(vec![0usize; tenants.len()]));
        let peak_bytes = Arc::new(AtomicU64::new(0));
        let peak_size = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (pool, tenants) = (soak_pool.clone(), Arc::clone(&tenants));
                let (wrong, peak_bytes, peak_size) = (
                    Arc::clone(&wrong),
                    Arc::clone(&peak_bytes),
                    Arc::clone(&peak_size),
                );
                let (catalog, misbehaved, written) = (
                    Arc::clone(&catalog),
                    Arc::clone(&misbehaved),
                    Arc::clone(&written),
                );
                std::thread::spawn(move || -> Result<()> {
                    let mut rng = Rng::new(t as u64 + 1);
                    for i in 0..ops / THREADS {
                        let index = rng.below(tenants.len());
                        let tenant = &tenants[index];
                        if i % 20 == 7 {
                            // A misbehaving borrower, its errors ignored.
                            let entry = &catalog[rng.below(catalog.len())];
                            let other = tenants[rng.below(tenants.len())].schema().as_str();
                            let mut conn = pool.get(tenant)?;
                            entry.run_sync(&mut conn, tenant.schema().as_str(), other);
                            misbehaved.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        if i % 20 == 13 {
                            // A write, counted once it is reported committed.
                            let inserted = pool.with_tenant(tenant, |conn| {
                                diesel::sql_query(
                                    "INSERT INTO customers (name, email) VALUES ('soak', 'soak')",
                                )
                                .execute(conn)
                            });
                            if inserted.is_ok() {
                                written.lock().expect("not poisoned")[index] += 1;
                            }
                            continue;
                        }
                        let mut conn = pool.get(tenant)?;
                        if lookup(&mut conn)? != tenant.schema().as_str() {
                            wrong.fetch_add(1, Ordering::Relaxed);
                        }
                        if i % 100 == 0 {
                            let bytes: i64 = diesel::select(diesel::dsl::sql::<
                                diesel::sql_types::BigInt,
                            >(
                                "(SELECT sum(total_bytes)::bigint FROM pg_backend_memory_contexts)",
                            ))
                            .get_result(&mut *conn)?;
                            peak_bytes.fetch_max(bytes as u64, Ordering::Relaxed);
                            peak_size.fetch_max(
                                pool.r2d2().state().connections as usize,
                                Ordering::Relaxed,
                            );
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("a soak thread panicked"))??;
        }
        let elapsed = started.elapsed();
        // Give async-free releases a moment, then compare the writes reported
        // committed with what a fresh pool finds.
        let state = soak_pool.r2d2().state();
        let leaked = state.connections - state.idle_connections;
        let witness = TenantPool::builder(db.url()).max_size(1).build()?;
        let written = written.lock().expect("not poisoned").clone();
        let mut lost_writes = 0usize;
        for (tenant, expected) in tenants.iter().zip(written) {
            let found: i64 = witness.with_tenant(tenant, |conn| {
                diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
                    "(SELECT count(*) FROM customers WHERE name = 'soak')",
                ))
                .get_result(conn)
            })?;
            lost_writes += expected.saturating_sub(found as usize);
        }
        println!(
            "RESULT scenario=soak tenants={n} ops={ops} recycle_after={recycle} misbehaving_borrows={} ops_per_s={:.0} wrong_reads={} lost_writes={lost_writes} leaked_connections={leaked} peak_backend_mb={:.1} peak_pool_size={}",
            misbehaved.load(Ordering::Relaxed),
            ops as f64 / elapsed.as_secs_f64(),
            wrong.load(Ordering::Relaxed),
            peak_bytes.load(Ordering::Relaxed) as f64 / (1024.0 * 1024.0),
            peak_size.load(Ordering::Relaxed)
        );
        ensure!(wrong.load(Ordering::Relaxed) == 0, "wrong-tenant reads");
        ensure!(lost_writes == 0, "writes reported committed but missing");
        ensure!(leaked == 0, "connections still checked out after the run");
        Ok(())
    }

    pub(super) fn asynchronous(
        db: &TestDatabase,
        pool: &TenantPool,
        set: &TenantSet,
        n: usize,
        ops: usize,
        jobs: usize,
        recycle: Option<u64>,
    ) -> Result<()> {
        use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
        use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
        use diesel_tenancy::{AsyncTenantPool, AsyncTenantPoolBuilder};

        /// diesel-async's own pool of one kind, no tenancy.
        enum Plain {
            Deadpool(diesel_async::pooled_connection::deadpool::Pool<AsyncPgConnection>),
            Bb8(diesel_async::pooled_connection::bb8::Pool<AsyncPgConnection>),
        }

        let tenants = tenants(pool, set, n, jobs)?;
        // The sync pool in the same run, for comparison.
        measure_sync(db, &tenants, ops, recycle)?;
        let first = tenants[0].clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            async fn lookup(conn: &mut AsyncPgConnection) -> QueryResult<String> {
                let query = customers::table.find(1).select(customers::name);
                diesel_async::RunQueryDsl::first(query, conn).await
            }
            // A plain pool of `kind` (its default liveness check, diesel-async's
            // `Verified` recycling) whose connections sit on the first tenant's
            // path.
            let plain_pool = async |kind: &str| -> Result<Plain> {
                let mut config = ManagerConfig::<AsyncPgConnection>::default();
                let path = first.schema().quoted();
                config.custom_setup = Box::new(move |url| {
                    let (url, path) = (url.to_owned(), path.clone());
                    Box::pin(async move {
                        let mut conn = AsyncPgConnection::establish(&url).await?;
                        conn.batch_execute(&format!("SET search_path TO {path}, public"))
                            .await
                            .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
                        Ok(conn)
                    })
                });
                let manager = AsyncDieselConnectionManager::new_with_config(db.url(), config);
                Ok(match kind {
                    "deadpool" => Plain::Deadpool(
                        diesel_async::pooled_connection::deadpool::Pool::builder(manager)
                            .max_size(2)
                            .build()?,
                    ),
                    _ => Plain::Bb8(
                        diesel_async::pooled_connection::bb8::Pool::builder()
                            .max_size(2)
                            .build(manager)
                            .await?,
                    ),
                })
            };
            let tenant_pool = |kind: &str, builder: AsyncTenantPoolBuilder| match kind {
                "deadpool" => builder.build_deadpool(),
                _ => builder.build_bb8(),
            };
            async fn plain_lookup(pool: &Plain) -> Result<String> {
                Ok(match pool {
                    Plain::Deadpool(pool) => lookup(&mut *pool.get().await?).await?,
                    Plain::Bb8(pool) => lookup(&mut *pool.get().await?).await?,
                })
            }
            const KINDS: [&str; 2] = ["deadpool", "bb8"];
            // Per kind: a plain pool, one tenant pool serving one tenant and
            // another switching (each variant's backends hold only what that
            // variant touched, as in an application), and a second plain pool
            // (the run's noise floor). All eight take turns together.
            let mut pools = Vec::new();
            for kind in KINDS {
                pools.push((
                    plain_pool(kind).await?,
                    tenant_pool(kind, AsyncTenantPool::builder(db.url()).max_size(2))?,
                    tenant_pool(
                        kind,
                        AsyncTenantPool::builder(db.url())
                            .max_size(2)
                            .recycle_after_schemas(recycle),
                    )?,
                    plain_pool(kind).await?,
                ));
            }
            let (first, tenants) = (&first, &tenants);
            let mut variants = Vec::new();
            for (i, (plain, one_tenant_pool, tenant_pool, plain_again)) in pools.iter().enumerate()
            {
                let mut rng = Rng::new(i as u64);
                variants.push(variant(move || {
                    Box::pin(async move {
                        ensure!(plain_lookup(plain).await? == first.schema().as_str());
                        Ok(())
                    })
                }));
                variants.push(variant(move || {
                    Box::pin(async move {
                        let mut conn = one_tenant_pool.get(first).await?;
                        ensure!(lookup(&mut conn).await? == first.schema().as_str());
                        Ok(())
                    })
                }));
                variants.push(variant(move || {
                    let t = rng.pick(tenants);
                    Box::pin(async move {
                        let mut conn = tenant_pool.get(t).await?;
                        ensure!(
                            lookup(&mut conn).await? == t.schema().as_str(),
                            "wrong tenant"
                        );
                        Ok(())
                    })
                }));
                variants.push(variant(move || {
                    Box::pin(async move {
                        ensure!(plain_lookup(plain_again).await? == first.schema().as_str());
                        Ok(())
                    })
                }));
            }
            let costs = interleaved_async(ops, &mut variants).await?;
            for (kind, costs) in KINDS.iter().zip(costs.chunks(4)) {
                let scenario = format!("checkout-async pool={kind}");
                print_costs(
                    &scenario,
                    &["plain", "same", "switch", "plain_again"],
                    costs,
                );
                line(&scenario, ops, costs);
            }
            Ok(())
        })
    }
}
