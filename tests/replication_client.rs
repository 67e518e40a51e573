//! The replication wire client and the database URL's TLS policy against a real
//! PostgreSQL: authentication methods, sslmode semantics on both planes, streaming with
//! status updates, liveness past `wal_sender_timeout`, the SQLSTATEs the relay acts on, and
//! multi-host URLs with `target_session_attrs` on both planes (a primary and its standby).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use dispatchbox::conninfo::ConnInfo;
use dispatchbox::lsn::Lsn;
use dispatchbox::source::client::{
    ClientError, ReplicationClient, ReplicationMessage, ReplicationReader,
};
use support::postgres::{eventually, free_port, ClusterOptions, TestCluster, SUPERUSER_PASSWORD};

fn info(url: &str) -> ConnInfo {
    ConnInfo::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"))
}

/// Creates a LOGIN REPLICATION role with `password`, hashed as `encryption`.
async fn create_role(cluster: &TestCluster, name: &str, password: &str, encryption: &str) {
    let admin = cluster.connect("postgres").await;
    admin
        .batch_execute(&format!(
            "SET password_encryption = '{encryption}';
             CREATE ROLE {name} LOGIN REPLICATION PASSWORD '{password}';"
        ))
        .await
        .unwrap();
}

async fn identify(url: &str) -> Result<dispatchbox::source::client::IdentifySystem, ClientError> {
    let mut client = ReplicationClient::connect(&info(url)).await?;
    let system = client.identify_system().await?;
    client.close().await;
    Ok(system)
}

#[tokio::test]
async fn authenticates_with_scram_md5_and_cleartext() {
    let cluster = TestCluster::start_with(ClusterOptions {
        hba_prepend: vec![
            "host all md5user 127.0.0.1/32 md5".into(),
            "host all pwuser 127.0.0.1/32 password".into(),
        ],
        ..ClusterOptions::default()
    });
    let db = cluster.create_database("auth").await;
    create_role(&cluster, "scramuser", "scram-pw", "scram-sha-256").await;
    create_role(&cluster, "md5user", "md5-pw", "md5").await;
    create_role(&cluster, "pwuser", "clear-pw", "scram-sha-256").await;

    for (user, password) in [
        ("scramuser", "scram-pw"),
        ("md5user", "md5-pw"),
        ("pwuser", "clear-pw"),
    ] {
        let system = identify(&cluster.url(user, password, &db))
            .await
            .unwrap_or_else(|e| panic!("{user}: {e}\n{}", cluster.log()));
        assert_eq!(system.dbname.as_deref(), Some(db.as_str()), "{user}");
        assert_eq!(system.timeline, 1);
        assert!(system.xlogpos > Lsn::ZERO);
        assert!(system.systemid > 0);
    }

    for user in ["scramuser", "md5user", "pwuser"] {
        let started = Instant::now();
        let error = identify(&cluster.url(user, "wrong", &db))
            .await
            .unwrap_err();
        assert_eq!(error.sqlstate(), Some("28P01"), "{user}: {error}");
        assert!(
            error.to_string().contains(&format!(
                "password authentication failed for user \"{user}\""
            )),
            "{error}"
        );
        assert!(
            !error.is_transient(),
            "a wrong password must not be retried"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{user}: slow failure"
        );
    }

    // No password in the URL while the server asks for one.
    let url = format!(
        "postgres://scramuser@127.0.0.1:{}/{db}?sslmode=disable",
        cluster.port
    );
    assert!(matches!(
        identify(&url).await,
        Err(ClientError::PasswordMissing { .. })
    ));
}

