//! Session hygiene: whatever a borrower did to its connection, nothing of it
//! reaches the next borrower. Search path, role and session authorization, an
//! open or failed transaction, temporary objects, session settings, advisory
//! locks, cursors WITH HOLD, SQL-level prepared statements, LISTEN
//! registrations and sequence state are all checked after every entry of the
//! catalog in `common/misbehave.rs`, on the same physical connection (pools of
//! one), by a borrower of another tenant and by one of the same tenant.
//!
//! Each entry runs on a fresh pool of one connection: a borrower of tenant 0
//! misbehaves (pointing at tenant 1), then a borrower of tenant 2 (and, on
//! another fresh pool, of tenant 0 again) looks at the session in one statement
//! (path, users, transaction, temporary objects, advisory locks, cursors,
//! prepared statements, channels, `lastval()`, every setting against a fresh
//! borrow's), at unread notifications, at its own rows, at a `staging` temp
//! table, writes a row and (session mode) tries a `SAVEPOINT`. A connection of
//! its own then checks that the row is committed and that no backend of the
//! database is still busy, in a transaction or holding advisory locks after
//! the misbehaving borrow ended.
//!
//! Each pool and mode is one test that runs the whole catalog and reports every
//! failure at once (entry, which borrower looked, what it found). Lines starting
//! with `HYGIENE` give the verdict per entry; the stress tests print `STRESS`
//! lines, with the lock waits they had to break and who held the lock.
#![allow(missing_docs)]

mod common;
#[macro_use]
#[path = "common/async_pools.rs"]
mod async_pools;
#[path = "common/misbehave.rs"]
mod misbehave;

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use async_pools::Kind;
use common::{Rng, customers, tenants_with_markers};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Nullable, Text};
use diesel_tenancy::testing::TestDatabase;
use diesel_tenancy::{AsyncTenantPool, Tenant, TenantPool};
use misbehave::{CANCEL_BORROW_AFTER, Item, Misbehaviour, PANIC_MESSAGE, catalog, setup_sql};

// ---------------------------------------------------------------------------
// Set-up
// ---------------------------------------------------------------------------

/// Keeps the catalog's deliberate panics out of the output.
fn quiet_deliberate_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<&str>() != Some(&PANIC_MESSAGE) {
                default(info);
            }
        }));
    });
}

