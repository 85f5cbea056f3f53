//! The async pool keeps the sync pool's promise: a connection serves exactly one
//! tenant while in use, whatever the borrower did, cancellation included.
#![allow(missing_docs)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Rng, customers, setup, tenants_with_markers};
use diesel::prelude::QueryDsl;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_tenancy::{AsyncTenantPool, Error, Tenant, current_tenant, spawn_with_tenant};

async fn markers(conn: &mut AsyncPgConnection) -> diesel::QueryResult<Vec<String>> {
    customers::table
        .select(customers::name)
        .order(customers::id)
        .load(conn)
        .await
}

async fn sees_only(pool: &AsyncTenantPool, tenant: &Tenant) -> bool {
    let seen = pool
        .with_tenant(tenant, async |conn| markers(conn).await)
        .await
        .expect("read markers");
    seen == [tenant.schema().as_str()]
}

/// What a borrower does before giving the connection back.
async fn misbehave(conn: &mut AsyncPgConnection, kind: usize, other: &Tenant) {
    let other = other.schema().quoted();
    match kind {
        0 => {
            let _ = conn.batch_execute("SELECT * FROM no_such_table").await;
        }
        1 => {
            let sql = format!("SET search_path TO {other}");
            let _ = conn
                .transaction::<(), diesel::result::Error, _>(async |c| {
                    c.batch_execute(&sql).await?;
                    Err(diesel::result::Error::RollbackTransaction)
                })
                .await;
        }
        2 => conn
            .batch_execute(&format!("SET search_path TO {other}, public"))
            .await
            .unwrap(),
        3 => conn
            .batch_execute(&format!("BEGIN; SET LOCAL search_path TO {other}"))
            .await
            .unwrap(),
        4 => conn.begin_test_transaction().await.unwrap(),
        5 => {
            // Cancelled mid-query: the future is dropped while the server sleeps,
            // after moving the path.
            let sql = format!("SET search_path TO {other}; SELECT pg_sleep(0.05)");
            let _ = tokio::time::timeout(Duration::from_millis(5), conn.batch_execute(&sql)).await;
        }
        _ => unreachable!(),
    }
}

const KINDS: usize = 6;

/// Keeps the deliberate panics of these tests out of the output.
fn quiet_deliberate_panics() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<&str>() != Some(&"deliberate") {
                default(info);
            }
        }));
    });
}

