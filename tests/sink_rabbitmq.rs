//! The RabbitMQ sink against a real `rabbitmq-server` process: one private node for the whole
//! binary (see `support::rabbitmq`), each test with its own exchanges and queues; a TCP proxy
//! in front of the node for connection faults; and one run of the relay end to end with a
//! real PostgreSQL cluster.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::TimeZone;
use dispatchbox::event::OutboxEvent;
use dispatchbox::sink::{DeliveryError, RabbitMqSink, RabbitMqSinkConfig, Sink};
use futures_util::future::join_all;
use support::postgres::{eventually, TestCluster};
use support::rabbitmq::{node, Proxy};
use support::relay::{base_env, migrate, start_streaming};
use support::store::count_status;
use support::varied_payload;

fn event(id: i64, aggregate_type: &str, aggregate_id: &str, payload: &str) -> OutboxEvent {
    OutboxEvent {
        id,
        aggregate_type: aggregate_type.to_owned(),
        aggregate_id: aggregate_id.to_owned(),
        event_type: format!("{aggregate_type}.changed"),
        payload: Bytes::from(payload.to_owned()),
        headers: vec![
            ("traceparent".to_owned(), format!("00-trace{id}-01")),
            ("tracestate".to_owned(), "vendor=x".to_owned()),
            ("aggregate_id".to_owned(), "forged".to_owned()),
        ],
        created_at: chrono::Utc.with_ymd_and_hms(2024, 5, 6, 7, 8, 9).unwrap()
            + chrono::Duration::microseconds(id),
        next_run_at: None,
    }
}

fn sink(url: &str, exchange: &str, timeout: Duration) -> Sink {
    let mut config = RabbitMqSinkConfig::new(url);
    config.exchange_template = exchange.to_owned();
    config.delivery_timeout = timeout;
    Sink::RabbitMq(RabbitMqSink::new(config).unwrap())
}

