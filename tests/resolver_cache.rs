//! The resolver's cache: a hit costs no query, and a change made by another
//! process arrives through NOTIFY. In a test binary of its own, one test at a
//! time: any registry change in the process invalidates the cache, so other
//! tests running beside these would hide what they check.
#![allow(missing_docs)]

mod common;

use common::{info, tenant_of};

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{TENANT, setup};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_tenancy::{
    Domain, NewTenant, RequestInfo, Resolution, Resolver, SchemaName, create_tenant,
};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn a_cache_hit_costs_no_query() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (_db, pool) = setup(2);
    let new = NewTenant::new(SchemaName::new("acme").unwrap(), "Acme")
        .domain(Domain::parse("acme.example.com").unwrap());
    create_tenant(&mut pool.public().unwrap(), &new, TENANT).unwrap();
    let resolver = Resolver::builder(pool.clone()).build().unwrap();
    for (host, found) in [("acme.example.com", true), ("nobody.example.com", false)] {
        let info = RequestInfo {
            host: Some(host),
            path: "/",
            ..RequestInfo::default()
        };
        let first = resolver.resolve(&info).unwrap();
        assert_eq!(matches!(first, Resolution::Tenant { .. }), found);
        let before = pool.stats().scoped;
        for _ in 0..10 {
            assert_eq!(resolver.resolve(&info).unwrap(), first);
            assert_eq!(resolver.resolve_cached(&info).unwrap().unwrap(), first);
        }
        assert_eq!(pool.stats().scoped, before, "{host} was looked up again");
    }
}

#[test]
fn another_process_moving_a_domain_is_heard_through_notify() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (db, pool) = setup(2);
    for (schema, host) in [
        ("acme", "shared.example.com"),
        ("globex", "globex.example.com"),
    ] {
        let new = NewTenant::new(SchemaName::new(schema).unwrap(), schema)
            .domain(Domain::parse(host).unwrap());
        create_tenant(&mut pool.public().unwrap(), &new, TENANT).unwrap();
    }
    let resolver = Resolver::builder(pool.clone())
        .cache_ttl(Duration::from_secs(3600))
        .build()
        .unwrap();
    let _listener = resolver.listen().unwrap();
    let shared = info("shared.example.com");
    assert_eq!(
        tenant_of(resolver.resolve(&shared).unwrap()).as_deref(),
        Some("acme")
    );
    // Another process (raw SQL on its own connection: nothing in this process
    // knows) moves the domain.
    let mut other = PgConnection::establish(db.url()).unwrap();
    other
        .batch_execute(
            "UPDATE tenancy_domains SET is_primary = false, \
             tenant_id = (SELECT id FROM tenancy_tenants WHERE schema_name = 'globex') \
             WHERE domain = 'shared.example.com'",
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = tenant_of(resolver.resolve(&shared).unwrap());
        if now.as_deref() == Some("globex") {
            break;
        }
        assert!(Instant::now() < deadline, "still routed to {now:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The same on a Citus coordinator, where the registry stays: lookups, the
/// cache and NOTIFY invalidation work as on one server (here with the
/// registry turned into Citus local tables by a shared table that references
/// it and a reference table).
#[test]
fn on_citus_the_registry_and_notify_work_on_the_coordinator() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let db = match diesel_tenancy::testing::CitusDatabase::new() {
        Ok(db) => db,
        Err(diesel_tenancy::testing::TestingError::CitusNotInstalled)
            if !diesel_tenancy::testing::citus_required() =>
        {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED the Citus resolver test: Citus is not installed for this PostgreSQL"
            );
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let pool = db.migrated_pool(common::SHARED).unwrap();
    pool.public()
        .unwrap()
        .batch_execute("SELECT tenancy_reference_table('plans')")
        .unwrap();
    for (schema, host) in [
        ("acme", "shared.example.com"),
        ("globex", "globex.example.com"),
    ] {
        let new = NewTenant::new(SchemaName::new(schema).unwrap(), schema)
            .domain(Domain::parse(host).unwrap());
        create_tenant(&mut pool.public().unwrap(), &new, TENANT).unwrap();
    }
    let resolver = Resolver::builder(pool.clone())
        .cache_ttl(Duration::from_secs(3600))
        .build()
        .unwrap();
    let _listener = resolver.listen().unwrap();
    let shared = info("shared.example.com");
    assert_eq!(
        tenant_of(resolver.resolve(&shared).unwrap()).as_deref(),
        Some("acme")
    );
    assert_eq!(
        tenant_of(resolver.resolve(&info("nobody.example.com")).unwrap()),
        None
    );
    let mut other = PgConnection::establish(db.url()).unwrap();
    other
        .batch_execute(
            "UPDATE tenancy_domains SET is_primary = false, \
             tenant_id = (SELECT id FROM tenancy_tenants WHERE schema_name = 'globex') \
             WHERE domain = 'shared.example.com'",
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = tenant_of(resolver.resolve(&shared).unwrap());
        if now.as_deref() == Some("globex") {
            break;
        }
        assert!(Instant::now() < deadline, "still routed to {now:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A lookup racing with a registry write cannot cache the old answer past the
/// write: right after `suspend_tenant` / `activate_tenant` return, the
/// resolver answers the new way, however many lookups ran meanwhile.
#[test]
fn a_lookup_racing_a_write_never_outlives_it() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (_db, pool) = setup(4);
    let new = NewTenant::new(SchemaName::new("racy").unwrap(), "racy")
        .domain(Domain::parse("racy.example.com").unwrap());
    create_tenant(&mut pool.public().unwrap(), &new, TENANT).unwrap();
    let resolver = Resolver::builder(pool.clone())
        .cache_ttl(Duration::from_secs(3600))
        .negative_ttl(Duration::from_secs(3600))
        .build()
        .unwrap();
    let host = info("racy.example.com");
    let stop = std::sync::atomic::AtomicBool::new(false);
    // Stops the racing lookups however the checks end (a failed assertion
    // included), so that the scope can join them.
    struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let schema = SchemaName::new("racy").unwrap();
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        for _ in 0..2 {
            s.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = resolver.resolve(&host);
                }
            });
        }
        for round in 0..40 {
            diesel_tenancy::suspend_tenant(&mut pool.public().unwrap(), &schema).unwrap();
            let after = tenant_of(resolver.resolve(&host).unwrap());
            assert_eq!(after, None, "round {round}: still served after suspend");
            diesel_tenancy::activate_tenant(&mut pool.public().unwrap(), &schema).unwrap();
            let after = tenant_of(resolver.resolve(&host).unwrap());
            assert_eq!(
                after.as_deref(),
                Some("racy"),
                "round {round}: not served after activate"
            );
        }
    });
}

