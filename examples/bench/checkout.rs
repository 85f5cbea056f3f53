//! `checkout` (with `checkout-floor`) and `checkout-async`: a checkout and a
//! primary-key lookup on plain pools and on tenant pools, in interleaved turns.

use anyhow::{Result, ensure};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use diesel_tenancy::{AsyncTenantPool, AsyncTenantPoolBuilder, ScopeStats, Tenant, TenantPool};
use tokio::runtime::Runtime;

use crate::fixture::{PlainPool, customers, lookup, plain_pool, tenants};
use crate::measure::{
    BoxFuture, Cost, Worker, async_variant, interleave, pin_processes, print_costs, variant,
};
use crate::{Bench, Load, Mix, Warm};

/// The tenants a run switches among, how it picks them, and its client threads.
#[derive(Clone, Copy)]
struct Run<'a> {
    tenants: &'a [Tenant],
    mix: &'a Mix,
    threads: usize,
}

impl<'a> Run<'a> {
    /// The tenant the plain pools and the one-tenant pools serve.
    fn first(&self) -> &'a Tenant {
        &self.tenants[0]
    }
}

/// The `RESULT` line of a checkout scenario. `aa_ratio` compares the plain
/// pool with a second, identical plain pool measured alongside: how far from
/// 1.000 two equal things land in this run (this machine's noise floor for
/// the other ratios).
fn line(scenario: &str, load: Load, warm: Warm, ops: usize, costs: &[Cost]) {
    let (plain, same, switch, again) = (costs[0].wall, costs[1].wall, costs[2].wall, costs[3].wall);
    println!(
        "RESULT scenario={scenario} mix={} threads={} pool={} warm_hits={:.3} ops={ops} plain_us={plain:.1} same_us={same:.1} switch_us={switch:.1} same_ratio={:.3} switch_ratio={:.3} plain_again_us={again:.1} aa_ratio={:.3}",
        load.mix.name(),
        load.threads,
        load.pool,
        warm.hits(),
        plain / same,
        plain / switch,
        plain / again
    );
}

/// The defaults of `--threads` and `--pool` in the checkout scenarios.
fn checkout_load(b: &Bench) -> Load {
    b.load(1, 2)
}

pub(crate) fn sync(b: &Bench) -> Result<()> {
    let tenants = tenants(b)?;
    measure_sync(b, &tenants, checkout_load(b))
}

/// The sync variants' pools, one (or a pair) each.
struct SyncPools {
    plain: PlainPool,
    /// A tenant pool serving one tenant.
    same: TenantPool,
    /// A tenant pool switching among all tenants.
    switch: TenantPool,
    plain_again: PlainPool,
    /// The floor for switching: a plain pool on whose connections the path is
    /// set by hand, with the same round trips as the tenant pool (two per
    /// checkout and lookup): r2d2's own liveness check is off and the
    /// statement that sets the path is the check (it fails on a dead
    /// connection).
    by_hand: PlainPool,
}

impl SyncPools {
    /// Each variant's backends hold only what that variant touched, as in an
    /// application.
    fn new(b: &Bench, first: &Tenant, size: u32) -> Result<Self> {
        let url = b.db.url();
        Ok(SyncPools {
            plain: plain_pool(url, first, size)?,
            same: TenantPool::builder(url).max_size(size).build()?,
            switch: TenantPool::builder(url)
                .max_size(size)
                .recycle_after_schemas(b.recycle_rule())
                .build()?,
            plain_again: plain_pool(url, first, size)?,
            by_hand: Pool::builder()
                .max_size(size)
                .test_on_check_out(false)
                .build(ConnectionManager::<PgConnection>::new(url))?,
        })
    }
}

