//! A pooled connection serves exactly one tenant while in use, and whatever the
//! borrower did, the next borrower sees only its own tenant.
#![allow(missing_docs)]

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};

use common::{Rng, customers, markers, setup, setup_with, tenants_with_markers};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_tenancy::{Error, Tenant, TenantConnection, TenantConnectionManager, TenantPool};

const DELIBERATE: &str = "deliberate panic in a tenant closure";

/// Keeps the deliberate panics of these tests out of the output.
fn quiet_deliberate_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<&str>() != Some(&DELIBERATE) {
                default(info);
            }
        }));
    });
}

fn assert_sees_only(pool: &TenantPool, tenant: &Tenant) {
    let seen = pool.with_tenant(tenant, markers).expect("read markers");
    assert_eq!(seen, vec![tenant.schema().to_string()], "wrong-tenant read");
}

/// What a borrower does with its connection before giving it back.
fn misbehave(conn: &mut PgConnection, kind: usize, other: &Tenant) {
    let other = other.schema().quoted();
    match kind {
        // An error from the database.
        0 => {
            let _ = conn.batch_execute("SELECT * FROM no_such_table");
        }
        // Point the path at another tenant inside a transaction that rolls back.
        1 => {
            let _ = conn.transaction::<(), _, _>(|conn| {
                conn.batch_execute(&format!("SET search_path TO {other}"))?;
                Err(diesel::result::Error::RollbackTransaction)
            });
        }
        // Point the path at another tenant, for good (raw SQL).
        2 => conn
            .batch_execute(&format!("SET search_path TO {other}, public"))
            .unwrap(),
        // The same through set_config inside a committed transaction.
        3 => conn
            .transaction(|conn| {
                diesel::sql_query("SELECT set_config('search_path', $1, false)")
                    .bind::<diesel::sql_types::Text, _>(format!("{other}, public"))
                    .execute(conn)
            })
            .map(|_| ())
            .unwrap(),
        // Leave a raw transaction open after moving the path inside it.
        4 => conn
            .batch_execute(&format!("BEGIN; SET LOCAL search_path TO {other}"))
            .unwrap(),
        // Leave a Diesel transaction open.
        5 => conn.begin_test_transaction().unwrap(),
        // A savepoint rolled back after a path change inside it.
        6 => conn
            .transaction::<_, diesel::result::Error, _>(|conn| {
                let _ = conn.transaction::<(), _, _>(|conn| {
                    conn.batch_execute(&format!("SET search_path TO {other}"))?;
                    Err(diesel::result::Error::RollbackTransaction)
                });
                Ok(())
            })
            .unwrap(),
        _ => unreachable!(),
    }
}

const MISBEHAVIOURS: usize = 7;

