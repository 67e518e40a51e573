//! The URL and key-value forms of the database URL, libpq's multi-host lists, and
//! redaction: the text side of [`super::ConnInfo`].

use percent_encoding::percent_decode_str;

use std::path::PathBuf;

use super::{ConnInfoError, Endpoint, Host, DEFAULT_PORT, REDACTED};

/// Stands in for an empty host (Unix socket URLs) while the url crate parses.
pub(super) const PLACEHOLDER_HOST: &str = "dispatchbox-unix-socket.invalid";

/// Byte range of the URL's user info (`user[:password]`), if it has any.
pub(super) fn user_info(input: &str) -> Option<std::ops::Range<usize>> {
    let start = input.find("://")? + 3;
    let rest = &input[start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let at = rest[..authority_len].rfind('@')?;
    Some(start..start + at)
}

pub(super) fn with_placeholder_host(input: &str) -> Option<String> {
    let info = user_info(input)?;
    let host_at = info.end + 1;
    let mut patched = input.to_owned();
    patched.insert_str(host_at, PLACEHOLDER_HOST);
    Some(patched)
}

/// Parses a URL that names at most one host, accepting libpq's empty host
/// (`postgres://user@/db?host=/socket/dir`), which the url crate refuses after user info:
/// the placeholder stands in for it, and the `host` parameter must then replace it.
pub(super) fn parse_url(input: &str) -> Result<url::Url, ConnInfoError> {
    match url::Url::parse(input) {
        Err(url::ParseError::EmptyHost) => {
            let patched = with_placeholder_host(input).ok_or(ConnInfoError::MissingHost)?;
            url::Url::parse(&patched).map_err(ConnInfoError::InvalidUrl)
        }
        other => other.map_err(ConnInfoError::InvalidUrl),
    }
}

/// The URL's host, `None` for the placeholder (no host given).
pub(super) fn url_host(url: &url::Url) -> Option<Host> {
    url.host().and_then(|h| match h {
        url::Host::Domain(PLACEHOLDER_HOST) => None,
        // Strip the brackets the URL syntax needs around IPv6 literals.
        url::Host::Ipv6(ip) => Some(Host::Tcp(ip.to_string())),
        other => Some(Host::Tcp(other.to_string())),
    })
}

/// When the URL's authority lists several hosts (`a:1,b:2`): the URL with the list replaced
/// by the placeholder host, and the list's pieces.
pub(super) fn split_host_list(input: &str) -> Option<(String, Vec<String>)> {
    let start = input.find("://")? + 3;
    let rest = &input[start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let hosts_start = rest[..authority_len].rfind('@').map_or(0, |at| at + 1);
    let hosts = &rest[hosts_start..authority_len];
    if !hosts.contains(',') {
        return None;
    }
    let range = start + hosts_start..start + authority_len;
    let mut patched = input.to_owned();
    patched.replace_range(range, PLACEHOLDER_HOST);
    Some((patched, hosts.split(',').map(str::to_owned).collect()))
}

/// One `host[:port]` piece of a host list, parsed by the url crate like a lone host.
pub(super) fn listed_host(piece: &str) -> Result<(Option<Host>, Option<u16>), ConnInfoError> {
    if piece.is_empty() || piece.starts_with(':') {
        return Err(ConnInfoError::MissingHost);
    }
    let url = url::Url::parse(&format!("postgres://{piece}/")).map_err(|error| match error {
        url::ParseError::InvalidPort => ConnInfoError::InvalidPort {
            value: piece.rsplit(':').next().unwrap_or(piece).to_owned(),
        },
        other => ConnInfoError::InvalidUrl(other),
    })?;
    Ok((url_host(&url), url.port()))
}

/// The `host` parameter: comma-separated names or addresses, or Unix socket directories
/// (anything starting with `/`).
pub(super) fn host_list(value: &str) -> Result<Vec<Host>, ConnInfoError> {
    value
        .split(',')
        .map(|host| match host {
            "" => Err(ConnInfoError::MissingHost),
            dir if dir.starts_with('/') => Ok(Host::Unix(PathBuf::from(dir))),
            name => Ok(Host::Tcp(name.to_owned())),
        })
        .collect()
}

/// The `port` parameter: comma-separated ports; an empty entry means the default.
pub(super) fn port_list(value: &str) -> Result<Vec<Option<u16>>, ConnInfoError> {
    value
        .split(',')
        .map(|port| match port.trim() {
            "" => Ok(None),
            port => match port.parse::<u16>() {
                Ok(0) | Err(_) => Err(ConnInfoError::InvalidPort {
                    value: port.to_owned(),
                }),
                Ok(port) => Ok(Some(port)),
            },
        })
        .collect()
}

/// libpq's pairing: one port for every host, or one port per host.
pub(super) fn pair_hosts_and_ports(
    hosts: Vec<Host>,
    ports: Vec<Option<u16>>,
) -> Result<Vec<Endpoint>, ConnInfoError> {
    let port_of = |index: usize| match ports.as_slice() {
        [one] => one.unwrap_or(DEFAULT_PORT),
        many => many.get(index).copied().flatten().unwrap_or(DEFAULT_PORT),
    };
    if ports.len() > 1 && ports.len() != hosts.len() {
        return Err(ConnInfoError::PortCount {
            hosts: hosts.len(),
            ports: ports.len(),
        });
    }
    let endpoints: Vec<Endpoint> = hosts
        .into_iter()
        .enumerate()
        .map(|(index, host)| Endpoint {
            host,
            port: port_of(index),
        })
        .collect();
    for endpoint in &endpoints {
        if matches!(&endpoint.host, Host::Tcp(name) if name.is_empty()) {
            return Err(ConnInfoError::MissingHost);
        }
    }
    if endpoints.is_empty() {
        return Err(ConnInfoError::MissingHost);
    }
    Ok(endpoints)
}

/// Replaces the password in the URL text; works on the raw input so that whatever the
/// operator typed is what they see, minus the secret.
pub(super) fn redact(input: &str) -> String {
    let Some(info) = user_info(input) else {
        return input.to_owned();
    };
    match input[info.clone()].find(':') {
        Some(colon) => {
            let password_start = info.start + colon + 1;
            format!(
                "{}{REDACTED}{}",
                &input[..password_start],
                &input[info.end..]
            )
        }
        None => input.to_owned(),
    }
}

pub(super) fn decode(raw: &str, part: &'static str) -> Result<String, ConnInfoError> {
    percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| ConnInfoError::InvalidEncoding { part })
}
