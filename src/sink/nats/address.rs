//! Where the NATS sink publishes: the server URLs (the credentials they carry, and their
//! redacted form for messages) and subjects (the template's fixed text and each rendered
//! subject, checked against the NATS subject rules). Pure; no I/O.

use async_nats::ServerAddr;
use std::str::FromStr;

use super::{NatsSinkError, MAX_SUBJECT_LEN};
use crate::secret::Secret;
use crate::sink::template::Template;

/// How the client logs in: [`super::NatsAuth`], or what the URLs carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Login {
    None,
    Token(Secret<String>),
    UserPassword(String, Secret<String>),
    Credentials(Secret<String>),
}

/// The credentials the server URLs carry, by the NATS URL convention: `user:password@` is a
/// user and password, a lone `token@` is a token. The client library does not read them
/// from the URL itself, so the sink does; every URL that carries some must carry the same.
pub(super) fn url_login(servers: &[ServerAddr]) -> Result<Login, NatsSinkError> {
    let decode = |text: &str| {
        percent_encoding::percent_decode_str(text)
            .decode_utf8_lossy()
            .into_owned()
    };
    let mut login = Login::None;
    for server in servers {
        let found = match (server.username(), server.password()) {
            (Some(user), Some(password)) => {
                Login::UserPassword(decode(user), Secret::new(decode(password)))
            }
            (Some(token), None) => Login::Token(Secret::new(decode(token))),
            (None, _) => continue,
        };
        if login != Login::None && login != found {
            return Err(NatsSinkError::MixedUrlLogins);
        }
        login = found;
    }
    Ok(login)
}

/// Parses the comma-separated server list.
pub(super) fn parse_servers(url: &str) -> Result<Vec<ServerAddr>, NatsSinkError> {
    let mut servers = Vec::new();
    for (index, part) in url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .enumerate()
    {
        let position = index + 1;
        let addr = ServerAddr::from_str(part).map_err(|e| NatsSinkError::InvalidUrl {
            position,
            // The client's message can quote the URL; keep only its kind.
            reason: redact_reason(&e.to_string(), part),
        })?;
        let scheme = addr.scheme();
        if !matches!(scheme, "nats" | "tls") {
            return Err(NatsSinkError::UnsupportedScheme {
                position,
                scheme: scheme.to_owned(),
            });
        }
        servers.push(addr);
    }
    if servers.is_empty() {
        return Err(NatsSinkError::EmptyUrl);
    }
    Ok(servers)
}

/// `text` with every occurrence of `secret` removed.
fn redact_reason(text: &str, secret: &str) -> String {
    text.replace(secret, "…")
}

/// The server list with each URL's password replaced by `***`.
pub(super) fn redact_servers(url: &str) -> String {
    url.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|part| {
            let with_scheme = if part.contains("://") {
                part.to_owned()
            } else {
                format!("nats://{part}")
            };
            match url::Url::parse(&with_scheme) {
                Ok(mut parsed) => {
                    if parsed.password().is_some() {
                        let _ = parsed.set_password(Some("***"));
                    } else if !parsed.username().is_empty() {
                        // A lone user part is a token (`nats://TOKEN@host`).
                        let _ = parsed.set_username("***");
                    }
                    parsed.to_string().trim_end_matches('/').to_owned()
                }
                Err(_) => "(invalid url)".to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses a subject template and checks its fixed text against the subject rules.
pub(super) fn parse_subject_template(template: &str) -> Result<Template, NatsSinkError> {
    let parsed = Template::parse(template)?;
    if let Some(found) = parsed.first_literal_char_not(is_subject_char) {
        return Err(NatsSinkError::IllegalTemplateCharacter {
            template: template.to_owned(),
            found,
        });
    }
    // With every placeholder filled by a harmless token, an empty token can only come from
    // the fixed text.
    let sample = parsed.render_with("x");
    if sample.split('.').any(str::is_empty) {
        return Err(NatsSinkError::EmptyToken {
            template: template.to_owned(),
        });
    }
    if sample.len() > MAX_SUBJECT_LEN {
        return Err(NatsSinkError::TemplateTooLong {
            template: template.to_owned(),
        });
    }
    Ok(parsed)
}

/// Checks a subject to publish to: 1–[`MAX_SUBJECT_LEN`] bytes, tokens separated by `.`, none
/// empty, no whitespace or control characters, no wildcards.
pub(super) fn validate_subject(subject: &str) -> Result<(), String> {
    if subject.is_empty() {
        return Err("it is empty".to_owned());
    }
    if subject.len() > MAX_SUBJECT_LEN {
        return Err(format!(
            "it is {} bytes long, the limit is {MAX_SUBJECT_LEN}",
            subject.len()
        ));
    }
    if let Some(c) = subject.chars().find(|&c| !is_subject_char(c)) {
        return Err(format!(
            "{c:?} is not allowed: no spaces, control characters or wildcards '*' and '>'"
        ));
    }
    if subject.split('.').any(str::is_empty) {
        return Err("it has an empty token ('..', or a '.' at the start or end)".to_owned());
    }
    Ok(())
}

fn is_subject_char(c: char) -> bool {
    !(c.is_whitespace() || c.is_control() || c == '*' || c == '>')
}
