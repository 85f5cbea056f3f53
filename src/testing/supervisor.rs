//! What a throwaway server runs under: a supervisor shell that stops it and
//! removes its directory when this process ends, a fresh directory in memory
//! where there is some, and the `postgres` system user when run as root (since
//! PostgreSQL refuses to run as root).

use std::io::Read as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::TestingError;
use super::error::io;

/// The `(uid, gid)` a server runs as: `Some` (the `postgres` user's) when this
/// process runs as root, `None` otherwise.
pub(super) type RunAs = Option<(u32, u32)>;

/// A supervisor shell: it runs `script` (which starts a server in the
/// background, then waits on `cat` for its stdin to close, then stops the server
/// and removes the directory). Only this process holds the pipe, so the end of
/// the process, even a crash, closes it; dropping the supervisor closes it too
/// and waits for the clean-up.
#[derive(Debug)]
pub(super) struct Supervisor {
    child: Child,
    pipe: Option<ChildStdin>,
}

impl Supervisor {
    /// Starts `/bin/sh -c script sh args…` in `dir`, as `run_as`, with a pipe
    /// on its stdin that only this process holds.
    pub(super) fn spawn(
        script: &str,
        args: &[&std::ffi::OsStr],
        dir: &Path,
        run_as: RunAs,
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

    /// Whether the shell has exited.
    pub(super) fn exited(&mut self) -> bool {
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
pub(super) fn read_log(path: &Path) -> String {
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

/// Creates the directory `diesel-tenancy-<kind>-<pid>-<unique suffix>` under
/// [`base_dir`] for one throwaway server, and returns its path.
pub(super) fn new_dir(kind: &str) -> Result<PathBuf, TestingError> {
    let dir = base_dir().join(format!(
        "diesel-tenancy-{kind}-{}-{}",
        std::process::id(),
        unique_suffix()
    ));
    std::fs::create_dir(&dir).map_err(io(format!("create {}", dir.display())))?;
    Ok(dir)
}

/// A suffix no other call in this process returns (a counter, then the
/// clock's nanoseconds, against another process of the same id).
pub(super) fn unique_suffix() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}_{nanos}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// `Some((uid, gid))` of the `postgres` user when running as root.
pub(super) fn server_user() -> Result<RunAs, TestingError> {
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

/// Makes `cmd` run as `user` (with that user's `HOME` and `USER`), if any.
pub(super) fn as_user(cmd: &mut Command, user: RunAs) {
    if let Some((uid, gid)) = user {
        cmd.uid(uid)
            .gid(gid)
            .env("HOME", "/tmp")
            .env("USER", "postgres");
    }
}

/// Gives `path` to `user`, if any, so that a server running as it may use it;
/// `action` names the step in the error.
pub(super) fn give_to(
    user: RunAs,
    path: &Path,
    action: impl Into<String>,
) -> Result<(), TestingError> {
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(io(action))?;
    }
    Ok(())
}
