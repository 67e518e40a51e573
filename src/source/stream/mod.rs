//! The replication source: connect to the slot, stream pgoutput, turn outbox INSERTs into
//! [`Work`] for the dispatcher, and keep PostgreSQL informed of progress.
//!
//! One connection at a time: connect → IDENTIFY_SYSTEM (a failover, i.e. another server or
//! timeline than before, restarts progress from that server's slot: see
//! [`super::failover`]) → (create the slot when missing) → START_REPLICATION at the settled
//! position → pump messages until the stream breaks → reconnect with jittered exponential
//! backoff. Definite errors (bad schema, a slot that is not the
//! relay's, protocol surprises) stop the source instead: it never acknowledges what it
//! does not understand.
//!
//! Slot errors are classified by SQLSTATE and by the slot's own state in
//! `pg_replication_slots` (never by message text): before it creates, drops or recreates
//! anything the source judges the slot with [`super::slot::judge`], the rule
//! `check` and `run`'s start-up use too. Only the relay's own slot (logical, pgoutput, this
//! database) is ever dropped, and only when it is invalidated.
//!
//! The connection is split: the reader half runs here and may block on the bounded channel
//! to the dispatcher (backpressure); the writer half lives in a feedback task that sends
//! standby status updates on its own timer, so a slow sink can never make the walsender
//! drop us at `wal_sender_timeout`. Progress (what may be confirmed) is decided only by
//! [`Progress`]; this module reports what it says.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::client::{
    ClientError, ClientOptions, IdentifySystem, OversizedXLogData, ReplicationClient,
    ReplicationMessage, ReplicationWriter,
};
use super::failover::{ServerIdentity, ServerWatch};
use super::pgoutput::{decode_insert_prefix, pg_timestamp_to_datetime, Decoder, PgOutputMessage};
use super::progress::{Progress, TxnSeq};
use super::relation::{InsertOutcome, OutboxMapper, OutboxTable, OversizedInsert, RelationError};
use super::slot::JudgeError;
use super::Work;
use crate::conninfo::ConnInfo;
use crate::lsn::Lsn;
use crate::names::{Identifier, TableName};
use crate::retry::Backoff;
use crate::store::Store;
use crate::telemetry::events::{Emit, FailoverSeen, StreamInterrupted};
use crate::telemetry::health::{Health, StreamState};
use crate::telemetry::metrics;

mod recovery;

use recovery::{classify_start_error, refuses_slot};

/// Settings of the replication source.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub conninfo: ConnInfo,
    pub slot: Identifier,
    pub publication: Identifier,
    pub table: TableName,
    /// Standby status updates are sent at least this often.
    pub status_interval: Duration,
    /// Largest replication message received whole (`DISPATCHBOX_MAX_MESSAGE_SIZE_MB` plus
    /// 64 KiB of headroom). A larger outbox Insert becomes a dead row.
    pub max_message_size: usize,
    /// Cap of the reconnect backoff.
    pub reconnect_max: Duration,
    /// How long to wait, at shutdown, for in-flight events to settle before the final
    /// status update.
    pub shutdown_timeout: Duration,
    /// Slot recreations allowed per hour.
    pub slot_recreate_limit: u32,
    /// For slot maintenance (judge the slot, drop an invalidated one).
    pub store: Store,
    /// Wakes the sweeper after the slot was (re)created: rows committed without a slot
    /// are its to deliver.
    pub sweep_now: Arc<Notify>,
    /// Where the stream's state is reported (probes and the stream gauges).
    pub health: Health,
    /// Bytes of events that may be held at once (`DISPATCHBOX_MAX_IN_FLIGHT_BYTES`).
    pub budget: crate::flow::budget::ByteBudget,
    /// With ordering on, the blocked aggregates, reloaded from the table whenever the
    /// stream starts (this process just became the leader, or came back).
    pub blocked: Option<crate::flow::ordering::BlockedAggregates>,
}

