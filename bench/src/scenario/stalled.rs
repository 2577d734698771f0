//! `stalled`: while many sockets stop reading and are closed by the server with 4008
//! (send queue overflow), is the delivery latency of everybody else unaffected?
//!
//! The server is started with a small send queue and socket send buffer
//! (`--send-queue 256 --socket-send-buffer 16384` by default), so that a socket that
//! stops reading overflows within seconds. Rooms are shaped like `fanout` (agents and a
//! customer per room, notes and messages) and one fixed-rate step is measured twice with
//! the same paced-step machinery (latency at the agents, CPU per delivery, lost
//! deliveries, seq gaps and duplicates, leaks):
//!
//! 1. `baseline`: nobody is stalled.
//! 2. `with_stalled`: first `--stalled` extra agent sockets connect (a small `SO_RCVBUF`
//!    set before `connect`), say `hello`, subscribe to the rooms in turn, read up to the
//!    subscribe's `ok`, and then are never read again (the streams are kept open, just
//!    not polled). The first one of each room subscribes from the start and learns the
//!    room's head; the others subscribe from that head, so they replay nothing. The
//!    same step then runs while their queues fill and the server closes them.
//!
//! How many the server closed as slow consumers is read from its `/metrics`
//! (`backchannel_slow_consumers_closed_total`) every 200 ms from the start of step B,
//! which also times the first and the last close relative to the step's window. After
//! the step the scenario waits (`--close-timeout-s`) for the rest; sockets still open
//! then are reported as such (`all_closed: false`), not hidden. At the end each stalled
//! socket is read once more, briefly, to see how its stream ended on the client side.
//! The server's resident memory is read before the stalled sockets connect, after, and
//! at the end.
//!
//! A stalled socket is an agent of its room and so receives every note and message of
//! it: at `R` sends/s over `rooms` rooms it is offered `R / rooms` frames/s, and its
//! queue alone holds `send_queue` of them. The default shape (20 rooms, 50 stalled
//! sockets each) makes that ~90 frames/s, so the queues overflow a few seconds into the
//! step, inside its measurement window.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::Args;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::error::{Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::{
    close_all, header, metric_value, run_step, settled_rss, wait_until, Common, Env, Plan,
    RoomConns, StepParams, Targets,
};
use crate::client::{Proto, Spec};
use crate::procs;
use crate::stats::round;

type Ws = WebSocketStream<TcpStream>;

/// The close code of a socket whose send queue overflowed.
const SLOW_CONSUMER_CODE: u16 = 4008;
/// The Prometheus counter of sockets closed with 4008.
const SLOW_CONSUMERS_METRIC: &str = "backchannel_slow_consumers_closed_total";
/// The Prometheus gauge of open WebSockets.
const CONNECTIONS_METRIC: &str = "backchannel_connections";
/// How often the server's `/metrics` is read while the stalled sockets are closed.
const METRICS_POLL: Duration = Duration::from_millis(200);

#[derive(Args, Clone, Debug)]
pub struct StalledArgs {
    #[command(flatten)]
    pub common: Common,
    /// Rooms (conversations).
    #[arg(long, default_value_t = 20)]
    pub rooms: usize,
    /// Agents per room (reading normally).
    #[arg(long, default_value_t = 5)]
    pub agents: usize,
    /// Customers per room (0 or 1).
    #[arg(long, default_value_t = 1)]
    pub customers: usize,
    /// Percentage of sends that are internal notes.
    #[arg(long, default_value_t = 50)]
    pub note_pct: u64,
    /// Offered deliveries per second to the reading clients, in both steps.
    #[arg(long, default_value_t = 10_000.0)]
    pub rate: f64,
    /// Sockets that subscribe and then stop reading (spread over the rooms in turn).
    #[arg(long, default_value_t = 1_000)]
    pub stalled: usize,
    /// SO_RCVBUF of each stalled socket, set before it connects (the kernel doubles it).
    #[arg(long, default_value_t = 4096)]
    pub stalled_recv_buffer: u32,
    /// `--send-queue` of the spawned server: frames queued per socket before 4008.
    #[arg(long, default_value_t = 256)]
    pub send_queue: usize,
    /// `--socket-send-buffer` of the spawned server: SO_SNDBUF per socket, in bytes.
    #[arg(long, default_value_t = 16_384)]
    pub socket_send_buffer: usize,
    /// The p99 a step is judged against (its `passed`), in ms.
    #[arg(long, default_value_t = 2.0)]
    pub fixed_p99_ms: f64,
    #[arg(long, default_value_t = 2)]
    pub warmup_s: u64,
    #[arg(long, default_value_t = 10)]
    pub duration_s: u64,
    /// Longest wait for deliveries after a step.
    #[arg(long, default_value_t = 10)]
    pub drain_s: u64,
    /// Longest wait, after step B, for the server to close the stalled sockets it has
    /// not closed yet.
    #[arg(long, default_value_t = 20)]
    pub close_timeout_s: u64,
    /// Longest time one stalled socket may take to connect, say `hello` and subscribe.
    #[arg(long, default_value_t = 30)]
    pub handshake_timeout_s: u64,
}

