//! A stream that cannot see the outbox's inserts (the table renamed, or no longer in the
//! publication) must not confirm past them: the slot's position stands still, `/ready`
//! says why, and once the table is back every row written meanwhile is delivered.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::postgres::{eventually, TestCluster};
use support::relay::{base_env, http_get, migrate, start_streaming, RelayProcess};
use support::store::count_status;

async fn insert(client: &tokio_postgres::Client, table: &str, n: i64) {
    client
        .execute(
            &format!(
                "INSERT INTO {table} (aggregate_type, aggregate_id, event_type, payload)
                 SELECT 'order', 'o-' || g, 'order.placed', '{{}}'
                   FROM generate_series(1, $1::bigint) g"
            ),
            &[&n],
        )
        .await
        .unwrap();
}

/// The slot's confirmed position, as bytes past `0/0`.
async fn confirmed(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one(
            "SELECT pg_wal_lsn_diff(confirmed_flush_lsn, '0/0')::bigint
               FROM pg_replication_slots WHERE active",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

async fn current_wal(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one(
            "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Waits for `/ready` to answer `status` with a body containing `text`.
async fn ready_says(relay: &RelayProcess, status: u16, text: &str) -> String {
    let base = relay.admin_url();
    eventually(
        Duration::from_secs(20),
        &format!("/ready {status} with {text:?}"),
        || async {
            let (code, body) = http_get(&base, "/ready").await.ok()?;
            (code == status && body.contains(text)).then_some(body)
        },
    )
    .await
}

/// What the server last heard from the relay in a standby status update: the position
/// the relay reported as received (written), as bytes past `0/0`, and when it sent the
/// update (microseconds since the epoch).
async fn reported(client: &tokio_postgres::Client) -> Option<(i64, i64)> {
    let row = client
        .query_opt(
            "SELECT pg_wal_lsn_diff(write_lsn, '0/0')::bigint,
                    (extract(epoch FROM reply_time) * 1000000)::bigint
               FROM pg_stat_replication",
            &[],
        )
        .await
        .unwrap()?;
    Some((row.get::<_, Option<i64>>(0)?, row.get::<_, Option<i64>>(1)?))
}

/// The position stands still while the problem lasts: the heartbeat (every second) and
/// the status updates (every 500 ms) would move it within about a second otherwise, as
/// the first half of each test shows.
///
/// Not a fixed wait: until the relay has received WAL past what was written while the
/// outbox was invisible (reported as its write position in a status update), and then
/// sent two more updates. Every update carries the confirmed position next to the
/// received one, so the relay knew of that WAL and had its chances to confirm past it.
async fn assert_held(client: &tokio_postgres::Client, at: i64) {
    let target = current_wal(client).await;
    let (_, mut last_reply) = eventually(
        Duration::from_secs(20),
        "the relay to report WAL past the invisible inserts as received",
        || async {
            let (write, reply) = reported(client).await?;
            (write >= target).then_some((write, reply))
        },
    )
    .await;
    for _ in 0..2 {
        last_reply = eventually(
            Duration::from_secs(20),
            "another standby status update",
            || async {
                let (_, reply) = reported(client).await?;
                (reply > last_reply).then_some(reply)
            },
        )
        .await;
    }
    let now = confirmed(client).await;
    assert!(
        now < target,
        "confirmed {now} passed {target}, written while the outbox was invisible (held at {at})"
    );
}

async fn confirms_past_now(client: &tokio_postgres::Client) {
    let target = current_wal(client).await;
    eventually(
        Duration::from_secs(20),
        "the slot to confirm again",
        || async { (confirmed(client).await >= target).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn a_table_removed_from_the_publication_holds_the_position_until_it_is_back() {
    let cluster = TestCluster::start();
    let db = cluster.create_database("unpublished").await;
    let env = base_env(&cluster, &db);
    migrate(&env);
    let client = cluster.connect(&db).await;
    let relay = start_streaming(&client, &env).await;
    insert(&client, "outbox_event", 5).await;
    ready_says(&relay, 200, "\"ready\"").await;
    confirms_past_now(&client).await;

    client
        .batch_execute(&format!(
            "ALTER PUBLICATION pub_{db} DROP TABLE outbox_event"
        ))
        .await
        .unwrap();
    let body = ready_says(&relay, 503, "no longer contains outbox table").await;
    assert!(body.contains("ADD TABLE"), "{body}");
    let held_at = confirmed(&client).await;
    insert(&client, "outbox_event", 10).await;
    assert_held(&client, held_at).await;

    client
        .batch_execute(&format!(
            "ALTER PUBLICATION pub_{db} ADD TABLE outbox_event"
        ))
        .await
        .unwrap();
    ready_says(&relay, 200, "\"ready\"").await;
    confirms_past_now(&client).await;
    // The ten rows the stream never saw: the sweeper's.
    eventually(Duration::from_secs(30), "every row to be done", || async {
        (count_status(&client, "done").await == 15).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_renamed_table_holds_the_position_until_it_is_back() {
    let cluster = TestCluster::start();
    let db = cluster.create_database("renamed").await;
    let env = base_env(&cluster, &db);
    migrate(&env);
    let client = cluster.connect(&db).await;
    let relay = start_streaming(&client, &env).await;
    insert(&client, "outbox_event", 5).await;
    eventually(Duration::from_secs(20), "the first rows", || async {
        (count_status(&client, "done").await == 5).then_some(())
    })
    .await;

    client
        .batch_execute("ALTER TABLE outbox_event RENAME TO outbox_event_old")
        .await
        .unwrap();
    // Still in the publication (publications name tables by OID): the stream sees these
    // inserts under the new name.
    insert(&client, "outbox_event_old", 10).await;
    let body = ready_says(&relay, 503, "outbox table").await;
    assert!(
        body.contains("renamed to") || body.contains("does not exist"),
        "{body}"
    );
    let held_at = confirmed(&client).await;
    assert_held(&client, held_at).await;

    client
        .batch_execute("ALTER TABLE outbox_event_old RENAME TO outbox_event")
        .await
        .unwrap();
    ready_says(&relay, 200, "\"ready\"").await;
    eventually(Duration::from_secs(30), "every row to be done", || async {
        (count_status(&client, "done").await == 15).then_some(())
    })
    .await;
}
