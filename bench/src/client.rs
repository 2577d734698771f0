//! One simulated client: a WebSocket that speaks Backchannel's protocol (or the relay's,
//! or Socket.IO's), sends what it is told, and records what it receives.
//!
//! A connection is a task on the load generator's single thread. [`spawn`] connects it
//! from a chosen 127.0.0.x source address, says `hello`, subscribes to one conversation
//! (replay included) and reports ready; then it loops: frames from the server are
//! classified without a full JSON parse (event frames by their prefix, the send time and
//! the note marker by searching the body), and commands from the scenario are turned
//! into `note` / `send` frames stamped with the current time. Every body carries
//! `bc-note T` or `bc-msg T`, where T is [`now_us`] at the moment of sending, so a
//! receiver computes the delivery latency from the body alone; the `ref` of an append is
//! T too, so its `ok` gives the acknowledgement latency. A customer that receives any
//! frame containing `bc-note` counts a leak.

use std::cell::Cell;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::sync::OnceLock;

use futures::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::stats::{now_us, Shared};

type Ws = WebSocketStream<TcpStream>;

/// Note bodies start with this; a customer must never see it.
pub const NOTE_MARKER: &str = "bc-note ";
/// Message bodies start with this.
pub const MSG_MARKER: &str = "bc-msg ";
/// Where a body starts in an event frame.
const BODY_KEY: &str = "\"body\":\"";

/// What the connection speaks.
#[derive(Clone, Debug)]
pub enum Proto {
    /// Backchannel: `hello` with the token, then `subscribe` (with `since` if given)
    /// unless `subscribe` is false; notes and messages go to `conversation`.
    Backchannel {
        token: String,
        conversation: String,
        since: Option<u64>,
        subscribe: bool,
    },
    /// The reference relay: `{"join": room}`, then every frame is relayed verbatim.
    Relay { room: String },
    /// Socket.IO (`bench/socketio/server.js`, Engine.IO 4 over a WebSocket): connects to
    /// the default namespace with `{room, role, id}` as its auth and waits for `joined`;
    /// notes and messages are `note` / `send` events with an acknowledgement id.
    SocketIo { room: String, customer: bool },
}

#[derive(Clone, Debug)]
pub struct Spec {
    pub server: SocketAddr,
    pub source: Ipv4Addr,
    pub proto: Proto,
    /// Counts a leak for any frame carrying the note marker (a Backchannel customer).
    pub leak_check: bool,
    /// Records the latency of what it receives (agents).
    pub latency: bool,
    /// Which latency group its deliveries are recorded in.
    pub group: usize,
    /// A number unique in the run: the relay's actor and event ids, Socket.IO's user id.
    pub id: u32,
    /// Characters of padding after the marker and time in each body.
    pub body_pad: usize,
    /// Report when the connection's stream reaches this `seq` (the resume scenario).
    pub catch_up_to: Option<u64>,
}

/// What the scenario asks a connection to do.
#[derive(Debug)]
pub enum Cmd {
    /// Send one note (`note: true`) or message, unless `epoch` is no longer current;
    /// `fanout` deliveries are then expected.
    Send { note: bool, epoch: u32, fanout: u32 },
    /// Keep `window` notes in flight, each answered `ok` replaced by a new one, until
    /// `budget` notes were sent (if any) or the run stops.
    Loop {
        window: u32,
        budget: Option<u64>,
        fanout: u32,
    },
    /// Close the socket and end the task.
    Close,
}

/// State shared by all connections of a run.
#[derive(Clone)]
pub struct Ctx {
    pub stats: Shared,
    /// Sends queued under an older epoch are dropped (a rate step ended).
    pub epoch: Rc<Cell<u32>>,
    /// Closed loops stop sending once set.
    pub stop: Rc<Cell<bool>>,
    /// Time each connection reached its `catch_up_to` seq, in [`now_us`].
    pub caught_up: Rc<std::cell::RefCell<Vec<u64>>>,
}

impl Ctx {
    pub fn new(stats: Shared) -> Ctx {
        Ctx {
            stats,
            epoch: Rc::new(Cell::new(0)),
            stop: Rc::new(Cell::new(false)),
            caught_up: Rc::default(),
        }
    }
}

