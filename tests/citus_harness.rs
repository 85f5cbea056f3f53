//! The Citus test harness: a database per test on a coordinator and workers,
//! with schema-based sharding on.
//!
//! Needs Citus (see `testing::citus_installed`) or `DIESEL_TENANCY_CITUS_URL`;
//! without either the tests say so and pass, unless
//! `DIESEL_TENANCY_REQUIRE_CITUS=1` is set.
#![allow(missing_docs)]

use std::time::Instant;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Text};
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use diesel_tenancy::testing::{CitusDatabase, TestingError, citus_required};

const SHARED: EmbeddedMigrations = embed_migrations!("migrations_shared");

/// A Citus database, or `None` (after saying so) when Citus is not available
/// and not required.
fn citus_db() -> Option<CitusDatabase> {
    let started = Instant::now();
    match CitusDatabase::new() {
        Err(e @ TestingError::CitusNotInstalled) if !citus_required() => {
            eprintln!("skipped: {e}");
            None
        }
        Ok(db) => {
            eprintln!("CitusDatabase::new() took {:?}", started.elapsed());
            Some(db)
        }
        Err(e) => panic!("{e}"),
    }
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Port {
    #[diesel(sql_type = Integer)]
    port: i32,
}

fn connect(url: &str) -> PgConnection {
    PgConnection::establish(url).unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

/// `SELECT count(*) AS n ...` on `url`.
fn count(url: &str, sql: &str) -> i64 {
    diesel::sql_query(sql)
        .get_result::<Count>(&mut connect(url))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .n
}

fn port_of(url: &str) -> u16 {
    url::Url::parse(url).unwrap().port().unwrap()
}

/// `url` pointed at database `postgres`.
fn admin_of(url: &str) -> String {
    let mut url = url::Url::parse(url).unwrap();
    url.set_path("/postgres");
    url.into()
}

fn database_name(db: &CitusDatabase) -> String {
    url::Url::parse(db.url()).unwrap().path()[1..].to_owned()
}

/// Creates tenant schema `schema` with a table and returns the port of the
/// node its shard is on.
fn shard_port(db: &CitusDatabase, schema: &str) -> u16 {
    let mut conn = connect(db.url());
    conn.batch_execute(&format!(
        "CREATE SCHEMA {schema}; CREATE TABLE {schema}.a (id int PRIMARY KEY)"
    ))
    .unwrap();
    let ports: Vec<Port> = diesel::sql_query(format!(
        "SELECT nodeport AS port FROM citus_shards WHERE table_name = '{schema}.a'::regclass"
    ))
    .load(&mut conn)
    .unwrap();
    assert_eq!(ports.len(), 1, "one shard");
    u16::try_from(ports[0].port).unwrap()
}

/// How many shards of table `<schema>.a` the node of `url` holds (Citus hides
/// shards from the catalog unless told not to).
fn shard_tables(url: &str, schema: &str) -> i64 {
    let mut conn = connect(url);
    conn.batch_execute("SET citus.override_table_visibility TO off")
        .unwrap();
    diesel::sql_query(
        "SELECT count(*) AS n FROM pg_tables WHERE schemaname = $1 AND tablename LIKE 'a\\_%'",
    )
    .bind::<Text, _>(schema)
    .get_result::<Count>(&mut conn)
    .unwrap()
    .n
}

#[test]
fn a_database_has_the_coordinator_and_the_first_worker() {
    let Some(db) = citus_db() else { return };
    assert!(db.workers() >= 1, "the cluster has workers");
    let nodes = |filter: &str| {
        count(
            db.url(),
            &format!(
                "SELECT count(*) AS n FROM pg_dist_node WHERE noderole = 'primary' AND {filter}"
            ),
        )
    };
    assert_eq!(
        nodes("groupid = 0 AND NOT shouldhaveshards"),
        1,
        "coordinator"
    );
    assert_eq!(nodes("groupid <> 0"), 1, "one worker");
    assert_eq!(nodes("shouldhaveshards"), 1, "only the worker takes shards");
    let worker0 = port_of(&db.worker_url(0).unwrap());
    assert_eq!(
        nodes(&format!("groupid <> 0 AND nodeport = {worker0}")),
        1,
        "the worker is worker 0"
    );
    assert_eq!(db.worker_url(db.workers()), None);

    let sharding: Vec<Count> = diesel::sql_query(
        "SELECT (current_setting('citus.enable_schema_based_sharding') = 'on')::int::int8 AS n",
    )
    .load(&mut connect(db.url()))
    .unwrap();
    assert_eq!(sharding[0].n, 1, "schema-based sharding is on");
    let health = count(
        db.url(),
        "SELECT count(*) AS n FROM citus_check_cluster_node_health() WHERE NOT result",
    );
    assert_eq!(health, 0, "every node reaches every other");

    // The harness's pools work on it.
    let pool = db.migrated_pool(SHARED).unwrap();
    let plans: i64 = pool
        .with_public(|conn| {
            diesel::sql_query("SELECT count(*) AS n FROM plans")
                .get_result::<Count>(conn)
                .map(|c| c.n)
                .map_err(diesel_tenancy::Error::from)
        })
        .unwrap();
    assert_eq!(plans, 2);
}

#[test]
fn a_schema_is_placed_on_the_first_worker() {
    let Some(db) = citus_db() else { return };
    let worker0 = db.worker_url(0).unwrap();
    assert_eq!(shard_port(&db, "t"), port_of(&worker0));
    assert_eq!(shard_tables(&worker0, "t"), 1, "the shard is on worker 0");
    for i in 1..db.workers() {
        let other = db.worker_url(i).unwrap();
        assert_eq!(shard_tables(&other, "t"), 0, "no shard on worker {i}");
    }
}

#[test]
fn add_worker_makes_a_second_node() {
    let Some(db) = citus_db() else { return };
    if db.workers() < 2 {
        eprintln!("skipped: the cluster has only {} worker(s)", db.workers());
        return;
    }
    let second = db.worker_url(1).unwrap();
    // Made while worker 0 is the only node: placed there.
    let worker0 = port_of(&db.worker_url(0).unwrap());
    assert_eq!(shard_port(&db, "moving"), worker0);
    let (host, port) = db.add_worker().unwrap();
    assert_eq!(port, port_of(&second));
    assert!(!host.is_empty());
    let workers = count(
        db.url(),
        "SELECT count(*) AS n FROM pg_dist_node WHERE noderole = 'primary' AND shouldhaveshards",
    );
    assert_eq!(workers, 2);
    // Its metadata was synced to the new node's copy of the database.
    assert!(count(&second, "SELECT count(*) AS n FROM pg_dist_node") >= 3);
    // The new node takes shards: a schema moved there lands there.
    connect(db.url())
        .batch_execute(&format!(
            "SELECT citus_schema_move('moving', '{host}', {port}, 'block_writes')"
        ))
        .unwrap();
    let moved: Vec<Port> = diesel::sql_query(
        "SELECT nodeport AS port FROM citus_shards WHERE table_name = 'moving.a'::regclass",
    )
    .load(&mut connect(db.url()))
    .unwrap();
    assert_eq!(moved.len(), 1);
    assert_eq!(u16::try_from(moved[0].port).unwrap(), port);
    if db.workers() == 2 {
        let err = db.add_worker().unwrap_err();
        assert!(err.to_string().contains("add a worker"), "{err}");
    }
}

#[test]
fn databases_are_created_in_parallel() {
    let Some(first) = citus_db() else { return };
    let worker0 = port_of(&first.worker_url(0).unwrap());
    let started = Instant::now();
    let names: Vec<String> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..4)
            .map(|i| {
                s.spawn(move || {
                    let db = CitusDatabase::new().unwrap();
                    assert_eq!(shard_port(&db, &format!("p{i}")), worker0);
                    database_name(&db)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    eprintln!(
        "4 databases created, used and dropped in parallel in {:?}",
        started.elapsed()
    );
    for url in std::iter::once(admin_of(first.url()))
        .chain((0..first.workers()).map(|i| admin_of(&first.worker_url(i).unwrap())))
    {
        for name in &names {
            let left =
                diesel::sql_query("SELECT count(*) AS n FROM pg_database WHERE datname = $1")
                    .bind::<Text, _>(name)
                    .get_result::<Count>(&mut connect(&url))
                    .unwrap()
                    .n;
            assert_eq!(left, 0, "{name} is left on {url}");
        }
    }
}

#[test]
fn drop_removes_the_database_from_every_node() {
    let Some(db) = citus_db() else { return };
    shard_port(&db, "gone");
    let name = database_name(&db);
    let coordinator = admin_of(db.url());
    let nodes: Vec<String> = std::iter::once(coordinator.clone())
        .chain((0..db.workers()).map(|i| admin_of(&db.worker_url(i).unwrap())))
        .collect();
    let present = |url: &str| {
        diesel::sql_query("SELECT count(*) AS n FROM pg_database WHERE datname = $1")
            .bind::<Text, _>(&name)
            .get_result::<Count>(&mut connect(url))
            .unwrap()
            .n
    };
    for url in &nodes {
        assert_eq!(present(url), 1, "{name} is on {url}");
    }
    // The coordinator's postgres database records it as a distributed object.
    let tracked = || {
        diesel::sql_query(
            "SELECT count(*) AS n FROM pg_catalog.pg_dist_object \
             WHERE classid = 'pg_database'::regclass AND objid = \
             (SELECT oid FROM pg_database WHERE datname = $1)",
        )
        .bind::<Text, _>(&name)
        .get_result::<Count>(&mut connect(&coordinator))
        .unwrap()
        .n
    };
    assert_eq!(tracked(), 1);
    let started = Instant::now();
    drop(db);
    eprintln!("dropped in {:?}", started.elapsed());
    for url in &nodes {
        assert_eq!(present(url), 0, "{name} is left on {url}");
    }
    let stale = count(
        &coordinator,
        "SELECT count(*) AS n FROM pg_catalog.pg_dist_object \
         WHERE classid = 'pg_database'::regclass \
         AND objid NOT IN (SELECT oid FROM pg_database)",
    );
    assert_eq!(
        stale, 0,
        "no distributed-object record outlives its database"
    );
}

#[test]
fn a_cluster_starts_and_stops() {
    if !diesel_tenancy::testing::citus_installed() {
        assert!(
            !citus_required(),
            "DIESEL_TENANCY_REQUIRE_CITUS=1 but Citus is not installed"
        );
        eprintln!("skipped: Citus is not installed");
        return;
    }
    let started = Instant::now();
    let cluster = diesel_tenancy::testing::CitusCluster::start(2).unwrap();
    eprintln!("CitusCluster::start(2) took {:?}", started.elapsed());
    let workers = cluster.worker_urls();
    assert_eq!(workers.len(), 2);
    let coordinator = cluster.coordinator_url().to_owned();
    assert!(
        coordinator.starts_with("postgres://postgres@127.0.0.1:"),
        "{coordinator}"
    );
    assert!(coordinator.ends_with("/postgres"), "{coordinator}");
    let registered = count(
        &coordinator,
        "SELECT count(*) AS n FROM pg_dist_node WHERE groupid <> 0 AND noderole = 'primary'",
    );
    assert_eq!(registered, 2);
    for url in &workers {
        let preloaded = count(
            url,
            "SELECT count(*) AS n FROM pg_settings WHERE \
             (name, setting) IN (('shared_preload_libraries', 'citus'), ('wal_level', 'logical'), \
             ('max_wal_senders', '20'), ('max_replication_slots', '20'), ('fsync', 'off'))",
        );
        assert_eq!(preloaded, 5, "{url}");
    }
    drop(cluster);
    for url in std::iter::once(&coordinator).chain(&workers) {
        assert!(PgConnection::establish(url).is_err(), "{url} still answers");
    }
}

#[test]
fn a_database_without_citus_gets_it_later() {
    let plain = match CitusDatabase::without_citus() {
        Err(e @ TestingError::CitusNotInstalled) if !citus_required() => {
            return eprintln!("skipped: {e}");
        }
        db => db.unwrap(),
    };
    let citus = "SELECT count(*) AS n FROM pg_extension WHERE extname = 'citus'";
    let everywhere: Vec<String> = std::iter::once(plain.url().to_owned())
        .chain((0..plain.workers()).map(|i| plain.worker_url(i).unwrap()))
        .collect();
    for url in &everywhere {
        assert_eq!(count(url, citus), 0, "no extension yet on {url}");
    }
    let (_, port) = plain.enable_citus().unwrap();
    assert_eq!(port, port_of(&plain.worker_url(0).unwrap()));
    for url in &everywhere {
        assert_eq!(count(url, citus), 1, "the extension on {url}");
    }
    assert_eq!(shard_port(&plain, "later"), port);
}
