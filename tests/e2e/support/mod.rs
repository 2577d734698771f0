//! The harness every end-to-end test uses.
//!
//! - [`TestServer`] runs `backchannel::run` in-process on `127.0.0.1:0` with its own
//!   temporary data directory, so tests are independent and run in parallel.
//! - [`ServerProcess`] spawns the real binary (for kill -9 and SIGTERM).
//! - [`token`]: tokens for every role, and the malformed ones.
//! - [`Http`]: a reqwest client that returns status and body text (so leak tests can
//!   search every byte).
//! - [`Client`]: a WebSocket client with `hello`, `request`, `sync`, `next_event`, ...
//!
//! Every wait is bounded by [`STEP`] or an explicit timeout: a hung server fails the test.

#![allow(dead_code)]

pub mod client;
pub mod process;
pub mod token;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use client::{connect, note_frame, send_frame, ty, Client, ConnectOptions};
pub use process::ServerProcess;
pub use token::*;

/// The longest any single step (an answer, a frame, a request) may take.
pub const STEP: Duration = Duration::from_secs(10);
/// How long we listen to be confident a frame is *not* coming, after a sync barrier.
pub const QUIET: Duration = Duration::from_millis(300);

/// A fresh unique string, for markers and client ids.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// A server running in this process.
pub struct TestServer {
    pub addr: SocketAddr,
    pub http: Http,
    dir: TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), backchannel::ServerError>>>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a server after `configure` has adjusted the test configuration.
    pub async fn start_with(configure: impl FnOnce(&mut backchannel::Config)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = backchannel::Config::for_tests(dir.path().to_path_buf(), SECRET);
        configure(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(backchannel::run(config, listener, async move {
            let _ = rx.await;
        }));
        let mut server = TestServer {
            addr,
            http: Http::new(addr),
            dir,
            shutdown: Some(tx),
            task: Some(task),
        };
        server.wait_healthy().await;
        server
    }

    async fn wait_healthy(&mut self) {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            if self.task.as_ref().is_some_and(|t| t.is_finished()) {
                let result = self.task.take().unwrap().await;
                panic!("server stopped while starting: {result:?}");
            }
            if let Ok(Ok(resp)) = tokio::time::timeout(
                Duration::from_secs(1),
                self.http
                    .client
                    .get(format!("{}/healthz", self.http.base))
                    .send(),
            )
            .await
            {
                if resp.status().is_success() {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "server not healthy within {STEP:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn data_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Resolves the shutdown future and waits for `run` to return.
    pub async fn shutdown(mut self) -> Result<(), backchannel::ServerError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let task = self.task.take().expect("server task");
        tokio::time::timeout(STEP, task)
            .await
            .expect("run did not return within 10 s of shutdown")
            .expect("server task panicked")
    }

    /// A socket that has not said hello yet.
    pub async fn connect(&self) -> Client {
        connect(self.addr, ConnectOptions::default())
            .await
            .unwrap_or_else(|e| panic!("WebSocket upgrade failed: {e:?}"))
    }

    /// A socket after `hello` with `token` (the welcome has been checked and consumed).
    pub async fn client(&self, token: &str) -> Client {
        let mut client = self.connect().await;
        client.hello(token).await;
        client
    }

    /// A socket after `hello` whose receive window is 8 KiB: while it reads nothing, what
    /// the server writes to it backs up into its queue almost at once.
    pub async fn narrow_client(&self, token: &str) -> Client {
        let mut client = connect(
            self.addr,
            ConnectOptions {
                recv_buffer: Some(8 * 1024),
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("WebSocket upgrade failed: {e:?}"));
        client.hello(token).await;
        client
    }

    pub async fn open(&self, token: &str, inbox: &str, contact: Option<&str>) -> Value {
        self.http.open(token, inbox, contact).await
    }

    pub async fn open_as_customer(&self, customer_token: &str) -> String {
        self.http.open_as_customer(customer_token).await
    }

    pub async fn history_page(
        &self,
        token: &str,
        conversation: &str,
        after: u64,
        limit: u64,
    ) -> Reply {
        self.http
            .history_page(token, conversation, after, limit)
            .await
    }

    pub async fn history(&self, token: &str, conversation: &str) -> History {
        self.http.history(token, conversation).await
    }

    pub async fn head(&self, token: &str, conversation: &str) -> u64 {
        self.http.head(token, conversation).await
    }

    pub async fn conversation(&self, token: &str, conversation: &str) -> Reply {
        self.http.conversation(token, conversation).await
    }

    pub async fn list(&self, token: &str, query: &str) -> Reply {
        self.http.list(token, query).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A stream's history as HTTP returned it.
#[derive(Debug, Default)]
pub struct History {
    /// `[{seq, event}]`, oldest first.
    pub events: Vec<Value>,
    pub head: u64,
    /// The raw body of every page.
    pub texts: Vec<String>,
}

impl History {
    pub fn seqs(&self) -> Vec<u64> {
        self.events
            .iter()
            .map(|e| e["seq"].as_u64().expect("seq"))
            .collect()
    }
    pub fn kinds(&self) -> Vec<String> {
        self.events
            .iter()
            .map(|e| e["event"]["kind"].as_str().unwrap_or("").to_owned())
            .collect()
    }
    pub fn bodies(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| e["event"]["body"].as_str().map(str::to_owned))
            .collect()
    }
}

/// The items of a conversation list, whether the body is an array or an object holding
/// one (the contract does not fix the envelope).
pub fn list_items(body: &Value) -> Vec<Value> {
    if let Some(items) = body.as_array() {
        return items.clone();
    }
    for key in ["conversations", "items", "data"] {
        if let Some(items) = body.get(key).and_then(Value::as_array) {
            return items.clone();
        }
    }
    panic!("a conversation list should be an array or hold one: {body}");
}

/// The `seq`s of `event` frames (or history entries).
pub fn seqs(frames: &[Value]) -> Vec<u64> {
    frames
        .iter()
        .map(|f| f["seq"].as_u64().unwrap_or_else(|| panic!("no seq in {f}")))
        .collect()
}

/// Asserts that every frame is an `event`.
pub fn all_events(frames: &[Value]) {
    for frame in frames {
        assert_eq!(ty(frame), "event", "expected only events, got {frame}");
    }
}

/// `from..=to` as a Vec, for comparing seq lists.
pub fn range(from: u64, to: u64) -> Vec<u64> {
    (from..=to).collect()
}

/// A counter's value in a Prometheus text exposition (`/metrics`), 0 if it is not there.
pub fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// The keys of a JSON object.
pub fn keys(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("expected an object, got {value}"))
        .keys()
        .cloned()
        .collect()
}

/// A response, read whole.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}), status {}: {}",
                self.status, self.text
            )
        })
    }

    /// The `error.code` of an error body (checking its shape).
    pub fn error_code(&self) -> String {
        let body = self.json();
        let error = &body["error"];
        assert!(
            error["code"].is_string() && error["message"].is_string(),
            "error body should be {{\"error\": {{code, message}}}}: {}",
            self.text
        );
        error["code"].as_str().unwrap().to_owned()
    }

    /// Asserts status and error code.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(
            self.status, status,
            "expected {status} {code}, got: {}",
            self.text
        );
        assert_eq!(self.error_code(), code, "body: {}", self.text);
    }
}

