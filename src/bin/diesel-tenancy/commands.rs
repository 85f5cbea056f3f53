//! What each command does.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::CommandFactory;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_migrations::FileBasedMigrations;
use diesel_tenancy::citus::{self, ClusterMode, NodeAddr, TransferMode};
use diesel_tenancy::{
    ConfirmDrop, Domain, MigrateOptions, MigrationReport, Migrator, NewTenant, Outcome, Progress,
    SchemaName, Tenant, TenantPool, activate_tenant, check_consistency, create_tenant, drop_tenant,
    registry, rename_tenant, repair_missing_schemas, suspend_tenant,
};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::args::{self, Cli, Command};
use crate::{Ended, UsageError};

struct Ctx {
    pool: TenantPool,
    json: bool,
    terminal: bool,
    shared_dir: std::path::PathBuf,
    tenant_dir: std::path::PathBuf,
}

fn migrations(dir: &Path, what: &str) -> Result<FileBasedMigrations> {
    FileBasedMigrations::from_path(dir).map_err(|e| {
        UsageError(format!(
            "cannot read the {what} migrations in {}: {e}",
            dir.display()
        ))
        .into()
    })
}

fn schema(name: &str) -> Result<SchemaName> {
    Ok(SchemaName::new(name).map_err(diesel_tenancy::Error::from)?)
}

fn domain(name: &str) -> Result<Domain> {
    Ok(Domain::parse(name).map_err(diesel_tenancy::Error::from)?)
}

impl Ctx {
    fn shared(&self) -> Result<FileBasedMigrations> {
        migrations(&self.shared_dir, "shared")
    }

    fn tenant_set(&self) -> Result<FileBasedMigrations> {
        migrations(&self.tenant_dir, "tenant")
    }

    fn conn(&self) -> Result<diesel_tenancy::TenantConnection> {
        Ok(self.pool.public()?)
    }

    fn tenant(&self, name: &str) -> Result<Tenant> {
        let schema = schema(name)?;
        Ok(registry::get_tenant(&mut *self.conn()?, &schema)?)
    }

    /// Prints `value` as JSON, or `human` as text.
    fn print(&self, value: Value, human: impl FnOnce() -> String) {
        if self.json {
            println!("{value}");
        } else {
            let text = human();
            if !text.is_empty() {
                println!("{text}");
            }
        }
    }
}

pub(crate) fn run(cli: Cli, terminal: bool) -> Result<Ended> {
    match &cli.command {
        Command::Completions { shell } => {
            let shell = match shell {
                args::Shell::Bash => clap_complete::Shell::Bash,
                args::Shell::Zsh => clap_complete::Shell::Zsh,
                args::Shell::Fish => clap_complete::Shell::Fish,
            };
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "diesel-tenancy",
                &mut std::io::stdout(),
            );
            return Ok(Ended::Ok);
        }
        Command::Man => {
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            return Ok(Ended::Ok);
        }
        _ => {}
    }
    let url = cli
        .database_url
        .clone()
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            UsageError("no database URL: pass --database-url or set DATABASE_URL".into())
        })?;
    let jobs = match &cli.command {
        Command::Migrate(m) => m.jobs.max(1),
        _ => 1,
    };
    let pool = TenantPool::builder(url)
        .max_size(jobs as u32 + 2)
        .min_idle(Some(1))
        .connection_timeout(Duration::from_secs(cli.connect_timeout.max(1)))
        .build()?;
    let ctx = Ctx {
        pool,
        json: cli.json,
        terminal,
        shared_dir: cli.shared_dir,
        tenant_dir: cli.tenant_dir,
    };
    match cli.command {
        Command::Migrate(m) => migrate(&ctx, m),
        Command::Tenant(t) => tenant(&ctx, t),
        Command::Domain(d) => domain_cmd(&ctx, d),
        Command::Status => status(&ctx),
        Command::Doctor { fix } => doctor(&ctx, fix),
        Command::Exec(e) => exec(&ctx, e),
        Command::Rebalance { plan, mode } => rebalance(&ctx, plan, &mode),
        Command::Completions { .. } | Command::Man => unreachable!("handled above"),
    }
}

