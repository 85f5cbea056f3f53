//! One statement per checkout, switch or not. The checkout's liveness check is
//! the statement that reads the path back (same tenant) or sets it (a switch),
//! so a tenant pool sends exactly as many statements as a plain pool with its
//! own liveness check: no extra round trip on a switch, sync or async, with or
//! without per-tenant roles.
//!
//! Statements are counted with a Diesel instrumentation installed as the
//! process default, which is why this is a test binary of its own with a single
//! test: nothing else may run statements while it counts.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

use common::{customers, setup};
use diesel::connection::SimpleConnection;
use diesel::connection::{Instrumentation, InstrumentationEvent};
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};
use diesel_tenancy::{AsyncTenantPool, NewTenant, Tenant, TenantPool};

static STATEMENTS: AtomicUsize = AtomicUsize::new(0);

/// Counts every statement started on any connection of this process.
struct Count;

impl Instrumentation for Count {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        if matches!(event, InstrumentationEvent::StartQuery { .. }) {
            STATEMENTS.fetch_add(1, Ordering::SeqCst);
        }
    }
}

const OPS: usize = 60;

/// Statements per operation over `OPS` runs of `op`, after one warm-up run
/// (which may connect: Diesel's connection set-up runs statements too).
fn per_op(mut op: impl FnMut(usize)) -> f64 {
    op(OPS);
    let before = STATEMENTS.load(Ordering::SeqCst);
    for i in 0..OPS {
        op(i);
    }
    (STATEMENTS.load(Ordering::SeqCst) - before) as f64 / OPS as f64
}

/// Puts a plain pool's connections on one tenant's path when they connect.
#[derive(Debug)]
struct OnTenant(String);

impl diesel::r2d2::CustomizeConnection<PgConnection, diesel::r2d2::Error> for OnTenant {
    fn on_acquire(&self, conn: &mut PgConnection) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute(&format!("SET search_path TO {}, public", self.0))
            .map_err(diesel::r2d2::Error::QueryError)
    }
}

/// Statements run by each of `OPS` calls of `op`, after a first call that may
/// connect (Diesel's connection set-up runs statements too).
async fn counts(mut op: impl AsyncFnMut(usize)) -> Vec<usize> {
    op(0).await;
    let mut counted = Vec::new();
    for i in 1..=OPS {
        let before = STATEMENTS.load(Ordering::SeqCst);
        op(i).await;
        counted.push(STATEMENTS.load(Ordering::SeqCst) - before);
    }
    counted
}

fn lookup(conn: &mut PgConnection) -> String {
    customers::table
        .select(customers::name)
        .first(conn)
        .expect("lookup")
}

async fn lookup_async(conn: &mut diesel_async::AsyncPgConnection) -> String {
    diesel_async::RunQueryDsl::first(customers::table.select(customers::name), conn)
        .await
        .expect("lookup")
}

#[test]
fn a_checkout_sends_one_statement_switch_or_not() {
    diesel::connection::set_default_instrumentation(|| Some(Box::new(Count)))
        .expect("default instrumentation");
    let (db, setup_pool) = setup(1);
    // Tenants with roles and a marker row each.
    let tenants: Vec<Tenant> = (0..4)
        .map(|i| {
            let schema = format!("rt{i}");
            let new = NewTenant::new(schema.parse().unwrap(), &schema).with_role();
            let tenant = diesel_tenancy::create_tenant(
                &mut setup_pool.public().unwrap(),
                &new,
                common::TENANT,
            )
            .expect("tenant");
            setup_pool
                .with_tenant(&tenant, |conn| {
                    diesel::insert_into(customers::table)
                        .values((
                            customers::name.eq(&schema),
                            customers::email.eq("owner@example.com"),
                        ))
                        .execute(conn)
                })
                .expect("marker");
            tenant
        })
        .collect();
    drop(setup_pool);
    let pick = |i: usize| &tenants[i % tenants.len()];

    // Sync: a plain r2d2 pool whose connection sits on the first tenant's path
    // (its liveness check is `SELECT 1`).
    let plain = Pool::builder()
        .max_size(1)
        .connection_customizer(Box::new(OnTenant(tenants[0].schema().quoted())))
        .build(ConnectionManager::<PgConnection>::new(db.url()))
        .unwrap();
    let plain_per_op = per_op(|_| {
        assert_eq!(
            lookup(&mut plain.get().unwrap()),
            tenants[0].schema().as_str()
        );
    });
    assert_eq!(plain_per_op, 2.0, "plain pool: check + lookup");

    for roles in [false, true] {
        let pool = TenantPool::builder(db.url())
            .max_size(1)
            .tenant_roles(roles)
            .build()
            .unwrap();
        let same = per_op(|_| {
            let t = pick(0);
            assert_eq!(lookup(&mut pool.get(t).unwrap()), t.schema().as_str());
        });
        let switching = per_op(|i| {
            let t = pick(i);
            assert_eq!(lookup(&mut pool.get(t).unwrap()), t.schema().as_str());
        });
        assert_eq!(same, plain_per_op, "sync, same tenant, roles {roles}");
        assert_eq!(switching, plain_per_op, "sync, switching, roles {roles}");
    }

    // Async: a plain diesel-async deadpool pool (its `Verified` check is
    // `SELECT 1`), then the tenant pool on deadpool and on bb8.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use diesel_async::pooled_connection::AsyncDieselConnectionManager;
        use diesel_async::pooled_connection::deadpool::Pool as AsyncPool;
        let plain = AsyncPool::builder(AsyncDieselConnectionManager::<
            diesel_async::AsyncPgConnection,
        >::new(db.url()))
        .max_size(1)
        .build()
        .unwrap();
        let counted = counts(async |_| {
            let mut conn = plain.get().await.unwrap();
            let _ = diesel_async::RunQueryDsl::execute(diesel::sql_query("SELECT 1"), &mut conn)
                .await
                .unwrap();
        })
        .await;
        assert!(counted.iter().all(|n| *n == 2), "plain async: {counted:?}");

        for (kind, roles) in [
            ("deadpool", false),
            ("deadpool", true),
            ("bb8", false),
            ("bb8", true),
        ] {
            let builder = AsyncTenantPool::builder(db.url())
                .max_size(1)
                .tenant_roles(roles);
            let pool = match kind {
                "deadpool" => builder.build_deadpool(),
                _ => builder.build_bb8(),
            }
            .unwrap();
            assert_eq!(pool.pool_kind(), kind);
            for switching in [false, true] {
                let counted = counts(async |i| {
                    let t = if switching { pick(i) } else { pick(0) };
                    let mut conn = pool.get(t).await.unwrap();
                    assert_eq!(lookup_async(&mut conn).await, t.schema().as_str());
                })
                .await;
                assert!(
                    counted.iter().all(|n| *n == 2),
                    "async {kind}, switching {switching}, roles {roles}: {counted:?}"
                );
            }
        }
    });
}
