//! The `diesel-tenancy` binary, run as a user runs it, against a real database.
#![allow(missing_docs)]

mod common;

use assert_cmd::Command;
use common::MigrationDir;
use diesel_tenancy::testing::TestDatabase;
use serde_json::Value;

struct Cli {
    db: TestDatabase,
    tenant_dir: std::path::PathBuf,
}

impl Cli {
    fn new(tenant_dir: &MigrationDir) -> Self {
        Cli {
            db: TestDatabase::new().unwrap(),
            tenant_dir: tenant_dir.dir.clone(),
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::cargo_bin("diesel-tenancy").unwrap();
        cmd.env_remove("DATABASE_URL")
            .arg("--database-url")
            .arg(self.db.url())
            .arg("--shared-dir")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations_shared"))
            .arg("--tenant-dir")
            .arg(&self.tenant_dir)
            .args(args);
        cmd
    }

    /// Runs with `--json`, checks the exit code, returns the parsed output.
    fn json(&self, args: &[&str], code: i32) -> Value {
        let out = self.cmd(&[&["--json"], args].concat()).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?}: stdout {stdout} stderr {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {stdout}"))
    }

    /// Runs without `--json`, checks the exit code, returns stdout and stderr.
    fn text(&self, args: &[&str], code: i32) -> (String, String) {
        let out = self.cmd(args).output().unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stdout} {stderr}");
        (stdout, stderr)
    }
}

