//! Test support: a throwaway PostgreSQL cluster, a database per test, and tenant
//! fixtures (the equivalent of django-tenants' `TenantTestCase`).
//!
//! [`TestDatabase::new`] gives each test its own database, so tests run in
//! parallel. With `DATABASE_URL` set, the databases are made on that server and
//! dropped afterwards. Without it, the first call starts a private cluster from
//! the machine's PostgreSQL binaries (found on `PATH` or under
//! `/usr/lib/postgresql/<version>/bin`), with its data and socket in a temporary
//! directory (under `/dev/shm` when there is one, so in memory), a free loopback
//! port below the kernel's ephemeral port range (another is tried if the server
//! cannot bind it) and durability turned off; when the process
//! ends, however it ends, the cluster is stopped and its directory removed. Run as
//! root, the server runs as the `postgres` system user, since PostgreSQL refuses
//! to run as root.
//!
//! ```no_run
//! use diesel_tenancy::testing::{self, TestDatabase};
//! use diesel_migrations::{EmbeddedMigrations, embed_migrations};
//!
//! const SHARED: EmbeddedMigrations = embed_migrations!("migrations_shared");
//! const TENANT: EmbeddedMigrations = embed_migrations!("migrations_tenant");
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let db = TestDatabase::new()?;
//! let pool = db.migrated_pool(SHARED)?;
//! let acme = testing::create_tenant(&pool, "acme", TENANT)?;
//! let conn = pool.get(&acme)?;
//! # Ok(()) }
//! ```
//!
//! [`CitusDatabase::new`] does the same on a Citus cluster (a coordinator and
//! workers, with schema-based sharding on, so every tenant schema is
//! distributed): on the cluster whose coordinator `DIESEL_TENANCY_CITUS_URL`
//! names, if set; otherwise, when the Citus extension is installed
//! ([`citus_installed`]), on a throwaway [`CitusCluster`] of a coordinator and
//! two workers, each started like the cluster above.

use std::io::Read as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use diesel::connection::SimpleConnection;
use diesel::migration::MigrationSource;
use diesel::pg::{Pg, PgConnection};
use diesel::prelude::*;

use crate::{
    Domain, Error, NewTenant, SchemaName, Tenant, TenantPool, TenantPoolBuilder,
    run_shared_migrations,
};

/// Why a test database could not be provided.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestingError {
    /// No PostgreSQL server binaries were found.
    #[error(
        "PostgreSQL server binaries (initdb, postgres) were not found on PATH or under /usr/lib/postgresql/*/bin; \
         install them (Debian/Ubuntu: apt-get install postgresql) or set DATABASE_URL to a server to use"
    )]
    PostgresNotFound,
    /// Running as root, but there is no `postgres` user to run the server as.
    #[error(
        "running as root, and PostgreSQL refuses to run as root: create a 'postgres' system user \
         (apt-get install postgresql does) or set DATABASE_URL"
    )]
    NoPostgresUser,
    /// A file or process operation failed.
    #[error("{action}")]
    Io {
        /// What was being done.
        action: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `initdb` failed.
    #[error("initdb failed: {output}")]
    InitDb {
        /// What it printed.
        output: String,
    },
    /// The server did not start.
    #[error("the throwaway PostgreSQL server did not start: {log}")]
    ServerStart {
        /// The end of the server's log.
        log: String,
    },
    /// The server could not be reached or a database could not be created.
    #[error("{action}")]
    Database {
        /// What was being done.
        action: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A tenancy operation failed.
    #[error(transparent)]
    Tenancy(#[from] Error),
    /// The shared throwaway cluster failed to start earlier in this process.
    #[error("the throwaway PostgreSQL cluster could not be started: {0}")]
    Shared(String),
    /// A Citus cluster was asked for, but the Citus extension is not installed
    /// for the PostgreSQL binaries in use and `DIESEL_TENANCY_CITUS_URL` is not set.
    #[error(
        "the Citus extension (citus.so) is not installed for the PostgreSQL server in use: \
         build and install it from source (the project's .ci/run does so with a script), \
         or set DIESEL_TENANCY_CITUS_URL to the admin URL of a running Citus coordinator \
         whose pg_dist_node lists its workers"
    )]
    CitusNotInstalled,
}

fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> TestingError {
    let action = action.into();
    move |source| TestingError::Io { action, source }
}

fn db_err<E: std::error::Error + Send + Sync + 'static>(
    action: impl Into<String>,
) -> impl FnOnce(E) -> TestingError {
    let action = action.into();
    move |e| TestingError::Database {
        action,
        source: Box::new(e),
    }
}

/// A private PostgreSQL cluster in a temporary directory.
///
/// Dropping it stops the server and removes the directory; so does the end of the
/// process, even a crash, because a small supervisor shell waits on a pipe that
/// only this process holds open.
#[derive(Debug)]
pub struct TestCluster {
    admin_url: String,
    dir: PathBuf,
    supervisor: Supervisor,
}

impl TestCluster {
    /// Initialises and starts a new cluster. Takes about a second.
    ///
    /// The server listens on a loopback port below the kernel's ephemeral port
    /// range (`/proc/sys/net/ipv4/ip_local_port_range`), where no outgoing
    /// connection can hold it as its local end. If the server still cannot start
    /// there (another process took the port meanwhile), a few other ports are
    /// tried; the error names them and carries the server's log.
    pub fn start() -> Result<TestCluster, TestingError> {
        Self::start_with(&[])
    }

    /// [`start`](Self::start) with `settings` (name, value) added to the
    /// server's configuration.
    fn start_with(settings: &[(&str, &str)]) -> Result<TestCluster, TestingError> {
        Self::start_on(free_ports(), settings)
    }

    /// [`start_with`](Self::start_with) on the first of `ports` the server
    /// starts on, trying at most [`START_ATTEMPTS`] of them.
    fn start_on(
        ports: impl IntoIterator<Item = u16>,
        settings: &[(&str, &str)],
    ) -> Result<TestCluster, TestingError> {
        let bin = find_bin_dir()?;
        let run_as = server_user()?;
        let dir = base_dir().join(format!(
            "diesel-tenancy-pg-{}-{}",
            std::process::id(),
            unique_suffix()
        ));
        std::fs::create_dir(&dir).map_err(io(format!("create {}", dir.display())))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io(format!("set permissions on {}", dir.display())))?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .map_err(io(format!("give {} to the postgres user", dir.display())))?;
        }
        let data = dir.join("data");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"])
            .args(["--no-sync", "--no-instructions"])
            .current_dir(&dir)
            .stdin(Stdio::null());
        as_user(&mut initdb, run_as);
        let out = initdb.output().map_err(io("run initdb"))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(TestingError::InitDb {
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            });
        }
        let conf: String = settings
            .iter()
            .map(|(name, value)| format!("{name} = '{}'\n", value.replace('\'', "''")))
            .collect();
        if let Err(e) = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, conf.as_bytes()))
        {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(io("add settings to postgresql.conf")(e));
        }
        // The supervisor: starts the server, waits until the pipe on its stdin
        // closes (this process ended or dropped the cluster), then stops the
        // server and removes the directory.
        // The server listens on the port in `$3/port`. A server that never came
        // up (its port taken, say) is not started again: the script renames the
        // port file to `failed-<port>` and waits for a new one, so that `start`
        // can try another port. Once `start` has seen the server up (`$3/up`),
        // it is started again whenever it stops, until told to stop (see
        // `restart`).
        let script = r#"