pub struct Handle {
    pub tx: mpsc::UnboundedSender<Cmd>,
    /// The stream's head once subscribed (Backchannel), 0 for the relay; or why it failed.
    pub ready: oneshot::Receiver<Result<u64, String>>,
    pub task: JoinHandle<()>,
}

impl Handle {
    pub fn send(&self, cmd: Cmd) {
        let _ = self.tx.send(cmd);
    }
}

/// Starts a connection on the current `LocalSet`.
pub fn spawn(spec: Spec, ctx: Ctx) -> Handle {
    let (tx, rx) = mpsc::unbounded_channel();
    let (ready_tx, ready) = oneshot::channel();
    let task = tokio::task::spawn_local(async move {
        let mut conn = Conn::new(spec, ctx);
        match conn.open().await {
            Ok((ws, head)) => {
                let _ = ready_tx.send(Ok(head));
                conn.run(ws, rx).await;
            }
            Err(e) => {
                conn.ctx.stats.borrow_mut().connect_failure(e.clone());
                let _ = ready_tx.send(Err(e));
            }
        }
    });
    Handle { tx, ready, task }
}

/// Client-side buffers: small, like the server's, so 10,000 clients fit comfortably.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
}

struct Conn {
    spec: Spec,
    ctx: Ctx,
    last_seq: u64,
    reported_caught_up: bool,
    sent: u64,
    in_flight: u32,
    window: u32,
    budget: Option<u64>,
    loop_fanout: u32,
    closing: bool,
    /// Frames to write at the next flush.
    out: Vec<String>,
}

impl Conn {
    fn new(spec: Spec, ctx: Ctx) -> Conn {
        let last_seq = match &spec.proto {
            Proto::Backchannel { since, .. } => since.unwrap_or(0),
            Proto::Relay { .. } | Proto::SocketIo { .. } => 0,
        };
        Conn {
            spec,
            ctx,
            last_seq,
            reported_caught_up: false,
            sent: 0,
            in_flight: 0,
            window: 0,
            budget: None,
            loop_fanout: 0,
            closing: false,
            out: Vec::new(),
        }
    }

    /// Whether each socket's events carry consecutive seqs to check: only Backchannel
    /// keeps a stream per audience (the relay and Socket.IO have no log).
    fn has_streams(&self) -> bool {
        matches!(self.spec.proto, Proto::Backchannel { .. })
    }

    fn is_socketio(&self) -> bool {
        matches!(self.spec.proto, Proto::SocketIo { .. })
    }

    async fn open(&mut self) -> Result<(Ws, u64), String> {
        let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
        socket
            .bind(SocketAddr::new(self.spec.source.into(), 0))
            .map_err(|e| format!("bind {}: {e}", self.spec.source))?;
        let tcp = socket
            .connect(self.spec.server)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let url = match self.spec.proto {
            Proto::SocketIo { .. } => format!(
                "ws://{}/socket.io/?EIO=4&transport=websocket",
                self.spec.server
            ),
            _ => format!("ws://{}/v1/ws", self.spec.server),
        };
        let (mut ws, _) =
            tokio_tungstenite::client_async_with_config(url.as_str(), tcp, Some(ws_config()))
                .await
                .map_err(|e| format!("upgrade: {e}"))?;
        let head = match self.spec.proto.clone() {
            Proto::Relay { room } => {
                let join = serde_json::json!({ "join": room }).to_string();
                ws.send(Message::text(join))
                    .await
                    .map_err(|e| e.to_string())?;
                self.expect_answer(&mut ws, "{\"joined\"").await?;
                0
            }
            Proto::SocketIo { room, customer } => {
                // Engine.IO's open packet first, then Socket.IO's CONNECT with the auth.
                self.expect_answer(&mut ws, "0{").await?;
                let auth = serde_json::json!({
                    "room": room,
                    "role": if customer { "customer" } else { "agent" },
                    "id": self.spec.id,
                });
                ws.send(Message::text(format!("40{auth}")))
                    .await
                    .map_err(|e| e.to_string())?;
                self.expect_answer(&mut ws, "42[\"joined\"").await?;
                0
            }
            Proto::Backchannel {
                token,
                conversation,
                since,
                subscribe,
            } => {
                let hello = serde_json::json!({ "type": "hello", "token": token }).to_string();
                ws.send(Message::text(hello))
                    .await
                    .map_err(|e| e.to_string())?;
                self.expect_answer(&mut ws, "{\"type\":\"welcome\"").await?;
                if !subscribe {
                    return Ok((ws, 0));
                }
                let mut subscribe = serde_json::json!({
                    "type": "subscribe", "ref": "sub", "conversation_id": conversation,
                });
                if let Some(since) = since {
                    subscribe["since"] = since.into();
                }
                ws.send(Message::text(subscribe.to_string()))
                    .await
                    .map_err(|e| e.to_string())?;
                let ok = self.expect_answer(&mut ws, "{\"type\":\"ok\"").await?;
                let ok: serde_json::Value =
                    serde_json::from_str(&ok).map_err(|e| format!("subscribe ok: {e}"))?;
                ok["head"].as_u64().unwrap_or(0)
            }
        };
        self.check_caught_up();
        Ok((ws, head))
    }

