//! A real RabbitMQ node, one per test binary ([`node`]), plus a TCP proxy in front of it
//! ([`Proxy`]) that tests use to cut, refuse or stall connections without disturbing the
//! tests that share the node.
//!
//! The node: Debian's `rabbitmq-server` run as a private node on free loopback ports
//! (`RABBITMQ_NODE_PORT`, `RABBITMQ_DIST_PORT`, and its own epmd on `ERL_EPMD_PORT`, so it
//! never meets another node's epmd), with its mnesia and log directories in a temporary
//! directory owned by the `rabbitmq` user (as root, the Debian script switches to that user)
//! and no plugins; besides the plain AMQP port it has a TLS listener with a certificate for
//! `127.0.0.1` from a test CA ([`TestNode::tls_url`], [`TestNode::ca_pem`]). The AMQP port opens after about 4–6 s; [`node`] polls it with a deadline
//! and an AMQP protocol header, never a fixed sleep.
//!
//! Stopping: a static is never dropped, so a watchdog process is started with the node. It
//! polls the test binary's pid every 50 ms and, once the binary has exited (passed, failed,
//! panicked or was killed; a zombie counts as exited), SIGKILLs every process of the node
//! and its epmd, recognised by the node's unique `ERL_EPMD_PORT` in their environment, then
//! removes the directory.
//!
//! Where the binary comes from: `DISPATCHBOX_TEST_RABBITMQ_SERVER` (a path), then `PATH`, then
//! `/usr/sbin/rabbitmq-server`. A missing binary panics with a hint; tests never skip.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;

use super::postgres::free_port;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

/// How long the node may take to open its AMQP port.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(90);

/// The shared node of this test binary, started by the first caller.
pub fn node() -> &'static TestNode {
    static NODE: OnceLock<TestNode> = OnceLock::new();
    NODE.get_or_init(TestNode::start)
}

/// A running private RabbitMQ node; stopped by its watchdog when the test binary exits.
#[derive(Debug)]
pub struct TestNode {
    port: u16,
    /// The TLS listener (certificate for 127.0.0.1 and localhost, signed by `ca_pem`).
    tls_port: u16,
    ca_pem: String,
    dir: PathBuf,
    epmd_port: u16,
    started_in: Duration,
    /// Outlives this binary on purpose: never waited for.
    watchdog: Child,
    /// The top process, kept so it is not left as a zombie while the binary runs.
    child: Mutex<Child>,
}

/// Locates `rabbitmq-server` or panics with the install hint.
pub fn find_rabbitmq_server() -> PathBuf {
    super::find_server("DISPATCHBOX_TEST_RABBITMQ_SERVER", "rabbitmq-server")
}

/// `id -u rabbitmq` / `id -g rabbitmq`.
fn rabbitmq_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "rabbitmq"])
            .output()
            .expect("run id");
        assert!(
            out.status.success(),
            "there is no rabbitmq user; run scripts/install-test-deps (the rabbitmq-server \
             package creates it)"
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a numeric id")
    };
    (id("-u"), id("-g"))
}

