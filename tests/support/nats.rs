//! A real NATS server with JetStream per test: `nats-server -js` on a free loopback port
//! with its own store directory, killed on drop; `stop()` and `restart()` (same port, same
//! store, so streams and their messages survive) for outage tests. Also a reader that
//! fetches every message a stream holds by sequence, through a client of its own.
//!
//! Where the binary comes from: `DISPATCHBOX_TEST_NATS_SERVER` (a path), then `PATH`, then
//! `/usr/sbin` and `/usr/bin` (Debian's package, installed by `scripts/install-test-deps`).
//! A missing binary panics with a hint; tests never skip.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use async_nats::jetstream::{self, stream};

use super::server::ServerProcess;

/// How long `start()`/`restart()` wait for the server to greet a connection.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `nats-server -js`. Dropping it kills the process.
#[derive(Debug)]
pub struct TestNats {
    server: ServerProcess,
    bin: PathBuf,
    extra_args: Vec<String>,
    /// The test CA's PEM file when the server requires TLS.
    ca_file: Option<PathBuf>,
    /// Where the test PKI lives, removed on drop.
    pki: Option<tempfile::TempDir>,
}

/// One message read back from a stream.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub sequence: u64,
    pub subject: String,
    /// Headers in the order the server stored them (a name may repeat).
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

impl StoredMessage {
    /// Every value of header `name`.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The one value of header `name` (panics when it is missing or repeated).
    pub fn header(&self, name: &str) -> &str {
        match self.header_values(name).as_slice() {
            [one] => one,
            other => panic!("header {name}: {other:?} in {:?}", self.headers),
        }
    }
}

pub fn find_nats_server() -> PathBuf {
    super::find_server("DISPATCHBOX_TEST_NATS_SERVER", "nats-server")
}

impl TestNats {
    /// Starts a server with JetStream on a free port.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra command-line arguments (e.g. `--auth TOKEN`).
    pub fn start_with(extra_args: &[&str]) -> Self {
        let mut server = Self {
            server: ServerProcess::new("nats"),
            bin: find_nats_server(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            ca_file: None,
            pki: None,
        };
        server.spawn();
        server
    }

    /// Starts a server that requires TLS, with a certificate for `127.0.0.1` and
    /// `localhost` signed by a test CA ([`TestNats::ca_file`]).
    pub fn start_tls() -> Self {
        let (ca, cert, key) = super::postgres::tls_fixture(&["localhost"], &["127.0.0.1"]);
        let pki = tempfile::Builder::new()
            .prefix("dispatchbox-nats-pki-")
            .tempdir()
            .expect("create pki dir");
        let write = |name: &str, pem: &str| {
            let path = pki.path().join(name);
            std::fs::write(&path, pem).expect("write pem");
            path.to_str().expect("utf8 path").to_owned()
        };
        let (ca_file, cert_file, key_file) = (
            write("ca.pem", &ca),
            write("cert.pem", &cert),
            write("key.pem", &key),
        );
        let mut server =
            Self::start_with(&["--tls", "--tlscert", &cert_file, "--tlskey", &key_file]);
        server.ca_file = Some(PathBuf::from(ca_file));
        server.pki = Some(pki);
        server
    }

    /// The test CA of a TLS server.
    pub fn ca_file(&self) -> Option<&std::path::Path> {
        self.ca_file.as_deref()
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.server.port())
    }

    /// Kills the server (SIGKILL: an outage, not a graceful shutdown).
    pub fn stop(&mut self) {
        self.server.stop();
    }

    /// Starts the server again on the same port and store after `stop()`.
    pub fn restart(&mut self) {
        assert!(
            !self.server.is_running(),
            "restart() called on a running server"
        );
        self.spawn();
    }

    /// Everything the server logged so far.
    pub fn logs(&self) -> String {
        self.server.logs()
    }

    fn spawn(&mut self) {
        let store = self.server.dir().join("store");
        let (bin, port, extra_args) = (&self.bin, self.server.port(), &self.extra_args);
        let command = || {
            let mut command = Command::new(bin);
            command
                .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
                .arg(&store)
                .args(extra_args);
            command
        };
        self.server
            .start(STARTUP_TIMEOUT, "greet a connection", command, greets);
    }

    /// A JetStream context on a client of its own.
    pub async fn jetstream(&self) -> jetstream::Context {
        let options = match &self.ca_file {
            Some(ca) => async_nats::ConnectOptions::new()
                .add_root_certificates(ca.clone())
                .require_tls(true),
            None => async_nats::ConnectOptions::new(),
        };
        let client = options
            .connect(self.url())
            .await
            .expect("connect a test client");
        jetstream::new(client)
    }

    /// Creates a file-backed stream `name` over `subjects` (2-minute duplicate window).
    pub async fn create_stream(&self, name: &str, subjects: &[&str]) {
        self.create_stream_with(stream::Config {
            name: name.to_owned(),
            subjects: subjects.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .await;
    }

    pub async fn create_stream_with(&self, config: stream::Config) {
        let name = config.name.clone();
        self.jetstream()
            .await
            .create_stream(config)
            .await
            .unwrap_or_else(|e| panic!("create stream {name}: {e}"));
    }

    /// Every message of stream `name`, by sequence, once it holds at least `expected`
    /// (waits up to `within`, then returns what it has).
    pub async fn read_stream(
        &self,
        name: &str,
        expected: u64,
        within: Duration,
    ) -> Vec<StoredMessage> {
        let js = self.jetstream().await;
        let deadline = tokio::time::Instant::now() + within;
        let mut stream = js
            .get_stream(name)
            .await
            .unwrap_or_else(|e| panic!("get stream {name}: {e}"));
        loop {
            let state = stream.info().await.expect("stream info").state.clone();
            if state.messages >= expected || tokio::time::Instant::now() >= deadline {
                let mut messages = Vec::new();
                for sequence in state.first_sequence..=state.last_sequence {
                    if state.messages == 0 {
                        break;
                    }
                    let Ok(raw) = stream.get_raw_message(sequence).await else {
                        continue; // deleted or trimmed
                    };
                    let headers = raw
                        .headers
                        .iter()
                        .flat_map(|(name, values)| {
                            values
                                .iter()
                                .map(move |v| (name.to_string(), v.as_str().to_owned()))
                        })
                        .collect();
                    messages.push(StoredMessage {
                        sequence: raw.sequence,
                        subject: raw.subject.to_string(),
                        headers,
                        payload: raw.payload.to_vec(),
                    });
                }
                return messages;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// How many messages stream `name` holds now.
    pub async fn message_count(&self, name: &str) -> u64 {
        let js = self.jetstream().await;
        let mut stream = js.get_stream(name).await.expect("get stream");
        stream.info().await.expect("stream info").state.messages
    }
}

/// Whether a server on `port` greets a connection with its INFO line.
fn greets(port: u16) -> bool {
    let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).is_ok() && line.starts_with("INFO ")
}
