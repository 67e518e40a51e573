//! The one-shot subcommands: connect, call the store, print a report for a human (or JSON
//! for a script). The edge of the program, so errors are `anyhow` with context. The relay
//! itself (`run`) lives in [`crate::relay`].

pub mod archive;
pub mod check;
pub mod dead;
pub mod healthcheck;
pub mod migrate;
pub mod replay;
pub mod status;

use anyhow::Context;
use chrono::{DateTime, Utc};
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use crate::config::Config;
use crate::ops::dead::{parse_time, InvalidTime};

/// Exit code of a usage error (same as clap's).
pub(crate) const EXIT_USAGE: u8 = 2;

/// clap's parser of a `--since`/`--until` value: RFC 3339, a date or an age before now.
pub(crate) fn time_arg(text: &str) -> Result<DateTime<Utc>, InvalidTime> {
    parse_time(text, Utc::now())
}

/// One SQL connection to the configured database for a command, with the error naming the
/// (redacted) URL. Abort the returned task once the client is dropped.
async fn connect(config: &Config) -> anyhow::Result<(Client, JoinHandle<()>)> {
    let conninfo = &config.database.conninfo;
    conninfo
        .connect_sql()
        .await
        .with_context(|| format!("cannot connect to {}", conninfo.redacted_url()))
}