impl TestNode {
    fn start() -> Self {
        let bin = find_rabbitmq_server();
        let started = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("dispatchbox-rabbitmq-")
            .tempdir()
            .expect("create node dir")
            .keep();
        let (uid, gid) = rabbitmq_ids();
        let (port, dist_port, epmd_port, tls_port) =
            (free_port(), free_port(), free_port(), free_port());
        let (ca_pem, cert_pem, key_pem) =
            super::postgres::tls_fixture(&["localhost"], &["127.0.0.1"]);
        let conf = format!(
            "listeners.ssl.1 = 127.0.0.1:{tls_port}\n\
             ssl_options.cacertfile = {dir}/ca.pem\n\
             ssl_options.certfile = {dir}/server.pem\n\
             ssl_options.keyfile = {dir}/server.key\n\
             ssl_options.verify = verify_none\n\
             ssl_options.fail_if_no_peer_cert = false\n",
            dir = dir.display()
        );
        for (name, content) in [
            ("enabled_plugins", "[].\n"),
            ("rabbitmq.conf", conf.as_str()),
            ("ca.pem", ca_pem.as_str()),
            ("server.pem", cert_pem.as_str()),
            ("server.key", key_pem.as_str()),
        ] {
            std::fs::write(dir.join(name), content).unwrap_or_else(|e| panic!("write {name}: {e}"));
            std::os::unix::fs::chown(dir.join(name), Some(uid), Some(gid))
                .expect("chown to rabbitmq");
        }
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown to rabbitmq");
        let log = std::fs::File::create(dir.join("server.log")).expect("create server log");
        let node_name = format!("dispatchbox-test-{port}@localhost");
        let child = Command::new(&bin)
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("ERL_EPMD_PORT", epmd_port.to_string())
            .env("RABBITMQ_NODENAME", &node_name)
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq"))
            .env("RABBITMQ_LOGS", "-")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let watchdog = Self::spawn_watchdog(&dir, epmd_port);
        let mut node = Self {
            watchdog,
            port,
            tls_port,
            ca_pem,
            dir,
            epmd_port,
            started_in: Duration::ZERO,
            child: Mutex::new(child),
        };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = node.child.lock().unwrap().try_wait() {
                kill_now(epmd_port);
                panic!(
                    "rabbitmq-server exited with {status} before opening port {port}; log:\n{}",
                    node.log()
                );
            }
            if amqp_answers(port) && TcpStream::connect(("127.0.0.1", tls_port)).is_ok() {
                break;
            }
            if Instant::now() >= deadline {
                kill_now(epmd_port);
                panic!(
                    "rabbitmq-server did not open AMQP port {port} and TLS port {tls_port} within \
                     {STARTUP_TIMEOUT:?}; \
                     log:\n{}",
                    node.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        node.started_in = started.elapsed();
        assert!(
            node_pids(epmd_port).len() > 2,
            "found no processes of the node by ERL_EPMD_PORT={epmd_port}; the watchdog could not \
             stop them"
        );
        node
    }

    /// Starts a process that, once this test binary has exited, SIGKILLs every process of
    /// the node and removes its directory. The node's processes are those whose environment
    /// holds its `ERL_EPMD_PORT`: every one inherits it (`su`, the scripts, the VM, its
    /// helpers, epmd), no other process has it, and it is known before the node has started
    /// anything, so a binary killed while the node boots leaves nothing behind either.
    fn spawn_watchdog(dir: &Path, epmd_port: u16) -> Child {
        // A killed binary can stay a zombie for seconds before it is reaped: that counts as
        // gone (state Z in /proc/PID/stat), or `kill -0` would keep the node running.
        let script = r#"
            alive() { s=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) || return 1; [ "${s%% *}" != Z ]; }
            while alive "$1"; do sleep 0.05; done
            for round in 1 2; do
                for p in /proc/[0-9]*; do
                    if tr '\0' '\n' < "$p/environ" 2>/dev/null | grep -qx "ERL_EPMD_PORT=$2"; then
                        kill -KILL "${p#/proc/}" 2>/dev/null
                    fi
                done
                sleep 0.2
            done
            rm -rf "$3"
        "#;
        let mut command = Command::new("sh");
        command
            .args(["-c", script, "rabbitmq-watchdog"])
            .arg(std::process::id().to_string())
            .arg(epmd_port.to_string())
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Its own process group: a Ctrl-C to the test run must not kill the watchdog first.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        command.spawn().expect("spawn the rabbitmq watchdog")
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f`.
    pub fn url(&self) -> String {
        url_for(self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `amqps://guest:guest@127.0.0.1:TLS_PORT/%2f`.
    pub fn tls_url(&self) -> String {
        format!("amqps://guest:guest@127.0.0.1:{}/%2f", self.tls_port)
    }

    /// PEM of the CA that signed the TLS listener's certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// How long the node took to accept AMQP connections.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// The node's processes now (what the watchdog will stop).
    pub fn pids(&self) -> Vec<u32> {
        node_pids(self.epmd_port)
    }

    /// What the node has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// A connection and channel for declaring and reading, from the test side.
    pub async fn admin(&self) -> Admin {
        Admin::connect(&self.url()).await
    }
}

/// `amqp://guest:guest@127.0.0.1:PORT/%2f` (guest may connect over loopback).
pub fn url_for(port: u16) -> String {
    format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
}

/// True when the port answers an AMQP 0-9-1 protocol header with a method frame
/// (`connection.start`): the broker has booted, not only bound its socket.
fn amqp_answers(port: u16) -> bool {
    let Ok(mut stream) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"AMQP\x00\x00\x09\x01").is_err() {
        return false;
    }
    let mut frame_type = [0u8; 1];
    matches!(stream.read_exact(&mut frame_type), Ok(())) && frame_type[0] == 1
}

/// SIGKILLs the node's processes now (a node that failed to boot).
fn kill_now(epmd_port: u16) {
    let pids = node_pids(epmd_port);
    if !pids.is_empty() {
        let _ = Command::new("kill")
            .arg("-KILL")
            .args(pids.iter().map(u32::to_string))
            .status();
    }
}

/// The processes of the node whose epmd listens on `epmd_port`: those whose environment
/// holds that `ERL_EPMD_PORT` (see [`TestNode::spawn_watchdog`]).
pub fn node_pids(epmd_port: u16) -> Vec<u32> {
    let wanted = format!("ERL_EPMD_PORT={epmd_port}");
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/environ"))
                .unwrap_or_default()
                .split(|&b| b == 0)
                .any(|var| var == wanted.as_bytes())
        })
        .collect()
}