/// Row ids are given explicitly (never from the sequence), so that the harness
/// itself leaves no sequence state (`lastval()`) behind; unique across tests.
fn next_id() -> i64 {
    static NEXT: AtomicI64 = AtomicI64::new(1_000_000_000);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A database with the shared migrations, the catalog's set-up and `n` tenants
/// `prefix0..` holding their marker rows.
fn database(prefix: &str, n: usize) -> (TestDatabase, Vec<Tenant>) {
    let (db, pool) = common::setup(2);
    pool.public()
        .unwrap()
        .batch_execute(setup_sql())
        .expect("catalog set-up");
    let tenants = tenants_with_markers(&pool, prefix, n);
    (db, tenants)
}

/// A plain connection of its own, outside every pool: reads the server clock
/// and checks what was committed. Timeouts, so that a lock a leaked
/// transaction holds cannot hang the test.
fn verifier(db: &TestDatabase) -> PgConnection {
    let mut conn = PgConnection::establish(db.url()).expect("verifier connection");
    conn.batch_execute("SET lock_timeout = '3s'; SET statement_timeout = '10s'")
        .unwrap();
    conn
}

#[derive(QueryableByName)]
struct One {
    #[diesel(sql_type = Text)]
    v: String,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// The server's clock now, as text: a borrow that starts later must see a
/// transaction start (`now()`) after it.
fn server_clock(v: &mut PgConnection) -> String {
    diesel::sql_query("SELECT clock_timestamp()::text AS v")
        .get_result::<One>(v)
        .expect("server clock")
        .v
}

fn session_user(v: &mut PgConnection) -> String {
    diesel::sql_query("SELECT session_user::text AS v")
        .get_result::<One>(v)
        .unwrap()
        .v
}

#[derive(QueryableByName)]
struct Lingering {
    #[diesel(sql_type = Text)]
    v: String,
}

/// Backends of this database (other than `v`) that, after a borrow ended, are
/// still running a statement, inside a transaction, or holding advisory locks:
/// a cancelled statement still running on the server, a transaction left open
/// on a connection that went back to the pool or was dropped without closing.
/// Waits up to a second for them to go (a discarded connection's backend takes
/// a moment to notice).
fn lingering(v: &mut PgConnection) -> Vec<String> {
    lingering_for(v, Duration::from_secs(1))
        .into_iter()
        .map(|f| format!("after the borrow ended: {f}"))
        .collect()
}

/// Waits (up to ten seconds) until no backend lingers from an earlier entry, so
/// that each entry is judged on its own.
fn settle(v: &mut PgConnection) {
    lingering_for(v, Duration::from_secs(10));
}

/// [`lingering`], looking every 5 ms instead of every 50: the async pools
/// give a connection back from a task after the borrow (a reset, or the
/// rollback of its own transaction), which takes a few milliseconds.
fn lingering_soon(v: &mut PgConnection) -> Vec<String> {
    lingering_every(v, Duration::from_secs(1), Duration::from_millis(5))
        .into_iter()
        .map(|f| format!("after the borrow ended: {f}"))
        .collect()
}

fn lingering_for(v: &mut PgConnection, wait: Duration) -> Vec<String> {
    lingering_every(v, wait, Duration::from_millis(50))
}

fn lingering_every(v: &mut PgConnection, wait: Duration, every: Duration) -> Vec<String> {
    const SQL: &str = r#"
SELECT format('backend %s %s for %s s%s%s, last statement %L', a.pid, a.state,
              round(extract(epoch FROM now() - a.state_change)::numeric, 1),
              CASE WHEN a.xact_start IS NOT NULL THEN ', in a transaction' ELSE '' END,
              (SELECT ', holding advisory locks ' || string_agg(l.objid::text, ',')
                 FROM pg_locks l WHERE l.pid = a.pid AND l.locktype = 'advisory'),
              a.query) AS v
  FROM pg_stat_activity a
 WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()
   AND a.backend_type = 'client backend'
   AND (a.state <> 'idle' OR a.xact_start IS NOT NULL
        OR EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.locktype = 'advisory'))
"#;
    let deadline = Instant::now() + wait;
    loop {
        let found: Vec<String> = diesel::sql_query(SQL)
            .load::<Lingering>(v)
            .map(|rows| rows.into_iter().map(|r| r.v).collect())
            .unwrap_or_else(|e| vec![format!("reading pg_stat_activity failed: {e}")]);
        if found.is_empty() || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(every);
    }
}

/// Removes fake rows (`leak:...`) a misbehaving borrower wrote into real
/// tables itself, so that they cannot be taken for a later entry's leak.
fn scrub(v: &mut PgConnection, tenants: &[Tenant]) {
    for t in tenants {
        let _ = v.batch_execute(&format!(
            "DELETE FROM \"{}\".customers WHERE name LIKE 'leak:%'",
            t.schema().as_str()
        ));
    }
}

/// Whether row `id` is committed in `schema.customers`.
fn committed(v: &mut PgConnection, schema: &str, id: i64) -> Result<bool, String> {
    diesel::sql_query(format!(
        "SELECT count(*) AS n FROM \"{schema}\".customers WHERE id = $1"
    ))
    .bind::<BigInt, _>(id)
    .get_result::<Count>(v)
    .map(|c| c.n == 1)
    .map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------
// What the next borrower sees
// ---------------------------------------------------------------------------

/// Everything a borrower can observe of earlier borrows, in one statement.
/// `$1`: the server clock read after the previous borrow ended.
const STATE_SQL: &str = r#"
SELECT current_schemas(false)::text[] AS schemas,
       current_schema()::text AS schema,
       current_user::text AS cur_user,
       session_user::text AS sess_user,
       (now() > $1::timestamptz) AS fresh_tx,
       txid_current_if_assigned()::text AS xid,
       concat_ws(',',
           (SELECT string_agg(relname || ':' || relkind::text, ',' ORDER BY relname) FROM pg_class
             WHERE relnamespace = pg_my_temp_schema() AND relkind NOT IN ('i', 't')),
           (SELECT string_agg(proname || '()', ',' ORDER BY proname) FROM pg_proc
             WHERE pronamespace = pg_my_temp_schema())) AS temp_objects,
       coalesce((SELECT string_agg(concat_ws('/', classid, objid, objsubid) || ' ' || mode, ',')
                   FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()), '') AS advisory,
       coalesce((SELECT string_agg(name || CASE WHEN is_holdable THEN ' (with hold)' ELSE '' END, ',')
                   FROM pg_cursors WHERE name <> ''), '') AS cursors,
       coalesce((SELECT string_agg(name, ',') FROM pg_prepared_statements WHERE from_sql), '') AS prepared,
       coalesce((SELECT string_agg(c, ',') FROM pg_listening_channels() c), '') AS channels,
       current_setting('app.tenant', true) AS app_tenant,
       public.misbehave_probe_lastval() AS lastval,
       ARRAY(SELECT name FROM pg_settings ORDER BY name)::text[] AS setting_names,
       ARRAY(SELECT setting FROM pg_settings ORDER BY name)::text[] AS setting_values,
       ARRAY(SELECT coalesce(reset_val, '') FROM pg_settings ORDER BY name)::text[] AS setting_resets
"#;

#[derive(QueryableByName, Debug)]
struct State {
    #[diesel(sql_type = Array<Text>)]
    schemas: Vec<String>,
    #[diesel(sql_type = Nullable<Text>)]
    schema: Option<String>,
    #[diesel(sql_type = Text)]
    cur_user: String,
    #[diesel(sql_type = Text)]
    sess_user: String,
    #[diesel(sql_type = Bool)]
    fresh_tx: bool,
    #[diesel(sql_type = Nullable<Text>)]
    xid: Option<String>,
    #[diesel(sql_type = Text)]
    temp_objects: String,
    #[diesel(sql_type = Text)]
    advisory: String,
    #[diesel(sql_type = Text)]
    cursors: String,
    #[diesel(sql_type = Text)]
    prepared: String,
    #[diesel(sql_type = Text)]
    channels: String,
    #[diesel(sql_type = Nullable<Text>)]
    app_tenant: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    lastval: Option<i64>,
    #[diesel(sql_type = Array<Text>)]
    setting_names: Vec<String>,
    #[diesel(sql_type = Array<Text>)]
    setting_values: Vec<String>,
    /// What `RESET` would set: the session's default.
    #[diesel(sql_type = Array<Text>)]
    setting_resets: Vec<String>,
}

/// Settings that are the pool's to set (the path, the role) or follow from them.
const NOT_SETTINGS: [&str; 4] = [
    "search_path",
    "role",
    "session_authorization",
    "is_superuser",
];

/// The settings of a borrow, with what `RESET` would set each to.
fn settings_map(state: &State) -> BTreeMap<String, (String, String)> {
    state
        .setting_names
        .iter()
        .zip(&state.setting_values)
        .zip(&state.setting_resets)
        .filter(|((k, _), _)| !NOT_SETTINGS.contains(&k.as_str()))
        .map(|((k, v), r)| (k.clone(), (v.clone(), r.clone())))
        .collect()
}

/// What a clean borrow of `schema` looks like.
struct Expect<'a> {
    schema: &'a str,
    user: &'a str,
    /// The settings of a clean borrow of a fresh pool of the same kind.
    settings: &'a BTreeMap<String, (String, String)>,
}

/// What is wrong with `state` for a clean borrow.
fn judge(state: &State, e: &Expect) -> Vec<String> {
    let mut found = Vec::new();
    // The path: the tenant, then public (a trailing pg_temp_N is fine).
    let mut schemas: Vec<&str> = state.schemas.iter().map(String::as_str).collect();
    if schemas.last().is_some_and(|s| s.starts_with("pg_temp")) {
        schemas.pop();
    }
    if schemas != [e.schema, "public"] || state.schema.as_deref() != Some(e.schema) {
        found.push(format!(
            "search path: current_schemas {:?}, current_schema {:?}",
            state.schemas, state.schema
        ));
    }
    if state.cur_user != e.user || state.sess_user != e.user {
        found.push(format!(
            "role: current_user {}, session_user {} (expected {})",
            state.cur_user, state.sess_user, e.user
        ));
    }
    if !state.fresh_tx {
        found.push("transaction: the borrow runs in a transaction begun before it".into());
    }
    if let Some(xid) = &state.xid {
        found.push(format!(
            "transaction: the borrow's transaction already holds xid {xid}"
        ));
    }
    if !state.temp_objects.is_empty() {
        found.push(format!("temp objects: {}", state.temp_objects));
    }
    if !state.advisory.is_empty() {
        found.push(format!("advisory locks held: {}", state.advisory));
    }
    if !state.cursors.is_empty() {
        found.push(format!("cursors: {}", state.cursors));
    }
    if !state.prepared.is_empty() {
        found.push(format!("prepared statements: {}", state.prepared));
    }
    if !state.channels.is_empty() {
        found.push(format!("listening: {}", state.channels));
    }
    if let Some(v) = state.app_tenant.as_deref().filter(|v| !v.is_empty()) {
        found.push(format!("app.tenant = {v:?}"));
    }
    if let Some(v) = state.lastval {
        found.push(format!("sequence: lastval() = {v}"));
    }
    // Each setting as on a fresh connection, or back at its session default
    // (what RESET sets).
    let now = settings_map(state);
    let mut changed = Vec::new();
    for (k, (v, reset)) in &now {
        match e.settings.get(k) {
            Some((b, _)) if b == v => {}
            Some(_) if v == reset => {}
            Some((b, _)) => changed.push(format!("{k}={v} (fresh: {b})")),
            None if v.is_empty() => {}
            None => changed.push(format!("{k}={v} (fresh: unset)")),
        }
    }
    let hidden = e.settings.keys().filter(|k| !now.contains_key(*k)).count();
    if hidden > 0 {
        changed.push(format!("{hidden} settings no longer visible"));
    }
    if !changed.is_empty() {
        found.push(format!("settings: {}", changed.join(", ")));
    }
    found
}

/// The rows a borrower of `schema` may see: its marker, and rows named
/// `<schema>:...`.
fn judge_rows(rows: &[String], schema: &str) -> Option<String> {
    let own = |r: &String| r == schema || r.starts_with(&format!("{schema}:"));
    if rows.iter().any(|r| r == schema) && rows.iter().all(own) {
        None
    } else {
        let foreign: Vec<&String> = rows.iter().filter(|r| !own(r)).take(4).collect();
        Some(format!(
            "wrong rows: {} rows, marker {}, foreign {:?}",
            rows.len(),
            if rows.iter().any(|r| r == schema) {
                "present"
            } else {
                "missing"
            },
            foreign
        ))
    }
}

const STAGING_PROBE: &str = "CREATE TEMP TABLE IF NOT EXISTS staging (name text)";
const STAGING_COUNT: &str = "SELECT count(*) AS n FROM pg_temp.staging";
const STAGING_DROP: &str = "DROP TABLE IF EXISTS pg_temp.staging";
const SAVEPOINT_PROBE: &str = "SAVEPOINT hygiene_probe";
const NOT_IN_BLOCK: &str = "can only be used in transaction blocks";

/// What one checking borrow found, and the row it wrote (if its borrow
/// reported success, the row must be committed).
#[derive(Default)]
struct Checked {
    found: Vec<String>,
    state: Option<State>,
    written: Option<i64>,
}

// ---------------------------------------------------------------------------
// The sync pool
// ---------------------------------------------------------------------------

fn insert_row(conn: &mut PgConnection, schema: &str, tag: &str) -> QueryResult<i64> {
    let id = next_id();
    let name = format!("{schema}:{tag}{id}");
    diesel::insert_into(customers::table)
        .values((
            customers::id.eq(id),
            customers::name.eq(&name),
            customers::email.eq(format!("{name}@hygiene.test")),
        ))
        .execute(conn)?;
    Ok(id)
}

/// A query for the borrow's backend pid that calls no function and names no
/// setting, so that it looks as harmless as any `SELECT` (a pool may reset a
/// session after statements it cannot prove harmless, which would hide what
/// the misbehaviour alone leaves behind). The token makes the query text, and
/// so the one backend running it, unique.
fn backend_pid_query() -> String {
    static TOKEN: AtomicUsize = AtomicUsize::new(0);
    let token = TOKEN.fetch_add(1, Ordering::Relaxed);
    format!(
        "SELECT pid::int8 AS n FROM pg_stat_activity \
         WHERE state = 'active' AND query LIKE '%hygiene pid probe {token}.%'"
    )
}

/// A borrower of `own` that misbehaves as `m` says, pointing at `other`. First
/// writes a row of its own. Returns the backend it ran on, if it got that far.
fn misbehave_sync(
    pool: &TenantPool,
    m: &Misbehaviour,
    own: &Tenant,
    other: &Tenant,
) -> Option<i32> {
    let mut pid = None;
    let _ = catch_unwind(AssertUnwindSafe(|| {
        pool.with_tenant(own, |conn| {
            pid = diesel::sql_query(backend_pid_query())
                .get_result::<Count>(conn)
                .ok()
                .map(|c| c.n as i32);
            let _ = insert_row(conn, own.schema().as_str(), "m");
            m.run_sync(conn, own.schema().as_str(), other.schema().as_str());
            Ok::<_, diesel::result::Error>(())
        })
    }));
    pid
}

/// The checking borrower: reads the session's state, its own rows, probes
/// `staging`, writes a row, and (session mode) probes for a transaction block.
fn check_sync(pool: &TenantPool, tenant: &Tenant, since: &str, session_mode: bool) -> Checked {
    let schema = tenant.schema().as_str();
    let mut c = Checked::default();
    let result = pool.with_tenant(tenant, |conn| {
        let step = (|| -> Result<(), String> {
            let state = diesel::sql_query(STATE_SQL)
                .bind::<Text, _>(since)
                .get_result::<State>(conn)
                .map_err(|e| format!("state query failed: {e}"))?;
            c.state = Some(state);
            // Notifications an earlier borrower's LISTEN received and never read
            // wait in the client library's queue.
            let notes: Vec<String> = conn
                .notifications_iter()
                .map(|n| match n {
                    Ok(n) => format!("{}: {:?}", n.channel, n.payload),
                    Err(e) => e.to_string(),
                })
                .collect();
            if !notes.is_empty() {
                c.found.push(format!(
                    "unread notifications delivered: {}",
                    notes.join(", ")
                ));
            }
            let rows = common::markers(conn).map_err(|e| format!("reading rows failed: {e}"))?;
            if let Some(f) = judge_rows(&rows, schema) {
                c.found.push(f);
            }
            conn.batch_execute(STAGING_PROBE)
                .map_err(|e| format!("staging probe failed: {e}"))?;
            let staged = diesel::sql_query(STAGING_COUNT)
                .get_result::<Count>(conn)
                .map_err(|e| format!("staging probe failed: {e}"))?
                .n;
            if staged > 0 {
                c.found
                    .push(format!("temp: staging already holds {staged} rows"));
            }
            conn.batch_execute(STAGING_DROP)
                .map_err(|e| format!("staging drop failed: {e}"))?;
            c.written =
                Some(insert_row(conn, schema, "w").map_err(|e| format!("write failed: {e}"))?);
            if session_mode {
                match diesel::sql_query(SAVEPOINT_PROBE).execute(conn) {
                    Ok(_) => c.found.push(
                        "transaction: SAVEPOINT succeeded (inside a transaction block)".into(),
                    ),
                    Err(e) if e.to_string().contains(NOT_IN_BLOCK) => {}
                    Err(e) => c.found.push(format!("savepoint probe: {e}")),
                }
            }
            Ok(())
        })();
        if let Err(f) = step {
            c.found.push(f);
        }
        Ok::<_, diesel::result::Error>(())
    });
    if let Err(e) = result {
        c.found.push(format!("borrow failed: {e}"));
        c.written = None;
    }
    c
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Session,
    TransactionScoped,
}

fn sync_pool(db: &TestDatabase, mode: Mode, check: bool) -> TenantPool {
    sync_pool_for(db, mode, check, false)
}

fn sync_pool_for(db: &TestDatabase, mode: Mode, check: bool, reset_always: bool) -> TenantPool {
    db.pool_builder()
        .max_size(1)
        .test_on_check_out(check)
        .transaction_scoped(mode == Mode::TransactionScoped)
        .reset_after_every_borrow(reset_always)
        .build()
        .expect("pool")
}

/// Whether the entry's state is made by server-side code that its statement
/// text does not show: a trigger, a view, or a column default's `nextval`.
/// The README (*What a borrow can leave behind*) says what the pool still
/// catches of these at checkout (path, role and session authorization,
/// temporary objects, with the checkout check on) and that the rest needs
/// `reset_after_every_borrow(true)`; each such entry runs on the pool the
/// README prescribes for it, so the test holds the README to its word.
fn reset_always_for(m: &Misbehaviour, check: bool) -> bool {
    let hidden = m.name.starts_with("trigger/")
        || m.name.starts_with("view/")
        || m.name.contains("serial-insert");
    let caught_at_checkout = m
        .items
        .iter()
        .all(|i| matches!(i, Item::SearchPath | Item::Role | Item::TempObjects));
    hidden && !(check && caught_at_checkout)
}

/// The two checking borrowers of each entry: another tenant, and the
/// misbehaving borrower's own tenant again.
const NEXT: [(&str, usize); 2] = [("other", 2), ("same", 0)];

/// Runs the catalog on a sync pool of one connection in `mode`, reporting every
/// failure at once.
fn run_catalog_sync(prefix: &str, mode: Mode, check: bool) {
    quiet_deliberate_panics();
    let started = Instant::now();
    let (db, t) = database(prefix, 3);
    let mut v = verifier(&db);
    let user = session_user(&mut v);
    let session_mode = mode == Mode::Session;

    // A clean borrow of a fresh pool: the settings everything is compared with.
    let since = server_clock(&mut v);
    let clean = check_sync(&sync_pool(&db, mode, check), &t[2], &since, session_mode);
    let Some(state) = clean.state.as_ref() else {
        panic!("a clean borrow failed: {:?}", clean.found)
    };
    let fresh = settings_map(state);
    let expect = |schema| Expect {
        schema,
        user: &user,
        settings: &fresh,
    };
    let mut baseline = clean.found;
    baseline.extend(judge(
        clean.state.as_ref().unwrap(),
        &expect(t[2].schema().as_str()),
    ));
    assert!(
        baseline.is_empty(),
        "a clean borrow is not clean: {baseline:?}"
    );

    let catalog = catalog();
    let mut failures = Vec::new();
    let mut failed_entries = Vec::new();
    for m in &catalog {
        let mut entry_failed = false;
        for (label, next) in NEXT {
            settle(&mut v);
            let pool = sync_pool_for(&db, mode, check, reset_always_for(m, check));
            misbehave_sync(&pool, m, &t[0], &t[1]);
            let after = lingering(&mut v);
            let since = server_clock(&mut v);
            let mut c = check_sync(&pool, &t[next], &since, session_mode);
            c.found.extend(after);
            drop(pool);
            let schema = t[next].schema().as_str();
            if let Some(state) = &c.state {
                let found = judge(state, &expect(schema));
                c.found.extend(found);
            }
            if let Some(id) = c.written {
                match committed(&mut v, schema, id) {
                    Ok(true) => {}
                    Ok(false) => c.found.push(format!(
                        "lost write: row {id}, reported committed, is not in {schema}.customers"
                    )),
                    Err(e) => c.found.push(format!("verifying the write failed: {e}")),
                }
            }
            if !c.found.is_empty() {
                entry_failed = true;
                failures.push(format!(
                    "{} [next: {label}]: {}",
                    m.name,
                    c.found.join("; ")
                ));
            }
        }
        if entry_failed {
            failed_entries.push(m.name);
        }
        scrub(&mut v, &t);
    }
    report(
        &format!("sync {mode:?} test_on_check_out={check}"),
        &catalog,
        &failed_entries,
        &failures,
        started,
    );
}

fn report(
    label: &str,
    catalog: &[Misbehaviour],
    failed_entries: &[&str],
    failures: &[String],
    started: Instant,
) {
    println!(
        "HYGIENE {label}: {} of {} entries leak ({:.1} s)",
        failed_entries.len(),
        catalog.len(),
        started.elapsed().as_secs_f64()
    );
    for m in catalog {
        let verdict = if failed_entries.contains(&m.name) {
            "FAIL"
        } else {
            "ok"
        };
        println!("HYGIENE {label} | {verdict:4} | {}", m.name);
    }
    assert!(
        failures.is_empty(),
        "{label}: {} of {} misbehaving borrowers leaked into the next borrow:\n  {}",
        failed_entries.len(),
        catalog.len(),
        failures.join("\n  ")
    );
}

#[test]
fn sync_session_mode_with_checkout_check() {
    run_catalog_sync("hss", Mode::Session, true);
}

#[test]
fn sync_session_mode_without_checkout_check() {
    run_catalog_sync("hsn", Mode::Session, false);
}

#[test]
fn sync_transaction_scoped_with_checkout_check() {
    run_catalog_sync("hts", Mode::TransactionScoped, true);
}

#[test]
fn sync_transaction_scoped_without_checkout_check() {
    run_catalog_sync("htn", Mode::TransactionScoped, false);
}

// ---------------------------------------------------------------------------
// The async pool
// ---------------------------------------------------------------------------

mod not_sync {
    //! The async forms of the borrowers.
    use super::{
        CANCEL_BORROW_AFTER, Checked, Count, Misbehaviour, NOT_IN_BLOCK, SAVEPOINT_PROBE,
        STAGING_COUNT, STAGING_DROP, STAGING_PROBE, STATE_SQL, State, backend_pid_query, customers,
        judge_rows, next_id,
    };
    use diesel::prelude::{ExpressionMethods, QueryDsl, QueryResult};
    use diesel::sql_types::Text;
    use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
    use diesel_tenancy::{AsyncTenantPool, Tenant};
    use std::sync::{Arc, Mutex};

    pub(super) async fn markers(conn: &mut AsyncPgConnection) -> QueryResult<Vec<String>> {
        customers::table
            .select(customers::name)
            .order(customers::id)
            .load(conn)
            .await
    }

    pub(super) async fn insert_row(
        conn: &mut AsyncPgConnection,
        schema: &str,
        tag: &str,
    ) -> QueryResult<i64> {
        let id = next_id();
        let name = format!("{schema}:{tag}{id}");
        diesel::insert_into(customers::table)
            .values((
                customers::id.eq(id),
                customers::name.eq(&name),
                customers::email.eq(format!("{name}@hygiene.test")),
            ))
            .execute(conn)
            .await?;
        Ok(id)
    }

    /// A borrower of `own` that misbehaves, in a task of its own (so that a
    /// panic is caught), cancelled from outside when the entry says so.
    pub(super) async fn backend_pid(conn: &mut AsyncPgConnection) -> QueryResult<i32> {
        diesel::sql_query(backend_pid_query())
            .get_result::<Count>(conn)
            .await
            .map(|c| c.n as i32)
    }

    /// A borrower of `own` that misbehaves, in a task of its own (so that a
    /// panic is caught), cancelled from outside when the entry says so. First
    /// writes a row of its own. Returns the backend it ran on, if it got that
    /// far.
    pub(super) async fn misbehave(
        pool: &AsyncTenantPool,
        m: Misbehaviour,
        own: &Tenant,
        other: &Tenant,
    ) -> Option<i32> {
        let (pool, own, other) = (pool.clone(), own.clone(), other.clone());
        let pid = Arc::new(Mutex::new(None));
        let seen = pid.clone();
        let task = tokio::spawn(async move {
            let own_s = own.schema().to_string();
            let other_s = other.schema().to_string();
            let work = pool.with_tenant(&own, async |conn| {
                *seen.lock().unwrap() = backend_pid(conn).await.ok();
                let _ = insert_row(conn, &own_s, "m").await;
                m.run_async(conn, &own_s, &other_s).await;
                Ok::<_, diesel::result::Error>(())
            });
            if m.cancels_borrow() {
                let _ = tokio::time::timeout(CANCEL_BORROW_AFTER, work).await;
            } else {
                let _ = work.await;
            }
        });
        let _ = task.await;
        *pid.lock().unwrap()
    }

    pub(super) async fn check(
        pool: &AsyncTenantPool,
        tenant: &Tenant,
        since: &str,
        session_mode: bool,
    ) -> Checked {
        let schema = tenant.schema().to_string();
        let mut c = Checked::default();
        let result = pool
            .with_tenant(tenant, async |conn| {
                let step: Result<(), String> = async {
                    let state = diesel::sql_query(STATE_SQL)
                        .bind::<Text, _>(since)
                        .get_result::<State>(conn)
                        .await
                        .map_err(|e| format!("state query failed: {e}"))?;
                    c.state = Some(state);
                    let rows = markers(conn)
                        .await
                        .map_err(|e| format!("reading rows failed: {e}"))?;
                    if let Some(f) = judge_rows(&rows, &schema) {
                        c.found.push(f);
                    }
                    conn.batch_execute(STAGING_PROBE)
                        .await
                        .map_err(|e| format!("staging probe failed: {e}"))?;
                    let staged = diesel::sql_query(STAGING_COUNT)
                        .get_result::<Count>(conn)
                        .await
                        .map_err(|e| format!("staging probe failed: {e}"))?
                        .n;
                    if staged > 0 {
                        c.found
                            .push(format!("temp: staging already holds {staged} rows"));
                    }
                    conn.batch_execute(STAGING_DROP)
                        .await
                        .map_err(|e| format!("staging drop failed: {e}"))?;
                    c.written = Some(
                        insert_row(conn, &schema, "w")
                            .await
                            .map_err(|e| format!("write failed: {e}"))?,
                    );
                    if session_mode {
                        match diesel::sql_query(SAVEPOINT_PROBE).execute(conn).await {
                            Ok(_) => c.found.push(
                                "transaction: SAVEPOINT succeeded (inside a transaction block)"
                                    .into(),
                            ),
                            Err(e) if e.to_string().contains(NOT_IN_BLOCK) => {}
                            Err(e) => c.found.push(format!("savepoint probe: {e}")),
                        }
                    }
                    Ok(())
                }
                .await;
                if let Err(f) = step {
                    c.found.push(f);
                }
                Ok::<_, diesel::result::Error>(())
            })
            .await;
        if let Err(e) = result {
            c.found.push(format!("borrow failed: {e}"));
            c.written = None;
        }
        c
    }
}

fn async_pool(db: &TestDatabase, kind: Kind, size: usize, check: bool) -> AsyncTenantPool {
    async_pool_for(db, kind, size, Mode::Session, check, false)
}

fn async_pool_for(
    db: &TestDatabase,
    kind: Kind,
    size: usize,
    mode: Mode,
    check: bool,
    reset_always: bool,
) -> AsyncTenantPool {
    kind.build(
        AsyncTenantPool::builder(db.url())
            .max_size(size)
            .test_on_check_out(check)
            .transaction_scoped(mode == Mode::TransactionScoped)
            .reset_after_every_borrow(reset_always)
            .connection_timeout(Duration::from_secs(20)),
    )
}

/// The catalog on an async pool (deadpool or bb8).
async fn run_catalog_async(prefix: &str, mode: Mode, check: bool, kind: Kind) {
    quiet_deliberate_panics();
    let started = Instant::now();
    let prefix = format!("{prefix}{}", &kind.name()[..1]);
    let (db, t) = tokio::task::block_in_place(|| database(&prefix, 3));
    let v = Arc::new(Mutex::new(tokio::task::block_in_place(|| verifier(&db))));
    let on_verifier = |f: &dyn Fn(&mut PgConnection) -> String| {
        tokio::task::block_in_place(|| f(&mut v.lock().unwrap()))
    };
    let user = on_verifier(&session_user);

    let since = on_verifier(&server_clock);
    let session_mode = mode == Mode::Session;
    let clean = not_sync::check(
        &async_pool_for(&db, kind, 1, mode, check, false),
        &t[2],
        &since,
        session_mode,
    )
    .await;
    let Some(state) = clean.state.as_ref() else {
        panic!("a clean borrow failed: {:?}", clean.found)
    };
    let fresh = settings_map(state);
    let expect = |schema| Expect {
        schema,
        user: &user,
        settings: &fresh,
    };
    let mut baseline = clean.found;
    baseline.extend(judge(
        clean.state.as_ref().unwrap(),
        &expect(t[2].schema().as_str()),
    ));
    assert!(
        baseline.is_empty(),
        "a clean borrow is not clean: {baseline:?}"
    );

    let catalog = catalog();
    let mut failures = Vec::new();
    let mut failed_entries = Vec::new();
    let mut resets = 0;
    for m in &catalog {
        let mut entry_failed = false;
        for (label, next) in NEXT {
            tokio::task::block_in_place(|| settle(&mut v.lock().unwrap()));
            let pool = async_pool_for(&db, kind, 1, mode, check, reset_always_for(m, check));
            not_sync::misbehave(&pool, *m, &t[0], &t[1]).await;
            let after = tokio::task::block_in_place(|| lingering_soon(&mut v.lock().unwrap()));
            let since = on_verifier(&server_clock);
            let mut c = not_sync::check(&pool, &t[next], &since, session_mode).await;
            c.found.extend(after);
            resets += pool.stats().resets;
            drop(pool);
            let schema = t[next].schema().as_str();
            if let Some(state) = &c.state {
                let found = judge(state, &expect(schema));
                c.found.extend(found);
            }
            if let Some(id) = c.written {
                let verdict =
                    tokio::task::block_in_place(|| committed(&mut v.lock().unwrap(), schema, id));
                match verdict {
                    Ok(true) => {}
                    Ok(false) => c.found.push(format!(
                        "lost write: row {id}, reported committed, is not in {schema}.customers"
                    )),
                    Err(e) => c.found.push(format!("verifying the write failed: {e}")),
                }
            }
            if !c.found.is_empty() {
                entry_failed = true;
                failures.push(format!(
                    "{} [next: {label}]: {}",
                    m.name,
                    c.found.join("; ")
                ));
            }
        }
        if entry_failed {
            failed_entries.push(m.name);
        }
        tokio::task::block_in_place(|| scrub(&mut v.lock().unwrap(), &t));
    }
    let label = format!("async {} {mode:?} test_on_check_out={check}", kind.name());
    report(&label, &catalog, &failed_entries, &failures, started);
    println!("HYGIENE {label}: {resets} resets");
    assert!(resets > 0, "{label}: no misbehaving borrow caused a reset");
}

both_pools!(async_pool_with_checkout_check(kind) {
    run_catalog_async("has", Mode::Session, true, kind).await;
});

both_pools!(async_pool_without_checkout_check(kind) {
    run_catalog_async("han", Mode::Session, false, kind).await;
});

both_pools!(async_transaction_scoped_with_checkout_check(kind) {
    run_catalog_async("hats", Mode::TransactionScoped, true, kind).await;
});

both_pools!(async_transaction_scoped_without_checkout_check(kind) {
    run_catalog_async("hatn", Mode::TransactionScoped, false, kind).await;
});

// ---------------------------------------------------------------------------
// The catalog itself
// ---------------------------------------------------------------------------

#[test]
fn the_catalog_covers_every_item_of_the_promise() {
    use misbehave::Item;
    let catalog = catalog();
    assert!(catalog.len() >= 40, "{} entries", catalog.len());
    let mut names: Vec<&str> = catalog.iter().map(|m| m.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), catalog.len(), "names are unique");
    for item in Item::ALL {
        let n = catalog.iter().filter(|m| m.covers(item)).count();
        println!("catalog: {item:?}: {n} entries");
        assert!(n > 0, "nothing covers {item:?}");
    }
    assert!(catalog.iter().any(|m| m.panics()));
    assert!(catalog.iter().any(|m| m.cancels_borrow()));
}

