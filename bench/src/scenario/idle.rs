//! `idle`: many connections that said `hello` and subscribed to one conversation each,
//! then do nothing: the server's resident memory per connection, and its CPU while
//! they sit idle. The relay is measured the same way as the floor (a socket that joined
//! a room).
//!
//! Every tenth connection is a customer of its room, the rest are agents. Connections
//! are spread over 127.0.0.x source addresses when one address's ephemeral ports would
//! run short.

use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{json, Value};

use super::{close_all, header, settled_rss, Common, Env};
use crate::client::{Proto, Spec};
use crate::procs;
use crate::stats::round;
use crate::sys;

#[derive(Args, Clone, Debug)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Conversations the connections subscribe to.
    #[arg(long, default_value_t = 1_000)]
    pub rooms: usize,
    /// How long the connections sit idle before memory is read (and CPU measured).
    #[arg(long, default_value_t = 5)]
    pub hold_s: u64,
    #[arg(long, value_parser = ["both", "relay", "backchannel"], default_value = "both")]
    pub targets: String,
}

pub async fn run(args: IdleArgs) -> Result<Value, String> {
    let mut out = header("idle", &Env::new(args.common.clone()));
    if args.targets != "backchannel" {
        out["relay"] = one_target(&args, false).await?;
    }
    if args.targets != "relay" {
        out["backchannel"] = one_target(&args, true).await?;
    }
    let per = |t: &str| out[t]["rss_kib_per_connection"].as_f64();
    let (bc, relay) = (per("backchannel"), per("relay"));
    let ratio = match (bc, relay) {
        (Some(b), Some(r)) if r > 0.0 => json!(round(b / r, 2)),
        _ => Value::Null,
    };
    out["ratio_to_relay"] = json!({ "rss_kib_per_connection": ratio });
    out["targets"] = json!({
        "at_most_6_kib_per_idle_connection": bc.map(|k| k <= 6.0),
    });
    Ok(out)
}

async fn one_target(args: &IdleArgs, backchannel: bool) -> Result<Value, String> {
    let env = Env::new(args.common.clone());
    let n = args.connections;
    let rooms = args.rooms.clamp(1, n.max(1));
    let server = if backchannel {
        env.backchannel(
            "idle",
            &["--max-connections".to_owned(), (n + 1000).to_string()],
        )?
    } else {
        env.relay()?
    };
    let conversations: Vec<String> = if backchannel {
        let contacts: Vec<String> = (0..rooms).map(|r| format!("c{r}")).collect();
        procs::open_conversations(&server.base_url(), &env.common.jwt_secret, &contacts, 16).await?
    } else {
        super::room_ids(rooms)
    };
    let sources = env.sources(n);
    let specs: Vec<Spec> = (0..n)
        .map(|i| {
            let r = i % rooms;
            let customer = i < rooms;
            let proto = if backchannel {
                let (role, sub) = if customer {
                    ("customer", format!("c{r}"))
                } else {
                    ("agent", format!("a{i}"))
                };
                Proto::Backchannel {
                    token: env.token(role, &sub),
                    conversation: conversations[r].clone(),
                    since: None,
                    subscribe: true,
                }
            } else {
                Proto::Relay {
                    room: conversations[r].clone(),
                }
            };
            Spec {
                server: server.addr,
                source: sources[i % sources.len()],
                proto,
                leak_check: customer && backchannel,
                latency: false,
                group: 0,
                id: i as u32,
                body_pad: 0,
                catch_up_to: None,
            }
        })
        .collect();
    let rss_before = settled_rss(server.pid).await;
    let overflows0 = sys::listen_overflows();
    let started = Instant::now();
    let handles = env.connect(specs).await?;
    let connect_s = started.elapsed().as_secs_f64();
    let overflows = sys::listen_overflows()
        .zip(overflows0)
        .map(|(after, before)| after.saturating_sub(before));
    let pid = server.pid.unwrap_or(0);
    let cpu0 = sys::cpu_micros(pid).unwrap_or(0);
    let hold = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.hold_s)).await;
    let idle_cpu = sys::cpu_micros(pid).unwrap_or(0).saturating_sub(cpu0);
    let idle_s = hold.elapsed().as_secs_f64();
    let rss_after = settled_rss(server.pid).await;
    let load_rss = sys::rss_kib(std::process::id());
    close_all(handles).await;
    let correctness = env.ctx.stats.borrow().correctness();
    drop(server);
    Ok(json!({
        "connections": n,
        "rooms": rooms,
        "source_addresses": sources.len(),
        "connect_s": round(connect_s, 2),
        "connects_per_s": round(n as f64 / connect_s, 0),
        "listen_overflows": overflows,
        "server_rss_kib_before": rss_before,
        "server_rss_kib_after": rss_after,
        "rss_kib_per_connection": match (rss_before, rss_after) {
            (Some(b), Some(a)) => json!(round(a.saturating_sub(b) as f64 / n as f64, 2)),
            _ => Value::Null,
        },
        "idle_server_cpu_util": round(idle_cpu as f64 / 1e6 / idle_s, 4),
        "load_rss_kib": load_rss,
        "correctness": correctness,
    }))
}
