//! The relation cache and the mapping from outbox-table INSERTs to [`OutboxEvent`]s.
//!
//! Owns: remembering the latest Relation message per relation OID, checking that the
//! configured outbox table has the columns dispatchbox needs (by column NAME, so extra
//! columns and any column order work), and turning an Insert's new tuple into an event.
//!
//! It keeps the two failure kinds apart, because the relay reacts to them differently:
//! - [`SchemaError`] / [`RelationError`]: the table or the stream is not what we can
//!   process. The stream must stop (no ack) until an operator acts or we reconnect.
//! - [`RowError`]: one row cannot be mapped (NULL in a required column, bad timestamp,
//!   headers not an object). The relay dead-letters that row with the reason and continues.
//!
//! Pure: no I/O, no SQL. Text-mode values are parsed assuming the walsender session runs
//! with `TimeZone=UTC` and `DateStyle=ISO` (the replication client pins both).

use std::collections::HashMap;
use std::fmt;

pub use crate::event::mapping::{type_oid, OutboxSchema, RowError, SchemaError};
use crate::event::mapping::{Cell, Cells};
use crate::event::OutboxEvent;
use crate::source::pgoutput::{Column, Insert, InsertPrefix, Relation};

/// A pgoutput tuple's columns, as the mapping reads them.
impl Cells for [Column] {
    fn count(&self) -> usize {
        self.len()
    }

    fn cell(&self, index: usize) -> Option<Cell<'_>> {
        self.get(index).map(|column| match column {
            Column::Null => Cell::Null,
            Column::Text(b) => Cell::Text(b),
            Column::Binary(b) => Cell::Binary(b),
            Column::UnchangedToast => Cell::UnchangedToast,
        })
    }
}

/// The outbox columns of a Relation message, resolved by name and type-checked.
pub fn schema_of(relation: &Relation) -> Result<OutboxSchema, SchemaError> {
    let columns: Vec<(&str, u32)> = relation
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.type_oid))
        .collect();
    OutboxSchema::resolve(relation.qualified_name(), &columns)
}

/// A DML message referred to a relation we cannot use. The stream is out of sync.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelationError {
    #[error(
        "pgoutput change for relation oid {oid} arrived before its Relation message; the \
         replication stream is out of sync (reconnecting resends the Relation)"
    )]
    UnknownRelation { oid: u32 },
    #[error(
        "pgoutput Insert into \"{table}\" has {found} column(s) but its Relation message \
         declared {expected}; the replication stream is out of sync"
    )]
    ColumnCountMismatch {
        table: String,
        expected: usize,
        found: usize,
    },
    /// An Insert into the outbox table whose last Relation failed validation: never skip
    /// such a row silently.
    #[error(transparent)]
    Schema(#[from] SchemaError),
}

/// The configured outbox table (`namespace.name`, unquoted, as stored in the catalog).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxTable {
    pub namespace: String,
    pub name: String,
}

impl OutboxTable {
    /// The table `namespace.name` (catalog spelling: no quotes, exact case).
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// Whether `relation` is this table.
    pub fn matches(&self, relation: &Relation) -> bool {
        let namespace = if relation.namespace.is_empty() {
            "pg_catalog"
        } else {
            relation.namespace.as_str()
        };
        namespace == self.namespace && relation.name == self.name
    }
}

impl fmt::Display for OutboxTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.namespace, self.name)
    }
}

/// What happened to one Insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InsertOutcome {
    /// An outbox row, ready to dispatch.
    Event(OutboxEvent),
    /// An outbox row that cannot be mapped: dead-letter it with the reason.
    Dead(RowError),
    /// A row of another published table; not ours.
    Ignored,
}

/// What an Insert too large to receive whole is, judged from its first bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OversizedInsert {
    /// A row of another published table; not ours.
    Ignored,
    /// An outbox row whose `id` was read.
    Outbox { id: i64 },
    /// An outbox row whose `id` is not among the columns received, or cannot be read: it
    /// cannot be marked, so it must not be acknowledged either.
    UnknownId { reason: String },
}