/// Kills the registry listener's backend(s) in `url`'s database; returns how
/// many were killed.
fn kill_listener(url: &str) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct Killed {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    diesel::sql_query(
        "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity \
         WHERE application_name = $1 AND datname = current_database()",
    )
    .bind::<diesel::sql_types::Text, _>(diesel_tenancy::LISTENER_APPLICATION_NAME)
    .get_result::<Killed>(&mut PgConnection::establish(url).unwrap())
    .unwrap()
    .n
}

/// Moves `shared.example.com` to globex with raw SQL (no in-process
/// invalidation), then waits up to `bound` for `resolve` to follow.
fn move_and_expect_globex(
    url: &str,
    bound: Duration,
    resolve: impl Fn() -> Option<String>,
) -> Duration {
    let mut other = PgConnection::establish(url).unwrap();
    other
        .batch_execute(
            "UPDATE tenancy_domains SET is_primary = false, \
             tenant_id = (SELECT id FROM tenancy_tenants WHERE schema_name = 'globex') \
             WHERE domain = 'shared.example.com'",
        )
        .unwrap();
    let started = Instant::now();
    loop {
        let now = resolve();
        if now.as_deref() == Some("globex") {
            return started.elapsed();
        }
        assert!(started.elapsed() < bound, "still routed to {now:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn two_tenants(pool: &diesel_tenancy::TenantPool) {
    for (schema, host) in [
        ("acme", "shared.example.com"),
        ("globex", "globex.example.com"),
    ] {
        let new = NewTenant::new(SchemaName::new(schema).unwrap(), schema)
            .domain(Domain::parse(host).unwrap());
        create_tenant(&mut pool.public().unwrap(), &new, TENANT).unwrap();
    }
}

/// The listener's backend is killed and the domain moves while it is down:
/// on reconnecting, the listener drops every cached answer, so the change
/// made during the outage is seen within 2 seconds (it reconnects after half
/// a second).
#[test]
fn the_listener_recovers_when_its_backend_is_killed() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (db, pool) = setup(2);
    two_tenants(&pool);
    let resolver = Resolver::builder(pool.clone())
        .cache_ttl(Duration::from_secs(3600))
        .build()
        .unwrap();
    let _listener = resolver.listen().unwrap();
    let shared = info("shared.example.com");
    assert_eq!(
        tenant_of(resolver.resolve(&shared).unwrap()).as_deref(),
        Some("acme")
    );
    assert_eq!(kill_listener(db.url()), 1);
    move_and_expect_globex(db.url(), Duration::from_secs(2), || {
        tenant_of(resolver.resolve(&shared).unwrap())
    });
}

/// The same for the async pool's listener task.
#[test]
fn the_async_listener_recovers_when_its_backend_is_killed() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (db, pool) = setup(2);
    two_tenants(&pool);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let apool = rt.block_on(async {
        diesel_tenancy::AsyncTenantPool::builder(db.url())
            .max_size(2)
            .build()
            .unwrap()
    });
    let resolver = Resolver::builder(apool)
        .cache_ttl(Duration::from_secs(3600))
        .build()
        .unwrap();
    let _listener = rt.block_on(resolver.listen_async()).unwrap();
    let shared = info("shared.example.com");
    let resolve = || tenant_of(rt.block_on(resolver.resolve_async(&shared)).unwrap());
    assert_eq!(resolve().as_deref(), Some("acme"));
    assert_eq!(kill_listener(db.url()), 1);
    move_and_expect_globex(db.url(), Duration::from_secs(2), resolve);
}

