//! migrate_all, the journal, locks, failures, kills, and the tenant lifecycle.
#![allow(missing_docs)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{
    MigrationDir, SHARED, TENANT, bulk_tenants, count, has_column, ledger_has, markers, setup,
};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_migrations::FileBasedMigrations;
use diesel_tenancy::{
    ConfirmDrop, Domain, Error, LockMode, MigrateOptions, Migrator, NewTenant, Outcome, Progress,
    SchemaName, TenantPool, check_consistency, create_tenant, create_tenants, drop_tenant,
    rename_tenant, repair_missing_schemas,
};

const V3: &str = "20250301000000";

fn migrator(
    dir: &MigrationDir,
) -> Migrator<diesel_migrations::EmbeddedMigrations, FileBasedMigrations> {
    Migrator::new(SHARED, dir.source())
}

fn applied(outcome: &Outcome) -> Vec<String> {
    match outcome {
        Outcome::Applied { versions, .. } => versions.clone(),
        other => panic!("expected applied, got {other:?}"),
    }
}

#[test]
fn a_later_migration_reaches_every_tenant_and_only_them() {
    let (_db, pool) = setup(4);
    let dir = MigrationDir::tenant_copy();
    let m = migrator(&dir);
    let tenants = bulk_tenants(&pool, "later", 5, &dir.source());

    let report = m.migrate_all(&pool, &MigrateOptions::new()).unwrap();
    assert!(report.is_success());
    assert_eq!(report.shared, Some(Outcome::UpToDate));
    assert_eq!(report.decided_by_journal, 5, "fresh tenants are journalled");

    dir.add(
        V3,
        "add_note",
        "ALTER TABLE customers ADD COLUMN note text NOT NULL DEFAULT ''",
    );
    let report = m.migrate_all(&pool, &MigrateOptions::new()).unwrap();
    assert!(report.is_success(), "{report:?}");
    assert_eq!(report.totals().applied, 5);
    for (t, r) in tenants.iter().zip(&report.tenants) {
        assert_eq!(&r.schema, t.schema());
        assert_eq!(applied(&r.outcome), [V3]);
        assert!(has_column(&pool, t.schema().as_str(), "customers", "note"));
        assert!(ledger_has(&pool, t.schema().as_str(), V3));
    }
    assert!(!ledger_has(&pool, "public", V3));
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) AS n FROM pg_tables WHERE schemaname = 'public' AND tablename = 'customers'"
        ),
        0
    );
    // A tenant created now gets every migration, the new one included.
    let new = NewTenant::new(SchemaName::new("newcomer").unwrap(), "Newcomer");
    create_tenant(&mut pool.public().unwrap(), &new, dir.source()).unwrap();
    assert!(has_column(&pool, "newcomer", "customers", "note"));
}

#[test]
fn nothing_pending_is_decided_with_one_query() {
    let (_db, pool) = setup(4);
    let dir = MigrationDir::tenant_copy();
    bulk_tenants(&pool, "noop", 30, &dir.source());
    let before = pool.stats();
    let report = migrator(&dir)
        .migrate_all(&pool, &MigrateOptions::new())
        .unwrap();
    assert_eq!(report.decided_by_journal, 30);
    assert_eq!(report.totals().up_to_date, 30);
    assert_eq!(report.connections, 1);
    assert_eq!(
        pool.stats().scoped - before.scoped,
        1,
        "one checkout in all"
    );
}

#[test]
fn verify_reads_the_real_ledgers() {
    let (_db, pool) = setup(4);
    let dir = MigrationDir::tenant_copy();
    let t = bulk_tenants(&pool, "ver", 2, &dir.source());
    dir.add(
        V3,
        "add_flag",
        "ALTER TABLE products ADD COLUMN flag boolean NOT NULL DEFAULT false",
    );
    let m = migrator(&dir);
    // Migrate ver1 only, then make the journal claim ver0 is current too.
    let only = MigrateOptions::new().tenants([t[1].schema().clone()]);
    assert!(m.migrate_all(&pool, &only).unwrap().is_success());
    pool.public()
        .unwrap()
        .batch_execute(&format!(
            "UPDATE tenancy_migration_journal SET set_digest = \
             (SELECT set_digest FROM tenancy_migration_journal WHERE tenant_id = {}) \
             WHERE tenant_id = {}",
            t[1].id(),
            t[0].id()
        ))
        .unwrap();
    let trusting = m.migrate_all(&pool, &MigrateOptions::new()).unwrap();
    assert_eq!(trusting.tenant("ver0").unwrap().outcome, Outcome::UpToDate);
    let verified = m
        .migrate_all(&pool, &MigrateOptions::new().verify(true))
        .unwrap();
    assert_eq!(applied(&verified.tenant("ver0").unwrap().outcome), [V3]);
    assert_eq!(verified.tenant("ver1").unwrap().outcome, Outcome::UpToDate);
    assert!(has_column(&pool, "ver0", "products", "flag"));
}

