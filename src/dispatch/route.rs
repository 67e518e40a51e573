//! Routing: which sinks an event goes to, decided by `event_type` glob rules
//! (`DISPATCHBOX_ROUTES`). Pure; no I/O.
//!
//! Format: rules separated by `;` (or newlines), each `PATTERN=SINK[,SINK…]`, first match
//! wins. Patterns are shell-style globs over the event type (`*` any run of characters,
//! `?` one character, `[abc]` a class), e.g. `order.*=kafka; invoice.*=webhook; *=stdout`.
//! Without rules every event goes to every enabled sink. An event no rule matches has no
//! route: the caller marks it `dead` with reason "no route".

use glob::Pattern;

/// A parse error, naming the offending rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("rule {rule:?} is not PATTERN=SINK[,SINK…] (e.g. order.*=kafka)")]
    Shape { rule: String },
    #[error("rule {rule:?} has an invalid glob pattern: {reason}")]
    Pattern { rule: String, reason: String },
    #[error(
        "rule {rule:?} names sink {sink:?}, which is not enabled in DISPATCHBOX_SINKS ({enabled})"
    )]
    UnknownSink {
        rule: String,
        sink: String,
        enabled: String,
    },
}

#[derive(Debug, Clone)]
struct Rule {
    pattern: Pattern,
    /// Indexes into the enabled sinks.
    sinks: Vec<usize>,
}

/// Maps an event type to the indexes of the sinks it goes to.
#[derive(Debug, Clone)]
pub struct Router {
    /// `None`: no rules, every event goes to every sink.
    rules: Option<Vec<Rule>>,
    all: Vec<usize>,
}

impl Router {
    /// Parses `spec` against the enabled sink names (in their configured order). An empty
    /// or absent spec routes every event to every sink.
    pub fn parse(spec: Option<&str>, sink_names: &[&str]) -> Result<Self, RouteError> {
        let all: Vec<usize> = (0..sink_names.len()).collect();
        let Some(spec) = spec.map(str::trim).filter(|s| !s.is_empty()) else {
            return Ok(Router { rules: None, all });
        };
        let mut rules = Vec::new();
        for rule in spec
            .split([';', '\n'])
            .map(str::trim)
            .filter(|r| !r.is_empty())
        {
            let (pattern, sinks) = rule.split_once('=').ok_or_else(|| RouteError::Shape {
                rule: rule.to_owned(),
            })?;
            let pattern = pattern.trim();
            if pattern.is_empty() {
                return Err(RouteError::Shape {
                    rule: rule.to_owned(),
                });
            }
            let pattern = Pattern::new(pattern).map_err(|e| RouteError::Pattern {
                rule: rule.to_owned(),
                reason: e.msg.to_owned(),
            })?;
            let mut indexes = Vec::new();
            for sink in sinks.split(',').map(str::trim) {
                let index = sink_names
                    .iter()
                    .position(|name| *name == sink)
                    .ok_or_else(|| RouteError::UnknownSink {
                        rule: rule.to_owned(),
                        sink: sink.to_owned(),
                        enabled: sink_names.join(","),
                    })?;
                if !indexes.contains(&index) {
                    indexes.push(index);
                }
            }
            rules.push(Rule {
                pattern,
                sinks: indexes,
            });
        }
        Ok(Router {
            rules: Some(rules),
            all,
        })
    }

    /// The sinks for `event_type`, or `None` when no rule matches.
    pub fn route(&self, event_type: &str) -> Option<&[usize]> {
        match &self.rules {
            None => Some(&self.all),
            Some(rules) => rules
                .iter()
                .find(|rule| rule.pattern.matches(event_type))
                .map(|rule| rule.sinks.as_slice()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SINKS: [&str; 5] = ["kafka", "webhook", "stdout", "nats", "redis"];

    #[test]
    fn without_rules_every_sink_gets_every_event() {
        let router = Router::parse(None, &SINKS).unwrap();
        assert_eq!(router.route("anything"), Some(&[0, 1, 2, 3, 4][..]));
        let router = Router::parse(Some("  "), &SINKS).unwrap();
        assert_eq!(router.route("x"), Some(&[0, 1, 2, 3, 4][..]));
    }

    #[test]
    fn first_matching_rule_wins() {
        let router = Router::parse(
            Some("order.*=kafka; invoice.*=webhook,stdout\norder.special=stdout"),
            &SINKS,
        )
        .unwrap();
        assert_eq!(router.route("order.placed"), Some(&[0][..]));
        assert_eq!(router.route("order.special"), Some(&[0][..]));
        assert_eq!(router.route("invoice.issued"), Some(&[1, 2][..]));
        assert_eq!(router.route("customer.created"), None);
        assert_eq!(router.route("order"), None, "'order.*' needs the dot");
        let router = Router::parse(Some("order.*=nats,redis; *=redis"), &SINKS).unwrap();
        assert_eq!(router.route("order.placed"), Some(&[3, 4][..]));
        assert_eq!(router.route("invoice.issued"), Some(&[4][..]));
    }

    #[test]
    fn catch_all_and_single_character_patterns() {
        let router = Router::parse(Some("v?.order=kafka;*=stdout"), &SINKS).unwrap();
        assert_eq!(router.route("v1.order"), Some(&[0][..]));
        assert_eq!(router.route("v10.order"), Some(&[2][..]));
    }

    #[test]
    fn errors_name_the_rule() {
        let e = Router::parse(Some("order.*"), &SINKS).unwrap_err();
        assert!(e.to_string().contains("order.*"), "{e}");
        let e = Router::parse(Some("order.*=pigeon"), &SINKS).unwrap_err();
        assert!(matches!(e, RouteError::UnknownSink { .. }), "{e}");
        assert!(e.to_string().contains("pigeon"));
        let e = Router::parse(Some("order.[=kafka"), &SINKS).unwrap_err();
        assert!(matches!(e, RouteError::Pattern { .. }), "{e}");
        let e = Router::parse(Some("=kafka"), &SINKS).unwrap_err();
        assert!(matches!(e, RouteError::Shape { .. }), "{e}");
    }
}
