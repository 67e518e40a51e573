//! `dispatchbox status`: slot, lag and row counts.

use crate::config::Config;

/// Arguments of `dispatchbox status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {}

/// Runs the command.
pub async fn run(_config: &Config, _args: &StatusArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("not implemented yet")
}