    /// Reads until a frame starting with `prefix`; events on the way (a replay) are
    /// recorded like live ones. Fails on an error frame or a closed socket.
    async fn expect_answer(&mut self, ws: &mut Ws, prefix: &str) -> Result<String, String> {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    if text.starts_with(prefix) {
                        return Ok(text.as_str().to_owned());
                    }
                    if text.starts_with("{\"type\":\"error\"")
                        || (self.is_socketio() && text.starts_with("44"))
                    {
                        return Err(format!("refused: {}", text.as_str()));
                    }
                    self.on_text(&text);
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(format!("closed during handshake: {frame:?}"));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("handshake: {e}")),
                None => return Err("closed during handshake".into()),
            }
        }
    }

    async fn run(&mut self, mut ws: Ws, mut rx: mpsc::UnboundedReceiver<Cmd>) {
        loop {
            tokio::select! {
                message = ws.next() => match message {
                    Some(Ok(Message::Text(text))) => self.on_text(&text),
                    Some(Ok(Message::Close(frame))) => {
                        if !self.closing {
                            let mut stats = self.ctx.stats.borrow_mut();
                            stats.closed += 1;
                            let code = frame.map(|f| u16::from(f.code)).unwrap_or(0);
                            *stats.close_codes.entry(code).or_default() += 1;
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => {
                        if !self.closing {
                            let mut stats = self.ctx.stats.borrow_mut();
                            stats.closed += 1;
                            *stats.close_codes.entry(0).or_default() += 1;
                        }
                        return;
                    }
                },
                cmd = rx.recv() => {
                    let mut next = cmd;
                    // Take everything queued, so a burst costs one flush.
                    for _ in 0..256 {
                        match next {
                            Some(Cmd::Close) | None => {
                                self.closing = true;
                                let _ = ws.close(None).await;
                                // Drain until the server's close arrives.
                                let _ = tokio::time::timeout(
                                    std::time::Duration::from_secs(5),
                                    async { while let Some(Ok(_)) = ws.next().await {} },
                                )
                                .await;
                                return;
                            }
                            Some(cmd) => self.on_cmd(cmd),
                        }
                        next = match rx.try_recv() {
                            Ok(cmd) => Some(cmd),
                            Err(_) => break,
                        };
                    }
                }
            }
            if !self.out.is_empty() {
                for frame in self.out.drain(..) {
                    if ws.feed(Message::text(frame)).await.is_err() {
                        break;
                    }
                }
                if ws.flush().await.is_err() && !self.closing {
                    self.ctx.stats.borrow_mut().closed += 1;
                    return;
                }
            }
        }
    }

    fn on_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Send {
                note,
                epoch,
                fanout,
            } => {
                if epoch == self.ctx.epoch.get() {
                    self.queue_append(note, fanout);
                }
            }
            Cmd::Loop {
                window,
                budget,
                fanout,
            } => {
                self.window = window;
                self.budget = budget;
                self.loop_fanout = fanout;
                self.refill();
            }
            Cmd::Close => {}
        }
    }

    /// Tops the closed loop up to its window.
    fn refill(&mut self) {
        while self.in_flight < self.window
            && !self.ctx.stop.get()
            && self.budget.is_none_or(|b| self.sent < b)
        {
            self.queue_append(true, self.loop_fanout);
            self.in_flight += 1;
        }
    }

    fn queue_append(&mut self, note: bool, fanout: u32) {
        let t = now_us();
        self.sent += 1;
        let marker = if note { NOTE_MARKER } else { MSG_MARKER };
        let body = format!("{marker}{t} {}", "x".repeat(self.spec.body_pad));
        let frame = match &self.spec.proto {
            Proto::Backchannel { conversation, .. } => {
                let kind = if note { "note" } else { "send" };
                format!(
                    "{{\"type\":\"{kind}\",\"ref\":{t},\"conversation_id\":\"{conversation}\",\"client_id\":\"{}\",\"body\":\"{body}\"}}",
                    new_client_id()
                )
            }
            Proto::Relay { room } => relay_event_frame(room, self.sent, note, self.spec.id, &body),
            Proto::SocketIo { room, .. } => socketio_event(
                if note { "note" } else { "send" },
                t,
                &format!(
                    "{{\"conversation_id\":\"{room}\",\"client_id\":\"{}\",\"body\":\"{body}\"}}",
                    new_client_id()
                ),
            ),
        };
        self.out.push(frame);
        let mut stats = self.ctx.stats.borrow_mut();
        stats.total_sent += 1;
        stats.total_expected += fanout as u64;
        if stats.recording {
            stats.sent += 1;
        }
    }

    fn on_text(&mut self, text: &str) {
        if self.spec.leak_check && text.contains(NOTE_MARKER) {
            self.ctx.stats.borrow_mut().leaks += 1;
        }
        if self.is_socketio() {
            self.on_socketio_text(text);
        } else if text.starts_with("{\"type\":\"event\"") {
            self.on_event(text);
        } else if text.starts_with("{\"type\":\"ok\"") {
            if let Some(t) = number_after(text, "\"ref\":") {
                self.on_ok(t);
            }
        } else if text.starts_with("{\"type\":\"error\"") {
            self.ctx.stats.borrow_mut().error(text);
            if number_after(text, "\"ref\":").is_some() {
                self.in_flight = self.in_flight.saturating_sub(1);
                self.refill();
            }
        }
    }

    /// Socket.IO's packets: `2` is Engine.IO's ping (answered `3`, or the server drops
    /// the socket), `42["event",…]` a delivery, `43T[…]` the acknowledgement of the
    /// append whose ack id was its send time T.
    fn on_socketio_text(&mut self, text: &str) {
        if text == "2" {
            self.out.push("3".to_owned());
        } else if text.starts_with("42[\"event\"") {
            self.on_event(text);
        } else if let Some(ack) = text.strip_prefix("43") {
            if let Some(t) = leading_number(ack) {
                if ack.contains("\"type\":\"error\"") {
                    self.ctx.stats.borrow_mut().error(text);
                    self.in_flight = self.in_flight.saturating_sub(1);
                    self.refill();
                } else {
                    self.on_ok(t);
                }
            }
        } else if text.starts_with("44") || text.starts_with('1') {
            // CONNECT_ERROR, or Engine.IO's close.
            self.ctx.stats.borrow_mut().error(text);
        }
    }

    /// An append sent at `t` was acknowledged.
    fn on_ok(&mut self, t: u64) {
        let now = now_us();
        {
            let mut stats = self.ctx.stats.borrow_mut();
            stats.total_acks += 1;
            if stats.recording {
                stats.acks += 1;
                stats
                    .ack_us
                    .push(now.saturating_sub(t).min(u32::MAX as u64) as u32);
            }
        }
        self.in_flight = self.in_flight.saturating_sub(1);
        self.refill();
    }

    fn on_event(&mut self, text: &str) {
        let now = now_us();
        dump(text);
        let mut stats = self.ctx.stats.borrow_mut();
        if self.has_streams() {
            match number_after(text, "\"seq\":") {
                Some(seq) if seq == self.last_seq + 1 => self.last_seq = seq,
                Some(seq) if seq <= self.last_seq => stats.duplicates += 1,
                Some(seq) => {
                    stats.gaps += 1;
                    self.last_seq = seq;
                }
                None => stats.error("event frame without seq"),
            }
        }
        let sent_at = match text.find(BODY_KEY) {
            Some(i) => {
                let rest = &text[i + BODY_KEY.len()..];
                let rest = rest
                    .strip_prefix(NOTE_MARKER)
                    .or_else(|| rest.strip_prefix(MSG_MARKER));
                rest.and_then(leading_number)
            }
            None => None,
        };
        if let Some(t) = sent_at {
            stats.total_received += 1;
            if stats.recording {
                stats.deliveries += 1;
                if self.spec.latency {
                    let latency = now.saturating_sub(t).min(u32::MAX as u64) as u32;
                    stats.latency_us[self.spec.group].push(latency);
                }
            }
        }
        drop(stats);
        self.check_caught_up();
    }

    fn check_caught_up(&mut self) {
        if let Some(target) = self.spec.catch_up_to {
            if !self.reported_caught_up && self.last_seq >= target {
                self.reported_caught_up = true;
                self.ctx.caught_up.borrow_mut().push(now_us());
            }
        }
    }
}

