//! When START_REPLICATION finds no usable slot: telling a missing or invalidated slot of
//! the relay's (recreated, within `DISPATCHBOX_SLOT_RECREATE_LIMIT` per hour) from one that
//! is not the relay's or a failure to classify as usual, by SQLSTATE and by the slot's own
//! state ([`slot::judge`]), never by message text.

use std::time::Duration;

use super::{Session, SourceConfig, SourceError};
use crate::source::client::{ClientError, ClientOptions, ReplicationClient};
use crate::source::slot::{self, SlotUse};
use crate::telemetry::events::{Emit, SlotCreated};

/// Why START_REPLICATION found no usable slot of the relay's.
#[derive(Debug, Clone, Copy)]
pub(super) enum SlotLoss {
    /// No slot has the name (dropped, or never created).
    Missing,
    /// The relay's slot, invalidated; it never recovers.
    Invalidated,
}

impl SlotLoss {
    /// The `reason` label of `dispatchbox_slot_recreations_total`.
    pub(super) fn reason(self) -> &'static str {
        match self {
            SlotLoss::Missing => "missing",
            SlotLoss::Invalidated => "lost",
        }
    }
}

/// SQLSTATEs with which START_REPLICATION refuses a slot it cannot stream from: 42704
/// (undefined_object: no such slot) and 55000 (object_not_in_prerequisite_state: the slot
/// is invalidated, physical, or of another database). Which of those it is, the slot's own
/// row in `pg_replication_slots` says.
pub(super) fn refuses_slot(error: &ClientError) -> bool {
    matches!(error.sqlstate(), Some("42704" | "55000"))
}

pub(super) fn classify_start_error(config: &SourceConfig, error: ClientError) -> SourceError {
    match error.sqlstate() {
        // Another relay holds the slot: stand by and retry.
        Some("55006") => SourceError::SlotBusy {
            slot: config.slot.to_string(),
            source: error,
        },
        _ => SourceError::Connection(error),
    }
}

impl Session<'_> {
    /// Decides from a START_REPLICATION error whether the relay's slot is missing or
    /// invalidated (then it is recreated), by the SQLSTATE and the slot's own state
    /// ([`slot::judge`]). A slot that is not the relay's stops the
    /// source with the error that names it; every other error is classified as usual.
    pub(super) async fn slot_loss(
        &self,
        error: ClientError,
    ) -> Result<(SlotLoss, ClientError), SourceError> {
        let config = self.config;
        if error.is_transient()
            || error.server_error().is_none()
            || error.sqlstate() == Some("55006")
        {
            return Err(classify_start_error(config, error));
        }
        // Whatever the server said, a slot of this name that is not the relay's is the
        // answer an operator needs (e.g. 22023 from another output plugin's options).
        let verdict = slot::judge_current(&config.store, &config.slot)
            .await
            .map_err(SourceError::SlotCheck)?;
        if !refuses_slot(&error) {
            return Err(classify_start_error(config, error));
        }
        match verdict {
            SlotUse::Missing => Ok((SlotLoss::Missing, error)),
            SlotUse::Invalidated => Ok((SlotLoss::Invalidated, error)),
            // The relay's slot, healthy: a 42704 raced a slot created meanwhile (another
            // replica): reconnect. A 55000 for another reason is definite; never drop.
            SlotUse::Usable if error.sqlstate() == Some("42704") => {
                Err(SourceError::Connection(error))
            }
            SlotUse::Usable => Err(SourceError::Slot {
                slot: config.slot.to_string(),
                source: error,
            }),
        }
    }

    /// Creates the slot (dropping the relay's invalidated one first), then wakes the
    /// sweeper, which delivers the pending rows the new slot will never stream. Bounded by
    /// `DISPATCHBOX_SLOT_RECREATE_LIMIT` per hour so that a misconfiguration (e.g. a
    /// `max_slot_wal_keep_size` too small for the load) cannot loop forever. Counted in
    /// `dispatchbox_slot_recreations_total{reason}`.
    pub(super) async fn recreate_slot(
        &mut self,
        (lost, cause): (SlotLoss, ClientError),
        options: &ClientOptions,
    ) -> Result<(), SourceError> {
        let config = self.config;
        let slot_error = |source| SourceError::Slot {
            slot: config.slot.to_string(),
            source,
        };
        self.recreations
            .retain(|at| at.elapsed() < Duration::from_secs(3600));
        if self.recreations.len() >= config.slot_recreate_limit as usize {
            return Err(SourceError::SlotLoop {
                slot: config.slot.to_string(),
                limit: config.slot_recreate_limit,
                source: cause,
            });
        }
        self.recreations.push(std::time::Instant::now());
        let reason = lost.reason();
        match lost {
            SlotLoss::Missing => {
                tracing::warn!(slot = %config.slot, reason, "replication slot does not exist; creating it (rows inserted without a slot are delivered by the sweeper)");
            }
            SlotLoss::Invalidated => {
                tracing::error!(slot = %config.slot, reason, error = %cause, "replication slot was invalidated (WAL it needed was removed, e.g. max_slot_wal_keep_size exceeded); recreating it, and the sweeper re-delivers rows inserted meanwhile");
                let dropped = slot::drop_invalidated(&config.store, &config.slot)
                    .await
                    .map_err(|e| SourceError::Store(Box::new(e)))?;
                if !dropped {
                    tracing::warn!(slot = %config.slot, "the invalidated slot was gone or changed before it could be dropped; nothing dropped");
                }
            }
        }
        let client = ReplicationClient::connect_with(&config.conninfo, options.clone());
        let mut client = client.await.map_err(SourceError::Connection)?;
        let created = match slot::create(&mut client, &config.slot).await {
            Ok(created) => created,
            // 42710: a slot of that name appeared meanwhile (another replica). Streaming
            // again judges it like any other.
            Err(error) if error.sqlstate() == Some("42710") => {
                client.close().await;
                tracing::info!(slot = %config.slot, "the replication slot was created by someone else meanwhile; reconnecting to it");
                return Ok(());
            }
            Err(error) => return Err(slot_error(error)),
        };
        client.close().await;
        // Rows committed before the consistent point will never be streamed. The sweeper
        // takes every pending row it sees once the slot's confirmed position passes the
        // point where it saw it, which covers exactly those rows; wake it now.
        config.sweep_now.notify_one();
        SlotCreated {
            slot: config.slot.as_str(),
            reason,
            consistent_point: created.consistent_point,
        }
        .emit();
        Ok(())
    }
}
