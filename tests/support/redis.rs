//! A real Redis server per test: `redis-server --save ''` on a free loopback port with its
//! own directory, killed on drop; `stop()` and `restart()` (same port; no persistence, so
//! it comes back empty) for outage tests. Also `XRANGE` reads through a client of its own.
//!
//! Where the binary comes from: `DISPATCHBOX_TEST_REDIS_SERVER` (a path), then `PATH`, then
//! `/usr/bin` (Debian's package, installed by `scripts/install-test-deps`). A missing
//! binary panics with a hint; tests never skip.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::server::ServerProcess;

const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `redis-server`. Dropping it kills the process.
#[derive(Debug)]
pub struct TestRedis {
    server: ServerProcess,
    bin: PathBuf,
    extra_args: Vec<String>,
    /// The test CA's PEM file when the server speaks TLS only.
    ca_file: Option<PathBuf>,
}

/// The fields of one entry, as `XRANGE` returns them.
type Fields = Vec<(String, Vec<u8>)>;

/// One stream entry read back: its id and its fields in order.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: String,
    pub fields: Fields,
}

impl Entry {
    /// The value of field `name` as UTF-8 (panics when missing).
    pub fn field(&self, name: &str) -> &str {
        let value = self
            .fields
            .iter()
            .find(|(k, _)| k == name)
            .unwrap_or_else(|| panic!("no field {name} in {:?}", self.fields));
        std::str::from_utf8(&value.1).expect("UTF-8 field")
    }

    pub fn names(&self) -> Vec<&str> {
        self.fields.iter().map(|(k, _)| k.as_str()).collect()
    }
}

pub fn find_redis_server() -> PathBuf {
    super::find_server("DISPATCHBOX_TEST_REDIS_SERVER", "redis-server")
}

impl TestRedis {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra arguments (e.g. `--requirepass PW`). The helpers below
    /// connect without a password, so they only work on a server that needs none.
    pub fn start_with(extra_args: &[&str]) -> Self {
        let mut server = Self {
            server: ServerProcess::new("redis"),
            bin: find_redis_server(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            ca_file: None,
        };
        server.spawn();
        server
    }

    /// Starts a server that speaks TLS only (`--port 0 --tls-port PORT`), with a
    /// certificate for `127.0.0.1` and `localhost` signed by a test CA
    /// ([`TestRedis::ca_file`]); clients need no certificate.
    pub fn start_tls() -> Self {
        let process = ServerProcess::new("redis");
        let (ca, cert, key) = super::postgres::tls_fixture(&["localhost"], &["127.0.0.1"]);
        let write = |name: &str, pem: &str| {
            let path = process.dir().join(name);
            std::fs::write(&path, pem).expect("write pem");
            path
        };
        let (ca_file, cert_file, key_file) = (
            write("ca.pem", &ca),
            write("cert.pem", &cert),
            write("key.pem", &key),
        );
        let port = process.port();
        let mut server = Self {
            server: process,
            bin: find_redis_server(),
            extra_args: vec![
                "--tls-port".into(),
                port.to_string(),
                "--tls-cert-file".into(),
                cert_file.to_str().expect("utf8").into(),
                "--tls-key-file".into(),
                key_file.to_str().expect("utf8").into(),
                "--tls-ca-cert-file".into(),
                ca_file.to_str().expect("utf8").into(),
                "--tls-auth-clients".into(),
                "no".into(),
            ],
            ca_file: Some(ca_file),
        };
        server.spawn();
        server
    }

    /// The test CA of a TLS server.
    pub fn ca_file(&self) -> Option<&std::path::Path> {
        self.ca_file.as_deref()
    }

    /// `rediss://127.0.0.1:PORT` for a TLS server.
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.server.port())
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.server.port())
    }

    /// Kills the server (SIGKILL).
    pub fn stop(&mut self) {
        self.server.stop();
    }

    /// Starts the server again on the same port after `stop()` (empty: nothing is saved).
    pub fn restart(&mut self) {
        assert!(
            !self.server.is_running(),
            "restart() called on a running server"
        );
        self.spawn();
    }

    pub fn logs(&self) -> String {
        self.server.logs()
    }

    fn spawn(&mut self) {
        // With TLS the plain port is off (`--port 0`) and the TLS port is in extra_args.
        let tls = self.ca_file.is_some();
        let plain_port = if tls {
            "0".to_owned()
        } else {
            self.server.port().to_string()
        };
        let (bin, dir, extra_args) = (&self.bin, self.server.dir().to_owned(), &self.extra_args);
        let command = || {
            let mut command = Command::new(bin);
            command
                .args(["--port", &plain_port, "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--dir"])
                .arg(&dir)
                .args(extra_args);
            command
        };
        self.server
            .start(STARTUP_TIMEOUT, "answer PING", command, |port| {
                answers(port, tls)
            });
    }

    /// A connection of its own.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("redis client")
            .get_multiplexed_async_connection()
            .await
            .expect("connect a test client")
    }

    /// `XRANGE stream - +`.
    pub async fn xrange(&self, stream: &str) -> Vec<Entry> {
        let mut connection = self.connection().await;
        let reply: Vec<(String, Fields)> = redis::cmd("XRANGE")
            .arg(stream)
            .arg("-")
            .arg("+")
            .query_async(&mut connection)
            .await
            .unwrap_or_else(|e| panic!("XRANGE {stream}: {e}"));
        reply
            .into_iter()
            .map(|(id, fields)| Entry { id, fields })
            .collect()
    }

    /// Runs one command and returns its reply as a `redis::Value`.
    pub async fn command(&self, args: &[&str]) -> redis::Value {
        let mut connection = self.connection().await;
        let mut command = redis::cmd(args[0]);
        for arg in &args[1..] {
            command.arg(*arg);
        }
        command
            .query_async(&mut connection)
            .await
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }
}

/// Whether a server on `port` is up: a TLS-only one once it accepts connections (the
/// handshake is the client's part), a plain one when it answers `PING` (a server that
/// wants a password answers -NOAUTH: it is up all the same).
fn answers(port: u16, tls: bool) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    if tls {
        return true;
    }
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut answer = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut answer).is_ok()
        && (&answer == b"+PONG\r\n" || answer.starts_with(b"-NOAUTH"))
}
