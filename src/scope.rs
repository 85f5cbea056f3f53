//! What a connection's search path is, the statement that sets it, and the watch
//! that notices when code run on the connection could have changed it.

use std::fmt::Write as _;

use diesel::connection::{Instrumentation, InstrumentationEvent};
use diesel::prelude::*;
use diesel::sql_types::{Bool, Text};

use crate::{Error, SchemaName};

/// The search path a scoped connection holds: a tenant's schema first, or `public`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScopeKey {
    Public,
    /// A tenant's schema, and the role to switch to when per-tenant roles are on.
    Tenant(SchemaName, Option<SchemaName>),
}

impl ScopeKey {
    /// The schema at the head of the path.
    pub(crate) fn head(&self) -> &str {
        match self {
            ScopeKey::Public => "public",
            ScopeKey::Tenant(schema, _) => schema.as_str(),
        }
    }

    /// The value `current_setting('role')` has in this scope, when roles are on.
    pub(crate) fn role_setting(&self) -> &str {
        match self {
            ScopeKey::Tenant(_, Some(role)) => role.as_str(),
            _ => "none",
        }
    }

    /// The search path value for this scope: `"tenant", public[, extra...]` or
    /// `public[, extra...]`. Every name passes through the one quoting function.
    pub(crate) fn search_path(&self, extra: &[SchemaName]) -> String {
        let mut path = String::with_capacity(64);
        if let ScopeKey::Tenant(schema, _) = self {
            path.push_str(&schema.quoted());
            path.push_str(", ");
        }
        path.push_str("public");
        for schema in extra {
            path.push_str(", ");
            path.push_str(&schema.quoted());
        }
        path
    }
}

diesel::define_sql_function! {
    /// PostgreSQL's `set_config(setting, value, is_local)`.
    fn set_config(setting: Text, value: Text, is_local: Bool) -> Text;
}

/// Sets the search path for `scope`, session-wide (`local = false`) or for the
/// current transaction only (`local = true`).
///
/// For a tenant the same statement reads `current_schema()` after setting the
/// path (one statement, one round trip): if the tenant's schema is not the
/// first schema that exists, the result is [`Error::SchemaMissing`], and the
/// caller forgets the path (the connection is never handed out on it), rather
/// than serving a path on which unqualified names would fall through to
/// `public`.
///
/// With `roles`, the same statement also switches the role: to the tenant's
/// role, or back to the session's (`none`) for `public`.
pub(crate) fn set_search_path(
    conn: &mut PgConnection,
    scope: &ScopeKey,
    path: String,
    local: bool,
    roles: bool,
) -> Result<(), Error> {
    let schema = match scope {
        ScopeKey::Public => None,
        ScopeKey::Tenant(schema, _) => Some(schema),
    };
    let role = roles.then(|| scope.role_setting().to_owned());
    apply(conn, schema, path, local, role)
}

diesel::define_sql_function! {
    /// PostgreSQL's `current_schema()`: the first schema on the path that exists.
    fn current_schema() -> Nullable<Text>;
}

/// The checkout's liveness check: the session's search path as the server
/// holds it, the first schema on it that exists, and the role set with `SET
/// ROLE` (`none` if none). Fixed SQL with no bind parameters and a static query
/// id, so Diesel (and diesel-async) serve it from the statement cache with no
/// work on the client beyond reading the row.
#[derive(Debug, Clone, Copy, diesel::query_builder::QueryId)]
pub(crate) struct CurrentPath;

impl diesel::query_builder::QueryFragment<diesel::pg::Pg> for CurrentPath {
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>,
    ) -> QueryResult<()> {
        out.push_sql(
            "SELECT current_setting('search_path'), current_schema(), current_setting('role')",
        );
        Ok(())
    }
}

impl diesel::query_builder::Query for CurrentPath {
    type SqlType = (Text, diesel::sql_types::Nullable<Text>, Text);
}

impl<Conn> diesel::query_dsl::RunQueryDsl<Conn> for CurrentPath {}

/// What [`CurrentPath`] read from the server: the path text, the first schema
/// on it that exists, and the role.
pub(crate) type ServerPath = (String, Option<String>, String);

