//! `fanout`: rooms of agents and a customer, notes and messages at a paced rate, against
//! the reference relay and then Backchannel, side by side in one run.
//!
//! Each target gets the same room shape and the same offered sends per second: first a
//! fixed-rate step (by default 22,500 offered deliveries/s on Backchannel's shape), then
//! a saturation search for the highest rate whose agents' p99 stays under the limit.
//! Backchannel delivers a note to the room's agents (the sender included) and a message
//! to them and the customer; the relay delivers every frame to the other members. CPU
//! per delivery is compared at the fixed step.

use std::time::Duration;

use clap::Args;
use serde_json::{json, Value};

use super::{
    close_all, header, run_step, search, settled_rss, Common, Env, Plan, RoomConns, StepParams,
    Targets,
};
use crate::client::{Proto, Spec};
use crate::procs::{self, Server};
use crate::stats::round;

#[derive(Args, Clone, Debug)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: Common,
    /// Rooms (conversations).
    #[arg(long, default_value_t = 500)]
    pub rooms: usize,
    /// Agents per room.
    #[arg(long, default_value_t = 5)]
    pub agents: usize,
    /// Customers per room (0 or 1).
    #[arg(long, default_value_t = 1)]
    pub customers: usize,
    /// Percentage of sends that are internal notes.
    #[arg(long, default_value_t = 50)]
    pub note_pct: u64,
    /// Offered deliveries per second at the fixed step (on Backchannel's shape; the relay
    /// gets the same sends per second).
    #[arg(long, default_value_t = 22_500.0)]
    pub rate: f64,
    /// The p99 the fixed step is judged against, in ms.
    #[arg(long, default_value_t = 2.0)]
    pub fixed_p99_ms: f64,
    #[arg(long, default_value_t = 2)]
    pub warmup_s: u64,
    #[arg(long, default_value_t = 10)]
    pub duration_s: u64,
    /// Skip the saturation search.
    #[arg(long)]
    pub no_search: bool,
    /// Offered deliveries per second of the search's first step.
    #[arg(long, default_value_t = 45_000.0)]
    pub search_start: f64,
    #[arg(long, default_value_t = 8)]
    pub search_steps: usize,
    #[arg(long, default_value_t = 5)]
    pub search_duration_s: u64,
    /// The p99 a search step must stay under, in ms.
    #[arg(long, default_value_t = 100.0)]
    pub p99_ms: f64,
    /// Run against the relay only, or Backchannel only.
    #[arg(long, value_parser = ["both", "relay", "backchannel"], default_value = "both")]
    pub targets: String,
    /// Longest wait for deliveries after a step.
    #[arg(long, default_value_t = 10)]
    pub drain_s: u64,
}

pub async fn run(args: FanoutArgs) -> Result<Value, String> {
    let sends_per_s = args.rate / bc_mean(&args);
    let mut out = header("fanout", &Env::new(args.common.clone()));
    out["shape"] = json!({
        "rooms": args.rooms,
        "agents_per_room": args.agents,
        "customers_per_room": args.customers,
        "connections": args.rooms * (args.agents + args.customers),
        "note_pct": args.note_pct,
        "body_pad": args.common.body_pad,
        "fixed_sends_per_s": round(sends_per_s, 1),
    });
    if args.targets != "backchannel" {
        out["relay"] = one_target(&args, false, sends_per_s).await?;
    }
    if args.targets != "relay" {
        out["backchannel"] = one_target(&args, true, sends_per_s).await?;
    }
    let ratio = |path: &[&str]| -> Value {
        let get = |v: &Value| {
            path.iter()
                .try_fold(v, |v, k| v.get(*k))
                .and_then(Value::as_f64)
        };
        match (get(&out["backchannel"]), get(&out["relay"])) {
            (Some(b), Some(r)) if r > 0.0 => json!(round(b / r, 2)),
            _ => Value::Null,
        }
    };
    let cpu_ratio = ratio(&["fixed", "server_cpu_us_per_delivery"]);
    out["ratio_to_relay"] = json!({
        "cpu_us_per_delivery_fixed": cpu_ratio,
        "p50_fixed": ratio(&["fixed", "latency", "p50_ms"]),
        "p99_fixed": ratio(&["fixed", "latency", "p99_ms"]),
        "max_deliveries_per_s": ratio(&["search", "best", "deliveries_per_s"]),
        "cpu_us_per_delivery_at_max": ratio(&["search", "best", "server_cpu_us_per_delivery"]),
        "rss_kib_per_connection": ratio(&["rss_kib_per_connection"]),
    });
    let bc = &out["backchannel"];
    let fixed_p99 = bc["fixed"]["latency"]["p99_ms"].as_f64();
    let best = bc["search"]["best"]["deliveries_per_s"].as_f64();
    out["targets"] = json!({
        "cpu_per_delivery_at_most_1_3x_relay": cpu_ratio.as_f64().map(|r| r <= 1.3),
        "p99_under_2ms_at_22_5k": fixed_p99.map(|p| p < args.fixed_p99_ms && (args.rate - 22_500.0).abs() < 1.0),
        "sustained_100k_with_p99_under_100ms": best.map(|d| d >= 100_000.0),
    });
    Ok(out)
}