/// `DISPATCHBOX_MAX_MESSAGE_SIZE_MB` back from the limit in bytes (which adds 64 KiB of
/// headroom, less than a MiB).
fn limit_mb(max_message_size: usize) -> usize {
    max_message_size >> 20
}

/// Why the source stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{0}; stopping without acknowledging further WAL")]
    Schema(#[from] RelationError),
    #[error("replication slot {slot} cannot be used: {source}")]
    Slot {
        slot: String,
        #[source]
        source: ClientError,
    },
    #[error("replication connection failed: {0}")]
    Connection(#[source] ClientError),
    #[error("replication slot {slot} is in use by another process (another relay?); standing by")]
    SlotBusy {
        slot: String,
        #[source]
        source: ClientError,
    },
    #[error(
        "unexpected replication message: {0}; refusing to acknowledge anything past this point"
    )]
    Protocol(String),
    #[error("the dispatcher stopped accepting events")]
    DispatcherGone,
    #[error("replication slot {slot} was lost again after {limit} recreations within an hour; stopping (check max_slot_wal_keep_size and whether something drops the slot): {source}")]
    SlotLoop {
        slot: String,
        limit: u32,
        #[source]
        source: ClientError,
    },
    #[error("slot maintenance failed: {0}")]
    Store(#[source] Box<crate::store::StoreError>),
    /// The slot of the configured name is not the relay's (or could not be judged).
    #[error(transparent)]
    SlotCheck(JudgeError),
    #[error(
        "replication message of {len} bytes at {lsn} exceeds DISPATCHBOX_MAX_MESSAGE_SIZE_MB \
         ({limit_mb} MiB) and {what}; stopping without acknowledging it: raise \
         DISPATCHBOX_MAX_MESSAGE_SIZE_MB above the largest row of the outbox table"
    )]
    TooLarge {
        lsn: Lsn,
        len: usize,
        limit_mb: usize,
        what: String,
    },
}

impl SourceError {
    /// True when reconnecting may help.
    fn is_transient(&self) -> bool {
        match self {
            // A slot dropped or invalidated under a running stream: the next START judges
            // it (and recreates it if it is the relay's).
            SourceError::Connection(e) => e.is_transient() || refuses_slot(e),
            SourceError::SlotBusy { .. } => true,
            // E.g. out of disk or memory (class 53) while creating the slot.
            SourceError::Slot { source, .. } => source.is_transient(),
            SourceError::Store(e) => e.is_transient(),
            SourceError::SlotCheck(e) => e.is_transient(),
            SourceError::Schema(_)
            | SourceError::Protocol(_)
            | SourceError::DispatcherGone
            | SourceError::SlotLoop { .. }
            | SourceError::TooLarge { .. } => false,
        }
    }
}

