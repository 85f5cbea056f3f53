//! The registry, tenant creation and the errors users meet, on a real server.
#![allow(missing_docs)]

mod common;

use std::time::Duration;

use common::{Count, TENANT, count, markers, setup, tenants_with_markers};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_migrations::FileBasedMigrations;
use diesel_tenancy::{
    Domain, Error, NewTenant, SchemaName, TenantPool, TenantStatus, create_tenant, registry,
    run_tenant_migrations,
};

fn schema(s: &str) -> SchemaName {
    SchemaName::new(s).unwrap()
}

fn domain(s: &str) -> Domain {
    Domain::parse(s).unwrap()
}

fn schema_exists(pool: &TenantPool, name: &str) -> bool {
    diesel::sql_query("SELECT count(*) AS n FROM pg_namespace WHERE nspname = $1")
        .bind::<diesel::sql_types::Text, _>(name)
        .get_result::<Count>(&mut *pool.public().unwrap())
        .unwrap()
        .n
        == 1
}

#[test]
fn install_is_idempotent_and_versioned() {
    let (_db, pool) = setup(2);
    let mut conn = pool.public().unwrap();
    registry::install(&mut conn).unwrap();
    registry::install(&mut conn).unwrap();
    drop(conn);
    assert_eq!(
        count(
            &pool,
            "SELECT max(version)::bigint AS n FROM public.tenancy_registry_version"
        ),
        i64::from(registry::REGISTRY_VERSION)
    );
}

#[test]
fn tenants_are_created_found_listed_and_suspended() {
    let (_db, pool) = setup(2);
    let mut conn = pool.public().unwrap();
    let b = registry::insert_tenant(&mut conn, &schema("beta"), "Beta").unwrap();
    let a = registry::insert_tenant(&mut conn, &schema("alpha"), "Alpha").unwrap();
    assert!(a.is_active());
    assert_eq!(a.name(), "Alpha");
    assert!(matches!(
        registry::insert_tenant(&mut conn, &schema("alpha"), "Again"),
        Err(Error::TenantExists { schema }) if schema == "alpha"
    ));
    assert_eq!(
        registry::get_tenant(&mut conn, &schema("alpha")).unwrap(),
        a
    );
    assert_eq!(
        registry::find_tenant_by_id(&mut conn, b.id()).unwrap(),
        Some(b.clone())
    );
    assert_eq!(
        registry::find_tenant(&mut conn, &schema("gamma")).unwrap(),
        None
    );
    let names: Vec<_> = registry::list_tenants(&mut conn)
        .unwrap()
        .iter()
        .map(|t| t.schema().to_string())
        .collect();
    assert_eq!(names, ["alpha", "beta"]);

    let suspended =
        registry::set_tenant_status(&mut conn, &schema("alpha"), TenantStatus::Suspended).unwrap();
    assert_eq!(suspended.status(), TenantStatus::Suspended);
    assert!(matches!(
        registry::set_tenant_status(&mut conn, &schema("nobody"), TenantStatus::Active),
        Err(Error::TenantNotFound { .. })
    ));
    drop(conn);
    // A suspended tenant gets a typed error before any query runs in its scope.
    let before = pool.stats();
    assert!(
        matches!(pool.get(&suspended), Err(Error::TenantSuspended { schema }) if schema == "alpha")
    );
    assert_eq!(pool.stats().scoped, before.scoped);
    assert!(matches!(
        pool.tenant("alpha"),
        Err(Error::TenantSuspended { .. })
    ));
    assert!(
        matches!(pool.tenant("nobody"), Err(Error::TenantNotFound { schema }) if schema == "nobody")
    );
    assert!(matches!(
        pool.tenant("Bad Name"),
        Err(Error::InvalidSchemaName(_))
    ));
}

#[test]
fn domains_are_normalised_unique_and_resolve_to_their_tenant() {
    let (_db, pool) = setup(2);
    let mut conn = pool.public().unwrap();
    let acme = registry::insert_tenant(&mut conn, &schema("acme"), "Acme").unwrap();
    let other = registry::insert_tenant(&mut conn, &schema("other"), "Other").unwrap();
    let d = Domain::parse("ACME.Example.com.:8443").unwrap();
    registry::add_domain(&mut conn, &acme, &d, true).unwrap();
    registry::add_domain(&mut conn, &acme, &domain("www.acme.test"), false).unwrap();
    registry::add_domain(&mut conn, &acme, &domain("bücher.example"), true).unwrap();

    let listed: Vec<_> = registry::list_domains(&mut conn, &acme)
        .unwrap()
        .into_iter()
        .map(|r| (r.domain.to_string(), r.is_primary))
        .collect();
    assert_eq!(
        listed,
        [
            ("xn--bcher-kva.example".to_owned(), true),
            ("acme.example.com".to_owned(), false),
            ("www.acme.test".to_owned(), false),
        ]
    );
    assert_eq!(
        registry::find_tenant_by_domain(&mut conn, &domain("acme.example.com"))
            .unwrap()
            .map(|t| t.schema().to_string()),
        Some("acme".into())
    );
    assert_eq!(
        registry::find_tenant_by_domain(&mut conn, &domain("nobody.example.com")).unwrap(),
        None
    );
    // Taken, whatever the spelling.
    assert!(matches!(
        registry::add_domain(&mut conn, &other, &domain("Acme.EXAMPLE.com"), false),
        Err(Error::DomainTaken { domain }) if domain == "acme.example.com"
    ));
    registry::remove_domain(&mut conn, &domain("www.acme.test")).unwrap();
    assert!(matches!(
        registry::remove_domain(&mut conn, &domain("www.acme.test")),
        Err(Error::DomainNotFound { .. })
    ));
    assert_eq!(registry::list_domains(&mut conn, &acme).unwrap().len(), 2);
}

