//! The async pool keeps the sync pool's promise: a connection serves exactly one
//! tenant while in use, whatever the borrower did, cancellation included. Every
//! test runs on both pools underneath, deadpool and bb8 (`<test>::deadpool`,
//! `<test>::bb8`), with the same settings.
#![allow(missing_docs)]

mod common;
#[macro_use]
#[path = "common/async_pools.rs"]
mod async_pools;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_pools::Kind;
use common::{Rng, customers, setup, tenants_with_markers};
use diesel::prelude::QueryDsl;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_tenancy::testing::TestDatabase;
use diesel_tenancy::{
    AsyncTenantPool, AsyncTenantPoolBuilder, Error, Tenant, TenantPool, current_tenant,
    spawn_with_tenant,
};

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

async fn backend_pid(pool: &AsyncTenantPool, tenant: &Tenant) -> i32 {
    pool.with_tenant(tenant, async |conn| {
        diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>(
            "pg_backend_pid()",
        ))
        .get_result(conn)
        .await
    })
    .await
    .expect("backend pid")
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

fn builder(db: &TestDatabase, size: usize) -> AsyncTenantPoolBuilder {
    AsyncTenantPool::builder(db.url())
        .max_size(size)
        .connection_timeout(Duration::from_secs(20))
}

fn async_pool(db: &TestDatabase, kind: Kind, size: usize, check: bool) -> AsyncTenantPool {
    kind.build(builder(db, size).test_on_check_out(check))
}

/// Runs `sql` (one `bigint` column named `n`) on the sync pool, off the
/// runtime's worker.
fn count(pool: &TenantPool, sql: &str) -> i64 {
    tokio::task::block_in_place(|| common::count(pool, sql))
}

both_pools!(concurrent_tasks_never_read_another_tenant(kind, 4) {
    const TASKS: usize = 16;
    const TENANTS: usize = 50;
    const CHECKOUTS: usize = 12_000;
    quiet_deliberate_panics();
    let (db, sync_pool) = tokio::task::block_in_place(|| setup(2));
    let tenants = Arc::new(tokio::task::block_in_place(|| {
        tenants_with_markers(&sync_pool, "aiso", TENANTS)
    }));
    // No checkout test: the statement watch and in-flight count are all there is.
    let pool = async_pool(&db, kind, 4, false);
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
    let (reads, wrong) = (
        AtomicUsize::load(&reads, Ordering::Relaxed),
        AtomicUsize::load(&wrong, Ordering::Relaxed),
    );
    println!(
        "async isolation ({}): {TASKS} tasks, {TENANTS} tenants, {reads} checked reads, {} misbehaving borrowers, {} scoped checkouts ({} set the path, {} resets), {wrong} wrong-tenant reads",
        kind.name(),
        AtomicUsize::load(&misbehaved, Ordering::Relaxed),
        stats.scoped,
        stats.path_sets,
        stats.resets,
    );
    assert!(reads > CHECKOUTS * 9 / 10, "{reads} reads");
    assert_eq!(wrong, 0, "wrong-tenant reads");
    assert!(stats.resets > 0, "the misbehaving borrowers caused no reset");
});

