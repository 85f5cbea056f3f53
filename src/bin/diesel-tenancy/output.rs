//! What the commands print and how a run ends: JSON or text on standard
//! output, progress on standard error, tables, and the exit code (0 success;
//! 1 a tenant, or another operation on the database, failed; 2 usage or
//! connection error).

use std::fmt::{self, Display};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use diesel_tenancy::citus;
use diesel_tenancy::{ForEachProgress, Outcome, Progress, Tenant};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::commands::Cluster;

/// An error that is the user's input or the connection, not a tenant: exit 2.
#[derive(Debug)]
pub(crate) struct UsageError(pub(crate) String);

impl Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// How a command that ran ended.
pub(crate) enum Ended {
    Ok,
    /// Some tenant failed: exit 1.
    TenantsFailed,
}

impl Ended {
    /// `Ok` if `success`, else `TenantsFailed`.
    pub(crate) fn ok_if(success: bool) -> Ended {
        if success {
            Ended::Ok
        } else {
            Ended::TenantsFailed
        }
    }
}

/// The exit code of a run. An error is printed on standard error, and with
/// `--json` also as `{"error", "exit_code"}` on standard output.
pub(crate) fn finish(result: anyhow::Result<Ended>, json: bool) -> ExitCode {
    match result {
        Ok(Ended::Ok) => ExitCode::SUCCESS,
        Ok(Ended::TenantsFailed) => ExitCode::from(1),
        Err(error) => {
            let code = exit_code(&error);
            let line = one_line(&error);
            if json {
                println!("{}", json!({ "error": line, "exit_code": code }));
            }
            eprintln!("error: {line}");
            ExitCode::from(code)
        }
    }
}

/// 2 for the user's input or the connection, 1 for the rest.
fn exit_code(error: &anyhow::Error) -> u8 {
    if error.downcast_ref::<UsageError>().is_some() {
        return 2;
    }
    match error.downcast_ref::<diesel_tenancy::Error>() {
        Some(
            diesel_tenancy::Error::InvalidSchemaName(_)
            | diesel_tenancy::Error::InvalidDomain(_)
            | diesel_tenancy::Error::Config { .. }
            | diesel_tenancy::Error::Connect(_)
            | diesel_tenancy::Error::Pool(_),
        ) => 2,
        _ => 1,
    }
}

/// The error and its causes on one line.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !line.contains(&cause) {
            line.push_str(": ");
            line.push_str(&cause);
        }
    }
    line.replace('\n', " ")
}

/// Where a command reports: JSON (`--json`) or text on standard output, and
/// progress on standard error as a bar (a terminal) or as lines.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Output {
    json: bool,
    terminal: bool,
}

impl Output {
    /// `terminal`: standard error is a terminal.
    pub(crate) fn new(json: bool, terminal: bool) -> Output {
        Output { json, terminal }
    }

    /// Prints `value` as JSON, or `human` as text (nothing if it is empty).
    pub(crate) fn print(&self, value: Value, human: impl FnOnce() -> String) {
        if self.json {
            println!("{value}");
        } else {
            let text = human();
            if !text.is_empty() {
                println!("{text}");
            }
        }
    }

    /// A line on standard error, except with `--json`.
    pub(crate) fn note(&self, line: impl Display) {
        if !self.json {
            eprintln!("{line}");
        }
    }

    /// A line on standard error for each tenant as it is done, where no bar
    /// shows it: text output to something other than a terminal.
    pub(crate) fn tenant_done(&self, line: impl Display) {
        if !self.json && !self.terminal {
            eprintln!("{line}");
        }
    }

    /// The progress of `migrate`: a bar on a terminal (also with `--json`),
    /// else a line per tenant (none with `--json`).
    pub(crate) fn migrate_progress(&self) -> impl Fn(&Progress<'_>) + Send + Sync + 'static {
        let out = *self;
        let bar: Arc<Mutex<Option<ProgressBar>>> = Arc::new(Mutex::new(None));
        move |event| match event {
            Progress::Started { total, .. } if out.terminal => {
                let mut bar = bar.lock().unwrap_or_else(|e| e.into_inner());
                bar.get_or_insert_with(|| tenant_bar(*total as u64));
            }
            Progress::Finished {
                report,
                done,
                total,
            } => {
                if out.terminal {
                    if let Some(b) = bar.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                        b.set_position(*done as u64);
                        b.set_message(report.schema.to_string());
                        if done == total {
                            b.finish_and_clear();
                        }
                    }
                } else {
                    out.tenant_done(format_args!(
                        "[{done}/{total}] {}: {}",
                        report.schema, report.outcome
                    ));
                }
            }
            _ => {}
        }
    }

