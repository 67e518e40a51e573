//! dispatchbox: a transactional-outbox relay for PostgreSQL.
//!
//! ```text
//! Postgres WAL ──slot/pgoutput──▶ replication::client ──▶ replication::pgoutput ──▶ OutboxEvent
//!    ▲                                ▲ standby status (flush = settled prefix, replication::progress)
//!    │                                │
//!    │        store::status (batched UPDATE … FROM unnest) ◀── outcomes ◀── dispatch ──▶ sink::{kafka,stdout}
//!    │                                                                        ▲
//!    └── store (migrations, SQL plane) ────────────────────────────────────────┘
//! ```
//!
//! - [`replication`] owns the WAL side: the wire client, the pure pgoutput decoder, the
//!   relation → event mapping, and [`replication::progress`], the single owner of the
//!   confirmed-flush LSN.
//! - [`dispatch`] hands events to sinks and turns results into outcomes; it never sees LSNs.
//! - [`sink`] delivers events; sinks never touch the database.
//! - [`store`] holds all SQL: migrations, status write-back, heartbeats.
//! - [`relay`] wires the tasks together for `dispatchbox run`, with shutdown.

pub mod admin;
pub mod cli;
pub mod config;
pub mod conninfo;
pub mod dispatch;
pub mod event;
pub mod relay;
pub mod replication;
pub mod shutdown;
pub mod sink;
pub mod store;
pub mod sweeper;
pub mod telemetry;
