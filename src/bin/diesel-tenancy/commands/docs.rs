//! `completions` and `man`: the command line's own documentation, printed
//! without a database.

use anyhow::Result;
use clap::CommandFactory;

use crate::args::{Cli, Shell};
use crate::output::Ended;

pub(super) fn completions(shell: Shell) -> Result<Ended> {
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(
        shell,
        &mut Cli::command(),
        "diesel-tenancy",
        &mut std::io::stdout(),
    );
    Ok(Ended::Ok)
}

pub(super) fn man() -> Result<Ended> {
    clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
    Ok(Ended::Ok)
}
