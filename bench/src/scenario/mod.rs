//! What every scenario shares: the flags common to all, starting the servers, connecting
//! a fleet of clients, and the paced measurement step (and the saturation search built
//! on it).
//!
//! A step offers sends at a fixed rate, open loop: a 1 ms pacer deals sends round-robin
//! over the rooms, whatever the server answers. After a warm-up the window opens: CPU
//! of the server(s) and of the load generator is read from `/proc`, deliveries and
//! their latencies are recorded; when it closes, queued sends are dropped and the step
//! waits until every delivery expected from what was sent has arrived (what has not
//! after the drain timeout is `lost`).

pub mod cluster;
pub mod durable;
pub mod fanout;
pub mod idle;
pub mod resume;
pub mod stalled;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use serde_json::{json, Value};
use tokio::time::MissedTickBehavior;

use crate::client::{self, Cmd, Ctx, Handle, Spec};
use crate::procs::{self, Launch, Server};
use crate::stats::{self, now_us, percentiles_ms, round, Stats};
use crate::sys;

/// Flags every scenario takes.
#[derive(Args, Clone, Debug)]
pub struct Common {
    /// The backchannel binary (default: `backchannel` beside this executable).
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// The relay binary (default: `bc-relay` beside this executable).
    #[arg(long)]
    pub relay_bin: Option<PathBuf>,
    /// Use a server that is already running at this address instead of spawning one.
    #[arg(long)]
    pub server: Option<SocketAddr>,
    /// The PID of that server, for its CPU time and memory.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// The secret the server checks tokens with (spawned servers are given it).
    #[arg(long, default_value = procs::DEFAULT_SECRET)]
    pub jwt_secret: String,
    /// Cores (a `taskset -c` list) for the spawned server.
    #[arg(long, default_value = "0")]
    pub server_cores: String,
    /// Cores for the load generator itself.
    #[arg(long, default_value = "1")]
    pub load_cores: String,
    /// Pin nothing.
    #[arg(long)]
    pub no_pin: bool,
    /// Source addresses 127.0.0.1..N to spread connections over (default: as needed
    /// for the ephemeral port range).
    #[arg(long)]
    pub sources: Option<usize>,
    /// Padding characters in each body (after the marker and time, ~20 characters).
    #[arg(long, default_value_t = 64)]
    pub body_pad: usize,
    /// Extra flag for `backchannel serve` (repeatable), e.g. `--server-arg=--send-queue=4096`.
    #[arg(long, allow_hyphen_values = true)]
    pub server_arg: Vec<String>,
    /// Handshakes in flight at once while connecting a fleet.
    #[arg(long, default_value_t = 500)]
    pub connect_batch: usize,
}

/// Parses a `taskset -c` style list (`0`, `0,1`, `2-3`).
pub fn parse_cores(list: &str) -> Vec<usize> {
    let mut cores = Vec::new();
    for part in list.split(',') {
        let mut ends = part.split('-').map(|x| x.trim().parse::<usize>());
        match (ends.next(), ends.next()) {
            (Some(Ok(a)), Some(Ok(b))) => cores.extend(a..=b),
            (Some(Ok(a)), None) => cores.push(a),
            _ => {}
        }
    }
    cores
}

