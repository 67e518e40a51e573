//! CPU time of processes, from `/proc`: the relay's own, and PostgreSQL's per backend, so the
//! database cost of a consumer counts only its own walsender and backends (by pid), never
//! the application's inserts.
//!
//! `/proc/<pid>/schedstat` gives on-CPU time in nanoseconds (`stat`'s clock ticks are 10 ms,
//! too coarse for a few hundred events); `stat` is the fallback where schedstat is missing.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the server's processes are sampled: a process that exits between samples
/// loses at most this much of its CPU time (autovacuum workers come and go).
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// On-CPU seconds of single-threaded process `pid` so far (user + system), or `None` when
/// it is gone. PostgreSQL's processes are single-threaded.
pub fn process_seconds(pid: u32) -> Option<f64> {
    if let Some(ns) = schedstat_ns(&format!("/proc/{pid}/schedstat")) {
        return Some(ns as f64 / 1e9);
    }
    stat_seconds(pid)
}

/// On-CPU seconds of every thread of `pid` so far: the sum of its live threads' schedstat,
/// or `stat`'s process total (which also counts exited threads) when that is larger.
pub fn process_tree_seconds(pid: u32) -> Option<f64> {
    let threads: u64 = std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
        .filter_map(|t| schedstat_ns(&format!("{}/schedstat", t.path().display())))
        .sum();
    let stat = stat_seconds(pid).unwrap_or(0.0);
    Some((threads as f64 / 1e9).max(stat))
}

fn schedstat_ns(path: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// utime + stime of the whole process (clock ticks of 10 ms).
fn stat_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields = stat_fields(&stat)?;
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// The fields after the parenthesised command name (field 3 onwards).
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    Some(stat.rsplit_once(')')?.1.split_whitespace().collect())
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_fields(&stat)?.get(1)?.parse().ok()
}

/// The postmaster's pid, from the first line of `postmaster.pid`.
pub fn postmaster_pid(data_dir: &Path) -> u32 {
    std::fs::read_to_string(data_dir.join("postmaster.pid"))
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.trim().parse().ok()))
        .expect("read postmaster.pid")
}

/// CPU seconds of one server process over the window.
#[derive(Debug, Clone, Copy)]
struct Seen {
    first: f64,
    last: f64,
}

/// Samples every child of the postmaster until stopped. Processes alive at the first
/// sample count from then; processes started later count from zero (all their time is in
/// the window).
#[derive(Debug)]
pub struct ServerSampler {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<HashMap<u32, Seen>>>,
    thread: Option<JoinHandle<()>>,
}

impl ServerSampler {
    /// Takes the first sample now, then samples in the background.
    pub fn start(postmaster: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(HashMap::new()));
        sample(postmaster, &seen, true);
        let thread = std::thread::spawn({
            let (stop, seen) = (stop.clone(), seen.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(SAMPLE_EVERY);
                    sample(postmaster, &seen, false);
                }
                sample(postmaster, &seen, false);
            }
        });
        Self {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// Stops sampling; returns each process's CPU seconds in the window.
    pub fn stop(mut self) -> HashMap<u32, f64> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .map(|(&pid, s)| (pid, (s.last - s.first).max(0.0)))
            .collect()
    }
}

fn sample(postmaster: u32, seen: &Mutex<HashMap<u32, Seen>>, initial: bool) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    let mut seen = seen.lock().unwrap();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if parent_of(pid) != Some(postmaster) {
            continue;
        }
        let Some(cpu) = process_seconds(pid) else {
            continue;
        };
        seen.entry(pid)
            .and_modify(|s| s.last = cpu)
            .or_insert(Seen {
                first: if initial { cpu } else { 0.0 },
                last: cpu,
            });
    }
}

/// Which server processes belong to whom, learnt from `pg_stat_activity` while a window
/// runs (connections can open mid-window).
#[derive(Debug, Default, Clone)]
pub struct Owners {
    /// The consumer's walsender(s).
    pub walsenders: std::collections::HashSet<u32>,
    /// The consumer's other backends (status writes, sweeper, polling queries…).
    pub backends: std::collections::HashSet<u32>,
    /// The benchmark's own connections (the application's inserts, monitoring).
    pub bench: std::collections::HashSet<u32>,
}

/// Server CPU in a window, split by owner.
#[derive(Debug, Default, Clone, Copy)]
pub struct ServerCpu {
    pub walsender: f64,
    pub backends: f64,
    /// The application's inserts and the benchmark's monitoring queries.
    pub bench: f64,
    /// Everything else: autovacuum, checkpointer, background and WAL writers.
    pub background: f64,
}

impl ServerCpu {
    /// The consumer's own cost: walsender plus backends.
    pub fn consumer(&self) -> f64 {
        self.walsender + self.backends
    }

    pub fn split(per_pid: &HashMap<u32, f64>, owners: &Owners) -> Self {
        let mut cpu = Self::default();
        for (pid, &seconds) in per_pid {
            if owners.walsenders.contains(pid) {
                cpu.walsender += seconds;
            } else if owners.backends.contains(pid) {
                cpu.backends += seconds;
            } else if owners.bench.contains(pid) {
                cpu.bench += seconds;
            } else {
                cpu.background += seconds;
            }
        }
        cpu
    }
}

/// Adds the current connections of `consumer_role` (walsenders and backends) and the other
/// client backends (the benchmark's) to `owners`.
pub async fn learn_owners(
    monitor: &tokio_postgres::Client,
    consumer_role: &str,
    owners: &Mutex<Owners>,
) {
    let rows = monitor
        .query(
            "SELECT pid, usename::text, backend_type FROM pg_stat_activity WHERE usename IS NOT NULL",
            &[],
        )
        .await
        .expect("read pg_stat_activity");
    let mut owners = owners.lock().unwrap();
    for row in rows {
        let pid = row.get::<_, i32>(0) as u32;
        let user: String = row.get(1);
        let kind: String = row.get(2);
        match (user == consumer_role, kind.as_str()) {
            (true, "walsender") => owners.walsenders.insert(pid),
            (true, _) => owners.backends.insert(pid),
            (false, "client backend") => owners.bench.insert(pid),
            // Autovacuum and the other background processes are counted by elimination.
            (false, _) => false,
        };
    }
}