/// Adds to `schema` a customer the next migration's constraint refuses.
fn plant_bad_row(pool: &TenantPool, schema: &str) {
    let tenant = pool.tenant(schema).unwrap();
    pool.with_tenant(&tenant, |conn| {
        conn.batch_execute("INSERT INTO customers (name, email) VALUES ('bad', 'bad@x')")
    })
    .unwrap();
}

const V3_CONSTRAINT: &str = "ALTER TABLE customers ADD COLUMN vip boolean NOT NULL DEFAULT false;\n\
     ALTER TABLE customers ADD CONSTRAINT customers_name_not_bad CHECK (name <> 'bad');";

#[test]
fn one_failing_tenant_leaves_the_others_migrated_and_itself_untouched() {
    let (_db, pool) = setup(4);
    let dir = MigrationDir::tenant_copy();
    bulk_tenants(&pool, "k", 6, &dir.source());
    plant_bad_row(&pool, "k3");
    dir.add(V3, "constrain", V3_CONSTRAINT);
    let m = migrator(&dir);

    let report = m.migrate_all(&pool, &MigrateOptions::new()).unwrap();
    assert_eq!(report.totals().failed, 1);
    assert_eq!(report.totals().applied, 5);
    match &report.tenant("k3").unwrap().outcome {
        Outcome::Failed { version, error, .. } => {
            assert_eq!(version.as_deref(), Some(V3));
            assert!(
                error.to_string().contains("customers_name_not_bad"),
                "{error}"
            );
        }
        other => panic!("k3: {other:?}"),
    }
    // k3 is exactly as before: no column from the first statement, no ledger row.
    assert!(!has_column(&pool, "k3", "customers", "vip"));
    assert!(!ledger_has(&pool, "k3", V3));
    assert!(has_column(&pool, "k2", "customers", "vip"));
    // The journal says what went wrong where.
    assert_eq!(
        count(
            &pool,
            &format!(
                "SELECT count(*) AS n FROM tenancy_migration_journal j JOIN tenancy_tenants t ON t.id = j.tenant_id \
                 WHERE t.schema_name = 'k3' AND j.last_error_version = '{V3}' AND j.last_error LIKE '%customers_name_not_bad%'"
            )
        ),
        1
    );
    let err = report.clone().into_result().unwrap_err();
    assert!(err.to_string().contains("k3"), "{err}");
    assert!(matches!(err, Error::MigrationsFailed { .. }));

    // Fix the cause; the rerun applies only k3.
    let k3 = pool.tenant("k3").unwrap();
    pool.with_tenant(&k3, |conn| {
        conn.batch_execute("DELETE FROM customers WHERE name = 'bad'")
    })
    .unwrap();
    let rerun = m.migrate_all(&pool, &MigrateOptions::new()).unwrap();
    assert!(rerun.is_success());
    assert_eq!(rerun.totals().applied, 1);
    assert_eq!(applied(&rerun.tenant("k3").unwrap().outcome), [V3]);
    assert_eq!(rerun.decided_by_journal, 5);
}

#[test]
fn fail_fast_stops_at_the_first_failure() {
    let (_db, pool) = setup(4);
    let dir = MigrationDir::tenant_copy();
    bulk_tenants(&pool, "ff", 5, &dir.source());
    plant_bad_row(&pool, "ff1");
    dir.add(V3, "constrain", V3_CONSTRAINT);
    let report = migrator(&dir)
        .migrate_all(&pool, &MigrateOptions::new().jobs(1).fail_fast(true))
        .unwrap();
    let outcomes: Vec<_> = report.tenants.iter().map(|r| &r.outcome).collect();
    assert!(matches!(outcomes[0], Outcome::Applied { .. }));
    assert!(matches!(outcomes[1], Outcome::Failed { .. }));
    assert!(
        outcomes[2..].iter().all(|o| **o == Outcome::NotRun),
        "{outcomes:?}"
    );
    assert!(!has_column(&pool, "ff2", "customers", "vip"));
}

#[test]
fn a_dry_run_lists_pending_per_tenant_and_applies_nothing() {
    let (_db, pool) = setup(4);
    let dir = MigrationDir::tenant_copy();
    bulk_tenants(&pool, "plan", 3, &dir.source());
    dir.add(V3, "add_note", "ALTER TABLE customers ADD COLUMN note text");
    let report = migrator(&dir).plan(&pool, &MigrateOptions::new()).unwrap();
    assert!(report.dry_run);
    assert_eq!(report.shared, Some(Outcome::Pending { versions: vec![] }));
    for r in &report.tenants {
        assert_eq!(
            r.outcome,
            Outcome::Pending {
                versions: vec![V3.to_owned()]
            }
        );
    }
    assert_eq!(report.totals().pending, 3);
    assert!(!has_column(&pool, "plan0", "customers", "note"));
    assert!(!ledger_has(&pool, "plan0", V3));
}

