//! The WAL side of the relay: connect to the slot, decode pgoutput, map outbox INSERTs to
//! events, and report progress. Never issues UPDATEs (that is the store's job).

pub mod client;
pub mod failover;
pub mod lsn;
pub mod pgoutput;
pub mod progress;
pub mod relation;
pub mod source;
