//! `diesel-tenancy tenant dump` and `tenant restore`, run as a user runs them,
//! against a real database: a round trip gives back the same rows, registry
//! rows and migration plan; a restore under a new name leaves the original as
//! it was; a failed restore leaves nothing; a restored tenant is served only
//! its own rows.
#![allow(missing_docs)]

mod common;

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use common::{MigrationDir, SHARED, customers};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::Text;
use diesel_tenancy::testing::TestDatabase;
use diesel_tenancy::{
    ConfirmDrop, Domain, MigrateOptions, Migrator, NewTenant, Outcome, SchemaName, TenantPool,
    create_tenant, drop_tenant,
};

/// Runs the CLI on `url`; gives the exit code, stdout and stderr.
fn cli(url: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::cargo_bin("diesel-tenancy")
        .unwrap()
        .env_remove("DATABASE_URL")
        .arg("--database-url")
        .arg(url)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the CLI and requires exit code `code`; gives stdout and stderr.
fn run(url: &str, args: &[&str], code: i32) -> (String, String) {
    let (got, stdout, stderr) = cli(url, args);
    assert_eq!(got, code, "{args:?}: stdout {stdout} stderr {stderr}");
    (stdout, stderr)
}

/// A file path of this test's own, removed at the end.
struct TempPath(PathBuf);

impl TempPath {
    fn new(name: &str) -> Self {
        TempPath(std::env::temp_dir().join(format!("dt-dump-{}-{name}.tdump", std::process::id())))
    }

    fn s(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The sample tenant set without its second migration.
fn first_migration_only() -> MigrationDir {
    let dir = MigrationDir::tenant_copy();
    std::fs::remove_dir_all(dir.dir.join("2025-01-01-000002_create_products_and_orders")).unwrap();
    dir
}

#[derive(QueryableByName)]
struct Text1 {
    #[diesel(sql_type = Text)]
    t: String,
}

/// `sql` (one text column `t`) on `public`.
fn text(pool: &TenantPool, sql: &str) -> String {
    diesel::sql_query(sql)
        .get_result::<Text1>(&mut *pool.public().unwrap())
        .unwrap()
        .t
}

fn quoted(schema: &str) -> String {
    SchemaName::new(schema).unwrap().quoted()
}

/// Every row of `tables` in `schema` and its customers' id sequence, as JSON.
fn contents(pool: &TenantPool, schema: &str, tables: &[&str]) -> String {
    let s = quoted(schema);
    let mut parts: Vec<String> = tables
        .iter()
        .map(|table| {
            text(
                pool,
                &format!(
                    "SELECT COALESCE(json_agg(x ORDER BY x::text)::text, '[]') AS t FROM {s}.{table} x"
                ),
            )
        })
        .collect();
    parts.push(text(
        pool,
        &format!("SELECT row_to_json(q)::text AS t FROM (SELECT last_value, is_called FROM {s}.customers_id_seq) q"),
    ));
    parts.join("\n")
}

/// The tenant's registry rows (row, domains, journal entry) as JSON.
fn registry_of(pool: &TenantPool, schema: &str) -> String {
    diesel::sql_query(
        "SELECT COALESCE((SELECT json_build_object(
             'tenant', row_to_json(t),
             'domains', (SELECT json_agg(d ORDER BY d.domain) FROM tenancy_domains d WHERE d.tenant_id = t.id),
             'journal', (SELECT row_to_json(j) FROM tenancy_migration_journal j WHERE j.tenant_id = t.id)
         )::text FROM tenancy_tenants t WHERE t.schema_name = $1), 'none') AS t",
    )
    .bind::<Text, _>(schema)
    .get_result::<Text1>(&mut *pool.public().unwrap())
    .unwrap()
    .t
}