#[test]
fn a_subset_of_tenants_and_unknown_names() {
    let (_db, pool) = setup(4);
    let dir = MigrationDir::tenant_copy();
    let t = bulk_tenants(&pool, "sub", 3, &dir.source());
    dir.add(V3, "add_note", "ALTER TABLE customers ADD COLUMN note text");
    let m = migrator(&dir);
    let report = m
        .migrate_all(
            &pool,
            &MigrateOptions::new().tenants([t[0].schema().clone(), t[2].schema().clone()]),
        )
        .unwrap();
    let names: Vec<_> = report.tenants.iter().map(|r| r.schema.as_str()).collect();
    assert_eq!(names, ["sub0", "sub2"]);
    assert!(!has_column(&pool, "sub1", "customers", "note"));
    let err = m
        .migrate_all(
            &pool,
            &MigrateOptions::new().tenants([SchemaName::new("nobody").unwrap()]),
        )
        .unwrap_err();
    assert!(matches!(err, Error::TenantNotFound { schema } if schema == "nobody"));
}

#[test]
fn concurrent_runs_apply_each_migration_once() {
    let (_db, pool) = setup(8);
    let dir = MigrationDir::tenant_copy();
    bulk_tenants(&pool, "conc", 16, &dir.source());
    dir.add(
        V3,
        "slow",
        "SELECT pg_sleep(0.01); ALTER TABLE customers ADD COLUMN note text",
    );
    let m = Arc::new(migrator(&dir));
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let (m, pool) = (Arc::clone(&m), pool.clone());
            std::thread::spawn(move || {
                m.migrate_all(&pool, &MigrateOptions::new().jobs(2).shared(false))
                    .unwrap()
            })
        })
        .collect();
    let reports: Vec<_> = runs.into_iter().map(|h| h.join().unwrap()).collect();
    for r in &reports {
        assert!(r.is_success(), "{r:?}");
    }
    for i in 0..16 {
        let schema = format!("conc{i}");
        let applied_by: usize = reports
            .iter()
            .filter(|r| matches!(r.tenant(&schema).unwrap().outcome, Outcome::Applied { .. }))
            .count();
        assert_eq!(applied_by, 1, "{schema} applied by {applied_by} runs");
        assert!(has_column(&pool, &schema, "customers", "note"));
    }
}

#[test]
fn a_locked_schema_is_skipped_or_times_out() {
    let (db, pool) = setup(4);
    let dir = MigrationDir::tenant_copy();
    bulk_tenants(&pool, "lk", 3, &dir.source());
    dir.add(V3, "add_note", "ALTER TABLE customers ADD COLUMN note text");
    let m = migrator(&dir);
    // Another session holds lk1's migration lock.
    let mut holder = PgConnection::establish(db.url()).unwrap();
    holder
        .batch_execute(
            "BEGIN; SELECT pg_advisory_xact_lock(hashtextextended('diesel_tenancy:lk1', 0))",
        )
        .unwrap();
    let skip = m
        .migrate_all(&pool, &MigrateOptions::new().lock_mode(LockMode::Skip))
        .unwrap();
    assert_eq!(skip.tenant("lk1").unwrap().outcome, Outcome::Locked);
    assert_eq!(skip.totals().locked, 1);
    assert_eq!(skip.totals().applied, 2);

    let started = Instant::now();
    let wait = m
        .migrate_all(
            &pool,
            &MigrateOptions::new().lock_timeout(Duration::from_millis(300)),
        )
        .unwrap();
    match &wait.tenant("lk1").unwrap().outcome {
        Outcome::Failed { error, .. } => {
            assert!(error.to_string().contains("lock timeout"), "{error}")
        }
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    holder.batch_execute("COMMIT").unwrap();
    let after = m.migrate_all(&pool, &MigrateOptions::new()).unwrap();
    assert_eq!(applied(&after.tenant("lk1").unwrap().outcome), [V3]);
}

#[test]
fn a_non_transactional_migration_runs_on_its_own() {
    let (_db, pool) = setup(4);
    let dir = MigrationDir::tenant_copy();
    bulk_tenants(&pool, "ntx", 2, &dir.source());
    dir.add_non_transactional(
        V3,
        "index_concurrently",
        "CREATE INDEX CONCURRENTLY customers_name ON customers (name)",
    );
    let report = migrator(&dir)
        .migrate_all(&pool, &MigrateOptions::new())
        .unwrap();
    assert!(report.is_success(), "{report:?}");
    for r in &report.tenants {
        assert_eq!(
            r.outcome,
            Outcome::Applied {
                versions: vec![V3.into()],
                non_transactional: vec![V3.into()],
            }
        );
    }
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) AS n FROM pg_indexes WHERE indexname = 'customers_name'"
        ),
        2
    );
    // Such a set cannot create a tenant in one transaction: refused, nothing left.
    let new = NewTenant::new(SchemaName::new("ntxnew").unwrap(), "New");
    assert!(matches!(
        create_tenant(&mut pool.public().unwrap(), &new, dir.source()),
        Err(Error::NonTransactionalMigration { .. })
    ));
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) AS n FROM pg_namespace WHERE nspname = 'ntxnew'"
        ),
        0
    );
}

