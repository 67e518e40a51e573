//! `dispatchbox check`: preflight of the database and the sinks, with fixes.

use crate::config::Config;

/// Arguments of `dispatchbox check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {}

/// Runs the command.
pub async fn run(_config: &Config, _args: &CheckArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("not implemented yet")
}