#[tokio::test]
async fn prefer_falls_back_to_plain_require_refuses_and_unix_sockets_work() {
    let cluster = TestCluster::start();
    let base = format!(
        "postgres://postgres:{SUPERUSER_PASSWORD}@127.0.0.1:{}/postgres",
        cluster.port
    );

    let client = ReplicationClient::connect(&info(&format!("{base}?sslmode=prefer")))
        .await
        .unwrap();
    assert!(!client.is_tls());
    assert_eq!(client.parameter("TimeZone"), Some("UTC"));
    assert_eq!(client.parameter("DateStyle"), Some("ISO, YMD"));
    assert_eq!(client.parameter("client_encoding"), Some("UTF8"));
    client.close().await;

    let error = ReplicationClient::connect(&info(&format!("{base}?sslmode=require")))
        .await
        .unwrap_err();
    assert!(matches!(error, ClientError::TlsRefused { .. }), "{error}");
    assert!(!error.is_transient());

    let (sql, _conn) = info(&format!("{base}?sslmode=prefer"))
        .connect_sql()
        .await
        .unwrap();
    let row = sql
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(!row.get::<_, bool>(0));
}

/// The server certificate covers only `localhost`, so connecting by `127.0.0.1` is a
/// name mismatch: fatal for verify-full, fine for verify-ca and require.
#[tokio::test]
async fn applies_sslmode_on_both_planes() {
    let cluster = TestCluster::start_with(ClusterOptions {
        tls: true,
        tls_dns_names: vec!["localhost"],
        tls_ip_addresses: vec![],
        ..ClusterOptions::default()
    });
    let ca = cluster.ca_cert_path.clone().unwrap();
    let url = |host: &str, mode: &str, with_ca: bool| {
        let mut url = format!(
            "postgres://postgres:{SUPERUSER_PASSWORD}@{host}:{}/postgres?sslmode={mode}",
            cluster.port
        );
        if with_ca {
            url.push_str(&format!("&sslrootcert={}", ca.display()));
        }
        url
    };
    const SSL_IN_USE: &str = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

    for (host, mode, with_ca) in [
        ("localhost", "verify-full", true),
        ("127.0.0.1", "verify-ca", true),
        ("127.0.0.1", "require", false),
        ("127.0.0.1", "prefer", false),
    ] {
        let mut client = ReplicationClient::connect(&info(&url(host, mode, with_ca)))
            .await
            .unwrap_or_else(|e| panic!("{host} {mode}: {e:?}\n{}", cluster.log()));
        assert!(client.is_tls(), "{host} {mode}");
        // SQL through the walsender session itself (replication=database allows it).
        let rows = client.simple_query(SSL_IN_USE).await.unwrap();
        assert_eq!(rows[0].get_by_name("ssl"), Some("t"), "{host} {mode}");
        client.close().await;
    }

    for (host, mode, with_ca, expected) in [
        ("127.0.0.1", "verify-full", true, "NotValidForName"),
        // No sslrootcert: the Mozilla roots do not know the test CA.
        ("localhost", "verify-full", false, "UnknownIssuer"),
        ("localhost", "verify-ca", false, "UnknownIssuer"),
    ] {
        let error = ReplicationClient::connect(&info(&url(host, mode, with_ca)))
            .await
            .unwrap_err();
        assert!(
            matches!(error, ClientError::Tls { .. }),
            "{host} {mode}: {error}"
        );
        assert!(
            format!("{error:?}").contains(expected),
            "{host} {mode}: {error:?}"
        );
        assert!(
            !error.is_transient(),
            "a refused certificate must not be retried"
        );
    }

    // The SQL plane gets the same verdicts from the same rustls configuration.
    let (sql, _conn) = info(&url("localhost", "verify-full", true))
        .connect_sql()
        .await
        .unwrap();
    let row = sql.query_one(SSL_IN_USE, &[]).await.unwrap();
    assert!(row.get::<_, bool>(0));
    let error = info(&url("127.0.0.1", "verify-full", true))
        .connect_sql()
        .await
        .unwrap_err();
    assert!(
        format!("{error:?}").contains("NotValidForName"),
        "{error:?}"
    );

    let pool = info(&url("127.0.0.1", "verify-ca", true)).pool(2).unwrap();
    let pooled = pool.get().await.unwrap();
    let row = pooled.query_one(SSL_IN_USE, &[]).await.unwrap();
    assert!(row.get::<_, bool>(0));
}

