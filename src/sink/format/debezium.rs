//! What Debezium's outbox event router (`io.debezium.transforms.outbox.EventRouter`) writes
//! to Kafka, so consumers written for a Debezium pipeline read the relay's records unchanged:
//!
//! - topic `outbox.event.{aggregate_type}` (the router's `route.topic.replacement`
//!   default; `DISPATCHBOX_KAFKA_TOPIC` still overrides it);
//! - key = the aggregate id;
//! - value = the payload (as the router writes it with `table.expand.json.payload=true`);
//! - header `id` = the row id;
//! - further columns as headers, set like the router's `table.fields.additional.placement`
//!   (`DISPATCHBOX_DEBEZIUM_ADDITIONAL_PLACEMENT`, e.g. `event_type:header:eventType`).
//!
//! The row's own `headers` entries (a `traceparent`) follow, as in the native format.

use super::FormatError;
use crate::event::OutboxEvent;

/// The router's topic, with the relay's placeholder.
pub const DEFAULT_TOPIC_TEMPLATE: &str = "outbox.event.{aggregate_type}";

/// Debezium settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Debezium {
    /// Extra columns sent as headers, in the order given.
    pub placements: Vec<Placement>,
}

/// One column placed in a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub column: Column,
    /// The header's name (the alias, or the column's name).
    pub header: String,
}

/// Outbox columns that can be placed in headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Id,
    AggregateType,
    AggregateId,
    EventType,
    CreatedAt,
}

impl Column {
    const ALL: [(Column, &'static str); 5] = [
        (Column::Id, "id"),
        (Column::AggregateType, "aggregate_type"),
        (Column::AggregateId, "aggregate_id"),
        (Column::EventType, "event_type"),
        (Column::CreatedAt, "created_at"),
    ];

    fn name(self) -> &'static str {
        Column::ALL
            .iter()
            .find(|(column, _)| *column == self)
            .map_or("", |(_, name)| name)
    }

    fn value(self, event: &OutboxEvent) -> String {
        match self {
            Column::Id => event.id.to_string(),
            Column::AggregateType => event.aggregate_type.clone(),
            Column::AggregateId => event.aggregate_id.clone(),
            Column::EventType => event.event_type.clone(),
            Column::CreatedAt => event.created_at_rfc3339(),
        }
    }
}

impl Debezium {
    /// Parses `column:header[:alias]` entries separated by commas, as the router's
    /// `table.fields.additional.placement` is written. Only the `header` placement exists
    /// here: the relay writes no envelope, and the partition follows the key.
    pub fn from_placements(list: &str) -> Result<Self, FormatError> {
        let mut placements = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let parts: Vec<&str> = entry.split(':').map(str::trim).collect();
            let (column, placement, alias) = match parts.as_slice() {
                [column, placement] => (*column, *placement, None),
                [column, placement, alias] => (*column, *placement, Some(*alias)),
                _ => {
                    return Err(FormatError::Placement(format!(
                        "{entry:?} is not column:header or column:header:alias"
                    )))
                }
            };
            let Some((column, name)) = Column::ALL.iter().find(|(_, name)| *name == column) else {
                return Err(FormatError::Placement(format!(
                    "unknown column {column:?} in {entry:?}; use id, aggregate_type, \
                     aggregate_id, event_type or created_at"
                )));
            };
            if placement != "header" {
                return Err(FormatError::Placement(format!(
                    "placement {placement:?} in {entry:?} is not supported; only header is \
                     (the relay writes no envelope, and the partition follows the key)"
                )));
            }
            let header = alias.unwrap_or(name);
            if header.is_empty() || header.eq_ignore_ascii_case("id") {
                return Err(FormatError::Placement(format!(
                    "header name {header:?} in {entry:?} is empty or the router's own `id`"
                )));
            }
            placements.push(Placement {
                column: *column,
                header: header.to_owned(),
            });
        }
        Ok(Self { placements })
    }

    /// The record's headers: `id`, then the placed columns.
    pub fn headers(&self, event: &OutboxEvent) -> Vec<(&str, String)> {
        std::iter::once(("id", event.id.to_string()))
            .chain(
                self.placements
                    .iter()
                    .map(|placement| (placement.header.as_str(), placement.column.value(event))),
            )
            .collect()
    }

    /// Names of the headers the format sets; the row's headers of these names are dropped.
    pub fn reserves(&self, name: &str) -> bool {
        name == "id" || self.placements.iter().any(|p| p.header == name)
    }

    /// How the placements are written back, for diagnostics.
    pub fn describe(&self) -> String {
        self.placements
            .iter()
            .map(|p| format!("{}:header:{}", p.column.name(), p.header))
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn event() -> OutboxEvent {
        OutboxEvent {
            id: 7,
            aggregate_type: "order".into(),
            aggregate_id: "o-9".into(),
            event_type: "order.paid".into(),
            payload: Bytes::from_static(b"{}"),
            headers: vec![],
            created_at: chrono::DateTime::UNIX_EPOCH,
            next_run_at: None,
        }
    }

    #[test]
    fn placements_parse_like_the_routers_setting() {
        let debezium =
            Debezium::from_placements("event_type:header:eventType, created_at:header").unwrap();
        assert_eq!(
            debezium.headers(&event()),
            vec![
                ("id", "7".to_owned()),
                ("eventType", "order.paid".to_owned()),
                ("created_at", "1970-01-01T00:00:00.000000Z".to_owned()),
            ]
        );
        assert_eq!(
            debezium.describe(),
            "event_type:header:eventType,created_at:header:created_at"
        );
        assert!(debezium.reserves("eventType") && debezium.reserves("id"));
        assert!(!debezium.reserves("traceparent"));
    }

    #[test]
    fn placements_refuse_what_the_relay_cannot_do() {
        for bad in [
            "payload:header",
            "event_type:envelope:type",
            "event_type",
            "event_type:header:a:b",
            "aggregate_id:header:id",
        ] {
            assert!(Debezium::from_placements(bad).is_err(), "{bad}");
        }
        assert_eq!(Debezium::from_placements("").unwrap(), Debezium::default());
    }
}