/// Delivers `event` until it succeeds (as the dispatcher's retries would), failing the test
/// on a permanent error or after `within`.
async fn deliver_until_ok(sink: &Sink, event: OutboxEvent, within: Duration) -> usize {
    let event = Arc::new(event);
    let deadline = Instant::now() + within;
    let mut attempts = 0;
    loop {
        attempts += 1;
        match sink.deliver(Arc::clone(&event)).await {
            Ok(()) => return attempts,
            Err(err) if Instant::now() < deadline => {
                assert!(!err.is_permanent(), "attempt {attempts}: {err:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!(
                "event {} not delivered in {attempts} attempts: {err:?}",
                event.id
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_properties_headers_and_exact_body_in_call_order() {
    // Given a topic exchange with one queue bound to every routing key.
    let node = node();
    let admin = node.admin().await;
    admin.topic_exchange("t1.outbox").await;
    admin.bound_queue("t1.all", "t1.outbox", "#").await;
    let sink = sink(&node.url(), "t1.outbox", Duration::from_secs(30));
    assert_eq!(sink.name(), "rabbitmq");
    sink.check(Duration::from_secs(5)).await.unwrap();

    // When 200 events over three aggregate types are handed off in id order and all
    // confirms awaited together.
    let types = ["order", "invoice", "shipment"];
    let events: Vec<Arc<OutboxEvent>> = (1..=200)
        .map(|id| {
            let aggregate_type = types[(id % 3) as usize];
            let aggregate_id = format!("{aggregate_type}-{}", id % 4);
            Arc::new(event(
                id,
                aggregate_type,
                &aggregate_id,
                &varied_payload(id),
            ))
        })
        .collect();
    let deliveries: Vec<_> = events.iter().map(|e| sink.deliver(Arc::clone(e))).collect();
    for (outcome, e) in join_all(deliveries).await.into_iter().zip(&events) {
        outcome.unwrap_or_else(|err| panic!("event {} failed: {err}", e.id));
    }

    // Then the queue holds every event once, in hand-off order, with the documented shape.
    let received = admin.read("t1.all", 200, Duration::from_secs(10)).await;
    assert_eq!(received.len(), 200);
    let by_id: HashMap<i64, &OutboxEvent> = events.iter().map(|e| (e.id, e.as_ref())).collect();
    for (position, message) in received.iter().enumerate() {
        let id: i64 = message.message_id().unwrap().parse().unwrap();
        assert_eq!(id, position as i64 + 1, "queue order is hand-off order");
        let sent = by_id[&id];
        assert_eq!(message.exchange, "t1.outbox");
        assert_eq!(
            message.routing_key,
            format!("{}.{}", sent.aggregate_type, sent.event_type)
        );
        assert_eq!(message.body, sent.payload.as_ref(), "body of {id}");
        let properties = &message.properties;
        assert_eq!(properties.delivery_mode(), &Some(2), "persistent");
        assert_eq!(
            properties.content_type().as_ref().unwrap().as_str(),
            "application/json"
        );
        assert_eq!(
            properties.kind().as_ref().unwrap().as_str(),
            sent.event_type
        );
        assert_eq!(
            properties.timestamp(),
            &Some(sent.created_at.timestamp() as u64)
        );
        assert_eq!(message.header("id"), Some(id.to_string()));
        assert_eq!(message.header("event_type"), Some(sent.event_type.clone()));
        assert_eq!(
            message.header("aggregate_type"),
            Some(sent.aggregate_type.clone())
        );
        assert_eq!(
            message.header("aggregate_id"),
            Some(sent.aggregate_id.clone()),
            "the event's own aggregate_id header must not override the sink's"
        );
        assert_eq!(
            message.header("created_at"),
            Some(format!("2024-05-06T07:08:09.{id:06}Z"))
        );
        assert_eq!(
            message.header("traceparent"),
            Some(format!("00-trace{id}-01"))
        );
        assert_eq!(message.header("tracestate").as_deref(), Some("vendor=x"));
    }

    // And a 4 MiB payload (many AMQP body frames) arrives whole.
    let big = format!(r#"{{"blob": "{}"}}"#, "x".repeat(4 * 1024 * 1024));
    sink.deliver(Arc::new(event(201, "order", "o-1", &big)))
        .await
        .unwrap();
    let received = admin.read("t1.all", 1, Duration::from_secs(10)).await;
    assert_eq!(received.len(), 1);
    assert!(received[0].body == big.as_bytes(), "the 4 MiB body changed");
    sink.close(Duration::from_secs(5)).await;
    admin.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_message_is_permanent_and_the_sink_stays_usable() {
    // Given an exchange whose only binding takes orders.
    let node = node();
    let admin = node.admin().await;
    admin.topic_exchange("t2.outbox").await;
    admin.bound_queue("t2.orders", "t2.outbox", "order.#").await;
    let sink = sink(&node.url(), "t2.outbox", Duration::from_secs(10));

    // When an invoice event is published, no queue takes it: permanent, naming the exchange,
    // the routing key and what to do.
    let err = sink
        .deliver(Arc::new(event(1, "invoice", "i-1", "{}")))
        .await
        .unwrap_err();
    assert!(err.is_permanent(), "{err:?}");
    for part in [
        "\"t2.outbox\"",
        "\"invoice.invoice.changed\"",
        "bind a queue",
    ] {
        assert!(err.reason().contains(part), "{part}: {}", err.reason());
    }

    // Then an order event still goes through, and it is the only message in the queue.
    sink.deliver(Arc::new(event(2, "order", "o-1", "{}")))
        .await
        .unwrap();
    let received = admin.read("t2.orders", 2, Duration::from_secs(2)).await;
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].message_id(), Some("2"));
    admin.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_unroutable_messages_fail_exactly_and_every_routed_one_arrives() {
    // Given an exchange whose only binding takes orders.
    let node = node();
    let admin = node.admin().await;
    admin.topic_exchange("t9.outbox").await;
    admin.bound_queue("t9.orders", "t9.outbox", "order.#").await;
    let sink = sink(&node.url(), "t9.outbox", Duration::from_secs(30));

    // When 600 events are handed off at once, every third one an invoice that no queue
    // takes, and all confirms awaited together (the broker returns and acks them in
    // batches, which is where lapin hands a returned message to the wrong confirm); three
    // rounds of that.
    let unbound = |id: i64| id % 3 == 0;
    for round in 0..3 {
        let ids: Vec<i64> = (1..=600).map(|n| round * 1000 + n).collect();
        let deliveries: Vec<_> = ids
            .iter()
            .map(|&id| {
                let aggregate_type = if unbound(id) { "invoice" } else { "order" };
                sink.deliver(Arc::new(event(
                    id,
                    aggregate_type,
                    "a-1",
                    &varied_payload(id),
                )))
            })
            .collect();
        let results = join_all(deliveries).await;

        // Then exactly the invoices failed, permanently as unroutable, and every order was
        // confirmed.
        let mut wrong = Vec::new();
        for (id, result) in ids.iter().zip(&results) {
            match result {
                Err(err)
                    if unbound(*id)
                        && err.is_permanent()
                        && err.reason().contains("to no queue") => {}
                Ok(()) if !unbound(*id) => {}
                other => wrong.push(format!("event {id}: {other:?}")),
            }
        }
        assert!(
            wrong.is_empty(),
            "round {round}: {} misjudged: {wrong:#?}",
            wrong.len()
        );

        // And the queue holds exactly the orders, each once.
        let expected: Vec<String> = ids
            .iter()
            .filter(|&&id| !unbound(id))
            .map(ToString::to_string)
            .collect();
        let received = admin
            .read("t9.orders", expected.len() + 1, Duration::from_secs(3))
            .await;
        let mut got: Vec<String> = received
            .iter()
            .map(|message| message.message_id().unwrap().to_owned())
            .collect();
        got.sort_by_key(|id| id.parse::<i64>().unwrap());
        assert_eq!(got, expected, "round {round}");
    }
    sink.close(Duration::from_secs(5)).await;
    admin.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_exchange_is_permanent_and_the_sink_recovers() {
    // Given exchanges named after the aggregate type, and only "t3-order" declared.
    let node = node();
    let admin = node.admin().await;
    admin.topic_exchange("t3-order").await;
    admin.bound_queue("t3.orders", "t3-order", "#").await;
    let sink = sink(&node.url(), "t3-{aggregate_type}", Duration::from_secs(10));
    sink.deliver(Arc::new(event(1, "order", "o-1", "{}")))
        .await
        .unwrap();

    // When an event goes to an exchange that does not exist, the broker closes the channel:
    // that event is permanent, naming the exchange.
    let err = sink
        .deliver(Arc::new(event(2, "ghost", "g-1", "{}")))
        .await
        .unwrap_err();
    assert!(err.is_permanent(), "{err:?}");
    assert!(err.reason().contains("\"t3-ghost\""), "{}", err.reason());
    assert!(err.reason().contains("declare it"), "{}", err.reason());

    // Then the next event goes through on a new channel.
    sink.deliver(Arc::new(event(3, "order", "o-1", "{}")))
        .await
        .unwrap();

    // And with a bad and a good event in flight together, the bad one is permanent and the
    // good one is delivered or, when the channel closed under it, retryable; never dead.
    let bad = sink.deliver(Arc::new(event(4, "ghost", "g-1", "{}")));
    let good = sink.deliver(Arc::new(event(5, "order", "o-1", "{}")));
    let (bad, good) = tokio::join!(bad, good);
    assert!(bad.unwrap_err().is_permanent());
    match good {
        Ok(()) => {}
        Err(err) => {
            assert!(matches!(err, DeliveryError::Retryable { .. }), "{err:?}");
            deliver_until_ok(
                &sink,
                event(5, "order", "o-1", "{}"),
                Duration::from_secs(10),
            )
            .await;
        }
    }
    let ids: Vec<String> = admin
        .read("t3.orders", 3, Duration::from_secs(5))
        .await
        .iter()
        .map(|m| m.message_id().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["1", "3", "5"]);
    admin.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_unavailable_is_retryable_and_fails_fast() {
    // Given nothing listening on the sink's port.
    let port = support::postgres::free_port();
    let sink = sink(
        &support::rabbitmq::url_for(port),
        "outbox",
        Duration::from_secs(10),
    );

    // Then a delivery is retryable, names the broker, and takes far less than the timeout;
    // so does the readiness check.
    let started = Instant::now();
    let err = sink
        .deliver(Arc::new(event(1, "order", "o-1", "{}")))
        .await
        .unwrap_err();
    assert!(matches!(err, DeliveryError::Retryable { .. }), "{err:?}");
    assert!(
        err.reason().contains(&format!("127.0.0.1:{port}")),
        "{}",
        err.reason()
    );
    assert!(!err.reason().contains("guest:guest"), "{}", err.reason());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(sink.check(Duration::from_secs(2)).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_connection_is_retryable_and_the_sink_reconnects() {
    // Given a sink connected through a proxy.
    let node = node();
    let admin = node.admin().await;
    admin.topic_exchange("t5.outbox").await;
    admin.bound_queue("t5.all", "t5.outbox", "#").await;
    let proxy = Proxy::start(node.port()).await;
    let sink = sink(&proxy.url(), "t5.outbox", Duration::from_secs(5));
    sink.deliver(Arc::new(event(1, "order", "o-1", "{}")))
        .await
        .unwrap();
    assert_eq!(proxy.accepted(), 1);

    // When the connection is cut, the sink reconnects on its own.
    proxy.sever();
    deliver_until_ok(
        &sink,
        event(2, "order", "o-1", "{}"),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(proxy.accepted(), 2, "one new connection");

    // When the broker cannot be reached at all, deliveries and the check fail as retryable
    // within a second or two, not after the delivery timeout.
    proxy.refuse();
    let started = Instant::now();
    let err = sink
        .deliver(Arc::new(event(3, "order", "o-1", "{}")))
        .await
        .unwrap_err();
    assert!(matches!(err, DeliveryError::Retryable { .. }), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(sink.check(Duration::from_secs(2)).await.is_err());

    // Then once it is reachable again, delivery resumes.
    proxy.forward();
    deliver_until_ok(
        &sink,
        event(4, "order", "o-1", "{}"),
        Duration::from_secs(10),
    )
    .await;
    sink.check(Duration::from_secs(5)).await.unwrap();
    let ids: Vec<String> = admin
        .read("t5.all", 3, Duration::from_secs(5))
        .await
        .iter()
        .map(|m| m.message_id().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["1", "2", "4"]);
    admin.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_times_out_as_retryable_and_is_replaced() {
    // Given a sink with a 1 s delivery timeout, connected through a proxy.
    let node = node();
    let admin = node.admin().await;
    admin.topic_exchange("t6.outbox").await;
    admin.bound_queue("t6.all", "t6.outbox", "#").await;
    let proxy = Proxy::start(node.port()).await;
    let sink = sink(&proxy.url(), "t6.outbox", Duration::from_secs(1));
    sink.deliver(Arc::new(event(1, "order", "o-1", "{}")))
        .await
        .unwrap();

    // When the connection goes silent (no error, no answer), the delivery is retryable at
    // the timeout.
    proxy.stall_existing();
    let started = Instant::now();
    let err = sink
        .deliver(Arc::new(event(2, "order", "o-1", "{}")))
        .await
        .unwrap_err();
    assert!(matches!(err, DeliveryError::Retryable { .. }), "{err:?}");
    assert!(err.reason().contains("no confirm"), "{}", err.reason());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // Then the next delivery goes out on a new connection, not the silent one.
    deliver_until_ok(
        &sink,
        event(3, "order", "o-1", "{}"),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(proxy.accepted(), 2);
    let ids: Vec<String> = admin
        .read("t6.all", 2, Duration::from_secs(5))
        .await
        .iter()
        .map(|m| m.message_id().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["1", "3"], "event 2 never reached the broker");
    admin.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_verifies_the_broker_against_the_configured_ca() {
    // Given the node's TLS listener, whose certificate a test CA signed.
    let node = node();
    let admin = node.admin().await;
    admin.topic_exchange("t7.outbox").await;
    admin.bound_queue("t7.all", "t7.outbox", "#").await;

    // Without the CA, the broker's certificate is not trusted: retryable, and nothing sent.
    let untrusted = sink(&node.tls_url(), "t7.outbox", Duration::from_secs(5));
    let err = untrusted
        .deliver(Arc::new(event(1, "order", "o-1", "{}")))
        .await
        .unwrap_err();
    assert!(matches!(err, DeliveryError::Retryable { .. }), "{err:?}");
    assert!(
        err.reason().contains("amqps://127.0.0.1"),
        "{}",
        err.reason()
    );

    // With it, delivery over TLS works.
    let mut config = RabbitMqSinkConfig::new(node.tls_url());
    config.exchange_template = "t7.outbox".to_owned();
    config.ca_pem = Some(node.ca_pem().to_owned());
    let trusted = Sink::RabbitMq(RabbitMqSink::new(config).unwrap());
    trusted.check(Duration::from_secs(5)).await.unwrap();
    trusted
        .deliver(Arc::new(event(2, "order", "o-1", "{}")))
        .await
        .unwrap();
    let ids: Vec<String> = admin
        .read("t7.all", 2, Duration::from_secs(2))
        .await
        .iter()
        .map(|m| m.message_id().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["2"]);
    admin.close().await;
}

/// End to end: the relay streams rows from PostgreSQL to RabbitMQ. Rows whose routing key
/// has a binding become `done` and arrive with their payload as PostgreSQL renders it; a row
/// nothing is bound for becomes `dead` with the reason, without holding the others up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_delivers_rows_to_rabbitmq_and_marks_them_done() {
    let node = node();
    let admin = node.admin().await;
    admin.topic_exchange("e2e.outbox").await;
    admin
        .bound_queue("e2e.orders", "e2e.outbox", "order.#")
        .await;

    let cluster = TestCluster::start();
    let db = cluster.create_database("rabbit").await;
    let mut env = base_env(&cluster, &db);
    env.retain(|(k, _)| k != "DISPATCHBOX_SINKS");
    for (key, value) in [
        ("DISPATCHBOX_SINKS", "rabbitmq".to_owned()),
        ("DISPATCHBOX_RABBITMQ_URL", node.url()),
        ("DISPATCHBOX_RABBITMQ_EXCHANGE", "e2e.outbox".to_owned()),
        ("DISPATCHBOX_RABBITMQ_DELIVERY_TIMEOUT", "10s".to_owned()),
    ] {
        env.push((key.to_owned(), value));
    }
    migrate(&env);
    let client = cluster.connect(&db).await;
    let relay = start_streaming(&client, &env).await;

    // 300 order events in 3 transactions, then one invoice event nothing is bound for.
    for batch in 0..3 {
        client
            .execute(
                "INSERT INTO public.outbox_event
                     (aggregate_type, aggregate_id, event_type, payload, headers)
                 SELECT 'order', 'o-' || (g % 7), 'created',
                        jsonb_build_object('g', g, 'batch', $1::int, 'text', 'grüße'),
                        jsonb_build_object('traceparent', 'tp-' || g)
                 FROM generate_series(1, 100) g",
                &[&batch],
            )
            .await
            .unwrap();
    }
    client
        .execute(
            "INSERT INTO public.outbox_event (aggregate_type, aggregate_id, event_type, payload)
             VALUES ('invoice', 'i-1', 'created', '{}')",
            &[],
        )
        .await
        .unwrap();

    eventually(Duration::from_secs(60), "every row settled", || async {
        (count_status(&client, "done").await == 300 && count_status(&client, "dead").await == 1)
            .then_some(())
    })
    .await;
    let dead_reason: String = client
        .query_one(
            "SELECT last_error FROM public.outbox_event WHERE status = 'dead'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        dead_reason.contains("\"e2e.outbox\"") && dead_reason.contains("invoice.created"),
        "{dead_reason}"
    );

    let rows: HashMap<String, (String, String)> = client
        .query(
            "SELECT id::text, payload::text, aggregate_id FROM public.outbox_event
             WHERE aggregate_type = 'order'",
            &[],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    let received = admin.read("e2e.orders", 301, Duration::from_secs(5)).await;
    assert_eq!(received.len(), 300, "each order event once, nothing else");
    let mut last_per_aggregate: HashMap<String, i64> = HashMap::new();
    for message in &received {
        let id = message.message_id().unwrap();
        let (payload, aggregate_id) = &rows[id];
        assert_eq!(message.routing_key, "order.created");
        assert_eq!(message.body, payload.as_bytes(), "payload of {id}");
        assert!(message.header("traceparent").unwrap().starts_with("tp-"));
        let id: i64 = id.parse().unwrap();
        if let Some(previous) = last_per_aggregate.insert(aggregate_id.clone(), id) {
            assert!(previous < id, "{aggregate_id}: {id} after {previous}");
        }
    }
    drop(relay);
    admin.close().await;
}
