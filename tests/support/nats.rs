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
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};

use super::postgres::free_port;

/// How long `start()`/`restart()` wait for the server to greet a connection.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `nats-server -js`. Dropping it kills the process.
#[derive(Debug)]
pub struct TestNats {
    port: u16,
    bin: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
    extra_args: Vec<String>,
    /// The test CA's PEM file when the server requires TLS.
    ca_file: Option<PathBuf>,
    /// Where the test PKI lives, removed on drop.
    pki: Option<tempfile::TempDir>,
    starts: usize,
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
        let dir = tempfile::Builder::new()
            .prefix("dispatchbox-nats-")
            .tempdir()
            .expect("create nats dir");
        let mut server = Self {
            port: free_port(),
            bin: find_nats_server(),
            dir,
            child: None,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            ca_file: None,
            pki: None,
            starts: 0,
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
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: an outage, not a graceful shutdown).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store after `stop()`.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart() called on a running server");
        self.spawn();
    }

    /// Everything the server logged so far.
    pub fn logs(&self) -> String {
        (1..=self.starts)
            .map(|n| std::fs::read_to_string(self.log_path(n)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }

    fn log_path(&self, start: usize) -> PathBuf {
        self.dir.path().join(format!("nats-{start}.log"))
    }

    fn spawn(&mut self) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            self.starts += 1;
            let log = std::fs::File::create(self.log_path(self.starts)).expect("create nats log");
            let store = self.dir.path().join("store");
            let child = Command::new(&self.bin)
                .args([
                    "-js",
                    "-a",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-sd",
                ])
                .arg(&store)
                .args(&self.extra_args)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone log handle"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", self.bin.display()));
            self.child = Some(child);
            if self.wait_ready(deadline) {
                return;
            }
            self.stop();
            assert!(
                Instant::now() < deadline,
                "nats-server did not accept connections on port {} within {STARTUP_TIMEOUT:?}; \
                 logs:\n{}",
                self.port,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Polls until the server greets a connection with its INFO line, the process dies, or
    /// the deadline passes.
    fn wait_ready(&mut self, deadline: Instant) -> bool {
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_status)) = child.try_wait() {
                    return false;
                }
            }
            if let Ok(stream) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                let mut line = String::new();
                if BufReader::new(stream).read_line(&mut line).is_ok() && line.starts_with("INFO ")
                {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
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

impl Drop for TestNats {
    fn drop(&mut self) {
        self.stop();
    }
}
