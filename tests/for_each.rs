//! `for_each_tenant` on the sync pool and on both async pools: a value or an
//! error per tenant in schema order, a transaction per tenant, fail-fast,
//! the choice of tenants, panics, and many tenants run at once, each call
//! seeing only its own tenant's rows.
#![allow(missing_docs)]

mod common;
#[macro_use]
#[path = "common/async_pools.rs"]
mod async_pools;

use std::panic::panic_any;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use common::{Rng, customers, markers, setup, tenants_with_markers};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_tenancy::testing::TestDatabase;
use diesel_tenancy::{
    AsyncTenantPool, Error, ForEachOptions, ForEachProgress, ForEachReport, RunOutcome, SchemaName,
    Tenant, TenantPool, TenantStatus, current_tenant,
};

const DELIBERATE: &str = "deliberate panic in a for_each_tenant closure";

/// Keeps the deliberate panics of these tests out of the output.
fn quiet_deliberate_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<&str>() != Some(&DELIBERATE) {
                default(info);
            }
        }));
    });
}

fn schema(name: &str) -> SchemaName {
    SchemaName::new(name).unwrap()
}

/// The schemas of a report, in its order.
fn schemas<T, E>(report: &ForEachReport<T, E>) -> Vec<String> {
    report
        .tenants
        .iter()
        .map(|r| r.tenant.schema().to_string())
        .collect()
}

/// How many customers named `name` the tenant has.
fn named(pool: &TenantPool, tenant: &Tenant, name: &str) -> i64 {
    pool.with_tenant(tenant, |conn| {
        customers::table
            .filter(customers::name.eq(name))
            .count()
            .get_result(conn)
    })
    .unwrap()
}

/// A unique email for each row a test writes.
fn email() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{}@example.com", N.fetch_add(1, Ordering::Relaxed))
}

fn insert(conn: &mut PgConnection, name: &str) -> QueryResult<usize> {
    diesel::insert_into(customers::table)
        .values((customers::name.eq(name), customers::email.eq(email())))
        .execute(conn)
}

/// The schema at the head of the path.
fn head(conn: &mut PgConnection) -> QueryResult<String> {
    diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(
        "current_schema()::text",
    ))
    .get_result(conn)
}

fn suspend(pool: &TenantPool, name: &str) {
    diesel_tenancy::suspend_tenant(&mut pool.public().unwrap(), &schema(name)).unwrap();
}

#[test]
fn values_come_back_per_tenant_in_schema_order() {
    let (_db, pool) = setup(4);
    // Created out of order: the report is in schema order all the same.
    tenants_with_markers(&pool, "vb", 2);
    tenants_with_markers(&pool, "va", 2);
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&events);
    let options = ForEachOptions::new()
        .jobs(3)
        .on_progress(move |event| match event {
            ForEachProgress::Started { tenant, total, .. } => {
                seen.lock()
                    .unwrap()
                    .push(format!("start {} of {total}", tenant.schema()));
            }
            ForEachProgress::Finished {
                tenant,
                error,
                done,
                ..
            } => seen.lock().unwrap().push(format!(
                "done {} {} {done}",
                tenant.schema(),
                error.is_none()
            )),
            _ => {}
        });
    let report = pool
        .for_each_tenant(&options, |tenant, conn| {
            assert_eq!(head(conn)?, tenant.schema().as_str());
            markers(conn)
        })
        .unwrap();
    assert_eq!(schemas(&report), ["va0", "va1", "vb0", "vb1"]);
    for r in &report.tenants {
        assert_eq!(
            r.outcome,
            RunOutcome::Done(vec![r.tenant.schema().to_string()])
        );
    }
    let totals = report.totals();
    assert_eq!((totals.tenants, totals.done, totals.failed), (4, 4, 0));
    assert!(report.is_success());
    assert_eq!(
        report.tenant("vb1").unwrap().outcome.value().unwrap(),
        &["vb1"]
    );

    let events = events.lock().unwrap();
    assert_eq!(events.len(), 8, "{events:?}");
    assert!(events.contains(&"start va0 of 4".to_owned()), "{events:?}");
    assert!(events.iter().any(|e| e.ends_with("true 4")), "{events:?}");

    // Aggregating one query over every tenant: each returns its count, the
    // caller merges them.
    let counts = pool
        .for_each_tenant(&ForEachOptions::new(), |_, conn| {
            customers::table.count().get_result::<i64>(conn)
        })
        .unwrap();
    assert_eq!(counts.values().map(|(_, n)| n).sum::<i64>(), 4);
    let by_tenant = counts.into_result().unwrap();
    assert_eq!(by_tenant.len(), 4);
    assert!(by_tenant.iter().all(|(_, n)| *n == 1));
}

