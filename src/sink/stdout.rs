//! The stdout sink: one JSON line per event, the zero-infrastructure default for trying
//! dispatchbox out and for piping into other tools.
//!
//! Line shape (keys in this order; `payload` is the outbox payload embedded verbatim):
//!
//! ```text
//! {"id":42,"aggregate_type":"order","aggregate_id":"o-1","event_type":"order.created",
//!  "created_at":"2024-01-02T03:04:05.000006Z","headers":{"traceparent":"…"},"payload":{…}}
//! ```
//!
//! With the `cloudevents` format each line is the event's structured CloudEvents document
//! instead (binary mode has no meaning for a line; see [`super::format::cloudevents`]).
//!
//! Lines are handed to a writer thread in call order and written in batches: whatever
//! queued while the previous write ran goes out with one `write` and one flush, so a fast
//! stream costs a system call per batch rather than per event, and a slow reader never
//! blocks the relay's async tasks (the replication feedback keeps running). `Ok` means the
//! line was written and flushed. A slow reader still slows delivery down: outcomes wait for
//! the writes, and the dispatcher bounds the events in flight.
//!
//! Write errors (including a broken pipe) are retryable: they are never the event's fault,
//! and a `dead` row would need an operator to resurrect it once the pipe is fixed, whereas
//! `retry` rows are picked up again by the sweeper after a restart. A failed write fails
//! every line of its batch (some may have been written: at-least-once allows that).

use std::future::Future;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use super::format::Format;
use super::DeliveryError;
use crate::event::OutboxEvent;

/// Writes events as JSON lines to stdout (or any writer, for tests).
///
/// Safe to share between tasks: lines are queued under one lock, in call order, and
/// written whole by one thread.
pub struct StdoutSink {
    queue: Arc<Queue>,
    format: Format,
}

impl std::fmt::Debug for StdoutSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StdoutSink").finish_non_exhaustive()
    }
}

/// Lines waiting for the writer thread.
#[derive(Default)]
struct Queue {
    pending: Mutex<Pending>,
    ready: Condvar,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    /// One entry per queued line: its event id and who waits for the outcome.
    waiting: Vec<(i64, oneshot::Sender<Result<(), DeliveryError>>)>,
    /// No more lines will come: write what is queued, then stop.
    closed: bool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // Every mutation is a single push or swap: a panic cannot leave it half done.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }
}

impl StdoutSink {
    /// A sink writing lines in `format` (native or CloudEvents) to the process's standard
    /// output.
    pub fn new(format: Format) -> Self {
        Self::with_writer(std::io::stdout()).with_format(format)
    }

    /// The same sink, writing lines in `format`.
    pub fn with_format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }

    /// A sink writing native lines to `writer` (tests capture the output this way).
    pub fn with_writer(writer: impl Write + Send + 'static) -> Self {
        let queue = Arc::new(Queue::default());
        let spawned = std::thread::Builder::new()
            .name("stdout-sink".into())
            .spawn({
                let queue = Arc::clone(&queue);
                move || write_batches(&queue, writer)
            });
        if let Err(error) = spawned {
            // Without the thread every delivery fails (retryably) with this reason.
            tracing::error!(sink = "stdout", error = %error, "cannot start the stdout writer thread");
            queue.close();
        }
        Self {
            queue,
            format: Format::Native,
        }
    }

    /// Renders `event`'s line and queues it now (lines keep the order of these calls);
    /// the future resolves once the line is written and flushed.
    pub fn deliver(
        &self,
        event: &OutboxEvent,
    ) -> impl Future<Output = Result<(), DeliveryError>> + Send + 'static {
        let id = event.id;
        let queued = self.render(event).and_then(|line| {
            let (tx, rx) = oneshot::channel();
            let mut pending = self.queue.lock();
            if pending.closed {
                return Err(DeliveryError::retryable(format!(
                    "the stdout sink is shut down; event {id} was not written"
                )));
            }
            pending.bytes.extend_from_slice(&line);
            pending.waiting.push((id, tx));
            if pending.waiting.len() == 1 {
                self.queue.ready.notify_one();
            }
            Ok(rx)
        });
        async move {
            match queued?.await {
                Ok(result) => result,
                Err(_) => Err(DeliveryError::retryable(format!(
                    "the stdout writer stopped before event {id} was written"
                ))),
            }
        }
    }

    /// Lets the writer thread write what is queued and stop; later deliveries fail.
    pub fn close(&self) {
        self.queue.close();
    }
}