pub async fn run(args: StalledArgs) -> Result<Value, String> {
    if args.rooms == 0 || args.agents == 0 {
        return Err("--rooms and --agents must be at least 1".into());
    }
    let env = Env::new(args.common.clone());
    let mut out = header("stalled", &env);
    let per_room = args.agents + args.customers;
    let connections = args.rooms * per_room;
    let mean_fanout = {
        let p = args.note_pct as f64 / 100.0;
        p * args.agents as f64 + (1.0 - p) * per_room as f64
    };
    let sends_per_s = args.rate / mean_fanout;
    out["shape"] = json!({
        "rooms": args.rooms,
        "agents_per_room": args.agents,
        "customers_per_room": args.customers,
        "connections": connections,
        "note_pct": args.note_pct,
        "body_pad": args.common.body_pad,
        "fixed_sends_per_s": round(sends_per_s, 1),
        "stalled": args.stalled,
        "stalled_per_room": round(args.stalled as f64 / args.rooms as f64, 1),
        "frames_per_s_per_stalled_socket": round(sends_per_s / args.rooms as f64, 1),
        "stalled_recv_buffer": args.stalled_recv_buffer,
        "server_send_queue": args.send_queue,
        "server_socket_send_buffer": args.socket_send_buffer,
    });
    let server = env.backchannel(
        "stalled",
        &[
            "--send-queue".to_owned(),
            args.send_queue.to_string(),
            "--socket-send-buffer".to_owned(),
            args.socket_send_buffer.to_string(),
            "--max-connections".to_owned(),
            (connections + args.stalled + 1000).to_string(),
        ],
    )?;
    let targets = Targets::of(&[&server], true);
    let metrics_url = format!("{}/metrics", server.base_url());
    let http = reqwest::Client::new();
    let sources = env.sources(connections + args.stalled);
    let contacts: Vec<String> = (0..args.rooms).map(|r| format!("c{r}")).collect();
    let conversations =
        procs::open_conversations(&server.base_url(), &env.common.jwt_secret, &contacts, 16)
            .await?;

    // The reading clients, as in `fanout`.
    let mut specs = Vec::with_capacity(connections);
    let mut rooms = Vec::with_capacity(args.rooms);
    for (r, conversation) in conversations.iter().enumerate() {
        let mut room = RoomConns::default();
        for k in 0..per_room {
            let customer = k >= args.agents;
            let (role, sub) = if customer {
                ("customer", format!("c{r}"))
            } else {
                ("agent", format!("a{r}-{k}"))
            };
            if customer {
                room.customer = Some(specs.len());
            } else {
                room.agents.push(specs.len());
            }
            specs.push(Spec {
                server: server.addr,
                source: sources[specs.len() % sources.len()],
                proto: Proto::Backchannel {
                    token: env.token(role, &sub),
                    conversation: conversation.clone(),
                    since: None,
                    subscribe: true,
                },
                leak_check: customer,
                latency: !customer,
                group: 0,
                id: specs.len() as u32,
                body_pad: args.common.body_pad,
                catch_up_to: None,
            });
        }
        rooms.push(room);
    }
    let handles = env.connect(specs).await?;
    let plan = Plan {
        rooms,
        note_pct: args.note_pct,
        note_fanout: args.agents as u32,
        msg_fanout: per_room as u32,
    };
    let params = StepParams {
        sends_per_s,
        warmup: Duration::from_secs(args.warmup_s),
        duration: Duration::from_secs(args.duration_s),
        drain: Duration::from_secs(args.drain_s),
        p99_limit_ms: args.fixed_p99_ms,
    };

    // Step A: nobody stalled.
    eprintln!("bc-load: stalled: baseline step at {sends_per_s:.0} sends/s");
    let baseline = run_step(&env, &handles, &plan, params, &targets).await;
    let correctness_after_baseline = env.ctx.stats.borrow().correctness();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The stalled sockets: subscribe, then never read again. The first of each room
    // subscribes from the start (reading the replay of step A's events) and learns the
    // room's head; the others subscribe from that head, so they replay nothing and the
    // memory read next is theirs, not a replay's.
    let rss_before_stalled = settled_rss(server.pid).await;
    let connect_started = Instant::now();
    let stalled_spec = |i: usize, since: Option<u64>| StalledSpec {
        server: server.addr,
        source: sources[(connections + i) % sources.len()],
        recv_buffer: args.stalled_recv_buffer,
        token: env.token("agent", &format!("s{i}")),
        conversation: conversations[i % conversations.len()].clone(),
        since,
    };
    let first_per_room = args.stalled.min(args.rooms);
    let handshake_timeout = Duration::from_secs(args.handshake_timeout_s);
    let batch = env.common.connect_batch;
    let mut stalled_sockets = connect_stalled(
        (0..first_per_room).map(|i| stalled_spec(i, None)).collect(),
        batch,
        handshake_timeout,
    )
    .await?;
    let heads: Vec<u64> = stalled_sockets.iter().map(|(_, head)| *head).collect();
    stalled_sockets.extend(
        connect_stalled(
            (first_per_room..args.stalled)
                .map(|i| stalled_spec(i, Some(heads[i % args.rooms])))
                .collect(),
            batch,
            handshake_timeout,
        )
        .await?,
    );
    let stalled_sockets: Vec<Ws> = stalled_sockets.into_iter().map(|(ws, _)| ws).collect();
    eprintln!(
        "bc-load: stalled: {} stalled sockets subscribed in {:.1} s; they read no more",
        stalled_sockets.len(),
        connect_started.elapsed().as_secs_f64()
    );
    let rss_with_stalled = settled_rss(server.pid).await;

    // Step B: the same step while the stalled sockets overflow and are closed.
    let before = read_metrics(&http, &metrics_url).await?;
    let step_b_started = Instant::now();
    let watch = CloseWatch::start(http.clone(), metrics_url.clone(), step_b_started);
    eprintln!(
        "bc-load: stalled: step with {} stalled sockets",
        args.stalled
    );
    let with_stalled = run_step(&env, &handles, &plan, params, &targets).await;
    let closed_by_step_end = read_metrics(&http, &metrics_url)
        .await
        .map(|m| {
            m.slow_consumers_closed
                .saturating_sub(before.slow_consumers_closed)
        })
        .ok();
    let stalled_count = stalled_sockets.len() as u64;
    let all_closed_in_time = wait_until(Duration::from_secs(args.close_timeout_s), || {
        watch.latest().is_some_and(|m| {
            m.slow_consumers_closed >= before.slow_consumers_closed + stalled_count
        })
    })
    .await;
    // The server sends the close frame (or gives up on it after 5 s) before it lets the
    // socket go: wait for the open connections to fall back to the reading clients.
    wait_until(Duration::from_secs(8), || {
        watch
            .latest()
            .is_some_and(|m| m.connections <= connections as u64)
    })
    .await;
    let samples = watch.stop();
    let after = read_metrics(&http, &metrics_url).await?;
    let rss_end = settled_rss(server.pid).await;
    let client_view = how_streams_ended(stalled_sockets, Duration::from_secs(5)).await;

    close_all(handles).await;
    let correctness = env.ctx.stats.borrow().correctness();
    drop(server);

    let closed_by_server = after
        .slow_consumers_closed
        .saturating_sub(before.slow_consumers_closed);
    let closed_at = |t: f64| {
        samples
            .iter()
            .take_while(|s| s.at_s <= t)
            .last()
            .map_or(0, |s| {
                s.metrics
                    .slow_consumers_closed
                    .saturating_sub(before.slow_consumers_closed)
            })
    };
    let first_time =
        |done: &dyn Fn(&Sample) -> bool| samples.iter().find(|s| done(s)).map(|s| round(s.at_s, 2));
    let window_open_s = args.warmup_s as f64;
    let window_close_s = (args.warmup_s + args.duration_s) as f64;
    let (in_before_window, in_by_window_close) =
        (closed_at(window_open_s), closed_at(window_close_s));
    out["baseline"] = baseline.json.clone();
    out["with_stalled"] = with_stalled.json.clone();
    out["correctness_after_baseline"] = correctness_after_baseline;
    out["correctness"] = correctness;
    out["stalled"] = json!({
        "count": stalled_count,
        "closed_by_server": closed_by_server,
        "closed_by_server_at_step_end": closed_by_step_end,
        "all_closed": closed_by_server >= stalled_count,
        "all_closed_within_close_timeout": all_closed_in_time,
        "not_closed": stalled_count.saturating_sub(closed_by_server),
        // Times are seconds since step B began; its window is open from
        // `window_open_s` to `window_close_s`, read from /metrics every 200 ms.
        "window_open_s": window_open_s,
        "window_close_s": window_close_s,
        "first_close_s": first_time(&|s: &Sample| {
            s.metrics.slow_consumers_closed > before.slow_consumers_closed
        }),
        "all_closed_s": first_time(&|s: &Sample| {
            s.metrics.slow_consumers_closed >= before.slow_consumers_closed + stalled_count
        }),
        "closed_before_window": in_before_window,
        "closed_in_window": in_by_window_close.saturating_sub(in_before_window),
        "closed_after_window": closed_by_server.saturating_sub(in_by_window_close),
        "released_s": first_time(&|s: &Sample| s.metrics.connections <= connections as u64),
        "server_connections_before": before.connections,
        "server_connections_at_end": after.connections,
        "ended_as_seen_by_client": client_view,
    });
    out["server_rss_kib"] = json!({
        "before_stalled": rss_before_stalled,
        "with_stalled": rss_with_stalled,
        "end": rss_end,
        "per_stalled_socket": match (rss_before_stalled, rss_with_stalled) {
            (Some(b), Some(a)) if stalled_count > 0 => {
                json!(round(a.saturating_sub(b) as f64 / stalled_count as f64, 2))
            }
            _ => Value::Null,
        },
    });
    let ratio = |path: &[&str]| -> Value {
        let get = |v: &Value| {
            path.iter()
                .try_fold(v, |v, k| v.get(*k))
                .and_then(Value::as_f64)
        };
        match (get(&out["with_stalled"]), get(&out["baseline"])) {
            (Some(w), Some(b)) if b > 0.0 => json!(round(w / b, 2)),
            _ => Value::Null,
        }
    };
    let p99_ratio = ratio(&["latency", "p99_ms"]);
    out["ratio"] = json!({
        "p50": ratio(&["latency", "p50_ms"]),
        "p99": p99_ratio,
        "cpu_us_per_delivery": ratio(&["server_cpu_us_per_delivery"]),
    });
    let step_clean =
        |step: &Value| step["lost"].as_u64() == Some(0) && step["new_closes"].as_u64() == Some(0);
    let others_clean = step_clean(&out["baseline"]) && step_clean(&out["with_stalled"]);
    let no_leaks_gaps_or_duplicates = ["leaks", "seq_gaps", "seq_duplicates", "errors"]
        .iter()
        .all(|k| out["correctness"][*k].as_u64() == Some(0));
    out["targets"] = json!({
        "others_p99_within_1_5x_of_baseline": p99_ratio.as_f64().map(|r| r <= 1.5),
        "all_stalled_closed_by_server": closed_by_server >= stalled_count,
        "stalled_closed_inside_the_window": in_before_window == 0 && in_by_window_close >= stalled_count,
        "others_lost_nothing_and_were_not_closed": others_clean,
        "no_leaks_gaps_or_duplicates": no_leaks_gaps_or_duplicates,
    });
    Ok(out)
}

