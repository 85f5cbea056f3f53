//! Scale-out on a [Citus](https://docs.citusdata.com/) cluster with
//! schema-based sharding.
//!
//! On a database with the `citus` extension the crate runs in Citus mode by
//! itself ([`detect`]); nothing is configured. What changes there:
//!
//! - [`create_tenant`](crate::create_tenant) makes the tenant's schema a
//!   *distributed schema* in the creation transaction: every table in it is a
//!   single-shard table, and all of them live together on one worker node, so
//!   a tenant is created whole on one node or not at all.
//! - Migrations (tenant and shared sets) are sent one statement at a time,
//!   still inside the one transaction per schema: Citus cannot forward some
//!   commands (`CREATE INDEX`) that arrive in a multi-statement string.
//! - The registry (`tenancy_*` tables in `public`) stays on the coordinator, as
//!   plain local tables. The app connects to the coordinator only; a query
//!   with a tenant's schema on the search path is routed to that tenant's node.
//!
//! Shared tables that tenant tables reference must be *reference tables*
//! (copied to every node): call `SELECT tenancy_reference_table('plans')` in a
//! shared migration after creating the table. On a single server the function
//! does nothing, so the same migrations run on both.
//!
//! [`placements`] and [`placement`] say which node holds which tenant;
//! [`move_tenant`] moves one tenant (all its tables) to another node and
//! [`rebalance`] spreads tenants evenly over the nodes, one tenant at a time,
//! each under the tenant's migration lock so no migration runs on a schema
//! while it moves.

mod moves;

pub use moves::{Move, RebalanceProgress, TransferMode, move_tenant, rebalance, rebalance_plan};

use std::fmt;
use std::str::FromStr;

use crate::conn::PgConn;
use diesel::prelude::*;
use diesel::sql_types::{Bool, Integer, Text};

use crate::{Error, Result, SchemaName, registry};

/// Whether the database is a plain PostgreSQL server or a Citus coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClusterMode {
    /// One PostgreSQL server: tenant schemas are plain schemas.
    Single,
    /// A Citus coordinator (the `citus` extension is installed in the
    /// database): tenant schemas are distributed schemas.
    Citus,
}

impl ClusterMode {
    /// `"single"` or `"citus"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterMode::Single => "single",
            ClusterMode::Citus => "citus",
        }
    }
}

impl fmt::Display for ClusterMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which mode the database runs in: [`ClusterMode::Citus`] when the `citus`
/// extension is installed in it. One catalog query.
pub fn detect(conn: &mut impl PgConn) -> Result<ClusterMode> {
    let citus: bool = diesel::select(diesel::dsl::sql::<Bool>(
        "EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'citus')",
    ))
    .get_result(conn)
    .map_err(Error::db("detect whether the database runs Citus"))?;
    Ok(if citus {
        ClusterMode::Citus
    } else {
        ClusterMode::Single
    })
}

/// A node's address, `host:port`, as Citus's `pg_dist_node` names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeAddr {
    /// The host name or address.
    pub host: String,
    /// The port.
    pub port: u16,
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// A `host:port` string that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a node address: expected host:port, with a port from 1 to 65535")]
pub struct NodeAddrError {
    /// The text given.
    pub input: String,
}

impl FromStr for NodeAddr {
    type Err = NodeAddrError;

    /// Parses `host:port` (an IPv6 host in brackets: `[::1]:5432`).
    fn from_str(s: &str) -> std::result::Result<Self, NodeAddrError> {
        let err = || NodeAddrError {
            input: s.to_owned(),
        };
        let (host, port) = s.rsplit_once(':').ok_or_else(err)?;
        let host = match host.strip_prefix('[') {
            Some(inner) => inner.strip_suffix(']').ok_or_else(err)?,
            None if host.contains(':') => return Err(err()),
            None => host,
        };
        let port: u16 = port.parse().map_err(|_| err())?;
        let host_ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'));
        if port == 0 || !host_ok {
            return Err(err());
        }
        Ok(NodeAddr {
            host: host.to_owned(),
            port,
        })
    }
}

/// A node of the cluster, from `pg_dist_node`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Node {
    /// Where it listens.
    pub addr: NodeAddr,
    /// Citus's group id: 0 is the coordinator.
    pub group: i32,
    /// Whether the node is active.
    pub active: bool,
    /// Whether new shards (tenants) may be placed on it.
    pub should_have_shards: bool,
    /// How many tenant schemas it holds.
    pub tenants: i64,
}