#[test]
fn an_error_rolls_back_that_tenant_only() {
    let (_db, pool) = setup(4);
    let tenants = tenants_with_markers(&pool, "r", 4);
    let failed_events = Arc::new(AtomicUsize::new(0));
    let failed = Arc::clone(&failed_events);
    let options = ForEachOptions::new().jobs(2).on_progress(move |event| {
        if let ForEachProgress::Finished {
            tenant,
            error: Some(e),
            ..
        } = event
        {
            let expected = match tenant.schema().as_str() {
                "r1" => "refused in r1",
                _ => "no_such_table",
            };
            assert!(e.to_string().contains(expected), "{e}");
            failed.fetch_add(1, Ordering::Relaxed);
        }
    });
    let report = pool
        .for_each_tenant(&options, |tenant, conn| {
            insert(conn, "written")?;
            if tenant.schema().as_str() == "r1" {
                anyhow::bail!("refused in r1");
            }
            // A database error after a write rolls the write back too.
            if tenant.schema().as_str() == "r2" {
                conn.batch_execute("SELECT * FROM no_such_table")?;
            }
            Ok(tenant.id())
        })
        .unwrap();
    assert_eq!(failed_events.load(Ordering::Relaxed), 2);
    let totals = report.totals();
    assert_eq!((totals.done, totals.failed, totals.not_run), (2, 2, 0));
    assert!(!report.is_success());
    let failures: Vec<String> = report
        .failures()
        .map(|(t, e)| format!("{}: {e}", t.schema()))
        .collect();
    assert_eq!(failures.len(), 2);
    assert!(failures[0].starts_with("r1: refused in r1"), "{failures:?}");
    assert!(failures[1].contains("no_such_table"), "{failures:?}");
    assert_eq!(
        report.tenant("r0").unwrap().outcome.value(),
        Some(&tenants[0].id())
    );
    for (tenant, expected) in tenants.iter().zip([1, 0, 0, 1]) {
        assert_eq!(
            named(&pool, tenant, "written"),
            expected,
            "{}",
            tenant.schema()
        );
    }
    assert!(report.into_result().unwrap_err().to_string().contains("r1"));
}

#[test]
fn fail_fast_leaves_the_rest_not_run() {
    let (_db, pool) = setup(4);
    tenants_with_markers(&pool, "f", 4);
    let calls = AtomicUsize::new(0);
    let report = pool
        .for_each_tenant(
            &ForEachOptions::new().jobs(1).fail_fast(true),
            |tenant, conn| {
                calls.fetch_add(1, Ordering::Relaxed);
                insert(conn, "written")?;
                if tenant.schema().as_str() == "f1" {
                    return Err(Error::Config {
                        reason: "stop here".into(),
                    });
                }
                Ok(())
            },
        )
        .unwrap();
    assert_eq!(calls.load(Ordering::Relaxed), 2);
    let outcomes: Vec<_> = report.tenants.iter().map(|r| &r.outcome).collect();
    assert!(matches!(outcomes[0], RunOutcome::Done(())));
    assert!(
        matches!(outcomes[1], RunOutcome::Failed(Error::Config { reason }) if reason == "stop here")
    );
    assert!(matches!(outcomes[2], RunOutcome::NotRun));
    assert!(matches!(outcomes[3], RunOutcome::NotRun));
    assert_eq!(report.totals().not_run, 2);
    assert!(matches!(report.into_result(), Err(Error::Config { .. })));
}

