//! An in-memory sink for the unit tests of the stages above the sinks (dispatch, the
//! sweeper): it records every hand-off in call order and answers as the test scripted it,
//! at once (`Ok` unless told otherwise) or when the test releases the delivery. Test-only;
//! it keeps the [`Sink`](super::Sink) contract (the hand-off happens inside `deliver`).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

use super::DeliveryError;
use crate::event::OutboxEvent;

/// What the next delivery of an event does.
#[derive(Debug)]
enum Answer {
    /// Resolves at once with this result.
    Now(Result<(), DeliveryError>),
    /// Resolves when the test sends the result.
    Later(oneshot::Receiver<Result<(), DeliveryError>>),
}

#[derive(Debug, Default)]
struct Inner {
    handed: Vec<i64>,
    script: HashMap<i64, VecDeque<Answer>>,
}

/// The sink; clones share the record and the script.
#[derive(Debug, Clone, Default)]
pub struct MemorySink {
    inner: Arc<Mutex<Inner>>,
}

impl MemorySink {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next delivery of event `id` fails with `error`.
    pub fn fail(&self, id: i64, error: DeliveryError) {
        self.script(id, Answer::Now(Err(error)));
    }

    /// The next delivery of event `id` waits until the test sends its result through the
    /// returned sender (dropping it fails the delivery retryably).
    pub fn hold(&self, id: i64) -> oneshot::Sender<Result<(), DeliveryError>> {
        let (tx, rx) = oneshot::channel();
        self.script(id, Answer::Later(rx));
        tx
    }

    fn script(&self, id: i64, answer: Answer) {
        self.inner().script.entry(id).or_default().push_back(answer);
    }

    /// The ids of every event handed over so far, in hand-off order.
    pub fn handed(&self) -> Vec<i64> {
        self.inner().handed.clone()
    }

    /// Records the hand-off of `event` now; the future answers as scripted.
    pub fn deliver(
        &self,
        event: &OutboxEvent,
    ) -> impl Future<Output = Result<(), DeliveryError>> + Send + 'static {
        let answer = {
            let mut inner = self.inner();
            inner.handed.push(event.id);
            inner
                .script
                .get_mut(&event.id)
                .and_then(VecDeque::pop_front)
        };
        async move {
            match answer {
                None => Ok(()),
                Some(Answer::Now(result)) => result,
                Some(Answer::Later(result)) => result.await.unwrap_or_else(|_| {
                    Err(DeliveryError::retryable("the test dropped the delivery"))
                }),
            }
        }
    }
}