/// One stalled socket before it connects.
struct StalledSpec {
    server: SocketAddr,
    source: Ipv4Addr,
    recv_buffer: u32,
    token: String,
    conversation: String,
    /// The subscribe's `since`: none replays the room from the start.
    since: Option<u64>,
}

impl StalledSpec {
    /// Connects with a small receive buffer, says `hello`, subscribes, and reads up to
    /// the subscribe's `ok` (a replay on the way is skipped). The stream, and the room's
    /// head from the `ok`, are then left to the caller, who never reads the stream again.
    async fn connect(self) -> Result<(Ws, u64), String> {
        let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
        socket
            .set_recv_buffer_size(self.recv_buffer)
            .map_err(|e| format!("SO_RCVBUF: {e}"))?;
        socket
            .bind(SocketAddr::new(self.source.into(), 0))
            .map_err(|e| format!("bind {}: {e}", self.source))?;
        let tcp = socket
            .connect(self.server)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let url = format!("ws://{}/v1/ws", self.server);
        let config = WebSocketConfig::default()
            .read_buffer_size(4 * 1024)
            .write_buffer_size(0);
        let (mut ws, _) =
            tokio_tungstenite::client_async_with_config(url.as_str(), tcp, Some(config))
                .await
                .map_err(|e| format!("upgrade: {e}"))?;
        let hello = json!({ "type": "hello", "token": self.token }).to_string();
        ws.send(Message::text(hello))
            .await
            .map_err(|e| format!("hello: {e}"))?;
        read_until(&mut ws, "{\"type\":\"welcome\"").await?;
        let mut subscribe = json!({
            "type": "subscribe", "ref": "sub", "conversation_id": self.conversation,
        });
        if let Some(since) = self.since {
            subscribe["since"] = since.into();
        }
        ws.send(Message::text(subscribe.to_string()))
            .await
            .map_err(|e| format!("subscribe: {e}"))?;
        let ok = read_until(&mut ws, "{\"type\":\"ok\"").await?;
        let ok: Value = serde_json::from_str(&ok).map_err(|e| format!("subscribe ok: {e}"))?;
        let head = ok["head"]
            .as_u64()
            .ok_or_else(|| format!("no head in the subscribe's ok: {ok}"))?;
        Ok((ws, head))
    }
}

