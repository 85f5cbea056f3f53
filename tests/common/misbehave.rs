//! A catalog of misbehaving borrowers: what application code may do to a
//! pooled connection before it gives it back.
//!
//! Each [`Misbehaviour`] has a name, the kinds of session state it leaves
//! behind ([`Item`]) and a list of [`Step`]s, runnable on a sync
//! `PgConnection` ([`Misbehaviour::run_sync`]) or on an async
//! `AsyncPgConnection` ([`Misbehaviour::run_async`]). Both take the schema of
//! the tenant the borrower is scoped to (`own`) and the schema of another tenant
//! to point at (`other`). Errors of the borrower's own statements are ignored:
//! what matters is what the next borrower of the connection sees.
//!
//! The SQL of a step may use these placeholders:
//!
//! | placeholder | replaced by |
//! |---|---|
//! | `{own}`, `{other}` | the schema, quoted as an identifier: `"acme"` |
//! | `{own_lit}`, `{other_lit}` | the bare schema name, for use inside a string literal |
//!
//! A `Batch` runs as one implicit transaction: statements before a `BEGIN` in
//! the same string join the explicit transaction (and are rolled back with
//! it), so entries that leave a transaction open after other changes use two
//! steps.
//!
//! Rows a misbehaviour writes into its own tenant are named `<own>:...`; fake
//! rows it makes visible through temporary objects are named `leak:<own>`, so a
//! reader can tell its own rows from anything else. Fake rows are always
//! written to `pg_temp.` qualified names: with `pg_temp` last on the path, an
//! unqualified name would reach the tenant's real table.
//!
//! Some entries rely on objects created by [`setup_sql`] (a role with no rights
//! on tenant schemas, and functions in `public`); run it once per database, as
//! a superuser, before using the catalog.
//!
//! This file depends on diesel, diesel-async and std only, so that tests and
//! examples can include it with `#[path = ".../misbehave.rs"] mod misbehave;`.
#![allow(
    dead_code,
    missing_docs,
    unreachable_pub,
    missing_debug_implementations
)]

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use diesel::PgConnection;
use diesel_async::AsyncPgConnection;

/// The role [`setup_sql`] creates: it can log in nowhere and has no rights on
/// any tenant schema.
pub const ROLE: &str = "misbehave_r";

/// The payload of the deliberate panics of [`Step::Panic`].
pub const PANIC_MESSAGE: &str = "deliberate panic of a misbehaving borrower";

/// How long the async form of [`Step::Cancelled`] lets its statement run before
/// dropping its future.
pub const CANCEL_AFTER: Duration = Duration::from_millis(20);

/// How long a harness should let a borrow whose last step is
/// [`Step::CancelledBorrow`] run before dropping the whole borrow's future.
pub const CANCEL_BORROW_AFTER: Duration = Duration::from_millis(60);

/// A boxed future, for the async actions.
pub type BoxFuture<'a, T = ()> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The kinds of session state the promise covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Item {
    /// The search path (`SET search_path`, `set_config`, ...).
    SearchPath,
    /// `SET ROLE`, `SET SESSION AUTHORIZATION`.
    Role,
    /// An open or failed transaction, however started.
    Transaction,
    /// Temporary tables, views, sequences, functions, types.
    TempObjects,
    /// Other session settings (`SET`, `set_config`, `UPDATE pg_settings`).
    Settings,
    /// Session-level advisory locks.
    AdvisoryLock,
    /// Cursors `WITH HOLD`.
    HoldCursor,
    /// SQL-level prepared statements (`PREPARE`).
    PreparedStatement,
    /// `LISTEN` registrations.
    Listen,
    /// Sequence state of the session (`lastval()`, `currval()`).
    Sequence,
    /// The borrower panics.
    Panics,
    /// The borrower's statement or borrow is cancelled mid-query.
    Cancellation,
}

impl Item {
    pub const ALL: [Item; 12] = [
        Item::SearchPath,
        Item::Role,
        Item::Transaction,
        Item::TempObjects,
        Item::Settings,
        Item::AdvisoryLock,
        Item::HoldCursor,
        Item::PreparedStatement,
        Item::Listen,
        Item::Sequence,
        Item::Panics,
        Item::Cancellation,
    ];
}

