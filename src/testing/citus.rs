//! The Citus harness: a throwaway Citus cluster (a coordinator and workers,
//! each a throwaway cluster with Citus loaded), the one a process shares, and a
//! database per test on it with schema-based sharding on.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use diesel::connection::SimpleConnection;
use diesel::migration::MigrationSource;
use diesel::pg::{Pg, PgConnection};
use diesel::prelude::*;

use super::TestingError;
use super::cluster::{TestCluster, find_bin_dir};
use super::database::{database_url_for, fresh_database_name, migrated, small_pool_builder};
use super::error::db_err;
use super::sql::{connect, execute, node, sql_literal};
use crate::{SchemaName, TenantPool, TenantPoolBuilder};

/// The settings every Citus node starts with, on top of a [`TestCluster`]'s.
const CITUS_SETTINGS: &[(&str, &str)] = &[
    ("shared_preload_libraries", "citus"),
    // Logical replication: shard and schema moves in the default mode.
    ("wal_level", "logical"),
    ("max_wal_senders", "20"),
    ("max_replication_slots", "20"),
    // Citus runs a maintenance daemon per database (and each test has a
    // database of its own), plus background task executors.
    ("max_worker_processes", "128"),
];

/// Whether the Citus extension is installed for the PostgreSQL binaries that
/// testing would use: `citus.so` in the directory that their `pg_config
/// --pkglibdir` names, or in `<bindir>/../lib` (`<bindir>` being where the
/// `postgres` binary is, symbolic links followed).
pub fn citus_installed() -> bool {
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    *INSTALLED.get_or_init(|| {
        // The server finds its libraries from where its binary really is (a
        // `postgres` on PATH may be a symbolic link into the installation).
        find_bin_dir()
            .ok()
            .and_then(|dir| std::fs::canonicalize(dir.join("postgres")).ok())
            .and_then(|postgres| Some(postgres.parent()?.to_path_buf()))
            .is_some_and(|bin| citus_in(&bin))
    })
}

/// Whether `citus.so` is where the server in `bin` loads libraries from.
fn citus_in(bin: &Path) -> bool {
    let pkglibdir = Command::new(bin.join("pg_config"))
        .arg("--pkglibdir")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    pkglibdir
        .into_iter()
        .chain([bin.join("..").join("lib")])
        .any(|dir| dir.join("citus.so").is_file())
}

/// Whether the Citus tests must run rather than skip: the environment variable
/// `DIESEL_TENANCY_REQUIRE_CITUS` is `1`.
pub fn citus_required() -> bool {
    std::env::var("DIESEL_TENANCY_REQUIRE_CITUS").is_ok_and(|v| v.trim() == "1")
}

/// A throwaway Citus cluster: a coordinator and worker nodes, each a
/// [`TestCluster`] (so with the same clean-up at drop or at the end of the
/// process) started with `shared_preload_libraries = 'citus'`,
/// `wal_level = logical` and room for Citus' replication slots and background
/// workers.
///
/// In the `postgres` database of every node the `citus` extension is created,
/// and on the coordinator the coordinator and every worker are registered:
/// [`CitusDatabase`] relies on that to propagate `CREATE DATABASE`.
#[derive(Debug)]
pub struct CitusCluster {
    coordinator: TestCluster,
    workers: Vec<TestCluster>,
}

impl CitusCluster {
    /// Starts a coordinator and `workers` workers (side by side, so in about
    /// the time of one) and joins them into one cluster.
    pub fn start(workers: usize) -> Result<CitusCluster, TestingError> {
        if !citus_installed() {
            return Err(TestingError::CitusNotInstalled);
        }
        let mut nodes = in_parallel(workers + 1, |_| {
            let node = TestCluster::start_with(CITUS_SETTINGS)?;
            execute(node.admin_url(), &["CREATE EXTENSION citus"])?;
            Ok(node)
        })?;
        let coordinator = nodes.remove(0);
        let cluster = CitusCluster {
            coordinator,
            workers: nodes,
        };
        let mut setup = vec![format!(
            "SELECT citus_set_coordinator_host('127.0.0.1', {})",
            cluster.coordinator.port().unwrap_or_default()
        )];
        setup.extend(cluster.workers.iter().map(|w| {
            format!(
                "SELECT citus_add_node('127.0.0.1', {})",
                w.port().unwrap_or_default()
            )
        }));
        execute(cluster.coordinator_url(), &setup)?;
        Ok(cluster)
    }

