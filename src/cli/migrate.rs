//! `dispatchbox migrate`: applies the embedded migrations and reports what it did.

use anyhow::Context;

use crate::config::Config;

/// `dispatchbox migrate`: applies the embedded migrations to the configured table.
pub async fn run(config: &Config) -> anyhow::Result<()> {
    let (mut client, connection) = super::connect(config).await?;
    let report = crate::store::migrate::migrate(&mut client, &config.database.names)
        .await
        .with_context(|| format!("migrating {}", config.database.names.table()))?;
    drop(client);
    connection.abort();
    if report.applied.is_empty() {
        println!(
            "{}: up to date (migrations {:?} already applied)",
            config.database.names.table(),
            report.skipped
        );
    } else {
        println!(
            "{}: applied migrations {:?}; publication {} publishes its inserts",
            config.database.names.table(),
            report.applied,
            config.database.names.publication()
        );
    }
    Ok(())
}
