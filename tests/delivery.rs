//! Delivery under failure, end to end: the real relay, a real PostgreSQL cluster and a
//! real HTTP receiver (and a real broker for routing). Retries and backoff, dead letters,
//! `Retry-After`, per-aggregate ordering, signatures, routing, and two relays at once.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::kafka::TestBroker;
use support::postgres::{eventually, TestCluster};
use support::relay::{base_env, metric, migrate, set_env, start_streaming, RelayProcess};
use support::store::count_status;
use support::webhook::{Receiver, Rule};

const TABLE: &str = "public.outbox_event";

fn webhook_env(cluster: &TestCluster, db: &str, receiver: &Receiver) -> Vec<(String, String)> {
    let mut env = base_env(cluster, db);
    set_env(&mut env, "DISPATCHBOX_SINKS", "webhook");
    set_env(&mut env, "DISPATCHBOX_WEBHOOK_URL", &receiver.url());
    // The receiver is on loopback: turn the SSRF guard off.
    set_env(&mut env, "DISPATCHBOX_WEBHOOK_ALLOW_PRIVATE", "true");
    set_env(&mut env, "DISPATCHBOX_WEBHOOK_TIMEOUT", "2s");
    set_env(&mut env, "DISPATCHBOX_SWEEP_INTERVAL", "200ms");
    set_env(&mut env, "DISPATCHBOX_SWEEP_LEASE", "10s");
    set_env(&mut env, "DISPATCHBOX_BACKOFF_BASE", "1s");
    set_env(&mut env, "DISPATCHBOX_BACKOFF_MAX", "4s");
    env
}

async fn insert(client: &tokio_postgres::Client, aggregate_id: &str, event_type: &str) -> i64 {
    client
        .query_one(
            &format!(
                "INSERT INTO {TABLE} (aggregate_type, aggregate_id, event_type, payload)
                 VALUES ('order', $1, $2, jsonb_build_object('aggregate', $1::text))
                 RETURNING id"
            ),
            &[&aggregate_id, &event_type],
        )
        .await
        .unwrap()
        .get(0)
}

struct Row {
    status: String,
    attempts: i32,
    last_error: Option<String>,
}

async fn row(client: &tokio_postgres::Client, id: i64) -> Row {
    let r = client
        .query_one(
            &format!("SELECT status, attempts, last_error FROM {TABLE} WHERE id = $1"),
            &[&id],
        )
        .await
        .unwrap();
    Row {
        status: r.get(0),
        attempts: r.get(1),
        last_error: r.get(2),
    }
}

async fn wait_status(
    client: &tokio_postgres::Client,
    id: i64,
    status: &str,
    within: Duration,
) -> Row {
    eventually(within, &format!("event {id} to be {status}"), || async {
        let r = row(client, id).await;
        (r.status == status).then_some(r)
    })
    .await
}

/// Waits until a marker event has gone through the stream and then through the sweeper,
/// after everything the test did before. Then "nothing more was sent"
/// means something, instead of "nothing was sent yet".
///
/// The stream delivers the marker (aggregate `marker`) after every event committed before
/// it. Returned to `retry`, due now (the publication streams INSERTs only, so only the
/// sweeper sees this), it is claimed by the sweeper's next pass, which claims every due
/// row in id order in one statement and writes the outcomes only after each of those
/// deliveries ended: once the marker is `done` with its second attempt, any older row the
/// sweeper would take (wrongly) has reached the receiver too.
async fn marker_passes_stream_and_sweeper(client: &tokio_postgres::Client, receiver: &Receiver) {
    let marker = insert(client, "marker", "order.placed").await;
    wait_status(client, marker, "done", Duration::from_secs(30)).await;
    client
        .execute(
            &format!("UPDATE {TABLE} SET status = 'retry', next_run_at = now() WHERE id = $1"),
            &[&marker],
        )
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "the sweeper to deliver the marker again",
        || async {
            let r = row(client, marker).await;
            (r.status == "done" && r.attempts == 2).then_some(())
        },
    )
    .await;
    assert_eq!(receiver.requests_for("marker").len(), 2);
}

struct Setup {
    _cluster: TestCluster,
    client: tokio_postgres::Client,
    receiver: Receiver,
    relay: RelayProcess,
}

