//! Faults, on both async pools (`<test>::deadpool`, `<test>::bb8`): a server
//! restart under load, a backend terminated while in use or idle, a
//! statement or lock timeout inside a borrow, a tenant's schema dropped under
//! the pool, and the pool behind PgBouncer in transaction mode. Every caller
//! either succeeds with its own tenant's rows or gets a typed error; the pool
//! recovers without being rebuilt; the next borrower is scoped right.
#![allow(missing_docs)]

mod common;
#[macro_use]
#[path = "common/async_pools.rs"]
mod async_pools;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{Rng, customers, setup, tenants_with_markers};
use diesel::prelude::QueryDsl;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_tenancy::testing::{PgBouncer, TestCluster};
use diesel_tenancy::{AsyncTenantPool, Error, Tenant, TenantPool};

async fn markers(conn: &mut AsyncPgConnection) -> diesel::QueryResult<Vec<String>> {
    customers::table
        .select(customers::name)
        .order(customers::id)
        .load(conn)
        .await
}

/// Reads the markers as a typed error: the query's failure is an
/// `Error::Database`.
async fn read(pool: &AsyncTenantPool, tenant: &Tenant) -> Result<Vec<String>, Error> {
    pool.with_tenant(tenant, async |conn| {
        markers(conn).await.map_err(|source| Error::Database {
            action: "read the markers".into(),
            source,
        })
    })
    .await
}

async fn sees_only(pool: &AsyncTenantPool, tenant: &Tenant) -> bool {
    read(pool, tenant).await.expect("read markers") == [tenant.schema().as_str()]
}

async fn pid(conn: &mut AsyncPgConnection) -> diesel::QueryResult<i32> {
    diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>(
        "pg_backend_pid()",
    ))
    .get_result(conn)
    .await
}

async fn setting(pool: &AsyncTenantPool, tenant: &Tenant, name: &str) -> String {
    let sql = format!("current_setting('{name}')");
    pool.with_tenant(tenant, async |conn| {
        diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(&sql))
            .get_result::<String>(conn)
            .await
    })
    .await
    .expect("read a setting")
}

/// Runs `sql` on the sync pool, off the runtime's worker.
fn on_sync(pool: &TenantPool, sql: &str) {
    tokio::task::block_in_place(|| {
        diesel::connection::SimpleConnection::batch_execute(&mut *pool.public().unwrap(), sql)
    })
    .expect("statement on the sync pool");
}

fn get(n: &AtomicUsize) -> usize {
    AtomicUsize::load(n, Ordering::Relaxed)
}

/// What the callers of a load saw.
#[derive(Default)]
struct Tally {
    reads: AtomicUsize,
    wrong: AtomicUsize,
    /// `Error::AsyncPool`: no connection could be had.
    pool_errors: AtomicUsize,
    /// `Error::Scope`: the checkout's statement failed.
    scope_errors: AtomicUsize,
    /// `Error::Database`: the borrower's own query failed.
    query_errors: AtomicUsize,
    /// Anything else, or a caller that never returned.
    untyped: std::sync::Mutex<Vec<String>>,
    /// The first few errors, with their causes.
    samples: std::sync::Mutex<Vec<String>>,
}

