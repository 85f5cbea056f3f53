//! `diesel-tenancy`: migrations, tenants and domains of a schema-per-tenant
//! Diesel application, from the command line.
//!
//! Exit codes: 0 success; 1 a tenant (or another operation on the database)
//! failed; 2 usage or connection error.

mod args;
mod commands;
mod output;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

use args::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    output::finish(commands::run(cli, std::io::stderr().is_terminal()), json)
}