    /// A URL to the coordinator's `postgres` database, as the `postgres`
    /// superuser, over TCP on 127.0.0.1.
    pub fn coordinator_url(&self) -> &str {
        self.coordinator.admin_url()
    }

    /// URLs to the workers' `postgres` databases, in the same form as
    /// [`coordinator_url`](Self::coordinator_url).
    pub fn worker_urls(&self) -> Vec<String> {
        self.workers
            .iter()
            .map(|w| w.admin_url().to_owned())
            .collect()
    }
}

/// The Citus cluster shared by every [`CitusDatabase`] of this process: a
/// coordinator and 2 workers, started on first use.
pub fn shared_citus_cluster() -> Result<&'static CitusCluster, TestingError> {
    static CLUSTER: OnceLock<Result<CitusCluster, String>> = OnceLock::new();
    CLUSTER
        .get_or_init(|| CitusCluster::start(2).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| TestingError::Shared(e.clone()))
}

/// A database of its own for one test on a Citus cluster, with schema-based
/// sharding on: every schema created in it (so every tenant) is distributed,
/// its tables placed together on one worker.
///
/// The database is created on the coordinator and on every worker, with the
/// `citus` extension in each; the coordinator and the first worker are
/// registered as its nodes (Citus keeps its node list per database), so
/// distributed schemas land on that worker; [`add_worker`](Self::add_worker)
/// registers the next. Dropped again on every node when this value is dropped.
///
/// ```no_run
/// use diesel_tenancy::testing::{self, CitusDatabase};
/// use diesel_migrations::{EmbeddedMigrations, embed_migrations};
///
/// const SHARED: EmbeddedMigrations = embed_migrations!("migrations_shared");
/// const TENANT: EmbeddedMigrations = embed_migrations!("migrations_tenant");
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// if !testing::citus_installed() && !testing::citus_required() {
///     return Ok(()); // skipped
/// }
/// let db = CitusDatabase::new()?;
/// let pool = db.migrated_pool(SHARED)?;
/// let acme = testing::create_tenant(&pool, "acme", TENANT)?; // on worker 0
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct CitusDatabase {
    url: String,
    admin_url: String,
    name: SchemaName,
    /// The coordinator's host and port as its `pg_dist_node` lists them.
    coordinator: (String, u16),
    /// Every worker of the cluster, in the coordinator's order.
    workers: Vec<CitusWorker>,
    /// How many of `workers` are nodes of this database.
    added: std::sync::Mutex<usize>,
}

impl CitusDatabase {
    /// Creates the database.
    ///
    /// With `DIESEL_TENANCY_CITUS_URL` set (the admin URL of a running
    /// coordinator), it is made on that cluster, whose workers are those the
    /// `pg_dist_node` of the database named in that URL lists; otherwise on
    /// [`shared_citus_cluster`] if Citus is installed
    /// ([`citus_installed`]); otherwise the error is
    /// [`TestingError::CitusNotInstalled`].
    pub fn new() -> Result<CitusDatabase, TestingError> {
        let db = Self::without_citus()?;
        db.enable_citus()?;
        Ok(db)
    }

    /// Creates the database on the cluster [`new`](Self::new) would use (on
    /// the coordinator and every worker), but without the `citus` extension
    /// in it: a single-server database, for testing a move to Citus with
    /// [`enable_citus`](Self::enable_citus).
    pub fn without_citus() -> Result<CitusDatabase, TestingError> {
        let admin_url = match std::env::var("DIESEL_TENANCY_CITUS_URL") {
            Ok(url) if !url.trim().is_empty() => url,
            _ if citus_installed() => shared_citus_cluster()?.coordinator_url().to_owned(),
            _ => return Err(TestingError::CitusNotInstalled),
        };
        let (coordinator, workers) = citus_nodes(&admin_url)?;
        let name = fresh_database_name("dt_citus");
        execute(
            &admin_url,
            &[
                "SET citus.enable_create_database_propagation TO on".into(),
                format!("CREATE DATABASE {}", name.quoted()),
            ],
        )?;
        Ok(CitusDatabase {
            url: database_url_for(&admin_url, name.as_str())?,
            admin_url,
            name,
            coordinator,
            workers,
            added: std::sync::Mutex::new(0),
        })
    }

