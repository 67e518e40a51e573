//! Validated SQL names: the outbox table, the publication, the slot, and the names derived
//! from the table (archive table, indexes, archive function).
//!
//! Names are validated once, when configuration is parsed, so the rest of the store can
//! splice them into SQL text. Only plain lower-case identifiers are accepted: they never
//! need case folding, cannot contain quotes, and print the same quoted or not.

use std::fmt;
use std::str::FromStr;

/// PostgreSQL's identifier limit (`NAMEDATALEN - 1`); longer names are silently truncated
/// by the server, which would make two configured names collide.
pub const MAX_IDENTIFIER_BYTES: usize = 63;

/// Schema used when `DISPATCHBOX_TABLE` names no schema.
pub const DEFAULT_SCHEMA: &str = "public";

/// The outbox table name of the Python Dispatchbox worker; its derived names are kept as
/// that project spelled them so an existing deployment is adopted without duplicates.
const PYTHON_TABLE: &str = "outbox_event";

/// A name that is not a valid dispatchbox identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty, or a part of `schema.name` is empty.
    #[error("{what} {value:?} is empty; expected a lower-case identifier like outbox_event")]
    Empty { what: &'static str, value: String },
    /// Longer than PostgreSQL allows.
    #[error(
        "{what} {value:?} is {len} bytes long; PostgreSQL identifiers are at most {max} bytes"
    )]
    TooLong {
        what: &'static str,
        value: String,
        len: usize,
        max: usize,
    },
    /// Contains a character outside the allowed set.
    #[error(
        "{what} {value:?} is not a plain lower-case identifier: it must match {rule} \
         (use lower case; quoted or mixed-case names are not supported)"
    )]
    Invalid {
        what: &'static str,
        value: String,
        rule: &'static str,
    },
    /// More than one dot.
    #[error("table name {value:?} has more than one '.'; expected `name` or `schema.name`")]
    TooManyParts { value: String },
    /// A name derived from the table name would exceed the identifier limit.
    #[error(
        "table name {table:?} is too long: the derived name {derived:?} exceeds {max} bytes; \
         choose a table name of at most {allowed} bytes"
    )]
    DerivedTooLong {
        table: String,
        derived: String,
        max: usize,
        allowed: usize,
    },
}

const TABLE_RULE: &str = "[a-z_][a-z0-9_$]*";
const IDENTIFIER_RULE: &str = "[a-z_][a-z0-9_]*";

fn validate(
    what: &'static str,
    value: &str,
    allow_dollar: bool,
    rule: &'static str,
) -> Result<(), NameError> {
    if value.is_empty() {
        return Err(NameError::Empty {
            what,
            value: value.to_owned(),
        });
    }
    if value.len() > MAX_IDENTIFIER_BYTES {
        return Err(NameError::TooLong {
            what,
            value: value.to_owned(),
            len: value.len(),
            max: MAX_IDENTIFIER_BYTES,
        });
    }
    let mut chars = value.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = chars.all(|c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || (allow_dollar && c == '$')
    });
    if first_ok && rest_ok {
        Ok(())
    } else {
        Err(NameError::Invalid {
            what,
            value: value.to_owned(),
            rule,
        })
    }
}

/// A plain lower-case identifier (`[a-z_][a-z0-9_]*`, at most 63 bytes) for a publication
/// or a replication slot. `$` is excluded because slot names may not contain it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identifier(String);

impl Identifier {
    /// The identifier as written (no quotes).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The identifier double-quoted for SQL text.
    pub fn quoted(&self) -> String {
        format!("\"{}\"", self.0)
    }

    /// The identifier as an SQL string literal (`'name'`), safe because identifiers never
    /// contain quotes.
    pub fn literal(&self) -> String {
        format!("'{}'", self.0)
    }
}

impl FromStr for Identifier {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        validate("identifier", s, false, IDENTIFIER_RULE)?;
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A schema-qualified table name. Parses from `name` (schema `public`) or `schema.name`;
/// each part is a lower-case identifier (`[a-z_][a-z0-9_$]*`, at most 63 bytes).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName {
    schema: String,
    name: String,
}

impl TableName {
    /// The schema part.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The unqualified table name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `"schema"."name"`, for SQL text.
    pub fn quoted(&self) -> String {
        format!("\"{}\".\"{}\"", self.schema, self.name)
    }
}