#[test]
fn connections_are_recycled_and_progress_is_reported() {
    let (_db, pool) = setup(4);
    let dir = MigrationDir::tenant_copy();
    bulk_tenants(&pool, "rc", 7, &dir.source());
    dir.add(V3, "add_note", "ALTER TABLE customers ADD COLUMN note text");
    let started = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let (s, f) = (Arc::clone(&started), Arc::clone(&finished));
    let options = MigrateOptions::new()
        .jobs(1)
        .recycle_after(3)
        .on_progress(move |p| match p {
            Progress::Started { total, .. } => {
                assert_eq!(*total, 7);
                s.fetch_add(1, Ordering::Relaxed);
            }
            Progress::Finished { done, .. } => {
                f.fetch_add(1, Ordering::Relaxed);
                assert!(*done <= 7);
            }
            _ => {}
        });
    let report = migrator(&dir).migrate_all(&pool, &options).unwrap();
    assert!(report.is_success());
    // One for the shared set and the tenant list, then 3 + 3 + 1 tenants.
    assert_eq!(report.connections, 4);
    assert_eq!(started.load(Ordering::Relaxed), 7);
    assert_eq!(finished.load(Ordering::Relaxed), 7);
}

#[test]
fn bulk_creation_reports_each_tenant() {
    let (_db, pool) = setup(4);
    let dir = MigrationDir::tenant_copy();
    bulk_tenants(&pool, "bulk", 2, &dir.source());
    let news: Vec<_> = ["bulk1", "bulk2", "bulk3"]
        .iter()
        .map(|s| NewTenant::new(SchemaName::new(s).unwrap(), *s))
        .collect();
    let results = create_tenants(&pool, &news, &dir.source(), 2);
    assert!(matches!(&results[0], Err(Error::TenantExists { schema }) if schema == "bulk1"));
    assert_eq!(results[1].as_ref().unwrap().schema().as_str(), "bulk2");
    assert_eq!(results[2].as_ref().unwrap().schema().as_str(), "bulk3");
    assert!(ledger_has(&pool, "bulk3", "20250101000002"));
}

#[test]
fn drop_tenant_leaves_nothing_behind() {
    let (_db, pool) = setup(4);
    let new = NewTenant::new(SchemaName::new("doomed").unwrap(), "Doomed")
        .domain(Domain::parse("doomed.example.com").unwrap());
    let doomed = create_tenant(&mut pool.public().unwrap(), &new, TENANT).unwrap();
    let mut conn = pool.public().unwrap();
    drop_tenant(
        &mut conn,
        doomed.schema(),
        ConfirmDrop::DeleteSchemaAndAllItsData,
    )
    .unwrap();
    drop(conn);
    for sql in [
        "SELECT count(*) AS n FROM pg_namespace WHERE nspname = 'doomed'",
        "SELECT count(*) AS n FROM tenancy_tenants",
        "SELECT count(*) AS n FROM tenancy_domains",
        "SELECT count(*) AS n FROM tenancy_migration_journal",
    ] {
        assert_eq!(count(&pool, sql), 0, "{sql}");
    }
    assert!(matches!(
        drop_tenant(
            &mut pool.public().unwrap(),
            doomed.schema(),
            ConfirmDrop::DeleteSchemaAndAllItsData
        ),
        Err(Error::TenantNotFound { .. })
    ));
    assert!(matches!(
        pool.get(&doomed),
        Err(Error::SchemaMissing { .. })
    ));
}

#[test]
fn rename_moves_schema_and_row_together() {
    let (_db, pool) = setup(1);
    let t = common::tenants_with_markers(&pool, "old", 1);
    assert_eq!(markers(&mut pool.get(&t[0]).unwrap()).unwrap(), ["old0"]);
    let renamed = rename_tenant(
        &mut pool.public().unwrap(),
        t[0].schema(),
        &SchemaName::new("new0").unwrap(),
    )
    .unwrap();
    assert_eq!(renamed.id(), t[0].id());
    // The marker moved with the schema.
    assert_eq!(markers(&mut pool.get(&renamed).unwrap()).unwrap(), ["old0"]);
    // A stale value for the old name gets a clear error, not public's tables.
    assert!(matches!(pool.get(&t[0]), Err(Error::SchemaMissing { .. })));
    assert!(matches!(
        pool.tenant("old0"),
        Err(Error::TenantNotFound { .. })
    ));
    // Renaming onto a taken name fails and changes nothing.
    common::tenants_with_markers(&pool, "other", 1);
    assert!(matches!(
        rename_tenant(
            &mut pool.public().unwrap(),
            renamed.schema(),
            &SchemaName::new("other0").unwrap()
        ),
        Err(Error::TenantExists { .. })
    ));
    assert_eq!(markers(&mut pool.get(&renamed).unwrap()).unwrap(), ["old0"]);
}