#[test]
fn concurrent_checkouts_never_read_another_tenant() {
    const THREADS: usize = 8;
    const TENANTS: usize = 50;
    const CHECKOUTS: usize = 20_000;
    quiet_deliberate_panics();
    // Fewer connections than threads, so connections pass between tenants
    // constantly. Without the checkout test, the statement watch is the only thing
    // that notices a changed path: this is the harder case.
    let (_db, pool) = setup_with(4, |b| b.test_on_check_out(false));
    let tenants = Arc::new(tenants_with_markers(&pool, "iso", TENANTS));
    let reads = Arc::new(AtomicUsize::new(0));
    let wrong = Arc::new(AtomicUsize::new(0));
    let misbehaved = Arc::new(AtomicUsize::new(0));

    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (pool, tenants) = (pool.clone(), Arc::clone(&tenants));
            let (reads, wrong, misbehaved) = (
                Arc::clone(&reads),
                Arc::clone(&wrong),
                Arc::clone(&misbehaved),
            );
            std::thread::spawn(move || {
                let mut rng = Rng::new(0x5eed + t as u64);
                for _ in 0..CHECKOUTS / THREADS {
                    let tenant = &tenants[rng.below(TENANTS)];
                    let roll = rng.below(100);
                    if roll < 10 {
                        // One borrower in ten misbehaves after a checked read.
                        let other = &tenants[rng.below(TENANTS)];
                        let kind = rng.below(MISBEHAVIOURS + 1);
                        let result = catch_unwind(AssertUnwindSafe(|| {
                            pool.with_tenant(tenant, |conn| {
                                let seen = markers(conn)?;
                                reads.fetch_add(1, Ordering::Relaxed);
                                if seen != [tenant.schema().as_str()] {
                                    wrong.fetch_add(1, Ordering::Relaxed);
                                }
                                if kind == MISBEHAVIOURS {
                                    std::panic::panic_any(DELIBERATE);
                                }
                                misbehave(conn, kind, other);
                                Ok::<_, diesel::result::Error>(())
                            })
                        }));
                        assert!(result.is_err() == (kind == MISBEHAVIOURS));
                        misbehaved.fetch_add(1, Ordering::Relaxed);
                    } else {
                        let seen = pool.with_tenant(tenant, markers).expect("read");
                        reads.fetch_add(1, Ordering::Relaxed);
                        if seen != [tenant.schema().as_str()] {
                            wrong.fetch_add(1, Ordering::Relaxed);
                            eprintln!("{} read {seen:?}", tenant.schema());
                        }
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("worker thread");
    }
    let stats = pool.stats();
    println!(
        "isolation: {THREADS} threads, {TENANTS} tenants, {} checked reads, {} misbehaving borrowers, \
         {} scoped checkouts ({} set the path), {} wrong-tenant reads",
        reads.load(Ordering::Relaxed),
        misbehaved.load(Ordering::Relaxed),
        stats.scoped,
        stats.path_sets,
        wrong.load(Ordering::Relaxed)
    );
    assert_eq!(reads.load(Ordering::Relaxed), CHECKOUTS);
    assert!(misbehaved.load(Ordering::Relaxed) > CHECKOUTS / 20);
    assert_eq!(wrong.load(Ordering::Relaxed), 0, "wrong-tenant reads");
}

/// With one connection, the next borrower certainly gets the connection the
/// misbehaving one used. Each misbehaviour moves the path to `b` while scoped to
/// `a`; checking out `a` again must still read `a`.
#[test]
fn next_borrower_is_scoped_whatever_the_last_one_did() {
    next_borrower_is_scoped(true);
}

/// The same, with the statement watch as the only line of defence.
#[test]
fn next_borrower_is_scoped_without_the_checkout_test() {
    next_borrower_is_scoped(false);
}

fn next_borrower_is_scoped(test_on_check_out: bool) {
    quiet_deliberate_panics();
    let (_db, pool) = setup_with(1, |b| b.test_on_check_out(test_on_check_out));
    let t = tenants_with_markers(&pool, "next", 2);
    let (a, b) = (&t[0], &t[1]);
    for kind in 0..MISBEHAVIOURS {
        assert_sees_only(&pool, a);
        pool.with_tenant(a, |conn| {
            misbehave(conn, kind, b);
            Ok::<_, Error>(())
        })
        .unwrap();
        assert_sees_only(&pool, a);
        assert_sees_only(&pool, b);
        assert_sees_only(&pool, a);
    }
    // A panic inside the closure.
    assert_sees_only(&pool, a);
    let panicked = catch_unwind(AssertUnwindSafe(|| {
        pool.with_tenant::<(), Error, _>(a, |conn| {
            conn.batch_execute(&format!("SET search_path TO {}", b.schema().quoted()))
                .unwrap();
            std::panic::panic_any(DELIBERATE)
        })
    }));
    assert!(panicked.is_err());
    assert_sees_only(&pool, a);
}

/// Without the liveness check, tracking relies on seeing the statements; with it
/// (the default), the path is read back in the same round trip, so even a change
/// made inside a server-side function is caught.
#[test]
fn path_changed_by_a_server_function_is_caught_on_checkout() {
    let (_db, pool) = setup(1);
    let t = tenants_with_markers(&pool, "fn", 2);
    let (a, b) = (&t[0], &t[1]);
    pool.public()
        .unwrap()
        .batch_execute(
            "CREATE FUNCTION public.switch_schema(target text) RETURNS void LANGUAGE sql AS \
             $$ SELECT pg_catalog.set_config('search_path', target, false) $$",
        )
        .unwrap();
    assert_sees_only(&pool, a);
    pool.with_tenant(a, |conn| {
        diesel::sql_query("SELECT public.switch_schema($1)")
            .bind::<diesel::sql_types::Text, _>(b.schema().as_str())
            .execute(conn)
    })
    .unwrap();
    assert_sees_only(&pool, a);
}

#[test]
fn the_same_tenant_again_costs_no_statement() {
    let (_db, pool) = setup(1);
    let t = tenants_with_markers(&pool, "same", 2);
    assert_sees_only(&pool, &t[0]);
    let before = pool.stats();
    for _ in 0..5 {
        assert_sees_only(&pool, &t[0]);
    }
    let after = pool.stats();
    assert_eq!(after.scoped - before.scoped, 5);
    assert_eq!(after.path_sets, before.path_sets, "path set again");
    assert_sees_only(&pool, &t[1]);
    assert_eq!(pool.stats().path_sets, after.path_sets + 1);
}

#[test]
fn without_tracking_every_checkout_sets_the_path() {
    let (db, setup_pool) = setup(1);
    let t = tenants_with_markers(&setup_pool, "untracked", 1);
    let pool = db
        .pool_builder()
        .max_size(1)
        .track_search_path(false)
        .build()
        .unwrap();
    for _ in 0..3 {
        assert_sees_only(&pool, &t[0]);
    }
    assert_eq!(pool.stats().path_sets, 3);
}

#[test]
fn public_scope_sees_shared_tables_only() {
    let (_db, pool) = setup(1);
    let t = tenants_with_markers(&pool, "pub", 1);
    assert_sees_only(&pool, &t[0]);
    assert_eq!(common::count(&pool, "SELECT count(*) AS n FROM plans"), 2);
    let mut conn = pool.public().unwrap();
    assert_eq!(conn.scope_name(), "public");
    let err = markers(&mut conn).unwrap_err();
    assert!(
        err.to_string().contains("does not exist"),
        "public must not see tenant tables: {err}"
    );
}

#[test]
fn r2d2_pool_swap_scopes_through_the_manager() {
    let (db, setup_pool) = setup(1);
    let t = tenants_with_markers(&setup_pool, "swap", 2);
    let manager = TenantConnectionManager::new(db.url()).unwrap();
    let pool = r2d2::Pool::builder().max_size(2).build(manager).unwrap();
    for tenant in [&t[0], &t[1], &t[0]] {
        let mut conn = TenantConnection::scope(pool.get().unwrap(), tenant).unwrap();
        assert_eq!(conn.tenant(), Some(tenant));
        assert_eq!(markers(&mut conn).unwrap(), [tenant.schema().as_str()]);
    }
}

#[test]
fn diesel_features_work_on_a_tenant_connection() {
    use diesel_migrations::MigrationHarness;
    let (_db, pool) = setup(2);
    let t = tenants_with_markers(&pool, "dsl", 1);
    let mut conn = pool.get(&t[0]).unwrap();
    // The tenant's own migration ledger is found on its path.
    assert!(!conn.has_pending_migration(common::TENANT).unwrap());
    // Transactions, the query DSL and raw SQL.
    conn.transaction(|conn| {
        diesel::insert_into(customers::table)
            .values((customers::name.eq("second"), customers::email.eq("b@x")))
            .execute(conn)
    })
    .unwrap();
    assert_eq!(markers(&mut conn).unwrap(), ["dsl0", "second"]);
    let schema: String = diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(
        "current_schema()",
    ))
    .get_result(&mut *conn)
    .unwrap();
    assert_eq!(schema, "dsl0");
}

#[test]
fn extra_schemas_follow_public_on_the_path() {
    let (db, setup_pool) = setup(1);
    let t = tenants_with_markers(&setup_pool, "extra", 1);
    setup_pool
        .public()
        .unwrap()
        .batch_execute(
            "CREATE SCHEMA extensions; \
             CREATE FUNCTION extensions.answer() RETURNS int LANGUAGE sql AS $$ SELECT 42 $$",
        )
        .unwrap();
    let pool = db
        .pool_builder()
        .extra_schema("extensions".parse().unwrap())
        .build()
        .unwrap();
    let answer: i32 = pool
        .with_tenant(&t[0], |conn| {
            diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("answer()"))
                .get_result(conn)
        })
        .unwrap();
    assert_eq!(answer, 42);
}

/// A connection killed by the server is found dead by the checkout's own
/// statement, discarded, and another one used.
#[test]
fn dead_connections_are_replaced_at_checkout() {
    let (db, pool) = setup(2);
    let t = tenants_with_markers(&pool, "dead", 2);
    // Warm both connections, on both tenants.
    let (a, b) = (pool.get(&t[0]).unwrap(), pool.get(&t[1]).unwrap());
    drop((a, b));
    let mut killer = <PgConnection as diesel::Connection>::establish(db.url()).unwrap();
    killer
        .batch_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    for tenant in [&t[0], &t[1], &t[0]] {
        assert_sees_only(&pool, tenant);
    }
}

/// Transaction-scoped mode without a pooler: commit on Ok, roll back on Err or on
/// a dropped guard, and the next borrower is scoped whatever the last one did.
#[test]
fn transaction_scoped_mode_commits_rolls_back_and_isolates() {
    quiet_deliberate_panics();
    let (db, setup_pool) = setup(1);
    let t = tenants_with_markers(&setup_pool, "txm", 2);
    drop(setup_pool);
    let pool = db
        .pool_builder()
        .max_size(1)
        .transaction_scoped(true)
        .build()
        .unwrap();
    let insert = |name: &'static str| {
        move |conn: &mut PgConnection| {
            diesel::insert_into(customers::table)
                .values((customers::name.eq(name), customers::email.eq(name)))
                .execute(conn)
        }
    };
    pool.with_tenant(&t[0], insert("kept")).unwrap();
    let failed: Result<(), diesel::result::Error> = pool.with_tenant(&t[0], |conn| {
        insert("dropped")(conn)?;
        Err(diesel::result::Error::NotFound)
    });
    assert!(failed.is_err());
    let mut guard = pool.get(&t[0]).unwrap();
    insert("guard-dropped")(&mut guard).unwrap();
    drop(guard);
    let mut guard = pool.get(&t[0]).unwrap();
    insert("guard-committed")(&mut guard).unwrap();
    guard.commit().unwrap();
    assert_eq!(
        pool.with_tenant(&t[0], markers).unwrap(),
        ["txm0", "kept", "guard-committed"]
    );
    // Nothing rides on session state: a raw SET on the session is ignored by the
    // next borrower, who sets the path in its own transaction.
    for kind in 0..MISBEHAVIOURS {
        if kind == 5 {
            continue; // begin_test_transaction inside our own transaction: not meaningful here
        }
        pool.with_tenant(&t[0], |conn| {
            misbehave(conn, kind, &t[1]);
            Ok::<_, Error>(())
        })
        .ok();
        assert_eq!(pool.with_tenant(&t[0], markers).unwrap()[0], "txm0");
        assert_eq!(pool.with_tenant(&t[1], markers).unwrap(), ["txm1"]);
    }
}

