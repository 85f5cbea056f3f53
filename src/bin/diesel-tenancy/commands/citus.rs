//! The commands for a Citus cluster: `rebalance`, `tenant move` and
//! `tenant distribute`; and what `status` and `doctor` read of the cluster.

use std::collections::HashMap;

use anyhow::Result;
use diesel::PgConnection;
use diesel_tenancy::SchemaName;
use diesel_tenancy::citus::{self, ClusterMode, NodeAddr, TransferMode};
use serde_json::json;

use super::{Ctx, schema, schemas};
use crate::output::{Ended, UsageError, move_json};

/// The database's mode and, on Citus, its nodes and where each tenant is.
pub(crate) struct Cluster {
    pub(crate) mode: ClusterMode,
    pub(crate) nodes: Vec<citus::Node>,
    placements: HashMap<String, NodeAddr>,
}

impl Cluster {
    pub(super) fn read(conn: &mut PgConnection) -> Result<Cluster> {
        let mode = citus::detect(conn)?;
        let (nodes, placements) = match mode {
            ClusterMode::Citus => (
                citus::nodes(conn)?,
                citus::placements(conn)?.into_iter().collect(),
            ),
            _ => Default::default(),
        };
        Ok(Cluster {
            mode,
            nodes,
            placements,
        })
    }

    /// The node the tenant `schema` is on, `host:port`.
    pub(super) fn node_of(&self, schema: &SchemaName) -> Option<String> {
        self.placements
            .get(schema.as_str())
            .map(ToString::to_string)
    }
}

fn transfer_mode(mode: &str) -> Result<TransferMode> {
    mode.parse()
        .map_err(|e: diesel_tenancy::Error| UsageError(e.to_string()).into())
}

pub(super) fn rebalance(ctx: &Ctx, plan: bool, mode: &str) -> Result<Ended> {
    let mode = transfer_mode(mode)?;
    let mut conn = ctx.conn()?;
    let moves = if plan {
        citus::rebalance_plan(&mut conn)?
    } else {
        citus::rebalance(&mut conn, mode, |p| ctx.out.rebalance_progress(p))?
    };
    ctx.out.print(
        json!({ "plan": plan, "moves": moves.iter().map(move_json).collect::<Vec<_>>() }),
        || {
            if moves.is_empty() {
                return "balanced: nothing to move".to_owned();
            }
            let verb = if plan { "would move" } else { "moved" };
            moves
                .iter()
                .map(|m| format!("{verb} {} from {} to {}", m.schema, m.from, m.to))
                .collect::<Vec<_>>()
                .join("\n")
        },
    );
    Ok(Ended::Ok)
}

/// `tenant move`: the tenant `name` to the node `to`.
pub(super) fn move_tenant(ctx: &Ctx, name: &str, to: &str, mode: &str) -> Result<()> {
    let to: NodeAddr = to
        .parse()
        .map_err(|e: citus::NodeAddrError| UsageError(e.to_string()))?;
    let mode = transfer_mode(mode)?;
    let schema = schema(name)?;
    ctx.out.note(format_args!("moving {name} to {to} ..."));
    let moved = citus::move_tenant(&mut *ctx.conn()?, &schema, &to, mode)?;
    ctx.out.print(move_json(&moved), || {
        if moved.from == moved.to {
            format!("{name} is on {to} already")
        } else {
            format!(
                "moved {name} from {} to {} in {:.1}s",
                moved.from,
                moved.to,
                moved.elapsed.as_secs_f64()
            )
        }
    });
    Ok(())
}

/// `tenant distribute`: the tenants `names`, or with `all` every tenant not
/// distributed yet.
pub(super) fn distribute(ctx: &Ctx, names: &[String], all: bool) -> Result<()> {
    let mut conn = ctx.conn()?;
    let chosen = if all {
        citus::undistributed_tenants(&mut conn)?
    } else if names.is_empty() {
        return Err(UsageError("name the tenants to distribute, or pass --all".into()).into());
    } else {
        schemas(names)?
    };
    let mut done = Vec::new();
    for schema in &chosen {
        citus::distribute_tenant(&mut conn, schema)?;
        let node = citus::placement(&mut conn, schema)?;
        ctx.out.note(format_args!(
            "distributed {schema}{}",
            node.as_ref()
                .map(|n| format!(" (on {n})"))
                .unwrap_or_default()
        ));
        done.push(json!({ "schema": schema.as_str(), "node": node.map(|n| n.to_string()) }));
    }
    ctx.out.print(json!({ "distributed": done }), || {
        format!("{} tenant(s) distributed", done.len())
    });
    Ok(())
}
