//! Destination templates of the sinks (Kafka topics, NATS subjects, Redis streams, RabbitMQ
//! exchanges and routing keys): a text
//! with `{aggregate_type}` and `{event_type}` placeholders (`outbox.{aggregate_type}`),
//! parsed once at startup and rendered per event.
//!
//! Owns the placeholder syntax only. What characters a rendered name may hold is the
//! transport's rule and stays in its sink module (`Template::first_literal_char_not` lets
//! it check the fixed text at startup). Pure; no I/O.

use crate::event::OutboxEvent;

/// Why a template does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("template is empty")]
    Empty,
    #[error(
        "template {template:?} uses unknown placeholder {{{placeholder}}}; the placeholders \
         are {{aggregate_type}} and {{event_type}}"
    )]
    UnknownPlaceholder {
        template: String,
        placeholder: String,
    },
    #[error("template {template:?} has a '{{' without a closing '}}'")]
    Unclosed { template: String },
    #[error("template {template:?} has a '}}' without an opening '{{'")]
    Unopened { template: String },
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    AggregateType,
    EventType,
}

impl Template {
    /// Parses `template`.
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        if template.is_empty() {
            return Err(TemplateError::Empty);
        }
        let mut segments = Vec::new();
        let mut rest = template;
        while !rest.is_empty() {
            let open = rest.find('{').unwrap_or(rest.len());
            if rest[..open].contains('}') {
                return Err(TemplateError::Unopened {
                    template: template.to_owned(),
                });
            }
            if open > 0 {
                segments.push(Segment::Literal(rest[..open].to_owned()));
            }
            if open == rest.len() {
                break;
            }
            let after = &rest[open + 1..];
            let close = after.find('}').ok_or_else(|| TemplateError::Unclosed {
                template: template.to_owned(),
            })?;
            segments.push(match &after[..close] {
                "aggregate_type" => Segment::AggregateType,
                "event_type" => Segment::EventType,
                other => {
                    return Err(TemplateError::UnknownPlaceholder {
                        template: template.to_owned(),
                        placeholder: other.to_owned(),
                    })
                }
            });
            rest = &after[close + 1..];
        }
        Ok(Self {
            source: template.to_owned(),
            segments,
        })
    }

    /// The template as configured.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The fixed text between the placeholders.
    pub fn literals(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|segment| match segment {
            Segment::Literal(text) => Some(text.as_str()),
            Segment::AggregateType | Segment::EventType => None,
        })
    }

    /// The first character of the fixed text that `allowed` refuses, if any: how a sink
    /// checks its transport's character rule at startup.
    pub fn first_literal_char_not(&self, allowed: impl Fn(char) -> bool) -> Option<char> {
        self.literals()
            .find_map(|text| text.chars().find(|&c| !allowed(c)))
    }

    /// The template with every placeholder replaced by `value`: what the fixed text makes
    /// of a name whatever the event holds (for checks at startup).
    pub fn render_with(&self, value: &str) -> String {
        self.render_parts(value, value)
    }

    /// The destination of `event`.
    pub fn render(&self, event: &OutboxEvent) -> String {
        self.render_parts(&event.aggregate_type, &event.event_type)
    }

    fn render_parts(&self, aggregate_type: &str, event_type: &str) -> String {
        let mut out = String::with_capacity(self.source.len() + 32);
        for segment in &self.segments {
            out.push_str(match segment {
                Segment::Literal(text) => text,
                Segment::AggregateType => aggregate_type,
                Segment::EventType => event_type,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn event() -> OutboxEvent {
        OutboxEvent {
            id: 1,
            aggregate_type: "order".into(),
            aggregate_id: "o-1".into(),
            event_type: "order.created".into(),
            payload: bytes::Bytes::from_static(b"{}"),
            headers: Vec::new(),
            created_at: chrono::Utc::now(),
            next_run_at: None,
        }
    }

    #[test]
    fn renders_placeholders() {
        let e = event();
        let render = |t: &str| Template::parse(t).unwrap().render(&e);
        assert_eq!(render("outbox.{aggregate_type}"), "outbox.order");
        assert_eq!(render("{event_type}"), "order.created");
        assert_eq!(
            render("a.{aggregate_type}.{event_type}-v1"),
            "a.order.order.created-v1"
        );
        assert_eq!(render("static"), "static");
        let t = Template::parse("x.{aggregate_type}.y").unwrap();
        assert_eq!(t.literals().collect::<Vec<_>>(), vec!["x.", ".y"]);
        assert_eq!(t.render_with("_"), "x._.y");
        // Only the fixed text is checked: the placeholders' braces are not characters.
        assert_eq!(
            t.first_literal_char_not(|c| c.is_ascii_alphabetic()),
            Some('.')
        );
        assert_eq!(t.first_literal_char_not(|c| c != '/'), None);
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(Template::parse("").unwrap_err(), TemplateError::Empty);
        assert!(matches!(
            Template::parse("outbox.{aggregate}").unwrap_err(),
            TemplateError::UnknownPlaceholder { placeholder, .. } if placeholder == "aggregate"
        ));
        assert!(matches!(
            Template::parse("outbox.{aggregate_type").unwrap_err(),
            TemplateError::Unclosed { .. }
        ));
        assert!(matches!(
            Template::parse("a}b").unwrap_err(),
            TemplateError::Unopened { .. }
        ));
    }
}