// ---------------------------------------------------------------------------
// Under load
// ---------------------------------------------------------------------------

const STRESS_THREADS: usize = 4;
const STRESS_POOL: u32 = 3;
const STRESS_TENANTS: usize = 30;
const STRESS_BORROWS: usize = 3_000;
/// Percent of borrows that misbehave.
const STRESS_MISBEHAVING: usize = 20;

/// Who held the locks a stalled borrow waited on: the borrow, and the pids.
type Stalls = Arc<Mutex<Vec<(String, Vec<i32>)>>>;

/// Cancels statements of this database that wait more than two seconds for a
/// lock (one a leaked transaction or advisory lock holds), so that a leak slows
/// the stress tests down instead of hanging them. Records what it cancelled and
/// who held the lock.
struct Watchdog {
    stop: Arc<AtomicBool>,
    /// One line per cancelled wait, and the blocking backends' pids.
    stalls: Stalls,
    handle: Option<std::thread::JoinHandle<()>>,
}

#[derive(QueryableByName)]
struct Stall {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pid: i32,
    #[diesel(sql_type = Text)]
    waiting: String,
    #[diesel(sql_type = Array<diesel::sql_types::Integer>)]
    blockers: Vec<i32>,
    #[diesel(sql_type = Text)]
    held_by: String,
}

