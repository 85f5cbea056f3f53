//! Lifecycle hooks (creation and drop, single and bulk, sync and async),
//! removing a tenant from the registry while keeping its schema, and adopting
//! such a schema again, on a real server.
#![allow(missing_docs)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{TENANT, count, customers, markers, setup, tenants_with_markers};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use diesel_tenancy::{
    ConfirmDrop, Domain, Error, NewTenant, PgConn, SchemaName, Tenant, TenantPool,
    adopt_tenant_schema, check_consistency, create_tenant, create_tenant_with,
    create_tenants_async_with, create_tenants_with, drop_tenant, drop_tenant_with, registry,
    unregister_tenant_keep_schema,
};

fn schema(s: &str) -> SchemaName {
    SchemaName::new(s).unwrap()
}

fn domain(s: &str) -> Domain {
    Domain::parse(s).unwrap()
}

fn schema_exists(pool: &TenantPool, name: &str) -> bool {
    one(
        pool,
        "SELECT count(*) AS n FROM pg_namespace WHERE nspname = $1",
        name,
    ) == 1
}

/// Runs `sql` (one `bigint` column `n`, one text parameter) on `public`.
fn one(pool: &TenantPool, sql: &str, param: &str) -> i64 {
    diesel::sql_query(sql)
        .bind::<Text, _>(param)
        .get_result::<common::Count>(&mut *pool.public().unwrap())
        .unwrap()
        .n
}

/// The tenant roles of this database (`dt_<database oid>_<tenant id>`).
fn tenant_roles(pool: &TenantPool) -> i64 {
    count(
        pool,
        "SELECT count(*) AS n FROM pg_roles WHERE rolname LIKE \
         'dt\\_' || (SELECT oid FROM pg_database WHERE datname = current_database()) || '\\_%'",
    )
}

/// Registry rows of every kind for `schema`: tenant, domains, journal.
fn registry_rows(pool: &TenantPool, schema: &str) -> (i64, i64, i64) {
    (
        one(
            pool,
            "SELECT count(*) AS n FROM tenancy_tenants WHERE schema_name = $1",
            schema,
        ),
        one(
            pool,
            "SELECT count(*) AS n FROM tenancy_domains d JOIN tenancy_tenants t \
             ON t.id = d.tenant_id WHERE t.schema_name = $1",
            schema,
        ),
        one(
            pool,
            "SELECT count(*) AS n FROM tenancy_migration_journal j JOIN tenancy_tenants t \
             ON t.id = j.tenant_id WHERE t.schema_name = $1",
            schema,
        ),
    )
}

/// The seed a hook writes: the tenant's marker customer (unqualified, so in
/// the tenant's schema) and its plan (unqualified, so in `public`).
fn seed(conn: &mut impl PgConn, tenant: &Tenant) -> diesel_tenancy::Result<()> {
    diesel::insert_into(customers::table)
        .values((
            customers::name.eq(tenant.schema().as_str()),
            customers::email.eq(format!("seed@{}.test", tenant.schema())),
        ))
        .execute(conn)?;
    diesel::sql_query(
        "INSERT INTO tenant_plans (tenant_id, plan_id) SELECT $1, id FROM plans WHERE name = 'free'",
    )
    .bind::<BigInt, _>(tenant.id())
    .execute(conn)?;
    Ok(())
}