/// A `client_id` as the JavaScript client makes one (`client-js`, `newClientId`): a
/// UUIDv7, ordered by time, so the load is what a floor of real consoles sends.
fn new_client_id() -> uuid::Uuid {
    uuid::Uuid::now_v7()
}

/// The frame a relay client sends: shaped like the `event` frame Backchannel delivers
/// for the same note or message (same fields, same order, same sizes), so both servers
/// move the same bytes.
pub fn relay_event_frame(room: &str, n: u64, note: bool, id: u32, body: &str) -> String {
    let event_id = format!("019ab{:03x}-{:04x}-7000-8000-{:012x}", id % 4096, 0, n);
    let at = "2026-11-23T21:07:01.123456Z";
    if note {
        format!(
            "{{\"type\":\"event\",\"conversation_id\":\"{room}\",\"seq\":{n},\"event\":{{\"id\":\"{event_id}\",\"at\":\"{at}\",\"actor\":{{\"id\":\"a{id}\",\"role\":\"agent\"}},\"kind\":\"note\",\"body\":\"{body}\",\"note_type\":\"general\",\"audience\":\"agents\"}}}}"
        )
    } else {
        format!(
            "{{\"type\":\"event\",\"conversation_id\":\"{room}\",\"seq\":{n},\"event\":{{\"id\":\"{event_id}\",\"at\":\"{at}\",\"actor\":{{\"id\":\"c{id}\",\"role\":\"customer\"}},\"kind\":\"message\",\"body\":\"{body}\"}}}}"
        )
    }
}

