//! Migrations, preflight checks and slot helpers of the store against a real PostgreSQL.
#![allow(clippy::unwrap_used)]

mod support;

use dispatchbox::conninfo::ConnInfo;
use dispatchbox::names::{Identifier, Names, TableName};
use dispatchbox::ops::checks::{self, CheckError, ServerFacts};
use dispatchbox::source::client::ReplicationClient;
use dispatchbox::source::slot::{self, SlotWalStatus};
use dispatchbox::store::{Store, StoreError};
use std::time::Duration;

use support::postgres::{eventually, ClusterOptions, TestCluster};
use support::store::pool;

/// A slot name no test here creates: preflight judges it missing (no problem).
fn no_slot() -> Identifier {
    "dispatchbox".parse().unwrap()
}

fn names(table: &str, publication: &str) -> Names {
    Names::new(table.parse().unwrap(), publication.parse().unwrap()).unwrap()
}

fn store(cluster: &TestCluster, db: &str, names: &Names) -> Store {
    Store::new(pool(&cluster.superuser_url(db), 4), names.table().clone())
}

async fn columns(client: &tokio_postgres::Client, schema: &str, table: &str) -> Vec<String> {
    client
        .query(
            "SELECT column_name::text FROM information_schema.columns
              WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
            &[&schema, &table],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// (pubinsert, pubupdate, pubdelete, pubtruncate, contains the table)
async fn publication(
    client: &tokio_postgres::Client,
    name: &str,
    schema: &str,
    table: &str,
) -> Option<(bool, bool, bool, bool, bool)> {
    client
        .query_opt(
            "SELECT pubinsert, pubupdate, pubdelete, pubtruncate,
                    EXISTS (SELECT 1 FROM pg_publication_tables t WHERE t.pubname = p.pubname
                             AND t.schemaname = $2 AND t.tablename = $3)
               FROM pg_publication p WHERE pubname = $1",
            &[&name, &schema, &table],
        )
        .await
        .unwrap()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
}

const ALL_COLUMNS: &[&str] = &[
    "id",
    "aggregate_type",
    "aggregate_id",
    "event_type",
    "payload",
    "status",
    "claim_token",
    "attempts",
    "next_run_at",
    "created_at",
    "headers",
    "last_error",
    "last_error_at",
    "delivered_at",
];

#[tokio::test]
async fn migrate_creates_the_table_and_an_insert_only_publication_once() {
    let cluster = TestCluster::start();
    let db = cluster.create_database("migrate").await;
    let names = names("outbox_event", "dispatchbox");
    let store = store(&cluster, &db, &names);

    let report = store.migrate(&names).await.unwrap();
    assert_eq!(report.applied, vec![1, 2, 3, 4, 5]);
    assert!(report.skipped.is_empty());

    let client = cluster.connect(&db).await;
    assert_eq!(
        columns(&client, "public", "outbox_event").await,
        ALL_COLUMNS
    );
    assert_eq!(
        publication(&client, "dispatchbox", "public", "outbox_event").await,
        Some((true, false, false, false, true)),
        "publication must be insert-only and contain the table"
    );
    let indexes: Vec<String> = client
        .query(
            "SELECT indexname::text FROM pg_indexes WHERE tablename = 'outbox_event' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        indexes,
        [
            "idx_outbox_aggregate",
            "idx_outbox_dead",
            "idx_outbox_due",
            "outbox_event_pkey"
        ]
    );
    // Migration 5 keys the due index by status first, so each sweeper question is a range
    // scan of the rows it asks about.
    let due: String = client
        .query_one(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'idx_outbox_due'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        due.contains("(status, next_run_at)") && due.contains("WHERE (status = ANY"),
        "{due}"
    );

    // The archive function of the Python schema works on the migrated table.
    client
        .batch_execute(
            "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload, status, headers, created_at)
             VALUES ('order', '1', 'order.created', '{}', 'done', '{\"k\":\"v\"}', now() - interval '10 days'),
                    ('order', '2', 'order.created', '{}', 'pending', NULL, now() - interval '10 days');
             SELECT archive_outbox_events(7);",
        )
        .await
        .unwrap();
    let archived: i64 = client
        .query_one(
            "SELECT count(*) FROM outbox_event_archive WHERE headers->>'k' = 'v'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(archived, 1);

    // Second run: nothing applied, nothing changed.
    let report = store.migrate(&names).await.unwrap();
    assert!(report.applied.is_empty());
    assert_eq!(report.skipped, vec![1, 2, 3, 4, 5]);
    let recorded: i64 = client
        .query_one(
            "SELECT count(*) FROM public.dispatchbox_migrations WHERE target = 'public.outbox_event'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(recorded, 5);

    // A freshly migrated database passes every preflight check.
    let facts = preflight(&store, &names, &no_slot()).await.unwrap();
    assert_eq!(facts.wal_level, "logical");
}

#[tokio::test]
async fn migrate_supports_a_schema_qualified_table_next_to_another() {
    let cluster = TestCluster::start();
    let db = cluster.create_database("custom").await;
    let client = cluster.connect(&db).await;

    let missing = names("app.events", "app_events");
    let err = store(&cluster, &db, &missing)
        .migrate(&missing)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::MissingSchema { ref schema } if schema == "app"),
        "{err}"
    );
    assert!(err.to_string().contains("CREATE SCHEMA \"app\""), "{err}");

    client.batch_execute("CREATE SCHEMA app").await.unwrap();
    let custom = names("app.events", "app_events");
    let default = names("outbox_event", "dispatchbox");
    let report = store(&cluster, &db, &custom)
        .migrate(&custom)
        .await
        .unwrap();
    assert_eq!(report.applied, vec![1, 2, 3, 4, 5]);
    // Migrations are recorded per table: the default table still gets its own.
    let report = store(&cluster, &db, &default)
        .migrate(&default)
        .await
        .unwrap();
    assert_eq!(report.applied, vec![1, 2, 3, 4, 5]);

    assert_eq!(columns(&client, "app", "events").await, ALL_COLUMNS);
    assert_eq!(
        publication(&client, "app_events", "app", "events").await,
        Some((true, false, false, false, true))
    );
    assert_eq!(
        publication(&client, "app_events", "public", "outbox_event").await,
        Some((true, false, false, false, false)),
        "each publication holds only its own table"
    );
    let derived: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'app'
                AND c.relname IN ('events_due_idx', 'events_aggregate_idx', 'events_dead_idx',
                                  'events_archive', 'events_archive_date_idx')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(derived, 5);
    client
        .batch_execute("SELECT app.archive_events(1)")
        .await
        .unwrap();
    assert!(
        preflight(&store(&cluster, &db, &custom), &custom, &no_slot())
            .await
            .is_ok()
    );
}

/// The Python Dispatchbox worker's `sql/schema.sql`, as an existing deployment has it.
const PYTHON_SCHEMA: &str = "
CREATE TABLE outbox_event (
  id             BIGSERIAL PRIMARY KEY,
  aggregate_type TEXT        NOT NULL,
  aggregate_id   TEXT        NOT NULL,
  event_type     TEXT        NOT NULL,
  payload        JSONB       NOT NULL,
  status         TEXT        NOT NULL DEFAULT 'pending',
  claim_token    TEXT,
  attempts       INT         NOT NULL DEFAULT 0,
  next_run_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
  created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_outbox_due ON outbox_event (next_run_at ASC)
  WHERE status IN ('pending','retry','processing');
CREATE TABLE outbox_event_archive (
    id BIGINT PRIMARY KEY, aggregate_type TEXT NOT NULL, aggregate_id TEXT NOT NULL,
    event_type TEXT NOT NULL, payload JSONB NOT NULL, status TEXT NOT NULL,
    attempts INT NOT NULL, next_run_at TIMESTAMPTZ NOT NULL, created_at TIMESTAMPTZ NOT NULL,
    archived_at TIMESTAMPTZ DEFAULT now()
);
CREATE INDEX idx_outbox_archive_date ON outbox_event_archive (archived_at);
INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload, status, attempts)
VALUES ('order', '1001', 'order.created', '{\"orderId\": \"1001\"}', 'pending', 0),
       ('order', '1002', 'order.created', '{\"orderId\": \"1002\"}', 'retry', 1),
       ('invoice', '2001', 'invoice.generated', '{\"invoiceId\": \"2001\"}', 'done', 1),
       ('invoice', '2002', 'invoice.generated', '{\"invoiceId\": \"2002\"}', 'dead', 5);
";

#[tokio::test]
async fn an_existing_python_dispatchbox_table_is_upgraded_in_place() {
    let cluster = TestCluster::start();
    let db = cluster.create_database("python").await;
    let client = cluster.connect(&db).await;
    client.batch_execute(PYTHON_SCHEMA).await.unwrap();
    let before: Vec<(i64, String, i32, String)> = client
        .query(
            "SELECT id, status, attempts, payload::text FROM outbox_event ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();

    let names = names("outbox_event", "dispatchbox");
    let report = store(&cluster, &db, &names).migrate(&names).await.unwrap();
    assert_eq!(report.applied, vec![1, 2, 3, 4, 5]);

    let after: Vec<(i64, String, i32, String)> = client
        .query(
            "SELECT id, status, attempts, payload::text FROM outbox_event ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(before, after, "rows survive the upgrade unchanged");
    assert_eq!(
        columns(&client, "public", "outbox_event").await,
        ALL_COLUMNS
    );
    let indexes: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE tablename = 'outbox_event'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        indexes, 4,
        "the Python index is adopted, not duplicated; only the ordering and dead-letter indexes are added"
    );
    // The serial keeps counting from the existing rows.
    let next_id: i64 = client
        .query_one(
            "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload)
             VALUES ('a', '1', 'e', '{}') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(next_id, 5);
}

#[tokio::test]
async fn concurrent_migrations_apply_each_version_once() {
    let cluster = TestCluster::start();
    let db = cluster.create_database("concurrent").await;
    let names = names("outbox_event", "dispatchbox");
    let runs: Vec<_> = (0..3)
        .map(|_| {
            let store = store(&cluster, &db, &names);
            let names = names.clone();
            tokio::spawn(async move { store.migrate(&names).await })
        })
        .collect();
    let mut applied = Vec::new();
    for run in runs {
        let report = run.await.unwrap().unwrap();
        assert_eq!(report.applied.len() + report.skipped.len(), 5);
        applied.extend(report.applied);
    }
    applied.sort();
    assert_eq!(
        applied,
        vec![1, 2, 3, 4, 5],
        "every version applied exactly once"
    );
}

#[tokio::test]
async fn checks_name_each_misconfiguration() {
    let cluster = TestCluster::start();
    let names = names("outbox_event", "dispatchbox");

    // No table at all.
    let db = cluster.create_database("checks").await;
    let err = preflight(&store(&cluster, &db, &names), &names, &no_slot())
        .await
        .unwrap_err();
    assert!(matches!(err, CheckError::MissingTable { .. }), "{err}");
    assert!(err.to_string().contains("dispatchbox migrate"), "{err}");

    // A role without REPLICATION.
    let store_ok = store(&cluster, &db, &names);
    store_ok.migrate(&names).await.unwrap();
    let admin = cluster.connect(&db).await;
    admin
        .batch_execute(
            "CREATE ROLE relay LOGIN PASSWORD 'relay-pw';
             GRANT SELECT, UPDATE ON outbox_event TO relay;",
        )
        .await
        .unwrap();
    let relay = Store::new(
        pool(&cluster.url("relay", "relay-pw", &db), 4),
        names.table().clone(),
    );
    let err = preflight(&relay, &names, &no_slot()).await.unwrap_err();
    assert!(
        matches!(err, CheckError::NoReplicationPrivilege { ref role } if role == "relay"),
        "{err}"
    );
    assert!(
        err.to_string().contains("ALTER ROLE \"relay\" REPLICATION"),
        "{err}"
    );
    admin
        .batch_execute("ALTER ROLE relay REPLICATION")
        .await
        .unwrap();
    preflight(&relay, &names, &no_slot()).await.unwrap();

    // A publication that also publishes updates.
    admin
        .batch_execute("ALTER PUBLICATION dispatchbox SET (publish = 'insert,update')")
        .await
        .unwrap();
    let err = preflight(&store_ok, &names, &no_slot()).await.unwrap_err();
    assert!(
        matches!(err, CheckError::PublicationNotInsertOnly { ref publishes, .. } if publishes == "insert, update"),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("ALTER PUBLICATION \"dispatchbox\" SET (publish = 'insert')"),
        "{err}"
    );

    // A publication without the table, then no publication.
    admin
        .batch_execute(
            "DROP PUBLICATION dispatchbox;
             CREATE TABLE other (id int);
             CREATE PUBLICATION dispatchbox FOR TABLE other WITH (publish = 'insert');",
        )
        .await
        .unwrap();
    let err = preflight(&store_ok, &names, &no_slot()).await.unwrap_err();
    assert!(matches!(err, CheckError::TableNotPublished { .. }), "{err}");
    admin
        .batch_execute("DROP PUBLICATION dispatchbox")
        .await
        .unwrap();
    let err = preflight(&store_ok, &names, &no_slot()).await.unwrap_err();
    assert!(
        matches!(err, CheckError::MissingPublication { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains(
            "CREATE PUBLICATION \"dispatchbox\" FOR TABLE public.outbox_event WITH (publish = 'insert')"
        ),
        "{err}"
    );

    // A table without payload.
    let db = cluster.create_database("nopayload").await;
    let client = cluster.connect(&db).await;
    client
        .batch_execute(
            "CREATE TABLE outbox_event (
               id bigserial PRIMARY KEY, aggregate_type text NOT NULL, aggregate_id text NOT NULL,
               event_type text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
             CREATE PUBLICATION dispatchbox FOR TABLE outbox_event WITH (publish = 'insert');",
        )
        .await
        .unwrap();
    let err = preflight(&store(&cluster, &db, &names), &names, &no_slot())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CheckError::MissingEventColumn {
                column: "payload",
                ..
            }
        ),
        "{err}"
    );
    assert!(!err.is_transient());
}

#[tokio::test]
async fn checks_reject_wal_level_replica() {
    let cluster = TestCluster::start_with(ClusterOptions {
        wal_level: "replica",
        ..ClusterOptions::default()
    });
    let db = cluster.create_database("replica").await;
    let names = names("outbox_event", "dispatchbox");
    let store = store(&cluster, &db, &names);
    store.migrate(&names).await.unwrap();
    let err = preflight(&store, &names, &no_slot()).await.unwrap_err();
    assert!(
        matches!(err, CheckError::WalLevel { ref current } if current == "replica"),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("ALTER SYSTEM SET wal_level = logical"),
        "{err}"
    );
}

#[tokio::test]
async fn slot_helpers_and_heartbeat() {
    let cluster = TestCluster::start();
    let db = cluster.create_database("slots").await;
    let store = Store::new(pool(&cluster.superuser_url(&db), 4), TableName::default());
    let slot: Identifier = "dispatchbox_test".parse().unwrap();

    assert!(!slot::inspect_with(&store, &slot).await.unwrap().exists);
    let info: ConnInfo = cluster.superuser_url(&db).parse().unwrap();
    let mut client = ReplicationClient::connect(&info).await.unwrap();
    let start = slot::create(&mut client, &slot)
        .await
        .unwrap()
        .consistent_point;
    let err = slot::create(&mut client, &slot).await.unwrap_err();
    assert_eq!(err.sqlstate(), Some("42710"), "{err}");
    assert!(!err.is_transient());
    client.close().await;

    let heartbeat = store.emit_heartbeat().await.unwrap();
    assert!(heartbeat > start);

    let info = slot::inspect_with(&store, &slot).await.unwrap();
    assert!(info.exists);
    assert_eq!(info.plugin.as_deref(), Some("pgoutput"));
    assert_eq!(info.database.as_deref(), Some(db.as_str()));
    assert!(!info.active);
    assert_eq!(info.active_pid, None);
    assert_eq!(info.confirmed_flush_lsn, Some(start.to_string()));
    assert_eq!(info.wal_status, Some(SlotWalStatus::Reserved));
    // The heartbeat's WAL is written out by the WAL writer shortly after.
    eventually(
        Duration::from_secs(5),
        "slot lag to cover the heartbeat",
        || {
            let store = store.clone();
            let slot = slot.clone();
            async move {
                let info = slot::inspect_with(&store, &slot).await.unwrap();
                (info.lag_bytes? > 0).then_some(())
            }
        },
    )
    .await;

    assert!(slot::drop(&store, &slot).await.unwrap());
    assert!(!slot::drop(&store, &slot).await.unwrap());
    assert!(!slot::inspect_with(&store, &slot).await.unwrap().exists);
}

/// The start-up preflight on a connection of `store`'s pool.
async fn preflight(
    store: &Store,
    names: &Names,
    slot: &Identifier,
) -> Result<ServerFacts, CheckError> {
    checks::preflight_store(store, names, slot).await
}
