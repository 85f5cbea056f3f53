//! Citus mode, against a real coordinator and workers (schema-based sharding):
//! placement, migrations seen on the worker, rollback on the worker, drop,
//! rename, moves, rebalancing, isolation through the coordinator, the CLI, and
//! the move of an existing single-server database to Citus.
//!
//! Needs Citus installed for the machine's PostgreSQL (`.ci/run` builds it) or
//! `DIESEL_TENANCY_CITUS_URL`. Without either, every test prints that it was
//! skipped, unless `DIESEL_TENANCY_REQUIRE_CITUS=1` (as in CI), which makes
//! them fail instead.
#![allow(missing_docs)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

use common::{MigrationDir, Rng, markers};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use diesel_tenancy::citus::{self, ClusterMode, NodeAddr, TransferMode};
use diesel_tenancy::testing::{self, CitusDatabase, TestingError};
use diesel_tenancy::{
    ConfirmDrop, Error, MigrateOptions, Migrator, NewTenant, Outcome, SchemaName, Tenant,
    TenantPool, create_tenant, drop_tenant, rename_tenant,
};

/// A Citus database for this test, or `None` (after saying so) when Citus is
/// not available and not required.
fn citus_db() -> Option<CitusDatabase> {
    match CitusDatabase::new() {
        Ok(db) => Some(db),
        Err(TestingError::CitusNotInstalled) if !testing::citus_required() => {
            // Once, and past the test harness's output capture, so that a
            // plain `cargo test` shows it.
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED the Citus tests: Citus is not installed for this PostgreSQL \
                     (.ci/run builds it; DIESEL_TENANCY_REQUIRE_CITUS=1 makes this a failure)"
                );
            });
            None
        }
        Err(e) => panic!("Citus test database: {e}"),
    }
}

/// The shared set plus a migration that makes `plans` a reference table.
fn shared_dir() -> MigrationDir {
    let dir = MigrationDir::copy_of("migrations_shared");
    dir.add(
        "2025-06-01-000001",
        "plans_everywhere",
        "SELECT tenancy_reference_table('plans');\n",
    );
    dir
}

/// The tenant set plus a table referencing the reference table, with an index
/// (which Citus refuses inside a multi-statement string).
fn tenant_dir() -> MigrationDir {
    let dir = MigrationDir::tenant_copy();
    dir.add(
        "2025-06-01-000001",
        "subscriptions",
        "CREATE TABLE subscriptions (\n    id bigserial PRIMARY KEY,\n    plan_id integer NOT NULL REFERENCES public.plans (id)\n);\n\
         CREATE INDEX subscriptions_plan ON subscriptions (plan_id);\n",
    );
    dir
}

fn setup(db: &CitusDatabase, shared: &MigrationDir) -> TenantPool {
    db.migrated_pool(shared.source()).expect("migrated pool")
}

fn create(pool: &TenantPool, schema: &str, tenants: &MigrationDir) -> Tenant {
    let new = NewTenant::new(SchemaName::new(schema).unwrap(), schema);
    pool.with_public(|conn| create_tenant(conn, &new, tenants.source()))
        .unwrap_or_else(|e| panic!("create {schema}: {e}"))
}

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = Text)]
    s: String,
}

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

fn strings(conn: &mut PgConnection, sql: &str) -> Vec<String> {
    diesel::sql_query(sql)
        .load::<Row>(conn)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .map(|r| r.s)
        .collect()
}

fn number(conn: &mut PgConnection, sql: &str) -> i64 {
    diesel::sql_query(sql)
        .get_result::<N>(conn)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .n
}

/// The distinct nodes (`port`) holding `schema`'s tables, per `citus_shards`.
fn shard_ports(pool: &TenantPool, schema: &str) -> Vec<String> {
    strings(
        &mut pool.public().unwrap(),
        &format!(
            "SELECT DISTINCT nodeport::text AS s FROM citus_shards \
             WHERE citus_table_type = 'schema' AND table_name::text LIKE '{schema}.%' ORDER BY 1"
        ),
    )
}

