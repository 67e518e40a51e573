//! A server process a test starts, kills and starts again on one loopback port (tansu,
//! nats-server, redis-server): the part their fixtures share. Each start logs to a file
//! of its own in the server's directory; a start that dies or does not get ready is killed
//! and tried again (the port can still be held right after a stop) until a deadline, then
//! the test panics with the logs. Killed on drop.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::postgres::free_port;

#[derive(Debug)]
pub struct ServerProcess {
    name: &'static str,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    starts: usize,
}

impl ServerProcess {
    /// A server `name` (for file names and messages) on a free port, not started yet.
    pub fn new(name: &'static str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("dispatchbox-{name}-"))
            .tempdir()
            .unwrap_or_else(|e| panic!("create the {name} directory: {e}"));
        Self {
            name,
            port: free_port(),
            dir,
            child: None,
            starts: 0,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's own directory (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts what `command` builds (its output goes to this start's log) and waits until
    /// `ready`, asked with the port, says it serves (`ready_means` says what it checks, for
    /// the panic message); retries as the module doc says within `timeout`.
    pub fn start(
        &mut self,
        timeout: Duration,
        ready_means: &str,
        mut command: impl FnMut() -> Command,
        mut ready: impl FnMut(u16) -> bool,
    ) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let deadline = Instant::now() + timeout;
        loop {
            self.starts += 1;
            let log = std::fs::File::create(self.log_path(self.starts))
                .unwrap_or_else(|e| panic!("create the {} log: {e}", self.name));
            let child = command()
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone log handle"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", self.name));
            self.child = Some(child);
            if self.wait_ready(deadline, &mut ready) {
                return;
            }
            self.stop();
            assert!(
                Instant::now() < deadline,
                "{} did not {ready_means} on port {} within {timeout:?}; logs:\n{}",
                self.name,
                self.port,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Polls `ready` until it says yes, the process dies, or the deadline passes.
    fn wait_ready(&mut self, deadline: Instant, ready: &mut impl FnMut(u16) -> bool) -> bool {
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_status)) = child.try_wait() {
                    return false;
                }
            }
            if ready(self.port) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Kills the server (SIGKILL: an outage, not a graceful shutdown).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Everything the server logged so far, one start after the other.
    pub fn logs(&self) -> String {
        (1..=self.starts)
            .map(|n| std::fs::read_to_string(self.log_path(n)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }

    fn log_path(&self, start: usize) -> std::path::PathBuf {
        self.dir.path().join(format!("{}-{start}.log", self.name))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}