/// Runs the source until `shutdown` is cancelled (returns Ok after the final status update)
/// or a definite error occurs.
///
/// `settled` resolves once every event handed to the dispatcher has its outcome written
/// (the dispatcher and the status writer have drained); only then is the final status
/// update sent, so it covers everything that was settled.
pub async fn run(
    config: SourceConfig,
    progress: Progress,
    work: mpsc::Sender<Work>,
    shutdown: CancellationToken,
    settled: impl std::future::Future<Output = ()>,
) -> Result<(), SourceError> {
    let reconnect = Backoff {
        base: Duration::from_millis(250),
        max: config.reconnect_max,
    };
    let mut failures: u32 = 0;
    let mut work = Some(work);
    let mut writer = None;
    let mut recreations = Vec::new();
    let mut server = ServerWatch::default();
    while !shutdown.is_cancelled() {
        let Some(sender) = work.as_ref() else { break };
        let mut session = Session::new(&config, &progress, sender, &mut recreations, &mut server);
        match session.stream(&shutdown).await {
            Ok(w) => {
                writer = Some(w);
                break;
            }
            Err(error) if error.is_transient() => {
                let standing_by = matches!(error, SourceError::SlotBusy { .. });
                config.health.set_stream(if standing_by {
                    StreamState::StandingBy
                } else {
                    StreamState::Reconnecting
                });
                if standing_by {
                    // The leader streams; how far behind it is, is its to report.
                    metrics::replication_behind_since(None);
                }
                // Behind since the oldest commit not settled, or since now at the latest:
                // nothing committed from here on is streamed until the reconnect.
                let broke = (session.started && !standing_by)
                    .then(|| progress.oldest_unsettled_commit().unwrap_or_else(Utc::now));
                // Whatever was not settled is sent again after the reconnect, to this
                // process or to the relay that takes the slot meanwhile.
                progress.forget_unsettled();
                failures = failures.saturating_add(1);
                let delay = reconnect.delay(failures, &mut rand::thread_rng());
                StreamInterrupted {
                    error: &error,
                    retry_in: delay,
                    broke,
                }
                .emit();
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => {}
                }
                if session.streamed {
                    failures = 0;
                }
            }
            Err(error) => {
                config.health.set_stream(StreamState::Stopped);
                progress.abandon_open();
                work.take();
                return Err(error);
            }
        }
    }
    config.health.set_stream(StreamState::Stopped);
    metrics::replication_behind_since(None);
    // Stop intake: the dispatcher drains once its input closes.
    work.take();
    if tokio::time::timeout(config.shutdown_timeout + Duration::from_secs(5), settled)
        .await
        .is_err()
    {
        tracing::warn!(
            "events still unsettled at shutdown; they will be delivered again after restart"
        );
    }
    if let Some(mut writer) = writer {
        let feedback = progress.feedback();
        match writer
            .send_status(feedback.write, feedback.flush, feedback.flush, false)
            .await
        {
            Ok(()) => tracing::info!(flush_lsn = %feedback.flush, "sent final standby status"),
            Err(error) => tracing::warn!(error = %error, "final standby status update failed"),
        }
        if let Err(error) = writer.finish().await {
            tracing::debug!(error = %error, "leaving the replication stream");
        }
    }
    Ok(())
}

/// One replication connection.
struct Session<'a> {
    config: &'a SourceConfig,
    progress: &'a Progress,
    work: &'a mpsc::Sender<Work>,
    decoder: Decoder,
    outbox: OutboxMapper,
    /// The transaction being received: `Some(Some(seq))` when its events are dispatched,
    /// `Some(None)` when it is a re-sent transaction whose events are skipped.
    current: Option<Option<TxnSeq>>,
    /// Commit time of the transaction being received (for the commit-to-ack metric).
    committed_at: Option<DateTime<Utc>>,
    /// True once the stream delivered something (resets the reconnect backoff).
    streamed: bool,
    /// True once streaming started (START_REPLICATION answered): a break after it counts as
    /// a reconnect.
    started: bool,
    /// The server's WAL position when this connection was made: transactions committed
    /// up to it may have been delivered already by an earlier run (the slot resends
    /// everything after its confirmed position), so their events are marked `replayed`
    /// and the dispatcher skips those whose rows are settled.
    replay_until: Lsn,
    /// Whether the transaction being received is within `replay_until`.
    replaying: bool,
    /// When the slot was (re)created recently (shared across sessions).
    recreations: &'a mut Vec<std::time::Instant>,
    /// The server the stream follows (shared across sessions).
    server: &'a mut ServerWatch,
}

impl<'a> Session<'a> {
    fn new(
        config: &'a SourceConfig,
        progress: &'a Progress,
        work: &'a mpsc::Sender<Work>,
        recreations: &'a mut Vec<std::time::Instant>,
        server: &'a mut ServerWatch,
    ) -> Self {
        Self {
            config,
            progress,
            work,
            decoder: Decoder::new(1, false),
            outbox: OutboxMapper::new(OutboxTable::new(config.table.schema(), config.table.name())),
            current: None,
            committed_at: None,
            streamed: false,
            started: false,
            replay_until: Lsn::ZERO,
            replaying: false,
            recreations,
            server,
        }
    }