/// Timeouts reached inside a scope: a clear error, and the next borrower on the
/// same connection is on its own tenant.
#[test]
fn statement_and_lock_timeouts_inside_a_scope() {
    let (db, pool) = setup(1);
    let t = tenants_with_markers(&pool, "tmo", 2);
    let err = pool
        .with_tenant(&t[0], |conn| {
            conn.transaction(|c| {
                c.batch_execute("SET LOCAL statement_timeout = '50ms'")?;
                c.batch_execute("SELECT pg_sleep(2)")
            })
        })
        .unwrap_err();
    assert!(err.to_string().contains("statement timeout"), "{err}");
    assert_sees_only(&pool, &t[1]);
    assert_sees_only(&pool, &t[0]);

    // Another session holds a row lock in tenant 0.
    let mut holder = <PgConnection as diesel::Connection>::establish(db.url()).unwrap();
    holder
        .batch_execute("BEGIN; SELECT * FROM tmo0.customers FOR UPDATE")
        .unwrap();
    let err = pool
        .with_tenant(&t[0], |conn| {
            conn.transaction(|c| {
                c.batch_execute("SET LOCAL lock_timeout = '50ms'")?;
                c.batch_execute("UPDATE customers SET email = 'x'")
            })
        })
        .unwrap_err();
    assert!(err.to_string().contains("lock timeout"), "{err}");
    holder.batch_execute("ROLLBACK").unwrap();
    assert_sees_only(&pool, &t[1]);
    assert_sees_only(&pool, &t[0]);
}