async fn setup(prefix: &str, extra: &[(&str, &str)]) -> Setup {
    let cluster = TestCluster::start();
    let receiver = Receiver::start().await;
    let db = cluster.create_database(prefix).await;
    let mut env = webhook_env(&cluster, &db, &receiver);
    for (k, v) in extra {
        set_env(&mut env, k, v);
    }
    migrate(&env);
    let client = cluster.connect(&db).await;
    let relay = start_streaming(&client, &env).await;
    Setup {
        _cluster: cluster,
        client,
        receiver,
        relay,
    }
}

/// The receiver fails the first two attempts: the event is delivered on the third with
/// `attempts` = 3, and the gaps between attempts stay within the backoff ceilings
/// (full jitter: attempt n waits at most base·2^(n-1)).
#[tokio::test]
async fn delivered_on_the_third_attempt_after_two_failures() {
    let s = setup("third", &[]).await;
    s.receiver
        .respond(Rule::for_aggregate("A").fail_times(2, 500));
    let id = insert(&s.client, "A", "order.placed").await;
    let r = wait_status(&s.client, id, "done", Duration::from_secs(30)).await;
    assert_eq!(r.attempts, 3);
    let requests = s.receiver.requests_for("A");
    assert_eq!(requests.len(), 3);
    // Ceilings 1 s and 2 s, plus the sweeper interval and processing slack (generous: three
    // clusters share the CI machine's two cores).
    let slack = Duration::from_millis(1500);
    for (n, pair) in requests.windows(2).enumerate() {
        let gap = pair[1].arrived - pair[0].arrived;
        let ceiling = Duration::from_secs(1 << n);
        assert!(
            gap <= ceiling + slack,
            "gap {n} was {gap:?}, ceiling {ceiling:?}"
        );
    }
    drop(s.relay);
}

/// A receiver that always answers 500 makes the event `dead` after
/// `DISPATCHBOX_MAX_ATTEMPTS` attempts with the status in `last_error`; 400 and 410 are
/// `dead` after one attempt.
#[tokio::test]
async fn permanent_and_exhausted_failures_are_dead() {
    let s = setup(
        "dead",
        &[
            ("DISPATCHBOX_MAX_ATTEMPTS", "3"),
            ("DISPATCHBOX_BACKOFF_BASE", "100ms"),
            ("DISPATCHBOX_BACKOFF_MAX", "200ms"),
        ],
    )
    .await;
    s.receiver
        .respond(Rule::for_aggregate("always-500").always(500));
    s.receiver
        .respond(Rule::for_aggregate("bad-request").always(400));
    s.receiver.respond(Rule::for_aggregate("gone").always(410));
    let exhausted = insert(&s.client, "always-500", "order.placed").await;
    let bad = insert(&s.client, "bad-request", "order.placed").await;
    let gone = insert(&s.client, "gone", "order.placed").await;

    let r = wait_status(&s.client, exhausted, "dead", Duration::from_secs(30)).await;
    assert_eq!(r.attempts, 3);
    assert!(r.last_error.unwrap().contains("500"));
    assert_eq!(s.receiver.requests_for("always-500").len(), 3);

    let r = wait_status(&s.client, bad, "dead", Duration::from_secs(30)).await;
    assert_eq!(r.attempts, 1);
    assert!(r.last_error.unwrap().contains("400"));
    let r = wait_status(&s.client, gone, "dead", Duration::from_secs(30)).await;
    assert_eq!(r.attempts, 1);
    assert!(r.last_error.unwrap().contains("410"));
    // Not sent again: neither the stream nor the sweeper takes a dead row. A marker shows
    // that both had their chance after the rows became dead.
    marker_passes_stream_and_sweeper(&s.client, &s.receiver).await;
    assert_eq!(s.receiver.requests_for("bad-request").len(), 1);
    assert_eq!(s.receiver.requests_for("gone").len(), 1);
}

/// 429 with `Retry-After: 2`: the next attempt comes at least 2 s later.
#[tokio::test]
async fn retry_after_is_honoured() {
    let s = setup(
        "retryafter",
        &[
            ("DISPATCHBOX_BACKOFF_BASE", "100ms"),
            ("DISPATCHBOX_BACKOFF_MAX", "200ms"),
        ],
    )
    .await;
    s.receiver.respond(
        Rule::for_aggregate("throttled")
            .fail_times(1, 429)
            .header("Retry-After", "2"),
    );
    let id = insert(&s.client, "throttled", "order.placed").await;
    wait_status(&s.client, id, "done", Duration::from_secs(30)).await;
    let requests = s.receiver.requests_for("throttled");
    assert_eq!(requests.len(), 2);
    let gap = requests[1].arrived - requests[0].arrived;
    assert!(gap >= Duration::from_secs(2), "retried after {gap:?}");
}

