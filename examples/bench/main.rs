//! Benchmarks, each beside a floor measured in the same run.
//!
//! ```text
//! cargo run --release --example bench -- create  --tenants 1000
//! cargo run --release --example bench -- migrate --tenants 10000
//! cargo run --release --example bench -- noop    --tenants 10000
//! cargo run --release --example bench -- checkout       --tenants 1000 --ops 50000
//! cargo run --release --example bench -- checkout-async --tenants 1000 --ops 50000
//! cargo run --release --example bench -- checkout --mix zipf --threads 4 --pool 16
//! cargo run --release --example bench -- soak --tenants 1000 --ops 200000
//! cargo run --release --example bench -- memory --tenants 10000
//! cargo run --release --example bench -- http --tenants 1000 --ops 20000
//! ```
//!
//! Options: `--tenants N` (default 1000), `--jobs J` (parallel workers for
//! creating and migrating tenants, default 2), `--ops N` (operations, or
//! requests for `http`, per variant; default 50,000), `--recycle N` (see
//! below), and for `checkout`, `checkout-async` and `http`:
//!
//! - `--mix uniform|zipf`: how the switching variants pick each operation's
//!   tenant: uniformly (the default), or by Zipf's law with exponent 1.1 over
//!   the tenants (the first tenant the most frequent), from a fixed sequence of
//!   pseudo-random numbers, the same on every run;
//! - `--threads T`: client threads running each variant concurrently on the
//!   variant's one pool, each thread with its own sequence of tenants (default
//!   1; for `http`, the load generator's connections, default 8);
//! - `--pool P`: the `max_size` of every pool of the scenario (default 2; for
//!   `http`, 8).
//!
//! Uses a fresh database on the server at `DATABASE_URL` if set (dropped
//! afterwards), otherwise a throwaway PostgreSQL cluster.
//!
//! `create`, `migrate` and `noop` each end with one line `RESULT
//! scenario=<name> tenants=<N> total_ms=<t> ms_per_tenant=<x>
//! floor_ms_per_tenant=<f> floor_total_ms=<F>`; the floor is the same DDL sent
//! as plain SQL over one connection (for `noop`: the one query that lists
//! tenants and their journal).
//!
//! `citus` creates N tenants and then runs one new migration (a column and an
//! index) on every one of them, on this single server and on a Citus
//! coordinator with one worker (`testing::CitusDatabase`, so Citus must be
//! installed), and prints `RESULT scenario=<create|migrate> mode=<single|citus>
//! tenants=<N> total_ms=<t> ms_per_tenant=<x> single_ms_per_tenant=<s>
//! vs_single=<ratio>`.
//!
//! The checkout scenarios check a connection out and run a primary-key lookup
//! `ops` times: on a plain pool whose connections sit on one tenant's path
//! (diesel's r2d2 pool, or diesel-async's deadpool or bb8 pool, each with its
//! default liveness check), on a tenant pool serving that same tenant, and on
//! another tenant pool switching among all tenants (by `--mix`). Each variant
//! has pools of its own. The variants take turns in 100 rounds, in a new random
//! order each round, so that this machine's drift in speed, and any effect one
//! variant has on the next, falls on all alike; with `--threads T`, each turn's
//! operations are shared out among the T threads, and the figures per
//! operation are the turn's wall time over all its operations. Before
//! measuring they pin this process to the first CPU and the local server's
//! processes to the last (`taskset`), so that every pool's round trips cross
//! between the same two CPUs. They print `RESULT scenario=checkout
//! mix=<uniform|zipf> threads=<t> pool=<p> warm_hits=<fraction> ops=<n>
//! plain_us=<x> same_us=<x> switch_us=<x> same_ratio=<r> switch_ratio=<r>
//! plain_again_us=<x> aa_ratio=<r>`, a ratio being the tenant pool's throughput
//! over the plain pool's; `warm_hits` is the share of the switching pool's
//! checkouts during the measured turns that found their tenant's path already
//! in place (1 - path_sets/scoped of its `stats()`); `aa_ratio` compares the
//! plain pool with a second, identical plain pool measured alongside, so it
//! shows how far from 1.000 two equal things land in that run. One `COST` line
//! per variant gives the wall time, this process's CPU time and the server's
//! CPU time per operation. `checkout` adds the floor for switching, a plain
//! pool setting the path by hand (tenants by the same mix) with the same two
//! round trips per checkout and lookup (`RESULT scenario=checkout-floor ops=<n>
//! plain_us=<x> floor_switch_us=<x> switch_us=<x> switch_vs_floor=<r>`).
//! `checkout-async` measures the sync pool first, in the same run, then the
//! async tenant pool on each of diesel-async's pools against a plain pool of
//! the same kind (the eight variants taking turns together; with `--threads`
//! above 1 on a multi-threaded tokio runtime, each client thread driving its
//! operations with `block_on`), and prints one line per pool: `RESULT
//! scenario=checkout-async kind=<deadpool|bb8> mix=... threads=... pool=...`
//! with the keys of `checkout`. `--recycle N` sets the switching pool's recycle
//! rule (distinct schemas; 0 for never).
//!
//! `http` serves the same handler (list a tenant's customers through
//! `TenantDb`, the tutorial's extractor) two ways on loopback: behind
//! `TenancyLayer` with the tenant pool, and on a plain r2d2 pool pinned to one
//! tenant without the layer. The resolver's cache holds every tenant's domain
//! before the first request (and keeps it for the run), so that the tenant
//! pool's checkouts are the handler's alone. A built-in load generator sends
//! `ops` keep-alive requests from `--threads` connections to each, with `Host:
//! t<i>.localhost` (`i` by `--mix`), and a third variant sends every request to
//! one tenant through the layer. It prints `RESULT scenario=http
//! mix=<uniform|zipf> warm_hits=<fraction> requests=<n> plain_rps=<x>
//! tenant_rps=<x> ratio=<r> plain_p99_ms=<x> tenant_p99_ms=<x>
//! same_tenant_rps=<x> same_tenant_ratio=<r> same_tenant_p99_ms=<x>`, where
//! `warm_hits` counts the tenant pool's checkouts during the switching
//! variant's turns.
//!
//! `memory` gives every tenant 50 more tables (each with an index), then reads
//! every tenant once, in order, touching all its tables, through a pool of one
//! connection: with a 64 MB memory cap (`recycle_above_memory_mb`, the schema
//! count off) and with no recycle rule at all. It reads the backend's memory
//! (`pg_backend_memory_contexts`) after every tenant and prints `RESULT
//! scenario=memory tables=<n> tenants=<n> recycled_peak_mb=<x>
//! unrecycled_peak_mb=<x> cap_mb=<x> recycles=<n>`; it fails if the capped peak
//! passes the cap by more than `MEMORY_SAMPLE_NEW_SCHEMAS + 2` tenants' worth.
//!
//! `soak` runs `ops` checkouts over all tenants from 4 threads on a pool of 4
//! (connections replaced after `--recycle` distinct schemas: 1,000 by default
//! as in the pool, 0 for never): one in 20 borrows is a misbehaving borrower
//! drawn from the catalog of `tests/common/misbehave.rs` (all but the ones that
//! panic or need an async cancellation), one in 20 writes a row, the rest read
//! and check. It samples each backend's memory (`pg_backend_memory_contexts`)
//! every 100 operations per thread, counts the writes reported committed that a
//! fresh pool cannot find, and prints `RESULT scenario=soak tenants=<n> ops=<n>
//! recycle_after=<n> misbehaving_borrows=<n> ops_per_s=<x> wrong_reads=<n>
//! lost_writes=<n> leaked_connections=<n> peak_backend_mb=<x>
//! peak_pool_size=<n>`.
#![allow(missing_docs)]

