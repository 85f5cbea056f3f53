//! Moving tenants between nodes: one tenant ([`move_tenant`]), or as many as
//! the rebalancer plans ([`rebalance`]), each under the tenant's lock.

use super::*;
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::conn::PgConn;
use diesel::sql_types::{Bool, Integer, Text};

use crate::{Error, Result, SchemaName, registry};

/// How Citus copies a tenant's tables to another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TransferMode {
    /// Logical replication where the tables have a replica identity (a
    /// primary key), blocking writes otherwise. Citus's default.
    #[default]
    Auto,
    /// Logical replication only: writes continue during the copy; fails for
    /// tables without a replica identity.
    ForceLogical,
    /// Writes to the tenant wait while its tables are copied; the fastest
    /// for small tenants.
    BlockWrites,
}

impl TransferMode {
    /// The value of Citus's `citus.shard_transfer_mode` enum.
    pub fn as_str(self) -> &'static str {
        match self {
            TransferMode::Auto => "auto",
            TransferMode::ForceLogical => "force_logical",
            TransferMode::BlockWrites => "block_writes",
        }
    }
}

impl FromStr for TransferMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(TransferMode::Auto),
            "force_logical" => Ok(TransferMode::ForceLogical),
            "block_writes" => Ok(TransferMode::BlockWrites),
            other => Err(Error::Config {
                reason: format!(
                    "unknown transfer mode {other:?}: expected auto, force_logical or block_writes"
                ),
            }),
        }
    }
}

/// One tenant moved (or to be moved) between nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Move {
    /// The tenant's schema.
    pub schema: String,
    /// The node it was on.
    pub from: NodeAddr,
    /// The node it is on now.
    pub to: NodeAddr,
    /// How long the move took (zero in a plan, or when it was already there).
    pub elapsed: Duration,
}

#[derive(QueryableByName)]
struct Locked {
    #[diesel(sql_type = Bool)]
    locked: bool,
}

