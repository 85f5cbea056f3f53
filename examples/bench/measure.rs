//! Measuring: CPU meters, the `COST` lines, pinning to CPUs, and the client
//! threads that run the variants in interleaved turns.

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use diesel_tenancy::ScopeStats;

use crate::{Rng, Warm};

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
pub(crate) struct Cost {
    /// Wall-clock time.
    pub(crate) wall: f64,
    /// CPU time of this process (the pool, Diesel, libpq, the runtime).
    client: f64,
    /// CPU time of the PostgreSQL server's processes.
    server: f64,
}

/// Sums (wall, client, server) and operations over the turns of one variant.
#[derive(Default)]
struct Meter {
    wall: Duration,
    client_ns: u64,
    server_ns: u64,
    ops: usize,
}

impl Meter {
    fn start() -> (Instant, (u64, u64)) {
        (Instant::now(), cpu_ns())
    }

    fn stop(&mut self, (started, (c0, s0)): (Instant, (u64, u64)), ops: usize) {
        self.wall += started.elapsed();
        let (c1, s1) = cpu_ns();
        self.client_ns += c1.saturating_sub(c0);
        self.server_ns += s1.saturating_sub(s0);
        self.ops += ops;
    }

    fn per_op(&self) -> Cost {
        let ops = self.ops as f64;
        Cost {
            wall: self.wall.as_secs_f64() * 1e6 / ops,
            client: self.client_ns as f64 / 1e3 / ops,
            server: self.server_ns as f64 / 1e3 / ops,
        }
    }
}

/// Prints where each variant's time went: one `COST` line per variant.
pub(crate) fn print_costs(scenario: &str, names: &[&str], costs: &[Cost]) {
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
pub(crate) fn pin_processes() {
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

/// The order of the interleaved turns: `rounds` rounds, each a new random
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

/// Lets `variants` variants take turns in `rounds` rounds (see [`turns`]):
/// `turn(number, variant)` does one turn's work and returns how many
/// operations it did. Returns each variant's figures per operation.
pub(crate) fn take_turns(
    variants: usize,
    rounds: usize,
    mut turn: impl FnMut(usize, usize) -> Result<usize>,
) -> Result<Vec<Cost>> {
    let mut meters: Vec<Meter> = (0..variants).map(|_| Meter::default()).collect();
    for (number, v) in turns(variants, rounds).into_iter().enumerate() {
        let started = Meter::start();
        let ops = turn(number, v)?;
        meters[v].stop(started, ops);
    }
    Ok(meters.iter().map(Meter::per_op).collect())
}

/// One client thread's part of a variant: `worker(k)` runs k operations.
pub(crate) type Worker<'a> = Box<dyn FnMut(usize) -> Result<()> + Send + 'a>;

/// A variant for `threads` client threads, thread `t` running the operation
/// `make(t)` returns (so each thread can have a sequence of its own).
pub(crate) fn variant<'a, F>(threads: usize, make: impl Fn(usize) -> F) -> Vec<Worker<'a>>
where
    F: FnMut() -> Result<()> + Send + 'a,
{
    (0..threads)
        .map(|t| {
            let mut op = make(t);
            Box::new(move |calls: usize| (0..calls).try_for_each(|_| op())) as Worker<'a>
        })
        .collect()
}

pub(crate) type BoxFuture<'a> = std::pin::Pin<Box<dyn Future<Output = Result<()>> + 'a>>;

/// [`variant`] for async operations: each thread runs its share of a turn in
/// one `block_on` of `rt`.
pub(crate) fn async_variant<'a, F>(
    rt: &'a tokio::runtime::Runtime,
    threads: usize,
    make: impl Fn(usize) -> F,
) -> Vec<Worker<'a>>
where
    F: FnMut() -> BoxFuture<'a> + Send + 'a,
{
    (0..threads)
        .map(|t| {
            let mut op = make(t);
            Box::new(move |calls: usize| {
                rt.block_on(async {
                    for _ in 0..calls {
                        op().await?;
                    }
                    Ok(())
                })
            }) as Worker<'a>
        })
        .collect()
}

/// Warms up every variant (`ops / 10` operations each), then runs `ops`
/// operations of each in [`ROUNDS`] interleaved rounds, so that drift in this
/// machine's speed during the run, and any effect one variant has on the next,
/// falls on every variant alike. `variants[v][t]` is client thread `t`'s
/// worker of variant `v`. Returns each variant's figures per operation and,
/// for each of `counters` (a pool's `stats`), the warm hits over the measured
/// rounds.
pub(crate) fn interleave(
    ops: usize,
    variants: Vec<Vec<Worker<'_>>>,
    counters: &[&dyn Fn() -> ScopeStats],
) -> Result<(Vec<Cost>, Vec<Warm>)> {
    let count = variants.len();
    with_clients(variants, |run| {
        for v in 0..count {
            run(v, ops / 10)?;
        }
        let before: Vec<ScopeStats> = counters.iter().map(|stats| stats()).collect();
        let calls = ops / ROUNDS;
        let costs = take_turns(count, ROUNDS, |_, v| run(v, calls).map(|()| calls))?;
        let mut warm = vec![Warm::default(); counters.len()];
        for ((w, stats), before) in warm.iter_mut().zip(counters).zip(before) {
            w.add(before, stats());
        }
        Ok((costs, warm))
    })
}

/// Calls `body` with a function that runs `calls` operations of a variant,
/// shared out among the client threads. With one client the workers run on
/// this thread; with more, each client is a thread of its own for the whole
/// of `body` (so that its CPU time stays in `/proc/self/task`), told what to
/// run over a channel.
fn with_clients<'a, R>(
    variants: Vec<Vec<Worker<'a>>>,
    body: impl FnOnce(&mut dyn FnMut(usize, usize) -> Result<()>) -> Result<R>,
) -> Result<R> {
    let threads = variants.first().map_or(1, Vec::len);
    // Each client's workers, one per variant.
    let mut clients: Vec<Vec<Worker<'a>>> = (0..threads).map(|_| Vec::new()).collect();
    for workers in variants {
        for (client, worker) in clients.iter_mut().zip(workers) {
            client.push(worker);
        }
    }
    if threads == 1 {
        let mut workers = clients.pop().expect("one client");
        return body(&mut |v, calls| workers[v](calls));
    }
    std::thread::scope(|s| {
        let (done_tx, done) = mpsc::channel::<Result<()>>();
        let orders: Vec<mpsc::Sender<(usize, usize)>> = clients
            .into_iter()
            .map(|mut workers| {
                let (order_tx, orders) = mpsc::channel::<(usize, usize)>();
                let done = done_tx.clone();
                s.spawn(move || {
                    for (v, calls) in orders {
                        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            workers[v](calls)
                        }));
                        let run = run.unwrap_or_else(|_| Err(anyhow!("a client thread panicked")));
                        if done.send(run).is_err() {
                            return;
                        }
                    }
                });
                order_tx
            })
            .collect();
        let mut run = |v: usize, calls: usize| -> Result<()> {
            for (t, order) in orders.iter().enumerate() {
                let share = calls / threads + usize::from(t < calls % threads);
                order.send((v, share)).context("a client thread is gone")?;
            }
            // Every client's answer, then the first failure if any.
            let mut failure = None;
            for _ in 0..threads {
                if let Err(e) = done.recv().context("a client thread is gone")? {
                    failure.get_or_insert(e);
                }
            }
            failure.map_or(Ok(()), Err)
        };
        body(&mut run)
    })
}