/// A connection is replaced once it has been scoped to the configured number
/// of distinct schemas; going back to a schema it knows does not count.
#[test]
fn connections_are_recycled_after_many_schemas() {
    let (db, setup_pool) = setup(1);
    let t = tenants_with_markers(&setup_pool, "rcy", 4);
    let pool = db
        .pool_builder()
        .max_size(1)
        .recycle_after_schemas(Some(3))
        .build()
        .unwrap();
    let mut pids = Vec::new();
    for i in common::RECYCLE_ORDER {
        let pid: i32 = pool
            .with_tenant(&t[i], |conn| {
                diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>(
                    "pg_backend_pid()",
                ))
                .get_result(conn)
            })
            .unwrap();
        pids.push(pid);
    }
    common::assert_recycled_after_three_schemas(&pids);
}

/// A server restart under load: callers get errors they can retry, the pool
/// recovers, and no checkout before, during or after runs on the wrong tenant.
#[test]
fn a_server_restart_under_load() {
    use diesel_tenancy::testing::TestCluster;
    use std::sync::atomic::AtomicBool;
    let mut cluster = TestCluster::start().unwrap();
    let url = cluster.admin_url().to_owned();
    let pool = TenantPool::builder(&url)
        .max_size(4)
        .connection_timeout(std::time::Duration::from_secs(10))
        .build()
        .unwrap();
    diesel_tenancy::run_shared_migrations(&mut pool.public().unwrap(), common::SHARED).unwrap();
    let tenants = Arc::new(tenants_with_markers(&pool, "rst", 10));
    let stop = Arc::new(AtomicBool::new(false));
    let (reads, wrong, errors) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let (pool, tenants, stop) = (pool.clone(), tenants.clone(), stop.clone());
            let (reads, wrong, errors) = (reads.clone(), wrong.clone(), errors.clone());
            std::thread::spawn(move || {
                let mut rng = Rng::new(0xe5 + t as u64);
                while !stop.load(Ordering::Relaxed) {
                    let tenant = &tenants[rng.below(tenants.len())];
                    match pool.with_tenant(tenant, markers) {
                        Ok(seen) => {
                            reads.fetch_add(1, Ordering::Relaxed);
                            if seen != [tenant.schema().as_str()] {
                                wrong.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(std::time::Duration::from_millis(20));
                        }
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let before = reads.load(Ordering::Relaxed);
    cluster.restart().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    let after = reads.load(Ordering::Relaxed);
    println!(
        "restart under load: {after} reads ({before} before the restart), {} errors, {} wrong-tenant reads",
        errors.load(Ordering::Relaxed),
        wrong.load(Ordering::Relaxed)
    );
    assert!(
        before > 0 && after > before,
        "reads resumed after the restart"
    );
    assert_eq!(wrong.load(Ordering::Relaxed), 0);
    // And a fresh round over every tenant works.
    for tenant in tenants.iter() {
        assert_sees_only(&pool, tenant);
    }
}

/// Per-tenant roles: inside tenant A's scope, tenant B's tables are out of reach
/// even when named or when raw SQL moves the search path.
#[test]
fn tenant_roles_deny_other_tenants_tables() {
    let (db, setup_pool) = setup(2);
    let mut tenants = Vec::new();
    for schema in ["rola", "rolb"] {
        let new = diesel_tenancy::NewTenant::new(schema.parse().unwrap(), schema).with_role();
        let t =
            diesel_tenancy::create_tenant(&mut setup_pool.public().unwrap(), &new, common::TENANT)
                .unwrap();
        assert!(t.role().is_some());
        setup_pool
            .with_tenant(&t, |conn| {
                diesel::insert_into(customers::table)
                    .values((customers::name.eq(schema), customers::email.eq(schema)))
                    .execute(conn)
            })
            .unwrap();
        tenants.push(t);
    }
    let (a, b) = (&tenants[0], &tenants[1]);
    for transaction_scoped in [false, true] {
        let pool = db
            .pool_builder()
            .max_size(1)
            .tenant_roles(true)
            .transaction_scoped(transaction_scoped)
            .build()
            .unwrap();
        assert_sees_only(&pool, a);
        let named = pool.with_tenant(a, |conn| {
            diesel::sql_query("SELECT name FROM rolb.customers").execute(conn)
        });
        assert!(
            named
                .as_ref()
                .unwrap_err()
                .to_string()
                .contains("permission denied"),
            "{named:?}"
        );
        let moved = pool.with_tenant(a, |conn| {
            conn.batch_execute("SET search_path TO rolb")?;
            diesel::sql_query("SELECT name FROM customers").execute(conn)
        });
        // Without USAGE on rolb, the schema is skipped in name lookup.
        let moved = moved.unwrap_err().to_string();
        assert!(
            moved.contains("permission denied") || moved.contains("does not exist"),
            "{moved}"
        );
        // Own rows, writes, and public's shared tables still work.
        pool.with_tenant(a, |conn| {
            diesel::insert_into(customers::table)
                .values((customers::name.eq("more"), customers::email.eq("more")))
                .execute(conn)?;
            diesel::delete(customers::table.filter(customers::name.eq("more"))).execute(conn)
        })
        .unwrap();
        assert_eq!(common::count(&pool, "SELECT count(*) AS n FROM plans"), 2);
        assert_sees_only(&pool, b);
        // What roles do not stop: RESET ROLE returns to the login user, a
        // member of every tenant role, who reads the other tenant's table.
        let escaped = pool.with_tenant(a, |conn| {
            conn.batch_execute("RESET ROLE")?;
            diesel::sql_query("SELECT name FROM rolb.customers").execute(conn)
        });
        assert_eq!(escaped.unwrap(), 1, "RESET ROLE escapes the tenant role");
        // The next borrower, on the same connection, runs as its own role.
        #[derive(QueryableByName)]
        struct User {
            #[diesel(sql_type = diesel::sql_types::Text)]
            user: String,
        }
        let user = pool
            .with_tenant(b, |conn| {
                diesel::sql_query("SELECT current_user::text AS user").get_result::<User>(conn)
            })
            .unwrap();
        assert_eq!(user.user, b.role().unwrap().as_str());
        assert_sees_only(&pool, b);
        // A tenant without a role is refused, not served as the session user.
        let plain = diesel_tenancy::create_tenant(
            &mut setup_pool.public().unwrap(),
            &diesel_tenancy::NewTenant::new(
                format!("rolc{}", u8::from(transaction_scoped))
                    .parse()
                    .unwrap(),
                "no role",
            ),
            common::TENANT,
        )
        .unwrap();
        assert!(matches!(
            pool.get(&plain),
            Err(Error::TenantRoleMissing { .. })
        ));
        let with_role =
            diesel_tenancy::ensure_tenant_role(&mut setup_pool.public().unwrap(), plain.schema())
                .unwrap();
        assert!(pool.get(&with_role).is_ok());
    }
    // Dropping a tenant drops its role.
    let role = a.role().unwrap().to_string();
    diesel_tenancy::drop_tenant(
        &mut setup_pool.public().unwrap(),
        a.schema(),
        diesel_tenancy::ConfirmDrop::DeleteSchemaAndAllItsData,
    )
    .unwrap();
    assert_eq!(
        common::count(
            &setup_pool,
            &format!("SELECT count(*) AS n FROM pg_roles WHERE rolname = '{role}'")
        ),
        0
    );
}

#[test]
fn a_tenant_schema_cannot_be_an_extra_schema() {
    let (db, pool) = setup(1);
    let tenant = tenants_with_markers(&pool, "extx", 1).remove(0);
    let with_extra = db
        .pool_builder()
        .max_size(1)
        .extra_schema(tenant.schema().clone())
        .build()
        .unwrap();
    let refused = with_extra.get(&tenant).unwrap_err();
    assert!(
        matches!(&refused, Error::SchemaOnEveryPath { schema } if schema == "extx0"),
        "{refused:?}"
    );
}

/// `session_setup` runs on new connections and again after a reset, so a
/// deliberate setting survives a borrower's `SET`; resets are counted, and a
/// clean borrow costs none. Inside a borrow, a temporary table named like a
/// real one does not shadow it (`pg_temp` is last on the path).
#[test]
fn session_setup_survives_resets_and_temp_tables_never_shadow() {
    let (db, pool) = setup(1);
    let t = tenants_with_markers(&pool, "setup", 1).remove(0);
    let pool = db
        .pool_builder()
        .max_size(1)
        .session_setup("SET application_name = 'from-setup'")
        .build()
        .unwrap();
    let name = |pool: &TenantPool| -> String {
        pool.with_tenant(&t, |conn| {
            diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(
                "current_setting('application_name')",
            ))
            .get_result(conn)
        })
        .unwrap()
    };
    assert_eq!(name(&pool), "from-setup");
    let before = pool.stats().resets;
    assert_eq!(name(&pool), "from-setup");
    assert_eq!(pool.stats().resets, before, "a clean borrow needs no reset");
    pool.with_tenant(&t, |conn| {
        conn.batch_execute("SET application_name = 'borrower'")
    })
    .unwrap();
    assert_eq!(pool.stats().resets, before + 1);
    assert_eq!(name(&pool), "from-setup");
    let seen = pool
        .with_tenant(&t, |conn| {
            conn.batch_execute(
                "CREATE TEMP TABLE customers (id bigint, name text, email text); \
                 INSERT INTO pg_temp.customers VALUES (1, 'fake', 'fake')",
            )?;
            markers(conn)
        })
        .unwrap();
    assert_eq!(seen, ["setup0"]);
}

/// Swaps the schema names of two tenants (three renames, as an operator
/// would), so that each name denotes the other's schema.
fn swap_names(pool: &TenantPool, a: &Tenant, b: &Tenant) {
    let mut conn = pool.public().unwrap();
    let tmp: diesel_tenancy::SchemaName = "swap_tmp".parse().unwrap();
    diesel_tenancy::rename_tenant(&mut conn, a.schema(), &tmp).unwrap();
    diesel_tenancy::rename_tenant(&mut conn, b.schema(), a.schema()).unwrap();
    diesel_tenancy::rename_tenant(&mut conn, &tmp, b.schema()).unwrap();
}

/// [`swap_names`] with a pause after each rename.
fn swap_names_slowly(pool: &TenantPool, a: &Tenant, b: &Tenant) {
    let pause = || std::thread::sleep(std::time::Duration::from_millis(40));
    let mut conn = pool.public().unwrap();
    let tmp: diesel_tenancy::SchemaName = "swap_tmp".parse().unwrap();
    diesel_tenancy::rename_tenant(&mut conn, a.schema(), &tmp).unwrap();
    pause();
    diesel_tenancy::rename_tenant(&mut conn, b.schema(), a.schema()).unwrap();
    pause();
    diesel_tenancy::rename_tenant(&mut conn, &tmp, b.schema()).unwrap();
    pause();
}

/// A snapshot taken before two tenants swap schema names is refused, never
/// served the other tenant's rows: on a connection that still holds the path
/// (read back) and on one that must set it, and while readers run
/// concurrently with the swaps. Fresh lookups then find each tenant's rows.
#[test]
fn a_snapshot_is_refused_after_its_schema_name_moves_to_another_tenant() {
    let (_db, pool) = setup(1);
    let t = tenants_with_markers(&pool, "swap", 2);
    let (a, b) = (&t[0], &t[1]);
    assert_sees_only(&pool, a); // the one connection now holds a's path
    swap_names(&pool, a, b);
    for round in 0..2 {
        let refused = pool.with_tenant(a, markers).unwrap_err();
        assert!(
            matches!(&refused, diesel::result::Error::QueryBuilderError(e)
                if matches!(e.downcast_ref::<Error>(), Some(Error::SchemaReplaced { .. }))),
            "round {round}: {refused:?}"
        );
        assert!(matches!(pool.get(b), Err(Error::SchemaReplaced { .. })));
    }
    // The registry moved with the schemas: a fresh lookup of each name finds
    // the tenant that owns that schema now, and its rows.
    let fresh_a = pool.tenant(a.schema().as_str()).unwrap();
    assert_eq!(fresh_a.id(), b.id());
    assert_eq!(
        pool.with_tenant(&fresh_a, markers).unwrap(),
        vec![b.schema().to_string()]
    );

    // Concurrently: readers holding old snapshots while the names swap back
    // and forth read their own rows or are refused, never the other's. (The
    // check is made at checkout: a borrow already running when a swap
    // completes is not covered, see the README's *Renaming a tenant*; the
    // renames here are spaced so that each borrow, one checkout and one
    // query, runs between two of them.)
    let (_db, pool) = setup(4);
    let t = tenants_with_markers(&pool, "cswap", 2);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (served, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let readers: Vec<_> = (0..3)
        .map(|i| {
            let (pool, stop) = (pool.clone(), stop.clone());
            let (served, refused) = (served.clone(), refused.clone());
            let t = t.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    // Each reader keeps the snapshots it took at the start.
                    let mine = &t[i % 2];
                    match pool.with_tenant(mine, markers) {
                        Ok(seen) => {
                            // Before any swap, or after an even number of them,
                            // the snapshot's schema has its own name again.
                            assert_eq!(seen, vec![mine.schema().to_string()], "wrong-tenant read");
                            served.fetch_add(1, Ordering::Relaxed);
                        }
                        // Renamed away, or mid-swap under the temporary name.
                        Err(diesel::result::Error::QueryBuilderError(e))
                            if matches!(
                                e.downcast_ref::<Error>(),
                                Some(Error::SchemaReplaced { .. } | Error::SchemaMissing { .. })
                            ) =>
                        {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                        // A rename landed between the checkout and the query:
                        // the name then denotes no schema, and the query fails.
                        Err(diesel::result::Error::DatabaseError(_, info))
                            if info.message().contains("does not exist") =>
                        {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => panic!("unexpected error: {e:?}"),
                    }
                }
            })
        })
        .collect();
    for _ in 0..10 {
        swap_names_slowly(&pool, &t[0], &t[1]);
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().expect("no wrong-tenant read");
    }
    let (served, refused) = (
        served.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    );
    println!("rename swaps: {served} reads served, {refused} refused");
    assert!(
        refused > 0,
        "no read was refused while the names were swapped"
    );
}