    /// Streams until shutdown (returns the writer for the final status update) or error.
    async fn stream(
        &mut self,
        shutdown: &CancellationToken,
    ) -> Result<ReplicationWriter, SourceError> {
        let config = self.config;
        let options = ClientOptions {
            max_frame_len: config.max_message_size,
        };
        let client = ReplicationClient::connect_with(&config.conninfo, options.clone());
        let mut client = client.await.map_err(SourceError::Connection)?;
        let system = client
            .identify_system()
            .await
            .map_err(SourceError::Connection)?;
        self.follow_server(&system, client.endpoint(), shutdown)
            .await;
        self.replay_until = system.xlogpos;
        let start = self.progress.resume_lsn();
        tracing::info!(
            host = %client.endpoint(),
            system_id = %system.systemid,
            timeline = system.timeline,
            slot = %config.slot,
            start_lsn = %start,
            "connected for replication"
        );
        let (mut reader, writer) = match client
            .start_replication(config.slot.as_str(), start, &[config.publication.as_str()])
            .await
        {
            Ok(halves) => halves,
            Err(error) => {
                let lost = self.slot_loss(error).await?;
                self.recreate_slot(lost, &options).await?;
                // The failed START consumed the connection: stream on a new one.
                let client = ReplicationClient::connect_with(&config.conninfo, options);
                let client = client.await.map_err(SourceError::Connection)?;
                client
                    .start_replication(config.slot.as_str(), start, &[config.publication.as_str()])
                    .await
                    .map_err(|e| classify_start_error(config, e))?
            }
        };

        if let Some(blocked) = &config.blocked {
            // Holding the slot now: this process has just become the leader (or come back).
            // What another relay parked or failed meanwhile is in the table; load it before
            // the first event is dispatched, so none overtakes a row waiting there.
            let backlog = config
                .store
                .backlogged_aggregates()
                .await
                .map_err(|e| SourceError::Store(Box::new(e)))?;
            for (aggregate_type, aggregate_id) in &backlog {
                blocked.block(aggregate_type, aggregate_id);
            }
            tracing::info!(
                aggregates = backlog.len(),
                "loaded the aggregates with events waiting in their rows"
            );
        }
        config.health.set_stream(StreamState::Streaming);
        self.started = true;
        let reply_now = Arc::new(Notify::new());
        let stop_feedback = CancellationToken::new();
        let feedback = tokio::spawn(feedback_loop(
            writer,
            self.progress.clone(),
            config.status_interval,
            reply_now.clone(),
            stop_feedback.clone(),
        ));
        let _stop_on_exit = stop_feedback.clone().drop_guard();

        // One waiter for the whole session, not one registered and dropped per message.
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        let result = loop {
            let message = tokio::select! {
                biased;
                _ = &mut cancelled => break Ok(()),
                message = reader.next() => message,
            };
            match message {
                Ok(Some(ReplicationMessage::XLogData(xlog))) => {
                    self.streamed = true;
                    if let Err(error) = self.handle(xlog.data, shutdown).await {
                        break Err(error);
                    }
                }
                Ok(Some(ReplicationMessage::OversizedXLogData(xlog))) => {
                    self.streamed = true;
                    if let Err(error) = self.handle_oversized(xlog, shutdown).await {
                        break Err(error);
                    }
                }
                Ok(Some(ReplicationMessage::PrimaryKeepalive(keepalive))) => {
                    // Progress applies the idle rule: the keepalive position counts only
                    // when nothing is open or unsettled.
                    self.progress.keepalive(keepalive.wal_end);
                    if keepalive.reply_requested {
                        reply_now.notify_one();
                    }
                }
                Ok(None) => {
                    break Err(SourceError::Connection(ClientError::Closed {
                        context: "the server ended the replication stream",
                    }))
                }
                Err(error) => break Err(SourceError::Connection(error)),
            }
        };
        stop_feedback.cancel();
        let writer = feedback.await.ok().flatten();
        match (result, writer) {
            (Ok(()), Some(writer)) => Ok(writer),
            (Ok(()), None) => Err(SourceError::Connection(ClientError::Closed {
                context: "the replication connection closed during shutdown",
            })),
            (Err(error), _) => Err(error),
        }
    }

