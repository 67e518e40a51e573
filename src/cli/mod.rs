//! The one-shot subcommands: connect, call the store, print a report for a human (or JSON
//! for a script). The edge of the program, so errors are `anyhow` with context. The relay
//! itself (`run`) lives in [`crate::relay`].

pub mod archive;
pub mod check;
pub mod dead;
pub mod healthcheck;
pub mod migrate;
pub mod status;