const STALLS_SQL: &str = r#"
SELECT w.pid, w.query AS waiting, pg_blocking_pids(w.pid) AS blockers,
       coalesce((SELECT string_agg(format('pid %s %s for %s, last statement %L',
                                          b.pid, b.state, now() - b.state_change, b.query), '; ')
                   FROM pg_stat_activity b WHERE b.pid = ANY (pg_blocking_pids(w.pid))), '') AS held_by
  FROM pg_stat_activity w
 WHERE w.datname = current_database() AND w.pid <> pg_backend_pid()
   AND w.state = 'active' AND w.wait_event_type = 'Lock'
   AND now() - w.query_start > interval '2 seconds'
"#;

impl Watchdog {
    fn start(db: &TestDatabase) -> Watchdog {
        let mut conn = verifier(db);
        let stop = Arc::new(AtomicBool::new(false));
        let stalls = Arc::new(Mutex::new(Vec::new()));
        let handle = {
            let (stop, stalls) = (stop.clone(), stalls.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(250));
                    let Ok(found) = diesel::sql_query(STALLS_SQL).load::<Stall>(&mut conn) else {
                        continue;
                    };
                    for s in found {
                        let _ = diesel::sql_query("SELECT pg_cancel_backend($1)")
                            .bind::<diesel::sql_types::Integer, _>(s.pid)
                            .execute(&mut conn);
                        stalls.lock().unwrap().push((
                            format!(
                                "pid {} waited over 2 s in {:?}, held by {}",
                                s.pid, s.waiting, s.held_by
                            ),
                            s.blockers,
                        ));
                    }
                }
            })
        };
        Watchdog {
            stop,
            stalls,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> Vec<(String, Vec<i32>)> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap();
        std::mem::take(&mut *self.stalls.lock().unwrap())
    }
}

