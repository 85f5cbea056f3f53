//! The throwaway PostgreSQL cluster: finding the server binaries, `initdb`,
//! starting the server under a supervisor on a free port (another if that one
//! fails), restarting it, and the cluster shared by a process.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use diesel::pg::PgConnection;
use diesel::prelude::*;

use super::TestingError;
use super::error::io;
use super::ports::free_ports;
use super::supervisor::{RunAs, Supervisor, as_user, give_to, new_dir, read_log, server_user};

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

/// The settings every throwaway server starts with (written to its
/// `postgresql.conf` before the caller's own, which therefore override them):
/// no durability, and room for many connections and locks.
const DEFAULT_SETTINGS: &[(&str, &str)] = &[
    ("fsync", "off"),
    ("synchronous_commit", "off"),
    ("full_page_writes", "off"),
    ("max_connections", "300"),
    ("shared_buffers", "32MB"),
    ("max_locks_per_transaction", "256"),
];

/// The supervisor's script (`$1` the `postgres` binary, `$2` the data
/// directory, `$3` the cluster's directory): starts the server, waits until the
/// pipe on its stdin closes (this process ended or dropped the cluster), then
/// stops the server and removes the directory.
///
/// The server listens on the port in `$3/port`. A server that never came
/// up (its port taken, say) is not started again: the script renames the
/// port file to `failed-<port>` and waits for a new one, so that `start`
/// can try another port. Once `start` has seen the server up (`$3/up`),
/// it is started again whenever it stops, until told to stop (see
/// `restart`).
const SERVER_SCRIPT: &str = r#"
(
    while [ ! -e "$3/stop" ]; do
        if [ -e "$3/port" ]; then
            port=$(cat "$3/port")
            "$1" -D "$2" -p "$port" -k "$3" -h 127.0.0.1 >>"$3/server.log" 2>&1
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
    /// server's configuration. They come after the defaults (no durability,
    /// `max_connections` 300, `max_locks_per_transaction` 256, ...), so they
    /// override them: a test of what a low `max_locks_per_transaction` does
    /// starts its own server with `start_with(&[("max_locks_per_transaction",
    /// "10")])`.
    pub fn start_with(settings: &[(&str, &str)]) -> Result<TestCluster, TestingError> {
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
        let dir = new_dir("pg")?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io(format!("set permissions on {}", dir.display())))?;
        give_to(
            run_as,
            &dir,
            format!("give {} to the postgres user", dir.display()),
        )?;
        let data = dir.join("data");
        init_data(&bin, &dir, &data, settings, run_as)?;
        let supervisor = Supervisor::spawn(
            SERVER_SCRIPT,
            &[
                bin.join("postgres").as_os_str(),
                data.as_os_str(),
                dir.as_os_str(),
            ],
            &dir,
            run_as,
        )?;
        TestCluster {
            admin_url: String::new(),
            dir,
            supervisor,
        }
        .listen(ports, run_as)
    }

    /// Gives the supervised server the first of `ports` (at most
    /// [`START_ATTEMPTS`] of them) that it comes up on, and returns the
    /// cluster once it is up.
    fn listen(
        mut self,
        ports: impl IntoIterator<Item = u16>,
        run_as: RunAs,
    ) -> Result<TestCluster, TestingError> {
        let mut tried = Vec::new();
        for port in ports.into_iter().take(START_ATTEMPTS) {
            tried.push(port.to_string());
            self.admin_url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
            // Written whole, then renamed: the script never reads half a port.
            let next = self.dir.join("port.next");
            std::fs::write(&next, port.to_string()).map_err(io("write the server's port"))?;
            give_to(run_as, &next, "give the port file to the postgres user")?;
            std::fs::rename(&next, self.dir.join("port")).map_err(io("write the server's port"))?;
            match self.wait_ready(Some(port))? {
                Ready::Up => {
                    std::fs::write(self.dir.join("up"), "").map_err(io("mark the server as up"))?;
                    return Ok(self);
                }
                Ready::Failed => continue,
            }
        }
        let log = read_log(&self.dir.join("server.log"));
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
    pub(super) fn port(&self) -> Option<u16> {
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

/// Runs `initdb` (from `bin`, in `dir`, as `run_as`) to make the data
/// directory `data`, and adds [`DEFAULT_SETTINGS`] and then `settings` to its
/// `postgresql.conf` (the last line naming a setting wins). If either
/// fails once `initdb` has run, `dir` is removed.
fn init_data(
    bin: &Path,
    dir: &Path,
    data: &Path,
    settings: &[(&str, &str)],
    run_as: RunAs,
) -> Result<(), TestingError> {
    let mut initdb = Command::new(bin.join("initdb"));
    initdb
        .arg("-D")
        .arg(data)
        .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"])
        .args(["--no-sync", "--no-instructions"])
        .current_dir(dir)
        .stdin(Stdio::null());
    as_user(&mut initdb, run_as);
    let out = initdb.output().map_err(io("run initdb"))?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(dir);
        return Err(TestingError::InitDb {
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    let conf: String = DEFAULT_SETTINGS
        .iter()
        .chain(settings)
        .map(|(name, value)| format!("{name} = '{}'\n", value.replace('\'', "''")))
        .collect();
    if let Err(e) = std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.conf"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, conf.as_bytes()))
    {
        let _ = std::fs::remove_dir_all(dir);
        return Err(io("add settings to postgresql.conf")(e));
    }
    Ok(())
}

/// The directory of the PostgreSQL server binaries to use.
pub(super) fn find_bin_dir() -> Result<PathBuf, TestingError> {
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

/// The cluster shared by every [`TestDatabase`](super::TestDatabase) of this
/// process.
pub fn shared_cluster() -> Result<&'static TestCluster, TestingError> {
    static CLUSTER: OnceLock<Result<TestCluster, String>> = OnceLock::new();
    CLUSTER
        .get_or_init(|| TestCluster::start().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| TestingError::Shared(e.clone()))
}

#[cfg(test)]
mod tests {
    use diesel::connection::SimpleConnection;

    use super::super::ports::{ephemeral_range, port_candidates, port_is_free};
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
}
