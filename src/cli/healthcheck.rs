//! `dispatchbox healthcheck`: exit 0 when the running relay's `/health` answers 200 on
//! `DISPATCHBOX_HTTP_ADDR`, 1 otherwise. Needs nothing else from the environment, so a
//! container `HEALTHCHECK` can run it without curl.

use std::process::ExitCode;

/// Runs the check (blocking; no async runtime needed).
pub fn run_blocking() -> ExitCode {
    eprintln!("dispatchbox healthcheck: not implemented yet");
    ExitCode::FAILURE
}