/// What the database holds that a restore could change: schemas, roles, the
/// registry tables.
fn world(pool: &TenantPool) -> String {
    text(
        pool,
        "SELECT json_build_object(
            'schemas', (SELECT json_agg(nspname ORDER BY nspname) FROM pg_namespace),
            'roles', (SELECT json_agg(rolname ORDER BY rolname) FROM pg_roles),
            'tenants', (SELECT json_agg(t ORDER BY t.id) FROM tenancy_tenants t),
            'domains', (SELECT json_agg(d ORDER BY d.domain) FROM tenancy_domains d),
            'journal', (SELECT json_agg(j ORDER BY j.tenant_id) FROM tenancy_migration_journal j)
         )::text AS t",
    )
}

/// The plan of the tenant set in `dir` for `schema`, read from the journal
/// and from the tenant's own ledger.
fn plan(pool: &TenantPool, dir: &MigrationDir, schema: &str) -> Vec<Outcome> {
    let migrator = Migrator::new(
        diesel_migrations::FileBasedMigrations::from_path(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations_shared"),
        )
        .unwrap(),
        dir.source(),
    );
    [false, true]
        .into_iter()
        .map(|verify| {
            let options = MigrateOptions::new()
                .shared(false)
                .verify(verify)
                .tenants([SchemaName::new(schema).unwrap()]);
            let report = migrator.plan(pool, &options).unwrap();
            assert_eq!(report.tenants.len(), 1, "{report:?}");
            report.tenants[0].outcome.clone()
        })
        .collect()
}

/// What [`plan`] gives for a tenant with nothing pending.
fn up_to_date() -> Vec<Outcome> {
    vec![Outcome::Pending { versions: vec![] }; 2]
}

/// A tenant `schema` on `set`, with `domains`, customers, products and orders
/// (text that needs escaping in every form pg_dump writes).
fn tenant_with_rows(
    pool: &TenantPool,
    schema: &str,
    domains: &[&str],
    set: &MigrationDir,
    role: bool,
) {
    let mut new = NewTenant::new(SchemaName::new(schema).unwrap(), format!("{schema} Ltd"));
    for d in domains {
        new = new.domain(Domain::parse(d).unwrap());
    }
    if role {
        new = new.with_role();
    }
    pool.with_public(|conn| create_tenant(conn, &new, set.source()))
        .unwrap();
    let tricky = [
        format!("{schema}-ann"),
        "tab\there, newline\nhere".to_owned(),
        "\\.\nback\\slash".to_owned(),
        "quote ' and \" and $$ and é 日本".to_owned(),
    ];
    pool.with_public(|conn| {
        for (i, name) in tricky.iter().enumerate() {
            diesel::sql_query(format!(
                "INSERT INTO {}.customers (name, email) VALUES ($1, $2)",
                quoted(schema)
            ))
            .bind::<Text, _>(name)
            .bind::<Text, _>(format!("c{i}@{schema}.test"))
            .execute(conn)?;
        }
        Ok::<_, diesel::result::Error>(())
    })
    .unwrap();
    if set
        .dir
        .join("2025-01-01-000002_create_products_and_orders")
        .exists()
    {
        pool.with_public(|conn| {
            conn.batch_execute(&format!(
                "SET search_path = {s};
                 INSERT INTO products (name, price_cents) VALUES ('widget', 250), ('gadget', 990);
                 INSERT INTO orders (customer_id, product_id, quantity)
                     SELECT c.id, p.id, 2 FROM customers c, products p;
                 RESET search_path;",
                s = quoted(schema)
            ))
        })
        .unwrap();
    }
}

const ALL_TABLES: &[&str] = &[
    "customers",
    "products",
    "orders",
    "__diesel_schema_migrations",
];