/// Given a primary, its streaming standby and a port where nothing listens, when a URL lists
/// them as dead, standby, primary: with `target_session_attrs=read-write` both planes (the
/// replication client, a SQL connection, the pool) pass over the dead host and the standby
/// and use the primary; with `any` they use the standby, the first host that answers; and
/// when no host qualifies the error names each host and why, and is worth retrying.
#[tokio::test]
async fn multi_host_urls_pick_the_host_target_session_attrs_asks_for() {
    let primary = TestCluster::start();
    let standby = TestCluster::start_standby_of(&primary);
    let dead = free_port();
    let url = |ports: &[u16], attrs: &str| {
        let hosts: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        format!(
            "postgres://postgres:{SUPERUSER_PASSWORD}@{}/postgres?sslmode=disable&target_session_attrs={attrs}",
            hosts.join(",")
        )
    };
    const WHERE: &str = "SELECT current_setting('port')::int, pg_is_in_recovery()";

    let read_write = info(&url(&[dead, standby.port, primary.port], "read-write"));
    let mut client = ReplicationClient::connect(&read_write)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", primary.log()));
    assert_eq!(client.endpoint().port, primary.port);
    assert!(!client.read_only().await.unwrap());
    assert_eq!(client.identify_system().await.unwrap().timeline, 1);
    client.close().await;
    let (sql, _conn) = read_write.connect_sql().await.unwrap();
    let row = sql.query_one(WHERE, &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), i32::from(primary.port));
    assert!(!row.get::<_, bool>(1));
    let pool = read_write.pool(1).unwrap();
    let row = pool
        .get()
        .await
        .unwrap()
        .query_one(WHERE, &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), i32::from(primary.port));

    let any = info(&url(&[dead, standby.port, primary.port], "any"));
    let mut client = ReplicationClient::connect(&any).await.unwrap();
    assert_eq!(client.endpoint().port, standby.port);
    assert!(
        client.read_only().await.unwrap(),
        "a hot standby is read-only"
    );
    client.close().await;
    let (sql, _conn) = any.connect_sql().await.unwrap();
    let row = sql.query_one(WHERE, &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), i32::from(standby.port));
    assert!(row.get::<_, bool>(1));

    // One host that does not qualify: its own error, which a promotion can cure.
    let error = ReplicationClient::connect(&info(&url(&[standby.port], "read-write")))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            ClientError::SessionAttrs {
                read_only: true,
                ..
            }
        ),
        "{error}"
    );
    assert!(error.is_transient());
    // No host qualifies: every host's reason, in order.
    let error = ReplicationClient::connect(&info(&url(&[dead, standby.port], "read-write")))
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, ClientError::NoHost { .. }), "{text}");
    assert!(error.is_transient(), "{text}");
    let (at_dead, at_standby) = (
        text.find(&format!("127.0.0.1:{dead}: cannot connect")),
        text.find(&format!("127.0.0.1:{}: PostgreSQL at", standby.port)),
    );
    assert!(
        matches!((at_dead, at_standby), (Some(a), Some(b)) if a < b),
        "{text}"
    );
    assert!(text.contains("accepts only read-only sessions"), "{text}");
}

/// Sets up a database with an `outbox` table, an insert-only publication and a
/// REPLICATION role; returns (database, relay URL).
async fn outbox_database(cluster: &TestCluster, prefix: &str) -> (String, String) {
    let db = cluster.create_database(prefix).await;
    let admin = cluster.connect(&db).await;
    admin
        .batch_execute(
            "CREATE TABLE outbox (id bigserial PRIMARY KEY, payload text NOT NULL);
             CREATE PUBLICATION outbox_pub FOR TABLE outbox WITH (publish = 'insert');",
        )
        .await
        .unwrap();
    let role = format!("relay_{db}");
    let exists = admin
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])
        .await
        .unwrap();
    if exists.is_none() {
        create_role(cluster, &role, "relay-pw", "scram-sha-256").await;
    }
    let url = cluster.url(&role, "relay-pw", &db);
    (db, url)
}

