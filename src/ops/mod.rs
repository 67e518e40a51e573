//! Operator tools, not the pipeline: preflight checks and their help texts ([`checks`]),
//! status and slot reports ([`report`]), dead-letter management ([`dead`]) and the archive
//! ([`archive`]). Used by the one-shot commands (`cli`) and the admin API (`admin`),
//! which sit above this module; the relay's stages never call them, except the start-up preflight.

pub mod archive;
pub mod checks;
pub mod dead;
pub mod replay;
pub mod report;