/// Aggregate A's first event fails twice while A's next four events are inserted: the
/// receiver sees A1..A5 in order, and aggregate B's events, inserted meanwhile, are
/// delivered without waiting for A.
#[tokio::test]
async fn aggregate_order_is_kept_across_retries() {
    let s = setup("ordering", &[]).await;
    // Retry-After makes each retry wait at least 1 s, so A is blocked for ≥ 2 s.
    s.receiver.respond(
        Rule::for_aggregate("A")
            .fail_times(2, 503)
            .header("Retry-After", "1"),
    );
    let a1 = insert(&s.client, "A", "order.step").await;
    s.receiver.wait_for(1, Duration::from_secs(10)).await;
    let mut a_ids = vec![a1];
    let mut b_ids = Vec::new();
    for _ in 0..4 {
        a_ids.push(insert(&s.client, "A", "order.step").await);
        b_ids.push(insert(&s.client, "B", "order.step").await);
    }
    for id in &a_ids {
        wait_status(&s.client, *id, "done", Duration::from_secs(30)).await;
    }

    let requests = s.receiver.requests();
    let a_sequence: Vec<i64> = requests
        .iter()
        .filter(|r| r.aggregate_id().as_deref() == Some("A"))
        .map(|r| r.webhook_id().unwrap().parse().unwrap())
        .collect();
    let mut delivered_order = a_sequence.clone();
    delivered_order.dedup();
    assert_eq!(
        delivered_order, a_ids,
        "A's events out of commit order: {a_sequence:?}"
    );
    assert_eq!(a_sequence.len(), 7, "A1 three times, then A2..A5 once each");

    // B did not wait for A: all of B arrived before A1 finally succeeded.
    let a1_success = requests
        .iter()
        .filter(|r| r.webhook_id() == Some(&a1.to_string()))
        .map(|r| r.arrived)
        .max()
        .unwrap();
    let b_last = requests
        .iter()
        .filter(|r| r.aggregate_id().as_deref() == Some("B"))
        .map(|r| r.arrived)
        .max()
        .unwrap();
    assert!(b_last < a1_success, "B waited behind A's retries");
}

/// With two secrets configured (key rotation) every request carries both signatures, and
/// each verifies with the independent `standardwebhooks` implementation.
#[tokio::test]
async fn signatures_verify_with_an_independent_verifier() {
    const OLD: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const NEW: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    let secrets = format!("{OLD} {NEW}");
    let s = setup("signed", &[("DISPATCHBOX_WEBHOOK_SECRET", &secrets)]).await;
    insert(&s.client, "S", "order.placed").await;
    let request = s
        .receiver
        .wait_for(1, Duration::from_secs(20))
        .await
        .remove(0);
    for secret in [OLD, NEW] {
        let verifier = standardwebhooks::Webhook::new(secret).unwrap();
        verifier
            .verify(&request.body, &request.headers)
            .unwrap_or_else(|e| panic!("signature for {secret} does not verify: {e:?}"));
    }
    let body = request.json();
    assert_eq!(body["type"], "order.placed");
    assert_eq!(body["aggregate_id"], "S");
    assert_eq!(body["data"]["aggregate"], "S");
    assert_eq!(request.webhook_id().unwrap(), body["id"].to_string());
}

