//! `dispatchbox healthcheck`: exit 0 when the running relay's `/health` answers 200 on
//! `DISPATCHBOX_HTTP_ADDR`, 1 otherwise. Needs nothing else from the environment, so a
//! container `HEALTHCHECK` can run it without curl.
//!
//! A plain blocking HTTP/1.1 request over `std::net` (no runtime, no client library): it
//! asks one fixed question of a server on the same machine and reads one status line.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The whole check, connect to last byte, takes at most this long.
const TIMEOUT: Duration = Duration::from_secs(3);
/// The address the relay listens on by default.
const DEFAULT_ADDR: &str = "0.0.0.0:8080";
/// Longest response read (a `/health` answer is tiny).
const MAX_RESPONSE_BYTES: u64 = 64 * 1024;

/// Runs the check (blocking; no async runtime needed).
pub fn run_blocking() -> ExitCode {
    let configured = std::env::var("DISPATCHBOX_HTTP_ADDR").unwrap_or_default();
    let configured = match configured.trim() {
        "" => DEFAULT_ADDR,
        addr => addr,
    };
    let result = configured
        .parse::<SocketAddr>()
        .map_err(|_| {
            format!(
                "DISPATCHBOX_HTTP_ADDR: {configured:?} is not an address; use IP:PORT, e.g. 0.0.0.0:8080"
            )
        })
        .and_then(|addr| check(probe_addr(addr)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(reason) => {
            eprintln!("dispatchbox healthcheck: {reason}");
            ExitCode::FAILURE
        }
    }
}

/// Where to connect for a server bound to `addr`: a wildcard address means "this machine".
fn probe_addr(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

/// `GET /health` on `addr`; Ok on a 200 answer.
fn check(addr: SocketAddr) -> Result<(), String> {
    let deadline = Instant::now() + TIMEOUT;
    let io = |e: std::io::Error| format!("http://{addr}/health: {e}");
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(io)?;
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    stream.set_write_timeout(Some(left())).map_err(io)?;
    stream
        .write_all(
            format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .map_err(io)?;
    stream.set_read_timeout(Some(left())).map_err(io)?;
    let mut response = Vec::new();
    stream
        .take(MAX_RESPONSE_BYTES)
        .read_to_end(&mut response)
        .map_err(io)?;
    match status_code(&response) {
        Some(200) => Ok(()),
        Some(code) => Err(format!("http://{addr}/health answered {code}")),
        None => Err(format!("http://{addr}/health sent no HTTP response")),
    }
}

/// The status code of an HTTP/1.x response's status line.
fn status_code(response: &[u8]) -> Option<u16> {
    let line = response.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/1."))?;
    parts.next()?.parse().ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_are_parsed() {
        assert_eq!(
            status_code(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"),
            Some(200)
        );
        assert_eq!(
            status_code(b"HTTP/1.1 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(status_code(b""), None);
        assert_eq!(status_code(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status_code(b"HTTP/1.1 abc\r\n"), None);
    }

    #[test]
    fn wildcard_addresses_probe_loopback() {
        assert_eq!(
            probe_addr("0.0.0.0:8080".parse().unwrap()),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(
            probe_addr("[::]:9".parse().unwrap()),
            "[::1]:9".parse().unwrap()
        );
        let fixed: SocketAddr = "10.1.2.3:80".parse().unwrap();
        assert_eq!(probe_addr(fixed), fixed);
    }
}