    /// A bar of tenants for a run's progress, drawn on standard error only
    /// when it is a terminal (also with `--json`); without a terminal it
    /// shows nothing.
    pub(crate) fn tenant_bar(&self) -> TenantBar {
        TenantBar {
            terminal: self.terminal,
            bar: Arc::default(),
        }
    }

    /// The progress of a migration run shown on `bar` alone: no line per
    /// tenant without a terminal (for `status` and `doctor`, whose report is
    /// the output).
    pub(crate) fn bar_progress(
        &self,
        bar: &TenantBar,
    ) -> impl Fn(&Progress<'_>) + Send + Sync + 'static {
        let bar = bar.clone();
        move |event| match event {
            Progress::Started { total, .. } => bar.start(*total),
            Progress::Finished { report, done, .. } => bar.advance(*done, report.schema.as_str()),
            _ => {}
        }
    }

    /// The progress of `exec`: `bar` on a terminal, else a line per tenant
    /// as it finishes (none with `--json`).
    pub(crate) fn exec_progress(
        &self,
        bar: &TenantBar,
    ) -> impl Fn(&ForEachProgress<'_>) + Send + Sync + 'static {
        let (out, bar) = (*self, bar.clone());
        move |event| match event {
            ForEachProgress::Started { total, .. } => bar.start(*total),
            ForEachProgress::Finished {
                tenant,
                error,
                done,
                ..
            } => {
                bar.advance(*done, tenant.schema().as_str());
                out.tenant_done(match error {
                    None => format!("{}: ok", tenant.schema()),
                    Some(e) => format!("{}: failed: {e:#}", tenant.schema()),
                });
            }
            _ => {}
        }
    }

    /// A spinner with `message` on standard error while a slow step runs,
    /// on a terminal only; it is cleared when the value is dropped.
    pub(crate) fn spinner(&self, message: &str) -> Spinner {
        if !self.terminal {
            return Spinner(None);
        }
        let bar = ProgressBar::new_spinner();
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
            bar.set_style(style);
        }
        bar.set_message(message.to_owned());
        bar.tick();
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        Spinner(Some(bar))
    }

    /// The progress of a rebalance, on standard error (none with `--json`):
    /// the plan, each move as it starts (on a terminal) and as it ends.
    pub(crate) fn rebalance_progress(&self, event: citus::RebalanceProgress<'_>) {
        if self.json {
            return;
        }
        match event {
            citus::RebalanceProgress::Planned { moves } => {
                eprintln!("{} tenant(s) to move", moves.len());
            }
            citus::RebalanceProgress::Moving {
                planned,
                index,
                total,
            } if self.terminal => {
                eprintln!(
                    "[{index}/{total}] moving {} from {} to {} ...",
                    planned.schema, planned.from, planned.to
                );
            }
            citus::RebalanceProgress::Moved { done, index, total } => {
                eprintln!(
                    "[{index}/{total}] moved {} from {} to {} in {:.1}s",
                    done.schema,
                    done.from,
                    done.to,
                    done.elapsed.as_secs_f64()
                );
            }
            _ => {}
        }
    }
}

/// A bar of `total` tenants.
fn tenant_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} tenants {msg} ({eta})") {
        bar.set_style(style);
    }
    bar.tick();
    bar
}

/// A run's bar of tenants ([`Output::tenant_bar`]): made at the run's first
/// event, when the number of tenants is known, and cleared by
/// [`finish`](Self::finish) (a run stopped early never reaches its total).
#[derive(Clone)]
pub(crate) struct TenantBar {
    terminal: bool,
    bar: Arc<Mutex<Option<ProgressBar>>>,
}

impl TenantBar {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<ProgressBar>> {
        self.bar.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn start(&self, total: usize) {
        if self.terminal {
            self.lock().get_or_insert_with(|| tenant_bar(total as u64));
        }
    }

    fn advance(&self, done: usize, schema: &str) {
        if let Some(bar) = self.lock().as_ref() {
            bar.set_message(schema.to_owned());
            bar.set_position(done as u64);
        }
    }