    /// Judges the server this connection reached against the one the stream followed. After
    /// a failover nothing remembered from the old server is trusted: progress restarts
    /// (START_REPLICATION then begins where this server's slot is, and acks of events still
    /// in flight from the old server advance nothing here), the slot is created by the
    /// missing-slot path when it did not come along (PostgreSQL before 17 never carries
    /// logical slots to a standby), and the sweeper is woken: rows committed on this server
    /// before its slot's consistent point are never streamed, and it delivers them once the
    /// slot's confirmed position has passed where it saw them.
    ///
    /// Before that, the events still in flight from the old server get up to
    /// `DISPATCHBOX_SHUTDOWN_TIMEOUT` to settle (their status is written here, where their
    /// rows were replicated): a row still `pending` when the new slot passes it is the
    /// sweeper's, and would be delivered a second time.
    async fn follow_server(
        &mut self,
        system: &IdentifySystem,
        host: &crate::conninfo::Endpoint,
        shutdown: &CancellationToken,
    ) {
        let config = self.config;
        metrics::server_timeline(system.timeline);
        let change = self.server.observe(ServerIdentity {
            system_id: system.systemid,
            timeline: system.timeline,
        });
        if !change.is_failover() {
            return;
        }
        FailoverSeen {
            host,
            system_id: &system.systemid,
            timeline: system.timeline,
            slot: config.slot.as_str(),
            change: &change,
        }
        .emit();
        let deadline = Instant::now() + config.shutdown_timeout;
        // Acks, not transactions: the broken stream's transactions were forgotten, but
        // their events may still be in delivery or waiting for their status write.
        while self.progress.acks_out() > 0 && !shutdown.is_cancelled() {
            if Instant::now() >= deadline {
                tracing::warn!(timeout = ?config.shutdown_timeout, "events from the old server are still unsettled; the sweeper may deliver them again");
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = shutdown.cancelled() => {}
            }
        }
        self.progress.restart();
        config.sweep_now.notify_one();
    }

