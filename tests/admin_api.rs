//! The dead-letter HTTP API (`/api/dead-events`) served by a real axum server over a real
//! PostgreSQL database: bearer-token auth, the API switched off without a token, listing
//! with filters and paging, statistics, single events, retries (single, batch, dry run) and
//! the OpenAPI document.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;

use reqwest::StatusCode;
use serde_json::{json, Value};

use dispatchbox::admin::api;
use dispatchbox::conninfo::ConnInfo;
use dispatchbox::names::Names;
use dispatchbox::secret::Secret;
use dispatchbox::store::Store;
use support::postgres::TestCluster;
use support::store::count_status;

const TOKEN: &str = "test-admin-token-0123456789";
const TABLE: &str = "public.outbox_event";

struct Api {
    _cluster: TestCluster,
    client: tokio_postgres::Client,
    base: String,
    http: reqwest::Client,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Api {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Api {
    /// A migrated database and the API mounted at `/api` with `token`.
    async fn start(token: Option<&str>) -> Self {
        let cluster = TestCluster::start();
        let db = cluster.create_database("api").await;
        let conninfo: ConnInfo = cluster.superuser_url(&db).parse().unwrap();
        let names = Names::new(TABLE.parse().unwrap(), "dispatchbox".parse().unwrap()).unwrap();
        let store = Store::new(conninfo.pool(4).unwrap(), names.table().clone());
        store.migrate(&names).await.unwrap();
        let app = axum::Router::new().nest(
            "/api",
            api::router(store, None, token.map(|t| Secret::new(t.to_owned()))),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = cluster.connect(&db).await;
        Api {
            _cluster: cluster,
            client,
            base: format!("http://{addr}/api"),
            http: reqwest::Client::new(),
            server,
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        auth: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{path}: answer is not JSON ({e}): {text:?}"));
        (status, value)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(
            reqwest::Method::GET,
            path,
            Some(&format!("Bearer {TOKEN}")),
            None,
        )
        .await
    }

    async fn post(&self, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call(
            reqwest::Method::POST,
            path,
            Some(&format!("Bearer {TOKEN}")),
            body,
        )
        .await
    }

    /// Inserts a row in `status` (dead rows get an error and a failure time).
    async fn insert(
        &self,
        status: &str,
        aggregate: (&str, &str),
        event_type: &str,
        failed_at: &str,
    ) -> i64 {
        self.client
            .query_one(
                &format!(
                    "INSERT INTO {TABLE} (aggregate_type, aggregate_id, event_type, payload,
                                          headers, status, attempts, last_error, last_error_at,
                                          next_run_at)
                     VALUES ($1, $2, $3, jsonb_build_object('n', $2::text, 'note', 'grüße'),
                             '{{\"traceparent\": \"00-abc-01\"}}', $4, 3,
                             'webhook answered 400 Bad Request', $5::text::timestamptz,
                             now() + interval '1 hour')
                     RETURNING id"
                ),
                &[&aggregate.0, &aggregate.1, &event_type, &status, &failed_at],
            )
            .await
            .unwrap()
            .get(0)
    }

    async fn row(&self, id: i64) -> (String, i32, Option<String>, bool, Option<String>) {
        let r = self
            .client
            .query_one(
                &format!(
                    "SELECT status, attempts, last_error, next_run_at <= now(), claim_token
                       FROM {TABLE} WHERE id = $1"
                ),
                &[&id],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))
    }
}

fn ids(page: &Value) -> Vec<i64> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect()
}

fn error_text(body: &Value) -> &str {
    body["error"].as_str().unwrap()
}

/// Four dead rows over two event and aggregate types, and rows in other states that the
/// API must never show or touch. Returns (dead ids, other ids).
async fn seed(api: &Api) -> (Vec<i64>, Vec<i64>) {
    let a = api
        .insert(
            "dead",
            ("order", "o1"),
            "order.placed",
            "2024-01-01T00:00:00Z",
        )
        .await;
    let b = api
        .insert(
            "dead",
            ("order", "o2"),
            "order.placed",
            "2024-02-01T00:00:00Z",
        )
        .await;
    let c = api
        .insert(
            "dead",
            ("order", "o3"),
            "order.cancelled",
            "2024-03-01T00:00:00Z",
        )
        .await;
    let d = api
        .insert(
            "dead",
            ("invoice", "i1"),
            "invoice.issued",
            "2024-04-01T00:00:00Z",
        )
        .await;
    let done = api
        .insert(
            "done",
            ("order", "o4"),
            "order.placed",
            "2024-01-15T00:00:00Z",
        )
        .await;
    let retry = api
        .insert(
            "retry",
            ("order", "o5"),
            "order.placed",
            "2024-01-15T00:00:00Z",
        )
        .await;
    (vec![a, b, c, d], vec![done, retry])
}

#[tokio::test]
async fn every_call_needs_the_bearer_token() {
    let api = Api::start(Some(TOKEN)).await;
    seed(&api).await;
    let get = |auth: Option<String>| {
        let api = &api;
        async move {
            api.call(reqwest::Method::GET, "/dead-events", auth.as_deref(), None)
                .await
        }
    };

    let response = api
        .http
        .get(format!("{}/dead-events", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        response.headers().get("www-authenticate").unwrap(),
        "Bearer"
    );

    for wrong in [
        None,
        Some(format!("Bearer {TOKEN}x")),
        Some("Bearer short".to_owned()),
        Some("Bearer ".to_owned()),
        Some(format!("Basic {TOKEN}")),
        Some(TOKEN.to_owned()),
    ] {
        let (status, body) = get(wrong.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{wrong:?}");
        assert!(!error_text(&body).is_empty());
        assert!(!body.to_string().contains(TOKEN), "the token is echoed");
    }
    let (status, _) = api
        .call(
            reqwest::Method::POST,
            "/dead-events/retry",
            Some("Bearer nope"),
            Some(json!({"all": true})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = api
        .call(reqwest::Method::GET, "/dead-events/stats", None, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // The refused retry changed nothing.
    assert_eq!(count_status(&api.client, "dead").await, 4);

    for good in [format!("Bearer {TOKEN}"), format!("bearer {TOKEN}")] {
        let (status, body) = get(Some(good)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ids(&body).len(), 4);
    }
}

#[tokio::test]
async fn without_a_configured_token_the_api_is_off() {
    let api = Api::start(None).await;
    let (dead, _) = seed(&api).await;
    for (method, path) in [
        (reqwest::Method::GET, "/dead-events".to_owned()),
        (reqwest::Method::GET, "/dead-events/stats".to_owned()),
        (reqwest::Method::GET, format!("/dead-events/{}", dead[0])),
        (
            reqwest::Method::POST,
            format!("/dead-events/{}/retry", dead[0]),
        ),
        (reqwest::Method::POST, "/dead-events/retry".to_owned()),
    ] {
        for auth in [None, Some(format!("Bearer {TOKEN}"))] {
            let (status, body) = api
                .call(
                    method.clone(),
                    &path,
                    auth.as_deref(),
                    Some(json!({"all": true})),
                )
                .await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}");
            assert!(
                error_text(&body).contains("DISPATCHBOX_ADMIN_TOKEN"),
                "{body}"
            );
        }
    }
    assert_eq!(api.row(dead[0]).await.0, "dead");
    // The document needs no token.
    let (status, doc) = api
        .call(reqwest::Method::GET, "/openapi.json", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
}

#[tokio::test]
async fn list_stats_show_retry_and_openapi() {
    let api = Api::start(Some(TOKEN)).await;
    let (dead, others) = seed(&api).await;
    let (done, retry) = (others[0], others[1]);

    // List: only dead rows, in id order, without payloads.
    let (status, page) = api.get("/dead-events").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&page), dead);
    assert_eq!(page["next_after_id"], Value::Null);
    let first = &page["events"][0];
    assert_eq!(first["aggregate_type"], "order");
    assert_eq!(first["aggregate_id"], "o1");
    assert_eq!(first["event_type"], "order.placed");
    assert_eq!(first["attempts"], 3);
    assert_eq!(first["last_error"], "webhook answered 400 Bad Request");
    assert_eq!(first["last_error_at"], "2024-01-01T00:00:00Z");
    assert!(first.get("payload").is_none(), "{first}");

    // Filters.
    let (_, p) = api.get("/dead-events?event_type=order.placed").await;
    assert_eq!(ids(&p), dead[..2]);
    let (_, p) = api.get("/dead-events?aggregate_type=invoice").await;
    assert_eq!(ids(&p), dead[3..]);
    let (_, p) = api
        .get("/dead-events?since=2024-02-01T00:00:00Z&until=2024-04-01")
        .await;
    assert_eq!(ids(&p), dead[1..3], "since inclusive, until exclusive");
    // An offset written with an unencoded `+` (decoded to a space) still means the offset.
    let (status, p) = api
        .get("/dead-events?since=2024-02-01T01:00:00+01:00&until=2024-03-01T00:00:00%2B00:00")
        .await;
    assert_eq!(status, StatusCode::OK, "{p}");
    assert_eq!(ids(&p), dead[1..2]);
    let (_, p) = api.get("/dead-events?since=1h").await;
    assert_eq!(ids(&p), Vec::<i64>::new());
    let (_, p) = api
        .get("/dead-events?aggregate_type=order&event_type=order.cancelled")
        .await;
    assert_eq!(ids(&p), dead[2..3]);

    // Paging: limit 3 then the rest; no overlap, nothing missing.
    let (_, p1) = api.get("/dead-events?limit=3").await;
    assert_eq!(ids(&p1), dead[..3]);
    assert_eq!(p1["next_after_id"], dead[2]);
    let (_, p2) = api
        .get(&format!("/dead-events?limit=3&after_id={}", dead[2]))
        .await;
    assert_eq!(ids(&p2), dead[3..]);
    assert_eq!(p2["next_after_id"], Value::Null);

    // Invalid parameters: 400 naming the parameter.
    for (query, name) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("after_id=x", "after_id"),
        ("since=yesterday", "since"),
        ("until=2024-13-01", "until"),
        ("event-type=x", "event-type"),
        ("limit=1&limit=2", "limit"),
    ] {
        let (status, body) = api.get(&format!("/dead-events?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert!(
            error_text(&body).contains(&format!("\"{name}\"")),
            "{query}: {body}"
        );
    }
    let (status, body) = api.get("/dead-events/stats?limit=3").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // Stats.
    let (status, stats) = api.get("/dead-events/stats").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stats["total"], 4);
    assert_eq!(
        stats["by_event_type"],
        json!([
            {"name": "order.placed", "count": 2},
            {"name": "invoice.issued", "count": 1},
            {"name": "order.cancelled", "count": 1},
        ])
    );
    assert_eq!(
        stats["by_aggregate_type"],
        json!([{"name": "order", "count": 3}, {"name": "invoice", "count": 1}])
    );
    assert_eq!(stats["oldest_failed_at"], "2024-01-01T00:00:00Z");
    assert_eq!(stats["newest_failed_at"], "2024-04-01T00:00:00Z");
    let (_, stats) = api.get("/dead-events/stats?aggregate_type=nothing").await;
    assert_eq!(
        stats,
        json!({"total": 0, "by_event_type": [], "by_aggregate_type": [], "by_last_error": [],
               "oldest_failed_at": null, "newest_failed_at": null})
    );

    // The last-error filter (the text as written, `%` and `_` included, ignoring case) and
    // the causes, largest first.
    api.client
        .execute(
            &format!(
                "UPDATE {TABLE} SET last_error = 'Kafka: 50% of_partitions down' WHERE id = $1"
            ),
            &[&dead[3]],
        )
        .await
        .unwrap();
    let (_, p) = api.get("/dead-events?error=KAFKA:%2050%25").await;
    assert_eq!(ids(&p), dead[3..]);
    let (_, p) = api.get("/dead-events?error=50_").await;
    assert_eq!(ids(&p), Vec::<i64>::new(), "_ is not a wildcard");
    let (_, p) = api
        .get("/dead-events?error=400%20bad&event_type=order.placed")
        .await;
    assert_eq!(ids(&p), dead[..2]);
    let (_, stats) = api.get("/dead-events/stats").await;
    assert_eq!(
        stats["by_last_error"],
        json!([
            {"name": "webhook answered 400 Bad Request", "count": 3},
            {"name": "Kafka: 50% of_partitions down", "count": 1},
        ])
    );
    let (_, stats) = api.get("/dead-events/stats?error=kafka").await;
    assert_eq!(stats["total"], 1);

    // Show.
    let (status, event) = api.get(&format!("/dead-events/{}", dead[1])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(event["id"], dead[1]);
    assert_eq!(event["payload"], json!({"n": "o2", "note": "grüße"}));
    assert_eq!(event["headers"], json!({"traceparent": "00-abc-01"}));
    assert_eq!(event["last_error"], "webhook answered 400 Bad Request");
    for id in [done, retry, 999_999] {
        let (status, body) = api.get(&format!("/dead-events/{id}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{id}");
        assert!(error_text(&body).contains(&id.to_string()));
    }
    let (status, body) = api.get("/dead-events/abc").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_text(&body).contains("\"id\""), "{body}");
    let (status, body) = api.get("/no-such-thing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error_text(&body).contains("/no-such-thing"), "{body}");

    // Retry one: pending and due now, attempts reset, error kept; a second retry finds it
    // not dead.
    let (status, body) = api
        .post(&format!("/dead-events/{}/retry", dead[0]), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"retried": [dead[0]], "dry_run": false}));
    let (status, attempts, last_error, due, token) = api.row(dead[0]).await;
    assert_eq!(
        (status.as_str(), attempts, due, token),
        ("pending", 0, true, None)
    );
    assert_eq!(
        last_error.as_deref(),
        Some("webhook answered 400 Bad Request")
    );
    let (status, _) = api
        .post(&format!("/dead-events/{}/retry", dead[0]), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api.post(&format!("/dead-events/{done}/retry"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(api.row(done).await.0, "done");

    // Batch: a dry run changes nothing.
    let (status, body) = api
        .post(
            "/dead-events/retry",
            Some(json!({"filter": {"aggregate_type": "order"}, "dry_run": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"retried": [dead[1], dead[2]], "dry_run": true})
    );
    assert_eq!(api.row(dead[1]).await.0, "dead");
    assert_eq!(api.row(dead[2]).await.0, "dead");

    // Batch by ids: rows that are not dead are left alone.
    let (status, body) = api
        .post(
            "/dead-events/retry",
            Some(json!({"ids": [dead[1], done, retry]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"retried": [dead[1]], "dry_run": false}));
    assert_eq!(api.row(done).await.0, "done");
    let (_, attempts, _, due, _) = api.row(retry).await;
    assert_eq!((attempts, due), (3, false), "a retry row was touched");

    // Batch: selections that would mean "everything" by accident, and malformed bodies.
    for body in [
        json!({}),
        json!({"ids": []}),
        json!({"filter": {}}),
        json!({"all": false}),
        json!({"ids": [1], "all": true}),
        json!({"filter": {"since": "soon"}}),
        json!({"filter": {"event_typ": "x"}}),
        json!({"ids": "1"}),
    ] {
        let (status, response) = api.post("/dead-events/retry", Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {response}");
        assert!(!error_text(&response).is_empty());
    }
    let response = api
        .http
        .post(format!("{}/dead-events/retry", api.base))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert!(!error_text(&body).is_empty());

    // Batch by filter, then all that remain.
    let (_, body) = api
        .post(
            "/dead-events/retry",
            Some(json!({"filter": {"error": "kafka"}, "dry_run": true})),
        )
        .await;
    assert_eq!(body["retried"], json!([dead[3]]));
    let (_, body) = api
        .post(
            "/dead-events/retry",
            Some(json!({"filter": {"event_type": "order.cancelled"}})),
        )
        .await;
    assert_eq!(body["retried"], json!([dead[2]]));
    let (_, body) = api
        .post("/dead-events/retry", Some(json!({"all": true})))
        .await;
    assert_eq!(body["retried"], json!([dead[3]]));
    let (_, page) = api.get("/dead-events").await;
    assert_eq!(ids(&page), Vec::<i64>::new());

    // Any event by id (the console's detail view), the statuses of a set of events (how the
    // console follows a retry), and the counts per status.
    let (status, event) = api.get(&format!("/events/{done}")).await;
    assert_eq!(status, StatusCode::OK, "{event}");
    assert_eq!(event["status"], "done");
    assert_eq!(event["id"], done);
    assert_eq!(event["payload"]["n"], "o4");
    assert_eq!(event["headers"], json!({"traceparent": "00-abc-01"}));
    let (status, event) = api.get(&format!("/events/{}", dead[0])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(event["status"], "pending");
    assert!(event["next_run_at"].is_string(), "{event}");
    let (status, body) = api.get("/events/999999").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error_text(&body).contains("999999"), "{body}");
    let (status, body) = api
        .post(
            "/events/statuses",
            Some(json!({"ids": [done, retry, dead[0], dead[1], 999_999]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"by_status": {"done": 1, "pending": 2, "retry": 1}})
    );
    let (status, body) = api
        .post("/events/statuses", Some(json!({"ids": vec![1; 10_001]})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_text(&body).contains("10000"), "{body}");
    let (status, overview) = api.get("/overview").await;
    assert_eq!(status, StatusCode::OK, "{overview}");
    assert_eq!(
        overview["counts"],
        json!({"pending": 4, "retry": 1, "processing": 0, "dead": 0, "done": 1,
               "done_more": false, "done_estimate": 1})
    );

    // The OpenAPI document parses and lists every route.
    let (status, doc) = api.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths: BTreeSet<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let expected: BTreeSet<&str> = [
        "/dead-events",
        "/dead-events/stats",
        "/dead-events/{id}",
        "/dead-events/{id}/retry",
        "/dead-events/retry",
        "/openapi.json",
        "/replay",
        "/overview",
        "/events/{id}",
        "/events/statuses",
    ]
    .into();
    assert_eq!(paths, expected);
    assert_eq!(
        doc["paths"]["/dead-events/retry"]["post"]["operationId"],
        "retryDeadEvents"
    );
    assert_eq!(doc["servers"][0]["url"], "/api");
}
