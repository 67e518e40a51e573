//! A throwaway PostgreSQL cluster per test: `initdb` into `/tmp`, a free loopback port,
//! `wal_level=logical` (unless a test asks otherwise), stopped and removed on drop. A
//! streaming physical standby of such a cluster ([`TestCluster::start_standby_of`]) is made
//! with `pg_basebackup -R -X stream`, for failover tests ([`TestCluster::promote`]).
//!
//! PostgreSQL refuses to run as root, so when the tests run as root every server command
//! runs as the `postgres` user through `runuser`. Missing binaries fail the test loudly:
//! `.ci/run` (or `scripts/install-test-deps`) installs them.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Password of the `postgres` superuser in every test cluster.
pub const SUPERUSER_PASSWORD: &str = "postgres-test-pw";

/// How to set a cluster up.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// `wal_level`; `logical` unless a test checks the failure for another level.
    pub wal_level: &'static str,
    /// Generate a test CA and a server certificate, `ssl=on`.
    pub tls: bool,
    /// DNS names the server certificate covers (default `localhost`).
    pub tls_dns_names: Vec<&'static str>,
    /// IP addresses the server certificate covers (default `127.0.0.1`).
    pub tls_ip_addresses: Vec<&'static str>,
    /// Lines placed at the top of `pg_hba.conf` (first match wins).
    pub hba_prepend: Vec<String>,
    /// Extra `postgresql.conf` lines.
    pub conf: Vec<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            wal_level: "logical",
            tls: false,
            tls_dns_names: vec!["localhost"],
            tls_ip_addresses: vec!["127.0.0.1"],
            hba_prepend: Vec::new(),
            conf: Vec::new(),
        }
    }
}

/// A running cluster. Dropping it stops the server (`-m immediate`) and deletes its files.
#[derive(Debug)]
pub struct TestCluster {
    pub port: u16,
    pub dir: PathBuf,
    bin: PathBuf,
    as_postgres: bool,
    /// PEM of the test CA when `tls` was requested.
    pub ca_cert_path: Option<PathBuf>,
    databases: AtomicUsize,
}

fn find_bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("DISPATCHBOX_TEST_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(path) = std::env::var("PATH") {
        candidates.extend(std::env::split_paths(&path));
    }
    for v in ["17", "16", "15"] {
        candidates.push(PathBuf::from(format!("/usr/lib/postgresql/{v}/bin")));
    }
    candidates
        .into_iter()
        .find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file() && d.join("postgres").is_file())
        .unwrap_or_else(|| {
            panic!(
                "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH or in \
                 /usr/lib/postgresql/*/bin; run scripts/install-test-deps (apt-get install postgresql-15)"
            )
        })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