/// One thing a borrower does.
#[derive(Clone, Copy, Debug)]
pub enum Step {
    /// `batch_execute`: the simple query protocol, several statements allowed.
    Batch(&'static str),
    /// `diesel::sql_query(..).execute`: the extended protocol, one statement.
    Query(&'static str),
    /// `batch_execute` inside a Diesel transaction (`conn.transaction`) that
    /// commits.
    InDieselTransaction(&'static str),
    /// Diesel's transaction manager: `begin_transaction`, never committed.
    DieselBegin,
    /// Diesel's transaction manager: `commit_transaction` (of whatever Diesel
    /// thinks is open, the pool's own transaction included).
    DieselCommit,
    /// `begin_test_transaction`: a Diesel transaction that never ends.
    BeginTestTransaction,
    /// The borrower panics (with [`PANIC_MESSAGE`]).
    Panic,
    /// The statement is cancelled while it runs. Async: its future is dropped
    /// after [`CANCEL_AFTER`], while the server runs a trailing `pg_sleep(5)`,
    /// and the borrower carries on. Sync: the statements are followed by a
    /// `pg_cancel_backend(pg_backend_pid())` and the sleep, so the server
    /// cancels the statement itself.
    Cancelled(&'static str),
    /// The whole borrow is cancelled while this statement (followed by
    /// `pg_sleep(5)`) runs. Async: the step awaits the statement; the harness
    /// drops the borrow's future after [`CANCEL_BORROW_AFTER`] (see
    /// [`Misbehaviour::cancels_borrow`]). Sync: as [`Step::Cancelled`].
    CancelledBorrow(&'static str),
}

/// A misbehaving borrower.
#[derive(Clone, Copy, Debug)]
pub struct Misbehaviour {
    /// `item/what/how`, unique in the catalog.
    pub name: &'static str,
    /// The kinds of state it leaves behind.
    pub items: &'static [Item],
    /// What it does, in order.
    pub steps: &'static [Step],
}

/// Replaces the placeholders of a step's SQL.
pub fn expand(sql: &str, own: &str, other: &str) -> String {
    sql.replace("{own_lit}", own)
        .replace("{other_lit}", other)
        .replace("{own}", &quote(own))
        .replace("{other}", &quote(other))
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

impl Misbehaviour {
    /// Whether the harness must drop the whole borrow while it runs (async).
    pub fn cancels_borrow(&self) -> bool {
        self.steps
            .iter()
            .any(|s| matches!(s, Step::CancelledBorrow(_)))
    }

    /// Whether the borrower panics.
    pub fn panics(&self) -> bool {
        self.steps.iter().any(|s| matches!(s, Step::Panic))
    }

    /// Whether it leaves `item` behind.
    pub fn covers(&self, item: Item) -> bool {
        self.items.contains(&item)
    }

    /// Runs the steps on a sync connection scoped to `own`. May panic
    /// ([`Step::Panic`]); ignores every error.
    pub fn run_sync(&self, conn: &mut PgConnection, own: &str, other: &str) {
        use diesel::RunQueryDsl;
        use diesel::connection::{Connection, SimpleConnection, TransactionManager};
        type Tm = <PgConnection as Connection>::TransactionManager;
        for step in self.steps {
            match *step {
                Step::Batch(sql) => {
                    let _ = conn.batch_execute(&expand(sql, own, other));
                }
                Step::Query(sql) => {
                    let _ = diesel::sql_query(expand(sql, own, other)).execute(conn);
                }
                Step::InDieselTransaction(sql) => {
                    let sql = expand(sql, own, other);
                    let _ =
                        conn.transaction::<_, diesel::result::Error, _>(|c| c.batch_execute(&sql));
                }
                Step::DieselBegin => {
                    let _ = Tm::begin_transaction(conn);
                }
                Step::DieselCommit => {
                    let _ = Tm::commit_transaction(conn);
                }
                Step::BeginTestTransaction => {
                    let _ = conn.begin_test_transaction();
                }
                Step::Panic => std::panic::panic_any(PANIC_MESSAGE),
                Step::Cancelled(sql) | Step::CancelledBorrow(sql) => {
                    let sql = format!(
                        "{}; SELECT pg_cancel_backend(pg_backend_pid()), pg_sleep(5)",
                        expand(sql, own, other)
                    );
                    let _ = conn.batch_execute(&sql);
                }
            }
        }
    }

    /// Runs the steps on an async connection scoped to `own`. May panic
    /// ([`Step::Panic`]); ignores every error. With a
    /// [`Step::CancelledBorrow`], the future runs for about five seconds unless
    /// dropped (see [`Misbehaviour::cancels_borrow`]).
    pub fn run_async<'a>(
        &'a self,
        conn: &'a mut AsyncPgConnection,
        own: &'a str,
        other: &'a str,
    ) -> BoxFuture<'a> {
        Box::pin(async move {
            use diesel_async::{
                AsyncConnection, RunQueryDsl, SimpleAsyncConnection, TransactionManager,
            };
            type Tm = <AsyncPgConnection as AsyncConnection>::TransactionManager;
            for step in self.steps {
                match *step {
                    Step::Batch(sql) => {
                        let _ = conn.batch_execute(&expand(sql, own, other)).await;
                    }
                    Step::Query(sql) => {
                        let _ = diesel::sql_query(expand(sql, own, other))
                            .execute(conn)
                            .await;
                    }
                    Step::InDieselTransaction(sql) => {
                        let sql = expand(sql, own, other);
                        let _ = conn
                            .transaction::<_, diesel::result::Error, _>(async |c| {
                                c.batch_execute(&sql).await
                            })
                            .await;
                    }
                    Step::DieselBegin => {
                        let _ = Tm::begin_transaction(conn).await;
                    }
                    Step::DieselCommit => {
                        let _ = Tm::commit_transaction(conn).await;
                    }
                    Step::BeginTestTransaction => {
                        let _ = conn.begin_test_transaction().await;
                    }
                    Step::Panic => std::panic::panic_any(PANIC_MESSAGE),
                    Step::Cancelled(sql) => {
                        let sql = format!("{}; SELECT pg_sleep(5)", expand(sql, own, other));
                        let _ = timeout(CANCEL_AFTER, conn.batch_execute(&sql)).await;
                    }
                    Step::CancelledBorrow(sql) => {
                        let sql = format!("{}; SELECT pg_sleep(5)", expand(sql, own, other));
                        let _ = conn.batch_execute(&sql).await;
                    }
                }
            }
        })
    }
}

/// Runs `fut` for at most `after`, then drops it (`None`). A std-only timer (a
/// thread that sleeps and wakes the task), so that this file needs no runtime.
pub async fn timeout<F: Future>(after: Duration, fut: F) -> Option<F::Output> {
    use std::sync::{Arc, Mutex};
    use std::task::{Poll, Waker};
    struct Timer {
        state: Arc<Mutex<(bool, Option<Waker>)>>,
    }
    let state = Arc::new(Mutex::new((false, None::<Waker>)));
    {
        let state = Arc::clone(&state);
        std::thread::spawn(move || {
            std::thread::sleep(after);
            let mut s = state.lock().unwrap();
            s.0 = true;
            if let Some(w) = s.1.take() {
                w.wake();
            }
        });
    }
    let timer = Timer { state };
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(move |cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        let mut s = timer.state.lock().unwrap();
        if s.0 {
            Poll::Ready(None)
        } else {
            s.1 = Some(cx.waker().clone());
            Poll::Pending
        }
    })
    .await
}

/// Creates what some entries need, idempotently (safe to run concurrently in
/// several databases of one cluster): the role [`ROLE`], without rights on any
/// tenant schema, and functions in `public` that change session state from the
/// server side. Also `public.misbehave_probe_lastval()`, which returns
/// `lastval()` or NULL when it is not defined in the session, for checks that
/// must not raise an error inside a transaction. Run it as a superuser.
pub fn setup_sql() -> &'static str {
    r#"
DO $setup$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'misbehave_r') THEN
        BEGIN
            CREATE ROLE misbehave_r NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END IF;
END
$setup$;

-- set_config, an advisory lock and a temporary table, all from the server side.
CREATE OR REPLACE FUNCTION public.misbehave_setcfg() RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM set_config('app.tenant', 'from-a-function', false);
    PERFORM set_config('statement_timeout', '4242s', false);
    PERFORM pg_advisory_lock(4242);
    CREATE TEMP TABLE IF NOT EXISTS misbehave_fn_tmp AS SELECT name FROM customers;
END
$fn$;

CREATE OR REPLACE FUNCTION public.misbehave_setpath(target text) RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM set_config('search_path', target, false);
END
$fn$;

CREATE OR REPLACE FUNCTION public.misbehave_setrole() RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM set_config('role', 'misbehave_r', false);
END
$fn$;

CREATE OR REPLACE FUNCTION public.misbehave_lock() RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM pg_advisory_lock(4248);
    PERFORM pg_advisory_lock_shared(4249);
END
$fn$;

CREATE OR REPLACE FUNCTION public.misbehave_listen() RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    EXECUTE 'LISTEN misbehave_fn_chan';
END
$fn$;

CREATE OR REPLACE FUNCTION public.misbehave_prepare() RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    EXECUTE 'PREPARE misbehave_fn_p AS SELECT 1';
END
$fn$;

CREATE OR REPLACE FUNCTION public.misbehave_nextval() RETURNS bigint LANGUAGE plpgsql AS $fn$
BEGIN
    RETURN nextval('customers_id_seq');
END
$fn$;

CREATE OR REPLACE FUNCTION public.misbehave_temp_customers(fake text) RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    CREATE TEMP TABLE IF NOT EXISTS customers (id bigint PRIMARY KEY, name text NOT NULL, email text NOT NULL);
    INSERT INTO pg_temp.customers VALUES (-1, fake, fake) ON CONFLICT DO NOTHING;
END
$fn$;

-- One side effect on session state per `what`, for triggers and views: code
-- that runs inside a statement which does not look like it changes anything.
CREATE SEQUENCE IF NOT EXISTS public.misbehave_seq;
CREATE OR REPLACE FUNCTION public.misbehave_side_effect(what text, arg text) RETURNS text
LANGUAGE plpgsql AS $fn$
BEGIN
    CASE what
    WHEN 'path' THEN PERFORM set_config('search_path', arg, false);
    WHEN 'role' THEN PERFORM set_config('role', 'misbehave_r', false);
    WHEN 'setting' THEN
        PERFORM set_config('app.tenant', arg, false);
        PERFORM set_config('statement_timeout', '4242s', false);
    WHEN 'advisory' THEN PERFORM pg_advisory_lock(4251);
    WHEN 'temp' THEN CREATE TEMP TABLE IF NOT EXISTS side_tmp AS SELECT arg AS a;
    WHEN 'listen' THEN EXECUTE 'LISTEN side_chan';
    WHEN 'prepare' THEN
        IF NOT EXISTS (SELECT FROM pg_prepared_statements WHERE name = 'side_p') THEN
            EXECUTE 'PREPARE side_p AS SELECT 1';
        END IF;
    WHEN 'cursor' THEN
        IF NOT EXISTS (SELECT FROM pg_cursors WHERE name = 'side_c') THEN
            EXECUTE 'DECLARE side_c CURSOR WITH HOLD FOR SELECT 1';
        END IF;
    WHEN 'sequence' THEN PERFORM nextval('public.misbehave_seq');
    END CASE;
    RETURN what;
END
$fn$;

CREATE TABLE IF NOT EXISTS public.misbehave_audit (what text NOT NULL, arg text NOT NULL DEFAULT '');
CREATE OR REPLACE FUNCTION public.misbehave_audit_trigger() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM public.misbehave_side_effect(NEW.what, NEW.arg);
    RETURN NEW;
END
$fn$;
DROP TRIGGER IF EXISTS misbehave_audit_side_effect ON public.misbehave_audit;
CREATE TRIGGER misbehave_audit_side_effect BEFORE INSERT ON public.misbehave_audit
    FOR EACH ROW EXECUTE FUNCTION public.misbehave_audit_trigger();

CREATE OR REPLACE VIEW public.misbehave_settings_view AS
    SELECT public.misbehave_side_effect('setting', 'from-a-view') AS effect;
CREATE OR REPLACE VIEW public.misbehave_advisory_view AS
    SELECT public.misbehave_side_effect('advisory', '') AS effect;

CREATE OR REPLACE FUNCTION public.misbehave_probe_lastval() RETURNS bigint LANGUAGE plpgsql AS $fn$
BEGIN
    RETURN lastval();
EXCEPTION WHEN object_not_in_prerequisite_state THEN
    RETURN NULL;
END
$fn$;
"#
}

use Item::*;
use Step::*;

/// The catalog.
pub fn catalog() -> Vec<Misbehaviour> {
    macro_rules! m {
        ($name:expr, [$($item:expr),* $(,)?], [$($step:expr),* $(,)?] $(,)?) => {
            Misbehaviour { name: $name, items: &[$($item),*], steps: &[$($step),*] }
        };
    }
    vec![
        // ---- the search path ------------------------------------------------
        m!(
            "search_path/set/batch",
            [SearchPath],
            [Batch("SET search_path TO {other}, public")]
        ),
        m!(
            "search_path/set/sql_query",
            [SearchPath],
            [Query("SET search_path TO {other}, public")]
        ),
        m!(
            "search_path/set/block-comment",
            [SearchPath],
            [Batch(
                "/* app=billing */ SET search_path TO {other}, public"
            )]
        ),
        m!(
            "search_path/set/line-comment/sql_query",
            [SearchPath],
            [Query("-- note\nSET search_path TO {other}, public")]
        ),
        m!(
            "search_path/set/multi-statement",
            [SearchPath],
            [Batch(
                "SELECT 1; SET search_path TO {other}, public; SELECT 2"
            )]
        ),
        m!(
            "search_path/set-schema",
            [SearchPath],
            [Batch("SET SCHEMA '{other_lit}'")]
        ),
        m!(
            "search_path/set-session-quoted-name",
            [SearchPath],
            [Query("SET SESSION \"search_path\" = {other}, public")]
        ),
        m!(
            "search_path/set_config",
            [SearchPath],
            [Query(
                "SELECT set_config('search_path', '{other_lit}, public', false)"
            )]
        ),
        m!(
            "search_path/set_config/unicode-escaped-name",
            [SearchPath],
            [Query(
                r#"SELECT U&"set\005fconfig"('search_path', '{other_lit}, public', false)"#
            )]
        ),
        m!(
            "search_path/set_config/computed-setting-name",
            [SearchPath],
            [Query(
                "SELECT pg_catalog.set_config('search' || '_path', '{other_lit}', false)"
            )]
        ),
        m!(
            "search_path/update-pg_settings",
            [SearchPath],
            [Query(
                "UPDATE pg_settings SET setting = '{other_lit}, public' WHERE name = 'search_path'"
            )]
        ),
        m!(
            "search_path/do-block",
            [SearchPath],
            [Batch(
                "DO $$ BEGIN PERFORM set_config('search_path', '{other_lit}, public', false); END $$"
            )]
        ),
        m!(
            "search_path/function",
            [SearchPath],
            [Query(
                "SELECT public.misbehave_setpath('{other_lit}, public')"
            )]
        ),
        m!(
            "search_path/in-committed-raw-transaction",
            [SearchPath],
            [Batch("BEGIN; SET search_path TO {other}, public; COMMIT")]
        ),
        m!(
            "search_path/in-committed-diesel-transaction",
            [SearchPath],
            [InDieselTransaction("SET search_path TO {other}, public")]
        ),
        m!(
            "search_path/reset-all",
            [SearchPath, Settings],
            [Batch("RESET ALL")]
        ),
        m!(
            "search_path/discard-all",
            [SearchPath, Settings],
            [Query("DISCARD ALL")]
        ),
        m!(
            "search_path/error-after-set",
            [SearchPath],
            [
                Batch("SET search_path TO {other}, public"),
                Batch("SELECT * FROM no_such_table")
            ]
        ),
        // ---- role and session authorization --------------------------------
        m!(
            "role/set-role/batch",
            [Role],
            [Batch("SET ROLE misbehave_r")]
        ),
        m!(
            "role/set-role/block-comment/sql_query",
            [Role],
            [Query("/* app=billing */ SET ROLE misbehave_r")]
        ),
        m!(
            "role/set-role/multi-statement",
            [Role],
            [Batch("SELECT 1; SET ROLE misbehave_r; SELECT 2")]
        ),
        m!(
            "role/set_config",
            [Role],
            [Query("SELECT set_config('role', 'misbehave_r', false)")]
        ),
        m!(
            "role/session-authorization/batch",
            [Role],
            [Batch("SET SESSION AUTHORIZATION misbehave_r")]
        ),
        m!(
            "role/session-authorization/line-comment/sql_query",
            [Role],
            [Query("-- note\nSET SESSION AUTHORIZATION misbehave_r")]
        ),
        m!(
            "role/do-block",
            [Role],
            [Batch("DO $$ BEGIN EXECUTE 'SET ROLE misbehave_r'; END $$")]
        ),
        m!(
            "role/function",
            [Role],
            [Query("SELECT public.misbehave_setrole()")]
        ),
        m!(
            "role/in-committed-transaction",
            [Role],
            [Batch("BEGIN; SET ROLE misbehave_r; COMMIT")]
        ),
        // ---- transactions ---------------------------------------------------
        m!("transaction/begin/batch", [Transaction], [Batch("BEGIN")]),
        m!(
            "transaction/begin/sql_query",
            [Transaction],
            [Query("BEGIN")]
        ),
        m!(
            "transaction/begin/block-comment",
            [Transaction],
            [Batch("/* app=billing */ BEGIN")]
        ),
        m!(
            "transaction/begin/line-comment/sql_query",
            [Transaction],
            [Query("-- note\nBEGIN")]
        ),
        m!(
            "transaction/begin-with-write/multi-statement",
            [Transaction],
            [Batch(
                "BEGIN; INSERT INTO customers (id, name, email) \
                 VALUES (-1000 - pg_backend_pid(), '{own_lit}:uncommitted', md5(random()::text))"
            )]
        ),
        m!(
            "transaction/start-transaction-serializable",
            [Transaction],
            [Batch("START TRANSACTION ISOLATION LEVEL SERIALIZABLE")]
        ),
        m!(
            "transaction/start-transaction-read-only/sql_query",
            [Transaction],
            [Query("START TRANSACTION READ ONLY")]
        ),
        m!(
            "transaction/failed/batch",
            [Transaction],
            [Batch("BEGIN; SELECT * FROM no_such_table")]
        ),
        m!(
            "transaction/failed/sql_query",
            [Transaction],
            [Query("BEGIN"), Query("SELECT 1/0")]
        ),
        m!(
            "transaction/failed/do-block",
            [Transaction],
            [Batch(
                "BEGIN; DO $$ BEGIN RAISE EXCEPTION 'misbehave'; END $$"
            )]
        ),
        m!(
            "transaction/commit-and-chain",
            [Transaction],
            [Batch("BEGIN; SELECT 1; COMMIT AND CHAIN")]
        ),
        m!(
            "transaction/rollback-and-chain/sql_query",
            [Transaction],
            [Query("BEGIN"), Query("ROLLBACK AND CHAIN")]
        ),
        m!(
            "transaction/savepoint-left-open",
            [Transaction],
            [Batch("BEGIN; SAVEPOINT s1; SELECT 1")]
        ),
        m!(
            "transaction/lock-table-left-open",
            [Transaction],
            [Batch(
                "BEGIN; LOCK TABLE customers IN ACCESS EXCLUSIVE MODE"
            )]
        ),
        m!(
            "transaction/raw-commit-then-begin",
            [Transaction],
            [Batch("COMMIT; BEGIN")]
        ),
        m!(
            "transaction/commit-then-changes-then-begin",
            [Transaction, SearchPath, Settings, TempObjects],
            [
                Batch("COMMIT"),
                Batch(
                    "SET search_path TO {other}, public; SET app.tenant = '{own_lit}'; \
                     CREATE TEMP TABLE after_commit_tmp (a int)"
                ),
                Batch("BEGIN"),
            ]
        ),
        m!(
            "transaction/rollback-then-changes",
            [Transaction, SearchPath, Settings],
            [
                Query("ROLLBACK"),
                Query("SET search_path TO {other}, public"),
                Query("SET statement_timeout = '4242s'"),
            ]
        ),
        m!(
            "transaction/diesel-begin_test_transaction",
            [Transaction],
            [BeginTestTransaction]
        ),
        m!(
            "transaction/diesel-begin-left-open",
            [Transaction],
            [DieselBegin, Query("SELECT 1")]
        ),
        m!(
            "transaction/diesel-begin-then-error",
            [Transaction],
            [DieselBegin, Query("SELECT 1/0")]
        ),
        m!(
            "transaction/diesel-commit-then-raw-begin",
            [Transaction],
            [DieselCommit, Batch("BEGIN")]
        ),
        // ---- temporary objects ----------------------------------------------
        m!(
            "temp/shadow-customers/batch",
            [TempObjects],
            [Batch(
                "CREATE TEMP TABLE customers (id bigint PRIMARY KEY, name text NOT NULL, email text NOT NULL); \
                 INSERT INTO pg_temp.customers VALUES (-1, 'leak:{own_lit}', 'leak')"
            )]
        ),
        m!(
            "temp/shadow-customers-copy/block-comment/sql_query",
            [TempObjects],
            [Query(
                "/* app=billing */ CREATE TEMP TABLE customers AS \
                 SELECT id, 'leak:' || name AS name, email FROM customers"
            )]
        ),
        m!(
            "temp/staging-if-not-exists",
            [TempObjects],
            [Batch(
                "CREATE TEMP TABLE IF NOT EXISTS staging (name text); \
                 INSERT INTO pg_temp.staging SELECT name FROM customers"
            )]
        ),
        m!(
            "temp/select-into-temp/sql_query",
            [TempObjects],
            [Query(
                "SELECT name, email INTO TEMP TABLE leaked_rows FROM customers"
            )]
        ),
        m!(
            "temp/shadow-view/line-comment/sql_query",
            [TempObjects],
            [Query(
                "-- note\nCREATE TEMP VIEW customers AS \
                 SELECT -1::bigint AS id, 'leak:{own_lit}'::text AS name, 'leak'::text AS email"
            )]
        ),
        m!(
            "temp/view",
            [TempObjects],
            [Batch(
                "CREATE TEMP VIEW customer_names AS SELECT name FROM customers"
            )]
        ),
        m!(
            "temp/sequence-function-type/multi-statement",
            [TempObjects],
            [Batch(
                "CREATE TEMP SEQUENCE leak_seq; \
                 CREATE FUNCTION pg_temp.leak() RETURNS text LANGUAGE sql AS $$ SELECT 'leak:{own_lit}'::text $$; \
                 CREATE TYPE pg_temp.leak_t AS (a int)"
            )]
        ),
        m!(
            "temp/do-block",
            [TempObjects],
            [Batch(
                "DO $$ BEGIN CREATE TEMP TABLE do_tmp AS SELECT * FROM customers; END $$"
            )]
        ),
        m!(
            "temp/function-shadow-customers",
            [TempObjects],
            [Query(
                "SELECT public.misbehave_temp_customers('leak:{own_lit}')"
            )]
        ),
        m!(
            "temp/in-committed-raw-transaction",
            [TempObjects],
            [Batch(
                "BEGIN; CREATE TEMP TABLE tx_tmp AS SELECT * FROM customers; COMMIT"
            )]
        ),
        m!(
            "temp/in-committed-diesel-transaction",
            [TempObjects],
            [InDieselTransaction(
                "CREATE TEMP TABLE dtx_tmp AS SELECT * FROM customers"
            )]
        ),
        m!(
            "temp/shadow-with-pg_temp-first-on-path",
            [TempObjects, SearchPath],
            [Batch(
                "CREATE TEMP TABLE customers (LIKE {own}.customers); \
                 INSERT INTO pg_temp.customers SELECT -id, 'leak:' || name, email FROM {own}.customers; \
                 SET search_path TO pg_temp, {own}, public"
            )]
        ),
        // ---- session settings -----------------------------------------------
        m!(
            "settings/statement_timeout",
            [Settings],
            [Batch("SET statement_timeout = '4242s'")]
        ),
        m!(
            "settings/application_name/block-comment",
            [Settings],
            [Batch("/* app=billing */ SET application_name = 'tenant-a'")]
        ),
        m!(
            "settings/timezone/line-comment/sql_query",
            [Settings],
            [Query("-- note\nSET TimeZone = 'Pacific/Chatham'")]
        ),
        m!(
            "settings/custom",
            [Settings],
            [Batch("SET app.tenant = '{own_lit}'")]
        ),
        m!(
            "settings/custom/set_config",
            [Settings],
            [Query("SELECT set_config('app.tenant', '{own_lit}', false)")]
        ),
        m!(
            "settings/custom/set_config-unicode-escaped-name",
            [Settings],
            [Query(
                r#"SELECT U&"set\005fconfig"('app.tenant', '{own_lit}', false)"#
            )]
        ),
        m!(
            "settings/multi-statement",
            [Settings],
            [Batch(
                "SELECT 1; SET work_mem = '42MB'; SET lock_timeout = '4242s'; SELECT 2"
            )]
        ),
        m!(
            "settings/session-characteristics-read-only/sql_query",
            [Settings],
            [Query(
                "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"
            )]
        ),
        m!(
            "settings/update-pg_settings",
            [Settings],
            [Query(
                "UPDATE pg_settings SET setting = '4242s' WHERE name = 'statement_timeout'"
            )]
        ),
        m!(
            "settings/do-block",
            [Settings],
            [Batch(
                "DO $$ BEGIN PERFORM set_config('app.tenant', '{own_lit}', false); \
                 PERFORM set_config('DateStyle', 'SQL, DMY', false); END $$"
            )]
        ),
        m!(
            "settings/function",
            [Settings, AdvisoryLock, TempObjects],
            [Query("SELECT public.misbehave_setcfg()")]
        ),
        m!(
            "settings/in-committed-raw-transaction",
            [Settings],
            [Batch("BEGIN; SET statement_timeout = '4242s'; COMMIT")]
        ),
        m!(
            "settings/in-committed-diesel-transaction",
            [Settings],
            [InDieselTransaction("SET application_name = 'tenant-a'")]
        ),
        m!(
            "settings/session_replication_role",
            [Settings],
            [Batch("SET session_replication_role = replica")]
        ),
        // ---- advisory locks -------------------------------------------------
        m!(
            "advisory/lock/sql_query",
            [AdvisoryLock],
            [Query("SELECT pg_advisory_lock(4242)")]
        ),
        m!(
            "advisory/lock/block-comment",
            [AdvisoryLock],
            [Batch("/* app=billing */ SELECT pg_advisory_lock(4242)")]
        ),
        m!(
            "advisory/lock/line-comment/sql_query",
            [AdvisoryLock],
            [Query("-- note\nSELECT pg_advisory_lock(4242)")]
        ),
        m!(
            "advisory/try-shared-two-key/multi-statement",
            [AdvisoryLock],
            [Batch(
                "SELECT pg_try_advisory_lock(4243); SELECT pg_advisory_lock_shared(4244); \
                 SELECT pg_advisory_lock(42, 42)"
            )]
        ),
        m!(
            "advisory/lock-twice",
            [AdvisoryLock],
            [Batch(
                "SELECT pg_advisory_lock(4242); SELECT pg_advisory_lock(4242)"
            )]
        ),
        m!(
            "advisory/do-block",
            [AdvisoryLock],
            [Batch("DO $$ BEGIN PERFORM pg_advisory_lock(4245); END $$")]
        ),
        m!(
            "advisory/function",
            [AdvisoryLock],
            [Query("SELECT public.misbehave_lock()")]
        ),
        m!(
            "advisory/in-committed-transaction",
            [AdvisoryLock],
            [Batch("BEGIN; SELECT pg_advisory_lock(4246); COMMIT")]
        ),
        // ---- cursors WITH HOLD ----------------------------------------------
        m!(
            "cursor/with-hold/batch",
            [HoldCursor],
            [Batch(
                "BEGIN; DECLARE c CURSOR WITH HOLD FOR SELECT name FROM customers; COMMIT"
            )]
        ),
        m!(
            "cursor/with-hold/comments/sql_query-steps",
            [HoldCursor],
            [
                Query("BEGIN"),
                Query(
                    "/* app=billing */ DECLARE c CURSOR WITH HOLD FOR SELECT name FROM customers"
                ),
                Query("-- note\nCOMMIT"),
            ]
        ),
        m!(
            "cursor/with-hold/in-diesel-transaction",
            [HoldCursor],
            [InDieselTransaction(
                "DECLARE c CURSOR WITH HOLD FOR SELECT name FROM customers"
            )]
        ),
        m!(
            "cursor/with-hold/outside-transaction/sql_query",
            [HoldCursor],
            [Query(
                "DECLARE c CURSOR WITH HOLD FOR SELECT name FROM customers"
            )]
        ),
        m!(
            "cursor/binary-scroll-with-hold/multi-statement",
            [HoldCursor],
            [Batch(
                "SELECT 1; DECLARE c2 BINARY SCROLL CURSOR WITH HOLD FOR SELECT * FROM customers; SELECT 2"
            )]
        ),
        m!(
            "cursor/with-hold/line-comment/sql_query",
            [HoldCursor],
            [Query(
                "-- note\nDECLARE c CURSOR WITH HOLD FOR SELECT name FROM customers"
            )]
        ),
        m!(
            "cursor/with-hold/do-block",
            [HoldCursor],
            [Batch(
                "DO $$ BEGIN EXECUTE 'DECLARE c3 CURSOR WITH HOLD FOR SELECT 1'; END $$"
            )]
        ),
        // ---- SQL-level prepared statements -----------------------------------
        m!(
            "prepare/batch",
            [PreparedStatement],
            [Batch("PREPARE p AS SELECT name FROM customers")]
        ),
        m!(
            "prepare/block-comment/sql_query",
            [PreparedStatement],
            [Query(
                "/* app=billing */ PREPARE p AS SELECT name FROM customers"
            )]
        ),
        m!(
            "prepare/line-comment/sql_query",
            [PreparedStatement],
            [Query(
                "-- note\nPREPARE p2 (int) AS SELECT name FROM customers LIMIT 1"
            )]
        ),
        m!(
            "prepare/multi-statement",
            [PreparedStatement],
            [Batch(
                "SELECT 1; PREPARE p3 AS SELECT 1; PREPARE p4 AS SELECT 2"
            )]
        ),
        m!(
            "prepare/do-block",
            [PreparedStatement],
            [Batch(
                "DO $$ BEGIN EXECUTE 'PREPARE p5 AS SELECT 1'; END $$"
            )]
        ),
        m!(
            "prepare/function",
            [PreparedStatement],
            [Query("SELECT public.misbehave_prepare()")]
        ),
        m!(
            "prepare/deallocate-all",
            [PreparedStatement],
            [Batch("DEALLOCATE ALL")]
        ),
        m!(
            "prepare/discard-plans",
            [PreparedStatement],
            [Query("DISCARD PLANS")]
        ),
        m!(
            "prepare/in-committed-transaction",
            [PreparedStatement],
            [Batch("BEGIN; PREPARE p6 AS SELECT 1; COMMIT")]
        ),
        // ---- LISTEN ---------------------------------------------------------
        m!("listen/batch", [Listen], [Batch("LISTEN chan")]),
        m!(
            "listen/block-comment/sql_query",
            [Listen],
            [Query("/* app=billing */ LISTEN chan")]
        ),
        m!(
            "listen/line-comment-quoted/sql_query",
            [Listen],
            [Query("-- note\nLISTEN \"Chan\"")]
        ),
        m!(
            "listen/multi-statement",
            [Listen],
            [Batch("SELECT 1; LISTEN chan_a; LISTEN chan_b")]
        ),
        m!(
            "listen/do-block",
            [Listen],
            [Batch("DO $$ BEGIN EXECUTE 'LISTEN do_chan'; END $$")]
        ),
        m!(
            "listen/function",
            [Listen],
            [Query("SELECT public.misbehave_listen()")]
        ),
        m!(
            "listen/notification-left-unread",
            [Listen],
            [
                Batch("LISTEN misbehave_note; NOTIFY misbehave_note, 'a secret of {own_lit}'"),
                Query("SELECT 1"),
            ]
        ),
        m!(
            "listen/in-committed-transaction",
            [Listen],
            [Batch("BEGIN; LISTEN tx_chan; COMMIT")]
        ),
        // ---- sequence state -------------------------------------------------
        m!(
            "sequence/nextval/sql_query",
            [Sequence],
            [Query("SELECT nextval('customers_id_seq')")]
        ),
        m!(
            "sequence/nextval/block-comment",
            [Sequence],
            [Batch(
                "/* app=billing */ SELECT nextval('customers_id_seq')"
            )]
        ),
        m!(
            "sequence/serial-insert/line-comment/sql_query",
            [Sequence],
            [Query(
                "-- note\nINSERT INTO customers (name, email) \
                 VALUES ('{own_lit}:serial', md5(random()::text))"
            )]
        ),
        m!(
            "sequence/multi-statement",
            [Sequence],
            [Batch(
                "SELECT 1; SELECT nextval('customers_id_seq'); SELECT currval('customers_id_seq')"
            )]
        ),
        m!(
            "sequence/do-block",
            [Sequence],
            [Batch(
                "DO $$ BEGIN PERFORM nextval('customers_id_seq'); END $$"
            )]
        ),
        m!(
            "sequence/function",
            [Sequence],
            [Query("SELECT public.misbehave_nextval()")]
        ),
        // ---- combined -------------------------------------------------------
        m!(
            "combined/issue/batch",
            [
                AdvisoryLock,
                Settings,
                HoldCursor,
                PreparedStatement,
                Listen,
                Role
            ],
            [Batch(
                "SELECT pg_advisory_lock(4242); SET statement_timeout = '4242s'; \
                 SET application_name = 'tenant-a'; BEGIN; DECLARE c CURSOR WITH HOLD FOR SELECT 1; \
                 COMMIT; PREPARE p AS SELECT 1; LISTEN chan; SET ROLE misbehave_r;"
            )]
        ),
        m!(
            "combined/issue/sql_query-steps",
            [
                AdvisoryLock,
                Settings,
                HoldCursor,
                PreparedStatement,
                Listen,
                Role
            ],
            [
                Query("SELECT pg_advisory_lock(4242)"),
                Query("SET statement_timeout = '4242s'"),
                Query("SET application_name = 'tenant-a'"),
                Query("BEGIN"),
                Query("DECLARE c CURSOR WITH HOLD FOR SELECT 1"),
                Query("COMMIT"),
                Query("PREPARE p AS SELECT 1"),
                Query("LISTEN chan"),
                Query("SET ROLE misbehave_r"),
            ]
        ),
        m!(
            "combined/everything-then-open-transaction",
            [
                SearchPath,
                TempObjects,
                Sequence,
                AdvisoryLock,
                Settings,
                Listen,
                Transaction
            ],
            [
                Batch(
                    "SELECT nextval('customers_id_seq'); \
                     CREATE TEMP TABLE customers AS SELECT id, 'leak:' || name AS name, email FROM {own}.customers; \
                     SELECT pg_advisory_lock(4242); SET app.tenant = '{own_lit}'; LISTEN chan; \
                     SET search_path TO {other}, public"
                ),
                Batch(
                    "BEGIN; INSERT INTO pg_temp.customers (id, name, email) VALUES (-2, 'leak:{own_lit}', 'leak')"
                ),
            ]
        ),
        // ---- through a trigger or a view: statements that look harmless ----
        m!(
            "trigger/search_path",
            [SearchPath],
            [Query(
                "INSERT INTO public.misbehave_audit (what, arg) VALUES ('path', '{other_lit}, public')"
            )]
        ),
        m!(
            "trigger/role",
            [Role],
            [Query(
                "INSERT INTO public.misbehave_audit (what) VALUES ('role')"
            )]
        ),
        m!(
            "trigger/settings",
            [Settings],
            [Query(
                "INSERT INTO public.misbehave_audit (what, arg) VALUES ('setting', '{own_lit}')"
            )]
        ),
        m!(
            "trigger/advisory",
            [AdvisoryLock],
            [Query(
                "INSERT INTO public.misbehave_audit (what) VALUES ('advisory')"
            )]
        ),
        m!(
            "trigger/temp",
            [TempObjects],
            [Query(
                "INSERT INTO public.misbehave_audit (what, arg) VALUES ('temp', '{own_lit}')"
            )]
        ),
        m!(
            "trigger/listen",
            [Listen],
            [Query(
                "INSERT INTO public.misbehave_audit (what) VALUES ('listen')"
            )]
        ),
        m!(
            "trigger/prepare",
            [PreparedStatement],
            [Query(
                "INSERT INTO public.misbehave_audit (what) VALUES ('prepare')"
            )]
        ),
        m!(
            "trigger/cursor",
            [HoldCursor],
            [Query(
                "INSERT INTO public.misbehave_audit (what) VALUES ('cursor')"
            )]
        ),
        m!(
            "trigger/sequence",
            [Sequence],
            [Query(
                "INSERT INTO public.misbehave_audit (what) VALUES ('sequence')"
            )]
        ),
        m!(
            "view/settings",
            [Settings],
            [Query("SELECT effect FROM public.misbehave_settings_view")]
        ),
        m!(
            "view/advisory",
            [AdvisoryLock],
            [Batch("SELECT effect FROM public.misbehave_advisory_view")]
        ),
        // ---- panics and cancellation ----------------------------------------
        m!(
            "panic/after-misbehaving",
            [
                Panics,
                SearchPath,
                Settings,
                TempObjects,
                AdvisoryLock,
                Listen,
                Transaction
            ],
            [
                Batch(
                    "SET search_path TO {other}, public; SET statement_timeout = '4242s'; \
                     CREATE TEMP TABLE panic_tmp AS SELECT * FROM {own}.customers; \
                     SELECT pg_advisory_lock(4242); LISTEN panic_chan"
                ),
                Batch("BEGIN"),
                Panic,
            ]
        ),
        m!(
            "panic/inside-diesel-transaction",
            [Panics, SearchPath, Transaction],
            [
                DieselBegin,
                Batch("SET LOCAL search_path TO {other}, public"),
                Panic
            ]
        ),
        m!(
            "cancel/statement",
            [Cancellation, SearchPath, Settings, AdvisoryLock],
            [Cancelled(
                "SET search_path TO {other}, public; SET application_name = 'cancelled'; \
                 SELECT pg_advisory_lock(4247)"
            )]
        ),
        m!(
            "cancel/after-misbehaving",
            [
                Cancellation,
                SearchPath,
                Settings,
                TempObjects,
                Listen,
                Sequence
            ],
            [
                Batch(
                    "SET search_path TO {other}, public; SET application_name = 'cancelled'; \
                     CREATE TEMP TABLE cancel_tmp AS SELECT * FROM {own}.customers; \
                     LISTEN cancel_chan; SELECT nextval('{own}.customers_id_seq')"
                ),
                Cancelled("SELECT 1"),
            ]
        ),
        m!(
            "cancel/statement-in-transaction",
            [Cancellation, Transaction, TempObjects],
            [
                Batch("BEGIN; CREATE TEMP TABLE cancel_tx_tmp AS SELECT * FROM customers"),
                Cancelled("SELECT 1"),
            ]
        ),
        m!(
            "cancel/borrow",
            [
                Cancellation,
                SearchPath,
                Settings,
                Listen,
                Transaction,
                TempObjects
            ],
            [
                Batch(
                    "SET search_path TO {other}, public; SET statement_timeout = '4242s'; \
                     LISTEN cancel_borrow_chan"
                ),
                CancelledBorrow(
                    "BEGIN; CREATE TEMP TABLE cancel_borrow_tmp AS SELECT * FROM {own}.customers"
                ),
            ]
        ),
    ]
}