impl ScopeKey {
    /// Whether the server's answer to [`CurrentPath`] shows the session on this
    /// scope with the remembered path text `known`: the text must match, its
    /// first schema must still exist (a dropped or renamed tenant schema would
    /// leave `public` at the head), and with tenant roles the role must match.
    pub(crate) fn held(&self, known: &str, (path, head, role): &ServerPath, roles: bool) -> bool {
        known == path
            && head.as_deref() == Some(self.head())
            && (!roles || role == self.role_setting())
    }
}

/// Runs [`CurrentPath`] (marked as the crate's own statement).
pub(crate) fn current_search_path(conn: &mut PgConnection) -> QueryResult<ServerPath> {
    own_statement_next(conn.instrumentation());
    CurrentPath.get_result(conn)
}

fn apply(
    conn: &mut PgConnection,
    must_exist: Option<&SchemaName>,
    path: String,
    local: bool,
    role: Option<String>,
) -> Result<(), Error> {
    let scope_err = |source| Error::Scope {
        scope: must_exist.map_or("public", |s| s.as_str()).to_owned(),
        source,
    };
    // Every arm below runs one statement.
    own_statement_next(conn.instrumentation());
    match (must_exist, role) {
        (None, None) => {
            diesel::select(set_config("search_path", path, local))
                .execute(conn)
                .map_err(scope_err)?;
        }
        (None, Some(role)) => {
            diesel::select((
                set_config("search_path", path, local),
                set_config("role", role, local),
            ))
            .execute(conn)
            .map_err(scope_err)?;
        }
        (Some(schema), role) => {
            // current_schema() runs after set_config in the same select list:
            // the first schema on the new path that exists. Checking it in the
            // same statement (rather than looking the schema up in pg_namespace
            // first) keeps the statement free of tables, so the server's
            // re-planning of it after every path change (PostgreSQL re-plans
            // a cached statement whenever the path differs) is trivial.
            let head = match role {
                None => diesel::select((set_config("search_path", path, local), current_schema()))
                    .get_result::<(String, Option<String>)>(conn)
                    .map(|(_, head)| head),
                Some(role) => diesel::select((
                    set_config("search_path", path, local),
                    set_config("role", role, local),
                    current_schema(),
                ))
                .get_result::<(String, String, Option<String>)>(conn)
                .map(|(_, _, head)| head),
            }
            .map_err(scope_err)?;
            if head.as_deref() != Some(schema.as_str()) {
                // The path now names a schema that does not exist; the caller
                // forgets it (the connection is never handed out on it).
                return Err(Error::SchemaMissing {
                    schema: schema.as_str().to_owned(),
                });
            }
        }
    }
    Ok(())
}

/// The pools' default for `recycle_after_schemas`.
pub(crate) const DEFAULT_RECYCLE_AFTER_SCHEMAS: u64 = 1000;

/// The distinct schemas one connection has been scoped to, as 64-bit hashes (a
/// collision only makes the count low by one).
#[derive(Debug, Default)]
pub(crate) struct SchemaCount(std::collections::HashSet<u64>);

impl SchemaCount {
    /// Records `schema`; true once `max` distinct schemas have been seen.
    pub(crate) fn add(&mut self, schema: &str, max: Option<u64>) -> bool {
        let Some(max) = max else { return false };
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        self.0
            .insert(BuildHasherDefault::<DefaultHasher>::default().hash_one(schema));
        self.0.len() as u64 >= max
    }
}

/// The search path may differ from what the connection remembers.
pub(crate) const PATH_DIRTY: u8 = 1;
/// A transaction may have been opened by raw SQL, out of Diesel's sight.
pub(crate) const RAW_TRANSACTION: u8 = 2;

