//! The declared widths of the text columns the relay writes, and the one rule that makes
//! every text it writes fit them.
//!
//! ORMs create `varchar(255)` columns; sink errors, and claim tokens made from long host
//! names, can be longer. A value that does not fit makes PostgreSQL reject the whole
//! statement (SQLSTATE 22001), so the relay learns the widths at start-up (from the same
//! catalog read as the preflight checks) and cuts what it writes to fit, ending a cut
//! error text with [`TRUNCATION_MARKER`]. `status` and `claim_token` cannot be cut: a
//! column narrower than [`STATUS_MIN_WIDTH`] or [`CLAIM_TOKEN_MIN_WIDTH`] is a preflight
//! problem, and `dispatchbox check` prints the `ALTER TABLE` that widens it.

/// Longest `last_error` stored even in a `text` column: an unbounded sink error would
/// bloat the row.
pub const MAX_ERROR_BYTES: usize = 4096;

/// Ends an error text that was cut to fit.
pub const TRUNCATION_MARKER: &str = "…[truncated]";

/// The longest status the relay writes: `processing`.
pub const STATUS_MIN_WIDTH: usize = "processing".len();

/// A claim token is `<host>-<pid>-<8 hex digits>`; the host part is cut to fit the
/// column, the rest (at most 7 + 1 + 8 characters on Linux, plus the separator) is what
/// keeps tokens of two processes apart and is never cut.
pub const CLAIM_TOKEN_MIN_WIDTH: usize = 20;

/// Widths, in characters, of the text columns the relay writes; `None` for unbounded
/// (`text`, or `varchar` without a length).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TextWidths {
    /// `status`.
    pub status: Option<usize>,
    /// `claim_token`.
    pub claim_token: Option<usize>,
    /// `last_error`.
    pub last_error: Option<usize>,
}

impl TextWidths {
    /// The widths of the columns in `columns` (name, `format_type`), as the preflight
    /// checks read them.
    pub fn from_columns(columns: &[(String, String)]) -> Self {
        let width = |name: &str| {
            columns
                .iter()
                .find(|(column, _)| column == name)
                .and_then(|(_, ty)| declared_width(ty))
        };
        Self {
            status: width("status"),
            claim_token: width("claim_token"),
            last_error: width("last_error"),
        }
    }

    /// `error` as it is stored in `last_error`: without NUL characters (text cannot hold
    /// them), at most [`MAX_ERROR_BYTES`], and within the column's width. A cut text ends
    /// with [`TRUNCATION_MARKER`].
    pub fn fit_error(&self, error: &str) -> String {
        let text: String = error.chars().filter(|&c| c != '\0').collect();
        let chars = self.last_error.unwrap_or(usize::MAX);
        if text.len() <= MAX_ERROR_BYTES && text.chars().count() <= chars {
            return text;
        }
        let marker_chars = TRUNCATION_MARKER.chars().count();
        if chars <= marker_chars {
            return text.chars().take(chars).collect();
        }
        let byte_budget = MAX_ERROR_BYTES - TRUNCATION_MARKER.len();
        let mut cut = String::with_capacity(byte_budget.min(text.len()));
        for c in text.chars().take(chars - marker_chars) {
            if cut.len() + c.len_utf8() > byte_budget {
                break;
            }
            cut.push(c);
        }
        cut.push_str(TRUNCATION_MARKER);
        cut
    }

    /// `token` cut to the claim-token column's width by dropping characters from its start
    /// (the host part), keeping the process-unique end.
    pub fn fit_claim_token(&self, token: &str) -> String {
        let width = self.claim_token.unwrap_or(usize::MAX);
        let excess = token.chars().count().saturating_sub(width);
        token.chars().skip(excess).collect()
    }
}

/// The length of `character varying(N)` (as `format_type` prints it); `None` for
/// unbounded types.
pub fn declared_width(format_type: &str) -> Option<usize> {
    let rest = format_type.strip_prefix("character varying(")?;
    rest.strip_suffix(')')?.parse().ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn widths_come_from_the_declared_types() {
        let columns = [
            ("status".to_owned(), "character varying(20)".to_owned()),
            ("claim_token".to_owned(), "text".to_owned()),
            ("last_error".to_owned(), "character varying(255)".to_owned()),
            ("payload".to_owned(), "jsonb".to_owned()),
        ];
        assert_eq!(
            TextWidths::from_columns(&columns),
            TextWidths {
                status: Some(20),
                claim_token: None,
                last_error: Some(255),
            }
        );
        assert_eq!(declared_width("character varying"), None);
        assert_eq!(declared_width("text"), None);
    }

    #[test]
    fn errors_fit_the_column_with_a_visible_marker() {
        let widths = TextWidths {
            last_error: Some(40),
            ..TextWidths::default()
        };
        assert_eq!(widths.fit_error("short\0 error"), "short error");
        let fitted = widths.fit_error(&"é".repeat(100));
        assert_eq!(fitted.chars().count(), 40);
        assert!(fitted.ends_with(TRUNCATION_MARKER));
        assert!(fitted.starts_with("éééé"));
        // Narrower than the marker: cut without it.
        let tiny = TextWidths {
            last_error: Some(5),
            ..TextWidths::default()
        };
        assert_eq!(tiny.fit_error("abcdefghij"), "abcde");
    }

    #[test]
    fn errors_stay_within_the_byte_cap_in_a_text_column() {
        let fitted = TextWidths::default().fit_error(&"é".repeat(MAX_ERROR_BYTES));
        assert!(fitted.len() <= MAX_ERROR_BYTES);
        assert!(fitted.ends_with(TRUNCATION_MARKER));
        assert_eq!(TextWidths::default().fit_error("fine"), "fine");
    }

    #[test]
    fn claim_tokens_keep_their_unique_end() {
        let widths = TextWidths {
            claim_token: Some(CLAIM_TOKEN_MIN_WIDTH),
            ..TextWidths::default()
        };
        let token = "a-very-long-pod-name-abcdef-12345-1234567-0badcafe";
        let fitted = widths.fit_claim_token(token);
        assert_eq!(fitted.chars().count(), CLAIM_TOKEN_MIN_WIDTH);
        assert!(fitted.ends_with("-1234567-0badcafe"));
        assert_eq!(TextWidths::default().fit_claim_token(token), token);
    }
}