async fn confirmed_flush(cluster: &TestCluster, db: &str, slot: &str) -> Option<String> {
    let admin = cluster.connect(db).await;
    admin
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0)
}

/// Reads until an XLogData whose pgoutput payload starts with `'C'`, returning the tags
/// seen and the Commit payload.
async fn read_transaction(reader: &mut ReplicationReader) -> (String, bytes::Bytes) {
    let mut tags = String::new();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), reader.next())
            .await
            .expect("a transaction within 10s")
            .unwrap()
            .expect("stream still open");
        if let ReplicationMessage::XLogData(xlog) = message {
            let tag = char::from(xlog.data[0]);
            tags.push(tag);
            if tag == 'C' {
                return (tags, xlog.data);
            }
        }
    }
}

#[tokio::test]
async fn streams_a_transaction_and_confirms_its_end_lsn() {
    let cluster = TestCluster::start();
    let (db, url) = outbox_database(&cluster, "stream").await;
    let slot = "stream_slot";

    let mut client = ReplicationClient::connect(&info(&url)).await.unwrap();
    let created = client.create_replication_slot(slot).await.unwrap();
    assert_eq!(created.slot_name, slot);
    assert!(created.consistent_point > Lsn::ZERO);
    assert_eq!(created.output_plugin.as_deref(), Some("pgoutput"));
    let (mut reader, mut writer) = client
        .start_replication(slot, Lsn::ZERO, &["outbox_pub"])
        .await
        .unwrap();

    let admin = cluster.connect(&db).await;
    admin
        .execute("INSERT INTO outbox (payload) VALUES ('hello')", &[])
        .await
        .unwrap();
    let (tags, commit) = read_transaction(&mut reader).await;
    assert_eq!(tags, "BRIC");
    // Commit: tag(1) flags(1) commit_lsn(8) end_lsn(8) commit_ts(8).
    assert_eq!(commit.len(), 26);
    let end_lsn = Lsn(u64::from_be_bytes(commit[10..18].try_into().unwrap()));
    assert!(end_lsn > created.consistent_point);

    writer
        .send_status(end_lsn, end_lsn, end_lsn, false)
        .await
        .unwrap();
    let expected = end_lsn.to_string();
    eventually(
        Duration::from_secs(10),
        "confirmed_flush_lsn = Commit.end_lsn",
        || async {
            (confirmed_flush(&cluster, &db, slot).await.as_deref() == Some(expected.as_str()))
                .then_some(())
        },
    )
    .await;

    // A second transaction arrives on the same stream; Relation is not re-sent.
    admin
        .execute("INSERT INTO outbox (payload) VALUES ('again')", &[])
        .await
        .unwrap();
    let (tags, _) = read_transaction(&mut reader).await;
    assert_eq!(tags, "BIC");

    // Leaving CopyBoth: the server answers our CopyDone with its own.
    writer.finish().await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match reader.next().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("stream ends after finish");
    assert!(matches!(ended, Ok(None)), "{ended:?}");
    assert!(matches!(reader.next().await, Ok(None)));
}

