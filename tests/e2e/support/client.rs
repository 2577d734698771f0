//! A WebSocket client for tests, over tokio-tungstenite.
//!
//! It keeps every byte the server sent (`transcript`) so leak tests can search all of it,
//! buffers frames that arrive while it waits for an answer, and never waits without a
//! deadline: a hung server fails the test with a message instead of hanging it.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use super::STEP;

/// How the server ended the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Closed {
    /// The close code, or `None` if the connection ended without a close frame.
    pub code: Option<u16>,
    pub reason: String,
}

/// Why a connection attempt failed.
#[derive(Debug)]
pub enum ConnectError {
    /// The server answered the upgrade with this HTTP status instead of 101.
    Status(u16, String),
    Other(String),
}

impl ConnectError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ConnectError::Status(s, _) => Some(*s),
            ConnectError::Other(_) => None,
        }
    }
}

/// Options for opening a socket.
#[derive(Clone, Debug, Default)]
pub struct ConnectOptions {
    pub origin: Option<String>,
    /// SO_RCVBUF for the client's TCP socket, to make a slow reader fill up quickly.
    pub recv_buffer: Option<u32>,
}

enum Incoming {
    Frame(Value),
    Closed(Closed),
    Timeout,
}

pub struct Client {
    ws: WebSocketStream<TcpStream>,
    pending: VecDeque<Value>,
    transcript: Vec<String>,
    closed: Option<Closed>,
    next_ref: u64,
    /// How many `ok`/`error` frames arrived for each `ref` (keyed by the ref's JSON text).
    answers: HashMap<String, usize>,
    /// `presence` frames, which every other method skips.
    presence: Vec<Value>,
}

pub async fn connect(addr: SocketAddr, options: ConnectOptions) -> Result<Client, ConnectError> {
    let socket = TcpSocket::new_v4().map_err(|e| ConnectError::Other(e.to_string()))?;
    if let Some(size) = options.recv_buffer {
        socket
            .set_recv_buffer_size(size)
            .map_err(|e| ConnectError::Other(e.to_string()))?;
    }
    let stream = tokio::time::timeout(STEP, socket.connect(addr))
        .await
        .map_err(|_| ConnectError::Other("TCP connect timed out".into()))?
        .map_err(|e| ConnectError::Other(e.to_string()))?;
    let mut request = format!("ws://{addr}/v1/ws")
        .into_client_request()
        .expect("valid request");
    if let Some(origin) = &options.origin {
        request.headers_mut().insert(
            "Origin",
            HeaderValue::from_str(origin).expect("origin header"),
        );
    }
    let handshake = tokio::time::timeout(STEP, tokio_tungstenite::client_async(request, stream))
        .await
        .map_err(|_| ConnectError::Other("WebSocket handshake timed out".into()))?;
    match handshake {
        Ok((ws, _response)) => Ok(Client {
            ws,
            pending: VecDeque::new(),
            transcript: Vec::new(),
            closed: None,
            next_ref: 0,
            answers: HashMap::new(),
            presence: Vec::new(),
        }),
        Err(tungstenite::Error::Http(response)) => {
            let body = response
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Err(ConnectError::Status(response.status().as_u16(), body))
        }
        Err(e) => Err(ConnectError::Other(e.to_string())),
    }
}

/// The `type` of a frame ("" if it has none).
pub fn ty(frame: &Value) -> &str {
    frame.get("type").and_then(Value::as_str).unwrap_or("")
}

impl Client {
    // ---- sending ---------------------------------------------------------------------

    pub async fn send_text(&mut self, text: impl Into<String>) {
        let text: String = text.into();
        tokio::time::timeout(STEP, self.ws.send(Message::text(text)))
            .await
            .expect("sending a frame timed out")
            .expect("sending a frame failed");
    }

    /// Like `send_text` but reports failure instead of panicking (for sockets that may be
    /// closed by the server under the test's feet).
    pub async fn try_send_text(&mut self, text: impl Into<String>) -> Result<(), String> {
        let text: String = text.into();
        match tokio::time::timeout(STEP, self.ws.send(Message::text(text))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("send timed out".into()),
        }
    }

