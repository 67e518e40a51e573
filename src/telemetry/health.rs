//! The relay's health as the probes see it: what the replication stream is doing, what
//! each sink's last check found, and whether shutdown has begun. The source reports its
//! state, the relay reports sink checks and shutdown, and the admin server reads them for
//! `/ready`. Plain atomics and short locks: setting a state never blocks or fails.
//!
//! Setting the stream state also updates the `dispatchbox_stream_connected` and
//! `dispatchbox_leader` gauges, and a sink's check `dispatchbox_sink_up`, so the metrics
//! and the probe can never disagree. This module decides nothing; it only records what it
//! is told.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use super::metrics;

/// The [`Health::set_problem`] component of a stream that cannot see the outbox's inserts
/// (set by the source and by the relay's periodic check; cleared by the latter).
pub const OUTBOX_TABLE: &str = "outbox table";

/// What the replication stream is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamState {
    /// Not connected yet (startup checks, first connection).
    Starting,
    /// Streaming from the slot: this process is the leader.
    Streaming,
    /// Another process holds the slot; this one waits to take over.
    StandingBy,
    /// The stream broke; reconnecting with backoff.
    Reconnecting,
    /// The source stopped (shutdown or a definite error).
    Stopped,
}

impl StreamState {
    /// Lower-case words for probes and logs: `starting`, `streaming`, `standing by`,
    /// `reconnecting`, `stopped`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Streaming => "streaming",
            Self::StandingBy => "standing by",
            Self::Reconnecting => "reconnecting",
            Self::Stopped => "stopped",
        }
    }

    fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::Streaming,
            2 => Self::StandingBy,
            3 => Self::Reconnecting,
            4 => Self::Stopped,
            _ => Self::Starting,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            Self::Starting => 0,
            Self::Streaming => 1,
            Self::StandingBy => 2,
            Self::Reconnecting => 3,
            Self::Stopped => 4,
        }
    }
}

/// Shared health handle; clones see the same state.
#[derive(Debug, Clone, Default)]
pub struct Health {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    stream: AtomicU8,
    shutting_down: AtomicBool,
    /// Why a part of the pipeline cannot do its work, by part.
    problems: Mutex<BTreeMap<&'static str, String>>,
    /// Each checked sink's last result: `None` when it passed, else why it failed.
    sinks: Mutex<BTreeMap<String, Option<String>>>,
}

/// What the last check of a sink found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkHealth {
    /// Not checked yet.
    Unknown,
    /// The check passed.
    Up,
    /// The check failed, for this reason.
    Down(String),
}

impl Health {
    /// A handle in [`StreamState::Starting`], not shutting down.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the stream's state and updates the stream gauges. `dispatchbox_leader`
    /// becomes 1 when streaming and 0 when standing by or stopped; while reconnecting it
    /// keeps its value (the slot is presumably still ours until another process takes it).
    pub fn set_stream(&self, state: StreamState) {
        self.inner.stream.store(state.to_u8(), Ordering::Release);
        metrics::stream_connected(state == StreamState::Streaming);
        match state {
            StreamState::Streaming => metrics::leader(true),
            StreamState::StandingBy | StreamState::Stopped => metrics::leader(false),
            StreamState::Starting | StreamState::Reconnecting => {}
        }
    }

    /// The stream's current state.
    pub fn stream(&self) -> StreamState {
        StreamState::from_u8(self.inner.stream.load(Ordering::Acquire))
    }

    /// Records (`Some`) or clears (`None`) why `component` cannot do its work; `/ready`
    /// answers 503 with every recorded reason.
    pub fn set_problem(&self, component: &'static str, reason: Option<String>) {
        // A poisoned lock only means a panic mid-insert; the map is still usable.
        let mut problems = self
            .inner
            .problems
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match reason {
            Some(reason) => problems.insert(component, reason),
            None => problems.remove(component),
        };
    }

    /// Whether a problem of `component` is recorded.
    pub fn has_problem(&self, component: &str) -> bool {
        let problems = self
            .inner
            .problems
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        problems.contains_key(component)
    }

    /// The recorded problems, as `component: reason`.
    pub fn problems(&self) -> Vec<String> {
        let problems = self
            .inner
            .problems
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        problems
            .iter()
            .map(|(component, reason)| format!("{component}: {reason}"))
            .collect()
    }

    /// Records the result of `sink`'s check (`Err`: why it failed) and sets
    /// `dispatchbox_sink_up`. Returns what the previous check found.
    pub fn set_sink(&self, sink: &str, result: Result<(), String>) -> SinkHealth {
        metrics::sink_up(sink, result.is_ok());
        let mut sinks = self.inner.sinks.lock().unwrap_or_else(|e| e.into_inner());
        match sinks.insert(sink.to_owned(), result.err()) {
            None => SinkHealth::Unknown,
            Some(None) => SinkHealth::Up,
            Some(Some(reason)) => SinkHealth::Down(reason),
        }
    }

    /// What the last check of `sink` found.
    pub fn sink(&self, sink: &str) -> SinkHealth {
        let sinks = self.inner.sinks.lock().unwrap_or_else(|e| e.into_inner());
        match sinks.get(sink) {
            None => SinkHealth::Unknown,
            Some(None) => SinkHealth::Up,
            Some(Some(reason)) => SinkHealth::Down(reason.clone()),
        }
    }

    /// Marks the start of shutdown: from now on the relay is never ready again.
    pub fn begin_shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::Release);
    }

    /// True once [`Health::begin_shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_state() {
        let health = Health::new();
        let seen_by_probe = health.clone();
        assert_eq!(seen_by_probe.stream(), StreamState::Starting);
        for state in [
            StreamState::Streaming,
            StreamState::StandingBy,
            StreamState::Reconnecting,
            StreamState::Stopped,
        ] {
            health.set_stream(state);
            assert_eq!(seen_by_probe.stream(), state);
        }
        health.set_problem("status writer", Some("stuck".into()));
        assert_eq!(seen_by_probe.problems(), ["status writer: stuck"]);
        health.set_problem("status writer", None);
        assert!(seen_by_probe.problems().is_empty());
        assert_eq!(seen_by_probe.sink("kafka"), SinkHealth::Unknown);
        assert_eq!(
            health.set_sink("kafka", Err("broker down".into())),
            SinkHealth::Unknown
        );
        assert_eq!(
            seen_by_probe.sink("kafka"),
            SinkHealth::Down("broker down".into())
        );
        assert_eq!(
            health.set_sink("kafka", Ok(())),
            SinkHealth::Down("broker down".into())
        );
        assert_eq!(seen_by_probe.sink("kafka"), SinkHealth::Up);
        assert!(!seen_by_probe.is_shutting_down());
        health.begin_shutdown();
        assert!(seen_by_probe.is_shutting_down());
    }
}
