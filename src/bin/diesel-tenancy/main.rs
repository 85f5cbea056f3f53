//! `diesel-tenancy`: migrations, tenants and domains of a schema-per-tenant
//! Diesel application, from the command line.
//!
//! Exit codes: 0 success; 1 a tenant (or another operation on the database)
//! failed; 2 usage or connection error.

mod args;
mod commands;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

use args::Cli;

/// An error that is the user's input or the connection, not a tenant: exit 2.
#[derive(Debug)]
pub(crate) struct UsageError(pub(crate) String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    match commands::run(cli, std::io::stderr().is_terminal()) {
        Ok(Ended::Ok) => ExitCode::SUCCESS,
        Ok(Ended::TenantsFailed) => ExitCode::from(1),
        Err(error) => {
            let code = exit_code(&error);
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "error": one_line(&error), "exit_code": code })
                );
            }
            eprintln!("error: {}", one_line(&error));
            ExitCode::from(code)
        }
    }
}
