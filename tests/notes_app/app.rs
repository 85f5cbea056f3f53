// A single-tenant notes app on diesel and r2d2, written as such apps are
// before multi-tenancy: `pool.get()`, `&mut conn`, transactions and
// `run_pending_migrations` on a pooled connection. `tests/pool_swap.rs`
// includes it twice, once with diesel's `ConnectionManager<PgConnection>` and
// once with only the manager swapped for `TenantConnectionManager`; the rest
// of this file, its test included, is the same text both times.

use diesel::prelude::*;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("tests/notes_app/migrations");

diesel::table! {
    notes (id) {
        id -> BigInt,
        body -> Text,
    }
}

pub type Pool = r2d2::Pool<Manager>;

pub fn pool(database_url: &str) -> Pool {
    r2d2::Pool::builder()
        .max_size(2)
        .build(manager(database_url))
        .expect("pool")
}

pub fn migrate(pool: &Pool) {
    let mut conn = pool.get().expect("connection");
    conn.run_pending_migrations(MIGRATIONS).expect("migrations");
}

pub fn add_note(pool: &Pool, body: &str) -> QueryResult<i64> {
    let mut conn = pool.get().expect("connection");
    conn.transaction(|conn| {
        diesel::insert_into(notes::table)
            .values(notes::body.eq(body))
            .returning(notes::id)
            .get_result(conn)
    })
}

pub fn list_notes(pool: &Pool) -> Vec<String> {
    let mut conn = pool.get().expect("connection");
    notes::table
        .select(notes::body)
        .order(notes::id)
        .load(&mut conn)
        .expect("notes")
}

/// The app's own test, unchanged whichever manager it runs on.
pub fn the_apps_test(database_url: &str) {
    let pool = pool(database_url);
    migrate(&pool);
    migrate(&pool); // nothing pending the second time
    assert_eq!(add_note(&pool, "first").unwrap(), 1);
    add_note(&pool, "second").unwrap();
    let failed: QueryResult<()> = pool.get().unwrap().transaction(|conn| {
        diesel::insert_into(notes::table)
            .values(notes::body.eq("rolled back"))
            .execute(conn)?;
        Err(diesel::result::Error::RollbackTransaction)
    });
    assert!(failed.is_err());
    assert_eq!(list_notes(&pool), ["first", "second"]);
    let mut conn = pool.get().unwrap();
    let n: i64 = notes::table.count().get_result(&mut conn).unwrap();
    assert_eq!(n, 2);
}