#[test]
fn dump_drop_restore_gives_back_the_same_rows_registry_and_plan() {
    let db = TestDatabase::new().unwrap();
    let pool = db.migrated_pool(SHARED).unwrap();
    let v1 = first_migration_only();
    let full = MigrationDir::tenant_copy();
    tenant_with_rows(
        &pool,
        "acme",
        &["acme.example.com", "shop.acme.example.com"],
        &v1,
        false,
    );
    tenant_with_rows(&pool, "globex", &["globex.example.com"], &full, false);
    let tables = &["customers", "__diesel_schema_migrations"];
    let rows = contents(&pool, "acme", tables);
    let registry = registry_of(&pool, "acme");
    // The tenant is one migration behind the full set.
    let before = plan(&pool, &full, "acme");
    assert!(
        matches!(&before[0], Outcome::Pending { versions } if versions.len() == 1),
        "{before:?}"
    );
    let neighbour = contents(&pool, "globex", ALL_TABLES);

    let file = TempPath::new("round-trip");
    let (stdout, _) = run(
        db.url(),
        &["tenant", "dump", "acme", "--output", file.s()],
        0,
    );
    assert!(stdout.contains("dumped tenant acme"), "{stdout}");
    let bytes = std::fs::read(&file.0).unwrap();
    assert!(bytes.starts_with(b"diesel-tenancy tenant dump 1\n{"));
    pool.with_public(|conn| {
        drop_tenant(
            conn,
            &SchemaName::new("acme").unwrap(),
            ConfirmDrop::DeleteSchemaAndAllItsData,
        )
    })
    .unwrap();
    assert_eq!(registry_of(&pool, "acme"), "none");

    let (stdout, _) = run(db.url(), &["--json", "tenant", "restore", file.s()], 0);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["schema"], "acme");
    assert_eq!(contents(&pool, "acme", tables), rows);
    assert_eq!(
        registry_of(&pool, "acme"),
        registry,
        "same id, domains, journal"
    );
    assert_eq!(plan(&pool, &full, "acme"), before);
    assert_eq!(contents(&pool, "globex", ALL_TABLES), neighbour);

    // Migrating carries on from where the dump was: the second migration only.
    let report = Migrator::new(SHARED, full.source())
        .migrate_all(&pool, &MigrateOptions::new().shared(false))
        .unwrap();
    let acme = report
        .tenants
        .iter()
        .find(|t| t.schema.as_str() == "acme")
        .unwrap();
    assert!(
        matches!(&acme.outcome, Outcome::Applied { versions, .. } if versions.len() == 1),
        "{acme:?}"
    );
    assert_eq!(plan(&pool, &full, "acme"), up_to_date());
}

#[test]
fn a_tenant_restored_under_a_new_name_leaves_the_original_as_it_is() {
    let db = TestDatabase::new().unwrap();
    let pool = db.migrated_pool(SHARED).unwrap();
    let full = MigrationDir::tenant_copy();
    tenant_with_rows(&pool, "acme", &["acme.example.com"], &full, false);
    let dumped = contents(&pool, "acme", ALL_TABLES);
    let dumped_plan = plan(&pool, &full, "acme");
    let file = TempPath::new("beside");
    run(db.url(), &["tenant", "dump", "acme", "-o", file.s()], 0);
    // The original moves on: more rows, its sequences further on.
    pool.with_public(|conn| {
        conn.batch_execute(
            "INSERT INTO acme.customers (name, email) VALUES ('later', 'later@acme.test');
             UPDATE acme.products SET price_cents = price_cents + 1;",
        )
    })
    .unwrap();
    let original = contents(&pool, "acme", ALL_TABLES);
    let original_registry = registry_of(&pool, "acme");
    let before = world(&pool);

    // Its domains still route to the original.
    let (_, stderr) = run(
        db.url(),
        &["tenant", "restore", file.s(), "--as", "acme_copy"],
        1,
    );
    assert!(
        stderr.contains("\"acme.example.com\" is already assigned"),
        "{stderr}"
    );
    assert_eq!(world(&pool), before);

    let (stdout, _) = run(
        db.url(),
        &[
            "--json",
            "tenant",
            "restore",
            file.s(),
            "--as",
            "acme_copy",
            "--without-domains",
        ],
        0,
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["schema"], "acme_copy");
    assert_eq!(report["restored_from"], "acme");
    assert_eq!(contents(&pool, "acme", ALL_TABLES), original);
    assert_eq!(registry_of(&pool, "acme"), original_registry);
    assert_eq!(contents(&pool, "acme_copy", ALL_TABLES), dumped);
    assert_eq!(plan(&pool, &full, "acme_copy"), dumped_plan);
    let copy: serde_json::Value = serde_json::from_str(&registry_of(&pool, "acme_copy")).unwrap();
    let acme: serde_json::Value = serde_json::from_str(&original_registry).unwrap();
    assert_ne!(copy["tenant"]["id"], acme["tenant"]["id"], "a new id");
    assert_eq!(copy["tenant"]["name"], "acme Ltd");
    assert_eq!(copy["domains"], serde_json::Value::Null);
    assert_eq!(
        copy["journal"]["set_digest"], acme["journal"]["set_digest"],
        "{copy}"
    );
    // The copy's sequences carry on from the dump's values, the original's
    // from its own.
    let next = |schema: &str| {
        text(
            &pool,
            &format!(
                "INSERT INTO {}.customers (name, email) VALUES ('n', 'n@x') RETURNING id::text AS t",
                quoted(schema)
            ),
        )
    };
    assert_eq!(next("acme_copy"), "5");
    assert_eq!(next("acme"), "6");
}