/// plain, same, switch, plain_again and floor_switch, in that order.
fn sync_variants<'a>(pools: &'a SyncPools, run: Run<'a>) -> Vec<Vec<Worker<'a>>> {
    let first = run.first();
    let on_first = |pool: &'a PlainPool| {
        variant(run.threads, move |_| {
            move || -> Result<()> {
                ensure!(lookup(&mut *pool.get()?)? == first.schema().as_str());
                Ok(())
            }
        })
    };
    let same = variant(run.threads, move |_| {
        move || -> Result<()> {
            ensure!(lookup(&mut *pools.same.get(first)?)? == first.schema().as_str());
            Ok(())
        }
    });
    // Seeds 0 and 1 for the first thread's switching and floor sequences.
    let switch = variant(run.threads, |t| {
        let mut picker = run.mix.picker(2 * t as u64);
        move || -> Result<()> {
            let t = picker.pick(run.tenants);
            ensure!(
                lookup(&mut *pools.switch.get(t)?)? == t.schema().as_str(),
                "wrong tenant"
            );
            Ok(())
        }
    });
    let floor = variant(run.threads, |t| {
        let mut picker = run.mix.picker(2 * t as u64 + 1);
        move || -> Result<()> {
            let t = picker.pick(run.tenants);
            let mut conn = pools.by_hand.get()?;
            conn.batch_execute(&format!(
                "SET search_path TO {}, public",
                t.schema().quoted()
            ))?;
            ensure!(lookup(&mut conn)? == t.schema().as_str(), "wrong tenant");
            Ok(())
        }
    });
    vec![
        on_first(&pools.plain),
        same,
        switch,
        on_first(&pools.plain_again),
        floor,
    ]
}

fn measure_sync(b: &Bench, tenants: &[Tenant], load: Load) -> Result<()> {
    pin_processes();
    let ops = b.ops;
    let mix = Mix::new(load.mix, tenants.len());
    let run = Run {
        tenants,
        mix: &mix,
        threads: load.threads,
    };
    let pools = SyncPools::new(b, run.first(), load.pool)?;
    let switch_stats = || pools.switch.stats();
    let (costs, warm) = interleave(ops, sync_variants(&pools, run), &[&switch_stats])?;
    print_costs(
        "checkout",
        &["plain", "same", "switch", "plain_again", "floor_switch"],
        &costs,
    );
    let (plain_us, switch_us, floor_switch_us) = (costs[0].wall, costs[2].wall, costs[4].wall);
    line("checkout", load, warm[0], ops, &costs);
    println!(
        "RESULT scenario=checkout-floor ops={ops} plain_us={plain_us:.1} floor_switch_us={floor_switch_us:.1} switch_us={switch_us:.1} switch_vs_floor={:.3}",
        floor_switch_us / switch_us
    );
    Ok(())
}

/// diesel-async's pools, in the order they are measured and reported.
const KINDS: [&str; 2] = ["deadpool", "bb8"];

/// diesel-async's own pool of one kind, no tenancy.
enum Plain {
    Deadpool(diesel_async::pooled_connection::deadpool::Pool<AsyncPgConnection>),
    Bb8(diesel_async::pooled_connection::bb8::Pool<AsyncPgConnection>),
}

impl Plain {
    /// A plain pool of `kind` (its default liveness check, diesel-async's
    /// `Verified` recycling) whose connections sit on `tenant`'s path.
    async fn new(url: &str, kind: &str, tenant: &Tenant, size: u32) -> Result<Self> {
        let mut config = ManagerConfig::<AsyncPgConnection>::default();
        let path = tenant.schema().quoted();
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
        let manager = AsyncDieselConnectionManager::new_with_config(url, config);
        Ok(match kind {
            "deadpool" => Plain::Deadpool(
                diesel_async::pooled_connection::deadpool::Pool::builder(manager)
                    .max_size(size as usize)
                    .build()?,
            ),
            _ => Plain::Bb8(
                diesel_async::pooled_connection::bb8::Pool::builder()
                    .max_size(size)
                    .build(manager)
                    .await?,
            ),
        })
    }

    async fn lookup(&self) -> Result<String> {
        Ok(match self {
            Plain::Deadpool(pool) => lookup_async(&mut *pool.get().await?).await?,
            Plain::Bb8(pool) => lookup_async(&mut *pool.get().await?).await?,
        })
    }
}

async fn lookup_async(conn: &mut AsyncPgConnection) -> QueryResult<String> {
    let query = customers::table.find(1).select(customers::name);
    diesel_async::RunQueryDsl::first(query, conn).await
}

/// One kind's variants' pools: a plain pool, one tenant pool serving one
/// tenant and another switching (each variant's backends hold only what that
/// variant touched, as in an application), and a second plain pool (the run's
/// noise floor).
struct AsyncPools {
    plain: Plain,
    same: AsyncTenantPool,
    switch: AsyncTenantPool,
    plain_again: Plain,
}

