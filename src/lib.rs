//! dispatchbox: a transactional-outbox relay for PostgreSQL.
//!
//! ```text
//! Postgres WAL ──slot/pgoutput──▶ replication::client ──▶ replication::pgoutput ──▶ OutboxEvent
//!    ▲                                ▲ standby status (flush = settled prefix, replication::progress)
//!    │                                │
//!    │        store::status (batched UPDATE … FROM unnest) ◀── outcomes ◀── dispatch ──▶ sink::{kafka,webhook,stdout}
//!    │                                                                        ▲
//!    └── sweeper (due retries, expired leases, rows the stream missed) ───────┘
//! ```
//!
//! - [`replication`] owns the WAL side: the wire client, the pure pgoutput decoder, the
//!   relation → event mapping, and [`replication::progress`], the single owner of the
//!   confirmed-flush LSN.
//! - [`dispatch`] routes events, keeps per-aggregate order, parks what must wait, and turns
//!   results into outcomes with the retry policy; it never sees LSNs.
//! - [`sink`] delivers events; sinks never touch the database.
//! - [`sweeper`] delivers due rows with leases: retries, expired claims, missed rows.
//! - [`store`] holds all SQL: migrations, status write-back, claims, checks, reports, dead
//!   letters, archive.
//! - [`relay`] wires the tasks together for `dispatchbox run`, with shutdown; [`admin`]
//!   serves probes, metrics and the dead-letter API; [`telemetry`] owns logs and metrics.
//! - [`cli`] holds the one-shot commands; [`config`] the validated environment.

pub mod admin;
pub mod cli;
pub mod config;
pub mod conninfo;
pub mod dispatch;
pub mod event;
pub mod flow;
pub mod lsn;
pub mod names;
pub mod ops;
pub mod relay;
pub mod retry;
pub mod secret;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod status;
pub mod store;
pub mod sweeper;
pub mod telemetry;