#[test]
fn create_tenant_migrates_its_own_schema_and_ledger() {
    let (_db, pool) = setup(2);
    let t = tenants_with_markers(&pool, "fresh", 1);
    assert!(schema_exists(&pool, "fresh0"));
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) AS n FROM fresh0.__diesel_schema_migrations"
        ),
        2
    );
    // Only the shared set's version is in public's ledger, and no tenant table.
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) AS n FROM public.__diesel_schema_migrations"
        ),
        1
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) AS n FROM pg_tables WHERE schemaname = 'public' AND tablename = 'customers'"
        ),
        0
    );
    // Running again applies nothing.
    let applied = run_tenant_migrations(&mut pool.public().unwrap(), &t[0], TENANT).unwrap();
    assert!(applied.is_empty());
}

/// A migration set whose second migration fails.
fn broken_migrations() -> (std::path::PathBuf, FileBasedMigrations) {
    let dir = std::env::temp_dir().join(format!("dt-broken-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for (name, sql) in [
        ("2025-01-01-000001_ok", "CREATE TABLE things (id int);"),
        ("2025-01-01-000002_broken", "CREATE TABLE things (id int);"),
    ] {
        std::fs::create_dir_all(dir.join(name)).unwrap();
        std::fs::write(dir.join(name).join("up.sql"), sql).unwrap();
        std::fs::write(dir.join(name).join("down.sql"), "").unwrap();
    }
    let migrations = FileBasedMigrations::from_path(&dir).unwrap();
    (dir, migrations)
}

#[test]
fn a_failed_creation_leaves_nothing_behind() {
    let (_db, pool) = setup(2);
    let (dir, broken) = broken_migrations();
    let new = NewTenant::new(schema("halfmade"), "Half").domain(domain("half.example.com"));
    let err = create_tenant(&mut pool.public().unwrap(), &new, broken).unwrap_err();
    std::fs::remove_dir_all(dir).unwrap();
    match &err {
        Error::Migration {
            schema, version, ..
        } => {
            assert_eq!(schema, "halfmade");
            assert_eq!(version.as_deref(), Some("20250101000002"));
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert!(!schema_exists(&pool, "halfmade"));
    assert_eq!(count(&pool, "SELECT count(*) AS n FROM tenancy_tenants"), 0);
    assert_eq!(count(&pool, "SELECT count(*) AS n FROM tenancy_domains"), 0);

    // A domain that is taken also undoes the schema and the row.
    tenants_with_markers(&pool, "owner", 1);
    let mut conn = pool.public().unwrap();
    let owner = registry::get_tenant(&mut conn, &schema("owner0")).unwrap();
    registry::add_domain(&mut conn, &owner, &domain("taken.example.com"), true).unwrap();
    let new = NewTenant::new(schema("second"), "Second").domain(domain("taken.example.com"));
    assert!(matches!(
        create_tenant(&mut conn, &new, TENANT),
        Err(Error::DomainTaken { .. })
    ));
    drop(conn);
    assert!(!schema_exists(&pool, "second"));
    assert_eq!(count(&pool, "SELECT count(*) AS n FROM tenancy_tenants"), 1);

    // A schema that exists but belongs to no tenant is not taken over.
    pool.public()
        .unwrap()
        .batch_execute("CREATE SCHEMA squatter")
        .unwrap();
    let new = NewTenant::new(schema("squatter"), "Squatter");
    assert!(matches!(
        create_tenant(&mut pool.public().unwrap(), &new, TENANT),
        Err(Error::SchemaExists { schema }) if schema == "squatter"
    ));
    assert_eq!(count(&pool, "SELECT count(*) AS n FROM tenancy_tenants"), 1);
}

#[test]
fn a_schema_dropped_behind_the_registry_gives_a_clear_error() {
    let (_db, pool) = setup(1);
    let t = tenants_with_markers(&pool, "gone", 2);
    assert_eq!(markers(&mut pool.get(&t[0]).unwrap()).unwrap(), ["gone0"]);
    pool.public()
        .unwrap()
        .batch_execute("DROP SCHEMA gone0 CASCADE")
        .unwrap();
    assert!(matches!(pool.get(&t[0]), Err(Error::SchemaMissing { schema }) if schema == "gone0"));
    // The refused checkout left nothing behind on the connection (a pool of one).
    let path: String = diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(
        "current_setting('search_path')",
    ))
    .get_result(&mut *pool.public().unwrap())
    .unwrap();
    assert_eq!(path, "public, pg_temp");
    // Migrating it does not fall through to public either.
    assert!(matches!(
        run_tenant_migrations(&mut pool.public().unwrap(), &t[0], TENANT),
        Err(Error::SchemaMissing { .. })
    ));
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) AS n FROM pg_tables WHERE schemaname = 'public' AND tablename = 'customers'"
        ),
        0
    );
    // The connection is fine for everyone else.
    assert_eq!(markers(&mut pool.get(&t[1]).unwrap()).unwrap(), ["gone1"]);
}