#[test]
fn a_creation_hook_seeds_rows_that_only_its_tenant_sees() {
    let (_db, pool) = setup(2);
    let mut seen = None;
    let acme = pool
        .with_public(|conn| {
            let new = NewTenant::new(schema("acme"), "Acme").domain(domain("acme.example.com"));
            create_tenant_with(conn, &new, TENANT, |conn, tenant| {
                #[derive(QueryableByName)]
                struct Here {
                    #[diesel(sql_type = Text)]
                    schema: String,
                    #[diesel(sql_type = Text)]
                    path: String,
                }
                let here = diesel::sql_query(
                    "SELECT current_schema()::text AS schema, current_setting('search_path') AS path",
                )
                .get_result::<Here>(conn)?;
                seen = Some((here.schema, here.path, tenant.clone()));
                seed(conn, tenant)
            })
        })
        .unwrap();
    let (current, path, passed) = seen.expect("the hook ran");
    assert_eq!(current, "acme");
    assert_eq!(path, "\"acme\", public, pg_temp");
    assert_eq!(passed.id(), acme.id());
    let globex = tenants_with_markers(&pool, "globex", 1).remove(0);

    assert_eq!(markers(&mut pool.get(&acme).unwrap()).unwrap(), ["acme"]);
    assert_eq!(
        markers(&mut pool.get(&globex).unwrap()).unwrap(),
        ["globex0"]
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) AS n FROM pg_class WHERE relname = 'customers' \
             AND relnamespace = 'public'::regnamespace"
        ),
        0,
        "nothing of the seed lands in public's own tables"
    );
    assert_eq!(
        one(
            &pool,
            "SELECT count(*) AS n FROM tenant_plans WHERE tenant_id::text = $1",
            &acme.id().to_string()
        ),
        1,
        "the shared row, written unqualified"
    );

    // Inside a caller's transaction, the caller's path is back afterwards.
    let path: String = pool
        .with_public(|conn| {
            conn.transaction(|conn| {
                let new = NewTenant::new(schema("initech"), "Initech");
                create_tenant_with(conn, &new, TENANT, seed)?;
                diesel::select(diesel::dsl::sql::<Text>("current_setting('search_path')"))
                    .get_result::<String>(conn)
                    .map_err(Error::from)
            })
        })
        .unwrap();
    assert!(path.starts_with("public"), "{path}");
}