    /// Clears the bar.
    pub(crate) fn finish(&self) {
        if let Some(bar) = self.lock().take() {
            bar.finish_and_clear();
        }
    }
}

/// A spinner shown while it lives ([`Output::spinner`]).
pub(crate) struct Spinner(Option<ProgressBar>);

impl Drop for Spinner {
    fn drop(&mut self) {
        if let Some(bar) = self.0.take() {
            bar.finish_and_clear();
        }
    }
}

/// A text table: a header line, then a line per row; every column but the
/// last is padded to its width, and one space parts the columns.
pub(crate) struct Table {
    /// Each column's header and width (the last column is not padded).
    columns: Vec<(&'static str, usize)>,
    hidden: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(columns: &[(&'static str, usize)]) -> Table {
        Table {
            columns: columns.to_vec(),
            hidden: Vec::new(),
            rows: Vec::new(),
        }
    }

    /// Leaves out the column `header` (the rows still have a cell for it).
    pub(crate) fn hide(&mut self, header: &'static str) {
        self.hidden.push(header);
    }

    /// Adds a row: a cell per column.
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table's text, without a final newline.
    pub(crate) fn finish(self) -> String {
        let header: Vec<String> = self.columns.iter().map(|(h, _)| h.to_string()).collect();
        let shown: Vec<(usize, usize)> = (self.columns.iter().enumerate())
            .filter(|(_, (h, _))| !self.hidden.contains(h))
            .map(|(i, (_, width))| (i, *width))
            .collect();
        let line = |cells: &[String]| {
            let mut line = String::new();
            for (n, &(i, width)) in shown.iter().enumerate() {
                if n + 1 < shown.len() {
                    line += &format!("{:<width$} ", cells[i]);
                } else {
                    line += &cells[i];
                }
            }
            line
        };
        std::iter::once(&header)
            .chain(&self.rows)
            .map(|cells| line(cells))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A tenant's registry row.
pub(crate) fn tenant_json(t: &Tenant) -> Value {
    json!({
        "id": t.id(),
        "schema": t.schema().as_str(),
        "name": t.name(),
        "status": t.status().as_str(),
        "role": t.role().map(|r| r.as_str()),
    })
}

/// The outcome of one migration run (the shared set or a tenant's).
pub(crate) fn outcome_json(outcome: &Outcome) -> Value {
    match outcome {
        Outcome::Applied {
            versions,
            non_transactional,
        } => {
            json!({ "result": "applied", "versions": versions, "non_transactional": non_transactional })
        }
        Outcome::UpToDate => json!({ "result": "up_to_date" }),
        Outcome::Pending { versions } if versions.is_empty() => json!({ "result": "up_to_date" }),
        Outcome::Pending { versions } => json!({ "result": "pending", "versions": versions }),
        Outcome::Failed {
            version,
            error,
            applied,
        } => {
            json!({ "result": "failed", "version": version, "error": error.to_string(), "applied": applied })
        }
        Outcome::SchemaMissing => {
            json!({ "result": "schema_missing", "error": "the schema does not exist" })
        }
        Outcome::SchemaNotOnPath {
            version,
            current_schema,
            applied,
            ..
        } => json!({
            "result": "schema_not_on_path",
            "version": version,
            "current_schema": current_schema,
            "error": outcome.to_string(),
            "applied": applied,
        }),
        Outcome::Locked => json!({ "result": "locked" }),
        Outcome::NotRun => json!({ "result": "not_run" }),
        other => json!({ "result": other.to_string() }),
    }
}

/// A tenant moved (or to move) between Citus nodes.
pub(crate) fn move_json(m: &citus::Move) -> Value {
    json!({
        "schema": m.schema,
        "from": m.from.to_string(),
        "to": m.to.to_string(),
        "seconds": m.elapsed.as_secs_f64(),
    })
}

/// The database's mode and its nodes (none but on Citus).
pub(crate) fn cluster_json(cluster: &Cluster) -> Value {
    json!({
        "mode": cluster.mode.as_str(),
        "nodes": cluster.nodes.iter().map(|n| json!({
            "node": n.addr.to_string(),
            "role": node_role(n),
            "active": n.active,
            "should_have_shards": n.should_have_shards,
            "tenants": n.tenants,
        })).collect::<Vec<_>>(),
    })
}

/// `mode: single`, or the mode and one line per node.
pub(crate) fn cluster_text(cluster: &Cluster) -> String {
    let mut out = format!("mode: {}", cluster.mode);
    for n in &cluster.nodes {
        out += &format!(
            "\n  {} {}{}{}, {} tenant{}",
            node_role(n),
            n.addr,
            if n.active { "" } else { " (inactive)" },
            if n.should_have_shards {
                ""
            } else {
                " (no shards)"
            },
            n.tenants,
            if n.tenants == 1 { "" } else { "s" }
        );
    }
    out
}

fn node_role(node: &citus::Node) -> &'static str {
    if node.is_coordinator() {
        "coordinator"
    } else {
        "worker"
    }
}
