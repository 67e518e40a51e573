//! `dispatchbox dead …`: dead-letter management.

use crate::config::Config;

/// Arguments of `dispatchbox dead`.
#[derive(Debug, clap::Args)]
pub struct DeadArgs {}

/// Runs the command.
pub async fn run(_config: &Config, _args: &DeadArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("not implemented yet")
}