#[test]
fn a_failing_creation_hook_leaves_nothing_behind() {
    let (_db, pool) = setup(2);
    tenants_with_markers(&pool, "kept", 1);
    let before_roles = tenant_roles(&pool);

    // A Diesel error passed on with `?`: the error names the hook.
    let new = NewTenant::new(schema("doomed"), "Doomed")
        .domain(domain("doomed.example.com"))
        .domain(domain("www.doomed.example.com"))
        .with_role();
    let err = pool
        .with_public(|conn| {
            create_tenant_with(conn, &new, TENANT, |conn, tenant| {
                seed(conn, tenant)?;
                diesel::sql_query("INSERT INTO no_such_table VALUES (1)").execute(conn)?;
                Ok(())
            })
        })
        .unwrap_err();
    match &err {
        Error::Database { action, .. } => {
            assert_eq!(action, "the creation hook of tenant \"doomed\"", "{err}")
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert!(!schema_exists(&pool, "doomed"));
    assert_eq!(registry_rows(&pool, "doomed"), (0, 0, 0));
    assert_eq!(
        count(&pool, "SELECT count(*) AS n FROM tenancy_domains"),
        1,
        "only the other tenant's domain"
    );
    assert_eq!(
        count(&pool, "SELECT count(*) AS n FROM tenant_plans"),
        0,
        "the hook's shared row is rolled back too"
    );
    assert_eq!(tenant_roles(&pool), before_roles, "no role");

    // An error of the crate's own comes back as itself.
    let err = pool
        .with_public(|conn| {
            create_tenant_with(conn, &new, TENANT, |_, _| {
                Err(Error::Config {
                    reason: "refused by the hook".into(),
                })
            })
        })
        .unwrap_err();
    assert!(
        matches!(&err, Error::Config { reason } if reason == "refused by the hook"),
        "{err:?}"
    );
    assert!(!schema_exists(&pool, "doomed"));
    assert_eq!(tenant_roles(&pool), before_roles);

    // The same tenant is then created without trouble.
    let made = pool
        .with_public(|conn| create_tenant_with(conn, &new, TENANT, seed))
        .unwrap();
    assert!(made.role().is_some());
    assert_eq!(registry_rows(&pool, "doomed"), (1, 2, 1));
    assert_eq!(tenant_roles(&pool), before_roles + 1);
    assert_eq!(markers(&mut pool.get(&made).unwrap()).unwrap(), ["doomed"]);
}

/// A hook that ends the transaction itself is caught and reported; what it
/// committed cannot be undone, which the error says.
#[test]
fn a_hook_that_commits_by_hand_is_reported() {
    let (_db, pool) = setup(1);
    let new = NewTenant::new(schema("rogue"), "Rogue");
    let err = pool
        .with_public(|conn| {
            create_tenant_with(conn, &new, TENANT, |conn, _| {
                conn.batch_execute("COMMIT")?;
                Ok(())
            })
        })
        .unwrap_err();
    match &err {
        Error::Database { action, source } => {
            assert!(
                action.contains("ended the transaction itself"),
                "{action}: {source:?}"
            );
            assert!(
                matches!(source, diesel::result::Error::BrokenTransactionManager),
                "{source:?}"
            );
        }
        other => panic!("unexpected error {other:?}"),
    }
}

#[test]
fn bulk_creation_with_a_hook_creates_the_others_when_one_hook_fails() {
    let (_db, pool) = setup(4);
    let news: Vec<NewTenant> = (0..6)
        .map(|i| {
            NewTenant::new(schema(&format!("bulk{i}")), format!("Bulk {i}"))
                .domain(domain(&format!("bulk{i}.example.com")))
        })
        .collect();
    let hooked = AtomicUsize::new(0);
    let results = create_tenants_with(&pool, &news, &TENANT, 3, |conn, tenant| {
        hooked.fetch_add(1, Ordering::Relaxed);
        seed(conn, tenant)?;
        if tenant.schema().as_str() == "bulk3" {
            return Err(Error::Config {
                reason: "bulk3 is refused".into(),
            });
        }
        Ok(())
    });
    assert_eq!(hooked.load(Ordering::Relaxed), 6);
    for (new, result) in news.iter().zip(&results) {
        let name = new.schema.as_str();
        if name == "bulk3" {
            assert!(
                matches!(result, Err(Error::Config { reason }) if reason == "bulk3 is refused"),
                "{result:?}"
            );
            assert!(!schema_exists(&pool, name));
            assert_eq!(registry_rows(&pool, name), (0, 0, 0));
        } else {
            let tenant = result.as_ref().unwrap();
            assert_eq!(markers(&mut pool.get(tenant).unwrap()).unwrap(), [name]);
            assert_eq!(registry_rows(&pool, name), (1, 1, 1));
        }
    }
    assert_eq!(count(&pool, "SELECT count(*) AS n FROM tenant_plans"), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_bulk_creation_runs_the_hook_in_each_transaction() {
    let (db, sync_pool) = setup(1);
    let pool = diesel_tenancy::AsyncTenantPool::builder(db.url())
        .max_size(3)
        .build()
        .unwrap();
    let news: Vec<NewTenant> = (0..4)
        .map(|i| NewTenant::new(schema(&format!("anew{i}")), "t"))
        .collect();
    let results = create_tenants_async_with(&pool, news, TENANT, 2, |conn, tenant| {
        seed(conn, tenant)?;
        if tenant.schema().as_str() == "anew2" {
            diesel::sql_query("SELECT 1/0").execute(conn)?;
        }
        Ok(())
    })
    .await;
    let made: Vec<Tenant> = results
        .into_iter()
        .enumerate()
        .filter_map(|(i, r)| match r {
            Ok(t) => Some(t),
            Err(Error::Database { action, .. }) if i == 2 => {
                assert_eq!(action, "the creation hook of tenant \"anew2\"");
                None
            }
            Err(e) => panic!("tenant {i}: {e:?}"),
        })
        .collect();
    assert_eq!(made.len(), 3);
    tokio::task::spawn_blocking(move || {
        for tenant in &made {
            assert_eq!(
                markers(&mut sync_pool.get(tenant).unwrap()).unwrap(),
                [tenant.schema().as_str()]
            );
        }
        assert!(!schema_exists(&sync_pool, "anew2"));
        assert_eq!(registry_rows(&sync_pool, "anew2"), (0, 0, 0));
    })
    .await
    .unwrap();
}

#[test]
fn a_drop_hook_archives_rows_and_a_failing_one_aborts_the_drop() {
    let (_db, pool) = setup(2);
    pool.public()
        .unwrap()
        .batch_execute(
            "CREATE TABLE archived_customers (tenant_id bigint NOT NULL, name text NOT NULL)",
        )
        .unwrap();
    // Each with its domain `<schema>.test.localhost`.
    let tenants = tenants_with_markers(&pool, "gone", 2);

    // The hook archives the tenant's rows (unqualified: its own table) into
    // a shared one, then the tenant is dropped.
    pool.with_public(|conn| {
        drop_tenant_with(
            conn,
            tenants[0].schema(),
            ConfirmDrop::DeleteSchemaAndAllItsData,
            |conn, tenant| {
                diesel::sql_query(
                    "INSERT INTO public.archived_customers (tenant_id, name) \
                     SELECT $1, name FROM customers",
                )
                .bind::<BigInt, _>(tenant.id())
                .execute(conn)?;
                Ok(())
            },
        )
    })
    .unwrap();
    assert!(!schema_exists(&pool, "gone0"));
    assert_eq!(registry_rows(&pool, "gone0"), (0, 0, 0));
    assert_eq!(count(&pool, "SELECT count(*) AS n FROM tenancy_domains"), 1);
    assert_eq!(
        one(
            &pool,
            "SELECT count(*) AS n FROM archived_customers WHERE name = $1",
            "gone0"
        ),
        1
    );

    // A failing hook: nothing is dropped, and what it wrote is undone.
    let err = pool
        .with_public(|conn| {
            drop_tenant_with(
                conn,
                tenants[1].schema(),
                ConfirmDrop::DeleteSchemaAndAllItsData,
                |conn, tenant| {
                    diesel::sql_query(
                        "INSERT INTO public.archived_customers (tenant_id, name) \
                         SELECT $1, name FROM customers",
                    )
                    .bind::<BigInt, _>(tenant.id())
                    .execute(conn)?;
                    diesel::sql_query("SELECT * FROM no_such_table").execute(conn)?;
                    Ok(())
                },
            )
        })
        .unwrap_err();
    assert!(
        matches!(&err, Error::Database { action, .. } if action == "the drop hook of tenant \"gone1\""),
        "{err:?}"
    );
    assert!(schema_exists(&pool, "gone1"));
    assert_eq!(registry_rows(&pool, "gone1"), (1, 1, 1));
    assert_eq!(
        markers(&mut pool.get(&tenants[1]).unwrap()).unwrap(),
        ["gone1"]
    );
    assert_eq!(
        one(
            &pool,
            "SELECT count(*) AS n FROM archived_customers WHERE name = $1",
            "gone1"
        ),
        0
    );

    // No tenant: the hook does not run.
    let ran = AtomicBool::new(false);
    let err = pool
        .with_public(|conn| {
            drop_tenant_with(
                conn,
                &schema("nobody"),
                ConfirmDrop::DeleteSchemaAndAllItsData,
                |_, _| {
                    ran.store(true, Ordering::Relaxed);
                    Ok(())
                },
            )
        })
        .unwrap_err();
    assert!(matches!(err, Error::TenantNotFound { .. }), "{err:?}");
    assert!(!ran.load(Ordering::Relaxed));
}

#[test]
fn unregistering_keeps_the_schema_and_consistency_reports_it() {
    let (_db, pool) = setup(3);
    let new = NewTenant::new(schema("kept"), "Kept")
        .domain(domain("kept.example.com"))
        .with_role();
    let tenant = pool
        .with_public(|conn| create_tenant_with(conn, &new, TENANT, seed))
        .unwrap();
    let roles = tenant_roles(&pool);
    assert_eq!(registry_rows(&pool, "kept"), (1, 1, 1));

    // It waits for the schema's lock, as the other lifecycle functions do.
    let mut holder = pool.public().unwrap();
    holder
        .batch_execute(
            "BEGIN; SELECT pg_advisory_xact_lock(hashtextextended('diesel_tenancy:kept', 0));",
        )
        .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let worker = {
        let (pool, done) = (pool.clone(), Arc::clone(&done));
        std::thread::spawn(move || {
            let result =
                pool.with_public(|conn| unregister_tenant_keep_schema(conn, &schema("kept")));
            done.store(true, Ordering::SeqCst);
            result
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    assert!(!done.load(Ordering::SeqCst), "it waited for the lock");
    assert_eq!(registry_rows(&pool, "kept"), (1, 1, 1));
    holder.batch_execute("ROLLBACK").unwrap();
    drop(holder);
    let removed = worker.join().unwrap().unwrap();
    assert_eq!(removed.id(), tenant.id());

    // The registry rows and the role are gone; the schema and its rows stay.
    assert_eq!(registry_rows(&pool, "kept"), (0, 0, 0));
    assert_eq!(count(&pool, "SELECT count(*) AS n FROM tenancy_domains"), 0);
    assert_eq!(
        count(&pool, "SELECT count(*) AS n FROM tenancy_migration_journal"),
        0
    );
    assert_eq!(tenant_roles(&pool), roles - 1);
    assert!(schema_exists(&pool, "kept"));
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) AS n FROM kept.customers WHERE name = 'kept'"
        ),
        1
    );
    assert!(matches!(
        pool.tenant("kept"),
        Err(Error::TenantNotFound { .. })
    ));
    // A snapshot taken before still reaches the kept schema (as after a
    // suspension); lookups no longer find the tenant.
    assert_eq!(markers(&mut pool.get(&tenant).unwrap()).unwrap(), ["kept"]);

    // check_consistency reports a schema no tenant owns.
    let report = pool
        .with_public(|conn| check_consistency(conn, TENANT))
        .unwrap();
    assert_eq!(report.schemas_without_row, ["kept"]);
    assert!(report.rows_without_schema.is_empty());
    assert!(!report.is_consistent());

    // Its name is not free for a new tenant, and a second removal finds nothing.
    let err = pool
        .with_public(|conn| create_tenant(conn, &NewTenant::new(schema("kept"), "x"), TENANT))
        .unwrap_err();
    assert!(
        matches!(&err, Error::SchemaExists { schema } if schema == "kept"),
        "{err:?}"
    );
    let err = pool
        .with_public(|conn| unregister_tenant_keep_schema(conn, &schema("kept")))
        .unwrap_err();
    assert!(
        matches!(&err, Error::TenantNotFound { schema } if schema == "kept"),
        "{err:?}"
    );

    // Adopting it again: a new tenant with the old data, consistent again.
    let new = NewTenant::new(schema("kept"), "Kept again")
        .domain(domain("kept.example.com"))
        .with_role();
    let adopted = pool
        .with_public(|conn| adopt_tenant_schema(conn, &new, TENANT))
        .unwrap();
    assert_ne!(adopted.id(), tenant.id());
    assert!(adopted.role().is_some());
    assert_eq!(markers(&mut pool.get(&adopted).unwrap()).unwrap(), ["kept"]);
    assert_eq!(registry_rows(&pool, "kept"), (1, 1, 1));
    let report = pool
        .with_public(|conn| check_consistency(conn, TENANT))
        .unwrap();
    assert!(report.is_consistent(), "{report:?}");
    let err = pool
        .with_public(|conn| adopt_tenant_schema(conn, &new, TENANT))
        .unwrap_err();
    assert!(matches!(err, Error::TenantExists { .. }), "{err:?}");

    // A schema that does not exist cannot be adopted, and leaves no row.
    let err = pool
        .with_public(|conn| {
            adopt_tenant_schema(conn, &NewTenant::new(schema("absent"), "x"), TENANT)
        })
        .unwrap_err();
    assert!(
        matches!(&err, Error::SchemaMissing { schema } if schema == "absent"),
        "{err:?}"
    );
    assert_eq!(registry_rows(&pool, "absent"), (0, 0, 0));

    // Or, once adopted, dropped for good.
    pool.with_public(|conn| {
        drop_tenant(
            conn,
            &schema("kept"),
            ConfirmDrop::DeleteSchemaAndAllItsData,
        )
    })
    .unwrap();
    assert!(!schema_exists(&pool, "kept"));
}

/// While tenants are created in parallel with a seeding hook, a reader
/// keeps looking at every registered tenant: each one it can see holds
/// exactly its own seeded row (creation is atomic), and never another's.
#[test]
fn seeded_rows_never_appear_in_another_tenant_during_parallel_creation() {
    let (_db, pool) = setup(6);
    let news: Vec<NewTenant> = (0..16)
        .map(|i| NewTenant::new(schema(&format!("par{i}")), "t"))
        .collect();
    let creating = AtomicBool::new(true);
    let checks = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            loop {
                let finished = !creating.load(Ordering::SeqCst);
                let tenants = pool.with_public(registry::list_tenants).unwrap();
                for tenant in &tenants {
                    let seen = markers(&mut pool.get(tenant).unwrap()).unwrap();
                    assert_eq!(seen, [tenant.schema().as_str()], "in {}", tenant.schema());
                    checks.fetch_add(1, Ordering::Relaxed);
                }
                if finished {
                    return tenants.len();
                }
            }
        });
        let results = create_tenants_with(&pool, &news, &TENANT, 3, |conn, tenant| {
            seed(conn, tenant)?;
            // Give the reader time to look while rows are uncommitted.
            std::thread::sleep(Duration::from_millis(20));
            Ok(())
        });
        creating.store(false, Ordering::SeqCst);
        for result in results {
            result.unwrap();
        }
        assert_eq!(reader.join().unwrap(), 16, "the last pass saw every tenant");
    });
    assert!(checks.load(Ordering::Relaxed) >= 16);
}