#[test]
fn tenants_and_status_choose_who_runs() {
    let (_db, pool) = setup(4);
    let tenants = tenants_with_markers(&pool, "s", 4);
    suspend(&pool, "s1");
    let run = |options: ForEachOptions| {
        pool.for_each_tenant(&options, |tenant, conn| {
            // A suspended tenant sees its own rows and schema too, with the
            // path a checkout sets: its schema, then public.
            let mut seen = markers(conn)?;
            seen.retain(|name| name != "visited");
            assert_eq!(seen, [tenant.schema().as_str()]);
            assert_eq!(head(conn)?, tenant.schema().as_str());
            let path: Vec<String> = diesel::select(diesel::dsl::sql::<
                diesel::sql_types::Array<diesel::sql_types::Text>,
            >("current_schemas(false)::text[]"))
            .get_result(conn)?;
            assert_eq!(path, [tenant.schema().as_str(), "public"]);
            insert(conn, "visited")?;
            Ok::<_, Error>(tenant.status())
        })
    };
    // Default: active tenants.
    let report = run(ForEachOptions::new()).unwrap();
    assert_eq!(schemas(&report), ["s0", "s2", "s3"]);
    // Suspended ones too: the suspended tenant's work commits like the others'.
    let report = run(ForEachOptions::new().include_suspended(true)).unwrap();
    assert_eq!(schemas(&report), ["s0", "s1", "s2", "s3"]);
    assert!(
        report.is_success(),
        "{:?}",
        report.failures().collect::<Vec<_>>()
    );
    assert!(matches!(
        report.tenant("s1").unwrap().outcome,
        RunOutcome::Done(TenantStatus::Suspended)
    ));
    assert_eq!(named(&pool, &tenants[0], "visited"), 2);
    // Suspended ones only.
    let report = run(ForEachOptions::new().status(TenantStatus::Suspended)).unwrap();
    assert_eq!(schemas(&report), ["s1"]);
    assert!(report.is_success());
    // A subset by name, in schema order; a suspended one named without
    // choosing suspended tenants is refused as a checkout refuses it.
    let report = run(ForEachOptions::new().tenants([schema("s3"), schema("s1")])).unwrap();
    assert_eq!(schemas(&report), ["s1", "s3"]);
    assert!(matches!(
        &report.tenants[0].outcome,
        RunOutcome::Failed(Error::TenantSuspended { schema }) if schema == "s1"
    ));
    assert!(matches!(report.tenants[1].outcome, RunOutcome::Done(_)));
    let report = run(ForEachOptions::new()
        .tenants([schema("s1")])
        .include_suspended(true))
    .unwrap();
    assert!(report.is_success());
    // A schema that is not registered fails the run before any tenant runs.
    let calls = AtomicUsize::new(0);
    let err = pool
        .for_each_tenant(
            &ForEachOptions::new().tenants([schema("s0"), schema("nobody")]),
            |_, _| {
                calls.fetch_add(1, Ordering::Relaxed);
                Ok::<_, Error>(())
            },
        )
        .unwrap_err();
    assert!(matches!(err, Error::TenantNotFound { schema } if schema == "nobody"));
    assert_eq!(calls.load(Ordering::Relaxed), 0);
    // An empty subset runs nothing.
    let report = run(ForEachOptions::new().tenants([])).unwrap();
    assert!(report.tenants.is_empty() && report.is_success());
}

#[test]
fn a_suspended_tenant_whose_schema_is_gone_fails_alone() {
    let (_db, pool) = setup(4);
    tenants_with_markers(&pool, "g", 3);
    suspend(&pool, "g1");
    pool.public()
        .unwrap()
        .batch_execute("DROP SCHEMA g1 CASCADE")
        .unwrap();
    let report = pool
        .for_each_tenant(&ForEachOptions::new().include_suspended(true), |_, conn| {
            Ok::<_, Error>(markers(conn)?)
        })
        .unwrap();
    assert!(matches!(
        &report.tenant("g1").unwrap().outcome,
        RunOutcome::Failed(Error::SchemaMissing { schema }) if schema == "g1"
    ));
    assert_eq!(report.totals().done, 2);
}

#[test]
fn a_panic_fails_its_tenant_and_keeps_the_others() {
    quiet_deliberate_panics();
    let (_db, pool) = setup(4);
    let tenants = tenants_with_markers(&pool, "p", 6);
    let report = pool
        .for_each_tenant(&ForEachOptions::new().jobs(3), |tenant, conn| {
            let seen = markers(conn)?;
            insert(conn, "written")?;
            if tenant.schema().as_str() == "p2" {
                panic_any(DELIBERATE);
            }
            Ok::<_, diesel::result::Error>(seen)
        })
        .unwrap();
    assert_eq!(report.tenants.len(), 6);
    for r in &report.tenants {
        if r.tenant.schema().as_str() == "p2" {
            let error = r.outcome.error().expect("p2 failed").to_string();
            assert!(
                error.contains("\"p2\"") && error.contains("panicked"),
                "{error}"
            );
        } else {
            assert_eq!(r.outcome.value().unwrap(), &[r.tenant.schema().as_str()]);
        }
    }
    // The panicking tenant's write is gone, the others' committed, and the
    // pool still scopes every tenant right.
    for t in &tenants {
        let expected = if t.schema().as_str() == "p2" { 0 } else { 1 };
        assert_eq!(named(&pool, t, "written"), expected);
        assert_eq!(
            pool.with_tenant(t, markers).unwrap()[0],
            t.schema().as_str()
        );
    }
}