#[test]
fn consistency_checks_and_repair() {
    let (_db, pool) = setup(2);
    let dir = MigrationDir::tenant_copy();
    bulk_tenants(&pool, "cc", 3, &dir.source());
    pool.public()
        .unwrap()
        .batch_execute(
            "DROP SCHEMA cc0 CASCADE; CREATE SCHEMA stray; \
             CREATE TABLE stray.__diesel_schema_migrations (version varchar(50) PRIMARY KEY)",
        )
        .unwrap();
    dir.add(V3, "add_note", "ALTER TABLE customers ADD COLUMN note text");
    let report = check_consistency(&mut pool.public().unwrap(), dir.source()).unwrap();
    let names =
        |v: &[diesel_tenancy::Tenant]| v.iter().map(|t| t.schema().to_string()).collect::<Vec<_>>();
    assert_eq!(names(&report.rows_without_schema), ["cc0"]);
    assert_eq!(report.schemas_without_row, ["stray"]);
    let behind: Vec<_> = report
        .tenants_behind
        .iter()
        .map(|(t, v)| (t.schema().to_string(), v.clone()))
        .collect();
    assert_eq!(
        behind,
        [
            ("cc1".to_owned(), vec![V3.to_owned()]),
            ("cc2".to_owned(), vec![V3.to_owned()])
        ]
    );
    assert!(!report.is_consistent());

    let repaired = repair_missing_schemas(&mut pool.public().unwrap(), dir.source()).unwrap();
    assert_eq!(names(&repaired), ["cc0"]);
    assert!(has_column(&pool, "cc0", "customers", "note"));
    let after = check_consistency(&mut pool.public().unwrap(), dir.source()).unwrap();
    assert!(after.rows_without_schema.is_empty());
    assert_eq!(
        after.schemas_without_row,
        ["stray"],
        "left for a person to decide"
    );
}

#[test]
fn suspended_tenants_are_left_out_unless_asked_for() {
    let (_db, pool) = setup(2);
    let dir = MigrationDir::tenant_copy();
    bulk_tenants(&pool, "sus", 2, &dir.source());
    diesel_tenancy::suspend_tenant(
        &mut pool.public().unwrap(),
        &SchemaName::new("sus1").unwrap(),
    )
    .unwrap();
    dir.add(V3, "add_note", "ALTER TABLE customers ADD COLUMN note text");
    let m = migrator(&dir);
    let report = m.migrate_all(&pool, &MigrateOptions::new()).unwrap();
    assert_eq!(report.tenants.len(), 1);
    let report = m
        .migrate_all(&pool, &MigrateOptions::new().include_suspended(true))
        .unwrap();
    assert_eq!(applied(&report.tenant("sus1").unwrap().outcome), [V3]);
    let tenant = diesel_tenancy::activate_tenant(
        &mut pool.public().unwrap(),
        &SchemaName::new("sus1").unwrap(),
    )
    .unwrap();
    assert!(tenant.is_active());
}

/// Run by `a_run_killed_midway_leaves_every_tenant_whole` in a child process.
#[test]
#[ignore = "run as a child process by a_run_killed_midway_leaves_every_tenant_whole"]
fn child_migrate_all() {
    let url = std::env::var("DT_CHILD_URL").expect("DT_CHILD_URL");
    let dir = std::env::var("DT_CHILD_DIR").expect("DT_CHILD_DIR");
    let pool = TenantPool::builder(url).max_size(3).build().unwrap();
    let m = Migrator::new(SHARED, FileBasedMigrations::from_path(dir).unwrap());
    m.migrate_all(&pool, &MigrateOptions::new().jobs(2))
        .unwrap();
}