/// `diesel-tenancy tenant drop --keep-schema`: the registry rows go, the
/// schema stays, and `doctor` lists it as a schema no tenant owns.
#[test]
fn the_cli_unregisters_with_keep_schema() {
    let (db, pool) = setup(1);
    let new = NewTenant::new(schema("kept"), "Kept").domain(domain("kept.example.com"));
    pool.with_public(|conn| create_tenant_with(conn, &new, TENANT, seed))
        .unwrap();
    let cli = |args: &[&str]| {
        assert_cmd::Command::cargo_bin("diesel-tenancy")
            .unwrap()
            .env_remove("DATABASE_URL")
            .args(["--database-url", db.url(), "--json"])
            .args([
                "--shared-dir",
                concat!(env!("CARGO_MANIFEST_DIR"), "/migrations_shared"),
                "--tenant-dir",
                concat!(env!("CARGO_MANIFEST_DIR"), "/migrations_tenant"),
            ])
            .args(args)
            .output()
            .unwrap()
    };
    let json = |out: &std::process::Output| -> serde_json::Value {
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {} {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    };

    // Both flags at once is a usage error, and nothing changes.
    let both = cli(&[
        "tenant",
        "drop",
        "kept",
        "--keep-schema",
        "--yes-delete-all-data",
    ]);
    assert_eq!(both.status.code(), Some(2), "{both:?}");
    assert_eq!(registry_rows(&pool, "kept"), (1, 1, 1));

    let out = cli(&["tenant", "drop", "kept", "--keep-schema"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let shown = json(&out);
    assert_eq!(shown["unregistered"], "kept");
    assert_eq!(shown["schema_kept"], true);
    assert_eq!(registry_rows(&pool, "kept"), (0, 0, 0));
    assert!(schema_exists(&pool, "kept"));
    assert_eq!(
        count(&pool, "SELECT count(*) AS n FROM kept.customers"),
        1,
        "the data is kept"
    );

    let doctor = cli(&["doctor"]);
    assert_eq!(doctor.status.code(), Some(1), "{doctor:?}");
    assert_eq!(json(&doctor)["schemas_without_row"][0], "kept");
}