/// HTTP against one server.
#[derive(Clone)]
pub struct Http {
    pub client: reqwest::Client,
    pub base: String,
}

impl Http {
    pub fn new(addr: SocketAddr) -> Self {
        let client = reqwest::Client::builder()
            .timeout(STEP)
            .no_proxy()
            .build()
            .expect("reqwest client");
        Http {
            client,
            base: format!("http://{addr}"),
        }
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.expect("HTTP request failed");
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let text = response.text().await.expect("HTTP body");
        Reply {
            status,
            content_type,
            text,
        }
    }

    fn with_auth(request: reqwest::RequestBuilder, token: Option<&str>) -> reqwest::RequestBuilder {
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        let request = self.client.get(format!("{}{path}", self.base));
        self.send(Self::with_auth(request, token)).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Reply {
        let request = self.client.post(format!("{}{path}", self.base)).json(body);
        self.send(Self::with_auth(request, token)).await
    }

    pub async fn put(&self, path: &str, token: Option<&str>, body: &Value) -> Reply {
        let request = self.client.put(format!("{}{path}", self.base)).json(body);
        self.send(Self::with_auth(request, token)).await
    }

    /// `POST /v1/conversations` into `inbox` as `token`; must answer 201. Returns the body.
    pub async fn open(&self, token: &str, inbox: &str, contact: Option<&str>) -> Value {
        let mut body = json!({"inbox_id": inbox, "subject": "Where is my order?"});
        if let Some(contact) = contact {
            body["contact_id"] = json!(contact);
        }
        let reply = self.post("/v1/conversations", Some(token), &body).await;
        assert_eq!(reply.status, 201, "opening a conversation: {}", reply.text);
        reply.json()
    }

    /// A customer opens a conversation in `support`; returns its id.
    pub async fn open_as_customer(&self, customer_token: &str) -> String {
        let view = self.open(customer_token, "support", None).await;
        view["id"].as_str().expect("conversation id").to_owned()
    }

    /// `GET .../events?after=&limit=`; must answer 200.
    pub async fn history_page(
        &self,
        token: &str,
        conversation: &str,
        after: u64,
        limit: u64,
    ) -> Reply {
        let reply = self
            .get(
                &format!("/v1/conversations/{conversation}/events?after={after}&limit={limit}"),
                Some(token),
            )
            .await;
        assert_eq!(reply.status, 200, "history: {}", reply.text);
        reply
    }

    /// The whole history of the caller's stream, paged, and every reply's text.
    pub async fn history(&self, token: &str, conversation: &str) -> History {
        let mut history = History::default();
        let mut after = 0;
        loop {
            let reply = self.history_page(token, conversation, after, 1000).await;
            let page = reply.json();
            history.texts.push(reply.text.clone());
            let events = page["events"].as_array().expect("events array").clone();
            history.head = page["head"].as_u64().expect("head");
            if events.is_empty() {
                return history;
            }
            after = events.last().unwrap()["seq"].as_u64().expect("seq");
            history.events.extend(events);
            if after >= history.head {
                return history;
            }
        }
    }

    /// The head of the caller's stream, from HTTP history.
    pub async fn head(&self, token: &str, conversation: &str) -> u64 {
        let reply = self.history_page(token, conversation, 0, 1).await;
        reply.json()["head"].as_u64().expect("head")
    }

    /// `GET /v1/conversations/{id}`; must answer 200.
    pub async fn conversation(&self, token: &str, conversation: &str) -> Reply {
        let reply = self
            .get(&format!("/v1/conversations/{conversation}"), Some(token))
            .await;
        assert_eq!(reply.status, 200, "conversation view: {}", reply.text);
        reply
    }

    /// `GET /v1/conversations?query`; must answer 200.
    pub async fn list(&self, token: &str, query: &str) -> Reply {
        let path = if query.is_empty() {
            "/v1/conversations".to_owned()
        } else {
            format!("/v1/conversations?{query}")
        };
        let reply = self.get(&path, Some(token)).await;
        assert_eq!(reply.status, 200, "list: {}", reply.text);
        reply
    }

    /// A request with a raw body (for invalid JSON and oversize bodies).
    pub async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> Reply {
        let request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        self.send(Self::with_auth(request, token)).await
    }
}