/// The relations of this replication connection plus the outbox mapping, as the stream
/// loop uses them: feed every Relation to [`OutboxMapper::on_relation`] and every Insert
/// to [`OutboxMapper::map_insert`]. The server sends Relations per walsender session, so
/// each connection starts with a new mapper.
#[derive(Debug, Clone)]
pub struct OutboxMapper {
    table: OutboxTable,
    /// Every relation OID announced on this connection (a later Relation replaces an
    /// earlier one): `None` for another table, the validated schema for the outbox table
    /// (a failed validation is kept so later Inserts fail loudly).
    relations: HashMap<u32, Option<Result<OutboxSchema, SchemaError>>>,
}

impl OutboxMapper {
    /// A mapper for the configured outbox `table`.
    pub fn new(table: OutboxTable) -> Self {
        Self {
            table,
            relations: HashMap::new(),
        }
    }

    /// Records `relation` (replacing any earlier one) and, if it is the outbox table,
    /// validates its columns. A [`SchemaError`] means the stream must stop.
    pub fn on_relation(&mut self, relation: Relation) -> Result<(), SchemaError> {
        let schema = self.table.matches(&relation).then(|| schema_of(&relation));
        let result = match &schema {
            Some(Err(err)) => Err(err.clone()),
            _ => Ok(()),
        };
        self.relations.insert(relation.oid, schema);
        result
    }

    /// True when `relation` announces, under another name, a relation that was the outbox
    /// table on this connection: the table was renamed or moved, and its inserts would
    /// otherwise be passed over as another table's.
    pub fn renames_outbox(&self, relation: &Relation) -> bool {
        matches!(self.relations.get(&relation.oid), Some(Some(_))) && !self.table.matches(relation)
    }

    /// Maps an Insert. `Err` means the stream is out of sync; `Ok(Dead(..))` means only this
    /// row is bad.
    pub fn map_insert(&self, insert: &Insert) -> Result<InsertOutcome, RelationError> {
        let schema = match self.relations.get(&insert.relation_oid) {
            None => {
                return Err(RelationError::UnknownRelation {
                    oid: insert.relation_oid,
                })
            }
            Some(None) => return Ok(InsertOutcome::Ignored),
            Some(Some(Err(err))) => return Err(err.clone().into()),
            Some(Some(Ok(schema))) => schema,
        };
        if insert.new.0.len() != schema.column_count() {
            return Err(RelationError::ColumnCountMismatch {
                table: schema.table().to_owned(),
                expected: schema.column_count(),
                found: insert.new.0.len(),
            });
        }
        Ok(match schema.map_row(insert.new.0.as_slice()) {
            Ok(event) => InsertOutcome::Event(event),
            Err(err) => InsertOutcome::Dead(err),
        })
    }
}

impl OutboxMapper {
    /// Reads what an oversized Insert is from its leading columns: another table's row,
    /// or an outbox row and its `id` (the rest of the row is not needed to mark it dead).
    /// `Err` means the stream is out of sync, as for [`OutboxMapper::map_insert`].
    pub fn map_oversized_insert(
        &self,
        insert: &InsertPrefix,
    ) -> Result<OversizedInsert, RelationError> {
        let schema = match self.relations.get(&insert.relation_oid) {
            None => {
                return Err(RelationError::UnknownRelation {
                    oid: insert.relation_oid,
                })
            }
            Some(None) => return Ok(OversizedInsert::Ignored),
            Some(Some(Err(err))) => return Err(err.clone().into()),
            Some(Some(Ok(schema))) => schema,
        };
        if insert.column_count != schema.column_count() {
            return Err(RelationError::ColumnCountMismatch {
                table: schema.table().to_owned(),
                expected: schema.column_count(),
                found: insert.column_count,
            });
        }
        if schema.id_index() >= insert.columns.len() {
            return Ok(OversizedInsert::UnknownId {
                reason: format!(
                    "column \"id\" (column {} of {}) lies beyond the first {} column(s) \
                     received",
                    schema.id_index() + 1,
                    schema.column_count(),
                    insert.columns.len()
                ),
            });
        }
        Ok(match schema.read_id(insert.columns.as_slice()) {
            Ok(id) => OversizedInsert::Outbox { id },
            Err(error) => OversizedInsert::UnknownId {
                reason: error.reason,
            },
        })
    }
}

#[cfg(test)]
mod tests;
