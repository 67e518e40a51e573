//! What the stages share to hold work back, so that the pipeline stays bounded and in order:
//! the byte budget ([`budget`], `DISPATCHBOX_MAX_IN_FLIGHT_BYTES`), held from decoding (or
//! the sweeper's load) until delivery ends, and the blocked aggregates ([`ordering`]): an
//! aggregate with an undelivered earlier event holds back its later ones, whether they
//! come from the stream or the sweeper. Neither knows about SQL, the WAL or sinks.

pub mod budget;
pub mod ordering;