#[path = "../../tests/common/misbehave.rs"]
mod misbehave;

mod checkout;
mod fixture;
mod http;
mod measure;
mod memory;
mod migrate;
mod soak;

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use diesel_tenancy::testing::TestDatabase;
use diesel_tenancy::{ScopeStats, TenantPool, run_shared_migrations};

use fixture::{SHARED, TenantSet};

const USAGE: &str = "usage: bench <create|migrate|noop|citus|checkout|checkout-async|http|memory|soak> \
     [--tenants N] [--jobs J] [--ops N] [--recycle N] [--mix uniform|zipf] [--threads T] [--pool P]";

struct Args {
    scenario: String,
    tenants: usize,
    jobs: usize,
    ops: usize,
    recycle: u64,
    mix: MixKind,
    threads: Option<usize>,
    pool: Option<u32>,
}

fn args() -> Result<Args> {
    let mut it = std::env::args().skip(1);
    let scenario = it.next().context(USAGE)?;
    let mut args = Args {
        scenario,
        tenants: 1000,
        jobs: 2,
        ops: 50_000,
        recycle: 1000,
        mix: MixKind::Uniform,
        threads: None,
        pool: None,
    };
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--tenants" => args.tenants = value.parse()?,
            "--jobs" => args.jobs = value.parse()?,
            "--ops" => args.ops = value.parse()?,
            "--recycle" => args.recycle = value.parse()?,
            "--mix" => args.mix = MixKind::parse(&value)?,
            "--threads" => args.threads = Some(value.parse()?),
            "--pool" => args.pool = Some(value.parse()?),
            other => bail!("unknown option {other}\n{USAGE}"),
        }
    }
    ensure!(args.threads != Some(0), "--threads needs at least 1");
    ensure!(args.pool != Some(0), "--pool needs at least 1");
    Ok(args)
}