impl Drop for StdoutSink {
    fn drop(&mut self) {
        self.queue.close();
    }
}

/// The writer thread: takes everything queued, writes it with one `write_all` and a flush,
/// tells each line's waiter, and repeats until closed and empty.
fn write_batches(queue: &Queue, mut out: impl Write) {
    let mut bytes = Vec::new();
    let mut waiting = Vec::new();
    loop {
        {
            let mut pending = queue.lock();
            while pending.waiting.is_empty() && !pending.closed {
                pending = queue
                    .ready
                    .wait(pending)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if pending.waiting.is_empty() {
                return;
            }
            std::mem::swap(&mut bytes, &mut pending.bytes);
            std::mem::swap(&mut waiting, &mut pending.waiting);
        }
        let written = out.write_all(&bytes).and_then(|()| out.flush());
        bytes.clear();
        for (id, tx) in waiting.drain(..) {
            let outcome = match &written {
                Ok(()) => Ok(()),
                Err(error) => Err(classify(error, id)),
            };
            // A waiter that went away (shutdown) no longer needs the outcome.
            let _ = tx.send(outcome);
        }
    }
}

/// Every write failure is retryable (see the module doc); the match keeps the broken-pipe
/// case explicit so its message can say what happened.
fn classify(err: &std::io::Error, event_id: i64) -> DeliveryError {
    match err.kind() {
        std::io::ErrorKind::BrokenPipe => DeliveryError::retryable(format!(
            "stdout is closed (broken pipe) while writing event {event_id}; \
             whatever reads dispatchbox's output has gone away"
        )),
        _ => DeliveryError::retryable(format!("writing event {event_id} to stdout failed: {err}")),
    }
}

impl StdoutSink {
    /// The line for `event` in the sink's format, newline included.
    fn render(&self, event: &OutboxEvent) -> Result<Vec<u8>, DeliveryError> {
        match &self.format {
            Format::CloudEvents(ce) => {
                let mut line = ce.structured(event).map_err(|err| {
                    DeliveryError::permanent(format!(
                        "payload of event {} is not valid json ({err}); it cannot be written \
                         as a CloudEvent",
                        event.id
                    ))
                })?;
                line.push(b'\n');
                Ok(line)
            }
            // The configuration refuses debezium for stdout; a native line is the fallback.
            Format::Native | Format::Debezium(_) => render_line(event),
        }
    }
}

/// The native JSON line for `event`, newline included.
fn render_line(event: &OutboxEvent) -> Result<Vec<u8>, DeliveryError> {
    let payload: &RawValue = serde_json::from_slice(&event.payload).map_err(|err| {
        DeliveryError::permanent(format!(
            "payload of event {} is not valid json ({err}); it cannot be embedded in a stdout line",
            event.id
        ))
    })?;
    let line = Line {
        id: event.id,
        aggregate_type: &event.aggregate_type,
        aggregate_id: &event.aggregate_id,
        event_type: &event.event_type,
        created_at: event.created_at_rfc3339(),
        headers: HeaderMap(&event.headers),
        payload,
    };
    let mut bytes = Vec::with_capacity(event.payload.len() + 256);
    serde_json::to_writer(&mut bytes, &line).map_err(|err| {
        DeliveryError::permanent(format!(
            "event {} cannot be rendered as json: {err}",
            event.id
        ))
    })?;
    bytes.push(b'\n');
    Ok(bytes)
}

#[derive(Serialize)]
struct Line<'a> {
    id: i64,
    aggregate_type: &'a str,
    aggregate_id: &'a str,
    event_type: &'a str,
    created_at: String,
    headers: HeaderMap<'a>,
    payload: &'a RawValue,
}

/// Headers as a JSON object, in column order.
struct HeaderMap<'a>(&'a [(String, String)]);

