//! What each command does: one module per command or group of commands, on a
//! shared context (the pool, the migration directories, the output).

mod citus;
mod docs;
mod doctor;
mod domain;
mod dump;
mod exec;
mod migrate;
mod pg_tools;
mod status;
mod tenant;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use diesel_migrations::FileBasedMigrations;
use diesel_tenancy::{Domain, Migrator, SchemaName, Tenant, TenantPool, registry};

use crate::args::{Cli, Command};
use crate::output::{Ended, Output, UsageError};

pub(crate) use citus::Cluster;

/// Runs the command of `cli`; `terminal` tells whether standard error is a
/// terminal (for progress bars).
pub(crate) fn run(cli: Cli, terminal: bool) -> Result<Ended> {
    let Cli {
        database_url,
        shared_dir,
        tenant_dir,
        json,
        connect_timeout,
        command,
    } = cli;
    let database = Database {
        url: database_url,
        json,
        connect_timeout,
        shared_dir,
        tenant_dir,
        out: Output::new(json, terminal),
    };
    match command {
        Command::Completions { shell } => docs::completions(shell),
        Command::Man => docs::man(),
        Command::Migrate(m) => migrate::run(&database.open(m.jobs.max(1))?, m),
        Command::Tenant(t) => tenant::run(&database.open(1)?, t),
        Command::Domain(d) => domain::run(&database.open(1)?, d),
        Command::Status => status::run(&database.open(1)?),
        Command::Doctor { fix } => doctor::run(&database.open(1)?, fix),
        Command::Exec(e) => exec::run(&database.open(e.jobs.max(1))?, e),
        Command::Rebalance { plan, mode } => citus::rebalance(&database.open(1)?, plan, &mode),
    }
}

/// What a command on the database is given: where the database and the
/// migrations are, and how to report.
struct Database {
    url: Option<String>,
    json: bool,
    connect_timeout: u64,
    shared_dir: PathBuf,
    tenant_dir: PathBuf,
    out: Output,
}

impl Database {
    /// The context of a command that uses up to `jobs` tenant connections at
    /// once (and a public one besides).
    fn open(self, jobs: usize) -> Result<Ctx> {
        let url = self.url.filter(|u| !u.is_empty()).ok_or_else(|| {
            UsageError("no database URL: pass --database-url or set DATABASE_URL".into())
        })?;
        // No idle minimum: with one, r2d2 opens a replacement in the
        // background after every checkout, and a connection still being
        // opened when the process exits crashed it (libpq's Kerberos
        // library tears down its locks at exit under the connecting thread).
        // Without one, a checkout opens the connection it waits for.
        let pool = TenantPool::builder(url.clone())
            .max_size(jobs as u32 + 2)
            .min_idle(Some(0))
            .connection_timeout(Duration::from_secs(self.connect_timeout.max(1)))
            .build()?;
        Ok(Ctx {
            pool,
            url,
            json: self.json,
            out: self.out,
            shared_dir: self.shared_dir,
            tenant_dir: self.tenant_dir,
        })
    }
}

/// The context of a command on the database.
struct Ctx {
    pool: TenantPool,
    /// The database URL, for the PostgreSQL programs a command runs
    /// (`tenant dump`, `tenant restore`).
    url: String,
    /// Whether the report is JSON (`--json`).
    json: bool,
    out: Output,
    shared_dir: PathBuf,
    tenant_dir: PathBuf,
}

impl Ctx {
    /// The migrator of the shared and the tenant set.
    fn migrator(&self) -> Result<Migrator<FileBasedMigrations, FileBasedMigrations>> {
        Ok(Migrator::new(
            migrations(&self.shared_dir, "shared")?,
            self.tenant_set()?,
        ))
    }

    /// The tenant migrations.
    fn tenant_set(&self) -> Result<FileBasedMigrations> {
        migrations(&self.tenant_dir, "tenant")
    }

    /// A connection with `public` on the search path.
    fn conn(&self) -> Result<diesel_tenancy::TenantConnection> {
        Ok(self.pool.public()?)
    }

    /// The registry row of the tenant `name`.
    fn tenant(&self, name: &str) -> Result<Tenant> {
        let schema = schema(name)?;
        Ok(registry::get_tenant(&mut *self.conn()?, &schema)?)
    }
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

fn schemas(names: &[String]) -> Result<Vec<SchemaName>> {
    names.iter().map(|s| schema(s)).collect()
}

fn domain(name: &str) -> Result<Domain> {
    Ok(Domain::parse(name).map_err(diesel_tenancy::Error::from)?)
}