/// What every scenario starts from: the database, a pool on it with the shared
/// migrations run, the tenant migrations and the options.
pub(crate) struct Bench {
    pub(crate) db: TestDatabase,
    pub(crate) pool: TenantPool,
    pub(crate) set: TenantSet,
    /// Tenants to create.
    pub(crate) n: usize,
    pub(crate) jobs: usize,
    pub(crate) ops: usize,
    /// `--recycle`: distinct schemas before a connection is replaced, 0 for never.
    pub(crate) recycle: u64,
    mix: MixKind,
    threads: Option<usize>,
    pool_size: Option<u32>,
}

impl Bench {
    /// The switching pool's recycle rule.
    pub(crate) fn recycle_rule(&self) -> Option<u64> {
        (self.recycle > 0).then_some(self.recycle)
    }

    /// The load options, with a scenario's own defaults for threads and pool size.
    pub(crate) fn load(&self, threads: usize, pool: u32) -> Load {
        Load {
            mix: self.mix,
            threads: self.threads.unwrap_or(threads),
            pool: self.pool_size.unwrap_or(pool),
        }
    }
}

/// `--mix`, `--threads` and `--pool` as a scenario applies them.
#[derive(Clone, Copy)]
pub(crate) struct Load {
    pub(crate) mix: MixKind,
    pub(crate) threads: usize,
    pub(crate) pool: u32,
}