    /// Makes this database a Citus one, as [`new`](Self::new) does: creates
    /// the `citus` extension in it on the coordinator and on every worker,
    /// registers the coordinator and the first worker as its nodes and turns
    /// schema-based sharding on (for sessions that start afterwards). Returns
    /// the host and port of the node that takes the shards: the first worker,
    /// or on a cluster without workers the coordinator itself.
    pub fn enable_citus(&self) -> Result<(String, u16), TestingError> {
        let urls: Vec<String> = std::iter::once(self.url.clone())
            .chain((0..self.workers()).filter_map(|i| self.worker_url(i)))
            .collect();
        in_parallel(urls.len(), |i| {
            execute(&urls[i], &["CREATE EXTENSION citus"])
        })?;
        let (host, port) = &self.coordinator;
        let host = sql_literal(host);
        execute(
            &self.url,
            &[
                format!("SELECT citus_set_coordinator_host({host}, {port})"),
                format!(
                    "ALTER DATABASE {} SET citus.enable_schema_based_sharding TO on",
                    self.name.quoted()
                ),
            ],
        )?;
        if !self.workers.is_empty() {
            return self.add_worker();
        }
        // A single node: the coordinator holds the shards.
        execute(
            &self.url,
            &[format!(
                "SELECT citus_set_node_property({host}, {port}, 'shouldhaveshards', true)"
            )],
        )?;
        Ok(self.coordinator.clone())
    }

    /// The database's URL on the coordinator (the one an application uses).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL of this database on worker `i` (counted from 0, over all the
    /// cluster's workers, whether nodes of this database yet or not), for
    /// looking at what Citus placed there.
    pub fn worker_url(&self, i: usize) -> Option<String> {
        database_url_for(&self.workers.get(i)?.admin_url, self.name.as_str()).ok()
    }

    /// How many workers the cluster has.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Registers the next worker of the cluster that is not a node of this
    /// database yet (`citus_add_node`), and returns its host and port. New
    /// distributed schemas may then be placed on it, and existing ones moved
    /// there (`citus_schema_move`, after `replicate_reference_tables()`).
    pub fn add_worker(&self) -> Result<(String, u16), TestingError> {
        let mut added = self.added.lock().unwrap_or_else(|e| e.into_inner());
        let Some(CitusWorker { host, port, .. }) = self.workers.get(*added) else {
            return Err(TestingError::Database {
                action: format!("add a worker to Citus database {}", self.name),
                source: format!("all {} workers of the cluster are nodes already", *added).into(),
            });
        };
        execute(
            &self.url,
            &[format!(
                "SELECT citus_add_node({}, {port})",
                sql_literal(host)
            )],
        )?;
        *added += 1;
        Ok((host.clone(), *port))
    }

    /// A pool builder for this database (on the coordinator), with a small pool
    /// (4 connections) and a short checkout timeout (10 seconds).
    pub fn pool_builder(&self) -> TenantPoolBuilder {
        small_pool_builder(&self.url)
    }

    /// A pool on this database, with the registry installed and the shared
    /// migrations run.
    pub fn migrated_pool<S: MigrationSource<Pg>>(
        &self,
        shared_migrations: S,
    ) -> Result<TenantPool, TestingError> {
        migrated(self.pool_builder(), shared_migrations)
    }
}