fn outcome_json(outcome: &Outcome) -> Value {
    match outcome {
        Outcome::Applied {
            versions,
            non_transactional,
        } => {
            json!({ "result": "applied", "versions": versions, "non_transactional": non_transactional })
        }
        Outcome::UpToDate => json!({ "result": "up_to_date" }),
        Outcome::Pending { versions } if versions.is_empty() => json!({ "result": "up_to_date" }),
        Outcome::Pending { versions } => json!({ "result": "pending", "versions": versions }),
        Outcome::Failed {
            version,
            error,
            applied,
        } => json!({ "result": "failed", "version": version, "error": error, "applied": applied }),
        Outcome::SchemaMissing => {
            json!({ "result": "schema_missing", "error": "the schema does not exist" })
        }
        Outcome::SchemaNotOnPath {
            version,
            current_schema,
            applied,
            ..
        } => json!({
            "result": "schema_not_on_path",
            "version": version,
            "current_schema": current_schema,
            "error": outcome.to_string(),
            "applied": applied,
        }),
        Outcome::Locked => json!({ "result": "locked" }),
        Outcome::NotRun => json!({ "result": "not_run" }),
        other => json!({ "result": other.to_string() }),
    }
}

fn report_json(report: &MigrationReport) -> Value {
    let t = report.totals();
    json!({
        "dry_run": report.dry_run,
        "shared": report.shared.as_ref().map(outcome_json),
        "tenants": report.tenants.iter().map(|r| {
            let mut v = outcome_json(&r.outcome);
            v["schema"] = json!(r.schema.as_str());
            v["elapsed_ms"] = json!(r.elapsed.as_secs_f64() * 1000.0);
            v
        }).collect::<Vec<_>>(),
        "totals": {
            "tenants": t.tenants, "applied": t.applied, "up_to_date": t.up_to_date,
            "pending": t.pending, "failed": t.failed, "locked": t.locked,
            "not_run": t.not_run, "migrations_applied": t.migrations_applied,
        },
        "decided_by_journal": report.decided_by_journal,
        "elapsed_ms": report.elapsed.as_secs_f64() * 1000.0,
    })
}

fn report_text(report: &MigrationReport) -> String {
    let mut out = String::new();
    if let Some(shared) = &report.shared {
        out += &format!("public: {shared}\n");
    }
    for r in &report.tenants {
        if matches!(r.outcome, Outcome::UpToDate)
            && report.decided_by_journal > 0
            && !report.dry_run
        {
            continue;
        }
        out += &format!("{}: {}\n", r.schema, r.outcome);
    }
    let t = report.totals();
    out += &format!(
        "{} tenants: {} migrated ({} migrations), {} up to date, {} pending, {} failed, {} locked, {} not run; {:.1}s",
        t.tenants,
        t.applied,
        t.migrations_applied,
        t.up_to_date,
        t.pending,
        t.failed,
        t.locked,
        t.not_run,
        report.elapsed.as_secs_f64()
    );
    out
}

fn progress(ctx: &Ctx) -> impl Fn(&Progress<'_>) + Send + Sync + 'static {
    let terminal = ctx.terminal;
    let quiet = ctx.json;
    let bar: Arc<Mutex<Option<ProgressBar>>> = Arc::new(Mutex::new(None));
    move |event| match event {
        Progress::Started { total, .. } if terminal => {
            let mut bar = bar.lock().unwrap_or_else(|e| e.into_inner());
            bar.get_or_insert_with(|| {
                let b = ProgressBar::new(*total as u64);
                if let Ok(style) =
                    ProgressStyle::with_template("{bar:40} {pos}/{len} tenants {msg} ({eta})")
                {
                    b.set_style(style);
                }
                b
            });
        }
        Progress::Finished {
            report,
            done,
            total,
        } => {
            if terminal {
                if let Some(b) = bar.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                    b.set_position(*done as u64);
                    b.set_message(report.schema.to_string());
                    if done == total {
                        b.finish_and_clear();
                    }
                }
            } else if !quiet {
                eprintln!("[{done}/{total}] {}: {}", report.schema, report.outcome);
            }
        }
        _ => {}
    }
}

fn migrate(ctx: &Ctx, m: args::Migrate) -> Result<Ended> {
    let migrator = Migrator::new(ctx.shared()?, ctx.tenant_set()?);
    let mut options = MigrateOptions::new()
        .jobs(m.jobs)
        .fail_fast(m.fail_fast)
        .dry_run(m.plan)
        .verify(m.verify)
        .shared(!m.tenants_only)
        .on_progress(progress(ctx));
    if m.shared_only {
        options = options.tenants([]);
    } else if !m.schemas.is_empty() {
        let schemas = m
            .schemas
            .iter()
            .map(|s| schema(s))
            .collect::<Result<Vec<_>>>()?;
        options = options.tenants(schemas);
    }
    let report = migrator.migrate_all(&ctx.pool, &options)?;
    ctx.print(report_json(&report), || report_text(&report));
    Ok(if report.is_success() {
        Ended::Ok
    } else {
        Ended::TenantsFailed
    })
}