// One connection: each misbehaviour in `a` moves the path to `b`; the next
// borrower of `a` must still read `a`.
both_pools!(next_borrower_is_scoped_whatever_the_last_one_did(kind) {
    let (db, sync_pool) = tokio::task::block_in_place(|| setup(1));
    let t = tokio::task::block_in_place(|| tenants_with_markers(&sync_pool, "anext", 2));
    for check in [false, true] {
        let pool = async_pool(&db, kind, 1, check);
        for kind in 0..KINDS {
            assert!(sees_only(&pool, &t[0]).await);
            let before = pool.stats().resets;
            let pid = backend_pid(&pool, &t[0]).await;
            let mut conn = pool.get(&t[0]).await.unwrap();
            misbehave(&mut conn, kind, &t[1]).await;
            drop(conn);
            assert!(
                sees_only(&pool, &t[0]).await,
                "after kind {kind}, check {check}"
            );
            // Kept and reset, or replaced: never handed on as it was.
            let reset = pool.stats().resets > before;
            let replaced = backend_pid(&pool, &t[0]).await != pid;
            assert!(
                reset || replaced,
                "kind {kind}, check {check}: neither reset nor replaced"
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
});

both_pools!(tracking_skips_the_statement_and_switches_set_it(kind) {
    let (db, sync_pool) = tokio::task::block_in_place(|| setup(1));
    let t = tokio::task::block_in_place(|| tenants_with_markers(&sync_pool, "atrack", 2));
    let pool = async_pool(&db, kind, 1, true);
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
});

both_pools!(the_tenant_follows_the_task(kind) {
    let (db, sync_pool) = tokio::task::block_in_place(|| setup(1));
    let t = tokio::task::block_in_place(|| tenants_with_markers(&sync_pool, "atask", 1));
    let pool = async_pool(&db, kind, 2, true);
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
    assert!(current_tenant().is_none(), "only inside with_tenant");
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
});

// Creation and migrations on the async pool alone: the runs go to tokio's
// blocking threads, so a task on the runtime keeps ticking meanwhile.
both_pools!(migrations_from_async_code(kind) {
    let db = TestDatabase::new().unwrap();
    let pool = async_pool(&db, kind, 3, true);
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
});

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
    for kind in Kind::ALL {
        let db = TestDatabase::new().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let report = rt.block_on(async {
            let pool = async_pool(&db, kind, 2, true);
            let migrator = diesel_tenancy::Migrator::new(common::SHARED, common::TENANT);
            migrator
                .migrate_all_async(&pool, &diesel_tenancy::MigrateOptions::new())
                .await
        });
        assert!(report.unwrap().is_success(), "{kind:?}");
    }
}

both_pools!(tenant_roles_in_the_async_pool(kind) {
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
    let pool = kind.build(builder(&db, 1).tenant_roles(true));
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
});

both_pools!(connections_are_recycled_after_many_schemas(kind) {
    let (db, sync_pool) = tokio::task::block_in_place(|| setup(1));
    let t = tokio::task::block_in_place(|| tenants_with_markers(&sync_pool, "arcy", 4));
    let pool = kind.build(builder(&db, 1).recycle_after_schemas(Some(3)));
    let mut pids = Vec::new();
    for i in common::RECYCLE_ORDER {
        pids.push(backend_pid(&pool, &t[i]).await);
    }
    common::assert_recycled_after_three_schemas(&pids);
});

// The async pool runs `session_setup` on new connections and after a reset,
// and counts resets as the sync pool does.
both_pools!(session_setup_survives_resets(kind) {
    let (db, sync_pool) = tokio::task::block_in_place(|| setup(1));
    let t = tokio::task::block_in_place(|| tenants_with_markers(&sync_pool, "asetup", 1));
    let pool = kind.build(builder(&db, 1).session_setup("SET application_name = 'from-setup'"));
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
});

// State a trigger leaves is invisible to the statement watch: only
// `reset_after_every_borrow` clears it, with one reset per borrow.
both_pools!(reset_after_every_borrow_clears_what_a_trigger_left(kind) {
    let (db, sync_pool) = tokio::task::block_in_place(|| setup(1));
    let t = tokio::task::block_in_place(|| {
        let t = tenants_with_markers(&sync_pool, "areset", 1);
        sync_pool
            .with_tenant(&t[0], |conn| {
                diesel::connection::SimpleConnection::batch_execute(
                    conn,
                    "CREATE FUNCTION leak() RETURNS trigger LANGUAGE plpgsql AS \
                     $$BEGIN PERFORM set_config('app.leak', 'yes', false); RETURN NEW; END$$; \
                     CREATE TRIGGER leak BEFORE INSERT ON customers \
                     FOR EACH ROW EXECUTE FUNCTION leak();",
                )
            })
            .unwrap();
        t
    });
    async fn insert_then_read(pool: &AsyncTenantPool, t: &Tenant) -> String {
        use diesel::ExpressionMethods;
        static N: AtomicUsize = AtomicUsize::new(0);
        let email = format!("{}@x", N.fetch_add(1, Ordering::Relaxed));
        pool.with_tenant(t, async |conn| {
            diesel::insert_into(customers::table)
                .values((customers::name.eq("x"), customers::email.eq(&email)))
                .execute(conn)
                .await
        })
        .await
        .unwrap();
        pool.with_tenant(t, async |conn| {
            diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(
                "coalesce(current_setting('app.leak', true), '')",
            ))
            .get_result(conn)
            .await
        })
        .await
        .unwrap()
    }
    // The default pool keeps the session: the trigger's setting is still there.
    let plain = kind.build(builder(&db, 1));
    assert_eq!(insert_then_read(&plain, &t[0]).await, "yes");
    drop(plain);
    let pool = kind.build(builder(&db, 1).reset_after_every_borrow(true));
    let before = pool.stats().resets;
    for _ in 0..3 {
        assert_eq!(insert_then_read(&pool, &t[0]).await, "");
    }
    assert!(sees_only_after(&pool, &t[0]).await);
    // Six borrows above, the last one's reset perhaps still running.
    assert!(pool.stats().resets >= before + 6, "{:?}", pool.stats());
});

async fn sees_only_after(pool: &AsyncTenantPool, t: &Tenant) -> bool {
    let seen = pool
        .with_tenant(t, async |conn| markers(conn).await)
        .await
        .unwrap();
    <[String]>::first(&seen).map(String::as_str) == Some(t.schema().as_str())
}

// Diesel's statement cache: on by default, off in transaction-scoped mode
// (unless asked for), off when asked.
both_pools!(the_statement_cache_follows_the_setting(kind) {
    let (db, sync_pool) = tokio::task::block_in_place(|| setup(1));
    let t = tokio::task::block_in_place(|| tenants_with_markers(&sync_pool, "acache", 1));
    // Prepared statements of the session holding the markers query's text (the
    // pattern is split so that this query's own text does not hold it).
    const CACHED: &str = "SELECT count(*) AS n FROM pg_prepared_statements \
                          WHERE NOT from_sql AND statement LIKE '%\"customers\".' || '\"name\"%'";
    for (settings, cached) in [
        (builder(&db, 1), true),
        (builder(&db, 1).statement_cache(false), false),
        (builder(&db, 1).transaction_scoped(true), false),
        (builder(&db, 1).transaction_scoped(true).statement_cache(true), true),
    ] {
        let pool = kind.build(settings);
        let n = pool
            .with_tenant(&t[0], async |conn| {
                markers(conn).await?;
                markers(conn).await?;
                diesel::sql_query(CACHED)
                    .get_result::<common::Count>(conn)
                    .await
            })
            .await
            .unwrap()
            .n;
        assert_eq!(n > 0, cached, "{n} cached statements");
    }
});

// Transaction-scoped mode commits what `with_tenant` and `commit` report,
// and nothing else.
both_pools!(transaction_scoped_mode_commits_only_what_it_reports(kind) {
    use diesel::ExpressionMethods;
    let (db, sync_pool) = tokio::task::block_in_place(|| setup(1));
    let t = tokio::task::block_in_place(|| tenants_with_markers(&sync_pool, "atxn", 1));
    let pool = kind.build(builder(&db, 2).transaction_scoped(true));
    async fn insert(conn: &mut AsyncPgConnection, name: &str) -> diesel::QueryResult<usize> {
        diesel::insert_into(customers::table)
            .values((customers::name.eq(name), customers::email.eq(format!("{name}@x"))))
            .execute(conn)
            .await
    }
    pool.with_tenant(&t[0], async |conn| insert(conn, "kept").await)
        .await
        .unwrap();
    let failed = pool
        .with_tenant(&t[0], async |conn| {
            insert(conn, "gone").await?;
            Err::<(), _>(Error::Config {
                reason: "the closure failed".into(),
            })
        })
        .await;
    assert!(matches!(failed, Err(Error::Config { .. })), "{failed:?}");
    {
        let mut guard = pool.get(&t[0]).await.unwrap();
        insert(&mut guard, "dropped").await.unwrap();
    }
    let mut guard = pool.get(&t[0]).await.unwrap();
    insert(&mut guard, "committed").await.unwrap();
    guard.commit().await.unwrap();
    drop(guard);
    // Every checkout set the path, in its own transaction.
    assert_eq!(pool.stats().path_sets, pool.stats().scoped);
    let seen = tokio::task::block_in_place(|| sync_pool.with_tenant(&t[0], common::markers))
        .unwrap();
    assert_eq!(seen, ["atxn0", "kept", "committed"]);
});

// In transaction-scoped mode, a borrow that dropped a statement before it
// finished (the server may still be running it) is not committed: `commit`
// refuses at once instead of waiting for the statement and committing what
// it did.
both_pools!(a_statement_dropped_mid_borrow_is_never_committed(kind) {
    let (db, sync_pool) = tokio::task::block_in_place(|| setup(1));
    let t = tokio::task::block_in_place(|| tenants_with_markers(&sync_pool, "adrop", 1));
    let pool = kind.build(builder(&db, 1).transaction_scoped(true));
    let started = Instant::now();
    let result = pool
        .with_tenant(&t[0], async |conn| {
            let sql = "INSERT INTO customers (name, email) VALUES ('half-run', 'h@x'); \
                       SELECT pg_sleep(3)";
            let dropped = tokio::time::timeout(Duration::from_millis(100), conn.batch_execute(sql));
            assert!(dropped.await.is_err(), "the statement was to be dropped");
            Ok::<_, Error>(())
        })
        .await;
    assert!(matches!(&result, Err(Error::NotCommitted { .. })), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert!(sees_only(&pool, &t[0]).await);
    let seen = tokio::task::block_in_place(|| sync_pool.with_tenant(&t[0], common::markers))
        .unwrap();
    assert_eq!(seen, ["adrop0"]);
});

// `idle_timeout` closes idle connections and `max_lifetime` replaces old ones,
// on both pools; `min_idle` keeps connections open on bb8 (deadpool has no
// such setting and opens none ahead).
both_pools!(idle_timeout_max_lifetime_and_min_idle(kind) {
    let (db, sync_pool) = tokio::task::block_in_place(|| setup(1));
    let t = tokio::task::block_in_place(|| tenants_with_markers(&sync_pool, "aidle", 1));
    let open = |name: &str| {
        count(
            &sync_pool,
            &format!(
                "SELECT count(*) AS n FROM pg_stat_activity \
                 WHERE datname = current_database() AND application_name = '{name}'"
            ),
        )
    };
    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Three connections at once, then idle: all closed after the timeout.
    let pool = kind.build(
        builder(&db, 3)
            .idle_timeout(Some(Duration::from_millis(300)))
            .session_setup("SET application_name = 'idle'"),
    );
    let guards = [
        pool.get(&t[0]).await.unwrap(),
        pool.get(&t[0]).await.unwrap(),
        pool.get(&t[0]).await.unwrap(),
    ];
    assert_eq!(open("idle"), 3);
    drop(guards);
    until("idle connections closed", || open("idle") == 0).await;
    assert!(sees_only(&pool, &t[0]).await, "the pool opens new ones");

    // A connection past its lifetime is replaced.
    let pool = kind.build(builder(&db, 1).max_lifetime(Some(Duration::from_millis(300))));
    let first = backend_pid(&pool, &t[0]).await;
    assert_eq!(backend_pid(&pool, &t[0]).await, first);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_ne!(backend_pid(&pool, &t[0]).await, first);

    // min_idle: bb8 opens them ahead and keeps them past the idle timeout.
    let _pool = kind.build(
        builder(&db, 3)
            .min_idle(Some(2))
            .idle_timeout(Some(Duration::from_millis(200)))
            .session_setup("SET application_name = 'minidle'"),
    );
    match kind {
        Kind::Bb8 => {
            until("min_idle connections opened", || open("minidle") == 2).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert_eq!(open("minidle"), 2, "kept past the idle timeout");
        }
        Kind::Deadpool => {
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(open("minidle"), 0, "deadpool opens connections on use only");
        }
    }
});

// A checkout that waits past the connection timeout fails with a typed error
// naming the pool, and the pool serves again once a connection is free.
both_pools!(a_checkout_timeout_is_a_typed_error(kind) {
    let (db, sync_pool) = tokio::task::block_in_place(|| setup(1));
    let t = tokio::task::block_in_place(|| tenants_with_markers(&sync_pool, "atime", 1));
    let pool = kind.build(
        AsyncTenantPool::builder(db.url())
            .max_size(1)
            .connection_timeout(Duration::from_millis(300)),
    );
    let held = pool.get(&t[0]).await.unwrap();
    let started = Instant::now();
    let err = pool.get(&t[0]).await.unwrap_err();
    let waited = started.elapsed();
    match &err {
        Error::AsyncPool {
            pool, timed_out, ..
        } => {
            assert_eq!(*pool, kind.name());
            assert!(timed_out, "{err}");
        }
        other => panic!("expected Error::AsyncPool, got {other:?}"),
    }
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    drop(held);
    assert!(sees_only(&pool, &t[0]).await);
});

// A server that cannot be reached: a typed error carrying the connection
// error, within the connection timeout.
both_pools!(an_unreachable_server_is_a_typed_error(kind) {
    // Port 1 on loopback: nothing listens there.
    let pool = kind.build(
        AsyncTenantPool::builder("postgres://postgres@127.0.0.1:1/none")
            .connection_timeout(Duration::from_millis(500)),
    );
    let started = Instant::now();
    let err = pool.public().await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    let Error::AsyncPool { pool: name, source, .. } = &err else {
        panic!("expected Error::AsyncPool, got {err:?}");
    };
    assert_eq!(*name, kind.name());
    let cause = source.as_ref().map(|s| s.to_string()).unwrap_or_default();
    assert!(
        cause.to_lowercase().contains("connect") || cause.to_lowercase().contains("refused"),
        "{err}: {cause:?}"
    );

    // A login the server refuses (no such database): deadpool fails at once,
    // bb8 (which retries until its timeout) when the timeout runs out; both
    // say why.
    let db = TestDatabase::new().unwrap();
    let mut url = url::Url::parse(db.url()).unwrap();
    url.set_path("/no_such_database");
    let pool = kind.build(
        AsyncTenantPool::builder(url.as_str()).connection_timeout(Duration::from_secs(1)),
    );
    let started = Instant::now();
    let err = pool.public().await.unwrap_err();
    let took = started.elapsed();
    let Error::AsyncPool { source: Some(source), .. } = &err else {
        panic!("expected Error::AsyncPool with a cause, got {err:?}");
    };
    assert!(source.to_string().contains("no_such_database"), "{err}: {source}");
    match kind {
        Kind::Deadpool => assert!(took < Duration::from_millis(500), "{took:?}"),
        Kind::Bb8 => assert!(took >= Duration::from_millis(900), "{took:?}"),
    }
});

/// bb8 starts tasks when it is built, so it is built inside a runtime; the
/// builder says so instead of panicking. deadpool needs none until used.
#[test]
fn bb8_is_built_inside_a_runtime() {
    let err = AsyncTenantPool::builder("postgres://localhost/app")
        .build_bb8()
        .unwrap_err();
    assert!(
        matches!(&err, Error::Config { reason } if reason.contains("tokio runtime")),
        "{err:?}"
    );
    let pool = AsyncTenantPool::builder("postgres://localhost/app")
        .build_deadpool()
        .unwrap();
    assert_eq!(pool.pool_kind(), "deadpool");
}

/// With both pool features on, `build` takes deadpool.
#[tokio::test]
async fn build_takes_deadpool_when_both_are_on() {
    let pool = AsyncTenantPool::builder("postgres://localhost/app")
        .build()
        .unwrap();
    assert_eq!(pool.pool_kind(), "deadpool");
}

// A snapshot taken before two tenants swap schema names is refused on both
// async pools, on the connection that holds the path and on a new one.
both_pools!(a_snapshot_is_refused_after_its_schema_name_moves(kind) {
    let (db, sync_pool) = tokio::task::block_in_place(|| setup(1));
    let t = tokio::task::block_in_place(|| tenants_with_markers(&sync_pool, "aswap", 2));
    let pool = async_pool(&db, kind, 1, true);
    assert!(sees_only(&pool, &t[0]).await);
    tokio::task::block_in_place(|| {
        let mut conn = sync_pool.public().unwrap();
        let tmp: diesel_tenancy::SchemaName = "aswap_tmp".parse().unwrap();
        diesel_tenancy::rename_tenant(&mut conn, t[0].schema(), &tmp).unwrap();
        diesel_tenancy::rename_tenant(&mut conn, t[1].schema(), t[0].schema()).unwrap();
        diesel_tenancy::rename_tenant(&mut conn, &tmp, t[1].schema()).unwrap();
    });
    for stale in &t {
        let refused = pool.get(stale).await.map(|_| ()).unwrap_err();
        assert!(matches!(refused, Error::SchemaReplaced { .. }), "{refused:?}");
    }
    let name = t[0].schema().clone();
    let fresh = pool.blocking(move |c| diesel_tenancy::registry::get_tenant(c, &name)).await.unwrap().unwrap();
    assert_eq!(fresh.id(), t[1].id());
    assert!(pool
        .with_tenant(&fresh, async |c| markers(c).await)
        .await
        .unwrap()
        == vec![t[1].schema().to_string()]);
});