#[test]
fn a_run_killed_midway_leaves_every_tenant_whole() {
    const N: usize = 40;
    let (db, pool) = setup(4);
    let dir = MigrationDir::tenant_copy();
    bulk_tenants(&pool, "kill", N, &dir.source());
    dir.add(
        V3,
        "slow_two_tables",
        "ALTER TABLE customers ADD COLUMN c3 int; SELECT pg_sleep(0.05); ALTER TABLE products ADD COLUMN p3 int;",
    );
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "child_migrate_all", "--nocapture"])
        .env("DT_CHILD_URL", db.url())
        .env("DT_CHILD_DIR", &dir.dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let done_sql = format!(
        "SELECT count(*) AS n FROM tenancy_migration_journal WHERE latest_version = '{V3}'"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&pool, &done_sql) < 5 {
        assert!(Instant::now() < deadline, "the child made no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let whole = |schema: &str| {
        let (l, c, p) = (
            ledger_has(&pool, schema, V3),
            has_column(&pool, schema, "customers", "c3"),
            has_column(&pool, schema, "products", "p3"),
        );
        assert!(
            l == c && c == p,
            "{schema} half-migrated: ledger {l}, c3 {c}, p3 {p}"
        );
        l
    };
    let done = (0..N).filter(|i| whole(&format!("kill{i}"))).count();
    assert!((5..N).contains(&done), "killed after {done} of {N}");

    let rerun = Migrator::new(SHARED, dir.source())
        .migrate_all(&pool, &MigrateOptions::new())
        .unwrap();
    assert!(rerun.is_success(), "{rerun:?}");
    assert_eq!(rerun.totals().applied, N - done);
    assert!((0..N).all(|i| whole(&format!("kill{i}"))));
}

/// Runs `run` (a migration run reaching tenant `schema`, whose next pending
/// migration is non-transactional) while another session takes `schema`'s
/// migration lock exactly between the run's transactional batch and that
/// migration: the batch is held at the ledger (a third session locks it)
/// until the other session's request for the lock is queued behind the
/// batch's, so the other session gets the lock as the batch commits. With
/// the lock, `holder` runs on that session, and the lock is released when it
/// returns; its receiver hears when `run` has returned.
fn between_batches<R: Send>(
    pool: &TenantPool,
    db_url: &str,
    schema: &str,
    run: impl FnOnce() -> R + Send,
    holder: impl FnOnce(&mut PgConnection, std::sync::mpsc::Receiver<()>) + Send,
) -> R {
    let waiting = |locktype: &str| {
        let sql = format!(
            "SELECT count(*) AS n FROM pg_locks WHERE NOT granted AND locktype = '{locktype}' \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while count(pool, &sql) == 0 {
            assert!(Instant::now() < deadline, "no {locktype} lock wait");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let quoted = SchemaName::new(schema).unwrap().quoted();
    let mut ledger = PgConnection::establish(db_url).unwrap();
    ledger
        .batch_execute(&format!(
            "BEGIN; LOCK TABLE {quoted}.__diesel_schema_migrations IN ACCESS EXCLUSIVE MODE"
        ))
        .unwrap();
    let mut other = PgConnection::establish(db_url).unwrap();
    let key = format!("hashtextextended('diesel_tenancy:{schema}', 0)");
    let (done, heard) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        let run = s.spawn(run);
        waiting("relation"); // the batch, holding the migration lock, at the ledger
        let lock_sql = format!("SELECT pg_advisory_lock({key})");
        let unlock_sql = format!("SELECT pg_advisory_unlock({key})");
        let held = s.spawn(move || {
            other.batch_execute(&lock_sql).unwrap();
            holder(&mut other, heard);
            other.batch_execute(&unlock_sql).unwrap();
        });
        waiting("advisory"); // the other session, queued behind the batch
        ledger.batch_execute("COMMIT").unwrap();
        let result = run.join().unwrap();
        let _ = done.send(());
        held.join().unwrap();
        result
    })
}

#[test]
fn a_non_transactional_migration_refuses_a_schema_renamed_out_from_under_it() {
    let (db, pool) = setup(4);
    let dir = MigrationDir::tenant_copy();
    bulk_tenants(&pool, "moved", 1, &dir.source());
    dir.add_non_transactional(V3, "marker", "CREATE TABLE ntx_marker (id int)");
    let m = migrator(&dir);
    let report = between_batches(
        &pool,
        db.url(),
        "moved0",
        || {
            m.migrate_all(&pool, &MigrateOptions::new().shared(false))
                .unwrap()
        },
        |other, _| {
            other
                .batch_execute("ALTER SCHEMA moved0 RENAME TO moved0_elsewhere")
                .unwrap();
        },
    );
    let outcome = &report.tenant("moved0").unwrap().outcome;
    assert_eq!(
        *outcome,
        Outcome::SchemaNotOnPath {
            schema: "moved0".into(),
            version: V3.into(),
            current_schema: None,
            applied: vec![],
        }
    );
    assert!(outcome.is_failure());
    let message = outcome.to_string();
    assert!(
        message.contains("moved0") && message.contains(V3),
        "{message}"
    );
    assert_eq!(report.totals().failed, 1);
    // Nothing ran, in public or anywhere else.
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) AS n FROM pg_tables WHERE tablename = 'ntx_marker'"
        ),
        0
    );
    assert!(!ledger_has(&pool, "public", V3));
    assert!(!ledger_has(&pool, "moved0_elsewhere", V3));
    match report.into_result() {
        Err(Error::MigrationsFailed { summary, .. }) => {
            assert!(
                summary.contains("moved0") && summary.contains(V3),
                "{summary}"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_non_transactional_migration_honours_the_lock_mode_and_timeouts() {
    let (db, pool) = setup(4);
    // lock_timeout: another session holds a lock CREATE INDEX CONCURRENTLY
    // waits for. Without the timeout the run would wait until the holder gives
    // up (20 s) and then succeed.
    let dir = MigrationDir::tenant_copy();
    bulk_tenants(&pool, "lt", 1, &dir.source());
    dir.add_non_transactional(
        V3,
        "index_concurrently",
        "CREATE INDEX CONCURRENTLY customers_name ON customers (name)",
    );
    let m = migrator(&dir);
    let only = |s: &str| {
        MigrateOptions::new()
            .shared(false)
            .tenants([SchemaName::new(s).unwrap()])
    };
    let mut holder = PgConnection::establish(db.url()).unwrap();
    holder
        .batch_execute("BEGIN; LOCK TABLE lt0.customers IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let holding = std::thread::spawn(move || {
        let _ = released.recv_timeout(Duration::from_secs(20));
        holder.batch_execute("ROLLBACK").unwrap();
    });
    let started = Instant::now();
    let report = m
        .migrate_all(&pool, &only("lt0").lock_timeout(Duration::from_millis(300)))
        .unwrap();
    let elapsed = started.elapsed();
    release.send(()).unwrap();
    holding.join().unwrap();
    match &report.tenant("lt0").unwrap().outcome {
        Outcome::Failed { version, error, .. } => {
            assert_eq!(version.as_deref(), Some(V3));
            assert!(error.to_string().contains("lock timeout"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    // With the lock gone, the same run applies it.
    let report = m.migrate_all(&pool, &only("lt0")).unwrap();
    assert_eq!(applied(&report.tenant("lt0").unwrap().outcome), [V3]);

    // statement_timeout: a non-transactional migration that runs too long.
    let slow = MigrationDir::tenant_copy();
    bulk_tenants(&pool, "st", 1, &slow.source());
    slow.add_non_transactional(V3, "slow", "SELECT pg_sleep(30)");
    let started = Instant::now();
    let report = migrator(&slow)
        .migrate_all(
            &pool,
            &only("st0").statement_timeout(Duration::from_millis(300)),
        )
        .unwrap();
    match &report.tenant("st0").unwrap().outcome {
        Outcome::Failed { version, error, .. } => {
            assert_eq!(version.as_deref(), Some(V3));
            assert!(error.to_string().contains("statement timeout"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!ledger_has(&pool, "st0", V3));

    // LockMode::Skip: another session takes the schema's migration lock just
    // before the non-transactional migration wants it. Waiting would block
    // until that session gives up (20 s) and then apply it.
    let skip = MigrationDir::tenant_copy();
    bulk_tenants(&pool, "sk", 1, &skip.source());
    skip.add_non_transactional(V3, "marker", "CREATE TABLE ntx_marker (id int)");
    let m = migrator(&skip);
    let started = Instant::now();
    let report = between_batches(
        &pool,
        db.url(),
        "sk0",
        || {
            m.migrate_all(&pool, &only("sk0").lock_mode(LockMode::Skip))
                .unwrap()
        },
        |_, run_done| {
            let _ = run_done.recv_timeout(Duration::from_secs(20));
        },
    );
    assert_eq!(report.tenant("sk0").unwrap().outcome, Outcome::Locked);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!ledger_has(&pool, "sk0", V3));
    assert!(!has_table(&pool, "sk0", "ntx_marker"));
}

fn has_table(pool: &TenantPool, schema: &str, table: &str) -> bool {
    diesel::sql_query(
        "SELECT count(*) AS n FROM pg_tables WHERE schemaname = $1 AND tablename = $2",
    )
    .bind::<diesel::sql_types::Text, _>(schema)
    .bind::<diesel::sql_types::Text, _>(table)
    .get_result::<common::Count>(&mut *pool.public().unwrap())
    .unwrap()
    .n == 1
}

#[test]
fn a_non_transactional_migration_leaves_the_session_as_it_found_it() {
    let (db, pool) = setup(2);
    let dir = MigrationDir::tenant_copy();
    let tenant = bulk_tenants(&pool, "sess", 1, &dir.source()).remove(0);
    dir.add_non_transactional(
        V3,
        "index_concurrently",
        "CREATE INDEX CONCURRENTLY customers_name ON customers (name)",
    );
    #[derive(QueryableByName, Debug, PartialEq)]
    struct Session {
        #[diesel(sql_type = diesel::sql_types::Text)]
        search_path: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        lock_timeout: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        statement_timeout: String,
    }
    let read = |c: &mut PgConnection| {
        diesel::sql_query(
            "SELECT current_setting('search_path') AS search_path, \
                    current_setting('lock_timeout') AS lock_timeout, \
                    current_setting('statement_timeout') AS statement_timeout",
        )
        .get_result::<Session>(c)
        .unwrap()
    };
    let mut conn = PgConnection::establish(db.url()).unwrap();
    conn.batch_execute(
        "SET search_path = public; SET lock_timeout = '7s'; SET statement_timeout = '9s'",
    )
    .unwrap();
    let before = read(&mut conn);
    let applied = diesel_tenancy::run_tenant_migrations(&mut conn, &tenant, dir.source()).unwrap();
    assert_eq!(applied, [V3]);
    assert_eq!(read(&mut conn), before);
    assert_eq!(before.lock_timeout, "7s");
    // Nor is the migration lock left held by this session.
    let held = diesel::sql_query(
        "SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
    )
    .get_result::<common::Count>(&mut conn)
    .unwrap();
    assert_eq!(held.n, 0);
}

/// The tenant set run on `public` by hand (the footgun: a plain borrow's
/// `run_pending_migrations(TENANT)`) is found and refused by the next deploy,
/// with the versions named, instead of being served to every tenant silently.
#[test]
fn a_tenant_set_run_on_public_is_refused_by_the_next_deploy() {
    use diesel_migrations::MigrationHarness;
    let db = diesel_tenancy::testing::TestDatabase::new().unwrap();
    let pool = db.pool_builder().max_size(2).build().unwrap();
    let migrator = Migrator::new(SHARED, common::TENANT);
    pool.public()
        .unwrap()
        .run_pending_migrations(common::TENANT)
        .unwrap();
    let refused = migrator
        .migrate_all(&pool, &MigrateOptions::default())
        .unwrap_err();
    let text = refused.to_string();
    assert!(
        matches!(refused, diesel_tenancy::Error::TenantSetInPublic { .. })
            && text.contains("20250101000002")
            && text.contains("tenant set was run on public"),
        "{text}"
    );
    assert!(migrator.migrate_shared(&pool).is_err());
}

/// The one-round-trip step a tenant gets when its journal says which versions
/// it has is guarded by its ledger: a schema restored from an old dump (its
/// ledger and tables without the second migration, its journal claiming it)
/// gets the missing migration too, not only the new one; and a tenant whose
/// new migration fails is reported precisely, the careful way.
#[test]
fn the_journal_fast_path_is_checked_against_the_ledger() {
    let (_db, pool) = setup(4);
    let dir = MigrationDir::tenant_copy();
    let m = migrator(&dir);
    bulk_tenants(&pool, "fast", 3, &dir.source());
    // fast1 "restored from an old dump": no products/orders, no ledger row.
    pool.public()
        .unwrap()
        .batch_execute(
            "DROP TABLE fast1.orders, fast1.products; \
             DELETE FROM fast1.__diesel_schema_migrations WHERE version = '20250101000002'",
        )
        .unwrap();
    // fast2's data breaks the new migration.
    plant_bad_row(&pool, "fast2");
    dir.add(
        V3,
        "email_check",
        "ALTER TABLE customers ADD CONSTRAINT not_bad CHECK (name <> 'bad');\n-- a trailing comment, no newline",
    );
    let report = m.migrate_all(&pool, &MigrateOptions::new()).unwrap();
    let outcome = |s: &str| {
        &report
            .tenants
            .iter()
            .find(|t| t.schema.as_str() == s)
            .unwrap()
            .outcome
    };
    assert_eq!(applied(outcome("fast0")), [V3]);
    assert_eq!(applied(outcome("fast1")), ["20250101000002", V3]);
    assert!(has_column(&pool, "fast1", "products", "price_cents"));
    match outcome("fast2") {
        Outcome::Failed { version, error, .. } => {
            assert_eq!(version.as_deref(), Some(V3));
            assert!(error.to_string().contains("not_bad"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    assert!(!ledger_has(&pool, "fast2", V3));
    // The journal is right for all three: the next run has nothing to do
    // but fast2.
    let again = m.migrate_all(&pool, &MigrateOptions::new()).unwrap();
    assert_eq!(again.decided_by_journal, 2);
}

/// A no-op deploy does not trust the journal blindly: one statement compares
/// it with the catalog and each tenant's ledger, and a tenant whose schema
/// was dropped, or whose schema went back to an older state (an old dump
/// restored: the last migration's column and ledger row gone), is planned and
/// migrated from its real state; the others are still decided by the journal.
#[test]
fn a_no_op_deploy_notices_a_schema_or_ledger_behind_the_journal() {
    let (_db, pool) = setup(4);
    let dir = MigrationDir::tenant_copy();
    let _t = bulk_tenants(&pool, "jchk", 3, &dir.source());
    dir.add(
        V3,
        "add_flag",
        "ALTER TABLE products ADD COLUMN flag boolean NOT NULL DEFAULT false",
    );
    let m = migrator(&dir);
    assert!(
        m.migrate_all(&pool, &MigrateOptions::new())
            .unwrap()
            .is_success()
    );
    pool.public()
        .unwrap()
        .batch_execute(&format!(
            "ALTER TABLE jchk0.products DROP COLUMN flag; \
             DELETE FROM jchk0.__diesel_schema_migrations WHERE version = '{V3}'; \
             DROP SCHEMA jchk1 CASCADE"
        ))
        .unwrap();
    let checks =
        diesel_tenancy::registry::check_journal(&mut pool.public().unwrap(), true).unwrap();
    let agrees = |s: &str| {
        checks
            .iter()
            .find(|c| c.schema.as_str() == s)
            .unwrap()
            .agrees()
    };
    assert!(!agrees("jchk0") && !agrees("jchk1") && agrees("jchk2"));
    let only_schemas =
        diesel_tenancy::registry::check_journal(&mut pool.public().unwrap(), false).unwrap();
    let agrees = |s: &str| {
        only_schemas
            .iter()
            .find(|c| c.schema.as_str() == s)
            .unwrap()
            .agrees()
    };
    assert!(agrees("jchk0") && !agrees("jchk1") && agrees("jchk2"));

    let plan = m.plan(&pool, &MigrateOptions::new()).unwrap();
    assert_eq!(
        plan.tenant("jchk0").unwrap().outcome,
        Outcome::Pending {
            versions: vec![V3.to_owned()]
        }
    );
    assert_eq!(
        plan.tenant("jchk1").unwrap().outcome,
        Outcome::SchemaMissing
    );
    assert_eq!(plan.decided_by_journal, 1);
    let run = m.migrate_all(&pool, &MigrateOptions::new()).unwrap();
    assert_eq!(applied(&run.tenant("jchk0").unwrap().outcome), [V3]);
    assert!(has_column(&pool, "jchk0", "products", "flag"));
    assert_eq!(run.tenant("jchk1").unwrap().outcome, Outcome::SchemaMissing);
    assert_eq!(run.tenant("jchk2").unwrap().outcome, Outcome::UpToDate);
    assert_eq!(run.decided_by_journal, 1);
}
