//! The command line, as clap sees it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Schema-per-tenant PostgreSQL for Diesel applications: migrations for public
/// and every tenant schema, tenants, domains and health checks.
#[derive(Debug, Parser)]
#[command(name = "diesel-tenancy", version, about, long_about = None)]
pub(crate) struct Cli {
    /// The database URL.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub(crate) database_url: Option<String>,

    /// The shared migrations (run on public).
    #[arg(long, default_value = "migrations_shared", global = true)]
    pub(crate) shared_dir: PathBuf,

    /// The tenant migrations (run on every tenant schema).
    #[arg(long, default_value = "migrations_tenant", global = true)]
    pub(crate) tenant_dir: PathBuf,

    /// Print the result as JSON on standard output.
    #[arg(long, global = true)]
    pub(crate) json: bool,

    /// Seconds to wait for a database connection.
    #[arg(long, default_value_t = 10, global = true)]
    pub(crate) connect_timeout: u64,

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run pending migrations: the shared set on public, then the tenant set on every tenant.
    Migrate(Migrate),
    /// Create, drop, rename, suspend, activate, list, show, dump and restore tenants.
    #[command(subcommand)]
    Tenant(Tenant),
    /// Add, remove and list the domains that route to tenants.
    #[command(subcommand)]
    Domain(Domain),
    /// A table of tenants: schema, status, applied version, pending migrations, last error.
    Status,
    /// Find registry rows without schemas, schemas without rows, tenants behind.
    Doctor {
        /// Also fix what can be fixed safely: create and migrate missing schemas,
        /// migrate tenants that are behind.
        #[arg(long)]
        fix: bool,
    },
    /// On a Citus cluster: move tenants between nodes until each node that
    /// should have shards holds about as many (one tenant at a time, with progress).
    Rebalance {
        /// Show the moves; make none.
        #[arg(long)]
        plan: bool,
        /// How Citus copies the tables: auto, force_logical or block_writes.
        #[arg(long, default_value = "auto")]
        mode: String,
    },
    /// Run an SQL statement or file in every tenant (or the chosen ones), each in
    /// its own transaction with only the tenant's schema on the search path
    /// (write shared tables qualified: public.plans).
    Exec(Exec),
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: Shell,
    },
    /// Print the man page (roff).
    Man,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Args)]
pub(crate) struct Migrate {
    /// Only the shared set, on public.
    #[arg(long, conflicts_with = "tenants_only")]
    pub(crate) shared_only: bool,
    /// Only the tenant set, on tenant schemas.
    #[arg(long)]
    pub(crate) tenants_only: bool,
    /// Only this tenant (repeatable).
    #[arg(long = "schema", value_name = "SCHEMA")]
    pub(crate) schemas: Vec<String>,
    /// Tenants migrated in parallel.
    #[arg(long, default_value_t = 2)]
    pub(crate) jobs: usize,
    /// Stop at the first failing tenant (default: continue and report).
    #[arg(long)]
    pub(crate) fail_fast: bool,
    /// Show what is pending per tenant; apply nothing.
    #[arg(long)]
    pub(crate) plan: bool,
    /// Read every tenant's own ledger instead of trusting the journal.
    #[arg(long)]
    pub(crate) verify: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Tenant {
    /// Create a tenant: registry row, schema, every tenant migration, domains.
    Create {
        /// The schema name.
        schema: String,
        /// The display name (default: the schema name).
        #[arg(long)]
        name: Option<String>,
        /// A domain routed to the tenant (repeatable; the first is primary).
        #[arg(long = "domain")]
        domains: Vec<String>,
        /// Also create the tenant's own database role (needs CREATEROLE).
        #[arg(long)]
        with_role: bool,
    },
    /// Drop a tenant: its schema with all its data, and its registry rows
    /// (with --keep-schema: its registry rows only).
    Drop {
        /// The schema name.
        schema: String,
        /// Required unless --keep-schema: confirms that the schema and all its data are deleted.
        #[arg(long)]
        yes_delete_all_data: bool,
        /// Remove the tenant from the registry (row, domains, journal entry, role) but keep its
        /// schema and data; `doctor` then lists the schema as one no tenant owns.
        #[arg(long, conflicts_with = "yes_delete_all_data")]
        keep_schema: bool,
    },
    /// Rename a tenant's schema (and its registry row).
    Rename {
        /// The current schema name.
        from: String,
        /// The new schema name.
        to: String,
    },
    /// Suspend a tenant: it keeps its data but is not served.
    Suspend {
        /// The schema name.
        schema: String,
    },
    /// Activate a suspended tenant.
    Activate {
        /// The schema name.
        schema: String,
    },
    /// List tenants.
    List,
    /// Show one tenant, its domains, its migration state and (on Citus) its node.
    Show {
        /// The schema name.
        schema: String,
    },
    /// On a Citus cluster: move a tenant (all its tables and data) to another node.
    Move {
        /// The schema name.
        schema: String,
        /// The node to move it to, host:port as Citus lists it (see status).
        #[arg(long, value_name = "HOST:PORT")]
        to: String,
        /// How Citus copies the tables: auto, force_logical or block_writes.
        #[arg(long, default_value = "auto")]
        mode: String,
    },
    /// On a Citus cluster: distribute tenant schemas made before the database
    /// ran Citus (each is copied, data included, to one node).
    Distribute {
        /// The schema names (default with --all: every tenant not yet distributed).
        schemas: Vec<String>,
        /// Every tenant whose schema is not distributed yet.
        #[arg(long, conflicts_with = "schemas")]
        all: bool,
    },
    /// Dump a tenant to one file: its schema (tables, data, migration
    /// ledger; pg_dump's custom format) and its registry rows (row, domains,
    /// journal entry).
    Dump {
        /// The schema name.
        schema: String,
        /// The file to write (default: standard output). Written whole or not
        /// at all.
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Restore a tenant from a file of `tenant dump`, in one transaction: a
    /// failed restore leaves no schema and no registry row behind.
    Restore {
        /// The file (`-`: standard input).
        file: PathBuf,
        /// Restore under this schema name instead of the dumped one (the
        /// dumped tenant may still exist).
        #[arg(long = "as", value_name = "SCHEMA")]
        as_schema: Option<String>,
        /// Leave the tenant's domains out (they route to the dumped tenant,
        /// when it still exists).
        #[arg(long)]
        without_domains: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum Domain {
    /// Route a domain to a tenant.
    Add {
        /// The tenant's schema.
        schema: String,
        /// The domain.
        domain: String,
        /// Make it the tenant's primary domain.
        #[arg(long)]
        primary: bool,
    },
    /// Remove a domain.
    Remove {
        /// The domain.
        domain: String,
    },
    /// List domains (of one tenant, or all).
    List {
        /// Only this tenant's domains.
        schema: Option<String>,
    },
}

#[derive(Debug, Args)]
pub(crate) struct Exec {
    /// The SQL to run.
    #[arg(long, conflicts_with = "file", required_unless_present = "file")]
    pub(crate) sql: Option<String>,
    /// A file of SQL to run.
    #[arg(long)]
    pub(crate) file: Option<PathBuf>,
    /// Only this tenant (repeatable; default: every active tenant).
    #[arg(long = "schema", value_name = "SCHEMA")]
    pub(crate) schemas: Vec<String>,
    /// Tenants run in parallel, each on its own connection.
    #[arg(long, default_value_t = 1)]
    pub(crate) jobs: usize,
    /// Stop at the first failing tenant; the tenants not started are reported
    /// as not run (default: continue and report).
    #[arg(long)]
    pub(crate) fail_fast: bool,
}
