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
/// intervals suited to tests. Callers add or override entries.
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
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
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
        let dir = tempfile::tempdir().expect("relay dir");
        let stdout = std::fs::File::create(dir.path().join("stdout")).expect("stdout file");
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