/// An error and its sources, on one line.
fn error_chain(e: &Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl Tally {
    fn record(&self, tenant: &Tenant, outcome: Option<Result<Vec<String>, Error>>) {
        if let Some(Err(e)) = &outcome {
            let mut samples = self.samples.lock().unwrap();
            if samples.len() < 3 {
                samples.push(error_chain(e));
            }
        }
        match outcome {
            Some(Ok(seen)) => {
                self.reads.fetch_add(1, Ordering::Relaxed);
                if seen != [tenant.schema().as_str()] {
                    self.wrong.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some(Err(Error::AsyncPool { .. })) => {
                self.pool_errors.fetch_add(1, Ordering::Relaxed);
            }
            Some(Err(Error::Scope { .. })) => {
                self.scope_errors.fetch_add(1, Ordering::Relaxed);
            }
            Some(Err(Error::Database { .. })) => {
                self.query_errors.fetch_add(1, Ordering::Relaxed);
            }
            Some(Err(other)) => self.untyped.lock().unwrap().push(format!("{other:?}")),
            None => self
                .untyped
                .lock()
                .unwrap()
                .push("a caller did not return within 10 s".into()),
        }
    }

    fn reads(&self) -> usize {
        get(&self.reads)
    }

    fn summary(&self) -> String {
        format!(
            "{} reads, {} wrong, errors: {} pool, {} scope, {} query, {} untyped; first errors: {:?}",
            self.reads(),
            get(&self.wrong),
            get(&self.pool_errors),
            get(&self.scope_errors),
            get(&self.query_errors),
            self.untyped.lock().unwrap().len(),
            self.samples.lock().unwrap()
        )
    }
}

/// `tasks` tasks reading random tenants' markers until `stop`, each read
/// bounded by 10 s.
fn load(
    pool: &AsyncTenantPool,
    tenants: &Arc<Vec<Tenant>>,
    tasks: usize,
    stop: &Arc<AtomicBool>,
    tally: &Arc<Tally>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..tasks)
        .map(|t| {
            let (pool, tenants, stop, tally) =
                (pool.clone(), tenants.clone(), stop.clone(), tally.clone());
            tokio::spawn(async move {
                let mut rng = Rng::new(0xfa17 + t as u64);
                while !AtomicBool::load(&stop, Ordering::Relaxed) {
                    let tenant = &tenants[rng.below(tenants.len())];
                    let outcome =
                        tokio::time::timeout(Duration::from_secs(10), read(&pool, tenant))
                            .await
                            .ok();
                    let failed = !matches!(outcome, Some(Ok(_)));
                    tally.record(tenant, outcome);
                    if failed {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            })
        })
        .collect()
}

// The server restarts (every connection cut) under load: callers succeed or
// get typed errors, none reads another tenant's rows, and the same pool
// serves every tenant again afterwards.
both_pools!(a_server_restart_under_load(kind, 4) {
    let mut cluster = tokio::task::block_in_place(TestCluster::start).unwrap();
    let url = cluster.admin_url().to_owned();
    let (sync_pool, tenants) = tokio::task::block_in_place(|| {
        let pool = TenantPool::builder(&url).max_size(2).build().unwrap();
        diesel_tenancy::run_shared_migrations(&mut pool.public().unwrap(), common::SHARED)
            .unwrap();
        let tenants = tenants_with_markers(&pool, "arst", 10);
        (pool, tenants)
    });
    drop(sync_pool);
    let tenants = Arc::new(tenants);
    let pool = kind.build(
        AsyncTenantPool::builder(&url)
            .max_size(4)
            .connection_timeout(Duration::from_secs(2)),
    );
    let (stop, tally) = (Arc::new(AtomicBool::new(false)), Arc::new(Tally::default()));
    let tasks = load(&pool, &tenants, 4, &stop, &tally);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = tally.reads();
    tokio::task::block_in_place(|| cluster.restart()).unwrap();
    let restarted = tally.reads();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    println!(
        "restart under load ({}): {} ({before} before the restart, {restarted} when it was back)",
        kind.name(),
        tally.summary()
    );
    assert!(before > 0, "no reads before the restart");
    assert!(tally.reads() > restarted, "reads did not resume after the restart");
    assert_eq!(get(&tally.wrong), 0, "wrong-tenant reads");
    let untyped = tally.untyped.lock().unwrap().clone();
    assert!(untyped.is_empty(), "untyped errors or hangs: {untyped:?}");
    // The same pool, not rebuilt, serves every tenant.
    for tenant in tenants.iter() {
        assert!(sees_only(&pool, tenant).await);
    }
});

// A backend terminated while a borrower uses it: that borrower gets a typed
// error; the next borrowers get a new connection, scoped right. Terminated
// while idle in the pool: the checkout's statement finds it dead, and the
// checkout takes another without an error.
both_pools!(a_backend_terminated_in_use_or_idle(kind) {
    let (db, sync_pool) = tokio::task::block_in_place(|| setup(1));
    let t = tokio::task::block_in_place(|| tenants_with_markers(&sync_pool, "aterm", 2));
    let pool = kind.build(AsyncTenantPool::builder(db.url()).max_size(1));
    let mut killed = 0;
    let result = pool
        .with_tenant(&t[0], async |conn| {
            killed = pid(conn).await?;
            on_sync(&sync_pool, &format!("SELECT pg_terminate_backend({killed})"));
            markers(conn).await
        })
        .await;
    assert!(result.is_err(), "a read on a terminated backend: {result:?}");
    let now = pool.with_tenant(&t[0], async |conn| pid(conn).await).await.unwrap();
    assert_ne!(now, killed);
    assert!(sees_only(&pool, &t[0]).await);
    assert!(sees_only(&pool, &t[1]).await);

    // Idle in the pool (its path tracked on t[1]): the same-tenant read-back
    // fails, and the checkout retries on a new connection.
    on_sync(&sync_pool, &format!("SELECT pg_terminate_backend({now})"));
    let after = pool.with_tenant(&t[1], async |conn| pid(conn).await).await.unwrap();
    assert_ne!(after, now);
    assert!(sees_only(&pool, &t[1]).await);
});

// A statement timeout inside a borrow: the borrower gets the error; the
// connection is reset (the borrower's SET) or kept as it was (the pool's own
// `session_setup` timeout), and the next borrower, of another tenant, is
// scoped right on it.
both_pools!(a_statement_timeout_inside_a_borrow(kind) {
    let (db, sync_pool) = tokio::task::block_in_place(|| setup(1));
    let t = tokio::task::block_in_place(|| tenants_with_markers(&sync_pool, "astmt", 2));
    async fn sleep_past(
        pool: &AsyncTenantPool,
        t: &Tenant,
        set: &str,
    ) -> (i32, diesel::QueryResult<()>) {
        let mut backend = 0;
        let result = pool
            .with_tenant(t, async |conn| {
                backend = pid(conn).await?;
                conn.batch_execute(&format!("{set}SELECT pg_sleep(2)")).await
            })
            .await;
        (backend, result)
    }
    let timed_out = |r: &diesel::QueryResult<()>| {
        matches!(r, Err(e) if e.to_string().contains("statement timeout"))
    };

    // The borrower's own SET: reset when the borrow ends.
    let pool = kind.build(AsyncTenantPool::builder(db.url()).max_size(1));
    let before = pool.stats().resets;
    let (used, result) = sleep_past(&pool, &t[0], "SET statement_timeout = '100ms'; ").await;
    assert!(timed_out(&result), "{result:?}");
    assert!(sees_only(&pool, &t[1]).await);
    assert!(pool.stats().resets > before, "the borrower's SET was not reset");
    assert_eq!(setting(&pool, &t[1], "statement_timeout").await, "0");
    let next = pool.with_tenant(&t[1], async |conn| pid(conn).await).await.unwrap();
    assert_eq!(next, used, "the connection was reset and kept");

    // The pool's own timeout, in session and transaction-scoped mode.
    for transaction_scoped in [false, true] {
        let pool = kind.build(
            AsyncTenantPool::builder(db.url())
                .max_size(1)
                .transaction_scoped(transaction_scoped)
                .session_setup("SET statement_timeout = '150ms'"),
        );
        let (used, result) = sleep_past(&pool, &t[0], "").await;
        assert!(timed_out(&result), "{result:?}");
        assert!(sees_only(&pool, &t[1]).await);
        assert_eq!(setting(&pool, &t[1], "statement_timeout").await, "150ms");
        let next = pool.with_tenant(&t[1], async |conn| pid(conn).await).await.unwrap();
        assert_eq!(next, used, "the connection was kept");
    }
});

async fn update(conn: &mut AsyncPgConnection) -> diesel::QueryResult<usize> {
    use diesel::ExpressionMethods;
    diesel::update(customers::table)
        .set(customers::email.eq("locked@x"))
        .execute(conn)
        .await
}

// A lock timeout inside a borrow (the row locked by another session): the
// borrower gets the error, in session mode (a borrower's `SET`, then reset)
// and in transaction-scoped mode (`SET LOCAL`, ended with the transaction);
// the next borrowers are scoped right and can write once the lock is gone.
both_pools!(a_lock_timeout_inside_a_borrow(kind) {
    let (db, sync_pool) = tokio::task::block_in_place(|| setup(1));
    let t = tokio::task::block_in_place(|| tenants_with_markers(&sync_pool, "alock", 2));
    for transaction_scoped in [false, true] {
        let mut blocker = AsyncPgConnection::establish(db.url()).await.unwrap();
        blocker
            .batch_execute(&format!(
                "BEGIN; SELECT * FROM {}.customers FOR UPDATE",
                t[0].schema().quoted()
            ))
            .await
            .unwrap();
        let pool = kind.build(
            AsyncTenantPool::builder(db.url())
                .max_size(1)
                .transaction_scoped(transaction_scoped),
        );
        let before = pool.stats().resets;
        let set = if transaction_scoped {
            "SET LOCAL lock_timeout = '100ms'"
        } else {
            "SET lock_timeout = '100ms'"
        };

        let result = pool
            .with_tenant(&t[0], async |conn| {
                conn.batch_execute(set).await?;
                update(conn).await
            })
            .await;
        assert!(
            matches!(&result, Err(e) if e.to_string().contains("lock timeout")),
            "transaction_scoped {transaction_scoped}: {result:?}"
        );
        assert!(sees_only(&pool, &t[1]).await);
        assert_eq!(setting(&pool, &t[1], "lock_timeout").await, "0");
        if !transaction_scoped {
            assert!(pool.stats().resets > before, "the borrower's SET was not reset");
        }
        blocker.batch_execute("COMMIT").await.unwrap();
        let n = pool
            .with_tenant(&t[0], async |conn| update(conn).await)
            .await
            .unwrap();
        assert_eq!(n, 1);
        assert!(sees_only(&pool, &t[0]).await);
    }
});

// A tenant's schema dropped under the pool: the checkout fails with
// `SchemaMissing` naming it (for a connection on that path already, and on
// a switch), before the borrower runs anything; other tenants are served.
both_pools!(a_dropped_schema_is_refused_at_checkout(kind) {
    let (db, sync_pool) = tokio::task::block_in_place(|| setup(1));
    let t = tokio::task::block_in_place(|| tenants_with_markers(&sync_pool, "agone", 3));
    let pool = kind.build(AsyncTenantPool::builder(db.url()).max_size(1));
    assert!(sees_only(&pool, &t[0]).await);
    for gone in [&t[0], &t[1]] {
        // t[0]: the connection's tracked path; t[1]: a switch.
        on_sync(
            &sync_pool,
            &format!("DROP SCHEMA {} CASCADE", gone.schema().quoted()),
        );
        let mut ran = false;
        let result = pool
            .with_tenant(gone, async |conn| {
                ran = true;
                markers(conn).await.map_err(Error::from)
            })
            .await;
        match result {
            Err(Error::SchemaMissing { schema }) => assert_eq!(schema, gone.schema().as_str()),
            other => panic!("expected SchemaMissing for {}, got {other:?}", gone.schema()),
        }
        assert!(!ran, "the borrower ran on a missing schema");
        assert!(matches!(
            pool.get(gone).await,
            Err(Error::SchemaMissing { .. })
        ));
        assert!(sees_only(&pool, &t[2]).await);
    }
});

// Behind PgBouncer in transaction mode, the transaction-scoped async pool
// never reads another tenant's rows, and no caller fails; the session mode
// (the control) reads other tenants' rows.
both_pools!(behind_pgbouncer_in_transaction_mode(kind, 4) {
    if PgBouncer::binary().is_none() {
        let required = std::env::var("DIESEL_TENANCY_REQUIRE_PGBOUNCER").is_ok_and(|v| v == "1");
        assert!(!required, "pgbouncer is required: apt-get install pgbouncer");
        eprintln!("SKIPPED: install pgbouncer (apt-get install pgbouncer) to run this test");
        return;
    }
    const TASKS: usize = 8;
    const READS: usize = 200;
    let (db, direct) = tokio::task::block_in_place(|| setup(2));
    let tenants = Arc::new(tokio::task::block_in_place(|| {
        tenants_with_markers(&direct, "apgb", 20)
    }));
    let bouncer = tokio::task::block_in_place(|| PgBouncer::start(db.url(), "transaction", 3))
        .unwrap();
    async fn run(pool: &AsyncTenantPool, tenants: &Arc<Vec<Tenant>>) -> Arc<Tally> {
        let tally = Arc::new(Tally::default());
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let (pool, tenants, tally) = (pool.clone(), tenants.clone(), tally.clone());
                tokio::spawn(async move {
                    let mut rng = Rng::new(0xb0b + t as u64);
                    for _ in 0..READS {
                        let tenant = &tenants[rng.below(tenants.len())];
                        let outcome =
                            tokio::time::timeout(Duration::from_secs(10), read(&pool, tenant))
                                .await
                                .ok();
                        tally.record(tenant, outcome);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        tally
    }
    let safe = kind.build(
        AsyncTenantPool::builder(bouncer.url())
            .max_size(8)
            .transaction_scoped(true),
    );
    let tally = run(&safe, &tenants).await;
    println!(
        "transaction-scoped behind PgBouncer, transaction mode ({}): {}",
        kind.name(),
        tally.summary()
    );
    assert_eq!(get(&tally.wrong), 0, "wrong-tenant reads");
    assert_eq!(tally.reads(), TASKS * READS, "{}", tally.summary());

    let unsafe_pool = kind.build(
        AsyncTenantPool::builder(bouncer.url())
            .max_size(8)
            .statement_cache(false)
            .connection_timeout(Duration::from_secs(5)),
    );
    let tally = run(&unsafe_pool, &tenants).await;
    println!(
        "session mode behind the same PgBouncer ({}): {}",
        kind.name(),
        tally.summary()
    );
    assert!(
        get(&tally.wrong) > 0,
        "session mode behind a transaction pooler should have read other tenants' rows"
    );
});