#[test]
fn a_tenant_moved_to_another_database_keeps_its_id_unless_taken() {
    let from = TestDatabase::new().unwrap();
    let from_pool = from.migrated_pool(SHARED).unwrap();
    let full = MigrationDir::tenant_copy();
    tenant_with_rows(&from_pool, "zeta", &[], &full, false);
    tenant_with_rows(&from_pool, "acme", &["acme.example.com"], &full, false);
    let rows = contents(&from_pool, "acme", ALL_TABLES);
    let file = TempPath::new("move");
    run(from.url(), &["tenant", "dump", "acme", "-o", file.s()], 0);
    let id = |pool: &TenantPool, schema: &str| {
        let registry: serde_json::Value = serde_json::from_str(&registry_of(pool, schema)).unwrap();
        registry["tenant"]["id"].as_i64().unwrap()
    };
    assert_eq!(id(&from_pool, "acme"), 2);

    // Into a database where its id is free: kept, and the next tenant
    // created there gets a later one.
    let empty = TestDatabase::new().unwrap();
    let empty_pool = empty.migrated_pool(SHARED).unwrap();
    run(empty.url(), &["tenant", "restore", file.s()], 0);
    assert_eq!(contents(&empty_pool, "acme", ALL_TABLES), rows);
    assert_eq!(id(&empty_pool, "acme"), 2);
    tenant_with_rows(&empty_pool, "later", &[], &full, false);
    assert_eq!(id(&empty_pool, "later"), 3);

    // Into one where another tenant has it: a new id, for every row.
    let busy = TestDatabase::new().unwrap();
    let busy_pool = busy.migrated_pool(SHARED).unwrap();
    tenant_with_rows(&busy_pool, "initech", &[], &full, false);
    tenant_with_rows(&busy_pool, "initrode", &[], &full, false);
    run(busy.url(), &["tenant", "restore", file.s()], 0);
    assert_eq!(contents(&busy_pool, "acme", ALL_TABLES), rows);
    let moved: serde_json::Value = serde_json::from_str(&registry_of(&busy_pool, "acme")).unwrap();
    assert_eq!(moved["tenant"]["id"], 3, "{moved}");
    assert_eq!(moved["domains"][0]["domain"], "acme.example.com");
    assert_eq!(moved["domains"][0]["tenant_id"], 3);
    assert_eq!(moved["journal"]["tenant_id"], 3);
    assert_eq!(plan(&busy_pool, &full, "acme"), up_to_date());
}