#[test]
fn a_transaction_scoped_pool_commits_on_ok_and_rolls_back_on_err() {
    let (db, setup_pool) = setup(2);
    let tenants = tenants_with_markers(&setup_pool, "x", 3);
    suspend(&setup_pool, "x2");
    let pool = db
        .pool_builder()
        .max_size(4)
        .transaction_scoped(true)
        .build()
        .unwrap();
    let report = pool
        .for_each_tenant(
            &ForEachOptions::new().jobs(2).include_suspended(true),
            |tenant, conn| {
                assert_eq!(head(conn)?, tenant.schema().as_str());
                insert(conn, "written")?;
                if tenant.schema().as_str() == "x1" {
                    return Err(diesel::result::Error::RollbackTransaction);
                }
                markers(conn)
            },
        )
        .unwrap();
    assert_eq!(report.totals().done, 2);
    diesel_tenancy::activate_tenant(&mut setup_pool.public().unwrap(), &schema("x2")).unwrap();
    let x2 = setup_pool.tenant("x2").unwrap();
    assert_eq!(named(&setup_pool, &tenants[0], "written"), 1);
    assert_eq!(named(&setup_pool, &tenants[1], "written"), 0);
    assert_eq!(named(&setup_pool, &x2, "written"), 1);
}

/// Many tenants, several runs at once on one pool, `jobs` > 1 each, and
/// borrowers that misbehave: every call sees exactly its own tenant's rows.
#[test]
fn concurrent_runs_never_see_another_tenant() {
    const TENANTS: usize = 30;
    const RUNS: usize = 3;
    const ROUNDS: usize = 4;
    const JOBS: usize = 3;
    let (_db, pool) = setup(8);
    let tenants = Arc::new(tenants_with_markers(&pool, "c", TENANTS));
    let reads = Arc::new(AtomicUsize::new(0));
    let wrong = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..RUNS)
        .map(|r| {
            let (pool, tenants) = (pool.clone(), Arc::clone(&tenants));
            let (reads, wrong, peak) = (reads.clone(), wrong.clone(), peak.clone());
            std::thread::spawn(move || {
                let mut rng = Rng::new(0xf0 + r as u64);
                for _ in 0..ROUNDS {
                    let misbehave = rng.below(TENANTS);
                    let other = tenants[rng.below(TENANTS)].schema().quoted();
                    let running = AtomicUsize::new(0);
                    let report = pool
                        .for_each_tenant(&ForEachOptions::new().jobs(JOBS), |tenant, conn| {
                            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                            peak.fetch_max(now, Ordering::SeqCst);
                            let seen = markers(conn)?;
                            reads.fetch_add(1, Ordering::Relaxed);
                            if seen != [tenant.schema().as_str()]
                                || head(conn)? != tenant.schema().as_str()
                            {
                                wrong.fetch_add(1, Ordering::Relaxed);
                            }
                            std::thread::sleep(Duration::from_millis(1));
                            running.fetch_sub(1, Ordering::SeqCst);
                            if tenant.schema().as_str() == format!("c{misbehave}") {
                                // Leaves another tenant's path behind, for the
                                // session, and fails.
                                conn.batch_execute(&format!("SET search_path TO {other}"))?;
                                return Err(diesel::result::Error::RollbackTransaction);
                            }
                            Ok(seen.len())
                        })
                        .unwrap();
                    assert_eq!(report.tenants.len(), TENANTS);
                    assert_eq!(report.totals().failed, 1);
                }
            })
        })
        .collect();
    // Plain borrowers at the same time.
    let mut rng = Rng::new(7);
    for _ in 0..200 {
        let t = &tenants[rng.below(TENANTS)];
        assert_eq!(pool.with_tenant(t, markers).unwrap(), [t.schema().as_str()]);
    }
    for t in threads {
        t.join().unwrap();
    }
    let (reads, wrong) = (reads.load(Ordering::Relaxed), wrong.load(Ordering::Relaxed));
    println!(
        "for_each_tenant isolation: {RUNS} runs x {ROUNDS} rounds x {TENANTS} tenants, {reads} checked reads, {wrong} wrong-tenant reads, peak {} calls in one run",
        peak.load(Ordering::SeqCst)
    );
    assert_eq!(reads, RUNS * ROUNDS * TENANTS);
    assert_eq!(wrong, 0);
    let peak = peak.load(Ordering::SeqCst);
    assert!(peak <= JOBS, "at most {JOBS} at once, saw {peak}");
}