/// Routing in one relay: `order.*` goes to Kafka, `invoice.*` to the webhook, and an event
/// no rule matches ends `dead` with "no route".
#[tokio::test]
async fn routes_by_event_type_and_dead_letters_unrouted_events() {
    let cluster = TestCluster::start();
    let receiver = Receiver::start().await;
    let broker = TestBroker::start();
    broker.create_topic("outbox.order", 3).await;
    let db = cluster.create_database("routing").await;
    let mut env = webhook_env(&cluster, &db, &receiver);
    set_env(&mut env, "DISPATCHBOX_SINKS", "kafka,webhook");
    set_env(&mut env, "DISPATCHBOX_KAFKA_BROKERS", &broker.bootstrap());
    set_env(&mut env, "DISPATCHBOX_KAFKA_DELIVERY_TIMEOUT", "5s");
    set_env(
        &mut env,
        "DISPATCHBOX_ROUTES",
        "order.*=kafka; invoice.*=webhook",
    );
    migrate(&env);
    let client = cluster.connect(&db).await;
    let _relay = start_streaming(&client, &env).await;

    let order = insert(&client, "o-1", "order.placed").await;
    let invoice = insert(&client, "i-1", "invoice.issued").await;
    let unrouted = insert(&client, "c-1", "customer.created").await;
    wait_status(&client, order, "done", Duration::from_secs(30)).await;
    wait_status(&client, invoice, "done", Duration::from_secs(30)).await;
    let r = wait_status(&client, unrouted, "dead", Duration::from_secs(30)).await;
    assert!(r.last_error.unwrap().contains("no route"));

    let hooks = receiver.requests();
    assert_eq!(hooks.len(), 1, "only the invoice goes to the webhook");
    assert_eq!(hooks[0].webhook_id(), Some(invoice.to_string().as_str()));
    let records = broker.read_to_end("outbox.order").await;
    let ids: Vec<String> = records
        .iter()
        .map(|r| r.header("id").unwrap().to_owned())
        .collect();
    assert_eq!(ids, vec![order.to_string()], "only the order goes to Kafka");
}

/// Named webhook endpoints are sinks of their own: routes send invoices to
/// `webhook:billing` with its own secret and static header, everything else to `webhook`;
/// the trace context of the row travels, other row headers do not; metrics count per
/// endpoint.
#[tokio::test]
async fn named_endpoints_get_their_own_events_secrets_and_headers() {
    const BILLING_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let cluster = TestCluster::start();
    let receiver = Receiver::start().await;
    let billing = Receiver::start().await;
    let db = cluster.create_database("endpoints").await;
    let mut env = webhook_env(&cluster, &db, &receiver);
    set_env(&mut env, "DISPATCHBOX_SINKS", "webhook,webhook:billing");
    set_env(&mut env, "DISPATCHBOX_WEBHOOK_BILLING_URL", &billing.url());
    set_env(
        &mut env,
        "DISPATCHBOX_WEBHOOK_BILLING_SECRET",
        BILLING_SECRET,
    );
    set_env(
        &mut env,
        "DISPATCHBOX_WEBHOOK_BILLING_HEADERS",
        "X-Api-Key: billing-key,v2",
    );
    set_env(
        &mut env,
        "DISPATCHBOX_ROUTES",
        "invoice.*=webhook:billing; *=webhook",
    );
    migrate(&env);
    let client = cluster.connect(&db).await;
    let relay = start_streaming(&client, &env).await;

    let invoice: i64 = client
        .query_one(
            &format!(
                "INSERT INTO {TABLE} (aggregate_type, aggregate_id, event_type, payload, headers)
                 VALUES ('invoice', 'i-1', 'invoice.issued', '{{}}',
                         jsonb_build_object('traceparent', $1::text, 'x-internal', 'no'))
                 RETURNING id"
            ),
            &[&TRACEPARENT],
        )
        .await
        .unwrap()
        .get(0);
    let order = insert(&client, "o-1", "order.placed").await;
    wait_status(&client, invoice, "done", Duration::from_secs(30)).await;
    wait_status(&client, order, "done", Duration::from_secs(30)).await;

    let to_billing = billing.requests();
    assert_eq!(to_billing.len(), 1, "only the invoice goes to billing");
    let request = &to_billing[0];
    assert_eq!(request.webhook_id(), Some(invoice.to_string().as_str()));
    assert_eq!(request.header("x-api-key"), Some("billing-key,v2"));
    assert_eq!(request.header("traceparent"), Some(TRACEPARENT));
    assert!(request.header("x-internal").is_none());
    standardwebhooks::Webhook::new(BILLING_SECRET)
        .unwrap()
        .verify(&request.body, &request.headers)
        .unwrap();
    let to_default = receiver.requests();
    assert_eq!(to_default.len(), 1, "only the order goes to webhook");
    assert_eq!(to_default[0].webhook_id(), Some(order.to_string().as_str()));
    assert!(to_default[0].header("x-api-key").is_none());
    assert!(to_default[0].header("webhook-signature").is_none());

    let admin = relay.admin_url();
    for (sink, delivered) in [("webhook:billing", 1.0), ("webhook", 1.0)] {
        let series =
            format!("dispatchbox_delivery_attempts_total{{outcome=\"done\",sink=\"{sink}\"}}");
        assert_eq!(metric(&admin, &series).await, Some(delivered), "{series}");
    }
    let series = "dispatchbox_delivery_attempts_total{outcome=\"dead\",sink=\"webhook:billing\"}";
    assert_eq!(metric(&admin, series).await, Some(0.0), "created at zero");
}

