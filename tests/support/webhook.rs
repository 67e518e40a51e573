//! A real HTTP receiver for webhook tests: an axum server on `127.0.0.1:0` in the test's own
//! runtime that records every request (arrival time, method, path, headers, body, the
//! client's address) and answers as scripted.
//!
//! Scripting: every request gets the default status (200 unless changed) unless a [`Rule`]
//! claims it. Rules are tried in the order they were added; the first one that matches the
//! request and still has answers left answers it.
//!
//! ```ignore
//! let receiver = Receiver::start().await;
//! receiver.respond(Rule::for_aggregate("A").fail_times(2, 500)); // 500, 500, then default
//! receiver.respond(Rule::for_event(7).always(429).header("retry-after", "2"));
//! receiver.respond(Rule::any().delay(Duration::from_millis(300)));
//! ```

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;

/// Path the receiver's [`Receiver::url`] points at.
pub const HOOK_PATH: &str = "/hook";

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Request {
    /// When the request (headers and body) had arrived, before any scripted delay.
    pub arrived: Instant,
    /// The same moment on the wall clock.
    pub at: SystemTime,
    pub method: Method,
    /// Path and query.
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The client's address: its port tells connections apart.
    pub remote: SocketAddr,
}

impl Request {
    /// A header as text (`None` when absent or not visible ASCII).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body parsed as JSON; panics when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|err| {
            panic!(
                "webhook body is not json ({err}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The body's `aggregate_id`, when the body is JSON and has one.
    pub fn aggregate_id(&self) -> Option<String> {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()?
            .get("aggregate_id")?
            .as_str()
            .map(str::to_owned)
    }

    /// The `webhook-id` header.
    pub fn webhook_id(&self) -> Option<&str> {
        self.header("webhook-id")
    }
}

/// Which requests a rule applies to.
#[derive(Debug, Clone)]
enum Matcher {
    Any,
    Aggregate(String),
    WebhookId(String),
}

impl Matcher {
    fn matches(&self, request: &Request) -> bool {
        match self {
            Matcher::Any => true,
            Matcher::Aggregate(id) => request.aggregate_id().as_deref() == Some(id.as_str()),
            Matcher::WebhookId(id) => request.webhook_id() == Some(id.as_str()),
        }
    }
}

/// A scripted answer: which requests, what status, how often, after what delay, with which
/// extra headers. Built with the constructors and chained setters; answers 200 by default.
#[derive(Debug, Clone)]
pub struct Rule {
    matcher: Matcher,
    status: u16,
    /// `None`: forever.
    times: Option<usize>,
    delay: Duration,
    headers: Vec<(String, String)>,
}

impl Rule {
    fn new(matcher: Matcher) -> Self {
        Self {
            matcher,
            status: 200,
            times: None,
            delay: Duration::ZERO,
            headers: Vec::new(),
        }
    }

    /// Applies to every request.
    pub fn any() -> Self {
        Self::new(Matcher::Any)
    }

    /// Applies to requests whose body's `aggregate_id` is `aggregate_id`.
    pub fn for_aggregate(aggregate_id: &str) -> Self {
        Self::new(Matcher::Aggregate(aggregate_id.to_owned()))
    }

    /// Applies to requests whose `webhook-id` is `event_id`.
    pub fn for_event(event_id: i64) -> Self {
        Self::new(Matcher::WebhookId(event_id.to_string()))
    }

    /// Answers `status` to the first `times` matching requests, then stops applying.
    pub fn fail_times(mut self, times: usize, status: u16) -> Self {
        self.times = Some(times);
        self.status = status;
        self
    }

    /// Answers `status` to every matching request.
    pub fn always(mut self, status: u16) -> Self {
        self.times = None;
        self.status = status;
        self
    }

