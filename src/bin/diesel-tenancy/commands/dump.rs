//! `tenant dump` and `tenant restore`: one tenant to one file and back.
//!
//! The file is two lines of text and then pg_dump's archive:
//!
//! 1. `diesel-tenancy tenant dump 1` (the format and its version);
//! 2. one line of JSON: `schema`, `registry_version`, `pg_dump` (its version
//!    line), `registry` (the registry rows, as
//!    `registry::transfer::TenantExport::document` gives them) and `archive`
//!    (`format`: `pg_dump-custom`, `bytes`, `fnv1a64`: the archive's length and
//!    FNV-1a hash, which the restore checks before it commits);
//! 3. to the end of the file, `pg_dump --format=custom --schema=<schema>` of the
//!    tenant's schema (tables, data, sequences, the migration ledger), dumped
//!    in the same snapshot as the registry rows were read in.
//!
//! `tail -n +3 FILE | pg_restore -l` lists the archive.
//!
//! A restore is one transaction in one `psql` session: the registry checks and
//! locks (`registry::transfer::import_before_sql`), the schema's SQL as
//! `pg_restore` writes it out of the archive, then the renames and the
//! registry rows (`registry::transfer::IMPORT_AFTER_SQL`) and `COMMIT`, which
//! is only sent once `pg_restore` has succeeded and the archive has the
//! length and hash the header gives. Anything else ends the session without
//! a commit, and the server rolls everything back.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{ChildStdin, Command};
use std::thread::JoinHandle;

use anyhow::Result;
use diesel_tenancy::registry::{self, transfer};
use diesel_tenancy::{Domain, SchemaName};
use serde_json::{Value, json};

use crate::output::{UsageError, tenant_json};

use super::pg_tools::*;
use super::{Ctx, schema};

/// The first line of a dump file.
const MAGIC: &str = "diesel-tenancy tenant dump 1";

/// The longest header line a restore reads (the registry rows of a tenant
/// with many domains fit many times over).
const MAX_HEADER: u64 = 16 << 20;

/// What can go wrong in a dump or a restore, besides the database's own
/// errors (`diesel_tenancy::Error`).
#[derive(Debug, thiserror::Error)]
pub(super) enum DumpError {
    /// The file is not a dump, or not a whole one.
    #[error("{file}: not a whole tenant dump: {reason}")]
    BrokenFile { file: String, reason: String },
    /// A PostgreSQL client program is not installed.
    #[error(
        "{tool} not found: install PostgreSQL's client programs (Debian: apt-get install postgresql-client), put them on PATH or set PG_BIN_DIR"
    )]
    ToolNotFound { tool: &'static str },
    /// A PostgreSQL client program failed.
    #[error("{tool} failed ({status}): {message}")]
    ToolFailed {
        tool: &'static str,
        status: String,
        message: String,
    },
    /// The restore did not commit; nothing of it is left.
    #[error("restoring tenant {schema:?} failed, nothing was restored: {reason}")]
    RestoreFailed { schema: String, reason: String },
}

/// `tenant dump`: writes the tenant `name` to `output` (standard output if
/// none).
pub(super) fn dump(ctx: &Ctx, name: &str, output: Option<&Path>) -> Result<()> {
    let schema = schema(name)?;
    if output.is_none() && ctx.json {
        return Err(UsageError(
            "with --json the report goes to standard output: pass --output FILE".into(),
        )
        .into());
    }
    if output.is_none() && io::IsTerminal::is_terminal(&io::stdout()) {
        return Err(UsageError(
            "a dump is binary: pass --output FILE or redirect standard output".into(),
        )
        .into());
    }
    let pg_dump = tool("pg_dump")?;
    let archive = TempFile::new(output.and_then(Path::parent), "archive")?;
    let mut conn = ctx.conn()?;
    let registry_version = registry::installed_version(&mut *conn)?;
    let ran = transfer::with_export(&mut *conn, &schema, |_, export, snapshot| {
        let mut cmd = client(&pg_dump, &ctx.url);
        cmd.arg("--format=custom")
            .arg(format!("--schema={}", schema.quoted()))
            .arg(format!("--snapshot={snapshot}"))
            .arg("--file")
            .arg(&archive.path);
        Ok(run_tool("pg_dump", cmd).map(|()| export.clone()))
    })?;
    drop(conn);
    let export = ran?;
    let header = json!({
        "schema": schema.as_str(),
        "registry_version": registry_version,
        "pg_dump": tool_version(&pg_dump),
        "registry": serde_json::from_str::<Value>(export.document())?,
        "archive": digest_of(&archive.path)?,
    });
    write_dump(output, &header, &archive.path)?;
    let text = format!(
        "dumped tenant {} to {}",
        schema,
        output.map_or("standard output".into(), |p| p.display().to_string())
    );
    let mut value = tenant_json(export.tenant());
    value["file"] = json!(output.map(|p| p.display().to_string()));
    match output {
        Some(_) => ctx.out.print(value, || text),
        None => ctx.out.note(text),
    }
    Ok(())
}