fn tenant_json(t: &Tenant) -> Value {
    json!({
        "id": t.id(),
        "schema": t.schema().as_str(),
        "name": t.name(),
        "status": t.status().as_str(),
        "role": t.role().map(|r| r.as_str()),
    })
}

fn tenant(ctx: &Ctx, command: args::Tenant) -> Result<Ended> {
    use args::Tenant as T;
    match command {
        T::Create {
            schema: name,
            name: display,
            domains,
            with_role,
        } => {
            let mut new = NewTenant::new(schema(&name)?, display.unwrap_or_else(|| name.clone()));
            if with_role {
                new = new.with_role();
            }
            for d in &domains {
                new = new.domain(domain(d)?);
            }
            let tenant = create_tenant(&mut *ctx.conn()?, &new, ctx.tenant_set()?)?;
            ctx.print(tenant_json(&tenant), || {
                format!("created tenant {} ({})", tenant.schema(), tenant.name())
            });
        }
        T::Drop {
            schema: name,
            yes_delete_all_data,
        } => {
            let schema = schema(&name)?;
            if !yes_delete_all_data {
                return Err(UsageError(format!(
                    "refusing to drop tenant {name:?}: this deletes schema {name:?} and all its data; pass --yes-delete-all-data to confirm"
                ))
                .into());
            }
            drop_tenant(
                &mut *ctx.conn()?,
                &schema,
                ConfirmDrop::DeleteSchemaAndAllItsData,
            )?;
            ctx.print(json!({ "dropped": schema.as_str() }), || {
                format!("dropped tenant {schema} and its schema")
            });
        }
        T::Rename { from, to } => {
            let tenant = rename_tenant(&mut *ctx.conn()?, &schema(&from)?, &schema(&to)?)?;
            ctx.print(tenant_json(&tenant), || format!("renamed {from} to {to}"));
        }
        T::Suspend { schema: name } => {
            let tenant = suspend_tenant(&mut *ctx.conn()?, &schema(&name)?)?;
            ctx.print(tenant_json(&tenant), || format!("suspended {name}"));
        }
        T::Activate { schema: name } => {
            let tenant = activate_tenant(&mut *ctx.conn()?, &schema(&name)?)?;
            ctx.print(tenant_json(&tenant), || format!("activated {name}"));
        }
        T::Move {
            schema: name,
            to,
            mode,
        } => {
            let to: NodeAddr = to
                .parse()
                .map_err(|e: citus::NodeAddrError| UsageError(e.to_string()))?;
            let mode = transfer_mode(&mode)?;
            let schema = schema(&name)?;
            if !ctx.json {
                eprintln!("moving {name} to {to} ...");
            }
            let moved = citus::move_tenant(&mut *ctx.conn()?, &schema, &to, mode)?;
            ctx.print(
                json!({
                    "schema": moved.schema,
                    "from": moved.from.to_string(),
                    "to": moved.to.to_string(),
                    "seconds": moved.elapsed.as_secs_f64(),
                }),
                || {
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
                },
            );
        }
        T::Distribute { schemas, all } => {
            let mut conn = ctx.conn()?;
            let chosen = if all {
                citus::undistributed_tenants(&mut conn)?
            } else if schemas.is_empty() {
                return Err(
                    UsageError("name the tenants to distribute, or pass --all".into()).into(),
                );
            } else {
                schemas
                    .iter()
                    .map(|s| schema(s))
                    .collect::<Result<Vec<_>>>()?
            };
            let mut done = Vec::new();
            for schema in &chosen {
                citus::distribute_tenant(&mut conn, schema)?;
                let node = citus::placement(&mut conn, schema)?;
                if !ctx.json {
                    eprintln!(
                        "distributed {schema}{}",
                        node.as_ref()
                            .map(|n| format!(" (on {n})"))
                            .unwrap_or_default()
                    );
                }
                done.push(
                    json!({ "schema": schema.as_str(), "node": node.map(|n| n.to_string()) }),
                );
            }
            ctx.print(json!({ "distributed": done }), || {
                format!("{} tenant(s) distributed", done.len())
            });
        }
        T::List => {
            let tenants = registry::list_tenants(&mut *ctx.conn()?)?;
            ctx.print(
                json!({ "tenants": tenants.iter().map(tenant_json).collect::<Vec<_>>() }),
                || {
                    let mut out = format!("{:<30} {:<10} NAME", "SCHEMA", "STATUS");
                    for t in &tenants {
                        out += &format!(
                            "\n{:<30} {:<10} {}",
                            t.schema(),
                            t.status().as_str(),
                            t.name()
                        );
                    }
                    out
                },
            );
        }
        T::Show { schema: name } => {
            let tenant = ctx.tenant(&name)?;
            let mut conn = ctx.conn()?;
            let domains = registry::list_domains(&mut conn, &tenant)?;
            let journal = registry::journal(&mut conn)?
                .into_iter()
                .find(|j| j.tenant_id == tenant.id());
            let mode = citus::detect(&mut conn)?;
            let node = citus::placement(&mut conn, tenant.schema())?;
            drop(conn);
            let plan = Migrator::new(ctx.shared()?, ctx.tenant_set()?).plan(
                &ctx.pool,
                &MigrateOptions::new()
                    .shared(false)
                    .verify(true)
                    .tenants([tenant.schema().clone()]),
            )?;
            let outcome = plan.tenants.first().map(|r| r.outcome.clone());
            let mut value = tenant_json(&tenant);
            value["domains"] = json!(
                domains
                    .iter()
                    .map(|d| json!({ "domain": d.domain.as_str(), "primary": d.is_primary }))
                    .collect::<Vec<_>>()
            );
            value["latest_version"] =
                json!(journal.as_ref().and_then(|j| j.latest_version.clone()));
            value["last_error"] = json!(journal.as_ref().and_then(|j| j.last_error.clone()));
            value["migrations"] = outcome.as_ref().map_or(Value::Null, outcome_json);
            value["mode"] = json!(mode.as_str());
            value["node"] = json!(node.as_ref().map(ToString::to_string));
            ctx.print(value, || {
                let mut out = format!(
                    "tenant {} ({}), {}\ndomains: {}",
                    tenant.schema(),
                    tenant.name(),
                    tenant.status().as_str(),
                    domains
                        .iter()
                        .map(|d| if d.is_primary {
                            format!("{} (primary)", d.domain)
                        } else {
                            d.domain.to_string()
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                if let Some(outcome) = &outcome {
                    out += &format!("\nmigrations: {outcome}");
                }
                if mode == ClusterMode::Citus {
                    out += &format!(
                        "\nnode: {}",
                        node.as_ref().map_or(
                            "none (not distributed, or no tables)".to_owned(),
                            ToString::to_string
                        )
                    );
                }
                if let Some(error) = journal.as_ref().and_then(|j| j.last_error.as_ref()) {
                    out += &format!("\nlast error: {error}");
                }
                out
            });
        }
    }
    Ok(Ended::Ok)
}

fn domain_cmd(ctx: &Ctx, command: args::Domain) -> Result<Ended> {
    use args::Domain as D;
    match command {
        D::Add {
            schema: name,
            domain: d,
            primary,
        } => {
            let d = domain(&d)?;
            let tenant = ctx.tenant(&name)?;
            registry::add_domain(&mut *ctx.conn()?, &tenant, &d, primary)?;
            ctx.print(
                json!({ "domain": d.as_str(), "schema": name, "primary": primary }),
                || format!("{d} now routes to {name}"),
            );
        }
        D::Remove { domain: d } => {
            let d = domain(&d)?;
            registry::remove_domain(&mut *ctx.conn()?, &d)?;
            ctx.print(json!({ "removed": d.as_str() }), || format!("removed {d}"));
        }
        D::List { schema: name } => {
            let mut conn = ctx.conn()?;
            let tenants = match &name {
                Some(name) => vec![registry::get_tenant(&mut conn, &schema(name)?)?],
                None => registry::list_tenants(&mut conn)?,
            };
            let mut rows = Vec::new();
            for t in &tenants {
                for d in registry::list_domains(&mut conn, t)? {
                    rows.push((d.domain.to_string(), t.schema().to_string(), d.is_primary));
                }
            }
            ctx.print(
                json!({ "domains": rows.iter().map(|(d, s, p)| json!({ "domain": d, "schema": s, "primary": p })).collect::<Vec<_>>() }),
                || {
                    let mut out = format!("{:<40} {:<30} PRIMARY", "DOMAIN", "SCHEMA");
                    for (d, s, p) in &rows {
                        out += &format!("\n{d:<40} {s:<30} {}", if *p { "yes" } else { "" });
                    }
                    out
                },
            );
        }
    }
    Ok(Ended::Ok)
}

#[derive(QueryableByName)]
struct MaxVersion {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    version: Option<String>,
}

fn status(ctx: &Ctx) -> Result<Ended> {
    let plan = Migrator::new(ctx.shared()?, ctx.tenant_set()?).plan(
        &ctx.pool,
        &MigrateOptions::new().verify(true).include_suspended(true),
    )?;
    let mut conn = ctx.conn()?;
    let tenants = registry::list_tenants(&mut conn)?;
    let journal = registry::journal(&mut conn)?;
    let cluster = Cluster::read(&mut conn)?;
    let mut rows = Vec::new();
    for t in &tenants {
        let entry = plan.tenant(t.schema().as_str());
        let (pending, missing) = match entry.map(|r| &r.outcome) {
            Some(Outcome::Pending { versions }) => (Some(versions.len()), false),
            Some(Outcome::SchemaMissing) => (None, true),
            _ => (None, false),
        };
        let applied = if missing {
            None
        } else {
            diesel::sql_query(format!(
                "SELECT max(version)::text AS version FROM {}.__diesel_schema_migrations",
                t.schema().quoted()
            ))
            .get_result::<MaxVersion>(&mut *conn)
            .ok()
            .and_then(|v| v.version)
        };
        let last_error = journal
            .iter()
            .find(|j| j.tenant_id == t.id())
            .and_then(|j| j.last_error.clone());
        rows.push((t, applied, pending, missing, last_error));
    }
    let shared_pending = match &plan.shared {
        Some(Outcome::Pending { versions }) => versions.len(),
        _ => 0,
    };
    let citus = cluster.mode == ClusterMode::Citus;
    let mut value = cluster.json();
    value["shared_pending"] = json!(shared_pending);
    value["tenants"] = rows
        .iter()
        .map(|(t, applied, pending, missing, error)| {
            json!({
                "schema": t.schema().as_str(),
                "status": t.status().as_str(),
                "applied_version": applied,
                "pending": pending,
                "schema_missing": missing,
                "last_error": error,
                "node": cluster.node_of(t.schema()),
            })
        })
        .collect();
    ctx.print(value, || {
        let mut out = format!(
            "{}\npublic: {shared_pending} pending\n{:<30} {:<10} {}{:<16} {:<8} LAST ERROR",
            cluster.text(),
            "SCHEMA",
            "STATUS",
            if citus {
                format!("{:<22} ", "NODE")
            } else {
                String::new()
            },
            "VERSION",
            "PENDING"
        );
        for (t, applied, pending, missing, error) in &rows {
            out += &format!(
                "\n{:<30} {:<10} {}{:<16} {:<8} {}",
                t.schema(),
                t.status().as_str(),
                if citus {
                    format!(
                        "{:<22} ",
                        cluster.node_of(t.schema()).unwrap_or_else(|| "-".into())
                    )
                } else {
                    String::new()
                },
                applied.as_deref().unwrap_or("-"),
                if *missing {
                    "no schema".to_owned()
                } else {
                    pending.map_or("-".into(), |p| p.to_string())
                },
                error.as_deref().unwrap_or("")
            );
        }
        out
    });
    Ok(Ended::Ok)
}

fn doctor(ctx: &Ctx, fix: bool) -> Result<Ended> {
    let mut report = check_consistency(&mut *ctx.conn()?, ctx.tenant_set()?)?;
    let mut fixed = Vec::new();
    if fix {
        for t in repair_missing_schemas(&mut *ctx.conn()?, ctx.tenant_set()?)? {
            fixed.push(format!(
                "created and migrated the missing schema of {}",
                t.schema()
            ));
        }
        let behind: Vec<SchemaName> = report
            .tenants_behind
            .iter()
            .map(|(t, _)| t.schema().clone())
            .collect();
        if !behind.is_empty() {
            let migrated = Migrator::new(ctx.shared()?, ctx.tenant_set()?).migrate_all(
                &ctx.pool,
                &MigrateOptions::new().shared(false).tenants(behind),
            )?;
            for r in &migrated.tenants {
                fixed.push(format!("{}: {}", r.schema, r.outcome));
            }
        }
        report = check_consistency(&mut *ctx.conn()?, ctx.tenant_set()?)?;
    }
    let names = |v: &[Tenant]| v.iter().map(|t| t.schema().to_string()).collect::<Vec<_>>();
    let mut conn = ctx.conn()?;
    let cluster = Cluster::read(&mut conn)?;
    let undistributed = citus::undistributed_tenants(&mut conn)?;
    drop(conn);
    let consistent = report.is_consistent() && undistributed.is_empty();
    ctx.print(
        json!({
            "mode": cluster.mode.as_str(),
            "nodes": cluster.json()["nodes"],
            "not_distributed": undistributed.iter().map(SchemaName::as_str).collect::<Vec<_>>(),
            "consistent": consistent,
            "rows_without_schema": names(&report.rows_without_schema),
            "schemas_without_row": report.schemas_without_row,
            "tenants_behind": report.tenants_behind.iter().map(|(t, v)| json!({ "schema": t.schema().as_str(), "pending": v })).collect::<Vec<_>>(),
            "fixed": fixed,
        }),
        || {
            let mut out = format!("{}\n", cluster.text());
            for s in &undistributed {
                out += &format!("tenant not distributed: {s} (tenant distribute {s} places it on a node)\n");
            }
            for line in &fixed {
                out += &format!("fixed: {line}\n");
            }
            for t in &report.rows_without_schema {
                out += &format!("registry row without schema: {} (doctor --fix creates and migrates it)\n", t.schema());
            }
            for s in &report.schemas_without_row {
                out += &format!("schema without registry row: {s} (left alone: drop it or register it yourself)\n");
            }
            for (t, v) in &report.tenants_behind {
                out += &format!("tenant behind: {} ({} pending)\n", t.schema(), v.len());
            }
            if consistent {
                out += "consistent";
            }
            out.trim_end().to_owned()
        },
    );
    Ok(if consistent {
        Ended::Ok
    } else {
        Ended::TenantsFailed
    })
}

/// The database's mode and, on Citus, its nodes and where each tenant is.
struct Cluster {
    mode: ClusterMode,
    nodes: Vec<citus::Node>,
    placements: std::collections::HashMap<String, NodeAddr>,
}

impl Cluster {
    fn read(conn: &mut PgConnection) -> Result<Cluster> {
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

    fn node_of(&self, schema: &SchemaName) -> Option<String> {
        self.placements
            .get(schema.as_str())
            .map(ToString::to_string)
    }

    fn json(&self) -> Value {
        json!({
            "mode": self.mode.as_str(),
            "nodes": self.nodes.iter().map(|n| json!({
                "node": n.addr.to_string(),
                "role": if n.is_coordinator() { "coordinator" } else { "worker" },
                "active": n.active,
                "should_have_shards": n.should_have_shards,
                "tenants": n.tenants,
            })).collect::<Vec<_>>(),
        })
    }

    /// `mode: single`, or the mode and one line per node.
    fn text(&self) -> String {
        let mut out = format!("mode: {}", self.mode);
        for n in &self.nodes {
            out += &format!(
                "\n  {} {}{}{}, {} tenant{}",
                if n.is_coordinator() {
                    "coordinator"
                } else {
                    "worker"
                },
                n.addr,
                if n.active { "" } else { " (inactive)" },
                if n.should_have_shards {
                    ""
                } else {
                    " (no shards)"
                },
                n.tenants,
                if n.tenants == 1 { "" } else { "s" }
            );
        }
        out
    }
}

fn transfer_mode(mode: &str) -> Result<TransferMode> {
    mode.parse()
        .map_err(|e: diesel_tenancy::Error| UsageError(e.to_string()).into())
}

fn rebalance(ctx: &Ctx, plan: bool, mode: &str) -> Result<Ended> {
    let mode = transfer_mode(mode)?;
    let mut conn = ctx.conn()?;
    let move_json = |m: &citus::Move| {
        json!({
            "schema": m.schema,
            "from": m.from.to_string(),
            "to": m.to.to_string(),
            "seconds": m.elapsed.as_secs_f64(),
        })
    };
    let moves = if plan {
        citus::rebalance_plan(&mut conn)?
    } else {
        let (json_out, terminal) = (ctx.json, ctx.terminal);
        citus::rebalance(&mut conn, mode, |p| {
            if json_out {
                return;
            }
            match p {
                citus::RebalanceProgress::Planned { moves } => {
                    eprintln!("{} tenant(s) to move", moves.len());
                }
                citus::RebalanceProgress::Moving {
                    planned,
                    index,
                    total,
                } if terminal => {
                    eprintln!(
                        "[{index}/{total}] moving {} from {} to {} ...",
                        planned.schema, planned.from, planned.to
                    );
                }
                citus::RebalanceProgress::Moved { done, index, total } => {
                    eprintln!(
                        "[{index}/{total}] moved {} from {} to {} in {:.1}s",
                        done.schema,
                        done.from,
                        done.to,
                        done.elapsed.as_secs_f64()
                    );
                }
                _ => {}
            }
        })?
    };
    ctx.print(
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

#[derive(QueryableByName)]
struct Head {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    current_schema: Option<String>,
}

/// Runs `sql` in one transaction with only `schema` on the search path, as
/// `migrate` runs tenant migrations: an unqualified name never reaches
/// `public` (shared tables are written `public.plans`). The path is set for the
/// transaction only, and read back on the server first: if the schema is not at
/// its head (dropped or renamed meanwhile), nothing runs.
fn exec_in_tenant(conn: &mut PgConnection, schema: &SchemaName, sql: &str) -> Result<()> {
    conn.transaction(|c| {
        let head = diesel::sql_query(
            "SELECT CASE WHEN set_config('search_path', $1, true) IS NOT NULL \
                    THEN current_schema() END AS current_schema",
        )
        .bind::<diesel::sql_types::Text, _>(schema.quoted())
        .get_result::<Head>(c)?;
        if head.current_schema.as_deref() != Some(schema.as_str()) {
            anyhow::bail!(
                "schema {:?} is not at the head of the search path (current_schema() is {}), so nothing was run",
                schema.as_str(),
                head.current_schema
                    .map_or_else(|| "none".to_owned(), |s| format!("{s:?}"))
            );
        }
        c.batch_execute(sql)?;
        Ok(())
    })
}

fn exec(ctx: &Ctx, e: args::Exec) -> Result<Ended> {
    let sql = match (&e.sql, &e.file) {
        (Some(sql), _) => sql.clone(),
        (None, Some(file)) => std::fs::read_to_string(file)
            .map_err(|err| UsageError(format!("cannot read {}: {err}", file.display())))?,
        (None, None) => return Err(UsageError("pass --sql or --file".into()).into()),
    };
    let tenants: Vec<Tenant> = if e.schemas.is_empty() {
        registry::list_tenants(&mut *ctx.conn()?)?
            .into_iter()
            .filter(Tenant::is_active)
            .collect()
    } else {
        e.schemas
            .iter()
            .map(|s| ctx.tenant(s))
            .collect::<Result<_>>()?
    };
    let mut results = Vec::new();
    for t in &tenants {
        let result = ctx
            .pool
            .get(t)
            .map_err(anyhow::Error::from)
            .and_then(|mut conn| {
                exec_in_tenant(&mut conn, t.schema(), &sql)
                    .with_context(|| format!("in tenant {}", t.schema()))
            });
        if !ctx.json && !ctx.terminal {
            eprintln!(
                "{}: {}",
                t.schema(),
                result
                    .as_ref()
                    .map_or_else(|e| format!("failed: {e:#}"), |_| "ok".into())
            );
        }
        results.push((
            t.schema().to_string(),
            result.err().map(|e| format!("{e:#}")),
        ));
    }
    let failed = results.iter().filter(|(_, e)| e.is_some()).count();
    ctx.print(
        json!({
            "tenants": results.iter().map(|(s, e)| json!({ "schema": s, "ok": e.is_none(), "error": e })).collect::<Vec<_>>(),
            "ok": results.len() - failed,
            "failed": failed,
        }),
        || {
            let mut out = String::new();
            for (s, e) in &results {
                out += &format!("{s}: {}\n", e.as_deref().map_or("ok".to_owned(), |e| format!("failed: {e}")));
            }
            out += &format!("{} ok, {failed} failed", results.len() - failed);
            out
        },
    );
    Ok(if failed == 0 {
        Ended::Ok
    } else {
        Ended::TenantsFailed
    })
}