    /// Adds a response header (e.g. `retry-after`).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Waits this long before answering (the request is recorded on arrival).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Answers `302 Found` with `Location: location` to every matching request.
    pub fn redirect_to(self, location: &str) -> Self {
        self.always(302).header("location", location)
    }
}

#[derive(Debug)]
struct Shared {
    requests: Mutex<Vec<Request>>,
    /// Rules with the number of requests each has answered.
    rules: Mutex<Vec<(Rule, usize)>>,
    default_status: AtomicU16,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// Counts a request as in flight from arrival until its answer is handed back (or the
/// client gave up and the handler was dropped).
struct InFlight(Arc<Shared>);

impl InFlight {
    fn enter(shared: &Arc<Shared>) -> Self {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
        Self(Arc::clone(shared))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A running receiver; dropping it stops accepting connections.
#[derive(Debug)]
pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Binds `127.0.0.1:0` and serves in the current runtime.
    pub async fn start() -> Self {
        let shared = Arc::new(Shared {
            requests: Mutex::new(Vec::new()),
            rules: Mutex::new(Vec::new()),
            default_status: AtomicU16::new(200),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        });
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the webhook receiver");
        let addr = listener.local_addr().expect("receiver address");
        let server = tokio::spawn(async move {
            let service = app.into_make_service_with_connect_info::<SocketAddr>();
            if let Err(err) = axum::serve(listener, service).await {
                panic!("webhook receiver stopped: {err}");
            }
        });
        Self {
            addr,
            shared,
            server,
        }
    }

    /// The URL deliveries should go to (`http://127.0.0.1:PORT/hook`).
    pub fn url(&self) -> String {
        format!("http://{}{HOOK_PATH}", self.addr)
    }

    /// The receiver's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The status for requests no rule claims (initially 200).
    pub fn default_status(&self, status: u16) {
        self.shared.default_status.store(status, Ordering::SeqCst);
    }

    /// Adds a rule after the existing ones.
    pub fn respond(&self, rule: Rule) {
        self.shared.rules.lock().unwrap().push((rule, 0));
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Requests whose body's `aggregate_id` is `aggregate_id`, in arrival order.
    pub fn requests_for(&self, aggregate_id: &str) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.aggregate_id().as_deref() == Some(aggregate_id))
            .collect()
    }

    /// Waits until at least `n` requests arrived and returns them all; panics after
    /// `timeout` with what did arrive.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Request> {
        let deadline = Instant::now() + timeout;
        loop {
            let requests = self.requests();
            if requests.len() >= n {
                return requests;
            }
            assert!(
                Instant::now() < deadline,
                "webhook receiver got {} of {n} requests within {timeout:?}: {:?}",
                requests.len(),
                requests
                    .iter()
                    .map(|r| (r.webhook_id().map(str::to_owned), r.aggregate_id()))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The most requests that were being answered at the same moment.
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// Distinct client ports seen: one per connection the client opened.
    pub fn remote_ports(&self) -> BTreeSet<u16> {
        self.requests().iter().map(|r| r.remote.port()).collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let _in_flight = InFlight::enter(&shared);
    let request = Request {
        arrived: Instant::now(),
        at: SystemTime::now(),
        method,
        path: uri
            .path_and_query()
            .map_or_else(|| uri.path().to_owned(), |pq| pq.as_str().to_owned()),
        headers,
        body,
        remote,
    };
    let rule = {
        let mut rules = shared.rules.lock().unwrap();
        rules
            .iter_mut()
            .find(|(rule, answered)| {
                rule.matcher.matches(&request) && rule.times.is_none_or(|times| *answered < times)
            })
            .map(|(rule, answered)| {
                *answered += 1;
                rule.clone()
            })
    };
    shared.requests.lock().unwrap().push(request);

    let Some(rule) = rule else {
        let status = shared.default_status.load(Ordering::SeqCst);
        return StatusCode::from_u16(status).unwrap().into_response();
    };
    if !rule.delay.is_zero() {
        tokio::time::sleep(rule.delay).await;
    }
    let mut response = StatusCode::from_u16(rule.status).unwrap().into_response();
    for (name, value) in &rule.headers {
        response.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    response
}