fn main() -> Result<()> {
    let args = args()?;
    let db = TestDatabase::new()?;
    let pool = TenantPool::builder(db.url())
        .max_size(args.jobs as u32 + 1)
        .build()?;
    run_shared_migrations(&mut *pool.public()?, SHARED)?;
    let set = TenantSet::new()?;
    eprintln!(
        "bench: scenario {}, {} tenants, {} jobs, {} cores",
        args.scenario,
        args.tenants,
        args.jobs,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let bench = Bench {
        db,
        pool,
        set,
        n: args.tenants,
        jobs: args.jobs,
        ops: args.ops,
        recycle: args.recycle,
        mix: args.mix,
        threads: args.threads,
        pool_size: args.pool,
    };
    match args.scenario.as_str() {
        "create" => migrate::create(&bench),
        "migrate" => migrate::migrate(&bench),
        "citus" => migrate::citus(&bench),
        "noop" => migrate::noop(&bench),
        "http" => http::http(&bench),
        "memory" => memory::memory(&bench),
        "soak" => soak::soak(&bench),
        "checkout" => checkout::sync(&bench),
        "checkout-async" => checkout::asynchronous(&bench),
        other => bail!("unknown scenario {other:?}\n{USAGE}"),
    }
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// xorshift64: the benches' tenant choices, the same on every run.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(stream: u64) -> Self {
        Rng(0x9e37_79b9_7f4a_7c15 ^ stream)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Fisher-Yates.
    pub(crate) fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, (self.next() % (i as u64 + 1)) as usize);
        }
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// `--mix`: how the switching variants pick their tenants.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum MixKind {
    Uniform,
    Zipf,
}

impl MixKind {
    fn parse(value: &str) -> Result<Self> {
        match value {
            "uniform" => Ok(MixKind::Uniform),
            "zipf" => Ok(MixKind::Zipf),
            other => bail!("--mix is uniform or zipf, not {other:?}"),
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            MixKind::Uniform => "uniform",
            MixKind::Zipf => "zipf",
        }
    }
}

/// The exponent of `--mix zipf`.
const ZIPF_EXPONENT: f64 = 1.1;

/// Maps random numbers to indices of `n` tenants by a [`MixKind`]: uniformly
/// (`r % n`), or by Zipf's law, index `i` having rank `i + 1` and weight
/// `1 / (i + 1)^1.1`, through the precomputed cumulative distribution.
pub(crate) struct Mix {
    kind: MixKind,
    n: usize,
    /// For Zipf: the probability of an index at most `i`, at `i`.
    cdf: Vec<f64>,
}

impl Mix {
    pub(crate) fn new(kind: MixKind, n: usize) -> Self {
        let mut cdf = Vec::new();
        if kind == MixKind::Zipf {
            let mut total = 0.0;
            for rank in 1..=n {
                total += (rank as f64).powf(-ZIPF_EXPONENT);
                cdf.push(total);
            }
            cdf.iter_mut().for_each(|p| *p /= total);
        }
        Mix { kind, n, cdf }
    }

    /// The tenant index for the random number `r`.
    pub(crate) fn index(&self, r: u64) -> usize {
        match self.kind {
            MixKind::Uniform => (r % self.n as u64) as usize,
            MixKind::Zipf => {
                // The top 53 bits, as a float in [0, 1).
                let u = (r >> 11) as f64 / (1u64 << 53) as f64;
                self.cdf.partition_point(|&p| p <= u).min(self.n - 1)
            }
        }
    }

    /// A sequence of tenants of its own, from the random numbers of `stream`.
    pub(crate) fn picker(&self, stream: u64) -> Picker<'_> {
        Picker {
            rng: Rng::new(stream),
            mix: self,
        }
    }
}

/// One thread's sequence of tenants under a [`Mix`].
pub(crate) struct Picker<'m> {
    rng: Rng,
    mix: &'m Mix,
}

impl Picker<'_> {
    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        debug_assert_eq!(items.len(), self.mix.n);
        &items[self.mix.index(self.rng.next())]
    }
}

/// The share of a pool's checkouts that found the path in place, from the
/// differences of its counters ([`ScopeStats`]) over the runs measured.
#[derive(Default, Clone, Copy)]
pub(crate) struct Warm {
    scoped: u64,
    path_sets: u64,
}

impl Warm {
    pub(crate) fn add(&mut self, before: ScopeStats, after: ScopeStats) {
        self.scoped += after.scoped - before.scoped;
        self.path_sets += after.path_sets - before.path_sets;
    }

    /// `1 - path_sets / scoped`.
    pub(crate) fn hits(&self) -> f64 {
        if self.scoped == 0 {
            return 0.0;
        }
        1.0 - self.path_sets as f64 / self.scoped as f64
    }
}
