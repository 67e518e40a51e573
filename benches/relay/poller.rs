//! The polling baselines: the classic outbox worker the relay replaces, written here so it
//! runs against the same database and load, with prepared statements and a no-op handler
//! (the cheapest a polling worker gets). A round claims up to 100 due `pending` rows with
//! `SELECT … FOR UPDATE SKIP LOCKED` (through the due index, in due order) and marks each
//! `done` with its own UPDATE; a round that found fewer than 100 rows sleeps the poll
//! interval (1 s). Two ways to commit:
//!
//! - [`Commit::PerRound`]: the claim and every UPDATE in one transaction per round;
//! - [`Commit::PerEvent`]: the claim commits at once, then each UPDATE commits on its own:
//!   the protocol of the Python Dispatchbox worker this project succeeds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const BATCH: i64 = 100;
const POLL_INTERVAL: Duration = Duration::from_secs(1);

const CLAIM: &str = "
    SELECT id, aggregate_type, aggregate_id, event_type, payload::text, headers::text
      FROM public.outbox_event
     WHERE status = 'pending' AND next_run_at <= now()
     ORDER BY next_run_at
     LIMIT $1
       FOR UPDATE SKIP LOCKED";

const MARK_DONE: &str = "
    UPDATE public.outbox_event
       SET status = 'done', attempts = attempts + 1, delivered_at = now()
     WHERE id = $1";

/// When a polling worker commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    PerRound,
    PerEvent,
}

/// A running polling worker.
#[derive(Debug)]
pub struct Poller {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Poller {
    /// Connects to `url` and starts polling.
    pub async fn start(url: &str, commit: Commit) -> Self {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("poller connects");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let claim = client.prepare(CLAIM).await.expect("prepare claim");
                let done = client.prepare(MARK_DONE).await.expect("prepare update");
                while !stop.load(Ordering::Relaxed) {
                    client.batch_execute("BEGIN").await.expect("begin");
                    let rows = client.query(&claim, &[&BATCH]).await.expect("claim");
                    if commit == Commit::PerEvent {
                        client
                            .batch_execute("COMMIT")
                            .await
                            .expect("commit the claim");
                    }
                    for row in &rows {
                        let id: i64 = row.get(0);
                        // The no-op handler: the event is read, nothing else.
                        let _payload: &str = row.get(4);
                        client.execute(&done, &[&id]).await.expect("mark done");
                    }
                    if commit == Commit::PerRound {
                        client.batch_execute("COMMIT").await.expect("commit");
                    }
                    if (rows.len() as i64) < BATCH {
                        tokio::time::sleep(POLL_INTERVAL).await;
                    }
                }
            }
        });
        Self { stop, task }
    }

    /// Stops after the current round.
    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
    }
}