/// The 64-bit FNV-1a hash, as the dump's header gives it.
fn fnv1a(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// A dump file's header and archive.
fn split_dump(bytes: &[u8]) -> (serde_json::Value, Vec<u8>) {
    let first = bytes.iter().position(|b| *b == b'\n').unwrap();
    let second = first + 1 + bytes[first + 1..].iter().position(|b| *b == b'\n').unwrap();
    let header = serde_json::from_slice(&bytes[first + 1..second]).unwrap();
    (header, bytes[second + 1..].to_vec())
}

/// A dump file of `header` (its length and hash set to the archive's) and
/// `archive`.
fn join_dump(mut header: serde_json::Value, archive: &[u8]) -> Vec<u8> {
    header["archive"]["bytes"] = archive.len().into();
    header["archive"]["fnv1a64"] = fnv1a(archive).into();
    let mut out = format!("diesel-tenancy tenant dump 1\n{header}\n").into_bytes();
    out.extend_from_slice(archive);
    out
}

#[test]
fn a_failed_restore_leaves_nothing_behind() {
    let db = TestDatabase::new().unwrap();
    let pool = db.migrated_pool(SHARED).unwrap();
    let full = MigrationDir::tenant_copy();
    tenant_with_rows(&pool, "acme", &["acme.example.com"], &full, false);
    tenant_with_rows(&pool, "roled", &[], &full, true);
    let file = TempPath::new("failing");
    run(db.url(), &["tenant", "dump", "acme", "-o", file.s()], 0);
    let roled = TempPath::new("failing-role");
    run(db.url(), &["tenant", "dump", "roled", "-o", roled.s()], 0);
    pool.with_public(|conn| {
        drop_tenant(
            conn,
            &SchemaName::new("roled").unwrap(),
            ConfirmDrop::DeleteSchemaAndAllItsData,
        )?;
        conn.batch_execute("CREATE SCHEMA plain")
            .map_err(diesel_tenancy::Error::from)
    })
    .unwrap();
    let bytes = std::fs::read(&file.0).unwrap();
    let (header, archive) = split_dump(&bytes);
    let before = world(&pool);
    let acme = contents(&pool, "acme", ALL_TABLES);
    let fails = |args: &[&str], url: &str, message: &str| {
        let (_, stderr) = run(url, args, 1);
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert_eq!(world(&pool), before, "{args:?} left something behind");
        assert_eq!(contents(&pool, "acme", ALL_TABLES), acme, "{args:?}");
    };
    let url = db.url();

    // Taken: the tenant's name, a schema's name, a domain.
    fails(
        &["tenant", "restore", file.s()],
        url,
        "tenant \"acme\" already exists",
    );
    fails(
        &[
            "tenant",
            "restore",
            file.s(),
            "--as",
            "plain",
            "--without-domains",
        ],
        url,
        "schema \"plain\" already exists",
    );
    fails(
        &["tenant", "restore", file.s(), "--as", "acme_copy"],
        url,
        "\"acme.example.com\" is already assigned",
    );

    // Broken files: not a dump; cut short; an archive pg_restore cannot read
    // to its end (its header made to match it, so pg_restore, after the
    // schema and its tables were already created in the transaction, is what
    // fails).
    let broken = TempPath::new("broken");
    let restore_broken = [
        "tenant",
        "restore",
        broken.s(),
        "--as",
        "acme_copy",
        "--without-domains",
    ];
    std::fs::write(&broken.0, b"PGDMP not ours\n").unwrap();
    fails(&restore_broken, url, "not a whole tenant dump");
    std::fs::write(&broken.0, &bytes[..bytes.len() - archive.len() / 2]).unwrap();
    fails(&restore_broken, url, "nothing was restored");
    std::fs::write(
        &broken.0,
        join_dump(header.clone(), &archive[..archive.len() - 40]),
    )
    .unwrap();
    fails(&restore_broken, url, "pg_restore");
    // Damaged data (the archive's data blocks come last).
    let mut garbled = archive.clone();
    let at = garbled.len() - 100;
    for b in &mut garbled[at..at + 64] {
        *b ^= 0x5a;
    }
    std::fs::write(&broken.0, join_dump(header, &garbled)).unwrap();
    fails(&restore_broken, url, "nothing was restored");

    // A failure at the very end, after the schema is restored and renamed and
    // the registry rows inserted: a user who may not create the tenant's role.
    pool.with_public(|conn| {
        conn.batch_execute(&format!(
            "CREATE ROLE restorer LOGIN;
             GRANT CREATE ON DATABASE {db} TO restorer;
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO restorer;
             GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO restorer;",
            db = quoted(db.url().rsplit('/').next().unwrap())
        ))
    })
    .unwrap();
    let before_role = world(&pool);
    let restorer = db.url().replacen("postgres@", "restorer@", 1);
    let (_, stderr) = run(&restorer, &["tenant", "restore", roled.s()], 1);
    assert!(
        stderr.contains("permission denied to create role"),
        "{stderr}"
    );
    assert_eq!(world(&pool), before_role);
    // The same file restores for a user who may.
    run(url, &["tenant", "restore", roled.s()], 0);
    let restored: serde_json::Value = serde_json::from_str(&registry_of(&pool, "roled")).unwrap();
    let role = restored["tenant"]["role_name"].as_str().unwrap();
    assert!(role.starts_with("dt_"), "{restored}");
}

#[test]
fn a_restored_tenant_is_served_only_its_own_rows() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
    let db = TestDatabase::new().unwrap();
    let pool = db.pool_builder().max_size(4).build().unwrap();
    diesel_tenancy::run_shared_migrations(&mut pool.public().unwrap(), SHARED).unwrap();
    let full = MigrationDir::tenant_copy();
    tenant_with_rows(&pool, "acme", &[], &full, false);
    let names = |schema: &str| {
        let tenant = pool.tenant(schema)?;
        pool.with_tenant(&tenant, |conn| {
            customers::table
                .select(customers::name)
                .order(customers::id)
                .load::<String>(conn)
                .map_err(diesel_tenancy::Error::from)
        })
    };
    let then = names("acme").unwrap();
    let file = TempPath::new("served");
    run(db.url(), &["tenant", "dump", "acme", "-o", file.s()], 0);
    // After the dump, the original's rows change: the copy has the old ones.
    pool.with_public(|conn| {
        conn.batch_execute(
            "UPDATE acme.customers SET name = 'now: ' || name;
             INSERT INTO acme.customers (name, email) VALUES ('now only', 'now@acme.test');",
        )
    })
    .unwrap();
    let now = names("acme").unwrap();
    assert!(now.iter().all(|n| n.starts_with("now")), "{now:?}");
    assert!(then.iter().all(|n| !n.starts_with("now")), "{then:?}");
    let expected = [("acme", &now), ("acme_then", &then)];

    // Readers of both tenants, from before the restore (the original alone:
    // its name is moved aside and back inside the restore's transaction)
    // until well after it.
    let (restored, stop) = (AtomicBool::new(false), AtomicBool::new(false));
    let (reads, reads_of_copy, wrong) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    );
    std::thread::scope(|scope| {
        for thread in 0..3u64 {
            let (names, expected) = (&names, &expected);
            let (restored, stop, reads, reads_of_copy, wrong) =
                (&restored, &stop, &reads, &reads_of_copy, &wrong);
            scope.spawn(move || {
                let mut rng = common::Rng::new(thread + 1);
                while !stop.load(SeqCst) {
                    let choices = if restored.load(SeqCst) { 2 } else { 1 };
                    let (schema, rows) = expected[rng.below(choices)];
                    match names(schema) {
                        Ok(got) if &got == rows => {}
                        other => {
                            eprintln!("{schema}: {other:?}");
                            wrong.fetch_add(1, SeqCst);
                        }
                    }
                    reads.fetch_add(1, SeqCst);
                    if schema == "acme_then" {
                        reads_of_copy.fetch_add(1, SeqCst);
                    }
                }
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        let during = reads.load(SeqCst);
        run(
            db.url(),
            &["tenant", "restore", file.s(), "--as", "acme_then"],
            0,
        );
        assert!(reads.load(SeqCst) > during, "no read while the restore ran");
        restored.store(true, SeqCst);
        while reads_of_copy.load(SeqCst) < 300 {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        stop.store(true, SeqCst);
    });
    assert_eq!(wrong.into_inner(), 0, "reads that failed or saw other rows");
}