impl Serialize for HeaderMap<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use chrono::TimeZone;

    /// A writer whose bytes the test can read back.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    struct BrokenPipe;

    impl Write for BrokenPipe {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn event(id: i64, payload: &str) -> OutboxEvent {
        OutboxEvent {
            id,
            aggregate_type: "order".into(),
            aggregate_id: "o-1".into(),
            event_type: "order.created".into(),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            headers: vec![
                ("traceparent".into(), "00-abc-01".into()),
                ("tenant".into(), "t\"1".into()),
            ],
            created_at: chrono::Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap()
                + chrono::Duration::microseconds(6),
            next_run_at: None,
        }
    }

    /// The raw text of the `payload` member of a rendered line.
    fn raw_payload(line: &str) -> String {
        #[derive(serde::Deserialize)]
        struct Payload<'a> {
            #[serde(borrow)]
            payload: &'a RawValue,
        }
        let parsed: Payload<'_> = serde_json::from_str(line).unwrap();
        parsed.payload.get().to_owned()
    }

    /// Delivers on the calling thread and waits for the outcome.
    fn deliver_now(sink: &StdoutSink, event: &OutboxEvent) -> Result<(), DeliveryError> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(sink.deliver(event))
    }

    #[test]
    fn line_carries_every_field_and_parses_back() {
        let capture = Capture::default();
        let sink = StdoutSink::with_writer(capture.clone());
        deliver_now(&sink, &event(42, r#"{"total": 10, "items": [1, 2]}"#)).unwrap();

        let out = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        assert!(
            out.ends_with('\n') && out.matches('\n').count() == 1,
            "one line: {out:?}"
        );
        let value: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "id": 42,
                "aggregate_type": "order",
                "aggregate_id": "o-1",
                "event_type": "order.created",
                "created_at": "2024-01-02T03:04:05.000006Z",
                "headers": {"traceparent": "00-abc-01", "tenant": "t\"1"},
                "payload": {"total": 10, "items": [1, 2]},
            })
        );
        let keys: Vec<&str> = [
            "\"id\"",
            "\"aggregate_type\"",
            "\"aggregate_id\"",
            "\"event_type\"",
        ]
        .into_iter()
        .chain(["\"created_at\"", "\"headers\"", "\"payload\""])
        .collect();
        let positions: Vec<usize> = keys.iter().map(|k| out.find(k).unwrap()).collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "key order: {out}"
        );
    }

    #[test]
    fn payload_is_embedded_byte_for_byte() {
        let big_object = format!("{{\"blob\": \"{}\", \"n\": 1}}", "x".repeat(1024 * 1024));
        let payloads = [
            r#"[1, "two", {"three": 3.0}]"#,
            r#""just a string""#,
            "12345678901234567890.5",
            "-0.0",
            "true",
            "null",
            r#"{"unicode": "grüße 🚀 \u00e9", "escaped": "a\"b\\c\n"}"#,
            big_object.as_str(),
        ];
        for (i, payload) in payloads.iter().enumerate() {
            let line = String::from_utf8(render_line(&event(i as i64, payload)).unwrap()).unwrap();
            assert_eq!(raw_payload(&line), *payload, "payload #{i} changed");
            assert!(line.ends_with("}\n") && line.matches('\n').count() == 1);
        }
    }

    #[test]
    fn invalid_payload_is_permanent() {
        let err = render_line(&event(7, "{not json")).unwrap_err();
        assert!(err.is_permanent());
        assert!(err.reason().contains("event 7"), "{}", err.reason());
    }

    #[test]
    fn broken_pipe_is_retryable_and_named() {
        let sink = StdoutSink::with_writer(BrokenPipe);
        let err = deliver_now(&sink, &event(9, "{}")).unwrap_err();
        assert!(!err.is_permanent());
        assert!(err.reason().contains("broken pipe"), "{}", err.reason());
    }

    #[test]
    fn lines_keep_call_order_and_closing_writes_what_is_queued() {
        let capture = Capture::default();
        let sink = StdoutSink::with_writer(capture.clone());
        // Queued without waiting, then closed: every line still goes out, in order.
        let outcomes: Vec<_> = (0..100).map(|i| sink.deliver(&event(i, "{}"))).collect();
        sink.close();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for outcome in outcomes {
            runtime.block_on(outcome).unwrap();
        }
        let out = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        let ids: Vec<i64> = out
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                    .as_i64()
                    .unwrap()
            })
            .collect();
        assert_eq!(ids, (0..100).collect::<Vec<_>>());
        let late = runtime
            .block_on(sink.deliver(&event(100, "{}")))
            .unwrap_err();
        assert!(
            !late.is_permanent() && late.reason().contains("shut down"),
            "{late}"
        );
    }

    #[test]
    fn concurrent_writers_never_interleave_lines() {
        let capture = Capture::default();
        let sink = Arc::new(StdoutSink::with_writer(capture.clone()));
        let payload = format!("{{\"pad\": \"{}\"}}", "y".repeat(10_000));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let sink = Arc::clone(&sink);
                let payload = payload.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        deliver_now(&sink, &event(t * 1000 + i, &payload)).unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let out = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 200);
        for line in lines {
            assert_eq!(raw_payload(line), payload);
        }
    }
}