fn async_pool(
    db: &diesel_tenancy::testing::TestDatabase,
    size: usize,
    check: bool,
) -> AsyncTenantPool {
    AsyncTenantPool::builder(db.url())
        .max_size(size)
        .test_on_check_out(check)
        .connection_timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_tasks_never_read_another_tenant() {
    const TASKS: usize = 16;
    const TENANTS: usize = 50;
    const CHECKOUTS: usize = 20_000;
    quiet_deliberate_panics();
    let (db, sync_pool) = tokio::task::block_in_place(|| setup(2));
    let tenants = Arc::new(tokio::task::block_in_place(|| {
        tenants_with_markers(&sync_pool, "aiso", TENANTS)
    }));
    // No checkout test: the statement watch and in-flight count are all there is.
    let pool = async_pool(&db, 4, false);
    let reads = Arc::new(AtomicUsize::new(0));
    let wrong = Arc::new(AtomicUsize::new(0));
    let misbehaved = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (pool, tenants) = (pool.clone(), Arc::clone(&tenants));
            let (reads, wrong, misbehaved) = (reads.clone(), wrong.clone(), misbehaved.clone());
            tokio::spawn(async move {
                let mut rng = Rng::new(0xa5 + t as u64);
                for _ in 0..CHECKOUTS / TASKS {
                    let tenant = &tenants[rng.below(TENANTS)];
                    let other = &tenants[rng.below(TENANTS)];
                    let roll = rng.below(100);
                    let kind = rng.below(KINDS + 1);
                    let work = pool.with_tenant(tenant, async |conn| {
                        let seen = markers(conn).await?;
                        reads.fetch_add(1, Ordering::Relaxed);
                        if seen != [tenant.schema().as_str()] {
                            wrong.fetch_add(1, Ordering::Relaxed);
                        }
                        assert_eq!(current_tenant().as_ref(), Some(tenant));
                        if roll < 10 {
                            misbehaved.fetch_add(1, Ordering::Relaxed);
                            if kind == KINDS {
                                panic!("deliberate");
                            }
                            misbehave(conn, kind, other).await;
                        }
                        Ok::<_, Error>(())
                    });
                    if roll < 10 && kind == KINDS {
                        // A panic inside the closure, in a task of its own.
                        let pool2 = pool.clone();
                        let (t2, reads2) = (tenant.clone(), reads.clone());
                        let r = tokio::spawn(async move {
                            pool2
                                .with_tenant(&t2, async |conn| {
                                    markers(conn).await?;
                                    reads2.fetch_add(1, Ordering::Relaxed);
                                    panic!("deliberate");
                                    #[allow(unreachable_code)]
                                    Ok::<_, Error>(())
                                })
                                .await
                        })
                        .await;
                        assert!(r.is_err());
                        misbehaved.fetch_add(1, Ordering::Relaxed);
                        drop(work);
                    } else if roll < 3 {
                        // Cancelled from outside at a random point.
                        let micros = rng.below(400) as u64;
                        let _ = tokio::time::timeout(Duration::from_micros(micros), work).await;
                    } else {
                        work.await.unwrap();
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let stats = pool.stats();
    println!(
        "async isolation: {TASKS} tasks, {TENANTS} tenants, {} checked reads, {} misbehaving borrowers, {} scoped checkouts ({} set the path), {} wrong-tenant reads",
        AtomicUsize::load(&reads, Ordering::Relaxed),
        AtomicUsize::load(&misbehaved, Ordering::Relaxed),
        stats.scoped,
        stats.path_sets,
        AtomicUsize::load(&wrong, Ordering::Relaxed)
    );
    assert!(AtomicUsize::load(&reads, Ordering::Relaxed) > CHECKOUTS * 9 / 10);
    assert_eq!(
        AtomicUsize::load(&wrong, Ordering::Relaxed),
        0,
        "wrong-tenant reads"
    );
}

/// One connection: each misbehaviour in `a` moves the path to `b`; the next
/// borrower of `a` must still read `a`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_borrower_is_scoped_whatever_the_last_one_did() {
    let (db, sync_pool) = tokio::task::block_in_place(|| setup(1));
    let t = tokio::task::block_in_place(|| tenants_with_markers(&sync_pool, "anext", 2));
    for check in [false, true] {
        let pool = async_pool(&db, 1, check);
        for kind in 0..KINDS {
            assert!(sees_only(&pool, &t[0]).await);
            let mut conn = pool.get(&t[0]).await.unwrap();
            misbehave(&mut conn, kind, &t[1]).await;
            drop(conn);
            assert!(
                sees_only(&pool, &t[0]).await,
                "after kind {kind}, check {check}"
            );
            assert!(sees_only(&pool, &t[1]).await);
        }
        // Cancelled while waiting inside with_tenant.
        let work = pool.with_tenant(&t[0], async |conn| {
            conn.batch_execute(&format!("SET search_path TO {}", t[1].schema().quoted()))
                .await?;
            conn.batch_execute("SELECT pg_sleep(0.2)").await?;
            Ok::<_, Error>(())
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(30), work)
                .await
                .is_err()
        );
        assert!(sees_only(&pool, &t[0]).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_skips_the_statement_and_switches_set_it() {
    let (db, sync_pool) = tokio::task::block_in_place(|| setup(1));
    let t = tokio::task::block_in_place(|| tenants_with_markers(&sync_pool, "atrack", 2));
    let pool = async_pool(&db, 1, true);
    assert!(sees_only(&pool, &t[0]).await);
    let before = pool.stats();
    for _ in 0..5 {
        assert!(sees_only(&pool, &t[0]).await);
    }
    assert_eq!(pool.stats().path_sets, before.path_sets);
    assert!(sees_only(&pool, &t[1]).await);
    assert_eq!(pool.stats().path_sets, before.path_sets + 1);
    // Suspended and missing schemas: typed errors, no fall-through to public.
    let mut suspended = t[1].clone();
    tokio::task::block_in_place(|| {
        suspended = diesel_tenancy::suspend_tenant(&mut sync_pool.public().unwrap(), t[1].schema())
            .unwrap();
    });
    assert!(matches!(
        pool.get(&suspended).await,
        Err(Error::TenantSuspended { .. })
    ));
    let mut public = pool.public().await.unwrap();
    public
        .batch_execute(&format!("DROP SCHEMA {} CASCADE", t[0].schema().quoted()))
        .await
        .unwrap();
    drop(public);
    assert!(matches!(
        pool.get(&t[0]).await,
        Err(Error::SchemaMissing { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenant_follows_the_task() {
    let (db, sync_pool) = tokio::task::block_in_place(|| setup(1));
    let t = tokio::task::block_in_place(|| tenants_with_markers(&sync_pool, "atask", 1));
    let pool = async_pool(&db, 2, true);
    assert!(current_tenant().is_none());
    let tenant = t[0].clone();
    let child = pool
        .with_tenant(&t[0], async |_conn| {
            // Deep in the call stack, and in a task spawned from here.
            let here = current_tenant();
            let there = spawn_with_tenant(async { current_tenant() }).await.unwrap();
            Ok::<_, Error>((here, there))
        })
        .await
        .unwrap();
    assert_eq!(child.0.as_ref(), Some(&tenant));
    assert_eq!(child.1.as_ref(), Some(&tenant));
    // The with_tenant future is Send: it can be spawned.
    let pool2 = pool.clone();
    let spawned = tokio::spawn(async move {
        pool2
            .with_tenant(&tenant, async |conn| markers(conn).await)
            .await
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(spawned, ["atask0"]);
}

/// Creation and migrations on the async pool alone: the runs go to tokio's
/// blocking threads, so a task on the runtime keeps ticking meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_from_async_code() {
    let db = diesel_tenancy::testing::TestDatabase::new().unwrap();
    let pool = async_pool(&db, 3, true);
    let dir = common::MigrationDir::tenant_copy();
    let migrator = diesel_tenancy::Migrator::new(common::SHARED, dir.source());
    migrator.migrate_shared_async(&pool).await.unwrap();
    let news: Vec<_> = (0..3)
        .map(|i| diesel_tenancy::NewTenant::new(format!("amig{i}").parse().unwrap(), "t"))
        .collect();
    for created in diesel_tenancy::create_tenants_async(&pool, news, dir.source(), 2).await {
        created.unwrap();
    }
    dir.add(
        "20250301000000",
        "add_note",
        "ALTER TABLE customers ADD COLUMN note text;",
    );
    let migrator = diesel_tenancy::Migrator::new(common::SHARED, dir.source());
    let ticker = tokio::spawn(async {
        let mut ticks = 0;
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(1)).await;
            ticks += 1;
        }
        ticks
    });
    let report = migrator
        .migrate_all_async(&pool, &diesel_tenancy::MigrateOptions::new())
        .await
        .unwrap();
    assert_eq!(report.totals().applied, 3);
    assert_eq!(ticker.await.unwrap(), 5);
    // The journal was written: the next run is decided by it.
    let again = migrator
        .migrate_all_async(&pool, &diesel_tenancy::MigrateOptions::new())
        .await
        .unwrap();
    assert_eq!(again.decided_by_journal, 3);
    // Any blocking function of the crate runs on the async pool the same way.
    let acme = pool
        .blocking(|conn| {
            let new = diesel_tenancy::NewTenant::new("amig_b".parse().unwrap(), "b");
            diesel_tenancy::create_tenant(conn, &new, common::TENANT)
        })
        .await
        .unwrap()
        .unwrap();
    assert!(sees_only_after_insert(&pool, &acme).await);
}

async fn sees_only_after_insert(pool: &AsyncTenantPool, tenant: &Tenant) -> bool {
    use diesel::ExpressionMethods;
    pool.with_tenant(tenant, async |conn| {
        diesel::insert_into(customers::table)
            .values((
                customers::name.eq(tenant.schema().as_str()),
                customers::email.eq("x@y.test"),
            ))
            .execute(conn)
            .await
    })
    .await
    .unwrap();
    sees_only(pool, tenant).await
}

/// On a current-thread runtime too: the blocking thread waits while the
/// runtime's own thread drives the statements.
#[test]
fn migrations_from_a_current_thread_runtime() {
    let db = diesel_tenancy::testing::TestDatabase::new().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let report = rt.block_on(async {
        let pool = async_pool(&db, 2, true);
        let migrator = diesel_tenancy::Migrator::new(common::SHARED, common::TENANT);
        migrator
            .migrate_all_async(&pool, &diesel_tenancy::MigrateOptions::new())
            .await
    });
    assert!(report.unwrap().is_success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_roles_in_the_async_pool() {
    let (db, sync_pool) = tokio::task::block_in_place(|| setup(1));
    let tenants: Vec<Tenant> = tokio::task::block_in_place(|| {
        ["arola", "arolb"]
            .iter()
            .map(|s| {
                let new = diesel_tenancy::NewTenant::new(s.parse().unwrap(), *s).with_role();
                diesel_tenancy::create_tenant(
                    &mut sync_pool.public().unwrap(),
                    &new,
                    common::TENANT,
                )
                .unwrap()
            })
            .collect()
    });
    let pool = AsyncTenantPool::builder(db.url())
        .max_size(1)
        .tenant_roles(true)
        .build()
        .unwrap();
    for _ in 0..2 {
        let denied = pool
            .with_tenant(&tenants[0], async |conn| {
                diesel::sql_query("SELECT name FROM arolb.customers")
                    .execute(conn)
                    .await
            })
            .await
            .unwrap_err();
        assert!(denied.to_string().contains("permission denied"), "{denied}");
        let own = pool
            .with_tenant(&tenants[0], async |conn| markers(conn).await)
            .await
            .unwrap();
        assert!(own.is_empty());
        // Back on public, the session's own role.
        let n: i64 = pool
            .with_public(async |conn| {
                diesel::sql_query("SELECT (current_user = session_user)::int::int8 AS n")
                    .get_result::<common::Count>(conn)
                    .await
                    .map(|c| c.n)
            })
            .await
            .unwrap();
        assert_eq!(n, 1, "public runs as the session user");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_recycled_after_many_schemas() {
    let (db, sync_pool) = tokio::task::block_in_place(|| setup(1));
    let t = tokio::task::block_in_place(|| tenants_with_markers(&sync_pool, "arcy", 4));
    let pool = AsyncTenantPool::builder(db.url())
        .max_size(1)
        .recycle_after_schemas(Some(3))
        .build()
        .unwrap();
    let mut pids = Vec::new();
    for i in common::RECYCLE_ORDER {
        let pid: i32 = pool
            .with_tenant(&t[i], async |conn| {
                diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>(
                    "pg_backend_pid()",
                ))
                .get_result(conn)
                .await
            })
            .await
            .unwrap();
        pids.push(pid);
    }
    common::assert_recycled_after_three_schemas(&pids);
}

/// The async pool runs `session_setup` on new connections and after a reset,
/// and counts resets as the sync pool does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_setup_survives_resets() {
    let (db, sync_pool) = tokio::task::block_in_place(|| setup(1));
    let t = tokio::task::block_in_place(|| tenants_with_markers(&sync_pool, "asetup", 1));
    let pool = AsyncTenantPool::builder(db.url())
        .max_size(1)
        .session_setup("SET application_name = 'from-setup'")
        .build()
        .unwrap();
    async fn name(pool: &AsyncTenantPool, t: &Tenant) -> String {
        pool.with_tenant(t, async |conn| {
            diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(
                "current_setting('application_name')",
            ))
            .get_result(conn)
            .await
        })
        .await
        .unwrap()
    }
    assert_eq!(name(&pool, &t[0]).await, "from-setup");
    let before = pool.stats().resets;
    pool.with_tenant(&t[0], async |conn| {
        conn.batch_execute("SET application_name = 'borrower'")
            .await
    })
    .await
    .unwrap();
    // The reset runs on a task after the borrow; the next checkout waits for
    // the connection to come back.
    assert_eq!(name(&pool, &t[0]).await, "from-setup");
    assert_eq!(pool.stats().resets, before + 1);
}