fn results(v: &Value) -> Vec<(String, String)> {
    v["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["schema"].as_str().unwrap().to_owned(),
                t["result"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn migrate_plan_and_tenants() {
    let dir = MigrationDir::tenant_copy();
    let cli = Cli::new(&dir);

    let plan = cli.json(&["migrate", "--plan"], 0);
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["shared"]["result"], "pending");
    let done = cli.json(&["migrate"], 0);
    assert_eq!(done["shared"]["result"], "applied");
    assert_eq!(done["shared"]["versions"][0], "20250101000001");

    let acme = cli.json(
        &[
            "tenant",
            "create",
            "acme",
            "--name",
            "Acme Corp",
            "--domain",
            "ACME.example.com",
        ],
        0,
    );
    assert_eq!(acme["schema"], "acme");
    assert_eq!(acme["status"], "active");
    let globex = cli.json(&["tenant", "create", "globex", "--with-role"], 0);
    assert!(globex["role"].as_str().unwrap().starts_with("dt_"));
    assert!(acme["role"].is_null());
    let list = cli.json(&["tenant", "list"], 0);
    let names: Vec<_> = list["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["schema"].clone())
        .collect();
    assert_eq!(names, ["acme", "globex"]);

    // A new migration: the plan lists it, applies nothing; migrate applies it.
    dir.add(
        "20250301000000",
        "add_note",
        "ALTER TABLE customers ADD COLUMN note text;",
    );
    let plan = cli.json(&["migrate", "--plan", "--verify"], 0);
    assert_eq!(
        results(&plan),
        [
            ("acme".into(), "pending".into()),
            ("globex".into(), "pending".into())
        ]
    );
    let status = cli.json(&["status"], 0);
    assert_eq!(status["tenants"][0]["pending"], 1);
    assert_eq!(status["tenants"][0]["applied_version"], "20250101000002");
    let only = cli.json(
        &[
            "migrate",
            "--tenants-only",
            "--schema",
            "acme",
            "--jobs",
            "1",
        ],
        0,
    );
    assert_eq!(results(&only), [("acme".into(), "applied".into())]);
    assert!(only["shared"].is_null());
    let shared_only = cli.json(&["migrate", "--shared-only"], 0);
    assert_eq!(shared_only["shared"]["result"], "up_to_date");
    assert_eq!(shared_only["tenants"].as_array().unwrap().len(), 0);
    let rest = cli.json(&["migrate"], 0);
    assert_eq!(rest["totals"]["applied"], 1);
    assert_eq!(rest["totals"]["up_to_date"], 1);
    let verify = cli.json(&["migrate", "--verify"], 0);
    assert_eq!(verify["totals"]["up_to_date"], 2);
    assert_eq!(verify["decided_by_journal"], 0);

    // Text output: one line per tenant and a summary.
    let (text, _) = cli.text(&["migrate", "--plan", "--verify"], 0);
    assert!(text.contains("acme: up to date"), "{text}");
    assert!(text.contains("2 tenants"), "{text}");

    // show, rename, suspend, activate.
    let show = cli.json(&["tenant", "show", "acme"], 0);
    assert_eq!(show["name"], "Acme Corp");
    assert_eq!(show["domains"][0]["domain"], "acme.example.com");
    assert_eq!(show["migrations"]["result"], "up_to_date");
    assert_eq!(
        cli.json(&["tenant", "suspend", "globex"], 0)["status"],
        "suspended"
    );
    assert_eq!(
        cli.json(&["tenant", "activate", "globex"], 0)["status"],
        "active"
    );
    assert_eq!(
        cli.json(&["tenant", "rename", "globex", "initech"], 0)["schema"],
        "initech"
    );
    assert!(
        cli.json(&["tenant", "show", "globex"], 1)["error"]
            .as_str()
            .unwrap()
            .contains("globex")
    );
}

#[test]
fn domains() {
    let dir = MigrationDir::tenant_copy();
    let cli = Cli::new(&dir);
    cli.json(&["migrate"], 0);
    cli.json(&["tenant", "create", "acme"], 0);
    let added = cli.json(
        &["domain", "add", "acme", "Shop.Example.COM:443", "--primary"],
        0,
    );
    assert_eq!(added["domain"], "shop.example.com");
    cli.json(&["domain", "add", "acme", "www.example.com"], 0);
    let list = cli.json(&["domain", "list", "acme"], 0);
    assert_eq!(list["domains"][0]["domain"], "shop.example.com");
    assert_eq!(list["domains"][0]["primary"], true);
    assert_eq!(list["domains"].as_array().unwrap().len(), 2);
    // Taken, and bad input.
    assert!(
        cli.json(&["domain", "add", "acme", "www.example.com"], 1)["error"]
            .as_str()
            .unwrap()
            .contains("www.example.com")
    );
    assert_eq!(
        cli.json(&["domain", "add", "acme", "bad domain"], 2)["exit_code"],
        2
    );
    cli.json(&["domain", "remove", "www.example.com"], 0);
    assert!(
        cli.json(&["domain", "remove", "www.example.com"], 1)["error"]
            .as_str()
            .unwrap()
            .contains("not in the registry")
    );
    assert_eq!(
        cli.json(&["domain", "list"], 0)["domains"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn a_failing_tenant_exits_1_and_is_named() {
    let dir = MigrationDir::tenant_copy();
    let cli = Cli::new(&dir);
    cli.json(&["migrate"], 0);
    for t in ["a1", "a2", "a3"] {
        cli.json(&["tenant", "create", t], 0);
    }
    // exec: each tenant in its own transaction; a2 refuses the row.
    cli.json(
        &[
            "exec",
            "--schema",
            "a2",
            "--sql",
            "ALTER TABLE customers ADD CONSTRAINT no_x CHECK (name <> 'x')",
        ],
        0,
    );
    let exec = cli.json(
        &[
            "exec",
            "--sql",
            "INSERT INTO customers (name, email) VALUES ('x', 'x@x')",
        ],
        1,
    );
    assert_eq!(exec["ok"], 2);
    assert_eq!(exec["failed"], 1);
    assert!(
        exec["tenants"][1]["error"]
            .as_str()
            .unwrap()
            .contains("no_x")
    );
    // The same SQL from a file, in one chosen tenant.
    let file = dir.dir.join("exec.sql");
    std::fs::write(&file, "UPDATE customers SET name = 'y' WHERE name = 'x';").unwrap();
    let from_file = cli.json(
        &["exec", "--schema", "a1", "--file", file.to_str().unwrap()],
        0,
    );
    assert_eq!(from_file["ok"], 1);

    // migrate: a migration that fails only where a 'y' customer exists (a1).
    dir.add(
        "20250301000000",
        "no_y",
        "ALTER TABLE customers ADD CONSTRAINT no_y CHECK (name <> 'y');",
    );
    let report = cli.json(&["migrate"], 1);
    assert_eq!(report["totals"]["failed"], 1);
    let a1 = &report["tenants"][0];
    assert_eq!(a1["schema"], "a1");
    assert_eq!(a1["result"], "failed");
    assert_eq!(a1["version"], "20250301000000");
    assert!(a1["error"].as_str().unwrap().contains("no_y"));
    assert_eq!(report["tenants"][1]["result"], "applied");
    // Text mode says it in one line on stderr too.
    let (_, stderr) = cli.text(&["migrate", "--fail-fast"], 1);
    assert!(stderr.contains("a1: failed at 20250301000000"), "{stderr}");
    let status = cli.json(&["status"], 0);
    assert!(
        status["tenants"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains("no_y")
    );
}

#[test]
fn doctor_finds_and_fixes() {
    let dir = MigrationDir::tenant_copy();
    let cli = Cli::new(&dir);
    cli.json(&["migrate"], 0);
    cli.json(&["tenant", "create", "lost"], 0);
    cli.json(&["tenant", "create", "fine"], 0);
    cli.json(
        &[
            "exec",
            "--schema",
            "lost",
            "--sql",
            "DROP SCHEMA lost CASCADE",
        ],
        0,
    );
    dir.add(
        "20250301000000",
        "add_note",
        "ALTER TABLE customers ADD COLUMN note text;",
    );
    let doctor = cli.json(&["doctor"], 1);
    assert_eq!(doctor["consistent"], false);
    assert_eq!(doctor["rows_without_schema"][0], "lost");
    assert_eq!(doctor["tenants_behind"][0]["schema"], "fine");
    let fixed = cli.json(&["doctor", "--fix"], 0);
    assert_eq!(fixed["consistent"], true, "{fixed}");
    assert_eq!(fixed["fixed"].as_array().unwrap().len(), 2);
    assert_eq!(cli.json(&["doctor"], 0)["consistent"], true);
}

#[test]
fn bad_input_gets_exit_2_and_one_clear_line() {
    let dir = MigrationDir::tenant_copy();
    let cli = Cli::new(&dir);
    cli.json(&["migrate"], 0);
    cli.json(&["tenant", "create", "keep"], 0);

    // drop without confirmation refuses and keeps everything.
    let (_, stderr) = cli.text(&["tenant", "drop", "keep"], 2);
    assert!(stderr.contains("--yes-delete-all-data"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert_eq!(
        cli.json(&["tenant", "list"], 0)["tenants"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        cli.json(&["tenant", "drop", "keep", "--yes-delete-all-data"], 0)["dropped"],
        "keep"
    );
    assert_eq!(
        cli.json(&["tenant", "list"], 0)["tenants"]
            .as_array()
            .unwrap()
            .len(),
        0
    );

    // A bad schema name.
    let (_, stderr) = cli.text(&["tenant", "create", "Bad;Name"], 2);
    assert!(
        stderr.starts_with("error: schema name \"Bad;Name\""),
        "{stderr}"
    );
    // A server that is not there.
    let out = Command::cargo_bin("diesel-tenancy")
        .unwrap()
        .env_remove("DATABASE_URL")
        .args([
            "--database-url",
            "postgres://nobody@127.0.0.1:1/none",
            "--connect-timeout",
            "1",
            "tenant",
            "list",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("database connection"));
    // A URL that is not a URL, and none at all.
    let out = Command::cargo_bin("diesel-tenancy")
        .unwrap()
        .env_remove("DATABASE_URL")
        .args(["--database-url", "http://example.com", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::cargo_bin("diesel-tenancy")
        .unwrap()
        .env_remove("DATABASE_URL")
        .args(["status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DATABASE_URL"));
    // A usage error from the parser.
    cli.text(&["migrate", "--shared-only", "--tenants-only"], 2);
    // Migration directories that do not exist.
    let out = Command::cargo_bin("diesel-tenancy")
        .unwrap()
        .env_remove("DATABASE_URL")
        .args([
            "--database-url",
            cli.db.url(),
            "--tenant-dir",
            "/nonexistent",
            "migrate",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent"));
}

#[test]
fn completions_and_man_page() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::cargo_bin("diesel-tenancy")
            .unwrap()
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("migrate"),
            "{shell}"
        );
    }
    let man = Command::cargo_bin("diesel-tenancy")
        .unwrap()
        .arg("man")
        .output()
        .unwrap();
    assert!(man.status.success());
    assert!(String::from_utf8_lossy(&man.stdout).contains(".TH diesel-tenancy"));
    let version = Command::cargo_bin("diesel-tenancy")
        .unwrap()
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("diesel-tenancy "));
}

#[test]
fn exec_puts_only_the_tenant_schema_on_the_path() {
    use diesel::prelude::*;

    let dir = MigrationDir::tenant_copy();
    let cli = Cli::new(&dir);
    cli.json(&["migrate"], 0);
    cli.json(&["tenant", "create", "p1"], 0);
    // `plans` is a shared table: it exists only in public, so unqualified it
    // is not found from a tenant.
    let unqualified = cli.json(
        &[
            "exec",
            "--schema",
            "p1",
            "--sql",
            "SELECT count(*) FROM plans",
        ],
        1,
    );
    assert_eq!(unqualified["failed"], 1);
    let error = unqualified["tenants"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("relation \"plans\" does not exist"),
        "{error}"
    );
    // Qualified, it is (as the help text says).
    let qualified = cli.json(
        &[
            "exec",
            "--schema",
            "p1",
            "--sql",
            "SELECT count(*) FROM public.plans",
        ],
        0,
    );
    assert_eq!(qualified["ok"], 1);
    // The path is the tenant's schema alone, and what is created unqualified
    // lands there.
    cli.json(
        &[
            "exec",
            "--schema",
            "p1",
            "--sql",
            "DO $$ BEGIN IF current_schemas(false)::text[] <> ARRAY['p1'] THEN \
             RAISE EXCEPTION 'path is %', current_setting('search_path'); END IF; END $$; \
             CREATE TABLE exec_made (id int)",
        ],
        0,
    );
    let mut conn = PgConnection::establish(cli.db.url()).unwrap();
    let tables: Vec<String> = diesel::dsl::sql::<diesel::sql_types::Text>(
        "SELECT schemaname::text FROM pg_tables WHERE tablename = 'exec_made'",
    )
    .load(&mut conn)
    .unwrap();
    assert_eq!(tables, ["p1"]);
    assert!(
        cli.cmd(&["exec", "--help"])
            .output()
            .unwrap()
            .stdout
            .windows(b"public.plans".len())
            .any(|w| w == b"public.plans"),
        "the help text names the qualified form"
    );
}

#[test]
fn exec_runs_tenants_in_parallel_and_reports_each() {
    let dir = MigrationDir::tenant_copy();
    let cli = Cli::new(&dir);
    cli.json(&["migrate"], 0);
    for t in ["e0", "e1", "e2", "e3"] {
        cli.json(&["tenant", "create", t], 0);
    }
    cli.json(&["tenant", "suspend", "e3"], 0);
    // --jobs: four connections' worth, each tenant in its own transaction.
    let report = cli.json(
        &[
            "exec",
            "--jobs",
            "3",
            "--sql",
            "INSERT INTO customers (name, email) VALUES (current_schema(), 'x@x')",
        ],
        0,
    );
    assert_eq!(
        results(&report),
        [("e0", "ok"), ("e1", "ok"), ("e2", "ok")].map(|(s, r)| (s.to_owned(), r.to_owned()))
    );
    assert_eq!(report["totals"]["tenants"], 3);
    assert_eq!(report["ok"], 3);
    assert_eq!(report["not_run"], 0);
    assert!(report["tenants"][0]["elapsed_ms"].as_f64().is_some());
    assert!(report["tenants"][0]["error"].is_null());
    // Each row landed in its own tenant, three tenants at a time.
    let check = cli.json(
        &[
            "exec",
            "--jobs",
            "3",
            "--sql",
            "DO $$ BEGIN IF (SELECT array_agg(name) FROM customers) \
             IS DISTINCT FROM ARRAY[current_schema()::text] THEN \
             RAISE EXCEPTION 'wrong tenant'; END IF; END $$",
        ],
        0,
    );
    assert_eq!(check["ok"], 3, "{check}");
    // A failing tenant first, --fail-fast and one job: the rest are not run.
    cli.json(
        &[
            "exec",
            "--schema",
            "e0",
            "--sql",
            "ALTER TABLE customers ADD CONSTRAINT no_e CHECK (name <> 'boom')",
        ],
        0,
    );
    let stopped = cli.json(
        &[
            "exec",
            "--fail-fast",
            "--jobs",
            "1",
            "--sql",
            "UPDATE customers SET name = 'boom'",
        ],
        1,
    );
    assert_eq!(
        results(&stopped),
        [("e0", "failed"), ("e1", "not_run"), ("e2", "not_run")]
            .map(|(s, r)| (s.to_owned(), r.to_owned()))
    );
    assert!(
        stopped["tenants"][0]["error"]
            .as_str()
            .unwrap()
            .contains("no_e")
    );
    assert_eq!(
        (stopped["failed"].clone(), stopped["not_run"].clone()),
        (1.into(), 2.into())
    );
    let (stdout, _) = cli.text(
        &[
            "exec",
            "--fail-fast",
            "--sql",
            "UPDATE customers SET name = 'boom'",
        ],
        1,
    );
    assert!(stdout.contains("e1: not run"), "{stdout}");
    assert!(stdout.ends_with("0 ok, 1 failed, 2 not run\n"), "{stdout}");
    // Without --fail-fast every tenant runs; the failing one's update is
    // rolled back, the others' committed.
    let all = cli.json(
        &[
            "exec",
            "--jobs",
            "2",
            "--sql",
            "UPDATE customers SET name = 'boom'",
        ],
        1,
    );
    assert_eq!(
        (all["ok"].clone(), all["failed"].clone()),
        (2.into(), 1.into())
    );
    // A suspended tenant named is refused, as before; an unknown one fails the
    // command before any tenant runs.
    let suspended = cli.json(&["exec", "--schema", "e3", "--sql", "SELECT 1"], 1);
    assert!(
        suspended["tenants"][0]["error"]
            .as_str()
            .unwrap()
            .contains("suspended"),
        "{suspended}"
    );
    let unknown = cli.json(&["exec", "--schema", "e9", "--sql", "SELECT 1"], 1);
    assert!(
        unknown["error"].as_str().unwrap().contains("e9"),
        "{unknown}"
    );
}

/// `cmd` as one word for `sh -c`.
fn shell_word(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

impl Cli {
    /// Runs the command under a pseudo-terminal (util-linux `script`) and
    /// returns what the terminal showed (standard output and standard error
    /// together), or `None` where `script` is not installed.
    fn on_terminal(&self, args: &[&str]) -> Option<String> {
        let shared = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations_shared");
        let tenant_dir = self.tenant_dir.to_str().unwrap();
        let words = [
            env!("CARGO_BIN_EXE_diesel-tenancy"),
            "--database-url",
            self.db.url(),
            "--shared-dir",
            shared,
            "--tenant-dir",
            tenant_dir,
        ]
        .into_iter()
        .chain(args.iter().copied())
        .map(shell_word)
        .collect::<Vec<_>>()
        .join(" ");
        let out = match std::process::Command::new("script")
            .args(["-qec", &words, "/dev/null"])
            .env_remove("DATABASE_URL")
            .env("TERM", "xterm")
            .stdin(std::process::Stdio::null())
            .output()
        {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("skipped: util-linux `script` is not installed");
                return None;
            }
            Err(e) => panic!("script: {e}"),
        };
        let shown = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{args:?}: {shown}");
        Some(shown)
    }
}

/// Progress bars and spinners go to standard error on a terminal, and
/// nowhere otherwise.
#[test]
fn progress_shows_on_a_terminal_only() {
    let dir = MigrationDir::tenant_copy();
    let cli = Cli::new(&dir);
    cli.json(&["migrate"], 0);
    for t in ["t0", "t1", "t2"] {
        cli.json(&["tenant", "create", t], 0);
    }
    let exec = ["exec", "--jobs", "2", "--sql", "SELECT 1"];
    let Some(shown) = cli.on_terminal(&exec) else {
        return;
    };
    assert!(shown.contains("/3 tenants"), "exec shows no bar: {shown:?}");
    assert!(shown.contains("3 ok, 0 failed"), "{shown:?}");
    let shown = cli.on_terminal(&["status"]).unwrap();
    assert!(
        shown.contains("/3 tenants"),
        "status shows no bar: {shown:?}"
    );
    assert!(
        shown.contains("reading every tenant's migration ledger"),
        "{shown:?}"
    );
    assert!(shown.contains("t2 "), "{shown:?}");
    let shown = cli.on_terminal(&["doctor"]).unwrap();
    assert!(
        shown.contains("checking the registry and every tenant's migration ledger"),
        "doctor shows no spinner: {shown:?}"
    );
    assert!(shown.contains("consistent"), "{shown:?}");
    // With --json, the bar still shows on the terminal (standard error).
    let shown = cli
        .on_terminal(&["--json", "exec", "--sql", "SELECT 1"])
        .unwrap();
    assert!(shown.contains("/3 tenants"), "{shown:?}");

    // Without a terminal: the reports, a line per tenant from exec, no bar.
    let no_progress = |stderr: &str| {
        !stderr.contains("tenants") && !stderr.contains('\r') && !stderr.contains('\x1b')
    };
    let (stdout, stderr) = cli.text(&exec, 0);
    assert!(stdout.ends_with("3 ok, 0 failed\n"), "{stdout}");
    let mut lines: Vec<&str> = stderr.lines().collect();
    lines.sort();
    assert_eq!(lines, ["t0: ok", "t1: ok", "t2: ok"], "{stderr:?}");
    assert!(no_progress(&stderr), "{stderr:?}");
    for args in [
        &["status"][..],
        &["doctor"],
        &["--json", "exec", "--sql", "SELECT 1"],
    ] {
        let out = cli.cmd(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?} printed progress: {stderr:?}");
    }
}