impl Default for TableName {
    /// `public.outbox_event`, the Python Dispatchbox table.
    fn default() -> Self {
        Self {
            schema: DEFAULT_SCHEMA.to_owned(),
            name: PYTHON_TABLE.to_owned(),
        }
    }
}

impl FromStr for TableName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split('.');
        let (schema, name) = match (parts.next(), parts.next(), parts.next()) {
            (Some(name), None, _) => (DEFAULT_SCHEMA, name),
            (Some(schema), Some(name), None) => (schema, name),
            _ => {
                return Err(NameError::TooManyParts {
                    value: s.to_owned(),
                })
            }
        };
        validate("schema name", schema, true, TABLE_RULE)?;
        validate("table name", name, true, TABLE_RULE)?;
        Ok(Self {
            schema: schema.to_owned(),
            name: name.to_owned(),
        })
    }
}

impl fmt::Display for TableName {
    /// `schema.name`, unquoted (for messages and as the migration record's target).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// Every name the store splices into SQL: the outbox table, its publication, and the
/// objects derived from the table name.
///
/// Derived names follow the Python Dispatchbox spelling for its table `outbox_event`
/// (`idx_outbox_due`, `outbox_event_archive`, `idx_outbox_archive_date`,
/// `archive_outbox_events`), so migrating an existing deployment adopts its objects instead
/// of creating duplicates; the relay's own ordering index follows that style
/// (`idx_outbox_aggregate`). Any other table `t` gets `t_due_idx`, `t_aggregate_idx`,
/// `t_archive`, `t_archive_date_idx` and `archive_t` (all in the table's schema).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    table: TableName,
    publication: Identifier,
    due_index: String,
    aggregate_index: String,
    dead_index: String,
    archive_table: String,
    archive_index: String,
    archive_function: String,
}

impl Names {
    /// Validates that every derived name fits PostgreSQL's identifier limit.
    pub fn new(table: TableName, publication: Identifier) -> Result<Self, NameError> {
        let n = table.name();
        let (
            due_index,
            aggregate_index,
            dead_index,
            archive_table,
            archive_index,
            archive_function,
        ) = if n == PYTHON_TABLE {
            (
                "idx_outbox_due".to_owned(),
                "idx_outbox_aggregate".to_owned(),
                "idx_outbox_dead".to_owned(),
                "outbox_event_archive".to_owned(),
                "idx_outbox_archive_date".to_owned(),
                "archive_outbox_events".to_owned(),
            )
        } else {
            (
                format!("{n}_due_idx"),
                format!("{n}_aggregate_idx"),
                format!("{n}_dead_idx"),
                format!("{n}_archive"),
                format!("{n}_archive_date_idx"),
                format!("archive_{n}"),
            )
        };
        // The longest suffix decides how long a table name may be.
        let longest_suffix = "_archive_date_idx".len();
        for derived in [
            &due_index,
            &aggregate_index,
            &dead_index,
            &archive_table,
            &archive_index,
            &archive_function,
        ] {
            if derived.len() > MAX_IDENTIFIER_BYTES {
                return Err(NameError::DerivedTooLong {
                    table: table.to_string(),
                    derived: derived.clone(),
                    max: MAX_IDENTIFIER_BYTES,
                    allowed: MAX_IDENTIFIER_BYTES - longest_suffix,
                });
            }
        }
        Ok(Self {
            table,
            publication,
            due_index,
            aggregate_index,
            dead_index,
            archive_table,
            archive_index,
            archive_function,
        })
    }

    /// The outbox table.
    pub fn table(&self) -> &TableName {
        &self.table
    }

    /// The publication the relay streams from.
    pub fn publication(&self) -> &Identifier {
        &self.publication
    }

    /// Name of the partial index on `(status, next_run_at)` of outstanding rows, used by
    /// workers and the sweeper (keyed by `next_run_at` alone before migration 5).
    pub fn due_index(&self) -> &str {
        &self.due_index
    }

    /// Name of the partial index on `(aggregate_type, aggregate_id, id)` of outstanding rows,
    /// used by per-aggregate ordering.
    pub fn aggregate_index(&self) -> &str {
        &self.aggregate_index
    }

    /// Name of the partial index on `id` of `dead` rows, used by dead-letter listing,
    /// statistics and the dead-events gauge.
    pub fn dead_index(&self) -> &str {
        &self.dead_index
    }