(
    while [ ! -e "$3/stop" ]; do
        if [ -e "$3/port" ]; then
            port=$(cat "$3/port")
            "$1" -D "$2" -p "$port" -k "$3" -h 127.0.0.1 \
                -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
                -c max_connections=300 -c shared_buffers=32MB -c max_locks_per_transaction=256 \
                >>"$3/server.log" 2>&1
            [ -e "$3/up" ] || mv -f "$3/port" "$3/failed-$port"
        fi
        [ -e "$3/stop" ] || sleep 0.1
    done
) &
loop=$!
cat >/dev/null
touch "$3/stop"
[ -s "$2/postmaster.pid" ] && kill -INT "$(head -n 1 "$2/postmaster.pid")" 2>/dev/null
wait "$loop"
rm -rf "$3"
"#;
        let supervisor = Supervisor::spawn(
            script,
            &[
                bin.join("postgres").as_os_str(),
                data.as_os_str(),
                dir.as_os_str(),
            ],
            &dir,
            run_as,
        )?;
        let mut cluster = TestCluster {
            admin_url: String::new(),
            dir,
            supervisor,
        };
        let mut tried = Vec::new();
        for port in ports.into_iter().take(START_ATTEMPTS) {
            tried.push(port.to_string());
            cluster.admin_url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
            // Written whole, then renamed: the script never reads half a port.
            let next = cluster.dir.join("port.next");
            std::fs::write(&next, port.to_string()).map_err(io("write the server's port"))?;
            if let Some((uid, gid)) = run_as {
                std::os::unix::fs::chown(&next, Some(uid), Some(gid))
                    .map_err(io("give the port file to the postgres user"))?;
            }
            std::fs::rename(&next, cluster.dir.join("port"))
                .map_err(io("write the server's port"))?;
            match cluster.wait_ready(Some(port))? {
                Ready::Up => {
                    std::fs::write(cluster.dir.join("up"), "")
                        .map_err(io("mark the server as up"))?;
                    return Ok(cluster);
                }
                Ready::Failed => continue,
            }
        }
        let log = read_log(&cluster.dir.join("server.log"));
        Err(TestingError::ServerStart {
            log: if tried.is_empty() {
                "no free loopback port outside the ephemeral port range".to_owned()
            } else {
                format!("tried port(s) {}; server log:\n{log}", tried.join(", "))
            },
        })
    }

    /// Waits until the server accepts connections on its own socket (so never
    /// another server that holds the TCP port). `Failed`: the start on `port`
    /// failed (the server exited without coming up), and another port may be
    /// tried.
    fn wait_ready(&mut self, port: Option<u16>) -> Result<Ready, TestingError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let failed = port.map(|p| self.dir.join(format!("failed-{p}")));
        loop {
            let Some(port) = self.port() else {
                return Err(TestingError::ServerStart {
                    log: "the server has no port".into(),
                });
            };
            match PgConnection::establish(&socket_url(&self.dir, port)) {
                Ok(_) => return Ok(Ready::Up),
                Err(e) => {
                    if failed.as_ref().is_some_and(|f| f.exists()) {
                        return Ok(Ready::Failed);
                    }
                    if self.supervisor.exited() || Instant::now() > deadline {
                        let mut log = read_log(&self.dir.join("server.log"));
                        if log.is_empty() {
                            log = e.to_string();
                        }
                        return Err(TestingError::ServerStart { log });
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// The port in the admin URL.
    fn port(&self) -> Option<u16> {
        url::Url::parse(&self.admin_url).ok()?.port()
    }

    /// Restarts the server (a fast shutdown, then a start) and waits until it
    /// accepts connections again, for tests of what survives a restart. Every
    /// open connection is cut.
    pub fn restart(&mut self) -> Result<(), TestingError> {
        let pidfile = self.dir.join("data").join("postmaster.pid");
        let pid = std::fs::read_to_string(&pidfile)
            .map_err(io("read postmaster.pid"))?
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_owned();
        let status = Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .map_err(io("signal the server"))?;
        if !status.success() {
            return Err(TestingError::ServerStart {
                log: format!("could not signal server process {pid}"),
            });
        }
        // Wait for the old server to go, then for the new one.
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::fs::read_to_string(&pidfile).is_ok_and(|p| p.lines().next() == Some(&pid)) {
            if Instant::now() > deadline {
                return Err(TestingError::ServerStart {
                    log: "the server did not stop".into(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.wait_ready(None).map(|_| ())
    }

    /// A URL to the cluster's `postgres` database, as the `postgres` superuser.
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// The temporary directory holding the cluster's data, socket and `server.log`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// A supervisor shell: it runs `script` (which starts a server in the
/// background, then waits on `cat` for its stdin to close, then stops the server
/// and removes the directory). Only this process holds the pipe, so the end of
/// the process, even a crash, closes it; dropping the supervisor closes it too
/// and waits for the clean-up.
#[derive(Debug)]
struct Supervisor {
    child: Child,
    pipe: Option<ChildStdin>,
}

impl Supervisor {
    fn spawn(
        script: &str,
        args: &[&std::ffi::OsStr],
        dir: &Path,
        run_as: Option<(u32, u32)>,
    ) -> Result<Supervisor, TestingError> {
        let mut sh = Command::new("/bin/sh");
        sh.arg("-c")
            .arg(script)
            .arg("sh")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: a Ctrl-C on the test run reaches the
            // supervisor only through the pipe, after which it cleans up.
            .process_group(0);
        as_user(&mut sh, run_as);
        let mut child = sh.spawn().map_err(io("start a supervisor shell"))?;
        let pipe = child.stdin.take();
        Ok(Supervisor { child, pipe })
    }

    fn exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        drop(self.pipe.take());
        let _ = self.child.wait();
    }
}

/// A server's log file, or nothing.
fn read_log(path: &Path) -> String {
    let mut log = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut log);
    }
    log
}

/// Where throwaway clusters live: `/dev/shm` (memory) where it exists, since a
/// throwaway cluster's data need not survive and schema-heavy work (every table
/// is a file) runs several times faster there; otherwise the temp directory.
fn base_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    let writable =
        shm.is_dir() && std::fs::metadata(shm).is_ok_and(|m| m.permissions().mode() & 0o002 != 0);
    if writable {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

fn unique_suffix() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}_{nanos}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

fn find_bin_dir() -> Result<PathBuf, TestingError> {
    find_bin_dir_in(
        std::env::var_os("PG_BIN_DIR").map(PathBuf::from),
        std::env::var_os("PATH"),
        Path::new("/usr/lib/postgresql"),
    )
}

/// `PG_BIN_DIR` if it holds the server, else the first `PATH` entry that does,
/// else the newest `<lib_root>/<version>/bin`.
fn find_bin_dir_in(
    explicit: Option<PathBuf>,
    path: Option<std::ffi::OsString>,
    lib_root: &Path,
) -> Result<PathBuf, TestingError> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(dir) = explicit.filter(|d| has_server(d)) {
        return Ok(dir);
    }
    if let Some(path) = path {
        if let Some(dir) = std::env::split_paths(&path).find(|d| has_server(d)) {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(lib_root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            has_server(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .ok_or(TestingError::PostgresNotFound)
}

/// `Some((uid, gid))` of the `postgres` user when running as root.
fn server_user() -> Result<Option<(u32, u32)>, TestingError> {
    let euid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .map_err(io("read /proc/self"))?;
    if euid != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(io("read /etc/passwd"))?;
    passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 3 && f[0] == "postgres")
        .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
        .map(Some)
        .ok_or(TestingError::NoPostgresUser)
}

fn as_user(cmd: &mut Command, user: Option<(u32, u32)>) {
    if let Some((uid, gid)) = user {
        cmd.uid(uid)
            .gid(gid)
            .env("HOME", "/tmp")
            .env("USER", "postgres");
    }
}

/// How many ports [`TestCluster::start`] tries before it gives up.
const START_ATTEMPTS: usize = 5;

/// Whether a start attempt came up.
enum Ready {
    Up,
    Failed,
}

/// A libpq URL for the server's Unix socket in `dir`: only this cluster's
/// server listens there.
fn socket_url(dir: &Path, port: u16) -> String {
    let quoted = dir
        .to_string_lossy()
        .replace('\\', "\\\\")
        .replace('\'', "\\'");
    format!("host='{quoted}' port={port} user=postgres dbname=postgres connect_timeout=5")
}

/// The kernel's ephemeral port range (the local ports it gives outgoing
/// connections), or Linux's default if it cannot be read.
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| parse_port_range(&s))
        .unwrap_or((32768, 60999))
}

fn parse_port_range(s: &str) -> Option<(u16, u16)> {
    let mut it = s.split_whitespace().map(str::parse::<u16>);
    let (lo, hi) = (it.next()?.ok()?, it.next()?.ok()?);
    (lo <= hi).then_some((lo, hi))
}

/// Every loopback port a throwaway server may use, outside the ephemeral
/// range `(lo, hi)`: from 20000 (or 1024, if the range starts lower) up to
/// `lo`, then above `hi`; rotated to start at `seed` (so that concurrent
/// processes start at different places).
fn port_candidates((lo, hi): (u16, u16), seed: u32) -> Vec<u16> {
    let from = if lo > 20000 { 20000 } else { 1024 };
    let mut ports: Vec<u16> = (from..lo).chain(hi.saturating_add(1)..=u16::MAX).collect();
    ports.retain(|p| *p >= 1024 && !(lo..=hi).contains(p));
    if !ports.is_empty() {
        let n = ports.len();
        ports.rotate_left(seed as usize % n);
    }
    ports
}

/// Whether nothing holds `127.0.0.1:port` now (bound the way a server binds
/// it; a port an outgoing connection holds fails too).
fn port_is_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Free loopback ports outside the ephemeral range, checked one by one as
/// they are taken from the iterator.
fn free_ports() -> impl Iterator<Item = u16> {
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id()
        .wrapping_mul(7919)
        .wrapping_add(CALLS.fetch_add(1, Ordering::Relaxed).wrapping_mul(101));
    port_candidates(ephemeral_range(), seed)
        .into_iter()
        .filter(|p| port_is_free(*p))
}

fn free_port() -> Result<u16, TestingError> {
    free_ports().next().ok_or_else(|| TestingError::Io {
        action: "find a free loopback port outside the ephemeral port range".into(),
        source: std::io::ErrorKind::AddrInUse.into(),
    })
}

/// The cluster shared by every [`TestDatabase`] of this process.
pub fn shared_cluster() -> Result<&'static TestCluster, TestingError> {
    static CLUSTER: OnceLock<Result<TestCluster, String>> = OnceLock::new();
    CLUSTER
        .get_or_init(|| TestCluster::start().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| TestingError::Shared(e.clone()))
}

/// A database of its own for one test (or one example run).
///
/// Made on the server at `DATABASE_URL` if set (and dropped again when this value
/// is dropped), otherwise in the process's throwaway cluster.
#[derive(Debug)]
pub struct TestDatabase {
    url: String,
    admin_url: String,
    name: SchemaName,
    external: bool,
}

impl TestDatabase {
    /// Creates a fresh, empty database.
    pub fn new() -> Result<TestDatabase, TestingError> {
        let (admin_url, external) = match std::env::var("DATABASE_URL") {
            Ok(url) if !url.trim().is_empty() => (url, true),
            _ => (shared_cluster()?.admin_url().to_owned(), false),
        };
        let name = SchemaName::new(&format!(
            "dt_test_{}_{}",
            std::process::id(),
            unique_suffix()
        ))
        .expect("generated database names are valid identifiers");
        let mut admin = PgConnection::establish(&admin_url)
            .map_err(db_err("connect to the PostgreSQL server for tests"))?;
        admin
            .batch_execute(&format!("CREATE DATABASE {}", name.quoted()))
            .map_err(db_err(format!("create test database {name}")))?;
        let url = database_url_for(&admin_url, name.as_str())?;
        Ok(TestDatabase {
            url,
            admin_url,
            name,
            external,
        })
    }

    /// The database's connection URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A pool builder for this database, with a small pool (4 connections) and a
    /// short checkout timeout (10 seconds).
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

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if self.external {
            if let Ok(mut admin) = PgConnection::establish(&self.admin_url) {
                let _ = admin.batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name.quoted()
                ));
            }
        }
    }
}

/// `admin_url` pointed at database `name`.
fn database_url_for(admin_url: &str, name: &str) -> Result<String, TestingError> {
    if admin_url.contains("://") {
        let mut url = url::Url::parse(admin_url).map_err(db_err("parse DATABASE_URL"))?;
        url.set_path(&format!("/{name}"));
        Ok(url.into())
    } else {
        // A libpq key=value string: the last dbname wins.
        Ok(format!("{admin_url} dbname={name}"))
    }
}

/// Builds the pools of [`TestDatabase`] and [`CitusDatabase`].
fn small_pool_builder(url: &str) -> TenantPoolBuilder {
    TenantPool::builder(url.to_owned())
        .max_size(4)
        .connection_timeout(Duration::from_secs(10))
}

/// A pool from `builder`, with the registry installed and `shared_migrations` run.
fn migrated<S: MigrationSource<Pg>>(
    builder: TenantPoolBuilder,
    shared_migrations: S,
) -> Result<TenantPool, TestingError> {
    let pool = builder.build()?;
    pool.with_public(|conn| run_shared_migrations(conn, shared_migrations))?;
    Ok(pool)
}

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
        let name = SchemaName::new(&format!(
            "dt_citus_{}_{}",
            std::process::id(),
            unique_suffix()
        ))
        .expect("generated database names are valid identifiers");
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

fn connect(url: &str) -> Result<PgConnection, TestingError> {
    PgConnection::establish(url).map_err(db_err(format!("connect to {}", node(url))))
}

/// `url`'s host, port and database, for messages (without its credentials).
fn node(url: &str) -> String {
    url::Url::parse(url).map_or_else(
        |_| "the server".into(),
        |u| {
            let (host, port) = (u.host_str().unwrap_or(""), u.port().unwrap_or(5432));
            format!("{host}:{port}{}", u.path())
        },
    )
}

/// Runs `statements` one by one on a connection of their own to `url`.
fn execute(url: &str, statements: &[impl AsRef<str>]) -> Result<(), TestingError> {
    let mut conn = connect(url)?;
    for sql in statements {
        let sql = sql.as_ref();
        conn.batch_execute(sql)
            .map_err(db_err(format!("run `{sql}` on {}", node(url))))?;
    }
    Ok(())
}

/// `s` as an SQL string literal.
fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The host [`create_tenant`] routes to `tenant`: `<schema>.test.localhost`,
/// for test clients (`web::axum::TenantClient`, `web::actix::TenantRequests`).
pub fn tenant_host(tenant: &Tenant) -> String {
    format!("{}.test.localhost", tenant.schema())
}

/// Creates a tenant for a test: schema `schema`, display name `schema`, domain
/// `<schema>.test.localhost`, with every tenant migration applied.
pub fn create_tenant<S: MigrationSource<Pg>>(
    pool: &TenantPool,
    schema: &str,
    tenant_migrations: S,
) -> Result<Tenant, TestingError> {
    let schema = SchemaName::new(schema).map_err(Error::from)?;
    let domain = Domain::parse(&format!("{schema}.test.localhost")).map_err(Error::from)?;
    let new = NewTenant::new(schema.clone(), schema.as_str()).domain(domain);
    Ok(pool.with_public(|conn| crate::create_tenant(conn, &new, tenant_migrations))?)
}

/// A PgBouncer (Debian's `pgbouncer` package) in front of a test database, on a
/// free loopback port, for testing behaviour behind a transaction pooler. Stopped
/// and removed when dropped or when the process ends.
#[derive(Debug)]
pub struct PgBouncer {
    url: String,
    dir: PathBuf,
    /// Held for its `Drop`, which stops PgBouncer and removes `dir`.
    _supervisor: Supervisor,
}

impl PgBouncer {
    /// The `pgbouncer` binary, if installed.
    pub fn binary() -> Option<PathBuf> {
        ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
    }

    /// Starts PgBouncer in `pool_mode` (`"transaction"` or `"session"`) in front
    /// of the server of `database_url`, with `server_pool_size` server
    /// connections per database. [`PgBouncer::url`] is `database_url` through it.
    pub fn start(
        database_url: &str,
        pool_mode: &str,
        server_pool_size: u32,
    ) -> Result<PgBouncer, TestingError> {
        let bin = Self::binary().ok_or_else(|| TestingError::Database {
            action: "pgbouncer is not installed (apt-get install pgbouncer)".into(),
            source: "not found".into(),
        })?;
        let upstream = url::Url::parse(database_url).map_err(db_err("parse the database URL"))?;
        let host = upstream.host_str().unwrap_or("127.0.0.1").to_owned();
        let port = upstream.port().unwrap_or(5432);
        let user = match upstream.username() {
            "" => "postgres".to_owned(),
            u => u.to_owned(),
        };
        let run_as = server_user()?;
        let dir = base_dir().join(format!(
            "diesel-tenancy-pgbouncer-{}-{}",
            std::process::id(),
            unique_suffix()
        ));
        std::fs::create_dir(&dir).map_err(io(format!("create {}", dir.display())))?;
        let listen = free_port()?;
        let ini = format!(
            "[databases]\n* = host={host} port={port}\n\n[pgbouncer]\n\
             listen_addr = 127.0.0.1\nlisten_port = {listen}\nunix_socket_dir =\n\
             auth_type = trust\nauth_file = {dir}/userlist.txt\n\
             pool_mode = {pool_mode}\ndefault_pool_size = {server_pool_size}\n\
             max_client_conn = 500\nignore_startup_parameters = extra_float_digits,options\n\
             logfile = {dir}/pgbouncer.log\n",
            dir = dir.display()
        );
        std::fs::write(dir.join("pgbouncer.ini"), ini).map_err(io("write pgbouncer.ini"))?;
        std::fs::write(dir.join("userlist.txt"), format!("\"{user}\" \"\"\n"))
            .map_err(io("write userlist.txt"))?;
        if let Some((uid, gid)) = run_as {
            for f in ["", "pgbouncer.ini", "userlist.txt"] {
                std::os::unix::fs::chown(dir.join(f), Some(uid), Some(gid))
                    .map_err(io("give the pgbouncer directory to the postgres user"))?;
            }
        }
        let script = r#"
"$1" "$2/pgbouncer.ini" >/dev/null 2>&1 &
pid=$!
cat >/dev/null
kill -INT "$pid" 2>/dev/null
wait "$pid"
rm -rf "$2"
"#;
        let supervisor =
            Supervisor::spawn(script, &[bin.as_os_str(), dir.as_os_str()], &dir, run_as)?;
        let mut through = upstream.clone();
        through
            .set_host(Some("127.0.0.1"))
            .map_err(db_err("build the PgBouncer URL"))?;
        let _ = through.set_port(Some(listen));
        let bouncer = PgBouncer {
            url: through.into(),
            dir,
            _supervisor: supervisor,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match PgConnection::establish(&bouncer.url) {
                Ok(_) => return Ok(bouncer),
                Err(e) if Instant::now() > deadline => {
                    let log = read_log(&bouncer.dir.join("pgbouncer.log"));
                    return Err(TestingError::ServerStart {
                        log: format!("pgbouncer: {e}; {log}"),
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// The database URL, through PgBouncer.
    pub fn url(&self) -> &str {
        &self.url
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_installation_names_what_to_install() {
        let empty = std::env::temp_dir().join(format!("dt-no-pg-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        let err =
            find_bin_dir_in(Some(empty.clone()), Some(empty.clone().into()), &empty).unwrap_err();
        std::fs::remove_dir_all(&empty).unwrap();
        assert!(matches!(err, TestingError::PostgresNotFound));
        let message = err.to_string();
        assert!(message.contains("apt-get install postgresql"), "{message}");
        assert!(message.contains("DATABASE_URL"), "{message}");
    }

    #[test]
    fn finds_the_newest_versioned_install() {
        let root = std::env::temp_dir().join(format!("dt-pg-root-{}", std::process::id()));
        for v in ["9", "15", "13"] {
            let bin = root.join(v).join("bin");
            std::fs::create_dir_all(&bin).unwrap();
            std::fs::write(bin.join("initdb"), "").unwrap();
            std::fs::write(bin.join("postgres"), "").unwrap();
        }
        let found = find_bin_dir_in(None, None, &root).unwrap();
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(found, root.join("15").join("bin"));
    }

    #[test]
    fn ports_are_chosen_outside_the_ephemeral_range() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("60999 32768"), None);
        assert_eq!(parse_port_range(""), None);

        let ports = port_candidates((32768, 60999), 0);
        assert_eq!(ports[0], 20000, "from 20000 upward");
        assert_eq!(ports[1], 20001);
        assert!(ports.contains(&32767) && ports.contains(&61000) && ports.contains(&65535));
        assert!(ports.iter().all(|p| !(32768..=60999).contains(p)));
        assert_eq!(ports.len(), (32768 - 20000) + (65535 - 60999));
        // The seed rotates the order; the set stays the same.
        let rotated = port_candidates((32768, 60999), 5);
        assert_eq!(rotated[0], 20005);
        assert_eq!(rotated.len(), ports.len());

        let low = port_candidates((10000, 20000), 0);
        assert_eq!(low[0], 1024);
        assert!(low.iter().all(|p| !(10000..=20000).contains(p)));
        assert!(port_candidates((1024, 65535), 3).is_empty());

        let (lo, hi) = ephemeral_range();
        let p = free_port().unwrap();
        assert!(!(lo..=hi).contains(&p), "{p} in {lo}-{hi}");
    }

    /// A port nothing holds now, outside the ephemeral range (from a place of
    /// this process's own, away from other processes running these tests).
    fn unused_port(except: &[u16]) -> u16 {
        port_candidates(ephemeral_range(), std::process::id().wrapping_mul(7))
            .into_iter()
            .find(|p| !except.contains(p) && port_is_free(*p))
            .unwrap()
    }

    /// The tests that hold ports take turns, so that one never picks the port
    /// the other holds or is about to use.
    static PORT_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn a_server_whose_port_is_taken_starts_on_the_next_one() {
        let _turn = PORT_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        // Something holds the first port: the server cannot bind it (the way a
        // port held by another process's connection fails), so the harness
        // moves on to the second.
        let taken = unused_port(&[]);
        let _holder = std::net::TcpListener::bind(("127.0.0.1", taken)).unwrap();
        assert!(!port_is_free(taken));
        let next = unused_port(&[taken]);
        let cluster = TestCluster::start_on([taken, next], &[]).unwrap();
        assert_eq!(cluster.port(), Some(next));
        assert_eq!(
            cluster.admin_url(),
            format!("postgres://postgres@127.0.0.1:{next}/postgres")
        );
        let log = read_log(&cluster.dir().join("server.log"));
        assert!(log.contains("Address already in use"), "{log}");
        assert!(cluster.dir().join(format!("failed-{taken}")).exists());
        let mut conn = PgConnection::establish(cluster.admin_url()).unwrap();
        conn.batch_execute("SELECT 1").unwrap();
    }

    #[test]
    fn a_server_that_cannot_start_reports_its_ports_and_log() {
        let _turn = PORT_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        let taken = unused_port(&[]);
        let _holder = std::net::TcpListener::bind(("127.0.0.1", taken)).unwrap();
        let err = TestCluster::start_on([taken], &[]).unwrap_err();
        let TestingError::ServerStart { log } = &err else {
            panic!("{err:?}");
        };
        assert!(log.contains(&format!("tried port(s) {taken}")), "{log}");
        assert!(log.contains("Address already in use"), "{log}");
    }

    #[test]
    fn a_missing_citus_says_how_to_get_it() {
        let message = TestingError::CitusNotInstalled.to_string();
        assert!(message.contains(".ci/run"), "{message}");
        assert!(message.contains("DIESEL_TENANCY_CITUS_URL"), "{message}");
    }

    #[test]
    fn node_names_leave_credentials_out() {
        assert_eq!(node("postgres://u:secret@h:5/db"), "h:5/db");
        assert_eq!(
            node("postgres://127.0.0.1/postgres"),
            "127.0.0.1:5432/postgres"
        );
    }

    #[test]
    fn database_urls_point_at_the_new_database() {
        assert_eq!(
            database_url_for("postgres://u:p@h:5/postgres?sslmode=disable", "dt_x").unwrap(),
            "postgres://u:p@h:5/dt_x?sslmode=disable"
        );
        assert_eq!(
            database_url_for("host=/tmp port=5", "dt_x").unwrap(),
            "host=/tmp port=5 dbname=dt_x"
        );
    }
}
