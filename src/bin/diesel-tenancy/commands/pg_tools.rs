//! Running PostgreSQL's client programs (`pg_dump`, `pg_restore`, `psql`)
//! for `tenant dump` and `tenant restore`: finding them, passing the
//! connection without the password on the command line, collecting their
//! errors, and the temporary files and checksum the dump uses.

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;

use super::dump::DumpError;

/// A running client program whose error output is collected.
pub(super) struct Spawned {
    pub(super) tool: &'static str,
    pub(super) child: Child,
    pub(super) stdin: Option<ChildStdin>,
    pub(super) stdout: Option<std::process::ChildStdout>,
    pub(super) stderr: JoinHandle<String>,
}

impl Spawned {
    pub(super) fn new(
        tool: &'static str,
        mut cmd: Command,
    ) -> std::result::Result<Spawned, String> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {tool}: {e}"))?;
        let stderr = drain(child.stderr.take());
        let (stdin, mut stdout) = (child.stdin.take(), child.stdout.take());
        if tool == "psql" {
            // psql prints the results of the script's queries: not wanted.
            drop(drain(stdout.take()));
        }
        Ok(Spawned {
            tool,
            child,
            stdin,
            stdout,
            stderr,
        })
    }

    pub(super) fn kill(&mut self) {
        let _ = self.child.kill();
    }

    /// Waits for the program; `Err` with what it said if it failed.
    pub(super) fn finish(mut self) -> std::result::Result<(), String> {
        drop(self.stdin.take());
        let status = self.child.wait();
        let said = self.stderr.join().unwrap_or_default();
        match status {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(failure(self.tool, s, &said)),
            Err(e) => Err(format!("{}: {e}", self.tool)),
        }
    }
}

/// Reads `from` to its end on a thread of its own.
pub(super) fn drain(from: Option<impl Read + Send + 'static>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        if let Some(mut from) = from {
            let _ = from.read_to_end(&mut out);
        }
        String::from_utf8_lossy(&out).into_owned()
    })
}

/// What a failed program said: its `ERROR`/`error` lines, else all of it.
pub(super) fn failure(tool: &str, status: ExitStatus, said: &str) -> String {
    let errors: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("error:") || l.contains("FATAL"))
        .collect();
    let said = if said.trim().is_empty() {
        "(it printed nothing)".to_owned()
    } else if errors.is_empty() {
        said.trim().lines().collect::<Vec<_>>().join(" ")
    } else {
        errors.join(" ")
    };
    format!("{tool} ({}): {said}", exit(status))
}

/// How a program ended: its exit code, or the signal that ended it.
pub(super) fn exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "killed".into(),
    }
}

/// Runs a client program to its end; a failure is a [`DumpError::ToolFailed`].
pub(super) fn run_tool(tool: &'static str, mut cmd: Command) -> std::result::Result<(), DumpError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| DumpError::ToolFailed {
            tool,
            status: "not started".into(),
            message: e.to_string(),
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(DumpError::ToolFailed {
        tool,
        status: exit(out.status),
        message: String::from_utf8_lossy(&out.stderr)
            .trim()
            .replace('\n', " "),
    })
}

/// `pg_dump --version`'s line, for the header.
pub(super) fn tool_version(path: &Path) -> String {
    Command::new(path)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// A client program connecting to `url`. A password in the URL goes to the
/// program in `PGPASSWORD` rather than on its command line, where every user
/// of the machine could read it; it never asks for one.
pub(super) fn client(program: &Path, url: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.arg("--no-password");
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let password = percent_decode(parsed.password().unwrap_or_default());
            let _ = parsed.set_password(None);
            cmd.env("PGPASSWORD", password)
                .arg("--dbname")
                .arg(parsed.as_str());
        }
        _ => {
            cmd.arg("--dbname").arg(url);
        }
    }
    cmd
}

/// `%XX` escapes decoded (a URL's password is percent-encoded).
pub(super) fn percent_decode(s: &str) -> OsString {
    use std::os::unix::ffi::OsStringExt;
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| {
            std::str::from_utf8(h)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        });
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    OsString::from_vec(out)
}

/// A PostgreSQL client program: from `PG_BIN_DIR`, else the first `PATH`
/// entry that has it, else the newest `/usr/lib/postgresql/<version>/bin`.
pub(super) fn tool(name: &'static str) -> std::result::Result<PathBuf, DumpError> {
    find_tool(
        name,
        std::env::var_os("PG_BIN_DIR"),
        std::env::var_os("PATH"),
        Path::new("/usr/lib/postgresql"),
    )
    .ok_or(DumpError::ToolNotFound { tool: name })
}

pub(super) fn find_tool(
    name: &str,
    explicit: Option<OsString>,
    path: Option<OsString>,
    lib_root: &Path,
) -> Option<PathBuf> {
    let explicit = explicit.map(|d| PathBuf::from(d).join(name));
    if let Some(found) = explicit.filter(|p| p.is_file()) {
        return Some(found);
    }
    let on_path = path.and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    if on_path.is_some() {
        return on_path;
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(lib_root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin").join(name);
            bin.is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// A file in `dir` (the temporary directory if none) removed when dropped.
pub(super) struct TempFile {
    pub(super) path: PathBuf,
}

impl TempFile {
    pub(super) fn new(dir: Option<&Path>, what: &str) -> io::Result<TempFile> {
        let dir = match dir {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            Some(_) => PathBuf::from("."),
            None => std::env::temp_dir(),
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(".diesel-tenancy-dump-{}-{nanos}.{what}", std::process::id());
        Ok(TempFile {
            path: dir.join(name),
        })
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The 64-bit FNV-1a hash: finds a file cut short or damaged (not one
/// changed on purpose).
pub(super) struct Fnv1a(u64);

impl Fnv1a {
    pub(super) fn new() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }

    pub(super) fn update(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub(super) fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

impl Write for Fnv1a {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