fn check(output: Output, what: &str) -> Output {
    assert!(
        output.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

impl TestCluster {
    /// Starts a cluster with default options (`wal_level=logical`, no TLS).
    pub fn start() -> Self {
        Self::start_with(ClusterOptions::default())
    }

    pub fn start_with(options: ClusterOptions) -> Self {
        let bin = find_bin_dir();
        let as_postgres = is_root();
        let dir = tempfile::Builder::new()
            .prefix("dispatchbox-pg-")
            .tempdir_in("/tmp")
            .expect("create cluster dir")
            .keep();
        let data = dir.join("data");
        let pwfile = dir.join("pwfile");
        std::fs::write(&pwfile, SUPERUSER_PASSWORD).expect("write pwfile");
        if as_postgres {
            chown_to_postgres(&dir);
        }
        let mut cluster = TestCluster {
            port: free_port(),
            dir: dir.clone(),
            bin,
            as_postgres,
            ca_cert_path: None,
            databases: AtomicUsize::new(0),
        };
        cluster.run_pg(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "-N",
                "--pwfile",
                pwfile.to_str().unwrap(),
            ],
        );

        let mut conf = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{sock}'\n\
             wal_level = {wal}\nmax_wal_senders = 20\nmax_replication_slots = 20\n\
             wal_sender_timeout = '10s'\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n\
             shared_buffers = '64MB'\nmax_connections = 100\nlog_min_messages = warning\n\
             max_slot_wal_keep_size = '1GB'\n",
            port = cluster.port,
            sock = dir.display(),
            wal = options.wal_level,
        );
        if options.tls {
            cluster.write_tls(&data, &options.tls_dns_names, &options.tls_ip_addresses);
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        }
        for line in &options.conf {
            conf.push_str(line);
            conf.push('\n');
        }
        append(&data.join("postgresql.conf"), &conf);
        if !options.hba_prepend.is_empty() {
            let hba_path = data.join("pg_hba.conf");
            let existing = std::fs::read_to_string(&hba_path).expect("read pg_hba.conf");
            let mut hba = options.hba_prepend.join("\n");
            hba.push('\n');
            hba.push_str(&existing);
            std::fs::write(&hba_path, hba).expect("write pg_hba.conf");
        }
        if as_postgres {
            chown_to_postgres(&dir);
        }
        cluster.pg_ctl(&["start", "-w", "-t", "60"]);
        cluster
    }

    fn write_tls(&mut self, data: &Path, dns: &[&str], ips: &[&str]) {
        let (ca_pem, cert_pem, key_pem) = tls_fixture(dns, ips);
        std::fs::write(data.join("server.crt"), cert_pem).unwrap();
        std::fs::write(data.join("server.key"), key_pem).unwrap();
        let ca_path = self.dir.join("root.crt");
        std::fs::write(&ca_path, ca_pem).unwrap();
        set_mode(&data.join("server.key"), 0o600);
        self.ca_cert_path = Some(ca_path);
    }

    fn command(&self, program: &str) -> Command {
        let exe = self.program(program);
        if self.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(exe);
            cmd
        } else {
            Command::new(exe)
        }
    }

    /// A server program: from the directory the cluster binaries were found in, or, when
    /// that holds only links to some of them (e.g. `/usr/local/bin`), from the directory
    /// `pg_ctl` really lives in.
    fn program(&self, program: &str) -> PathBuf {
        let beside = self.bin.join(program);
        if beside.is_file() {
            return beside;
        }
        std::fs::canonicalize(self.bin.join("pg_ctl"))
            .ok()
            .and_then(|pg_ctl| pg_ctl.parent().map(|dir| dir.join(program)))
            .filter(|path| path.is_file())
            .unwrap_or_else(|| {
                panic!(
                    "{program} not found beside pg_ctl in {}",
                    self.bin.display()
                )
            })
    }

    fn run_pg(&self, program: &str, args: &[&str]) -> Output {
        check(
            self.command(program).args(args).output().expect(program),
            program,
        )
    }

    fn pg_ctl(&self, args: &[&str]) -> Output {
        let data = self.dir.join("data");
        let log = self.dir.join("server.log");
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D").arg(&data).arg("-l").arg(&log).args(args);
        let out = cmd.output().expect("pg_ctl");
        if !out.status.success() {
            let server_log = std::fs::read_to_string(&log).unwrap_or_default();
            panic!(
                "pg_ctl {args:?} failed: {}\n{}\nserver log:\n{server_log}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        out
    }

    /// Starts a hot standby of `primary`: `pg_basebackup -R -X stream` into a new directory
    /// (so it streams WAL from the primary and follows it), then the server on its own free
    /// port. Like every test cluster it is stopped and removed on drop. The primary's
    /// default `pg_hba.conf` already admits replication connections from 127.0.0.1, and
    /// its `max_wal_senders` leaves room for the standby.
    pub fn start_standby_of(primary: &TestCluster) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("dispatchbox-pg-standby-")
            .tempdir_in("/tmp")
            .expect("create standby dir")
            .keep();
        if primary.as_postgres {
            check(
                Command::new("chown")
                    .args(["postgres:postgres"])
                    .arg(&dir)
                    .output()
                    .expect("chown"),
                "chown standby dir",
            );
        }
        let standby = TestCluster {
            port: free_port(),
            dir: dir.clone(),
            bin: primary.bin.clone(),
            as_postgres: primary.as_postgres,
            ca_cert_path: primary.ca_cert_path.clone(),
            databases: AtomicUsize::new(1000),
        };
        let data = dir.join("data");
        let source = format!(
            "host=127.0.0.1 port={} user=postgres password={SUPERUSER_PASSWORD}",
            primary.port
        );
        standby.run_pg(
            "pg_basebackup",
            &[
                "-d",
                &source,
                "-D",
                data.to_str().unwrap(),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
            ],
        );
        // The copy carries the primary's postgresql.conf: later lines win.
        append(
            &data.join("postgresql.conf"),
            &format!(
                "\n# standby\nport = {}\nunix_socket_directories = '{}'\nhot_standby = on\n",
                standby.port,
                dir.display()
            ),
        );
        if standby.as_postgres {
            chown_to_postgres(&dir);
        }
        standby.pg_ctl(&["start", "-w", "-t", "60"]);
        standby
    }

    /// Promotes a standby to a primary (`pg_ctl promote`, waiting until it accepts writes).
    pub fn promote(&self) {
        self.pg_ctl(&["promote", "-w", "-t", "60"]);
    }

    /// Stops the server at once, as a crash would (`-m immediate`), without removing it.
    pub fn crash(&self) {
        self.pg_ctl(&["stop", "-m", "immediate", "-w"]);
    }

    /// Waits until this standby has replayed everything `primary` has written so far.
    pub async fn wait_replayed(&self, primary: &TestCluster, within: Duration) {
        let target: String = primary
            .connect("postgres")
            .await
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .expect("read the primary's WAL position")
            .get(0);
        let standby = self.connect("postgres").await;
        eventually(
            within,
            "the standby to replay the primary's WAL",
            || async {
                let caught_up: bool = standby
                    .query_one(
                        "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                        &[&target],
                    )
                    .await
                    .expect("read the standby's replay position")
                    .get(0);
                caught_up.then_some(())
            },
        )
        .await;
    }

    /// Stops the server (fast shutdown) without removing it.
    pub fn stop(&self) {
        self.pg_ctl(&["stop", "-m", "fast", "-w"]);
    }

    /// Starts a stopped server again on the same port.
    pub fn restart(&self) {
        self.pg_ctl(&["start", "-w", "-t", "60"]);
    }

    /// Appends to `postgresql.conf` and restarts (for settings that need a restart).
    pub fn reconfigure(&self, lines: &str) {
        append(
            &self.dir.join("data/postgresql.conf"),
            &format!("\n{lines}\n"),
        );
        self.pg_ctl(&["restart", "-m", "fast", "-w", "-t", "60"]);
    }

    /// Restarts the server in immediate mode: a crash as far as clients and WAL are
    /// concerned (no checkpoint; connections dropped), then recovery.
    pub fn restart_immediate(&self) {
        self.pg_ctl(&["restart", "-m", "immediate", "-w", "-t", "60"]);
    }

    /// A keyword/value connection string for the superuser on `database` over TCP.
    pub fn connect_url(&self, database: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres password={} dbname={database}",
            self.port, SUPERUSER_PASSWORD
        )
    }

    /// The server log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// A `postgres://` URL for `user` on `database` over TCP, with `sslmode=disable`.
    pub fn url(&self, user: &str, password: &str, database: &str) -> String {
        format!(
            "postgres://{user}:{password}@127.0.0.1:{}/{database}?sslmode=disable",
            self.port
        )
    }

    /// The superuser URL for `database`.
    pub fn superuser_url(&self, database: &str) -> String {
        self.url("postgres", SUPERUSER_PASSWORD, database)
    }

    /// Connects as the superuser over TCP without TLS.
    pub async fn connect(&self, database: &str) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=postgres password={} dbname={database}",
                self.port, SUPERUSER_PASSWORD
            ),
            tokio_postgres::NoTls,
        )
        .await
        .unwrap_or_else(|e| panic!("connect to test cluster: {e}\n{}", self.log()));
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }

    /// Creates a fresh database with a unique name and returns the name.
    pub async fn create_database(&self, prefix: &str) -> String {
        let n = self.databases.fetch_add(1, Ordering::SeqCst);
        let name = format!("{prefix}_{n}");
        let admin = self.connect("postgres").await;
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("create database");
        name
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&data)
            .args(["stop", "-m", "immediate", "-w"])
            .output();
        if std::env::var_os("DISPATCHBOX_KEEP_TEST_CLUSTER").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.write_all(text.as_bytes()).expect("append");
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A test PKI: (CA certificate PEM, leaf certificate PEM, leaf key PEM) for the given DNS
/// names and IP addresses. The leaf is not a CA (webpki rejects CA certificates as leaves).
pub fn tls_fixture(dns: &[&str], ips: &[&str]) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};

    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "dispatchbox test CA");
    let ca = ca_params.self_signed(&ca_key).expect("ca cert");

    let leaf_key = KeyPair::generate().expect("leaf key");
    let mut leaf_params =
        CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("leaf params");
    for ip in ips {
        leaf_params
            .subject_alt_names
            .push(SanType::IpAddress(ip.parse().expect("ip")));
    }
    leaf_params.distinguished_name.push(
        rcgen::DnType::CommonName,
        dns.first().copied().unwrap_or("localhost"),
    );
    let leaf = leaf_params
        .signed_by(&leaf_key, &ca, &ca_key)
        .expect("leaf cert");
    (ca.pem(), leaf.pem(), leaf_key.serialize_pem())
}

/// Polls `f` until it returns `Some` or `timeout` passes; panics with `what` on timeout.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Gives `dir` to the `postgres` user (the server refuses to run as root).
fn chown_to_postgres(dir: &Path) {
    check(
        Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir)
            .output()
            .expect("chown"),
        "chown a cluster directory to postgres",
    );
}