// The async pool: async closures on the pool's connections, `jobs` at once
// on the calling task.

fn async_pool(db: &TestDatabase, kind: async_pools::Kind, size: usize) -> AsyncTenantPool {
    kind.build(
        AsyncTenantPool::builder(db.url())
            .max_size(size)
            .connection_timeout(Duration::from_secs(20)),
    )
}

async fn async_markers(conn: &mut diesel_async::AsyncPgConnection) -> QueryResult<Vec<String>> {
    let query = customers::table
        .select(customers::name)
        .order(customers::id);
    diesel_async::RunQueryDsl::load(query, conn).await
}

async fn async_insert(
    conn: &mut diesel_async::AsyncPgConnection,
    name: &str,
) -> QueryResult<usize> {
    let insert = diesel::insert_into(customers::table)
        .values((customers::name.eq(name), customers::email.eq(email())));
    diesel_async::RunQueryDsl::execute(insert, conn).await
}

both_pools!(async_values_errors_and_panics(kind) {
    quiet_deliberate_panics();
    let (db, sync_pool) = tokio::task::block_in_place(|| setup(2));
    let tenants = tokio::task::block_in_place(|| tenants_with_markers(&sync_pool, "a", 6));
    let pool = async_pool(&db, kind, 4);
    let running = AtomicUsize::new(0);
    let peak = AtomicUsize::new(0);
    let report = pool
        .for_each_tenant(&ForEachOptions::new().jobs(3), async |tenant, conn| {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            assert_eq!(current_tenant().as_ref(), Some(tenant));
            let seen = async_markers(conn).await?;
            async_insert(conn, "written").await?;
            tokio::time::sleep(Duration::from_millis(5)).await;
            running.fetch_sub(1, Ordering::SeqCst);
            match tenant.schema().as_str() {
                "a1" => Err(anyhow::anyhow!("refused in a1")),
                "a2" => panic_any(DELIBERATE),
                _ => Ok(seen),
            }
        })
        .await
        .unwrap();
    assert_eq!(schemas(&report), ["a0", "a1", "a2", "a3", "a4", "a5"]);
    assert!(peak.load(Ordering::SeqCst) <= 3);
    for r in &report.tenants {
        match r.tenant.schema().as_str() {
            "a1" => assert_eq!(r.outcome.error().unwrap().to_string(), "refused in a1"),
            "a2" => {
                let e = r.outcome.error().unwrap().to_string();
                assert!(e.contains("\"a2\"") && e.contains("panicked"), "{e}");
            }
            s => assert_eq!(r.outcome.value().unwrap(), &[s]),
        }
    }
    // Rolled back where the call failed or panicked, committed elsewhere.
    tokio::task::block_in_place(|| {
        for t in &tenants {
            let expected = if ["a1", "a2"].contains(&t.schema().as_str()) { 0 } else { 1 };
            assert_eq!(named(&sync_pool, t, "written"), expected, "{}", t.schema());
        }
    });
    // The pool serves every tenant right afterwards.
    for t in &tenants {
        let seen = pool.with_tenant(t, async |conn| async_markers(conn).await).await.unwrap();
        assert_eq!(seen[0], t.schema().as_str());
    }
});