impl Drop for CitusDatabase {
    fn drop(&mut self) {
        let name = self.name.quoted();
        let nodes: Vec<&str> = std::iter::once(self.admin_url.as_str())
            .chain(self.workers.iter().map(|w| w.admin_url.as_str()))
            .collect();
        // Every statement is tried, whatever became of the one before.
        let run = |url: &str, statements: &[String]| {
            if let Ok(mut conn) = PgConnection::establish(url) {
                for sql in statements {
                    let _ = conn.batch_execute(sql);
                }
            }
        };
        // Citus' daemons on every node connect to the database on the others,
        // and a connection that comes in while `DROP DATABASE` runs, even one
        // that will be refused, makes it fail (even `WITH (FORCE)`). So first
        // every copy refuses connections and loses those it has.
        for url in &nodes {
            run(
                url,
                &[
                    "SET citus.enable_ddl_propagation TO off".into(),
                    format!("ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false"),
                    format!(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE datname = {} AND pid <> pg_backend_pid()",
                        sql_literal(self.name.as_str())
                    ),
                ],
            );
        }
        // Dropped on the coordinator, propagated to the workers (which also
        // removes it from Citus' distributed objects); then on each worker on
        // its own, in case its part failed (Citus only warns then).
        for (i, url) in nodes.iter().enumerate() {
            let propagate = if i == 0 { "on" } else { "off" };
            run(
                url,
                &[
                    format!("SET citus.enable_create_database_propagation TO {propagate}"),
                    format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                ],
            );
        }
    }
}

/// A worker of a Citus cluster.
#[derive(Debug)]
struct CitusWorker {
    /// The URL of its `postgres` database (or the one the coordinator's URL names).
    admin_url: String,
    /// Its host and port as the coordinator's `pg_dist_node` lists them.
    host: String,
    port: u16,
}

/// The coordinator's host and port, and the workers, from the `pg_dist_node`
/// of the database of `admin_url`.
fn citus_nodes(admin_url: &str) -> Result<((String, u16), Vec<CitusWorker>), TestingError> {
    #[derive(QueryableByName)]
    struct Node {
        #[diesel(sql_type = diesel::sql_types::Text)]
        nodename: String,
        #[diesel(sql_type = diesel::sql_types::Integer)]
        nodeport: i32,
        #[diesel(sql_type = diesel::sql_types::Integer)]
        groupid: i32,
    }
    let url = url::Url::parse(admin_url).map_err(db_err(
        "parse the Citus coordinator's URL (it must be a postgres:// URL)",
    ))?;
    let nodes: Vec<Node> = diesel::sql_query(
        "SELECT nodename::text AS nodename, nodeport, groupid FROM pg_dist_node \
         WHERE noderole = 'primary' ORDER BY nodeid",
    )
    .load(&mut connect(admin_url)?)
    .map_err(db_err(format!(
        "read the Citus node list (pg_dist_node) of {}",
        node(admin_url)
    )))?;
    let port = |p: i32| u16::try_from(p).unwrap_or_default();
    let coordinator = nodes
        .iter()
        .find(|n| n.groupid == 0)
        .map(|n| (n.nodename.clone(), port(n.nodeport)))
        .unwrap_or_else(|| {
            let host = url.host_str().unwrap_or("localhost").to_owned();
            (host, url.port().unwrap_or(5432))
        });
    let workers = nodes
        .iter()
        .filter(|n| n.groupid != 0)
        .map(|n| {
            let mut worker = url.clone();
            worker
                .set_host(Some(&n.nodename))
                .map_err(db_err(format!("build a URL for worker {}", n.nodename)))?;
            let _ = worker.set_port(Some(port(n.nodeport)));
            Ok(CitusWorker {
                admin_url: worker.into(),
                host: n.nodename.clone(),
                port: port(n.nodeport),
            })
        })
        .collect::<Result<_, TestingError>>()?;
    Ok((coordinator, workers))
}

/// Runs `f(0)`, …, `f(n - 1)`, each on a thread of its own, and returns their
/// results in order (or the first error).
fn in_parallel<T: Send>(
    n: usize,
    f: impl Fn(usize) -> Result<T, TestingError> + Sync,
) -> Result<Vec<T>, TestingError> {
    std::thread::scope(|s| {
        let f = &f;
        let threads: Vec<_> = (0..n).map(|i| s.spawn(move || f(i))).collect();
        threads
            .into_iter()
            .map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}