/// `{"format", "bytes", "fnv1a64"}` of the archive at `path`.
fn digest_of(path: &Path) -> Result<Value> {
    let mut hash = Fnv1a::new();
    let bytes = io::copy(&mut File::open(path)?, &mut hash)?;
    Ok(json!({ "format": "pg_dump-custom", "bytes": bytes, "fnv1a64": hash.hex() }))
}

/// Writes the dump (magic line, `header`, the archive at `archive`) to
/// `output`, whole or not at all, or to standard output.
fn write_dump(output: Option<&Path>, header: &Value, archive: &Path) -> Result<()> {
    let write = |out: &mut dyn Write| -> io::Result<()> {
        writeln!(out, "{MAGIC}")?;
        writeln!(out, "{header}")?;
        io::copy(&mut File::open(archive)?, out)?;
        out.flush()
    };
    match output {
        None => write(&mut io::stdout().lock())?,
        Some(path) => {
            let partial = TempFile::new(path.parent(), "partial")?;
            let mut file = private_file(&partial.path)?;
            write(&mut file)?;
            file.sync_all()?;
            std::fs::rename(&partial.path, path)
                .map_err(|e| UsageError(format!("cannot write {}: {e}", path.display())))?;
        }
    }
    Ok(())
}

/// A new file only its owner can read (it holds a tenant's data).
fn private_file(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// What the header of a dump says.
struct Header {
    original: SchemaName,
    registry: String,
    registry_version: i64,
    domains: Vec<Domain>,
    bytes: u64,
    fnv1a64: String,
}

/// `tenant restore`: brings a dumped tenant back, under `as_schema` if given.
pub(super) fn restore(
    ctx: &Ctx,
    file: &Path,
    as_schema: Option<&str>,
    without_domains: bool,
) -> Result<()> {
    let label = file.display().to_string();
    let mut input = open_input(file)?;
    let header = read_header(&mut input, &label)?;
    let into = match as_schema {
        Some(name) => schema(name)?,
        None => header.original.clone(),
    };
    let domains = if without_domains {
        Vec::new()
    } else {
        header.domains.clone()
    };
    check_target(ctx, &header, &into, &domains)?;
    let (pg_restore, psql) = (tool("pg_restore")?, tool("psql")?);
    let before = transfer::import_before_sql(&header.registry, &into, !without_domains);
    run_restore(ctx, &psql, &pg_restore, &before, input, &header).map_err(|reason| {
        DumpError::RestoreFailed {
            schema: into.to_string(),
            reason,
        }
    })?;
    let tenant = registry::get_tenant(&mut *ctx.conn()?, &into)?;
    let mut value = tenant_json(&tenant);
    value["restored_from"] = json!(header.original.as_str());
    value["domains"] = json!(domains.iter().map(Domain::as_str).collect::<Vec<_>>());
    ctx.out.print(value, || {
        format!(
            "restored tenant {} as {} (id {}), {} domain(s)",
            header.original,
            tenant.schema(),
            tenant.id(),
            domains.len()
        )
    });
    Ok(())
}

/// The restore's input: the file, or standard input for `-`.
fn open_input(file: &Path) -> Result<BufReader<Box<dyn Read + Send>>> {
    let input: Box<dyn Read + Send> = if file.as_os_str() == "-" {
        Box::new(io::stdin())
    } else {
        Box::new(
            File::open(file)
                .map_err(|e| UsageError(format!("cannot read {}: {e}", file.display())))?,
        )
    };
    Ok(BufReader::with_capacity(1 << 16, input))
}

/// Reads and checks the two header lines; `input` is left at the archive.
fn read_header(input: &mut impl BufRead, label: &str) -> Result<Header> {
    let broken = |reason: String| DumpError::BrokenFile {
        file: label.to_owned(),
        reason,
    };
    let magic = read_line(input, MAGIC.len() as u64 + 1)?;
    if magic != MAGIC {
        return Err(broken(format!("its first line is not {MAGIC:?}")).into());
    }
    let line = read_line(input, MAX_HEADER)?;
    let value: Value =
        serde_json::from_str(&line).map_err(|e| broken(format!("its header is not JSON: {e}")))?;
    parse_header(&value).map_err(|reason| broken(reason).into())
}

/// One line without its newline, at most `limit` bytes.
fn read_line(input: &mut impl BufRead, limit: u64) -> io::Result<String> {
    let mut line = Vec::new();
    input.take(limit).read_until(b'\n', &mut line)?;
    if line.pop() != Some(b'\n') {
        line.clear(); // too long, or the file ended: not a header line
    }
    Ok(String::from_utf8(line).unwrap_or_default())
}

/// The header's fields, each checked.
fn parse_header(v: &Value) -> std::result::Result<Header, String> {
    let text = |pointer: &str| {
        v.pointer(pointer)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("its header has no {pointer}"))
    };
    let original = SchemaName::new(text("/registry/tenant/schema_name")?)
        .map_err(|e| format!("its schema name: {e}"))?;
    if text("/schema")? != original.as_str() {
        return Err("its header names two schemas".into());
    }
    let domains = v
        .pointer("/registry/domains")
        .and_then(Value::as_array)
        .ok_or("its header has no /registry/domains")?
        .iter()
        .map(|d| {
            let name = d["domain"].as_str().unwrap_or_default();
            Domain::parse(name).map_err(|e| format!("its domain {name:?}: {e}"))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    if text("/archive/format")? != "pg_dump-custom" {
        return Err("its archive is not in pg_dump's custom format".into());
    }
    Ok(Header {
        registry: v["registry"].to_string(),
        registry_version: v["registry_version"]
            .as_i64()
            .ok_or("no registry_version")?,
        domains,
        bytes: v["archive"]["bytes"].as_u64().ok_or("no archive length")?,
        fnv1a64: text("/archive/fnv1a64")?.to_owned(),
        original,
    })
}

/// Refuses, before anything runs, a restore into a database whose registry
/// is missing or of another version, or whose name or domains are taken.
fn check_target(ctx: &Ctx, header: &Header, into: &SchemaName, domains: &[Domain]) -> Result<()> {
    let mut conn = ctx.conn()?;
    let installed = registry::installed_version(&mut *conn)?;
    if installed != registry::REGISTRY_VERSION {
        return Err(UsageError(format!(
            "the database's tenant registry is at version {installed}, this diesel-tenancy restores into version {}: run migrate first",
            registry::REGISTRY_VERSION
        ))
        .into());
    }
    if header.registry_version > i64::from(registry::REGISTRY_VERSION) {
        return Err(UsageError(format!(
            "the dump comes from a newer registry (version {}); restore it with a newer diesel-tenancy",
            header.registry_version
        ))
        .into());
    }
    transfer::check_import(&mut *conn, into, domains)?;
    Ok(())
}

/// Runs the restore's transaction: `before`, the archive's SQL (the rest of
/// `input`, through pg_restore), then the registry rows and `COMMIT` if all
/// went well. `Err`: why it did not commit.
fn run_restore(
    ctx: &Ctx,
    psql: &Path,
    pg_restore: &Path,
    before: &str,
    input: BufReader<Box<dyn Read + Send>>,
    header: &Header,
) -> std::result::Result<(), String> {
    let mut session = client(psql, &ctx.url);
    session.args(["--no-psqlrc", "--quiet", "--set", "ON_ERROR_STOP=1"]);
    let mut session = Spawned::new("psql", session)?;
    let mut script = session.stdin.take().ok_or("psql has no input")?;
    // A failed write means psql has ended: its error output says why.
    let _ = write!(script, "BEGIN;\n{before}");
    let mut sql = Command::new(pg_restore);
    sql.args([
        "--file=-",
        "--no-owner",
        "--no-privileges",
        "--no-tablespaces",
        "--no-security-labels",
        "--no-publications",
        "--no-subscriptions",
    ]);
    let mut sql = Spawned::new("pg_restore", sql)?;
    let feed = feed_archive(input, sql.stdin.take().ok_or("pg_restore has no input")?);
    let relay = relay(sql.stdout.take(), script);
    let fed = feed
        .join()
        .unwrap_or_else(|_| Err("reading the archive panicked".into()));
    let restored = sql.finish();
    let script = relay
        .join()
        .unwrap_or_else(|_| Err("passing the SQL on panicked".into()));
    match (verdict(fed, restored, header), script) {
        (Ok(()), Ok(mut script)) => {
            let _ = write!(script, "{}\nCOMMIT;\n", transfer::IMPORT_AFTER_SQL);
            drop(script);
            session.finish()
        }
        (Err(reason), Ok(script)) => {
            drop(script);
            session.kill();
            let _ = session.finish();
            Err(reason)
        }
        // psql stopped reading: it has ended, and says why.
        (_, Err(relay)) => Err(session.finish().err().unwrap_or(relay)),
    }
}

/// Whether the archive may be committed: read whole, with the length and
/// hash the header gives, and turned into SQL by pg_restore without error.
fn verdict(
    fed: std::result::Result<(u64, String), String>,
    restored: std::result::Result<(), String>,
    header: &Header,
) -> std::result::Result<(), String> {
    restored?;
    let (bytes, hash) = fed?;
    if bytes != header.bytes || hash != header.fnv1a64 {
        return Err(format!(
            "the archive is {bytes} bytes with FNV-1a {hash}, the header says {} bytes with {}: the file is cut short or damaged",
            header.bytes, header.fnv1a64
        ));
    }
    Ok(())
}

/// Copies the archive (the rest of `input`) into pg_restore, hashing it, on a
/// thread of its own; gives its length and hash.
fn feed_archive(
    mut input: BufReader<Box<dyn Read + Send>>,
    mut to: ChildStdin,
) -> JoinHandle<std::result::Result<(u64, String), String>> {
    std::thread::spawn(move || {
        let mut hash = Fnv1a::new();
        let mut buf = vec![0; 1 << 16];
        let mut total = 0u64;
        loop {
            let n = input
                .read(&mut buf)
                .map_err(|e| format!("reading the dump: {e}"))?;
            if n == 0 {
                return Ok((total, hash.hex()));
            }
            hash.update(&buf[..n]);
            total += n as u64;
            // An error here means pg_restore has ended: its own output says why.
            to.write_all(&buf[..n])
                .map_err(|e| format!("pg_restore stopped reading the archive: {e}"))?;
        }
    })
}

/// Passes pg_restore's output (the SQL) on to psql, on a thread of its own;
/// gives psql's input back for the rest of the transaction.
fn relay(
    from: Option<std::process::ChildStdout>,
    mut to: ChildStdin,
) -> JoinHandle<std::result::Result<ChildStdin, String>> {
    std::thread::spawn(move || {
        let mut from = from.ok_or("pg_restore has no output")?;
        io::copy(&mut from, &mut to).map_err(|e| format!("passing the SQL to psql: {e}"))?;
        Ok(to)
    })
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::*;

    #[test]
    fn fnv1a_matches_the_reference_values() {
        let hash = |s: &[u8]| {
            let mut h = Fnv1a::new();
            h.update(s);
            h.hex()
        };
        assert_eq!(hash(b""), "cbf29ce484222325");
        assert_eq!(hash(b"a"), "af63dc4c8601ec8c");
        assert_eq!(hash(b"foobar"), "85944171f73967e8");
    }

    #[test]
    fn a_password_is_decoded_and_kept_off_the_command_line() {
        let cmd = client(Path::new("psql"), "postgres://u:p%40ss@h:5/db");
        let args: Vec<&OsStr> = cmd.get_args().collect();
        assert!(!args.iter().any(|a| a.to_string_lossy().contains("p%40ss")));
        assert!(
            args.contains(&OsStr::new("postgres://u@h:5/db")),
            "{args:?}"
        );
        let env: Vec<_> = cmd.get_envs().collect();
        assert_eq!(env, [(OsStr::new("PGPASSWORD"), Some(OsStr::new("p@ss")))]);
    }

    #[test]
    fn header_lines_are_bounded() {
        let mut input = io::Cursor::new(b"0123456789\nrest".to_vec());
        assert_eq!(read_line(&mut input, 5).unwrap(), "");
        let mut input = io::Cursor::new(b"0123\nrest".to_vec());
        assert_eq!(read_line(&mut input, 5).unwrap(), "0123");
    }
}