    /// Writes `bytes` to the TCP stream under the WebSocket as they are: frames the
    /// WebSocket library would never send (reserved bits, unknown opcodes, bad UTF-8).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        tokio::time::timeout(STEP, self.ws.get_mut().write_all(bytes))
            .await
            .expect("writing raw bytes timed out")
            .expect("writing raw bytes failed");
    }

    pub async fn send_json(&mut self, frame: &Value) {
        self.send_text(frame.to_string()).await
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        tokio::time::timeout(STEP, self.ws.send(Message::binary(bytes)))
            .await
            .expect("sending a frame timed out")
            .expect("sending a frame failed");
    }

    // ---- receiving -------------------------------------------------------------------

    async fn recv(&mut self, deadline: Instant) -> Incoming {
        if let Some(closed) = &self.closed {
            return Incoming::Closed(closed.clone());
        }
        loop {
            let next = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Incoming::Timeout,
                Ok(next) => next,
            };
            let message = match next {
                None => return self.set_closed(None, "connection ended without a close frame"),
                Some(Err(e)) => return self.set_closed(None, &format!("transport error: {e}")),
                Some(Ok(message)) => message,
            };
            match message {
                Message::Text(text) => {
                    let text = text.as_str().to_owned();
                    self.transcript.push(text.clone());
                    let frame: Value = serde_json::from_str(&text)
                        .unwrap_or_else(|e| panic!("server sent non-JSON text ({e}): {text}"));
                    assert!(frame.is_object(), "server sent a non-object frame: {text}");
                    if ty(&frame) == "presence" {
                        // Ambient viewer lists for staff: kept aside so that tests about
                        // events and answers are not disturbed by them (leak tests check
                        // the transcript, which has everything).
                        self.presence.push(frame);
                        continue;
                    }
                    if matches!(ty(&frame), "ok" | "error") {
                        if let Some(r) = frame.get("ref") {
                            *self.answers.entry(r.to_string()).or_default() += 1;
                        }
                    }
                    return Incoming::Frame(frame);
                }
                Message::Binary(bytes) => {
                    let text = String::from_utf8_lossy(&bytes).into_owned();
                    self.transcript.push(text.clone());
                    panic!("server sent a binary frame: {text}");
                }
                Message::Close(frame) => {
                    let (code, reason) = match frame {
                        Some(f) => (Some(u16::from(f.code)), f.reason.as_str().to_owned()),
                        None => (None, String::new()),
                    };
                    self.transcript.push(reason.clone());
                    let code_or_none = code;
                    self.closed = Some(Closed {
                        code: code_or_none,
                        reason,
                    });
                    return Incoming::Closed(self.closed.clone().unwrap());
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            }
        }
    }

    fn set_closed(&mut self, code: Option<u16>, reason: &str) -> Incoming {
        let closed = Closed {
            code,
            reason: reason.to_owned(),
        };
        self.closed = Some(closed.clone());
        Incoming::Closed(closed)
    }

    /// The next frame (buffered first), or `None` if none arrives within `timeout`.
    /// Panics if the socket closes.
    pub async fn try_next_frame(&mut self, timeout: Duration) -> Option<Value> {
        if let Some(frame) = self.pending.pop_front() {
            return Some(frame);
        }
        match self.recv(Instant::now() + timeout).await {
            Incoming::Frame(frame) => Some(frame),
            Incoming::Timeout => None,
            Incoming::Closed(c) => panic!("socket closed while waiting for a frame: {c:?}"),
        }
    }

    /// The next frame; panics if none arrives within `timeout` or the socket closes.
    pub async fn next_frame(&mut self, timeout: Duration) -> Value {
        match self.try_next_frame(timeout).await {
            Some(frame) => frame,
            None => panic!("no frame arrived within {timeout:?}"),
        }
    }

    /// The next frame, which must be an `event`.
    pub async fn next_event(&mut self) -> Value {
        let frame = self.next_frame(STEP).await;
        assert_eq!(ty(&frame), "event", "expected an event frame, got {frame}");
        frame
    }

    /// Every frame that arrives within `duration` (buffered ones first).
    pub async fn collect_for(&mut self, duration: Duration) -> Vec<Value> {
        let deadline = Instant::now() + duration;
        let mut frames: Vec<Value> = self.pending.drain(..).collect();
        loop {
            match self.recv(deadline).await {
                Incoming::Frame(frame) => frames.push(frame),
                Incoming::Timeout => return frames,
                Incoming::Closed(c) => panic!("socket closed while collecting frames: {c:?}"),
            }
        }
    }

    /// Every frame up to and including the first `event` whose `seq >= target`.
    /// Panics if it does not arrive within [`STEP`].
    pub async fn frames_until_seq(&mut self, target: u64) -> Vec<Value> {
        let deadline = Instant::now() + STEP;
        let mut frames = Vec::new();
        loop {
            let frame = match self.pending.pop_front() {
                Some(frame) => frame,
                None => match self.recv(deadline).await {
                    Incoming::Frame(frame) => frame,
                    Incoming::Timeout => panic!(
                        "no event with seq {target} within {STEP:?}; got {} frames, last {:?}",
                        frames.len(),
                        frames.last()
                    ),
                    Incoming::Closed(c) => {
                        panic!("socket closed ({c:?}) while waiting for seq {target}")
                    }
                },
            };
            let done = ty(&frame) == "event" && frame["seq"].as_u64() >= Some(target);
            frames.push(frame);
            if done {
                return frames;
            }
        }
    }

    /// Takes every frame received so far and not yet consumed.
    pub fn take_pending(&mut self) -> Vec<Value> {
        self.pending.drain(..).collect()
    }

    /// Asserts that nothing is buffered and no frame arrives within `duration`.
    /// Use after a `sync()` (here and on the sender), never as synchronization.
    pub async fn expect_silence(&mut self, duration: Duration) {
        let early = self.take_pending();
        assert!(early.is_empty(), "expected no frame, got {early:?}");
        match self.recv(Instant::now() + duration).await {
            Incoming::Timeout => {}
            Incoming::Frame(frame) => panic!("expected no frame, got {frame}"),
            Incoming::Closed(c) => panic!("expected no frame, but the socket closed: {c:?}"),
        }
    }

    /// Reads (and drops, keeping the transcript) frames until the server closes the
    /// socket; returns the frames read and how it closed. Panics after `timeout`.
    pub async fn drain_until_close(&mut self, timeout: Duration) -> (Vec<Value>, Closed) {
        let deadline = Instant::now() + timeout;
        let mut frames: Vec<Value> = self.pending.drain(..).collect();
        loop {
            match self.recv(deadline).await {
                Incoming::Frame(frame) => frames.push(frame),
                Incoming::Closed(c) => return (frames, c),
                Incoming::Timeout => panic!(
                    "socket still open after {timeout:?}; last frames: {:?}",
                    frames.iter().rev().take(3).collect::<Vec<_>>()
                ),
            }
        }
    }

    /// Waits for the server to close the socket and returns the close code.
    pub async fn expect_close(&mut self, timeout: Duration) -> Closed {
        self.drain_until_close(timeout).await.1
    }

    // ---- commands --------------------------------------------------------------------

    fn fresh_ref(&mut self) -> String {
        self.next_ref += 1;
        format!("r{}", self.next_ref)
    }

    /// Sends `frame` with a fresh `ref` and waits for its answer. Frames read meanwhile
    /// are returned in the first element, not buffered. `Err` means no answer (the
    /// socket closed or the answer did not come in time).
    pub async fn try_request_collect(
        &mut self,
        mut frame: Value,
    ) -> Result<(Vec<Value>, Result<Value, Value>), String> {
        let reference = self.fresh_ref();
        frame["ref"] = json!(reference);
        self.try_send_text(frame.to_string()).await?;
        let deadline = Instant::now() + STEP;
        let mut before = Vec::new();
        loop {
            match self.recv(deadline).await {
                Incoming::Frame(answer)
                    if matches!(ty(&answer), "ok" | "error")
                        && answer.get("ref") == Some(&json!(reference)) =>
                {
                    let result = if ty(&answer) == "ok" {
                        Ok(answer)
                    } else {
                        Err(answer)
                    };
                    return Ok((before, result));
                }
                Incoming::Frame(other) => before.push(other),
                Incoming::Timeout => {
                    return Err(format!("no answer to {frame} within {STEP:?}"));
                }
                Incoming::Closed(c) => {
                    return Err(format!(
                        "socket closed ({c:?}) before the answer to {frame}"
                    ))
                }
            }
        }
    }

    pub async fn request_collect(&mut self, frame: Value) -> (Vec<Value>, Result<Value, Value>) {
        match self.try_request_collect(frame).await {
            Ok(answer) => answer,
            Err(e) => panic!("{e}"),
        }
    }

    /// Sends `frame` with a fresh `ref`; returns its `ok` (`Ok`) or `error` (`Err`).
    /// Other frames seen meanwhile stay buffered for `next_frame`.
    pub async fn request(&mut self, frame: Value) -> Result<Value, Value> {
        let (before, answer) = self.request_collect(frame).await;
        self.pending.extend(before);
        answer
    }

    /// `request` that must succeed.
    pub async fn ok(&mut self, frame: Value) -> Value {
        let shown = frame.to_string();
        match self.request(frame).await {
            Ok(ok) => ok,
            Err(error) => panic!("{shown} was refused: {error}"),
        }
    }

    /// `request` that must fail; returns the `error` frame.
    pub async fn error(&mut self, frame: Value) -> Value {
        let shown = frame.to_string();
        match self.request(frame).await {
            Ok(ok) => panic!("{shown} was accepted ({ok}) but should have been refused"),
            Err(error) => error,
        }
    }

    /// `request` that must fail with `code`; returns the error frame.
    pub async fn error_code(&mut self, frame: Value, code: &str) -> Value {
        let error = self.error(frame.clone()).await;
        assert_eq!(
            error["code"], code,
            "{frame} should fail with {code}, got {error}"
        );
        assert!(
            error["message"].is_string(),
            "error without a message: {error}"
        );
        error
    }

    /// A barrier: a `ping` with a `ref`, answered in order, so every frame the server
    /// queued for this socket before it is now buffered.
    pub async fn sync(&mut self) {
        self.ok(json!({"type": "ping"})).await;
    }

    /// Sends `hello` and waits for `welcome`.
    pub async fn hello(&mut self, token: &str) -> Value {
        self.send_json(&json!({"type": "hello", "token": token}))
            .await;
        let welcome = self.next_frame(STEP).await;
        assert_eq!(ty(&welcome), "welcome", "expected welcome, got {welcome}");
        welcome
    }

    /// `subscribe`: the frames replayed before the `ok`, and the `ok`.
    pub async fn subscribe(
        &mut self,
        conversation: &str,
        since: Option<u64>,
    ) -> (Vec<Value>, Value) {
        let mut frame = json!({"type": "subscribe", "conversation_id": conversation});
        if let Some(since) = since {
            frame["since"] = json!(since);
        }
        let shown = frame.to_string();
        match self.request_collect(frame).await {
            (replay, Ok(ok)) => (replay, ok),
            (_, Err(error)) => panic!("{shown} was refused: {error}"),
        }
    }

    /// `send` (a public message); returns the `ok`.
    pub async fn message(&mut self, conversation: &str, client_id: &str, body: &str) -> Value {
        self.ok(send_frame(conversation, client_id, body)).await
    }

    /// `note` for agents; returns the `ok`.
    pub async fn note(&mut self, conversation: &str, client_id: &str, body: &str) -> Value {
        self.ok(note_frame(conversation, client_id, body)).await
    }

    // ---- inspection ------------------------------------------------------------------

    /// The `presence` frames received so far (other methods skip them).
    pub fn presence(&self) -> &[Value] {
        &self.presence
    }

    /// Every text the server sent on this socket, frames and close reasons.
    pub fn transcript(&self) -> &[String] {
        &self.transcript
    }

    /// How many answers arrived with this `ref` (as JSON: `json!("r1")`, `json!(7)`).
    pub fn answers_for(&self, reference: &Value) -> usize {
        self.answers
            .get(&reference.to_string())
            .copied()
            .unwrap_or(0)
    }

    /// Closes the socket from our side (a normal close) and waits for the server's side
    /// of the closing handshake, so the server has seen the close when this returns.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(STEP, self.ws.close(None)).await;
        let _ = tokio::time::timeout(STEP, async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

pub fn send_frame(conversation: &str, client_id: &str, body: &str) -> Value {
    json!({"type": "send", "conversation_id": conversation, "client_id": client_id, "body": body})
}

pub fn note_frame(conversation: &str, client_id: &str, body: &str) -> Value {
    json!({"type": "note", "conversation_id": conversation, "client_id": client_id, "body": body})
}