both_pools!(async_fail_fast_and_the_choice_of_tenants(kind) {
    let (db, sync_pool) = tokio::task::block_in_place(|| setup(2));
    tokio::task::block_in_place(|| {
        tenants_with_markers(&sync_pool, "b", 4);
        suspend(&sync_pool, "b2");
    });
    let pool = async_pool(&db, kind, 4);
    let calls = AtomicUsize::new(0);
    let report = pool
        .for_each_tenant(
            &ForEachOptions::new().jobs(1).fail_fast(true),
            async |tenant, _conn| {
                calls.fetch_add(1, Ordering::Relaxed);
                if tenant.schema().as_str() == "b0" {
                    return Err(Error::Config { reason: "stop".into() });
                }
                Ok(())
            },
        )
        .await
        .unwrap();
    assert_eq!(calls.load(Ordering::Relaxed), 1);
    assert_eq!(schemas(&report), ["b0", "b1", "b3"]);
    assert_eq!(report.totals().not_run, 2);

    let read = async |tenant: &Tenant, conn: &mut diesel_async::AsyncPgConnection| {
        let seen = async_markers(conn).await?;
        assert_eq!(seen, [tenant.schema().as_str()]);
        Ok::<_, Error>(tenant.status())
    };
    let all = pool
        .for_each_tenant(&ForEachOptions::new().include_suspended(true), read)
        .await
        .unwrap();
    assert_eq!(schemas(&all), ["b0", "b1", "b2", "b3"]);
    assert!(all.is_success(), "{:?}", all.failures().collect::<Vec<_>>());
    let suspended = pool
        .for_each_tenant(&ForEachOptions::new().status(TenantStatus::Suspended), read)
        .await
        .unwrap();
    assert!(matches!(
        suspended.tenants[0].outcome,
        RunOutcome::Done(TenantStatus::Suspended)
    ));
    let named = pool
        .for_each_tenant(&ForEachOptions::new().tenants([schema("b2"), schema("b3")]), read)
        .await
        .unwrap();
    assert!(matches!(
        &named.tenants[0].outcome,
        RunOutcome::Failed(Error::TenantSuspended { schema }) if schema == "b2"
    ));
    assert!(matches!(named.tenants[1].outcome, RunOutcome::Done(_)));
    let err = pool
        .for_each_tenant(&ForEachOptions::new().tenants([schema("nobody")]), read)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::TenantNotFound { .. }));
});

both_pools!(async_concurrent_runs_never_see_another_tenant(kind, 4) {
    const TENANTS: usize = 24;
    const TASKS: usize = 4;
    const ROUNDS: usize = 3;
    let (db, sync_pool) = tokio::task::block_in_place(|| setup(2));
    let tenants = Arc::new(tokio::task::block_in_place(|| {
        tenants_with_markers(&sync_pool, "ac", TENANTS)
    }));
    let pool = async_pool(&db, kind, 8);
    let reads = Arc::new(AtomicUsize::new(0));
    let wrong = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (pool, tenants) = (pool.clone(), Arc::clone(&tenants));
            let (reads, wrong) = (reads.clone(), wrong.clone());
            // Spawned: the run's future is Send.
            tokio::spawn(async move {
                let mut rng = Rng::new(0xac + t as u64);
                for _ in 0..ROUNDS {
                    let misbehave = format!("ac{}", rng.below(TENANTS));
                    let other = tenants[rng.below(TENANTS)].schema().quoted();
                    let report = pool
                        .for_each_tenant(&ForEachOptions::new().jobs(3), async |tenant, conn| {
                            use diesel_async::SimpleAsyncConnection;
                            let seen = async_markers(conn).await?;
                            reads.fetch_add(1, Ordering::Relaxed);
                            if seen != [tenant.schema().as_str()]
                                || current_tenant().as_ref() != Some(tenant)
                            {
                                wrong.fetch_add(1, Ordering::Relaxed);
                            }
                            if tenant.schema().as_str() == misbehave {
                                conn.batch_execute(&format!("SET search_path TO {other}")).await?;
                                return Err(Error::Config { reason: "misbehaved".into() });
                            }
                            Ok(())
                        })
                        .await
                        .unwrap();
                    assert_eq!(report.tenants.len(), TENANTS);
                    assert_eq!(report.totals().failed, 1);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let (reads, wrong) = (reads.load(Ordering::Relaxed), wrong.load(Ordering::Relaxed));
    println!(
        "async for_each_tenant isolation ({}): {TASKS} tasks x {ROUNDS} rounds x {TENANTS} tenants, {reads} checked reads, {wrong} wrong-tenant reads",
        kind.name()
    );
    assert_eq!(reads, TASKS * ROUNDS * TENANTS);
    assert_eq!(wrong, 0);
});