/// What the stress tests saw.
#[derive(Default)]
struct Tally {
    reads: AtomicUsize,
    wrong: AtomicUsize,
    failed: AtomicUsize,
    misbehaved: AtomicUsize,
    /// Per backend, the last misbehaviour that ran on it.
    last_on: Mutex<BTreeMap<i32, &'static str>>,
    /// Every write whose borrow reported success: tenant index, row id, and
    /// the last misbehaviour on its backend then.
    written: Mutex<Vec<(usize, i64, &'static str)>>,
    /// How often each misbehaviour was the last one on the backend of a wrong
    /// read, a failed borrow, a lost write.
    blamed: Mutex<BTreeMap<(&'static str, &'static str), usize>>,
    /// The first few problems, for the report.
    samples: Mutex<Vec<String>>,
}

impl Tally {
    fn misbehaved(&self, m: &Misbehaviour, pid: Option<i32>) {
        self.misbehaved.fetch_add(1, Ordering::Relaxed);
        if let Some(pid) = pid {
            self.last_on.lock().unwrap().insert(pid, m.name);
        }
    }

    fn last_on(&self, pid: Option<i32>) -> &'static str {
        match pid {
            None => "(unknown: the borrow failed before its closure ran)",
            Some(p) => self
                .last_on
                .lock()
                .unwrap()
                .get(&p)
                .copied()
                .unwrap_or("(none)"),
        }
    }