/// Runs `f` holding `schema`'s migration lock at session level (moves cannot
/// run inside a transaction), released afterwards however `f` ends.
fn with_session_lock<C: PgConn, T>(
    conn: &mut C,
    schema: &SchemaName,
    f: impl FnOnce(&mut C) -> Result<T>,
) -> Result<T> {
    let key = crate::registry::lock_key(schema.as_str());
    let locked =
        diesel::sql_query("SELECT pg_try_advisory_lock(hashtextextended($1, 0)) AS locked")
            .bind::<Text, _>(&key)
            .get_result::<Locked>(conn)
            .map_err(Error::db(format!("lock tenant {:?}", schema.as_str())))?;
    if !locked.locked {
        return Err(Error::SchemaLocked {
            schema: schema.as_str().to_owned(),
        });
    }
    let result = f(conn);
    let unlocked = diesel::sql_query("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
        .bind::<Text, _>(&key)
        .execute(conn);
    let value = result?;
    unlocked.map_err(Error::db(format!("unlock tenant {:?}", schema.as_str())))?;
    Ok(value)
}

/// Moves tenant `schema` (all its tables, data included) to node `to`, which
/// must be a node of the cluster. Reference tables are copied to nodes that
/// lack them first (a node added since they were made has none, and Citus
/// refuses the move until it has). Holds the tenant's migration lock
/// throughout; returns at once if the tenant is on `to` already.
///
/// With [`TransferMode::Auto`] or [`TransferMode::ForceLogical`] the tenant
/// stays readable and writable during the copy and is blocked only for the
/// final switch-over.
pub fn move_tenant(
    conn: &mut impl PgConn,
    schema: &SchemaName,
    to: &NodeAddr,
    mode: TransferMode,
) -> Result<Move> {
    require_citus(conn)?;
    registry::get_tenant(conn, schema)?;
    if !citus_nodes(conn)?.iter().any(|n| &n.addr == to) {
        return Err(Error::NodeNotFound {
            node: to.to_string(),
        });
    }
    let from = citus_placement(conn, schema)?.ok_or_else(|| Error::NotDistributed {
        schema: schema.as_str().to_owned(),
    })?;
    if &from == to {
        return Ok(Move {
            schema: schema.as_str().to_owned(),
            from,
            to: to.clone(),
            elapsed: Duration::ZERO,
        });
    }
    let started = Instant::now();
    let action = format!("move tenant {:?} from {from} to {to}", schema.as_str());
    with_session_lock(conn, schema, |conn| {
        diesel::sql_query("SELECT replicate_reference_tables($1::citus.shard_transfer_mode)::text")
            .bind::<Text, _>(mode.as_str())
            .execute(conn)
            .map_err(Error::db(format!(
                "copy reference tables to every node before moving tenant {:?}",
                schema.as_str()
            )))?;
        diesel::sql_query(
            "SELECT citus_schema_move($1::regnamespace, $2, $3, $4::citus.shard_transfer_mode)::text",
        )
        .bind::<Text, _>(schema.quoted())
        .bind::<Text, _>(&to.host)
        .bind::<Integer, _>(i32::from(to.port))
        .bind::<Text, _>(mode.as_str())
        .execute(conn)
        .map_err(Error::db(action.clone()))?;
        Ok(())
    })?;
    // Old placements are removed later by Citus; do it now (best effort).
    let _ = conn.batch_execute("CALL citus_cleanup_orphaned_resources()");
    Ok(Move {
        schema: schema.as_str().to_owned(),
        from,
        to: to.clone(),
        elapsed: started.elapsed(),
    })
}

#[derive(QueryableByName)]
struct PlanRow {
    #[diesel(sql_type = Text)]
    schema_name: String,
    #[diesel(sql_type = Text)]
    sourcename: String,
    #[diesel(sql_type = Integer)]
    sourceport: i32,
    #[diesel(sql_type = Text)]
    targetname: String,
    #[diesel(sql_type = Integer)]
    targetport: i32,
}

/// The moves Citus's rebalancer would make to even out the tenants over the
/// nodes that should have shards, one per tenant, in order
/// (`get_rebalance_table_shards_plan`, restricted to distributed schemas).
pub fn rebalance_plan(conn: &mut impl PgConn) -> Result<Vec<Move>> {
    require_citus(conn)?;
    let rows: Vec<PlanRow> = diesel::sql_query(
        "SELECT schema_name, sourcename, sourceport, targetname, targetport FROM ( \
           SELECT DISTINCT ON (n.nspname) n.nspname::text AS schema_name, p.sourcename, \
                  p.sourceport, p.targetname, p.targetport, p.ord::int AS step \
           FROM get_rebalance_table_shards_plan() WITH ORDINALITY AS p(table_name, shardid, shard_size, \
                sourcename, sourceport, targetname, targetport, ord) \
           JOIN pg_catalog.pg_class c ON c.oid = p.table_name \
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
           JOIN pg_dist_schema s ON s.schemaid = n.oid \
           ORDER BY n.nspname, p.ord) m ORDER BY step",
    )
    .load(conn)
    .map_err(Error::db("plan a rebalance"))?;
    Ok(rows
        .into_iter()
        .map(|r| Move {
            schema: r.schema_name,
            from: addr(r.sourcename, r.sourceport),
            to: addr(r.targetname, r.targetport),
            elapsed: Duration::ZERO,
        })
        .collect())
}

/// A step of [`rebalance`], for progress output.
#[derive(Debug)]
#[non_exhaustive]
pub enum RebalanceProgress<'a> {
    /// The plan is made: this many tenants will move.
    Planned {
        /// Every planned move, in order.
        moves: &'a [Move],
    },
    /// A tenant is about to move.
    Moving {
        /// The move.
        planned: &'a Move,
        /// Its position, from 1.
        index: usize,
        /// How many moves the plan has.
        total: usize,
    },
    /// A tenant moved.
    Moved {
        /// The move, with its time.
        done: &'a Move,
        /// Its position, from 1.
        index: usize,
        /// How many moves the plan has.
        total: usize,
    },
}

/// Evens out the tenants over the nodes: runs [`rebalance_plan`]'s moves one
/// after the other with [`move_tenant`] (so each takes the tenant's migration
/// lock), reporting each through `progress`. Stops at the first failure, which
/// names the tenant; the moves done so far stay done.
pub fn rebalance(
    conn: &mut impl PgConn,
    mode: TransferMode,
    mut progress: impl FnMut(RebalanceProgress<'_>),
) -> Result<Vec<Move>> {
    let plan = rebalance_plan(conn)?;
    progress(RebalanceProgress::Planned { moves: &plan });
    let total = plan.len();
    let mut done = Vec::with_capacity(total);
    for (i, planned) in plan.iter().enumerate() {
        progress(RebalanceProgress::Moving {
            planned,
            index: i + 1,
            total,
        });
        let schema = SchemaName::new(&planned.schema)?;
        let moved = move_tenant(conn, &schema, &planned.to, mode)?;
        progress(RebalanceProgress::Moved {
            done: &moved,
            index: i + 1,
            total,
        });
        done.push(moved);
    }
    Ok(done)
}
