//! Admin HTTP: the dead-letter API under `/api` (placeholder module file; the server with
//! /health, /ready and /metrics is merged in by the lead).

pub mod api;