    fn problem(&self, kind: &'static str, after: &'static str, what: String) {
        *self
            .blamed
            .lock()
            .unwrap()
            .entry((kind, after))
            .or_default() += 1;
        let mut samples = self.samples.lock().unwrap();
        if samples.len() < 12 {
            samples.push(format!(
                "{kind} (last misbehaviour on the connection: {after}): {what}"
            ));
        }
    }

    /// One well-behaved borrow's outcome: the rows it read (if it got that far)
    /// and the row it wrote.
    fn record(
        &self,
        i: usize,
        schema: &str,
        pid: Option<i32>,
        rows: Option<&[String]>,
        result: Result<i64, String>,
    ) {
        let after = self.last_on(pid);
        if let Some(rows) = rows {
            self.reads.fetch_add(1, Ordering::Relaxed);
            if let Some(f) = judge_rows(rows, schema) {
                self.wrong.fetch_add(1, Ordering::Relaxed);
                self.problem("wrong read", after, format!("{schema}: {f}"));
            }
        }
        match result {
            Ok(id) => self.written.lock().unwrap().push((i, id, after)),
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.problem("failed borrow", after, format!("{schema}: {e}"));
            }
        }
    }

    /// Checks every write reported committed against the tables; prints the
    /// counts and asserts no wrong read, no lost write and no failed borrow.
    fn finish(
        &self,
        label: &str,
        db: &TestDatabase,
        tenants: &[Tenant],
        stalls: &[(String, Vec<i32>)],
    ) {
        let mut v = verifier(db);
        let written = self.written.lock().unwrap();
        let mut lost = 0;
        for (i, tenant) in tenants.iter().enumerate() {
            let schema = tenant.schema().as_str();
            let mine: Vec<&(usize, i64, &str)> = written.iter().filter(|w| w.0 == i).collect();
            let ids: Vec<i64> = mine.iter().map(|w| w.1).collect();
            let present: Vec<i64> = diesel::sql_query(format!(
                "SELECT id AS n FROM \"{schema}\".customers WHERE id = ANY($1)"
            ))
            .bind::<Array<BigInt>, _>(&ids)
            .load::<Count>(&mut v)
            .unwrap()
            .into_iter()
            .map(|c| c.n)
            .collect();
            for (_, id, after) in mine.iter().filter(|w| !present.contains(&w.1)) {
                lost += 1;
                self.problem("lost write", after, format!("{schema}: row {id}"));
            }
        }
        let (reads, wrong, failed, misbehaved) = (
            self.reads.load(Ordering::Relaxed),
            self.wrong.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.misbehaved.load(Ordering::Relaxed),
        );
        println!(
            "STRESS {label}: {STRESS_BORROWS} borrows on {STRESS_TENANTS} tenants, {misbehaved} misbehaving, \
             {reads} checked reads, {wrong} wrong reads, {} writes reported committed, {lost} lost writes, \
             {failed} failed well-behaved borrows, {} lock waits cancelled by the watchdog",
            written.len(),
            stalls.len()
        );
        for (stall, blockers) in stalls.iter().take(10) {
            let after: Vec<&str> = blockers.iter().map(|p| self.last_on(Some(*p))).collect();
            println!(
                "STRESS {label}:   stall: {stall} (last misbehaviour on the blocking backend: {after:?})"
            );
        }
        for ((kind, after), n) in self.blamed.lock().unwrap().iter() {
            println!("STRESS {label}:   {n:5} {kind} after {after}");
        }
        let samples = self.samples.lock().unwrap();
        for s in samples.iter() {
            println!("STRESS {label}:   e.g. {s}");
        }
        assert!(
            wrong == 0 && lost == 0 && failed == 0,
            "{label}: {wrong} wrong reads, {lost} lost writes (of {} reported committed), \
             {failed} failed well-behaved borrows; first problems:\n  {}",
            written.len(),
            samples.join("\n  ")
        );
    }
}

