//! The pgoutput fuzz harness, shared by the fuzz command (`fuzz/main.rs`, run by
//! `scripts/fuzz`) and the regression test (`tests/fuzz_regressions.rs`): the case format
//! ([`case`]), a pgoutput encoder ([`encode`]) and the driver with its invariants ([`run`]).
//!
//! Must not: use randomness, the clock or any I/O but reading case and fixture files, so a
//! saved case replays the same way in the fuzzer, in the test and on any machine.

pub mod case;
pub mod encode;
pub mod run;