    /// Handles one pgoutput message.
    async fn handle(
        &mut self,
        data: bytes::Bytes,
        shutdown: &CancellationToken,
    ) -> Result<(), SourceError> {
        let message = self
            .decoder
            .decode(data)
            .map_err(|e| SourceError::Protocol(e.to_string()))?;
        match message {
            PgOutputMessage::Begin(begin) => {
                if self.current.is_some() {
                    return Err(SourceError::Protocol(
                        "Begin inside an open transaction".into(),
                    ));
                }
                self.committed_at = pg_timestamp_to_datetime(begin.commit_ts);
                self.current = Some(self.progress.begin_at(begin.final_lsn, self.committed_at));
                self.replaying = begin.final_lsn <= self.replay_until;
            }
            PgOutputMessage::Commit(commit) => {
                let Some(current) = self.current.take() else {
                    return Err(SourceError::Protocol("Commit without Begin".into()));
                };
                if let Some(seq) = current {
                    self.progress.commit(seq, commit.end_lsn);
                }
            }
            PgOutputMessage::Relation(relation) => {
                if self.outbox.renames_outbox(&relation) {
                    let reason = format!(
                        "outbox table {} was renamed to \"{}\".\"{}\"; its inserts are no \
                         longer the outbox's, and the stream confirms nothing further until \
                         the table is back",
                        self.config.table, relation.namespace, relation.name
                    );
                    tracing::error!(reason = %reason, "outbox table renamed");
                    self.progress.hold(true);
                    self.config
                        .health
                        .set_problem(crate::telemetry::health::OUTBOX_TABLE, Some(reason));
                }
                self.outbox
                    .on_relation(relation)
                    .map_err(|e| SourceError::Schema(RelationError::Schema(e)))?;
            }
            PgOutputMessage::Insert(insert) => {
                let seq = match self.current {
                    Some(Some(seq)) => seq,
                    // A re-sent transaction that is already being handled.
                    Some(None) => return Ok(()),
                    None => {
                        return Err(SourceError::Protocol("Insert outside a transaction".into()))
                    }
                };
                let work = match self.outbox.map_insert(&insert)? {
                    InsertOutcome::Event(event) => {
                        // Its share of the byte budget, from now until its delivery ends:
                        // while the budget is spent, the stream reads no further.
                        let bytes = event.held_bytes();
                        let held = match self.config.budget.try_acquire(bytes) {
                            Some(held) => held,
                            None => tokio::select! {
                                held = self.config.budget.acquire(bytes) => held,
                                // Unsettled: delivered again after a restart.
                                _ = shutdown.cancelled() => return Ok(()),
                            },
                        };
                        Work::Deliver {
                            event: Arc::new(event),
                            ack: self.progress.event(seq),
                            committed_at: self.committed_at,
                            held,
                            replayed: self.replaying,
                        }
                    }
                    InsertOutcome::Dead(error) => match error.id {
                        Some(id) => Work::Unusable {
                            id,
                            reason: error.reason,
                            ack: self.progress.event(seq),
                        },
                        // Without an id the row cannot be marked: stop rather than skip it.
                        None => return Err(SourceError::Protocol(error.reason)),
                    },
                    // Another table in the publication: not ours to deliver.
                    InsertOutcome::Ignored => return Ok(()),
                };
                self.dispatch(work, shutdown).await?;
            }
            // Heartbeats and other logical messages bypass publications; Origin and Type
            // carry nothing for us; an insert-only publication sends no Update, Delete or
            // Truncate, and if a DBA widens it those are still not events.
            PgOutputMessage::Message(_)
            | PgOutputMessage::Origin(_)
            | PgOutputMessage::Type(_)
            | PgOutputMessage::Update(_)
            | PgOutputMessage::Delete(_)
            | PgOutputMessage::Truncate(_) => {}
            other => {
                return Err(SourceError::Protocol(format!(
                    "message {:?} (streaming and two-phase are never requested)",
                    char::from(other.tag())
                )))
            }
        }
        Ok(())
    }
}