    /// Unqualified name of the archive table (same schema as the outbox table).
    pub fn archive_table(&self) -> &str {
        &self.archive_table
    }

    /// Name of the index on the archive table's `archived_at`.
    pub fn archive_index(&self) -> &str {
        &self.archive_index
    }

    /// Unqualified name of the archive function (same schema as the outbox table).
    pub fn archive_function(&self) -> &str {
        &self.archive_function
    }

    /// `(placeholder, value)` pairs substituted into `sql/*.sql` templates.
    pub(crate) fn template_values(&self) -> Vec<(&'static str, String)> {
        let schema = self.table.schema();
        vec![
            ("{{table}}", self.table.quoted()),
            ("{{schema}}", format!("\"{schema}\"")),
            ("{{schema_literal}}", format!("'{schema}'")),
            ("{{table_literal}}", format!("'{}'", self.table.name())),
            ("{{publication}}", self.publication.quoted()),
            ("{{publication_literal}}", self.publication.literal()),
            ("{{due_index}}", format!("\"{}\"", self.due_index)),
            (
                "{{aggregate_index}}",
                format!("\"{}\"", self.aggregate_index),
            ),
            ("{{dead_index}}", format!("\"{}\"", self.dead_index)),
            (
                "{{archive_table}}",
                format!("\"{schema}\".\"{}\"", self.archive_table),
            ),
            ("{{archive_index}}", format!("\"{}\"", self.archive_index)),
            (
                "{{archive_function}}",
                format!("\"{schema}\".\"{}\"", self.archive_function),
            ),
        ]
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn table_names_parse_with_and_without_schema() {
        let t: TableName = "outbox_event".parse().unwrap();
        assert_eq!((t.schema(), t.name()), ("public", "outbox_event"));
        assert_eq!(t.quoted(), "\"public\".\"outbox_event\"");
        let t: TableName = "app.events$2".parse().unwrap();
        assert_eq!(t.to_string(), "app.events$2");
        assert_eq!(TableName::default(), "public.outbox_event".parse().unwrap());
    }

    #[test]
    fn table_names_reject_what_would_need_quoting() {
        for bad in [
            "", ".x", "x.", "a.b.c", "Events", "1events", "$x", "ev-ents", "ev\"ents", "é",
        ] {
            assert!(bad.parse::<TableName>().is_err(), "{bad:?} parsed");
        }
        let long = "a".repeat(64);
        let err = long.parse::<TableName>().unwrap_err();
        assert!(err.to_string().contains("at most 63 bytes"), "{err}");
        let err = "Events".parse::<TableName>().unwrap_err().to_string();
        assert!(err.contains("[a-z_][a-z0-9_$]*"), "{err}");
    }

    #[test]
    fn identifiers_exclude_dollar_for_slot_names() {
        assert!("dispatchbox_1".parse::<Identifier>().is_ok());
        assert!("slot$1".parse::<Identifier>().is_err());
        assert!("Slot".parse::<Identifier>().is_err());
        assert_eq!(
            "p".parse::<Identifier>().unwrap().literal(),
            "'p'".to_owned()
        );
    }

    #[test]
    fn python_table_keeps_python_derived_names() {
        let names = Names::new(TableName::default(), "dispatchbox".parse().unwrap()).unwrap();
        assert_eq!(names.due_index(), "idx_outbox_due");
        assert_eq!(names.aggregate_index(), "idx_outbox_aggregate");
        assert_eq!(names.dead_index(), "idx_outbox_dead");
        assert_eq!(names.archive_table(), "outbox_event_archive");
        assert_eq!(names.archive_function(), "archive_outbox_events");
        let names = Names::new("app.events".parse().unwrap(), "p".parse().unwrap()).unwrap();
        assert_eq!(names.due_index(), "events_due_idx");
        assert_eq!(names.aggregate_index(), "events_aggregate_idx");
        assert_eq!(names.dead_index(), "events_dead_idx");
        assert_eq!(names.archive_index(), "events_archive_date_idx");
    }

    #[test]
    fn derived_names_must_fit() {
        let table: TableName = "a".repeat(47).parse().unwrap();
        let err = Names::new(table, "p".parse().unwrap()).unwrap_err();
        assert!(err.to_string().contains("at most 46 bytes"), "{err}");
        let table: TableName = "a".repeat(46).parse().unwrap();
        assert!(Names::new(table, "p".parse().unwrap()).is_ok());
    }
}