/// Connects `specs`, `batch` handshakes at a time, each within `timeout`; the sockets
/// and their rooms' heads are in the order of `specs`. Fails if any failed.
async fn connect_stalled(
    specs: Vec<StalledSpec>,
    batch: usize,
    timeout: Duration,
) -> Result<Vec<(Ws, u64)>, String> {
    let total = specs.len();
    let attempts: Vec<Result<(Ws, u64), String>> = futures::stream::iter(specs)
        .map(|spec| async move {
            tokio::time::timeout(timeout, spec.connect())
                .await
                .unwrap_or_else(|_| Err(format!("handshake took over {timeout:?}")))
        })
        .buffered(batch.max(1))
        .collect()
        .await;
    let failures = attempts.iter().filter(|a| a.is_err()).count();
    if let Some(Err(first)) = attempts.iter().find(|a| a.is_err()) {
        return Err(format!(
            "{failures} of {total} stalled sockets failed to subscribe; the first: {first}"
        ));
    }
    attempts.into_iter().collect()
}

/// Reads until a text frame starting with `prefix` and returns it, skipping everything
/// else; fails on an error frame or a closed socket.
async fn read_until(ws: &mut Ws, prefix: &str) -> Result<String, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                if text.starts_with(prefix) {
                    return Ok(text.as_str().to_owned());
                }
                if text.starts_with("{\"type\":\"error\"") {
                    return Err(format!("refused: {}", text.as_str()));
                }
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