/// With `wal_sender_timeout = 2s`: silence gets the connection dropped; status updates
/// from a separate task keep it alive well past the timeout.
#[tokio::test]
async fn status_updates_keep_the_stream_alive_past_wal_sender_timeout() {
    let cluster = TestCluster::start_with(ClusterOptions {
        conf: vec!["wal_sender_timeout = '2s'".into()],
        ..ClusterOptions::default()
    });
    let (_db, url) = outbox_database(&cluster, "alive").await;
    let mut client = ReplicationClient::connect(&info(&url)).await.unwrap();
    client.create_replication_slot("silent_slot").await.unwrap();
    client.create_replication_slot("chatty_slot").await.unwrap();
    client.close().await;

    // Silent client: reads but never answers, so the walsender gives up.
    let client = ReplicationClient::connect(&info(&url)).await.unwrap();
    let (mut reader, _writer) = client
        .start_replication("silent_slot", Lsn::ZERO, &["outbox_pub"])
        .await
        .unwrap();
    let started = Instant::now();
    let mut reply_requested = false;
    let error = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match reader.next().await {
                Ok(Some(ReplicationMessage::PrimaryKeepalive(k))) => {
                    reply_requested |= k.reply_requested
                }
                Ok(Some(_)) => {}
                Ok(None) => panic!("stream ended cleanly instead of timing out"),
                Err(error) => return error,
            }
        }
    })
    .await
    .expect("the walsender drops a silent client");
    assert!(
        reply_requested,
        "the server asks for a reply before giving up"
    );
    assert!(matches!(error, ClientError::Closed { .. }), "{error:?}");
    assert!(error.is_transient());
    assert!(started.elapsed() >= Duration::from_secs(1));

    // Chatty client: a writer task reports every 500ms while the reader runs elsewhere.
    let client = ReplicationClient::connect(&info(&url)).await.unwrap();
    let (mut reader, mut writer) = client
        .start_replication("chatty_slot", Lsn::ZERO, &["outbox_pub"])
        .await
        .unwrap();
    let (wal_end_tx, wal_end_rx) = tokio::sync::watch::channel(Lsn::ZERO);
    let feedback = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_millis(500));
        loop {
            ticks.tick().await;
            let idle = *wal_end_rx.borrow();
            if writer.send_status(idle, idle, idle, false).await.is_err() {
                return writer;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut keepalives = 0;
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(500), reader.next()).await {
            Err(_elapsed) => {}
            Ok(Ok(Some(ReplicationMessage::PrimaryKeepalive(k)))) => {
                keepalives += 1;
                wal_end_tx.send_replace(k.wal_end);
            }
            Ok(Ok(Some(_))) => {}
            Ok(other) => panic!("stream broke despite status updates: {other:?}"),
        }
    }
    assert!(keepalives > 0);
    assert!(!feedback.is_finished(), "the writer task hit an error");
    feedback.abort();
}

#[tokio::test]
async fn reports_missing_and_busy_slots_with_their_sqlstate() {
    let cluster = TestCluster::start();
    let (_db, url) = outbox_database(&cluster, "slots").await;

    let client = ReplicationClient::connect(&info(&url)).await.unwrap();
    let error = client
        .start_replication("no_such_slot", Lsn::ZERO, &["outbox_pub"])
        .await
        .unwrap_err();
    assert_eq!(error.sqlstate(), Some("42704"), "{error}");
    assert!(
        error
            .to_string()
            .contains("\"no_such_slot\" does not exist"),
        "{error}"
    );
    assert!(!error.is_transient());

    let mut client = ReplicationClient::connect(&info(&url)).await.unwrap();
    client.create_replication_slot("busy_slot").await.unwrap();
    let (_reader, _writer) = client
        .start_replication("busy_slot", Lsn::ZERO, &["outbox_pub"])
        .await
        .unwrap();

    let other = ReplicationClient::connect(&info(&url)).await.unwrap();
    let error = other
        .start_replication("busy_slot", Lsn::ZERO, &["outbox_pub"])
        .await
        .unwrap_err();
    assert_eq!(error.sqlstate(), Some("55006"), "{error}");
    assert!(!error.is_transient());

    let mut other = ReplicationClient::connect(&info(&url)).await.unwrap();
    let error = other.drop_replication_slot("busy_slot").await.unwrap_err();
    assert_eq!(error.sqlstate(), Some("55006"), "{error}");
    // The session survives a failed command.
    other.create_replication_slot("spare_slot").await.unwrap();
    other.drop_replication_slot("spare_slot").await.unwrap();
    let error = other.simple_query("identify_system").await.unwrap_err();
    assert_eq!(
        error.sqlstate(),
        Some("42601"),
        "lower-case keywords are SQL: {error}"
    );
}
