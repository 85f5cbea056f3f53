//! The statements the pools send to scope, check and reset a session. Each is
//! fixed SQL with a static query id, so Diesel (and diesel-async) prepare it
//! once per connection and serve it from the statement cache.

use diesel::QueryResult;
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::{BigInt, Bool, Nullable, Oid, Text};

/// The columns both checkout statements end with: the first schema on the path
/// that exists, the session user, the current user (the role in effect),
/// whether the session has a temporary schema, and the object id of that
/// first schema (a catalog cache lookup). None of them reads a table, so
/// the server's re-planning of the statement after each path change (it
/// re-plans every cached statement when the path differs) is trivial.
const STATE_COLUMNS: &str = ", pg_catalog.current_schema(), pg_catalog.\"session_user\"()::text, \
     pg_catalog.\"current_user\"()::text, pg_catalog.pg_my_temp_schema() <> 0, \
     pg_catalog.to_regnamespace(pg_catalog.quote_ident(pg_catalog.current_schema()))::oid";

/// What a checkout statement read from the server.
#[derive(Debug, Clone, PartialEq, Eq, diesel::Queryable)]
pub(crate) struct ServerState {
    /// The search path's text as the server holds it.
    pub(crate) path: String,
    /// The first schema on the path that exists.
    pub(crate) head: Option<String>,
    /// `session_user`: changed only by `SET SESSION AUTHORIZATION`.
    pub(crate) session_user: String,
    /// `current_user`: the role in effect (`SET ROLE`).
    pub(crate) current_user: String,
    /// The session has a temporary schema (it has created a temporary object
    /// at some point; the schema stays after its objects are dropped).
    pub(crate) temp_schema: bool,
    /// The object id of `head`: which schema the name denotes now.
    pub(crate) head_oid: Option<u32>,
}

type StateSql = (Text, Nullable<Text>, Text, Text, Bool, Nullable<Oid>);

/// The liveness check when the path is believed to be in place: reads the
/// session's state back, changing nothing.
#[derive(Debug, Clone, Copy, QueryId)]
pub(crate) struct CurrentState;

impl QueryFragment<Pg> for CurrentState {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql("SELECT pg_catalog.current_setting('search_path')");
        out.push_sql(STATE_COLUMNS);
        Ok(())
    }
}

impl Query for CurrentState {
    type SqlType = StateSql;
}

impl<Conn> diesel::query_dsl::RunQueryDsl<Conn> for CurrentState {}

/// Sets the search path (and with `ROLE`, the role) for the session, or with
/// `LOCAL` for the current transaction only, and reads the resulting state in
/// the same statement: one round trip.
#[derive(Debug, Clone)]
pub(crate) struct SetPath<const ROLE: bool, const LOCAL: bool> {
    pub(crate) path: String,
    pub(crate) role: String,
}

impl<const ROLE: bool, const LOCAL: bool> QueryId for SetPath<ROLE, LOCAL> {
    type QueryId = Self;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl<const ROLE: bool, const LOCAL: bool> QueryFragment<Pg> for SetPath<ROLE, LOCAL> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let local = if LOCAL { "true" } else { "false" };
        out.push_sql("SELECT pg_catalog.set_config('search_path', ");
        out.push_bind_param::<Text, _>(&self.path)?;
        out.push_sql(", ");
        out.push_sql(local);
        out.push_sql(")");
        if ROLE {
            // The role is set in the same expression, before the columns after
            // it read current_user; it adds nothing to the path's text.
            out.push_sql(" || pg_catalog.left(pg_catalog.set_config('role', ");
            out.push_bind_param::<Text, _>(&self.role)?;
            out.push_sql(", ");
            out.push_sql(local);
            out.push_sql("), 0)");
        }
        out.push_sql(STATE_COLUMNS);
        Ok(())
    }
}

impl<const ROLE: bool, const LOCAL: bool> Query for SetPath<ROLE, LOCAL> {
    type SqlType = StateSql;
}