/// What the server's `/metrics` says about slow consumers and open sockets.
#[derive(Clone, Copy, Debug, Default)]
struct ServerMetrics {
    slow_consumers_closed: u64,
    connections: u64,
}

async fn read_metrics(http: &reqwest::Client, url: &str) -> Result<ServerMetrics, String> {
    let text = http
        .get(url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?
        .text()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let value = |name: &str| -> Result<u64, String> {
        metric_value(&text, name)
            .map(|v| v as u64)
            .ok_or_else(|| format!("no `{name}` in {url}"))
    };
    Ok(ServerMetrics {
        slow_consumers_closed: value(SLOW_CONSUMERS_METRIC)?,
        connections: value(CONNECTIONS_METRIC)?,
    })
}

/// One reading of `/metrics`, `at_s` seconds after step B began.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at_s: f64,
    metrics: ServerMetrics,
}

/// Reads `/metrics` every [`METRICS_POLL`] in its own task until stopped.
struct CloseWatch {
    samples: Rc<RefCell<Vec<Sample>>>,
    task: tokio::task::JoinHandle<()>,
}

impl CloseWatch {
    fn start(http: reqwest::Client, url: String, t0: Instant) -> CloseWatch {
        let samples: Rc<RefCell<Vec<Sample>>> = Rc::default();
        let task = tokio::task::spawn_local({
            let samples = samples.clone();
            async move {
                let mut tick = tokio::time::interval(METRICS_POLL);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    // A failed reading is skipped; the next one may succeed.
                    if let Ok(metrics) = read_metrics(&http, &url).await {
                        samples.borrow_mut().push(Sample {
                            at_s: t0.elapsed().as_secs_f64(),
                            metrics,
                        });
                    }
                }
            }
        });
        CloseWatch { samples, task }
    }

    fn latest(&self) -> Option<ServerMetrics> {
        self.samples.borrow().last().map(|s| s.metrics)
    }

    /// Stops reading; returns every reading taken.
    fn stop(self) -> Vec<Sample> {
        self.task.abort();
        self.samples.take()
    }
}