impl Node {
    /// Whether this is the coordinator.
    pub fn is_coordinator(&self) -> bool {
        self.group == 0
    }
}

#[derive(QueryableByName)]
struct NodeRow {
    #[diesel(sql_type = Text)]
    nodename: String,
    #[diesel(sql_type = Integer)]
    nodeport: i32,
    #[diesel(sql_type = Integer)]
    groupid: i32,
    #[diesel(sql_type = Bool)]
    isactive: bool,
    #[diesel(sql_type = Bool)]
    shouldhaveshards: bool,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    tenants: i64,
}

fn addr(host: String, port: i32) -> NodeAddr {
    NodeAddr {
        host,
        port: u16::try_from(port).unwrap_or_default(),
    }
}

/// Refuses unless the database runs Citus.
fn require_citus(conn: &mut impl PgConn) -> Result<()> {
    match detect(conn)? {
        ClusterMode::Citus => Ok(()),
        ClusterMode::Single => Err(Error::NotCitus),
    }
}

/// For each placed distributed schema: its name and the node holding it.
/// Reads Citus's metadata tables only (never the workers, unlike the
/// `citus_shards` view, which asks every node for shard sizes).
const PLACEMENTS: &str = "\
    SELECT n.nspname::text AS schema_name, d.nodename AS nodename, d.nodeport AS nodeport \
    FROM pg_dist_schema s \
    JOIN pg_catalog.pg_namespace n ON n.oid = s.schemaid \
    JOIN LATERAL (SELECT pl.groupid FROM pg_dist_partition dp \
                  JOIN pg_dist_shard sh ON sh.logicalrelid = dp.logicalrelid \
                  JOIN pg_dist_placement pl ON pl.shardid = sh.shardid \
                  WHERE dp.colocationid = s.colocationid LIMIT 1) g ON true \
    JOIN pg_dist_node d ON d.groupid = g.groupid AND d.noderole = 'primary'";

/// The cluster's primary nodes, coordinator first, each with the number of
/// tenant schemas it holds. Fails with [`Error::NotCitus`] on a single server.
pub fn nodes(conn: &mut impl PgConn) -> Result<Vec<Node>> {
    require_citus(conn)?;
    citus_nodes(conn)
}

/// [`nodes`] on a database known to run Citus.
fn citus_nodes(conn: &mut impl PgConn) -> Result<Vec<Node>> {
    let rows: Vec<NodeRow> = diesel::sql_query(format!(
        "SELECT d.nodename, d.nodeport, d.groupid, d.isactive, d.shouldhaveshards, \
                (SELECT count(*) FROM ({PLACEMENTS}) p \
                 WHERE p.nodename = d.nodename AND p.nodeport = d.nodeport) AS tenants \
         FROM pg_dist_node d WHERE d.noderole = 'primary' ORDER BY d.groupid, d.nodeid"
    ))
    .load(conn)
    .map_err(Error::db("list the Citus nodes"))?;
    Ok(rows
        .into_iter()
        .map(|r| Node {
            addr: addr(r.nodename, r.nodeport),
            group: r.groupid,
            active: r.isactive,
            should_have_shards: r.shouldhaveshards,
            tenants: r.tenants,
        })
        .collect())
}

#[derive(QueryableByName)]
struct PlacementRow {
    #[diesel(sql_type = Text)]
    schema_name: String,
    #[diesel(sql_type = Text)]
    nodename: String,
    #[diesel(sql_type = Integer)]
    nodeport: i32,
}

/// Every distributed schema that has tables, with the node holding it, sorted
/// by schema. Empty on a single server. A tenant schema with no tables yet has
/// no placement and is not listed.
pub fn placements(conn: &mut impl PgConn) -> Result<Vec<(String, NodeAddr)>> {
    if detect(conn)? == ClusterMode::Single {
        return Ok(Vec::new());
    }
    let rows: Vec<PlacementRow> = diesel::sql_query(format!(
        "SELECT * FROM ({PLACEMENTS}) p ORDER BY schema_name"
    ))
    .load(conn)
    .map_err(Error::db("read where tenants are placed"))?;
    Ok(rows
        .into_iter()
        .map(|r| (r.schema_name, addr(r.nodename, r.nodeport)))
        .collect())
}

