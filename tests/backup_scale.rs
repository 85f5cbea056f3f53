//! Backups at scale (README, "Backups at scale"): a whole-database `pg_dump`
//! locks every table and sequence of every tenant in one transaction, so with
//! too small a lock table it fails with "out of shared memory" (hint:
//! `max_locks_per_transaction`), while a per-tenant dump (`tenant dump`)
//! locks one tenant's and works; raising `max_locks_per_transaction` past the
//! README's arithmetic makes the whole-database dump work too.
//!
//! The test starts a server of its own, with a lock table for 200 locks by
//! the README's formula (`max_locks_per_transaction` 10 x `max_connections`
//! 20), and 300 tenants of the sample's shape: 4 tables and 3 sequences each,
//! 2,100 relations. (The server's real lock table is somewhat larger than the
//! formula says, and can borrow some spare shared memory: the test stays far
//! from the edge on both sides.)
#![allow(missing_docs)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_tenancy::testing::TestCluster;
use diesel_tenancy::{NewTenant, SchemaName, TenantPool, create_tenants};

const TENANTS: usize = 300;

/// `pg_dump`, found as the testing module finds the server: `PG_BIN_DIR`,
/// else `PATH`, else the newest `/usr/lib/postgresql/<version>/bin`.
fn pg_dump() -> PathBuf {
    let explicit = std::env::var_os("PG_BIN_DIR").map(|d| PathBuf::from(d).join("pg_dump"));
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("pg_dump"))
            .find(|p| p.is_file())
    });
    let mut versioned: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin").join("pg_dump");
            bin.is_file().then_some((v, bin))
        })
        .collect();
    versioned.sort();
    explicit
        .filter(|p| p.is_file())
        .or(on_path)
        .or(versioned.pop().map(|(_, p)| p))
        .expect("pg_dump: install PostgreSQL's client programs")
}

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

fn number(url: &str, sql: &str) -> i64 {
    diesel::sql_query(sql)
        .get_result::<N>(&mut PgConnection::establish(url).unwrap())
        .unwrap()
        .n
}

/// The README's size of the shared lock table:
/// `max_locks_per_transaction * (max_connections + max_prepared_transactions)`.
fn lock_table(url: &str) -> i64 {
    number(
        url,
        "SELECT current_setting('max_locks_per_transaction')::int8 \
           * (current_setting('max_connections')::int8 \
              + current_setting('max_prepared_transactions')::int8) AS n",
    )
}

/// What a whole-database `pg_dump` holds a lock on besides the catalogs:
/// every table and sequence.
fn dumped_relations(url: &str) -> i64 {
    number(
        url,
        "SELECT count(*) AS n FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p', 'S') \
           AND s.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')",
    )
}

/// Runs `pg_dump` of the whole database; its error output if it failed.
fn dump_all(url: &str) -> Result<(), String> {
    let out = Command::new(pg_dump())
        .arg("--dbname")
        .arg(url)
        .args(["--format=custom", "--no-sync", "--file=/dev/null"])
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Sets `name` in the cluster's `postgresql.conf` (the last line wins).
fn configure(cluster: &TestCluster, name: &str, value: &str) {
    let conf = cluster.dir().join("data").join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str(&format!("{name} = '{value}'\n"));
    std::fs::write(&conf, text).unwrap();
}

fn database(cluster: &TestCluster) -> (String, TenantPool) {
    PgConnection::establish(cluster.admin_url())
        .unwrap()
        .batch_execute("CREATE DATABASE scale")
        .unwrap();
    let url = format!(
        "{}/scale",
        cluster.admin_url().trim_end_matches("/postgres")
    );
    let pool = TenantPool::builder(url.clone())
        .max_size(3)
        .build()
        .unwrap();
    diesel_tenancy::run_shared_migrations(&mut pool.public().unwrap(), common::SHARED).unwrap();
    let news: Vec<NewTenant> = (0..TENANTS)
        .map(|i| NewTenant::new(SchemaName::new(&format!("t{i}")).unwrap(), format!("t{i}")))
        .collect();
    for result in create_tenants(&pool, &news, &common::TENANT, 2) {
        result.unwrap();
    }
    (url, pool)
}

#[test]
fn a_whole_database_dump_needs_max_locks_per_transaction_raised() {
    let mut cluster = TestCluster::start_with(&[
        ("max_connections", "20"),
        ("max_locks_per_transaction", "10"),
    ])
    .unwrap();
    let (url, _pool) = database(&cluster);
    let relations = dumped_relations(&url);
    // 4 tables and 3 sequences per tenant, and public's few.
    assert!((2100..2120).contains(&relations), "{relations}");
    assert_eq!(lock_table(&url), 200);
    assert!(relations > lock_table(&url));

    let error = dump_all(&url).expect_err("a whole-database dump past the lock table");
    assert!(error.contains("out of shared memory"), "{error}");
    assert!(error.contains("max_locks_per_transaction"), "{error}");

    // One tenant's dump locks its own 7 relations (and the catalogs): it fits.
    let file = std::env::temp_dir().join(format!("dt-scale-{}.tdump", std::process::id()));
    let out = assert_cmd::Command::cargo_bin("diesel-tenancy")
        .unwrap()
        .env_remove("DATABASE_URL")
        .args(["--database-url", &url, "tenant", "dump", "t42", "--output"])
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Raised so that the README's lock table holds every table and sequence
    // with room for the catalogs pg_dump reads (about 160 tables and indexes).
    configure(&cluster, "max_locks_per_transaction", "128");
    cluster.restart().unwrap();
    assert_eq!(lock_table(&url), 2560);
    assert!(relations + 160 < lock_table(&url));
    dump_all(&url).unwrap();
}