/// A Diesel [`Instrumentation`] installed on every pooled connection. It sees every
/// statement and records whether the statement could have changed the search path
/// (any error, any rollback, any `SET`/`RESET`/`DISCARD`, any mention of
/// `search_path` or `set_config`) or opened a transaction behind Diesel's back.
/// Events are passed on to the instrumentation Diesel would otherwise have used.
pub(crate) struct ScopeWatch {
    flags: u8,
    /// Statements started and not finished: non-zero when a borrower's future
    /// was dropped mid-query (async pool).
    pub(crate) in_flight: u32,
    /// Schemas this connection has been scoped to, and whether there have been
    /// enough of them to replace it when next released (async pool's recycle
    /// rule).
    #[cfg_attr(not(feature = "deadpool"), allow(dead_code))]
    pub(crate) schemas: SchemaCount,
    #[cfg_attr(not(feature = "deadpool"), allow(dead_code))]
    pub(crate) retire: bool,
    /// The scope and path the session holds, when known (async pool; the sync
    /// pool keeps this in its connection wrapper).
    #[cfg_attr(not(feature = "deadpool"), allow(dead_code))]
    pub(crate) current: Option<(ScopeKey, String)>,
    /// The next statement comes from Diesel's transaction manager.
    transaction_statement: bool,
    /// The next statement is this crate's own (the checkout's path statement),
    /// whose text is known and needs no classifying.
    own_statement: bool,
    buf: String,
    inner: Option<Box<dyn Instrumentation>>,
}

impl std::fmt::Debug for ScopeWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScopeWatch")
            .field("flags", &self.flags)
            .finish_non_exhaustive()
    }
}

impl ScopeWatch {
    pub(crate) fn new(inner: Option<Box<dyn Instrumentation>>) -> Self {
        ScopeWatch {
            flags: 0,
            in_flight: 0,
            schemas: SchemaCount::default(),
            retire: false,
            current: None,
            transaction_statement: false,
            own_statement: false,
            buf: String::new(),
            inner,
        }
    }

    pub(crate) fn take_flags(&mut self) -> u8 {
        self.own_statement = false;
        std::mem::take(&mut self.flags)
    }

    /// The next statement is the crate's own: it is counted and its errors are
    /// seen, but its text is not classified. Cleared by that statement's start
    /// (Diesel reports the start before it sends anything) and by
    /// [`take_flags`](Self::take_flags).
    pub(crate) fn own_statement_next(&mut self) {
        self.own_statement = true;
    }

    /// Forgets a mark left by a checkout that was cancelled (its future
    /// dropped) between marking and sending its statement, so that the mark
    /// cannot fall on a borrower's statement. Called as every checkout begins.
    pub(crate) fn clear_own_statement(&mut self) {
        self.own_statement = false;
    }

    fn classify(&mut self, query: &dyn std::fmt::Display) {
        self.buf.clear();
        let mut sink = SqlText {
            buf: &mut self.buf,
            done: false,
        };
        // Diesel displays a query as its SQL, then " -- binds: [...]"; the
        // binds are not needed, so the sink stops formatting when they begin.
        let complete = write!(sink, "{query}").is_ok();
        if !complete && !sink.done {
            self.flags |= PATH_DIRTY;
            return;
        }
        self.flags |= classify_sql(&self.buf);
        if self.buf.capacity() > 64 * 1024 {
            self.buf = String::new();
        }
    }
}

/// Collects a displayed Diesel query's SQL and refuses the rest: the bind
/// values follow the marker `" -- binds: "`, which Diesel writes on its own.
struct SqlText<'a> {
    buf: &'a mut String,
    done: bool,
}

impl std::fmt::Write for SqlText<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if self.done || s == " -- binds: " {
            self.done = true;
            return Err(std::fmt::Error);
        }
        self.buf.push_str(s);
        Ok(())
    }
}

/// Flags for one statement's text (conservative: a false alarm only costs one
/// extra round trip on the next checkout).
pub(crate) fn classify_sql(sql: &str) -> u8 {
    let mut flags = 0;
    if mentions_path_setting(sql.as_bytes()) {
        flags |= PATH_DIRTY;
    }
    for statement in sql.split(';') {
        let word = statement
            .trim_start()
            .split(|c: char| !c.is_ascii_alphabetic())
            .next()
            .unwrap_or("");
        let is = |kw: &str| word.eq_ignore_ascii_case(kw);
        if is("set") || is("reset") || is("discard") || is("do") || is("call") {
            flags |= PATH_DIRTY;
        }
        if is("begin")
            || is("start")
            || is("commit")
            || is("end")
            || is("abort")
            || is("rollback")
            || is("savepoint")
            || is("release")
            || is("prepare")
        {
            flags |= RAW_TRANSACTION | PATH_DIRTY;
        }
    }
    flags
}

