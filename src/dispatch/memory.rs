//! An in-memory [`DispatchStore`] for the dispatcher's unit tests: which rows have left
//! `pending`, which aggregates have a backlog, whether the database answers at all, and a
//! log of the questions asked.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};

use super::DispatchStore;
use crate::store::sweep::SettledRows;
use crate::store::StoreError;

/// One question the dispatcher asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Asked {
    SettledAmong(Vec<i64>),
    Backlog(String, String),
}

#[derive(Debug, Default)]
struct State {
    settled: HashSet<i64>,
    waiting: HashSet<i64>,
    backlogged: HashSet<(String, String)>,
    failing: bool,
    asked: Vec<Asked>,
    /// When set, backlog lookups wait for a permit (a slow database).
    gate: Option<Arc<tokio::sync::Semaphore>>,
}

/// The in-memory outbox; clones share it.
#[derive(Debug, Clone, Default)]
pub(super) struct MemoryDispatchStore {
    state: Arc<Mutex<State>>,
}

impl MemoryDispatchStore {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Rows `ids` are no longer `pending` (an earlier run settled them).
    pub fn settle(&self, ids: impl IntoIterator<Item = i64>) {
        self.state().settled.extend(ids);
    }

    /// Rows `ids` (also given to [`MemoryDispatchStore::settle`]) are in `retry` or
    /// `processing`: the sweeper's, still to be delivered.
    pub fn waiting(&self, ids: impl IntoIterator<Item = i64>) {
        self.state().waiting.extend(ids);
    }

    /// The aggregate has rows in `retry` or `processing`.
    pub fn backlog(&self, aggregate_type: &str, aggregate_id: &str) {
        self.state()
            .backlogged
            .insert((aggregate_type.to_owned(), aggregate_id.to_owned()));
    }

    /// Backlog lookups wait until the returned semaphore gives a permit (each lookup takes
    /// one), as behind a database that answers late.
    pub fn gate_backlog(&self) -> Arc<tokio::sync::Semaphore> {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        self.state().gate = Some(gate.clone());
        gate
    }

    /// Every question fails (the database is unreachable).
    pub fn fail(&self) {
        self.state().failing = true;
    }

    /// The questions asked so far, in order.
    pub fn asked(&self) -> Vec<Asked> {
        self.state().asked.clone()
    }

    /// Records `asked`; the simulated failure when the database is down.
    fn ask(&self, asked: Asked) -> Result<MutexGuard<'_, State>, StoreError> {
        let mut state = self.state();
        state.asked.push(asked);
        if state.failing {
            return Err(StoreError::simulated("replayed events lookup", "08006"));
        }
        Ok(state)
    }
}

impl DispatchStore for MemoryDispatchStore {
    async fn settled_among(&self, ids: &[i64]) -> Result<SettledRows, StoreError> {
        let state = self.ask(Asked::SettledAmong(ids.to_vec()))?;
        let settled: HashSet<i64> = ids
            .iter()
            .copied()
            .filter(|id| state.settled.contains(id))
            .collect();
        let waiting = settled
            .iter()
            .copied()
            .filter(|id| state.waiting.contains(id))
            .collect();
        Ok(SettledRows { settled, waiting })
    }

    async fn aggregate_has_backlog(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<bool, StoreError> {
        let pair = (aggregate_type.to_owned(), aggregate_id.to_owned());
        let (answer, gate) = {
            let state = self.ask(Asked::Backlog(pair.0.clone(), pair.1.clone()))?;
            (state.backlogged.contains(&pair), state.gate.clone())
        };
        if let Some(gate) = gate {
            gate.acquire()
                .await
                .map_err(|_| StoreError::simulated("aggregate backlog lookup", "08006"))?
                .forget();
        }
        Ok(answer)
    }
}