/// The test side of the broker: declares exchanges, queues and bindings, and reads messages.
pub struct Admin {
    connection: Connection,
    pub channel: Channel,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").finish_non_exhaustive()
    }
}

/// One message read back from a queue.
#[derive(Debug, Clone)]
pub struct Received {
    pub exchange: String,
    pub routing_key: String,
    pub properties: BasicProperties,
    pub body: Vec<u8>,
}

impl Received {
    /// The header `name` as text (headers the sink sets are long strings).
    pub fn header(&self, name: &str) -> Option<String> {
        let headers = self.properties.headers().as_ref()?;
        match headers.inner().get(name)? {
            lapin::types::AMQPValue::LongString(value) => {
                Some(String::from_utf8(value.as_bytes().to_vec()).expect("UTF-8 header"))
            }
            other => panic!("header {name} is not a long string: {other:?}"),
        }
    }

    pub fn message_id(&self) -> Option<&str> {
        self.properties
            .message_id()
            .as_ref()
            .map(lapin::types::ShortString::as_str)
    }
}

impl Admin {
    pub async fn connect(url: &str) -> Self {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
        let channel = connection.create_channel().await.expect("open channel");
        Self {
            connection,
            channel,
        }
    }

    /// A durable topic exchange.
    pub async fn topic_exchange(&self, name: &str) {
        self.channel
            .exchange_declare(
                name.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("declare exchange {name}: {e}"));
    }

    /// A durable queue bound to `exchange` with `pattern` (`""` exchange: no binding).
    pub async fn bound_queue(&self, queue: &str, exchange: &str, pattern: &str) {
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("declare queue {queue}: {e}"));
        if !exchange.is_empty() {
            self.channel
                .queue_bind(
                    queue.into(),
                    exchange.into(),
                    pattern.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap_or_else(|e| panic!("bind {queue} to {exchange}: {e}"));
        }
    }