/// Whether `sql` mentions `search_path` or `set_config`, in any case. Both
/// words have an underscore at a fixed place, so only underscores are looked
/// at: most statements have few.
fn mentions_path_setting(sql: &[u8]) -> bool {
    const WORDS: [(&[u8], usize); 2] = [(b"search_path", 6), (b"set_config", 3)];
    sql.iter().enumerate().any(|(i, &b)| {
        b == b'_'
            && WORDS.iter().any(|(word, at)| {
                i >= *at
                    && sql
                        .get(i - at..i - at + word.len())
                        .is_some_and(|w| w.eq_ignore_ascii_case(word))
            })
    })
}

/// Marks the next statement on a connection as the crate's own (see
/// [`ScopeWatch::own_statement_next`]); a no-op without the watch.
pub(crate) fn own_statement_next(instrumentation: &mut dyn Instrumentation) {
    if let Some(watch) = instrumentation.downcast_mut::<ScopeWatch>() {
        watch.own_statement_next();
    }
}

impl Instrumentation for ScopeWatch {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        match &event {
            InstrumentationEvent::BeginTransaction { .. }
            | InstrumentationEvent::CommitTransaction { .. } => self.transaction_statement = true,
            InstrumentationEvent::RollbackTransaction { .. } => {
                self.transaction_statement = true;
                self.flags |= PATH_DIRTY;
            }
            InstrumentationEvent::StartQuery { query, .. } => {
                self.in_flight += 1;
                let from_transaction_manager = std::mem::take(&mut self.transaction_statement);
                let own = std::mem::take(&mut self.own_statement);
                if !from_transaction_manager && !own {
                    self.classify(query);
                }
            }
            InstrumentationEvent::FinishQuery { error, .. } => {
                self.in_flight = self.in_flight.saturating_sub(1);
                if error.is_some() {
                    self.flags |= PATH_DIRTY;
                }
            }
            _ => {}
        }
        if let Some(inner) = &mut self.inner {
            inner.on_connection_event(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_statements() {
        assert_eq!(classify_sql("SELECT * FROM products WHERE id = $1"), 0);
        assert_eq!(classify_sql("UPDATE products SET name = $1"), 0);
        assert_eq!(classify_sql("set search_path to b"), PATH_DIRTY);
        assert_eq!(classify_sql("SET ROLE other"), PATH_DIRTY);
        assert_eq!(classify_sql("select 1; RESET ALL"), PATH_DIRTY);
        assert_eq!(
            classify_sql("SELECT pg_catalog.SET_CONFIG('search_path', 'b', false)"),
            PATH_DIRTY
        );
        assert_eq!(
            classify_sql("select current_setting('SEARCH_PATH')"),
            PATH_DIRTY
        );
        assert_eq!(classify_sql("select set_config"), PATH_DIRTY);
        assert_eq!(classify_sql("_search_path"), PATH_DIRTY);
        assert_eq!(classify_sql("search_pat"), 0);
        assert_eq!(classify_sql("earch_path set_confi _ __"), 0);
        assert_eq!(classify_sql("BEGIN"), RAW_TRANSACTION | PATH_DIRTY);
        assert_eq!(
            classify_sql("select 1;\n start transaction"),
            RAW_TRANSACTION | PATH_DIRTY
        );
    }

    #[test]
    fn search_path_quotes_every_name() {
        let t = ScopeKey::Tenant(SchemaName::new("acme").unwrap(), None);
        let ext = [SchemaName::new("extensions").unwrap()];
        assert_eq!(t.search_path(&ext), "\"acme\", public, \"extensions\"");
        assert_eq!(ScopeKey::Public.search_path(&[]), "public");
    }
}