#[test]
fn stress_sync_pool_with_random_misbehaviour() {
    quiet_deliberate_panics();
    let (db, tenants) = database("hstr", STRESS_TENANTS);
    let tenants = Arc::new(tenants);
    let pool = db
        .pool_builder()
        .max_size(STRESS_POOL)
        .connection_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let catalog = Arc::new(catalog());
    let tally = Arc::new(Tally::default());
    let watchdog = Watchdog::start(&db);
    let handles: Vec<_> = (0..STRESS_THREADS)
        .map(|thread| {
            let (pool, tenants, catalog, tally) = (
                pool.clone(),
                tenants.clone(),
                catalog.clone(),
                tally.clone(),
            );
            std::thread::spawn(move || {
                let mut rng = Rng::new(0x4e11_0000 + thread as u64);
                for _ in 0..STRESS_BORROWS / STRESS_THREADS {
                    let i = rng.below(STRESS_TENANTS);
                    let tenant = &tenants[i];
                    if rng.below(100) < STRESS_MISBEHAVING {
                        let m = &catalog[rng.below(catalog.len())];
                        let other =
                            &tenants[(i + 1 + rng.below(STRESS_TENANTS - 1)) % STRESS_TENANTS];
                        let pid = misbehave_sync(&pool, m, tenant, other);
                        tally.misbehaved(m, pid);
                        continue;
                    }
                    let schema = tenant.schema().as_str();
                    let (mut pid, mut rows) = (None, None);
                    let result = pool.with_tenant(tenant, |conn| {
                        pid = Some(
                            diesel::sql_query(backend_pid_query())
                                .get_result::<Count>(conn)?
                                .n as i32,
                        );
                        rows = Some(common::markers(conn)?);
                        insert_row(conn, schema, "s")
                    });
                    tally.record(
                        i,
                        schema,
                        pid,
                        rows.as_deref(),
                        result.map_err(|e| e.to_string()),
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("stress thread");
    }
    drop(pool);
    let stalls = watchdog.finish();
    tally.finish("sync session pool", &db, &tenants, &stalls);
}

both_pools!(stress_async_pool_with_random_misbehaviour(kind) {
    quiet_deliberate_panics();
    let prefix = format!("hastr{}", &kind.name()[..1]);
    let (db, tenants) = tokio::task::block_in_place(|| database(&prefix, STRESS_TENANTS));
    let tenants = Arc::new(tenants);
    let pool = async_pool(&db, kind, STRESS_POOL as usize, true);
    let catalog = Arc::new(catalog());
    let tally = Arc::new(Tally::default());
    let watchdog = tokio::task::block_in_place(|| Watchdog::start(&db));
    let tasks: Vec<_> = (0..STRESS_THREADS)
        .map(|task| {
            let (pool, tenants, catalog, tally) = (
                pool.clone(),
                tenants.clone(),
                catalog.clone(),
                tally.clone(),
            );
            tokio::spawn(async move {
                let mut rng = Rng::new(0xa511_0000 + task as u64);
                for _ in 0..STRESS_BORROWS / STRESS_THREADS {
                    let i = rng.below(STRESS_TENANTS);
                    let tenant = &tenants[i];
                    if rng.below(100) < STRESS_MISBEHAVING {
                        let m = catalog[rng.below(catalog.len())];
                        let other =
                            &tenants[(i + 1 + rng.below(STRESS_TENANTS - 1)) % STRESS_TENANTS];
                        let pid = not_sync::misbehave(&pool, m, tenant, other).await;
                        tally.misbehaved(&m, pid);
                        continue;
                    }
                    let schema = tenant.schema().to_string();
                    let (mut pid, mut rows) = (None, None);
                    let result = pool
                        .with_tenant(tenant, async |conn| {
                            pid = Some(not_sync::backend_pid(conn).await?);
                            rows = Some(not_sync::markers(conn).await?);
                            not_sync::insert_row(conn, &schema, "s").await
                        })
                        .await;
                    tally.record(
                        i,
                        &schema,
                        pid,
                        rows.as_deref(),
                        result.map_err(|e| e.to_string()),
                    );
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("stress task");
    }
    let resets = pool.stats().resets;
    drop(pool);
    let stalls = tokio::task::block_in_place(|| watchdog.finish());
    let label = format!("async pool ({})", kind.name());
    tokio::task::block_in_place(|| tally.finish(&label, &db, &tenants, &stalls));
    assert!(resets > 0, "{label}: no misbehaving borrow caused a reset");
});