fn worker(db: &CitusDatabase, i: usize) -> (PgConnection, u16) {
    let url = db.worker_url(i).expect("worker url");
    let port = url::Url::parse(&url).unwrap().port().unwrap();
    let mut conn = PgConnection::establish(&url).expect("connect to worker");
    // Citus hides shard tables from catalog queries on workers by default.
    conn.batch_execute("SET citus.override_table_visibility TO off")
        .unwrap();
    (conn, port)
}

/// Columns of `schema`'s shards of `table` on a worker (shard tables are
/// named `<table>_<shard id>`).
fn worker_columns(conn: &mut PgConnection, schema: &str, table: &str) -> Vec<String> {
    strings(
        conn,
        &format!(
            "SELECT DISTINCT column_name::text AS s FROM information_schema.columns \
             WHERE table_schema = '{schema}' AND table_name ~ '^{table}_[0-9]+$' ORDER BY 1"
        ),
    )
}

fn worker_schemas(conn: &mut PgConnection) -> Vec<String> {
    strings(
        conn,
        "SELECT nspname::text AS s FROM pg_namespace WHERE nspname ~ '^(t|ren|mv)[a-z0-9_]*$' ORDER BY 1",
    )
}

#[test]
fn tenants_are_created_whole_on_a_worker_and_detected_without_configuration() {
    let Some(db) = citus_db() else { return };
    let (shared, tenants) = (shared_dir(), tenant_dir());
    let pool = setup(&db, &shared);
    assert_eq!(
        citus::detect(&mut pool.public().unwrap()).unwrap(),
        ClusterMode::Citus
    );
    create(&pool, "t_acme", &tenants);
    let (mut w0, port0) = worker(&db, 0);
    assert_eq!(shard_ports(&pool, "t_acme"), [port0.to_string()]);
    let placed = citus::placement(
        &mut pool.public().unwrap(),
        &SchemaName::new("t_acme").unwrap(),
    )
    .unwrap();
    assert_eq!(placed.map(|n| n.port), Some(port0));
    // The tables exist on the worker, with the index Citus could not have
    // taken in one multi-statement string.
    assert_eq!(
        worker_columns(&mut w0, "t_acme", "subscriptions"),
        ["id", "plan_id"]
    );
    assert_eq!(
        number(
            &mut w0,
            "SELECT count(*) AS n FROM pg_indexes WHERE schemaname = 't_acme' AND indexname ~ '^subscriptions_plan_[0-9]+$'"
        ),
        1
    );
    // The reference table's foreign key holds on the worker.
    let acme = pool
        .with_public(|c| {
            diesel_tenancy::registry::get_tenant(c, &SchemaName::new("t_acme").unwrap())
        })
        .unwrap();
    pool.with_tenant(&acme, |conn| {
        conn.batch_execute(
            "INSERT INTO subscriptions (plan_id) SELECT id FROM public.plans WHERE name = 'pro'",
        )
    })
    .unwrap();
    let refused = pool
        .with_tenant(&acme, |conn| {
            conn.batch_execute("INSERT INTO subscriptions (plan_id) VALUES (999)")
        })
        .unwrap_err();
    assert!(refused.to_string().contains("foreign key"), "{refused}");
    // A creation that fails leaves nothing, on the coordinator or the worker.
    let broken = MigrationDir::tenant_copy();
    broken.add(
        "2025-06-01-000002",
        "broken",
        "CREATE TABLE x (id int PRIMARY KEY);\nSELECT 1/0;\n",
    );
    let new = NewTenant::new(SchemaName::new("t_broken").unwrap(), "broken");
    let err = pool
        .with_public(|conn| create_tenant(conn, &new, broken.source()))
        .unwrap_err();
    assert!(
        matches!(&err, Error::Migration { schema, version: Some(v), .. } if schema == "t_broken" && v == "20250601000002"),
        "{err:?}"
    );
    assert_eq!(worker_schemas(&mut w0), ["t_acme"]);
    assert_eq!(
        number(
            &mut pool.public().unwrap(),
            "SELECT count(*) AS n FROM pg_namespace WHERE nspname = 't_broken'"
        ),
        0
    );
    assert!(shard_ports(&pool, "t_broken").is_empty());
}

