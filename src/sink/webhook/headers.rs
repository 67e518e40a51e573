//! Extra request headers: the static ones an operator configures (`DISPATCHBOX_WEBHOOK_HEADERS`,
//! e.g. an API key) and the allow-list of the row's own `headers` entries that travel as HTTP
//! headers (`DISPATCHBOX_WEBHOOK_FORWARD_HEADERS`, by default the W3C trace context).
//!
//! Neither may set a header the relay owns ([`RESERVED`]): the signing headers, the body's
//! framing and the connection's. Values may be secrets: errors name a header by its name or
//! position, never by value, and nothing here logs.

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use super::WebhookSinkError;

/// The default of `DISPATCHBOX_WEBHOOK_FORWARD_HEADERS`: W3C trace context, so a trace
/// started by the producer continues at the receiver.
pub const DEFAULT_FORWARD_HEADERS: &[&str] = &["traceparent", "tracestate"];

/// Headers neither the static set nor the row may set: the Standard Webhooks headers (the
/// signature covers the id and timestamp the relay chose), the body's type and framing, the
/// target host, and hop-by-hop headers that would change how the connection behaves.
pub const RESERVED: &[&str] = &[
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "content-type",
    "content-length",
    "content-encoding",
    "transfer-encoding",
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
];

/// Splits a static header setting into `(name, value)` pairs, in order. Two forms:
///
/// - a JSON object of strings: `{"Authorization": "Bearer abc", "X-Tenant": "a,b"}`;
/// - one `Name: value` per line (blank lines and lines starting with `#` are skipped),
///   the value running to the end of the line, so it may hold commas, colons and `;`.
///
/// Only the shape is checked here; names and values are checked by [`header_map`].
pub fn parse_headers(text: &str) -> Result<Vec<(String, String)>, WebhookSinkError> {
    let trimmed = text.trim();
    if trimmed.starts_with('{') {
        // serde's messages can quote the offending value: only the position is reported.
        let Entries(entries) =
            serde_json::from_str(trimmed).map_err(|error| WebhookSinkError::HeadersJson {
                line: error.line(),
                column: error.column(),
            })?;
        return entries
            .into_iter()
            .enumerate()
            .map(|(index, (name, value))| match value {
                serde_json::Value::String(value) => Ok((name, value)),
                _ => Err(WebhookSinkError::HeaderNotString {
                    position: index + 1,
                }),
            })
            .collect();
    }
    let mut headers = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or(WebhookSinkError::HeaderLine { line: index + 1 })?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    Ok(headers)
}

/// A JSON object's entries in document order, repeated keys included (a map type would
/// sort them and keep the last of a repeated key silently).
struct Entries(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object of header names to string values")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Entries, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// Splits the forward allow-list (names separated by commas and/or spaces, any case) into
/// lower-case names. Empty: nothing is forwarded.
pub fn parse_forward_headers(list: &str) -> Vec<String> {
    list.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|name| !name.is_empty())
        .map(str::to_ascii_lowercase)
        .collect()
}

/// The static headers as a header map: every name a valid HTTP header name that is not
/// [`RESERVED`] and given once, every value visible ASCII (no line breaks). Values are
/// marked sensitive (HTTP/2 never indexes them).
pub(super) fn header_map(headers: &[(String, String)]) -> Result<HeaderMap, WebhookSinkError> {
    let mut map = HeaderMap::with_capacity(headers.len());
    for (index, (name, value)) in headers.iter().enumerate() {
        let header =
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| WebhookSinkError::HeaderName {
                position: index + 1,
            })?;
        if RESERVED.contains(&header.as_str()) {
            return Err(WebhookSinkError::ReservedHeader {
                name: header.as_str().to_owned(),
            });
        }
        let mut value =
            HeaderValue::from_str(value).map_err(|_| WebhookSinkError::HeaderValue {
                name: header.as_str().to_owned(),
            })?;
        value.set_sensitive(true);
        if map.insert(header.clone(), value).is_some() {
            return Err(WebhookSinkError::DuplicateHeader {
                name: header.as_str().to_owned(),
            });
        }
    }
    Ok(map)
}

/// The forward allow-list as header names; each must be a valid name and not [`RESERVED`].
pub(super) fn forward_names(names: &[String]) -> Result<Vec<HeaderName>, WebhookSinkError> {
    names
        .iter()
        .enumerate()
        .map(|(index, name)| {
            let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                WebhookSinkError::ForwardHeaderName {
                    position: index + 1,
                }
            })?;
            if RESERVED.contains(&header.as_str()) {
                return Err(WebhookSinkError::ReservedHeader {
                    name: header.as_str().to_owned(),
                });
            }
            Ok(header)
        })
        .collect()
}