/// A Socket.IO event packet with an acknowledgement id: `42ACK["NAME",DATA]`.
pub fn socketio_event(name: &str, ack: u64, data: &str) -> String {
    format!("42{ack}[\"{name}\",{data}]")
}

/// Prints the first `BC_LOAD_DUMP_FRAMES` event frames received to stderr (debugging).
fn dump(text: &str) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static LEFT: OnceLock<AtomicUsize> = OnceLock::new();
    let left = LEFT.get_or_init(|| {
        AtomicUsize::new(
            std::env::var("BC_LOAD_DUMP_FRAMES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        )
    });
    if left.load(Ordering::Relaxed) > 0 {
        left.fetch_sub(1, Ordering::Relaxed);
        eprintln!("bc-load: frame ({} bytes): {text}", text.len());
    }
}

/// The unsigned integer right after the first `key` in `text`.
fn number_after(text: &str, key: &str) -> Option<u64> {
    let i = text.find(key)? + key.len();
    leading_number(&text[i..])
}

fn leading_number(s: &str) -> Option<u64> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    s[..digits].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_numbers_after_keys() {
        let frame =
            r#"{"type":"event","conversation_id":"x","seq":42,"event":{"body":"bc-note 123 xx"}}"#;
        assert_eq!(number_after(frame, "\"seq\":"), Some(42));
        assert_eq!(number_after(frame, "\"ref\":"), None);
        assert_eq!(
            number_after(r#"{"type":"ok","ref":"sub"}"#, "\"ref\":"),
            None
        );
        let i = frame.find(NOTE_MARKER).unwrap() + NOTE_MARKER.len();
        assert_eq!(leading_number(&frame[i..]), Some(123));
    }
}
