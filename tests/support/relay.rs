//! The real `dispatchbox` binary as a child process: environment in, stdout/stderr captured
//! to files, signals (SIGTERM, SIGKILL) and peak memory (VmHWM) for assertions.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::postgres::{eventually, TestCluster};

/// A running relay process; killed on drop.
#[derive(Debug)]
pub struct RelayProcess {
    child: Child,
    dir: tempfile::TempDir,
}

/// Path of the binary under test.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dispatchbox"))
}

/// Environment for a relay on `database` of `cluster` with the stdout sink and short
/// intervals suited to tests. The admin server listens on a port the system picks
/// (`127.0.0.1:0`), so parallel relays never collide; [`RelayProcess::admin_url`] reads the
/// real address from the log. Callers add or override entries.
pub fn base_env(cluster: &TestCluster, database: &str) -> Vec<(String, String)> {
    [
        ("DISPATCHBOX_DATABASE_URL", cluster.superuser_url(database)),
        ("DISPATCHBOX_SLOT", format!("slot_{database}")),
        ("DISPATCHBOX_PUBLICATION", format!("pub_{database}")),
        ("DISPATCHBOX_SINKS", "stdout".to_owned()),
        ("DISPATCHBOX_STATUS_INTERVAL", "500ms".to_owned()),
        ("DISPATCHBOX_HEARTBEAT_INTERVAL", "1s".to_owned()),
        ("DISPATCHBOX_RECONNECT_MAX", "2s".to_owned()),
        ("DISPATCHBOX_LOG_FORMAT", "json".to_owned()),
        ("DISPATCHBOX_LOG_LEVEL", "info".to_owned()),
        ("DISPATCHBOX_HTTP_ADDR", "127.0.0.1:0".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Sets `key` to `value` in `env`, replacing an earlier value.
pub fn set_env(env: &mut Vec<(String, String)>, key: &str, value: &str) {
    env.retain(|(k, _)| k != key);
    env.push((key.to_owned(), value.to_owned()));
}

/// Runs `dispatchbox <args>` to completion with `env`; returns (status, stdout, stderr).
pub fn run_to_end(args: &[&str], env: &[(String, String)]) -> (ExitStatus, String, String) {
    let out = Command::new(binary())
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run dispatchbox");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `dispatchbox migrate` and asserts success.
pub fn migrate(env: &[(String, String)]) {
    let (status, stdout, stderr) = run_to_end(&["migrate"], env);
    assert!(
        status.success(),
        "migrate failed: {status}\n{stdout}\n{stderr}"
    );
}

impl RelayProcess {
    /// Starts `dispatchbox run` with exactly `env` (plus PATH).
    pub fn start(env: &[(String, String)]) -> Self {
        Self::start_with_stdout(env, None)
    }

    /// Like [`RelayProcess::start`], with the relay's stdout piped instead of captured to a
    /// file (take it with [`RelayProcess::take_stdout`]); for readers that timestamp lines.
    pub fn start_piped(env: &[(String, String)]) -> Self {
        Self::start_with_stdout(env, Some(Stdio::piped()))
    }

    /// The piped stdout of a relay started with [`RelayProcess::start_piped`].
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    fn start_with_stdout(env: &[(String, String)], piped: Option<Stdio>) -> Self {
        let dir = tempfile::tempdir().expect("relay dir");
        let stdout = match piped {
            Some(piped) => piped,
            None => std::fs::File::create(dir.path().join("stdout"))
                .expect("stdout file")
                .into(),
        };
        let stderr = std::fs::File::create(dir.path().join("stderr")).expect("stderr file");
        let child = Command::new(binary())
            .arg("run")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn dispatchbox run");
        RelayProcess { child, dir }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the relay wrote to stdout so far (the stdout sink's JSON lines).
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout")).unwrap_or_default()
    }

    /// Everything the relay logged so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    /// `http://ADDR` of the relay's admin server, read from its `admin server listening`
    /// log line (waits up to 30 s for it; JSON or text logs).
    pub fn admin_url(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(addr) = self.stderr().lines().find_map(admin_addr) {
                return format!("http://{addr}");
            }
            assert!(
                Instant::now() < deadline,
                "the relay never logged its admin address:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Parsed stdout-sink lines.
    pub fn delivered(&self) -> Vec<serde_json::Value> {
        self.stdout()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad stdout line {l:?}: {e}"))
            })
            .collect()
    }

    /// Ids delivered on stdout so far.
    pub fn delivered_ids(&self) -> Vec<i64> {
        self.delivered()
            .iter()
            .map(|v| v["id"].as_i64().expect("id is a number"))
            .collect()
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {sig} failed");
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        self.signal("-TERM");
    }

    /// Freezes the process (SIGSTOP): it reads, delivers and writes nothing until
    /// [`RelayProcess::resume`], as if it had fallen far behind.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused process run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Still running?
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Peak resident memory in KiB (VmHWM) while the process runs.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM")
    }
}

/// The `addr` field of an `admin server listening` log line.
fn admin_addr(line: &str) -> Option<String> {
    if !line.contains("admin server listening") {
        return None;
    }
    if let Ok(json) = serde_json::from_str::<serde_json::Value>(line) {
        return json["addr"].as_str().map(str::to_owned);
    }
    let start = line.find("addr=")? + "addr=".len();
    line[start..].split_whitespace().next().map(str::to_owned)
}

/// `GET {base}{path}` with a fresh connection; returns the status code and the body.
/// Fails (instead of panicking) when nothing listens, so callers can poll.
pub async fn http_get(base: &str, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 10 s"))??;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {text:?}")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head:?}")))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

/// The value of one series of the relay's `/metrics`, spelled as exported (e.g.
/// `dispatchbox_slot_recreations_total{reason="lost"}`); `None` when it is not there.
pub async fn metric(base: &str, series: &str) -> Option<f64> {
    let (status, body) = http_get(base, "/metrics").await.ok()?;
    assert_eq!(status, 200, "{body}");
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| value.trim().parse().expect("a metric value"))
}

/// Decodes a chunked HTTP/1.1 body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the relay and waits until it streams from its slot. Rows inserted before the
/// slot exists are not in its stream (the sweeper covers those), so tests that insert right
/// away wait for this first.
pub async fn start_streaming(
    client: &tokio_postgres::Client,
    env: &[(String, String)],
) -> RelayProcess {
    let relay = RelayProcess::start(env);
    wait_streaming(client).await;
    relay
}

/// Waits until exactly one replication slot of the cluster is active.
pub async fn wait_streaming(client: &tokio_postgres::Client) {
    eventually(
        Duration::from_secs(30),
        "the relay to stream from its slot",
        || async {
            let n: i64 = client
                .query_one(
                    "SELECT count(*) FROM pg_replication_slots WHERE active",
                    &[],
                )
                .await
                .expect("count active slots")
                .get(0);
            (n == 1).then_some(())
        },
    )
    .await;
}