/// The server restarts (every connection cut) while the domain moves: the
/// listener reconnects once the server is back and drops every cached answer.
#[test]
fn the_listener_recovers_from_a_server_restart() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut cluster = diesel_tenancy::testing::TestCluster::start().unwrap();
    let url = cluster.admin_url().to_owned();
    let pool = diesel_tenancy::TenantPool::builder(&url)
        .max_size(2)
        .build()
        .unwrap();
    diesel_tenancy::run_shared_migrations(&mut pool.public().unwrap(), common::SHARED).unwrap();
    two_tenants(&pool);
    let resolver = Resolver::builder(pool.clone())
        .cache_ttl(Duration::from_secs(3600))
        .build()
        .unwrap();
    let _listener = resolver.listen().unwrap();
    let shared = info("shared.example.com");
    assert_eq!(
        tenant_of(resolver.resolve(&shared).unwrap()).as_deref(),
        Some("acme")
    );
    cluster.restart().unwrap();
    // The pool's connections died with the server; it replaces them.
    move_and_expect_globex(&url, Duration::from_secs(5), || {
        resolver.resolve(&shared).ok().and_then(tenant_of)
    });
}

/// Behind PgBouncer in transaction mode, `LISTEN` through the pool's URL
/// would hear nothing; with `listen_url` pointing at the server, the
/// listener hears every change while requests go through PgBouncer.
#[test]
fn behind_pgbouncer_the_listener_uses_its_own_url() {
    use diesel_tenancy::testing::PgBouncer;
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if PgBouncer::binary().is_none() {
        let required = std::env::var("DIESEL_TENANCY_REQUIRE_PGBOUNCER").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "pgbouncer is required: apt-get install pgbouncer"
        );
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED the PgBouncer listener test: install pgbouncer to run it"
        );
        return;
    }
    let (db, direct) = setup(2);
    two_tenants(&direct);
    let bouncer = PgBouncer::start(db.url(), "transaction", 2).unwrap();
    let pool = diesel_tenancy::TenantPool::builder(bouncer.url())
        .transaction_scoped(true)
        .max_size(2)
        .build()
        .unwrap();
    let resolver = Resolver::builder(pool)
        .cache_ttl(Duration::from_secs(3600))
        .listen_url(db.url())
        .build()
        .unwrap();
    let _listener = resolver.listen().unwrap();
    let shared = info("shared.example.com");
    assert_eq!(
        tenant_of(resolver.resolve(&shared).unwrap()).as_deref(),
        Some("acme")
    );
    move_and_expect_globex(db.url(), Duration::from_secs(5), || {
        tenant_of(resolver.resolve(&shared).unwrap())
    });
}
