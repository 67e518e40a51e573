//! `dispatchbox archive`: moves old `done` (optionally `dead`) rows to the archive table.

use crate::config::Config;

/// Arguments of `dispatchbox archive`.
#[derive(Debug, clap::Args)]
pub struct ArchiveArgs {}

/// Runs the command.
pub async fn run(_config: &Config, _args: &ArchiveArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("not implemented yet")
}