    /// Reads up to `expected` messages from `queue` (acknowledging them), waiting at most
    /// `within` for them to arrive; returns what it got, in queue order.
    pub async fn read(&self, queue: &str, expected: usize, within: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + within;
        let mut received = Vec::new();
        while received.len() < expected {
            let got = self
                .channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap_or_else(|e| panic!("basic.get from {queue}: {e}"));
            match got {
                Some(message) => {
                    let delivery = message.delivery;
                    received.push(Received {
                        exchange: delivery.exchange.as_str().to_owned(),
                        routing_key: delivery.routing_key.as_str().to_owned(),
                        properties: delivery.properties,
                        body: delivery.data,
                    });
                }
                None if tokio::time::Instant::now() >= deadline => break,
                None => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        received
    }

    /// Messages waiting in `queue` (passive declare).
    pub async fn depth(&self, queue: &str) -> u32 {
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("passive declare {queue}: {e}"))
            .message_count()
    }

    pub async fn close(self) {
        let _ = self.connection.close(200, "test done".into()).await;
    }
}

/// What the proxy does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Forward,
    /// New connections are closed as soon as they are accepted.
    Refuse,
}

/// A loopback TCP proxy in front of the node: lets a test break the sink's connection
/// (`sever`), refuse new ones (`refuse`), or freeze the current ones (`stall_existing`)
/// without touching the shared node.
#[derive(Debug)]
pub struct Proxy {
    port: u16,
    state: Arc<ProxyState>,
    accept: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
struct ProxyState {
    upstream: u16,
    mode: Mutex<Mode>,
    /// Live connections: their pump tasks and their stall switch.
    connections: Mutex<Vec<(tokio::task::JoinHandle<()>, Arc<AtomicBool>)>>,
    accepted: AtomicUsize,
}

impl Proxy {
    /// Starts a proxy on a free port forwarding to `upstream`.
    pub async fn start(upstream: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let state = Arc::new(ProxyState {
            upstream,
            mode: Mutex::new(Mode::Forward),
            connections: Mutex::new(Vec::new()),
            accepted: AtomicUsize::new(0),
        });
        let accept_state = Arc::clone(&state);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                accept_state.accepted.fetch_add(1, Ordering::SeqCst);
                if *accept_state.mode.lock().unwrap() == Mode::Refuse {
                    drop(client);
                    continue;
                }
                let stalled = Arc::new(AtomicBool::new(false));
                let pump = tokio::spawn(pump(client, accept_state.upstream, Arc::clone(&stalled)));
                accept_state
                    .connections
                    .lock()
                    .unwrap()
                    .push((pump, stalled));
            }
        });
        Self {
            port,
            state,
            accept,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The broker's URL through this proxy.
    pub fn url(&self) -> String {
        url_for(self.port)
    }

    /// Connections accepted so far (refused ones included).
    pub fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Closes every current connection (both sides see the socket go away).
    pub fn sever(&self) {
        for (pump, _) in self.state.connections.lock().unwrap().drain(..) {
            pump.abort();
        }
    }

    /// Closes current connections and every new one at once, until [`Proxy::forward`].
    pub fn refuse(&self) {
        *self.state.mode.lock().unwrap() = Mode::Refuse;
        self.sever();
    }

    /// Forwards new connections again.
    pub fn forward(&self) {
        *self.state.mode.lock().unwrap() = Mode::Forward;
    }

    /// Current connections stop passing bytes (in both directions) but stay open, like a
    /// broker that hangs or a network that drops packets; new connections are unaffected.
    pub fn stall_existing(&self) {
        for (_, stalled) in self.state.connections.lock().unwrap().iter() {
            stalled.store(true, Ordering::SeqCst);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.sever();
    }
}

/// Copies bytes both ways until either side closes; while `stalled`, holds what it read.
async fn pump(client: tokio::net::TcpStream, upstream: u16, stalled: Arc<AtomicBool>) {
    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = copy(client_read, server_write, Arc::clone(&stalled));
    let down = copy(server_read, client_write, stalled);
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

async fn copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    stalled: Arc<AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while stalled.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

/// True while `pid` exists.
pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}
