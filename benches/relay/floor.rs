//! The physical floor of reading the stream: `pg_recvlogical` on a slot of the same type
//! (pgoutput, protocol 1, the same publication) as the relay's, reading the same WAL.
//!
//! Its output is piped to a reader thread that timestamps each chunk as it arrives and
//! finds the events' `#<id>#` payload markers in it, so the floor's latency and completion
//! are measured the same way as the relay's.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::load::MarkerScanner;

/// Locates `pg_recvlogical` (PostgreSQL's bin directory first, then `PATH`).
fn binary() -> PathBuf {
    let mut candidates: Vec<PathBuf> = ["17", "16", "15"]
        .iter()
        .map(|v| PathBuf::from(format!("/usr/lib/postgresql/{v}/bin/pg_recvlogical")))
        .collect();
    if let Ok(path) = std::env::var("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("pg_recvlogical")));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .expect("pg_recvlogical not found; run scripts/install-test-deps (postgresql-15)")
}

/// Where to connect and what to stream.
#[derive(Debug, Clone)]
pub struct Target {
    pub port: u16,
    pub user: String,
    pub password: String,
    pub database: String,
    pub slot: String,
    pub publication: String,
}

/// A running `pg_recvlogical --start`; killed on drop.
#[derive(Debug)]
pub struct Recvlogical {
    child: Child,
    arrivals: Arc<Mutex<Vec<(i64, Instant)>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Recvlogical {
    /// Starts streaming from the slot's confirmed position.
    pub fn start(target: &Target) -> Self {
        let mut child = Command::new(binary())
            .args(["-h", "127.0.0.1", "-p", &target.port.to_string()])
            .args(["-U", &target.user, "-d", &target.database])
            .args(["--slot", &target.slot, "--start", "--no-loop"])
            .args(["-o", "proto_version=1"])
            .arg("-o")
            .arg(format!("publication_names={}", target.publication))
            .args(["-f", "-"])
            .env("PGPASSWORD", &target.password)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn pg_recvlogical");
        let mut stdout = child.stdout.take().expect("piped stdout");
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let reader = std::thread::spawn({
            let arrivals = arrivals.clone();
            move || {
                let mut scanner = MarkerScanner::default();
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    let n = match stdout.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let at = Instant::now();
                    let mut found = Vec::new();
                    scanner.feed(&buf[..n], |id| found.push((id, at)));
                    arrivals.lock().unwrap().extend(found);
                }
            }
        });
        Self {
            child,
            arrivals,
            reader: Some(reader),
        }
    }

    /// Events received so far (repeats included).
    pub fn received(&self) -> usize {
        self.arrivals.lock().unwrap().len()
    }

    /// Still running?
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops it and returns every arrival, in order.
    pub fn stop(mut self) -> Vec<(i64, Instant)> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        std::mem::take(&mut *self.arrivals.lock().unwrap())
    }
}

impl Drop for Recvlogical {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