/// Adds to `request` the row's headers named on `allowed` that the request does not carry
/// yet (the relay's and the static headers win; of repeated names in the row the first
/// wins). Calls `skipped` with the name of each allowed header whose value is not a valid
/// header value; it is left out, the event is still sent.
pub(super) fn forward(
    request: &mut HeaderMap,
    row: &[(String, String)],
    allowed: &[HeaderName],
    mut skipped: impl FnMut(&str),
) {
    for (name, value) in row {
        let Some(header) = allowed
            .iter()
            .find(|allowed| allowed.as_str().eq_ignore_ascii_case(name))
        else {
            continue;
        };
        if request.contains_key(header) {
            continue;
        }
        match HeaderValue::from_str(value) {
            Ok(value) => {
                request.insert(header.clone(), value);
            }
            Err(_) => skipped(header.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn lines_and_json_objects_both_parse_and_keep_commas() {
        let lines = "Authorization: Bearer a,b:c\n\n# a comment\n  X-Tenant :  acme; eu  \n";
        assert_eq!(
            parse_headers(lines).unwrap(),
            pairs(&[("Authorization", "Bearer a,b:c"), ("X-Tenant", "acme; eu")])
        );
        let json = r#" {"X-Tenant": "acme; eu", "Authorization": "Bearer a,b:c"} "#;
        assert_eq!(
            parse_headers(json).unwrap(),
            pairs(&[("X-Tenant", "acme; eu"), ("Authorization", "Bearer a,b:c")]),
            "in document order"
        );
        let repeated = parse_headers(r#"{"X-A": "1", "x-a": "2"}"#).unwrap();
        assert!(matches!(
            header_map(&repeated),
            Err(WebhookSinkError::DuplicateHeader { .. })
        ));
        assert!(parse_headers("").unwrap().is_empty());
    }

    #[test]
    fn shape_errors_name_a_position_never_a_value() {
        let error = parse_headers("X-Ok: 1\nBearer s3cret").unwrap_err();
        assert!(
            matches!(error, WebhookSinkError::HeaderLine { line: 2 }),
            "{error}"
        );
        assert!(!error.to_string().contains("s3cret"));
        let error = parse_headers(r#"{"X-Key": 5, "s3cret": }"#).unwrap_err();
        assert!(
            matches!(error, WebhookSinkError::HeadersJson { .. }),
            "{error}"
        );
        assert!(!error.to_string().contains("s3cret"), "{error}");
        let error = parse_headers(r#"{"X-Ok": "1", "X-Key": 12345}"#).unwrap_err();
        assert!(
            matches!(error, WebhookSinkError::HeaderNotString { position: 2 }),
            "{error}"
        );
        assert!(!error.to_string().contains("12345"), "{error}");
    }

    #[test]
    fn static_headers_are_checked_as_http_headers() {
        let map = header_map(&pairs(&[("X-Api-Key", "k1"), ("User-Agent", "acme")])).unwrap();
        assert_eq!(map["x-api-key"], "k1");
        assert!(map["x-api-key"].is_sensitive());
        for reserved in [
            "webhook-id",
            "Webhook-Signature",
            "webhook-timestamp",
            "Content-Type",
            "content-length",
            "Host",
            "transfer-encoding",
        ] {
            let error = header_map(&pairs(&[(reserved, "x")])).unwrap_err();
            assert!(
                matches!(error, WebhookSinkError::ReservedHeader { .. }),
                "{reserved}: {error}"
            );
            assert!(
                error.to_string().contains(&reserved.to_ascii_lowercase()),
                "{error}"
            );
        }
        let error = header_map(&pairs(&[("X-Ok", "1"), ("Bad Name", "s3cret")])).unwrap_err();
        assert!(
            matches!(error, WebhookSinkError::HeaderName { position: 2 }),
            "{error}"
        );
        let error = header_map(&pairs(&[("X-Key", "s3cret\r\nX-Evil: 1")])).unwrap_err();
        assert_eq!(
            error.to_string(),
            "webhook header x-key has an invalid value; use visible ASCII without line breaks"
        );
        let error = header_map(&pairs(&[("X-Key", "a"), ("x-key", "b")])).unwrap_err();
        assert!(
            matches!(error, WebhookSinkError::DuplicateHeader { .. }),
            "{error}"
        );
    }

    #[test]
    fn forward_list_is_case_insensitive_and_refuses_reserved_names() {
        assert_eq!(
            parse_forward_headers(" TraceParent, tracestate  X-Request-Id,"),
            vec!["traceparent", "tracestate", "x-request-id"]
        );
        assert!(parse_forward_headers("").is_empty());
        let error = forward_names(&["traceparent".into(), "webhook-id".into()]).unwrap_err();
        assert!(
            matches!(error, WebhookSinkError::ReservedHeader { .. }),
            "{error}"
        );
        let error = forward_names(&["trace parent".into()]).unwrap_err();
        assert!(
            matches!(error, WebhookSinkError::ForwardHeaderName { position: 1 }),
            "{error}"
        );
    }

    #[test]
    fn only_allowed_valid_row_headers_are_forwarded_without_overriding() {
        let allowed = forward_names(&["traceparent".into(), "x-tenant".into()]).unwrap();
        let mut request = HeaderMap::new();
        request.insert("x-tenant", HeaderValue::from_static("static"));
        let row = pairs(&[
            ("TraceParent", "00-abc-01"),
            ("traceparent", "00-second-01"),
            ("x-tenant", "from-row"),
            ("x-secret", "not-allowed"),
        ]);
        let mut skipped = Vec::new();
        forward(&mut request, &row, &allowed, |name| {
            skipped.push(name.to_owned())
        });
        assert_eq!(
            request["traceparent"], "00-abc-01",
            "first of a repeated name"
        );
        assert_eq!(request["x-tenant"], "static", "static headers win");
        assert!(request.get("x-secret").is_none());
        assert!(skipped.is_empty());

        let mut request = HeaderMap::new();
        let row = pairs(&[("traceparent", "00-abc\n-01"), ("x-tenant", "t")]);
        forward(&mut request, &row, &allowed, |name| {
            skipped.push(name.to_owned())
        });
        assert_eq!(skipped, vec!["traceparent"]);
        assert!(request.get("traceparent").is_none());
        assert_eq!(request["x-tenant"], "t");
    }
}
