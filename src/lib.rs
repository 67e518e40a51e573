//! dispatchbox: a transactional-outbox relay for PostgreSQL.
//!
//! The pipeline, in the order an event travels:
//!
//! ```text
//! Postgres WAL ──slot/pgoutput──▶ source ──Work──▶ dispatch ──▶ sink::{kafka,nats,redis,rabbitmq,webhook,stdout}
//!    ▲                              ▲ flush = settled prefix           │ outcomes
//!    │                              │ (source::progress)               ▼
//!    │                              └──── acks settled ◀──── status (batched UPDATE)
//!    └── sweeper: due retries, expired leases, rows the stream missed ──▶ dispatch
//! ```
//!
//! # The house: arrows only point down
//!
//! Each top-level module may import only from its own layer and the layers below; no two
//! modules import each other. `tests/module_graph.rs` checks both on every test run.
//!
//! | layer | modules | what it is |
//! |---|---|---|
//! | commands | [`cli`] | one-shot commands; `run` starts [`relay`] |
//! | wiring | [`relay`] | builds the stages from the configuration, one shutdown path |
//! | admin | [`admin`] | probes, `/metrics`, the dead-letter API |
//! | operator tools | [`ops`] | preflight checks and help texts, reports, dead letters, archive |
//! | configuration | [`config`] | the validated `DISPATCHBOX_*` environment, one section per stage |
//! | stages | [`sweeper`] > [`dispatch`] > [`status`] > [`sink`] > [`source`] | the pipeline |
//! | store | [`store`] | SQL only: migrations, the outcome UPDATEs, claims, the dead-row count |
//! | services | [`telemetry`], [`flow`] | logs, metrics, health; the byte budget and blocked aggregates |
//! | vocabulary | [`event`], [`lsn`], [`names`], [`secret`], [`conninfo`], [`retry`], [`shutdown`] | the types and rules every stage speaks; they import nothing above them |
//!
//! - [`source`] owns the WAL side: the wire client, the pure pgoutput decoder, the outbox
//!   relation cache, [`source::progress`] (the single owner of the confirmed-flush LSN) and
//!   [`source::slot`] (the one place that inspects, judges, creates and drops the slot).
//!   It depends on nothing above the store.
//! - [`event::mapping`] is the one row → event mapping, used by the stream (pgoutput tuples)
//!   and the sweeper (rows it read); [`retry`] the one retry-delay rule.
//! - [`dispatch`] routes events, keeps per-aggregate order, parks what must wait, and turns
//!   results into outcomes with the retry policy; it never sees LSNs.
//! - [`sink`] delivers events; sinks never touch the database.
//! - [`status`] writes outcomes of streamed events in batches and settles their acks.
//! - [`sweeper`] delivers due rows under leases: retries, expired claims, missed rows.
//! - [`telemetry::events`]: what operators must hear about, as values that write their log
//!   line and update their metrics together.

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
pub mod tls;