/// The node holding `schema`, or `None` on a single server or when the
/// schema is not distributed or has no tables yet.
pub fn placement(conn: &mut impl PgConn, schema: &SchemaName) -> Result<Option<NodeAddr>> {
    if detect(conn)? == ClusterMode::Single {
        return Ok(None);
    }
    citus_placement(conn, schema)
}

/// [`placement`] on a database known to run Citus.
fn citus_placement(conn: &mut impl PgConn, schema: &SchemaName) -> Result<Option<NodeAddr>> {
    let row: Option<PlacementRow> = diesel::sql_query(format!(
        "SELECT * FROM ({PLACEMENTS}) p WHERE schema_name = $1"
    ))
    .bind::<Text, _>(schema.as_str())
    .get_result(conn)
    .optional()
    .map_err(Error::db(format!(
        "read where tenant {:?} is placed",
        schema.as_str()
    )))?;
    Ok(row.map(|r| addr(r.nodename, r.nodeport)))
}

/// Whether `schema` is a distributed schema.
fn is_distributed(conn: &mut impl PgConn, schema: &SchemaName) -> QueryResult<bool> {
    diesel::select(diesel::dsl::sql::<Bool>(
        "EXISTS (SELECT 1 FROM pg_dist_schema s JOIN pg_catalog.pg_namespace n ON n.oid = s.schemaid \
                 WHERE n.nspname = ",
    )
    .bind::<Text, _>(schema.as_str())
    .sql(")"))
    .get_result(conn)
}

/// In tenant creation, on Citus: makes the freshly created (empty) `schema` a
/// distributed schema unless schema-based sharding already did, so the
/// tenant's tables are created on one node whatever the session's
/// `citus.enable_schema_based_sharding` says.
pub(crate) fn distribute_new_schema(conn: &mut impl PgConn, schema: &SchemaName) -> Result<()> {
    distribute(
        conn,
        schema,
        &format!("distribute schema {:?}", schema.as_str()),
    )
}

/// `citus_schema_distribute` unless `schema` is distributed already.
fn distribute(conn: &mut impl PgConn, schema: &SchemaName, action: &str) -> Result<()> {
    if !is_distributed(conn, schema).map_err(Error::db(action))? {
        diesel::sql_query("SELECT citus_schema_distribute($1::regnamespace)::text")
            .bind::<Text, _>(schema.quoted())
            .execute(conn)
            .map_err(Error::db(action))?;
    }
    Ok(())
}

/// Distributes a tenant schema that exists already (a tenant created on a
/// single server before the database moved to Citus): its tables become one
/// colocated group on one node, data included (`citus_schema_distribute`).
/// Does nothing if the schema is distributed already.
///
/// Needs an exclusive lock on each of the tenant's tables while it copies:
/// the tenant is unavailable for that time.
pub fn distribute_tenant(conn: &mut impl PgConn, schema: &SchemaName) -> Result<()> {
    require_citus(conn)?;
    registry::get_tenant(conn, schema)?;
    let action = format!("distribute tenant {:?}", schema.as_str());
    conn.transaction(|conn| {
        crate::registry::lock_schema(conn, schema)?;
        distribute(conn, schema, &action)
    })
}

#[derive(QueryableByName)]
struct SchemaRow {
    #[diesel(sql_type = Text)]
    schema_name: String,
}

/// Registered tenants whose schema exists but is not distributed (made before
/// the database ran Citus, or by hand), sorted. Empty on a single server.
pub fn undistributed_tenants(conn: &mut impl PgConn) -> Result<Vec<SchemaName>> {
    if detect(conn)? == ClusterMode::Single {
        return Ok(Vec::new());
    }
    let rows: Vec<SchemaRow> = diesel::sql_query(
        "SELECT t.schema_name FROM public.tenancy_tenants t \
         JOIN pg_catalog.pg_namespace n ON n.nspname = t.schema_name \
         WHERE NOT EXISTS (SELECT 1 FROM pg_dist_schema s WHERE s.schemaid = n.oid) \
         ORDER BY t.schema_name",
    )
    .load(conn)
    .map_err(Error::db("list tenants whose schema is not distributed"))?;
    rows.into_iter()
        .map(|r| {
            SchemaName::try_from(r.schema_name).map_err(|e| Error::CorruptRegistry {
                reason: e.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