impl AsyncPools {
    async fn new(b: &Bench, kind: &str, first: &Tenant, size: u32) -> Result<Self> {
        let url = b.db.url();
        let tenant_pool = |builder: AsyncTenantPoolBuilder| match kind {
            "deadpool" => builder.build_deadpool(),
            _ => builder.build_bb8(),
        };
        Ok(AsyncPools {
            plain: Plain::new(url, kind, first, size).await?,
            same: tenant_pool(AsyncTenantPool::builder(url).max_size(size as usize))?,
            switch: tenant_pool(
                AsyncTenantPool::builder(url)
                    .max_size(size as usize)
                    .recycle_after_schemas(b.recycle_rule()),
            )?,
            plain_again: Plain::new(url, kind, first, size).await?,
        })
    }
}

/// One kind's plain, same, switch and plain_again variants; `kind` (its index
/// in [`KINDS`]) seeds the first thread's switching sequence.
fn async_variants<'a>(
    rt: &'a Runtime,
    pools: &'a AsyncPools,
    run: Run<'a>,
    kind: usize,
) -> Vec<Vec<Worker<'a>>> {
    let first = run.first();
    let on_first = |pool: &'a Plain| {
        async_variant(rt, run.threads, move |_| {
            move || -> BoxFuture<'a> {
                Box::pin(async move {
                    ensure!(pool.lookup().await? == first.schema().as_str());
                    Ok(())
                })
            }
        })
    };
    let same = async_variant(rt, run.threads, move |_| {
        move || -> BoxFuture<'a> {
            Box::pin(async move {
                let mut conn = pools.same.get(first).await?;
                ensure!(lookup_async(&mut conn).await? == first.schema().as_str());
                Ok(())
            })
        }
    });
    let switch = async_variant(rt, run.threads, |t| {
        let mut picker = run.mix.picker((kind + KINDS.len() * t) as u64);
        move || -> BoxFuture<'a> {
            let t = picker.pick(run.tenants);
            Box::pin(async move {
                let mut conn = pools.switch.get(t).await?;
                ensure!(
                    lookup_async(&mut conn).await? == t.schema().as_str(),
                    "wrong tenant"
                );
                Ok(())
            })
        }
    });
    vec![
        on_first(&pools.plain),
        same,
        switch,
        on_first(&pools.plain_again),
    ]
}

/// The runtime of `checkout-async`: one thread as in a single-threaded
/// client, or, for several client threads, a multi-threaded runtime that
/// drives the connections while the client threads `block_on` their
/// operations.
fn runtime(threads: usize) -> Result<Runtime> {
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    Ok(builder.enable_all().build()?)
}

pub(crate) fn asynchronous(b: &Bench) -> Result<()> {
    let tenants = tenants(b)?;
    let load = checkout_load(b);
    // The sync pool in the same run, for comparison.
    measure_sync(b, &tenants, load)?;
    let mix = Mix::new(load.mix, tenants.len());
    let run = Run {
        tenants: &tenants,
        mix: &mix,
        threads: load.threads,
    };
    let rt = runtime(load.threads)?;
    // The pools are built, and dropped, inside the runtime.
    let _context = rt.enter();
    let kinds = rt.block_on(async {
        let mut kinds = Vec::new();
        for kind in KINDS {
            kinds.push(AsyncPools::new(b, kind, run.first(), load.pool).await?);
        }
        anyhow::Ok(kinds)
    })?;
    // All eight variants take turns together.
    let variants = kinds
        .iter()
        .enumerate()
        .flat_map(|(i, pools)| async_variants(&rt, pools, run, i))
        .collect();
    let switch_stats: Vec<Box<dyn Fn() -> ScopeStats + '_>> = kinds
        .iter()
        .map(|pools| Box::new(|| pools.switch.stats()) as Box<dyn Fn() -> ScopeStats>)
        .collect();
    let counters: Vec<&dyn Fn() -> ScopeStats> = switch_stats.iter().map(|f| &**f).collect();
    let (costs, warm) = interleave(b.ops, variants, &counters)?;
    for ((kind, costs), warm) in KINDS.iter().zip(costs.chunks(4)).zip(warm) {
        let scenario = format!("checkout-async kind={kind}");
        print_costs(
            &scenario,
            &["plain", "same", "switch", "plain_again"],
            costs,
        );
        line(&scenario, load, warm, b.ops, costs);
    }
    Ok(())
}