/// Sets up one target (`backchannel` true: Backchannel, else the relay), runs the fixed
/// step and the search, and tears it down.
async fn one_target(
    args: &FanoutArgs,
    backchannel: bool,
    sends_per_s: f64,
) -> Result<Value, String> {
    let env = Env::new(args.common.clone());
    let server: Server = if backchannel {
        env.backchannel("fanout", &[])?
    } else {
        env.relay()?
    };
    let targets = Targets::of(&[&server], backchannel);
    let per_room = args.agents + args.customers;
    let connections = args.rooms * per_room;
    let sources = env.sources(connections);
    let conversations: Vec<String> = if backchannel {
        let contacts: Vec<String> = (0..args.rooms).map(|r| format!("c{r}")).collect();
        procs::open_conversations(&server.base_url(), &env.common.jwt_secret, &contacts, 16).await?
    } else {
        (0..args.rooms)
            .map(|r| format!("00000000-0000-4000-8000-{r:012}"))
            .collect()
    };
    let rss_before = settled_rss(server.pid).await;
    let mut specs = Vec::with_capacity(connections);
    let mut rooms = Vec::with_capacity(args.rooms);
    for (r, conversation) in conversations.iter().enumerate() {
        let mut room = RoomConns::default();
        for k in 0..per_room {
            let customer = k >= args.agents;
            let id = specs.len() as u32;
            let proto = if backchannel {
                let (role, sub) = if customer {
                    ("customer", format!("c{r}"))
                } else {
                    ("agent", format!("a{r}-{k}"))
                };
                Proto::Backchannel {
                    token: env.token(role, &sub),
                    conversation: conversation.clone(),
                    since: None,
                    subscribe: true,
                }
            } else {
                Proto::Relay {
                    room: conversation.clone(),
                }
            };
            if customer {
                room.customer = Some(specs.len());
            } else {
                room.agents.push(specs.len());
            }
            specs.push(Spec {
                server: server.addr,
                source: sources[specs.len() % sources.len()],
                proto,
                leak_check: customer && backchannel,
                latency: !customer,
                group: 0,
                id,
                body_pad: args.common.body_pad,
                catch_up_to: None,
            });
        }
        rooms.push(room);
    }
    let handles = env.connect(specs).await?;
    let rss_after = settled_rss(server.pid).await;
    let plan = Plan {
        rooms,
        note_pct: args.note_pct,
        note_fanout: if backchannel {
            args.agents as u32
        } else {
            (per_room - 1) as u32
        },
        msg_fanout: if backchannel {
            per_room as u32
        } else {
            (per_room - 1) as u32
        },
    };
    let base = StepParams {
        sends_per_s,
        warmup: Duration::from_secs(args.warmup_s),
        duration: Duration::from_secs(args.duration_s),
        drain: Duration::from_secs(args.drain_s),
        p99_limit_ms: args.fixed_p99_ms,
    };
    let name = if backchannel { "backchannel" } else { "relay" };
    eprintln!("bc-load: {name}: fixed step at {sends_per_s:.0} sends/s");
    let fixed = run_step(&env, &handles, &plan, base, &targets).await;
    let mut result = json!({
        "fixed": fixed.json,
        "server_rss_kib_before": rss_before,
        "server_rss_kib_after": rss_after,
        "rss_kib_per_connection": match (rss_before, rss_after) {
            (Some(b), Some(a)) => json!(round(a.saturating_sub(b) as f64 / connections as f64, 2)),
            _ => Value::Null,
        },
    });
    if !args.no_search {
        eprintln!("bc-load: {name}: saturation search");
        let start = StepParams {
            sends_per_s: args.search_start / bc_mean(args),
            duration: Duration::from_secs(args.search_duration_s),
            warmup: Duration::from_secs(1),
            p99_limit_ms: args.p99_ms,
            // An overloaded step leaves a backlog in the server: let it clear fully so
            // it does not spill into the next step.
            drain: base.drain.max(Duration::from_secs(30)),
        };
        result["search"] = search(&env, &handles, &plan, start, args.search_steps, &targets).await;
    }
    close_all(handles).await;
    result["correctness"] = env.ctx.stats.borrow().correctness();
    drop(server);
    Ok(result)
}

/// Backchannel's mean deliveries per send for this shape: the relay is offered the same
/// sends per second.
fn bc_mean(args: &FanoutArgs) -> f64 {
    let p = args.note_pct as f64 / 100.0;
    p * args.agents as f64 + (1.0 - p) * (args.agents + args.customers) as f64
}