#[test]
fn migrations_reach_the_worker_and_a_failure_rolls_back_there_too() {
    let Some(db) = citus_db() else { return };
    let (shared, tenants) = (shared_dir(), tenant_dir());
    let pool = setup(&db, &shared);
    for s in ["t_a", "t_b", "t_c"] {
        create(&pool, s, &tenants);
    }
    let (mut w0, _) = worker(&db, 0);
    // A new column and index for every tenant, statement by statement.
    tenants.add(
        "2025-06-02-000001",
        "nickname",
        "ALTER TABLE customers ADD COLUMN nickname text;\nCREATE INDEX customers_nickname ON customers (nickname);\n",
    );
    let report = Migrator::new(shared.source(), tenants.source())
        .migrate_all(&pool, &MigrateOptions::new())
        .unwrap();
    assert_eq!(report.mode, ClusterMode::Citus);
    assert_eq!(report.totals().failed, 0, "{report:?}");
    for s in ["t_a", "t_b", "t_c"] {
        assert!(
            worker_columns(&mut w0, s, "customers").contains(&"nickname".to_owned()),
            "{s}"
        );
    }
    // A no-op deploy is decided by the journal on the coordinator.
    let again = Migrator::new(shared.source(), tenants.source())
        .migrate_all(&pool, &MigrateOptions::new())
        .unwrap();
    assert_eq!(again.decided_by_journal, 3);
    // A migration that fails on one tenant only (its data breaks a new
    // constraint) rolls back there, on the worker too, and names the tenant;
    // the others get it.
    let b = pool
        .with_public(|c| diesel_tenancy::registry::get_tenant(c, &SchemaName::new("t_b").unwrap()))
        .unwrap();
    pool.with_tenant(&b, |conn| {
        conn.batch_execute("INSERT INTO customers (name, email) VALUES ('x', 'NOT-LOWER@b.test')")
    })
    .unwrap();
    tenants.add(
        "2025-06-02-000002",
        "lower_emails",
        "ALTER TABLE customers ADD COLUMN tier text;\n\
         CREATE INDEX customers_tier ON customers (tier);\n\
         ALTER TABLE customers ADD CONSTRAINT email_lower CHECK (email = lower(email));\n",
    );
    let report = Migrator::new(shared.source(), tenants.source())
        .migrate_all(&pool, &MigrateOptions::new())
        .unwrap();
    let failed: Vec<_> = report
        .tenants
        .iter()
        .filter(|t| t.outcome.is_failure())
        .collect();
    assert_eq!(failed.len(), 1, "{report:?}");
    assert_eq!(failed[0].schema.as_str(), "t_b");
    match &failed[0].outcome {
        Outcome::Failed { version, error, .. } => {
            assert_eq!(version.as_deref(), Some("20250602000002"));
            assert!(error.to_string().contains("email_lower"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    assert!(!worker_columns(&mut w0, "t_b", "customers").contains(&"tier".to_owned()));
    assert!(worker_columns(&mut w0, "t_a", "customers").contains(&"tier".to_owned()));
    assert_eq!(
        number(
            &mut w0,
            "SELECT count(*) AS n FROM pg_indexes WHERE schemaname = 't_b' AND indexname ~ '^customers_tier_[0-9]+$'"
        ),
        0
    );
    // What Citus refuses is reported with the tenant and Citus's own words.
    tenants.add(
        "2025-06-02-000003",
        "trigger",
        "CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;\n\
         CREATE TRIGGER customers_touch BEFORE UPDATE ON customers FOR EACH ROW EXECUTE FUNCTION touch();\n",
    );
    let report = Migrator::new(shared.source(), tenants.source())
        .migrate_all(
            &pool,
            &MigrateOptions::new().tenants([SchemaName::new("t_a").unwrap()]),
        )
        .unwrap();
    match &report.tenants[0].outcome {
        Outcome::Failed { version, error, .. } => {
            assert_eq!(version.as_deref(), Some("20250602000003"));
            assert!(
                error.to_string().contains("triggers are not supported"),
                "{error}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(report.tenants[0].schema.as_str(), "t_a");
    // The README's other refusals, each on its own: the migration rolls back
    // and the report quotes Citus.
    pool.public()
        .unwrap()
        .batch_execute("CREATE TABLE public.local_only (id int PRIMARY KEY)")
        .unwrap();
    for (sql, said) in [
        (
            "ALTER SEQUENCE customers_id_seq RESTART WITH 100;",
            "Altering a distributed sequence is currently not supported",
        ),
        (
            "ALTER TABLE customers ALTER COLUMN id TYPE integer;",
            "involves a default coming from a sequence",
        ),
        (
            "CREATE TABLE notes (id int PRIMARY KEY, l int REFERENCES public.local_only (id));",
            "must be a distributed table or a reference table",
        ),
        (
            "CREATE TABLE notes (id int PRIMARY KEY, c bigint REFERENCES t_b.customers (id));",
            "not colocated",
        ),
    ] {
        let dir = tenant_dir();
        dir.add("2025-06-03-000001", "refused", sql);
        let report = Migrator::new(shared.source(), dir.source())
            .migrate_all(
                &pool,
                &MigrateOptions::new().tenants([SchemaName::new("t_c").unwrap()]),
            )
            .unwrap();
        match &report.tenants[0].outcome {
            Outcome::Failed { version, error, .. } => {
                assert_eq!(version.as_deref(), Some("20250603000001"), "{sql}");
                assert!(error.to_string().contains(said), "{sql}: {error}");
            }
            other => panic!("{sql}: {other:?}"),
        }
    }
    // A reference table cannot point at a tenant.
    let err = pool
        .public()
        .unwrap()
        .batch_execute(
            "ALTER TABLE public.plans ADD COLUMN owner bigint REFERENCES t_a.customers (id)",
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("foreign keys from reference tables"), "{err}");
    // Joining two tenants is refused too (a query, not a migration).
    let joined = diesel::sql_query(
        "SELECT count(*) AS n FROM t_a.customers a JOIN t_c.customers c ON a.name = c.name",
    )
    .get_result::<N>(&mut pool.public().unwrap());
    let err = joined.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("repartitioning"), "{err}");
}

#[test]
fn drop_and_rename_reach_the_worker() {
    let Some(db) = citus_db() else { return };
    let (shared, tenants) = (shared_dir(), tenant_dir());
    let pool = setup(&db, &shared);
    create(&pool, "t_old", &tenants);
    create(&pool, "t_gone", &tenants);
    let (mut w0, _) = worker(&db, 0);
    assert_eq!(worker_schemas(&mut w0), ["t_gone", "t_old"]);
    let renamed = pool
        .with_public(|c| {
            rename_tenant(
                c,
                &SchemaName::new("t_old").unwrap(),
                &SchemaName::new("ren_new").unwrap(),
            )
        })
        .unwrap();
    pool.with_public(|c| {
        drop_tenant(
            c,
            &SchemaName::new("t_gone").unwrap(),
            ConfirmDrop::DeleteSchemaAndAllItsData,
        )
    })
    .unwrap();
    assert_eq!(worker_schemas(&mut w0), ["ren_new"]);
    assert_eq!(
        number(
            &mut pool.public().unwrap(),
            "SELECT count(*) AS n FROM pg_dist_schema"
        ),
        1
    );
    // The renamed tenant works under its new name.
    pool.with_tenant(&renamed, |conn| {
        conn.batch_execute("INSERT INTO customers (name, email) VALUES ('r', 'r@r.test')")?;
        assert_eq!(markers(conn)?, ["r"]);
        Ok::<_, diesel::result::Error>(())
    })
    .unwrap();
}

#[test]
fn a_tenant_moves_to_a_new_worker_with_its_data_and_rebalance_evens_out() {
    let Some(db) = citus_db() else { return };
    let (shared, tenants) = (shared_dir(), tenant_dir());
    let pool = setup(&db, &shared);
    let made: Vec<Tenant> = (0..4)
        .map(|i| create(&pool, &format!("mv{i}"), &tenants))
        .collect();
    for t in &made {
        pool.with_tenant(t, |conn| {
            conn.batch_execute(&format!(
                "INSERT INTO customers (name, email) VALUES ('{0}', '{0}@x.test'); \
                 INSERT INTO subscriptions (plan_id) SELECT id FROM public.plans",
                t.schema()
            ))
        })
        .unwrap();
    }
    let (host, port) = db.add_worker().expect("second worker");
    let second = NodeAddr { host, port };
    let mut conn = pool.public().unwrap();
    // Nothing lives on the new node yet, not even the reference table: the
    // move copies it first.
    let moved = citus::move_tenant(
        &mut conn,
        made[0].schema(),
        &second,
        TransferMode::BlockWrites,
    )
    .unwrap();
    assert_eq!(moved.to, second);
    assert_ne!(moved.from, second);
    assert_eq!(shard_ports(&pool, "mv0"), [port.to_string()]);
    drop(conn);
    pool.with_tenant(&made[0], |conn| {
        assert_eq!(markers(conn)?, ["mv0"]);
        let joined = number(
            conn,
            "SELECT count(*) AS n FROM subscriptions s JOIN public.plans p ON p.id = s.plan_id",
        );
        assert_eq!(joined, 2);
        Ok::<_, diesel::result::Error>(())
    })
    .unwrap();
    // On the worker itself: the tenant's shards, with the row.
    let (mut w1, _) = worker(&db, 1);
    assert_eq!(
        worker_columns(&mut w1, "mv0", "customers"),
        ["email", "id", "name"]
    );
    // Moving to where it is does nothing; to an unknown node is refused.
    let mut conn = pool.public().unwrap();
    let again =
        citus::move_tenant(&mut conn, made[0].schema(), &second, TransferMode::Auto).unwrap();
    assert_eq!(
        (again.from.clone(), again.elapsed.is_zero()),
        (second.clone(), true)
    );
    let nowhere = NodeAddr {
        host: "127.0.0.1".into(),
        port: 1,
    };
    assert!(matches!(
        citus::move_tenant(&mut conn, made[1].schema(), &nowhere, TransferMode::Auto),
        Err(Error::NodeNotFound { .. })
    ));
    // Three on the first worker, one on the second: rebalancing moves one.
    let mut events = Vec::new();
    let done = citus::rebalance(&mut conn, TransferMode::BlockWrites, |p| {
        events.push(format!("{p:?}"))
    })
    .unwrap();
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(events.len(), 3, "{events:?}");
    let counts: Vec<i64> = citus::nodes(&mut conn)
        .unwrap()
        .iter()
        .filter(|n| !n.is_coordinator())
        .map(|n| n.tenants)
        .collect();
    assert_eq!(counts, [2, 2]);
    assert!(citus::rebalance_plan(&mut conn).unwrap().is_empty());
    drop(conn);
    for t in &made {
        pool.with_tenant(t, |conn| {
            assert_eq!(markers(conn)?, [t.schema().as_str()]);
            Ok::<_, diesel::result::Error>(())
        })
        .unwrap();
    }
}

/// Concurrent borrowers through the coordinator, some misbehaving (a
/// session-level path to another tenant, an open transaction, a temp table):
/// every read sees its own tenant's marker.
#[test]
fn concurrent_borrowers_through_the_coordinator_never_read_another_tenant() {
    let Some(db) = citus_db() else { return };
    let (shared, tenants) = (shared_dir(), tenant_dir());
    let pool = db.pool_builder().max_size(4).build().expect("pool");
    pool.with_public(|c| diesel_tenancy::run_shared_migrations(c, shared.source()))
        .unwrap();
    let made: Vec<Tenant> = (0..6)
        .map(|i| {
            let t = create(&pool, &format!("t_iso{i}"), &tenants);
            pool.with_tenant(&t, |conn| {
                conn.batch_execute(&format!(
                    "INSERT INTO customers (name, email) VALUES ('{0}', '{0}@x.test')",
                    t.schema()
                ))
            })
            .unwrap();
            t
        })
        .collect();
    let (reads, wrong) = (AtomicUsize::new(0), AtomicUsize::new(0));
    std::thread::scope(|s| {
        for seed in 1..=4u64 {
            let (pool, made, reads, wrong) = (&pool, &made, &reads, &wrong);
            s.spawn(move || {
                let mut rng = Rng::new(seed * 7919);
                for _ in 0..150 {
                    let t = &made[rng.below(made.len())];
                    let other = &made[rng.below(made.len())];
                    let misbehave = rng.below(4);
                    pool.with_tenant(t, |conn| {
                        if markers(conn)? != [t.schema().as_str()] {
                            wrong.fetch_add(1, Ordering::Relaxed);
                        }
                        reads.fetch_add(1, Ordering::Relaxed);
                        match misbehave {
                            0 => conn.batch_execute(&format!("SET search_path TO {}", other.schema())),
                            1 => conn.batch_execute("BEGIN; SELECT 1"),
                            // A temp table shadowing the tenant's, first on the path.
                            2 => conn.batch_execute(
                                "CREATE TEMP TABLE customers AS SELECT * FROM customers; \
                                 INSERT INTO pg_temp.customers (id, name, email) VALUES (-1, 'temp', 'temp'); \
                                 SET search_path TO pg_temp, public",
                            ),
                            _ => Ok(()),
                        }
                    })
                    .unwrap();
                }
            });
        }
    });
    assert_eq!(reads.load(Ordering::Relaxed), 600);
    assert_eq!(wrong.load(Ordering::Relaxed), 0);
    assert!(
        pool.stats().resets > 0,
        "the misbehaving borrows were reset"
    );
}

/// The CLI against the coordinator: status and show name the mode and nodes,
/// move and rebalance work, doctor is content.
#[test]
fn the_cli_end_to_end() {
    let Some(db) = citus_db() else { return };
    let (shared, tenants) = (shared_dir(), tenant_dir());
    let cli = |args: &[&str]| -> serde_json::Value {
        let out = assert_cmd::Command::cargo_bin("diesel-tenancy")
            .unwrap()
            .env_remove("DATABASE_URL")
            .args(["--json", "--database-url", db.url(), "--shared-dir"])
            .arg(&shared.dir)
            .arg("--tenant-dir")
            .arg(&tenants.dir)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    cli(&["migrate"]);
    for s in ["t_one", "t_two", "t_three"] {
        let domain = format!("{}.example.com", s.replace('_', "-"));
        cli(&["tenant", "create", s, "--domain", &domain]);
    }
    let (_, port0) = worker(&db, 0);
    let status = cli(&["status"]);
    assert_eq!(status["mode"], "citus");
    assert_eq!(status["nodes"].as_array().unwrap().len(), 2);
    for t in status["tenants"].as_array().unwrap() {
        assert_eq!(t["node"], format!("127.0.0.1:{port0}"), "{t}");
        assert_eq!(t["pending"], 0);
    }
    let show = cli(&["tenant", "show", "t_one"]);
    assert_eq!(show["node"], format!("127.0.0.1:{port0}"));
    let (host, port1) = db.add_worker().unwrap();
    let to = format!("{host}:{port1}");
    let moved = cli(&[
        "tenant",
        "move",
        "t_one",
        "--to",
        &to,
        "--mode",
        "block_writes",
    ]);
    assert_eq!(moved["to"], to);
    assert_eq!(cli(&["tenant", "show", "t_one"])["node"], to);
    let plan = cli(&["rebalance", "--plan"]);
    assert_eq!(plan["moves"].as_array().unwrap().len(), 0, "{plan}");
    let doctor = cli(&["doctor"]);
    assert_eq!(doctor["consistent"], true, "{doctor}");
    assert_eq!(doctor["mode"], "citus");
    cli(&["tenant", "drop", "t_two", "--yes-delete-all-data"]);
    assert_eq!(cli(&["status"])["tenants"].as_array().unwrap().len(), 2);
}

/// An existing single-server database moves to Citus: the steps the README
/// gives, on a database that had tenants with data before the extension.
#[test]
fn an_existing_database_distributes_its_tenants() {
    let Some(db) = citus_db() else { return };
    let tenants = tenant_dir();
    // Start from a database without the extension: a single server.
    drop(db);
    let plain = CitusDatabase::without_citus().expect("a database without the extension");
    let pool = plain.pool_builder().build().unwrap();
    let single_shared = MigrationDir::copy_of("migrations_shared");
    single_shared.add(
        "2025-06-01-000001",
        "plans_everywhere",
        "SELECT tenancy_reference_table('plans');\n",
    );
    pool.with_public(|c| diesel_tenancy::run_shared_migrations(c, single_shared.source()))
        .unwrap();
    assert_eq!(
        citus::detect(&mut pool.public().unwrap()).unwrap(),
        ClusterMode::Single
    );
    let made: Vec<Tenant> = (0..2)
        .map(|i| create(&pool, &format!("t_legacy{i}"), &tenants))
        .collect();
    for t in &made {
        pool.with_tenant(t, |conn| {
            conn.batch_execute(&format!(
                "INSERT INTO customers (name, email) VALUES ('{0}', '{0}@x.test'); \
                 INSERT INTO subscriptions (plan_id) SELECT id FROM public.plans",
                t.schema()
            ))
        })
        .unwrap();
    }
    // The steps: the extension and the nodes, shared tables tenants reference
    // as reference tables, then every tenant distributed.
    let (_, port0) = plain.enable_citus().expect("enable citus");
    let mut conn = pool.public().unwrap();
    assert_eq!(citus::detect(&mut conn).unwrap(), ClusterMode::Citus);
    conn.batch_execute("SELECT tenancy_reference_table('plans')")
        .unwrap();
    let todo = citus::undistributed_tenants(&mut conn).unwrap();
    assert_eq!(todo.len(), 2);
    for schema in &todo {
        citus::distribute_tenant(&mut conn, schema).unwrap();
    }
    assert!(citus::undistributed_tenants(&mut conn).unwrap().is_empty());
    drop(conn);
    for t in &made {
        assert_eq!(shard_ports(&pool, t.schema().as_str()), [port0.to_string()]);
        pool.with_tenant(t, |conn| {
            assert_eq!(markers(conn)?, [t.schema().as_str()]);
            assert_eq!(number(conn, "SELECT count(*) AS n FROM subscriptions"), 2);
            Ok::<_, diesel::result::Error>(())
        })
        .unwrap();
    }
    // New tenants are distributed at creation from now on.
    create(&pool, "t_new", &tenants);
    assert_eq!(shard_ports(&pool, "t_new"), [port0.to_string()]);
}

/// The async pool through the coordinator: concurrent tasks, some leaving a
/// session-level path to another tenant behind, each read sees its own
/// tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn async_borrowers_through_the_coordinator_never_read_another_tenant() {
    use diesel_async::SimpleAsyncConnection as _;
    let Some(db) = citus_db() else { return };
    let (shared, tenants) = (shared_dir(), tenant_dir());
    let pool = setup(&db, &shared);
    let made: Vec<Tenant> = (0..6)
        .map(|i| {
            let t = create(&pool, &format!("t_async{i}"), &tenants);
            pool.with_tenant(&t, |conn| {
                conn.batch_execute(&format!(
                    "INSERT INTO customers (name, email) VALUES ('{0}', '{0}@x.test')",
                    t.schema()
                ))
            })
            .unwrap();
            t
        })
        .collect();
    let apool = diesel_tenancy::AsyncTenantPool::builder(db.url())
        .max_size(4)
        .build()
        .unwrap();
    let made = std::sync::Arc::new(made);
    let wrong = std::sync::Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..8u64)
        .map(|seed| {
            let (apool, made, wrong) = (apool.clone(), made.clone(), wrong.clone());
            tokio::spawn(async move {
                let mut rng = Rng::new(seed * 104_729 + 1);
                for _ in 0..50 {
                    let t = &made[rng.below(made.len())];
                    let other = made[rng.below(made.len())].schema().quoted();
                    let misbehave = rng.below(3) == 0;
                    apool
                        .with_tenant(t, async |conn| {
                            let query = common::customers::table
                                .select(common::customers::name)
                                .order(common::customers::id);
                            let seen: Vec<String> =
                                diesel_async::RunQueryDsl::load(query, conn).await?;
                            if seen != [t.schema().as_str()] {
                                wrong.fetch_add(1, Ordering::Relaxed);
                            }
                            if misbehave {
                                conn.batch_execute(&format!("SET search_path TO {other}"))
                                    .await?;
                            }
                            Ok::<_, diesel::result::Error>(())
                        })
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(wrong.load(Ordering::Relaxed), 0);
}