/// With the SSRF guard on (the default), a receiver whose host resolves to loopback gets
/// nothing: the event is `dead` after one attempt, and its `last_error` names the host, the
/// rule and the switch.
#[tokio::test]
async fn the_ssrf_guard_makes_events_for_a_loopback_host_dead() {
    let cluster = TestCluster::start();
    let receiver = Receiver::start().await;
    let db = cluster.create_database("ssrf").await;
    let mut env = webhook_env(&cluster, &db, &receiver);
    env.retain(|(name, _)| name != "DISPATCHBOX_WEBHOOK_ALLOW_PRIVATE");
    set_env(
        &mut env,
        "DISPATCHBOX_WEBHOOK_URL",
        &receiver.url().replace("127.0.0.1", "localhost"),
    );
    migrate(&env);
    let client = cluster.connect(&db).await;
    let _relay = start_streaming(&client, &env).await;

    let id = insert(&client, "o-1", "order.placed").await;
    let r = wait_status(&client, id, "dead", Duration::from_secs(30)).await;
    assert_eq!(r.attempts, 1, "permanent: not retried");
    let error = r.last_error.unwrap();
    for part in [
        "refused by the SSRF guard",
        "host \"localhost\" resolves to",
        "loopback address",
        "DISPATCHBOX_WEBHOOK_ALLOW_PRIVATE=true",
    ] {
        assert!(error.contains(part), "{part:?} not in {error}");
    }
    assert!(receiver.requests().is_empty());
}

/// Two relays on one database under load: exactly one streams, every event is delivered,
/// and no event is delivered twice by the two sweepers competing for retries.
#[tokio::test]
async fn two_relays_share_the_work_without_double_delivery() {
    let cluster = TestCluster::start();
    let receiver = Receiver::start().await;
    let db = cluster.create_database("tworelays").await;
    let mut env = webhook_env(&cluster, &db, &receiver);
    set_env(&mut env, "DISPATCHBOX_BACKOFF_BASE", "100ms");
    set_env(&mut env, "DISPATCHBOX_BACKOFF_MAX", "300ms");
    set_env(&mut env, "DISPATCHBOX_SWEEP_INTERVAL", "100ms");
    set_env(&mut env, "DISPATCHBOX_ORDERING", "none");
    migrate(&env);
    let client = cluster.connect(&db).await;
    // Ids of a fresh table start at 1: every fifth event fails its first attempt, so both
    // sweepers have retries to compete for.
    let total: i64 = 1_000;
    for id in (5..=total).step_by(5) {
        receiver.respond(Rule::for_event(id).fail_times(1, 500));
    }
    let _first = start_streaming(&client, &env).await;
    let second = RelayProcess::start(&env);
    eventually(
        Duration::from_secs(20),
        "the second relay to stand by",
        || async {
            second
                .stderr()
                .contains("in use by another process")
                .then_some(())
        },
    )
    .await;

    for _ in 0..100 {
        client
            .execute(
                &format!(
                    "INSERT INTO {TABLE} (aggregate_type, aggregate_id, event_type, payload)
                     SELECT 'order', 'agg-' || (g % 7), 'order.placed', '{{}}'
                     FROM generate_series(1, 10) g"
                ),
                &[],
            )
            .await
            .unwrap();
    }
    eventually(Duration::from_secs(90), "every row done", || async {
        (count_status(&client, "done").await == total).then_some(())
    })
    .await;
    let streaming: i64 = client
        .query_one("SELECT count(*) FROM pg_stat_replication", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(streaming, 1, "exactly one relay streams");

    let mut per_id: HashMap<i64, usize> = HashMap::new();
    for request in receiver.requests() {
        *per_id
            .entry(request.webhook_id().unwrap().parse().unwrap())
            .or_default() += 1;
    }
    assert_eq!(
        per_id.len(),
        total as usize,
        "every event reached the receiver"
    );
    for (id, n) in per_id {
        let expected = if id % 5 == 0 { 2 } else { 1 };
        assert_eq!(n, expected, "event {id} was sent {n} times");
    }
}