/// Reads every stalled socket until its stream ends (or `timeout` passes for all of
/// them): how many ended with a 4008 close frame, another close frame, without a close
/// frame (the server gave up sending it and dropped the connection), with an I/O or
/// other read error, or had not ended by the timeout. The last can happen after the
/// server let the socket go: its final bytes and FIN wait in the kernel for the next
/// zero-window probe, which backs off to seconds while the socket is not read.
async fn how_streams_ended(sockets: Vec<Ws>, timeout: Duration) -> Value {
    let count = sockets.len().max(1);
    let not_ended = format!("not_ended_within_{}s", timeout.as_secs());
    let endings: Vec<String> = futures::stream::iter(sockets)
        .map(|mut ws| {
            let not_ended = not_ended.clone();
            async move {
                let read = tokio::time::timeout(timeout, async {
                    loop {
                        match ws.next().await {
                            Some(Ok(Message::Close(Some(frame)))) => {
                                let code = u16::from(frame.code);
                                return if code == SLOW_CONSUMER_CODE {
                                    "close_4008".to_owned()
                                } else {
                                    format!("close_{code}")
                                };
                            }
                            Some(Ok(Message::Close(None))) => {
                                return "close_without_code".to_owned()
                            }
                            Some(Ok(_)) => {}
                            Some(Err(WsError::Protocol(
                                ProtocolError::ResetWithoutClosingHandshake,
                            )))
                            | None => return "ended_without_close_frame".to_owned(),
                            Some(Err(WsError::Io(e))) => return format!("io_error_{:?}", e.kind()),
                            Some(Err(_)) => return "read_error".to_owned(),
                        }
                    }
                })
                .await;
                read.unwrap_or(not_ended)
            }
        })
        .buffer_unordered(count)
        .collect()
        .await;
    let mut tally: BTreeMap<String, u64> = BTreeMap::new();
    for ending in endings {
        *tally.entry(ending).or_default() += 1;
    }
    json!(tally)
}
