//! A PgBouncer in front of a test database, under the same supervisor as the
//! throwaway cluster.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use diesel::pg::PgConnection;
use diesel::prelude::*;

use super::TestingError;
use super::error::{db_err, io};
use super::ports::free_port;
use super::supervisor::{RunAs, Supervisor, give_to, new_dir, read_log, server_user};

/// The supervisor's script (`$1` the `pgbouncer` binary, `$2` its directory):
/// starts PgBouncer, waits until the pipe on its stdin closes, then stops it and
/// removes the directory.
const PGBOUNCER_SCRIPT: &str = r#"
"$1" "$2/pgbouncer.ini" >/dev/null 2>&1 &
pid=$!
cat >/dev/null
kill -INT "$pid" 2>/dev/null
wait "$pid"
rm -rf "$2"
"#;

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
        let run_as = server_user()?;
        let dir = new_dir("pgbouncer")?;
        let listen = free_port()?;
        write_config(&dir, &upstream, listen, pool_mode, server_pool_size, run_as)?;
        let supervisor = Supervisor::spawn(
            PGBOUNCER_SCRIPT,
            &[bin.as_os_str(), dir.as_os_str()],
            &dir,
            run_as,
        )?;
        let mut through = upstream.clone();
        through
            .set_host(Some("127.0.0.1"))
            .map_err(db_err("build the PgBouncer URL"))?;
        let _ = through.set_port(Some(listen));
        PgBouncer {
            url: through.into(),
            dir,
            _supervisor: supervisor,
        }
        .wait_up()
    }

    /// Returns this PgBouncer once it accepts a connection, or an error with its
    /// log after 30 seconds.
    fn wait_up(self) -> Result<PgBouncer, TestingError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match PgConnection::establish(&self.url) {
                Ok(_) => return Ok(self),
                Err(e) if Instant::now() > deadline => {
                    let log = read_log(&self.dir.join("pgbouncer.log"));
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

/// Writes PgBouncer's `pgbouncer.ini` (listening on `listen`, in front of the
/// host and port of `upstream`) and `userlist.txt` (trusting the user of
/// `upstream`, `postgres` if it names none) into `dir`, and gives the directory
/// and both files to `run_as`.
fn write_config(
    dir: &Path,
    upstream: &url::Url,
    listen: u16,
    pool_mode: &str,
    server_pool_size: u32,
    run_as: RunAs,
) -> Result<(), TestingError> {
    let host = upstream.host_str().unwrap_or("127.0.0.1").to_owned();
    let port = upstream.port().unwrap_or(5432);
    let user = match upstream.username() {
        "" => "postgres".to_owned(),
        u => u.to_owned(),
    };
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
    for f in ["", "pgbouncer.ini", "userlist.txt"] {
        give_to(
            run_as,
            &dir.join(f),
            "give the pgbouncer directory to the postgres user",
        )?;
    }
    Ok(())
}