fn sibling_binary(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

/// The run's shared state: flags, recorder, and connection context.
pub struct Env {
    pub common: Common,
    pub ctx: Ctx,
}

impl Env {
    pub fn new(common: Common) -> Env {
        Env {
            common,
            ctx: Ctx::new(Stats::shared()),
        }
    }

    fn cores(&self) -> Option<&str> {
        (!self.common.no_pin).then_some(self.common.server_cores.as_str())
    }

    /// Starts `backchannel serve` with a fresh data directory and `extra` flags, or
    /// returns the external server.
    pub fn backchannel(&self, tag: &str, extra: &[String]) -> Result<Server, String> {
        if let Some(addr) = self.common.server {
            return Ok(Server::external(addr, self.common.server_pid));
        }
        let binary = self
            .common
            .server_bin
            .clone()
            .unwrap_or_else(|| sibling_binary("backchannel"));
        let dir = procs::temp_dir(tag)?;
        let mut args = vec![
            "serve".to_owned(),
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--data-dir".to_owned(),
            dir.join("data").display().to_string(),
            "--jwt-secret".to_owned(),
            self.common.jwt_secret.clone(),
        ];
        args.extend(extra.iter().cloned());
        args.extend(self.common.server_arg.iter().cloned());
        let server = Server::spawn(
            Launch {
                binary: &binary,
                args,
                cores: self.cores(),
                log: dir.join("server.log"),
                // Lift the per-socket and per-user command rate limits (servers that
                // predate them ignore the variables): the benchmark is the flood.
                env: vec![
                    ("BACKCHANNEL_COMMANDS_PER_SECOND".into(), "1000000".into()),
                    (
                        "BACKCHANNEL_USER_COMMANDS_PER_SECOND".into(),
                        "1000000".into(),
                    ),
                ],
            },
            Some(dir),
        )?;
        eprintln!(
            "bc-load: {} serving on {} (pid {:?})",
            binary.display(),
            server.addr,
            server.pid
        );
        Ok(server)
    }

    /// Starts the reference relay.
    pub fn relay(&self) -> Result<Server, String> {
        let binary = self
            .common
            .relay_bin
            .clone()
            .unwrap_or_else(|| sibling_binary("bc-relay"));
        let dir = procs::temp_dir("relay")?;
        let server = Server::spawn(
            Launch {
                binary: &binary,
                args: vec!["--listen".into(), "127.0.0.1:0".into()],
                cores: self.cores(),
                log: dir.join("relay.log"),
                env: Vec::new(),
            },
            Some(dir),
        )?;
        eprintln!("bc-load: relay on {} (pid {:?})", server.addr, server.pid);
        Ok(server)
    }

    /// Starts the Socket.IO server (`server_js`, run by `node`) on its Redis adapter at
    /// `redis`, or its in-memory one.
    pub fn socketio(&self, server_js: &Path, redis: Option<&str>) -> Result<Server, String> {
        server_js
            .parent()
            .map(|dir| dir.join("node_modules"))
            .filter(|modules| modules.is_dir())
            .ok_or_else(|| {
                format!(
                    "{}'s packages are not installed: run `npm ci` in its folder",
                    server_js.display()
                )
            })?;
        let dir = procs::temp_dir("socketio")?;
        let mut args = vec![
            server_js.display().to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
        ];
        match redis {
            Some(url) => args.extend(["--redis".into(), url.to_owned()]),
            None => args.push("--no-redis".into()),
        }
        let server = Server::spawn(
            Launch {
                binary: Path::new("node"),
                args,
                cores: self.cores(),
                log: dir.join("socketio.log"),
                env: vec![("NODE_ENV".into(), "production".into())],
            },
            Some(dir),
        )?;
        eprintln!(
            "bc-load: Socket.IO on {} (pid {:?}, adapter {})",
            server.addr,
            server.pid,
            redis.unwrap_or("in memory")
        );
        Ok(server)
    }

    pub fn sources(&self, connections: usize) -> Vec<Ipv4Addr> {
        sys::source_addresses(connections, self.common.sources)
    }

    pub fn token(&self, role: &str, sub: &str) -> String {
        procs::token(&self.common.jwt_secret, role, sub)
    }

    /// Connects every spec, `connect_batch` handshakes at a time; the handles are in
    /// the order of `specs`. Fails if any connection failed.
    pub async fn connect(&self, specs: Vec<Spec>) -> Result<Vec<Handle>, String> {
        let started = Instant::now();
        let total = specs.len();
        let mut handles = Vec::with_capacity(total);
        let mut specs = specs.into_iter().peekable();
        while specs.peek().is_some() {
            let mut batch: Vec<Handle> = specs
                .by_ref()
                .take(self.common.connect_batch.max(1))
                .map(|spec| client::spawn(spec, self.ctx.clone()))
                .collect();
            for handle in &mut batch {
                match (&mut handle.ready).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(format!("a connection failed: {e}")),
                    Err(_) => return Err("a connection task ended".into()),
                }
            }
            handles.extend(batch);
        }
        eprintln!(
            "bc-load: {total} connections ready in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(handles)
    }
}

/// The Socket.IO server `fanout` and `cluster` run by default (`bench/socketio`).
pub const SOCKETIO_SERVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/socketio/server.js");

/// Room names for servers that keep no conversations (the relay, Socket.IO): shaped like
/// Backchannel's conversation ids, so every frame carries the same bytes.
pub fn room_ids(rooms: usize) -> Vec<String> {
    (0..rooms)
        .map(|r| format!("00000000-0000-4000-8000-{r:012}"))
        .collect()
}

/// Closes every connection and waits (10 s at most) for their tasks to end.
pub async fn close_all(handles: Vec<Handle>) {
    for handle in &handles {
        handle.send(Cmd::Close);
    }
    for handle in handles {
        let _ = tokio::time::timeout(Duration::from_secs(10), handle.task).await;
    }
}

/// CPU microseconds of each PID (missing ones read as 0).
fn cpu_of(pids: &[u32]) -> Vec<u64> {
    pids.iter()
        .map(|&pid| sys::cpu_micros(pid).unwrap_or(0))
        .collect()
}

/// The connections of one room, by index into the fleet's handles.
#[derive(Clone, Debug, Default)]
pub struct RoomConns {
    pub agents: Vec<usize>,
    pub customer: Option<usize>,
}

/// Who sends what in a paced step.
pub struct Plan {
    pub rooms: Vec<RoomConns>,
    /// Percentage of sends that are notes (the rest are messages).
    pub note_pct: u64,
    /// Deliveries expected per note and per message.
    pub note_fanout: u32,
    pub msg_fanout: u32,
}

impl Plan {
    /// Deliveries per send on average.
    pub fn mean_fanout(&self) -> f64 {
        let p = self.note_pct as f64 / 100.0;
        p * self.note_fanout as f64 + (1.0 - p) * self.msg_fanout as f64
    }

    /// Send number `i`: rooms in turn; within a room's turns, notes and messages are
    /// mixed evenly at `note_pct`, notes from the agents in turn, messages from the
    /// customer (or an agent if the room has none).
    fn dispatch(&self, i: u64, handles: &[Handle], epoch: u32) {
        let room = &self.rooms[(i % self.rooms.len() as u64) as usize];
        let turn = i / self.rooms.len() as u64;
        let note = (turn * self.note_pct / 100) != ((turn + 1) * self.note_pct / 100);
        let agent = room.agents[(turn % room.agents.len() as u64) as usize];
        let (sender, fanout) = if note {
            (agent, self.note_fanout)
        } else {
            (room.customer.unwrap_or(agent), self.msg_fanout)
        };
        handles[sender].send(Cmd::Send {
            note,
            epoch,
            fanout,
        });
    }
}

/// How one paced step is run.
#[derive(Clone, Copy, Debug)]
pub struct StepParams {
    pub sends_per_s: f64,
    pub warmup: Duration,
    pub duration: Duration,
    pub drain: Duration,
    pub p99_limit_ms: f64,
}

/// The outcome of one step: its JSON, and what a search decides on.
pub struct Step {
    pub json: Value,
    pub deliveries_per_s: f64,
    pub p99_ms: f64,
    pub passed: bool,
}

/// The servers a step measures: their PIDs (CPU) and, for Backchannel, their base URLs
/// (`/metrics`: commits and batch sizes).
#[derive(Clone, Debug, Default)]
pub struct Targets {
    pub pids: Vec<u32>,
    pub metrics: Vec<String>,
}

impl Targets {
    pub fn of(servers: &[&Server], backchannel: bool) -> Targets {
        Targets {
            pids: servers.iter().filter_map(|s| s.pid).collect(),
            metrics: if backchannel {
                servers.iter().map(|s| s.base_url()).collect()
            } else {
                Vec::new()
            },
        }
    }
}

/// Sums of the store's commit metrics over the servers: (commits, seconds, requests).
async fn commit_metrics(urls: &[String]) -> Option<(f64, f64, f64)> {
    let mut total = (0.0, 0.0, 0.0);
    for url in urls {
        let text = reqwest::get(format!("{url}/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let value = |name: &str| metric_value(&text, name).unwrap_or(0.0);
        total.0 += value("backchannel_store_commit_seconds_count");
        total.1 += value("backchannel_store_commit_seconds_sum");
        total.2 += value("backchannel_store_commit_batch_size_sum");
    }
    Some(total)
}

/// The value of the unlabelled metric `name` in a Prometheus text exposition.
pub fn metric_value(exposition: &str, name: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse::<f64>()
            .ok()
    })
}

/// Processes whose CPU a step also reports: the databases a cluster runs on.
const HELPERS: &[&str] = &["postgres", "redis-server"];

/// Runs one paced step against `targets`.
pub async fn run_step(
    env: &Env,
    handles: &[Handle],
    plan: &Plan,
    params: StepParams,
    targets: &Targets,
) -> Step {
    let pids = &targets.pids[..];
    let ctx = &env.ctx;
    let epoch = ctx.epoch.get() + 1;
    ctx.epoch.set(epoch);
    let (base_expected, base_received, base_closed) = {
        let s = ctx.stats.borrow();
        (s.total_expected, s.total_received, s.closed)
    };
    let me = std::process::id();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let start = Instant::now();
    let mut next: u64 = 0;
    let mut window: Option<(Instant, Vec<u64>, u64, Vec<u64>)> = None;
    let mut helpers0 = 0;
    let mut metrics0 = None;
    let (window_secs, cpu_delta, load_cpu, busy_delta) = loop {
        tick.tick().await;
        let elapsed = start.elapsed();
        if window.is_none() && elapsed >= params.warmup {
            ctx.stats.borrow_mut().start_window();
            window = Some((
                Instant::now(),
                cpu_of(pids),
                sys::cpu_micros(me).unwrap_or(0),
                sys::core_busy_micros(),
            ));
            if !targets.metrics.is_empty() {
                metrics0 = commit_metrics(&targets.metrics).await;
            }
            helpers0 = sys::cpu_micros_of(HELPERS);
        }
        if elapsed >= params.warmup + params.duration {
            ctx.stats.borrow_mut().stop_window();
            let (t0, cpu0, me0, busy0) = window
                .take()
                .unwrap_or_else(|| (Instant::now(), cpu_of(pids), 0, sys::core_busy_micros()));
            let cpu1 = cpu_of(pids);
            let delta: Vec<u64> = cpu1
                .iter()
                .zip(&cpu0)
                .map(|(a, b)| a.saturating_sub(*b))
                .collect();
            let me1 = sys::cpu_micros(me).unwrap_or(0);
            let busy: Vec<u64> = sys::core_busy_micros()
                .iter()
                .zip(&busy0)
                .map(|(a, b)| a.saturating_sub(*b))
                .collect();
            break (
                t0.elapsed().as_secs_f64(),
                delta,
                me1.saturating_sub(me0),
                busy,
            );
        }
        let due = (elapsed.as_secs_f64() * params.sends_per_s) as u64;
        while next < due {
            plan.dispatch(next, handles, epoch);
            next += 1;
        }
    };
    let helpers_cpu = sys::cpu_micros_of(HELPERS).saturating_sub(helpers0);
    let metrics1 = match metrics0 {
        Some(_) => commit_metrics(&targets.metrics).await,
        None => None,
    };
    // Sends still queued in connections are dropped; wait for the rest to arrive.
    ctx.epoch.set(epoch + 1);
    let drain_start = Instant::now();
    loop {
        let done = {
            let s = ctx.stats.borrow();
            s.total_received >= s.total_expected
        };
        if done || drain_start.elapsed() > params.drain {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut s = ctx.stats.borrow_mut();
    let lost = (s.total_expected - base_expected).saturating_sub(s.total_received - base_received);
    let new_closes = s.closed - base_closed;
    let latency = percentiles_ms(&mut s.latency_us[0]);
    let latency_remote = percentiles_ms(&mut s.latency_us[1]);
    let acks = percentiles_ms(&mut s.ack_us);
    let deliveries_per_s = s.deliveries as f64 / window_secs;
    let server_cpu: u64 = cpu_delta.iter().sum();
    let offered_deliveries = params.sends_per_s * plan.mean_fanout();
    let p99 = stats::p99_ms(&latency);
    let p99_remote = stats::p99_ms(&latency_remote);
    let worst_p99 = if s.latency_us[1].is_empty() {
        p99
    } else {
        p99.max(p99_remote)
    };
    let passed = worst_p99 <= params.p99_limit_ms
        && lost == 0
        && new_closes == 0
        && deliveries_per_s >= 0.95 * offered_deliveries;
    let mut json = json!({
        "offered_sends_per_s": round(params.sends_per_s, 1),
        "offered_deliveries_per_s": round(offered_deliveries, 0),
        "sent_per_s": round(s.sent as f64 / window_secs, 1),
        "deliveries_per_s": round(deliveries_per_s, 0),
        "window_s": round(window_secs, 2),
        "latency": latency,
        "server_cpu_s": round(server_cpu as f64 / 1e6, 3),
        "server_cpu_util": round(server_cpu as f64 / 1e6 / window_secs, 3),
        "server_cpu_us_per_delivery": round(server_cpu as f64 / s.deliveries.max(1) as f64, 3),
        "load_cpu_util": round(load_cpu as f64 / 1e6 / window_secs, 3),
        "lost": lost,
        "new_closes": new_closes,
        "passed": passed,
    });
    if !s.latency_us[1].is_empty() {
        json["latency_remote"] = latency_remote;
    }
    let busy_total: u64 = busy_delta.iter().sum();
    json["cores_busy"] = json!(busy_delta
        .iter()
        .map(|&b| round(b as f64 / 1e6 / window_secs, 3))
        .collect::<Vec<_>>());
    json["postgres_redis_cpu_util"] = json!(round(helpers_cpu as f64 / 1e6 / window_secs, 3));
    json["postgres_redis_cpu_us_per_delivery"] =
        json!(round(helpers_cpu as f64 / s.deliveries.max(1) as f64, 3));
    json["other_cpu_util"] = json!(round(
        busy_total.saturating_sub(server_cpu + load_cpu) as f64 / 1e6 / window_secs,
        3
    ));
    if let (Some(a), Some(b)) = (metrics0, metrics1) {
        let commits = b.0 - a.0;
        json["store"] = json!({
            "commits_per_s": round(commits / window_secs, 0),
            "mean_commit_ms": round((b.1 - a.1) / commits.max(1.0) * 1e3, 3),
            "mean_batch": round((b.2 - a.2) / commits.max(1.0), 2),
            "commit_busy": round((b.1 - a.1) / window_secs, 3),
        });
    }
    if s.acks > 0 {
        json["acks_per_s"] = json!(round(s.acks as f64 / window_secs, 0));
        json["ack_latency"] = acks;
    }
    if cpu_delta.len() > 1 {
        json["server_cpu_s_each"] = json!(cpu_delta
            .iter()
            .map(|&c| round(c as f64 / 1e6, 3))
            .collect::<Vec<_>>());
    }
    eprintln!("bc-load: step {json}");
    Step {
        json,
        deliveries_per_s,
        p99_ms: worst_p99,
        passed,
    }
}

/// Raises the rate by half while steps pass, then bisects between the best passing and
/// the first failing rate until they are within 10 % (or `max_steps` ran). Returns the
/// best passing step and every step's headline.
pub async fn search(
    env: &Env,
    handles: &[Handle],
    plan: &Plan,
    start: StepParams,
    max_steps: usize,
    targets: &Targets,
) -> Value {
    let mut rate = start.sends_per_s;
    let mut best: Option<(f64, Step)> = None;
    let mut fail: Option<f64> = None;
    let mut steps = Vec::new();
    for _ in 0..max_steps {
        let step = run_step(
            env,
            handles,
            plan,
            StepParams {
                sends_per_s: rate,
                ..start
            },
            targets,
        )
        .await;
        steps.push(json!({
            "offered_deliveries_per_s": step.json["offered_deliveries_per_s"],
            "deliveries_per_s": step.json["deliveries_per_s"],
            "p99_ms": step.p99_ms,
            "server_cpu_util": step.json["server_cpu_util"],
            "load_cpu_util": step.json["load_cpu_util"],
            "passed": step.passed,
        }));
        if env.ctx.stats.borrow().closed > 0 {
            break;
        }
        if step.passed {
            let better = best
                .as_ref()
                .is_none_or(|(_, b)| step.deliveries_per_s > b.deliveries_per_s);
            if better {
                best = Some((rate, step));
            }
        } else {
            fail = Some(fail.map_or(rate, |f: f64| f.min(rate)));
        }
        let best_rate = best.as_ref().map(|(r, _)| *r);
        rate = match (best_rate, fail) {
            (Some(b), None) => b * 1.5,
            (Some(b), Some(f)) if f / b > 1.1 => (b + f) / 2.0,
            (Some(_), Some(_)) => break,
            (None, Some(f)) if f > start.sends_per_s / 64.0 => f / 2.0,
            _ => break,
        };
        // Let the server settle between steps.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    json!({
        "p99_limit_ms": start.p99_limit_ms,
        "best": best.map(|(_, s)| s.json),
        "steps": steps,
    })
}

/// Rounds of one step summed up: every number the median of the rounds' (a `max_ms` the
/// largest, `samples`, `lost` and `new_closes` the sum), lists element by element;
/// `passed` again from those: the median p99 (the worse of local and cross-node, where
/// both are measured) under `p99_limit_ms`, nothing lost or closed.
pub fn median_step(rounds: &[Value], p99_limit_ms: f64) -> Value {
    fn combine(key: &str, values: &[&Value]) -> Value {
        let Some(first) = values.first() else {
            return Value::Null;
        };
        match first {
            Value::Object(fields) => Value::Object(
                fields
                    .keys()
                    .map(|k| {
                        let inner: Vec<&Value> = values.iter().filter_map(|v| v.get(k)).collect();
                        (k.clone(), combine(k, &inner))
                    })
                    .collect(),
            ),
            Value::Array(items) => Value::Array(
                (0..items.len())
                    .map(|i| {
                        let inner: Vec<&Value> = values.iter().filter_map(|v| v.get(i)).collect();
                        combine(key, &inner)
                    })
                    .collect(),
            ),
            Value::Number(_) => {
                let numbers: Vec<f64> = values.iter().filter_map(|v| v.as_f64()).collect();
                match key {
                    "samples" | "lost" | "new_closes" => {
                        json!(values.iter().filter_map(|v| v.as_u64()).sum::<u64>())
                    }
                    "max_ms" => numbers
                        .iter()
                        .copied()
                        .reduce(f64::max)
                        .map_or(Value::Null, |n| json!(n)),
                    _ => median(numbers).map_or(Value::Null, |n| json!(round(n, 3))),
                }
            }
            other => (*other).clone(),
        }
    }
    let all: Vec<&Value> = rounds.iter().collect();
    let mut summary = combine("", &all);
    let p99_of = |key: &str| summary[key]["p99_ms"].as_f64();
    let p99 = match (p99_of("latency"), p99_of("latency_remote")) {
        (Some(local), Some(remote)) => local.max(remote),
        (Some(local), None) => local,
        _ => f64::INFINITY,
    };
    let clean =
        summary["lost"].as_f64() == Some(0.0) && summary["new_closes"].as_f64() == Some(0.0);
    summary["passed"] = json!(clean && p99 <= p99_limit_ms);
    summary["rounds"] = json!(rounds.len());
    summary
}

/// The median of `values` (the mean of the middle two for an even count); `None` if
/// empty.
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` now, in UTC.
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Commits the disk probe times at the start of every scenario (about 0.1–0.3 s).
const DISK_PROBE_COMMITS: usize = 500;

/// The fields every scenario's line starts with. `machine` includes what one durable
/// commit cost the disk just before the run ([`sys::DiskCommit`]), probed where spawned
/// servers keep their data and on their cores; a probe that fails says why in its place.
pub fn header(scenario: &str, env: &Env) -> Value {
    let mut machine = sys::machine();
    let cores = env.cores().map(parse_cores);
    machine["disk_commit"] =
        match sys::DiskCommit::probe(&std::env::temp_dir(), cores.as_deref(), DISK_PROBE_COMMITS) {
            Ok(probe) => probe.to_json(),
            Err(e) => json!({ "error": format!("the disk probe failed: {e}") }),
        };
    json!({
        "scenario": scenario,
        "date": utc_now(),
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "machine": machine,
        "pinning": if env.common.no_pin { json!(null) } else {
            json!({ "server_cores": env.common.server_cores, "load_cores": env.common.load_cores })
        },
    })
}

/// Waits until `f` holds or `timeout` passes; true if it held.
pub async fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > timeout {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// Memory of a process, settled: the lowest of a few readings a moment apart.
pub async fn settled_rss(pid: Option<u32>) -> Option<u64> {
    let pid = pid?;
    let mut lowest = None;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let rss = sys::rss_kib(pid);
        lowest = match (lowest, rss) {
            (Some(a), Some(b)) => Some(std::cmp::min(a, b)),
            (a, b) => a.or(b),
        };
    }
    lowest
}

/// `now_us` as seconds since `t0_us`.
pub fn secs_since(t0_us: u64, t_us: u64) -> f64 {
    t_us.saturating_sub(t0_us) as f64 / 1e6
}

/// The current time on the bodies' clock.
pub fn clock() -> u64 {
    now_us()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_metric_is_read_by_its_whole_name() {
        let exposition = "# HELP backchannel_connections Open WebSockets.\n\
            backchannel_connections_total 9\n\
            backchannel_connections 1120\n\
            backchannel_store_commit_seconds_sum 0.25\n";
        assert_eq!(
            metric_value(exposition, "backchannel_connections"),
            Some(1120.0)
        );
        assert_eq!(
            metric_value(exposition, "backchannel_store_commit_seconds_sum"),
            Some(0.25)
        );
        assert_eq!(metric_value(exposition, "backchannel_store_commit"), None);
    }

    #[test]
    fn the_fixed_step_is_the_median_of_its_rounds() {
        let round = |cpu: f64, p99: f64, max: f64, lost: u64| {
            json!({
                "server_cpu_us_per_delivery": cpu,
                "latency": {"p50_ms": p99 / 4.0, "p99_ms": p99, "max_ms": max, "samples": 100},
                "cores_busy": [cpu / 100.0, 0.3],
                "lost": lost,
                "new_closes": 0,
                "passed": true,
            })
        };
        let rounds = [
            round(20.0, 1.5, 9.0, 0),
            round(30.0, 2.5, 4.0, 0),
            round(22.0, 1.8, 5.0, 0),
        ];
        let summary = median_step(&rounds, 2.0);
        assert_eq!(summary["server_cpu_us_per_delivery"], json!(22.0));
        assert_eq!(summary["latency"]["p99_ms"], json!(1.8));
        assert_eq!(summary["latency"]["max_ms"], json!(9.0));
        assert_eq!(summary["latency"]["samples"], json!(300));
        assert_eq!(summary["cores_busy"], json!([0.22, 0.3]));
        assert_eq!(summary["rounds"], json!(3));
        assert_eq!(
            summary["passed"],
            json!(true),
            "median p99 1.8 ms is under 2 ms"
        );
        assert_eq!(median_step(&rounds, 1.7)["passed"], json!(false));

        // One lost delivery in any round fails the summary, whatever the medians.
        let lossy = [
            rounds[0].clone(),
            round(21.0, 1.0, 2.0, 1),
            rounds[2].clone(),
        ];
        let summary = median_step(&lossy, 2.0);
        assert_eq!(summary["lost"], json!(1));
        assert_eq!(summary["passed"], json!(false));
    }

    #[test]
    fn a_cross_node_step_is_judged_by_the_worse_of_its_two_p99s() {
        let round = |local: f64, remote: f64| {
            json!({
                "latency": {"p99_ms": local},
                "latency_remote": {"p99_ms": remote},
                "lost": 0,
                "new_closes": 0,
            })
        };
        let rounds = [round(3.0, 6.0), round(4.0, 4.5), round(2.0, 5.5)];
        let summary = median_step(&rounds, 5.0);
        assert_eq!(summary["latency_remote"]["p99_ms"], json!(5.5));
        assert_eq!(summary["passed"], json!(false), "cross-node median 5.5 ms");
        assert_eq!(median_step(&rounds, 6.0)["passed"], json!(true));
    }

    #[test]
    fn median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(vec![7.0]), Some(7.0));
        assert_eq!(median(Vec::new()), None);
    }
}