impl<Conn, const ROLE: bool, const LOCAL: bool> diesel::query_dsl::RunQueryDsl<Conn>
    for SetPath<ROLE, LOCAL>
{
}

/// Whether the session's temporary schema holds any object: every object
/// created in a schema depends on it in `pg_depend`, whose index on the
/// referenced object makes this one index probe. Sent only for sessions that
/// have a temporary schema (the checkout statement's last column).
#[derive(Debug, Clone, Copy, QueryId)]
pub(crate) struct TempObjects;

impl QueryFragment<Pg> for TempObjects {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_depend \
             WHERE refclassid = 'pg_catalog.pg_namespace'::pg_catalog.regclass \
             AND refobjid = pg_catalog.pg_my_temp_schema())",
        );
        Ok(())
    }
}

impl Query for TempObjects {
    type SqlType = Bool;
}

impl<Conn> diesel::query_dsl::RunQueryDsl<Conn> for TempObjects {}

/// The backend's memory in bytes: the sum of its memory contexts (the catalog
/// caches a backend fills with every schema it touches are one of them).
/// Readable by superusers and members of `pg_read_all_stats`; for anyone else
/// it fails, and the pool stops sampling.
#[derive(Debug, Clone, Copy, QueryId)]
pub(crate) struct BackendMemory;

impl QueryFragment<Pg> for BackendMemory {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql(
            "SELECT COALESCE(sum(total_bytes), 0)::bigint FROM pg_catalog.pg_backend_memory_contexts",
        );
        Ok(())
    }
}

impl Query for BackendMemory {
    type SqlType = BigInt;
}

impl<Conn> diesel::query_dsl::RunQueryDsl<Conn> for BackendMemory {}

/// Puts a session back to the state of a new one, keeping the protocol-level
/// prepared statements Diesel's statement cache refers to (which `DISCARD
/// ALL` would drop). One simple-query batch, one round trip:
///
/// - `ROLLBACK` ends a transaction however it was opened, failed or not (it
///   only warns outside one); the rest then runs in a transaction of its own;
/// - `SET SESSION AUTHORIZATION DEFAULT` and `RESET ROLE` (which `RESET ALL`
///   leaves alone);
/// - `RESET ALL`: every setting made with `SET` or `set_config`, the search
///   path included, back to the connection's defaults;
/// - `CLOSE ALL` (cursors, `WITH HOLD` ones too), `UNLISTEN *`,
///   `pg_advisory_unlock_all()` (session advisory locks), `DISCARD TEMP`
///   (temporary tables, views, functions), `DISCARD SEQUENCES` (`currval`,
///   `lastval`);
/// - `DEALLOCATE` of each statement made with SQL `PREPARE`;
/// - the two settings Diesel makes on every new connection (`TIME ZONE 'UTC'`,
///   `CLIENT_ENCODING 'UTF8'`), which `RESET ALL` undid.
///
/// Then the pool's `session_setup` SQL, if any.
pub(crate) fn reset_sql(session_setup: Option<&str>) -> String {
    let mut sql = String::from(
        "ROLLBACK; SET SESSION AUTHORIZATION DEFAULT; RESET ROLE; RESET ALL; CLOSE ALL; \
         UNLISTEN *; SELECT pg_catalog.pg_advisory_unlock_all(); DISCARD TEMP; \
         DISCARD SEQUENCES; \
         DO $diesel_tenancy$ DECLARE s text; BEGIN \
         FOR s IN SELECT name FROM pg_catalog.pg_prepared_statements WHERE from_sql LOOP \
         EXECUTE 'DEALLOCATE ' || pg_catalog.quote_ident(s); END LOOP; END $diesel_tenancy$; \
         SET TIME ZONE 'UTC'; SET CLIENT_ENCODING TO 'UTF8';",
    );
    if let Some(setup) = session_setup {
        sql.push('\n');
        sql.push_str(setup);
    }
    sql
}