#[test]
fn bad_settings_and_unreachable_servers_give_errors() {
    assert!(matches!(
        TenantPool::builder("http://example.com/db").build(),
        Err(Error::Config { .. })
    ));
    assert!(matches!(
        TenantPool::builder("").build(),
        Err(Error::Config { .. })
    ));
    assert!(matches!(
        TenantPool::builder("postgres://[bad").build(),
        Err(Error::Config { .. })
    ));
    let err = TenantPool::builder("postgres://postgres@127.0.0.1:1/nothing")
        .connection_timeout(Duration::from_millis(500))
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::Pool(_)), "{err:?}");
}

/// A `Tenant` is a snapshot: a value looked up before `suspend_tenant` still
/// gets connections (as documented), while every fresh lookup and the value
/// `suspend_tenant` returns are refused.
#[test]
fn a_tenant_value_is_a_snapshot_and_fresh_lookups_see_a_suspension() {
    let (_db, pool) = setup(2);
    let held = tenants_with_markers(&pool, "snap", 1).remove(0);
    let suspended =
        diesel_tenancy::suspend_tenant(&mut pool.public().unwrap(), held.schema()).unwrap();
    assert_eq!(suspended.status(), TenantStatus::Suspended);
    assert!(matches!(
        pool.get(&suspended),
        Err(Error::TenantSuspended { .. })
    ));
    assert!(matches!(
        pool.tenant("snap0"),
        Err(Error::TenantSuspended { .. })
    ));
    // The snapshot taken before the suspension is served, as documented.
    assert_eq!(
        pool.with_tenant(&held, markers).unwrap(),
        vec!["snap0".to_string()]
    );
    diesel_tenancy::activate_tenant(&mut pool.public().unwrap(), held.schema()).unwrap();
    assert!(pool.tenant("snap0").is_ok());
}

/// A sign-up wraps `create_tenant` in its own transaction and writes its
/// billing row to a shared table afterwards, unqualified: `create_tenant`
/// leaves the caller's path (and timeouts) as they were, and a failure after
/// it rolls the tenant back with the billing row.
#[test]
fn create_tenant_inside_the_callers_transaction_leaves_its_path() {
    let (_db, pool) = setup(1);
    diesel::table! {
        tenant_plans (tenant_id) {
            tenant_id -> BigInt,
            plan_id -> Integer,
        }
    }
    let signed_up = pool
        .with_public(|conn| {
            conn.transaction(|conn| {
                conn.batch_execute("SET LOCAL statement_timeout = '7s'")?;
                let tenant =
                    create_tenant(conn, &NewTenant::new(schema("billed"), "Billed"), TENANT)?;
                // Migrating it again (nothing pending) leaves the path alone too.
                run_tenant_migrations(conn, &tenant, TENANT)?;
                // Unqualified: resolved on the caller's path, public.
                diesel::sql_query(
                    "INSERT INTO tenant_plans (tenant_id, plan_id) \
                     SELECT $1, id FROM plans WHERE name = 'pro'",
                )
                .bind::<diesel::sql_types::BigInt, _>(tenant.id())
                .execute(conn)?;
                let (path, timeout): (String, String) = diesel::select((
                    diesel::dsl::sql::<diesel::sql_types::Text>("current_setting('search_path')"),
                    diesel::dsl::sql::<diesel::sql_types::Text>(
                        "current_setting('statement_timeout')",
                    ),
                ))
                .get_result(conn)?;
                assert!(path.starts_with("public"), "{path}");
                assert_eq!(timeout, "7s");
                Ok::<_, Error>(tenant)
            })
        })
        .unwrap();
    assert_eq!(
        count(&pool, "SELECT count(*) AS n FROM tenant_plans"),
        1,
        "the billing row"
    );
    assert_eq!(signed_up.schema().as_str(), "billed");
    // A failure after create_tenant rolls back the tenant too.
    let failed: Result<(), Error> = pool.with_public(|conn| {
        conn.transaction(|conn| {
            create_tenant(
                conn,
                &NewTenant::new(schema("unbilled"), "Unbilled"),
                TENANT,
            )?;
            diesel::sql_query("INSERT INTO tenant_plans (tenant_id, plan_id) VALUES (-1, -1)")
                .execute(conn)?;
            Ok(())
        })
    });
    assert!(failed.is_err());
    assert!(!schema_exists(&pool, "unbilled"));
    assert!(pool.tenant("unbilled").is_err());
}