impl Session<'_> {
    /// Hands `work` to the dispatcher. Without backpressure the hand-off is immediate;
    /// only a full channel needs to wait, and to watch for shutdown meanwhile.
    async fn dispatch(&self, work: Work, shutdown: &CancellationToken) -> Result<(), SourceError> {
        let work = match self.work.try_send(work) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Full(work)) => work,
            Err(mpsc::error::TrySendError::Closed(_)) if shutdown.is_cancelled() => return Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(SourceError::DispatcherGone),
        };
        tokio::select! {
            sent = self.work.send(work) => {
                // The dispatcher stops taking work as soon as shutdown begins, which can win
                // the race with this send: that is shutdown, not a failure.
                if sent.is_err() && !shutdown.is_cancelled() {
                    return Err(SourceError::DispatcherGone);
                }
            }
            // Shutdown while blocked on backpressure: the event stays unsettled and is
            // delivered again after a restart.
            _ = shutdown.cancelled() => {}
        }
        Ok(())
    }

    /// Handles a pgoutput message larger than `DISPATCHBOX_MAX_MESSAGE_SIZE_MB`, of which
    /// only the first bytes were kept (the rest was discarded unread). An outbox Insert
    /// whose `id` is among its leading columns becomes that row's `dead` outcome, settled
    /// and acknowledged like any other event's, and the stream goes on; messages that never
    /// carry an event are skipped; anything else (an outbox row without a readable id
    /// included) stops the source without acknowledging it: a row is never guessed.
    async fn handle_oversized(
        &mut self,
        xlog: OversizedXLogData,
        shutdown: &CancellationToken,
    ) -> Result<(), SourceError> {
        let limit_mb = limit_mb(self.config.max_message_size);
        let too_large = |what: String| SourceError::TooLarge {
            lsn: xlog.wal_start,
            len: xlog.len,
            limit_mb,
            what,
        };
        match xlog.prefix.first().copied() {
            Some(b'I') => {}
            // Logical messages of other applications, and updates or deletes (should a
            // DBA widen the publication), are never events.
            Some(tag @ (b'M' | b'U' | b'D')) => {
                tracing::warn!(lsn = %xlog.wal_start, size = xlog.len, limit_mb, message = %char::from(tag), "skipping a replication message above DISPATCHBOX_MAX_MESSAGE_SIZE_MB that carries no outbox event");
                return Ok(());
            }
            tag => {
                return Err(too_large(format!(
                    "is not an Insert (message {:?})",
                    tag.map(char::from)
                )))
            }
        }
        let seq = match self.current {
            Some(Some(seq)) => seq,
            Some(None) => return Ok(()),
            None => return Err(SourceError::Protocol("Insert outside a transaction".into())),
        };
        let insert = decode_insert_prefix(xlog.prefix.clone(), self.decoder.context())
            .map_err(|e| SourceError::Protocol(e.to_string()))?;
        let id = match self.outbox.map_oversized_insert(&insert)? {
            OversizedInsert::Ignored => return Ok(()),
            OversizedInsert::Outbox { id } => id,
            OversizedInsert::UnknownId { reason } => {
                return Err(too_large(format!(
                    "its outbox row cannot be marked dead: {reason}"
                )))
            }
        };
        let reason = format!(
            "the row's replication message is {} bytes, above DISPATCHBOX_MAX_MESSAGE_SIZE_MB \
             ({limit_mb} MiB); it was not delivered. Make the payload smaller, or raise the \
             limit, then retry it (dispatchbox dead retry {id}: the sweeper reads it from the \
             table)",
            xlog.len
        );
        tracing::error!(event_id = id, lsn = %xlog.wal_start, size = xlog.len, limit_mb, "outbox row too large for the replication stream; marking it dead");
        let ack = self.progress.event(seq);
        self.dispatch(Work::Unusable { id, reason, ack }, shutdown)
            .await
    }
}

/// Sends standby status updates: every `interval`, promptly after the settled position
/// advances (at most every 100 ms), and immediately when the server asks. Never waits on
/// sinks. Returns the writer when stopped, or `None` if the connection failed.
async fn feedback_loop(
    mut writer: ReplicationWriter,
    progress: Progress,
    interval: Duration,
    reply_now: Arc<Notify>,
    stop: CancellationToken,
) -> Option<ReplicationWriter> {
    const MIN_GAP: Duration = Duration::from_millis(100);
    let mut last_sent = Instant::now() - interval;
    let mut last_flush = Lsn::ZERO;
    loop {
        let urgent = tokio::select! {
            _ = stop.cancelled() => return Some(writer),
            _ = tokio::time::sleep_until(last_sent + interval) => false,
            _ = reply_now.notified() => true,
            _ = progress.advanced() => false,
        };
        metrics::replication_behind_since(progress.oldest_unsettled_commit());
        let feedback = progress.feedback();
        if !urgent && feedback.flush == last_flush && last_sent.elapsed() < interval {
            continue;
        }
        if !urgent && last_sent.elapsed() < MIN_GAP {
            tokio::time::sleep_until(last_sent + MIN_GAP).await;
        }
        let feedback = progress.feedback();
        if let Err(error) = writer
            .send_status(feedback.write, feedback.flush, feedback.flush, false)
            .await
        {
            tracing::warn!(error = %error, "standby status update failed");
            return None;
        }
        tracing::trace!(flush_lsn = %feedback.flush, write_lsn = %feedback.write, "sent standby status");
        last_sent = Instant::now();
        last_flush = feedback.flush;
    }
}
