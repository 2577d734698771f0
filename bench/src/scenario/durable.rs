//! `durable`: acknowledged notes per second, closed loop, on SQLite and on PostgreSQL.
//!
//! One agent per conversation keeps `window` notes in flight, each `ok` (sent only after
//! the note's transaction committed) replaced by a new note. Commands of one socket are
//! handled in order, so the number of connections is the number of appends the server
//! can group into one commit. Each agent is subscribed to its conversation (unless
//! `--no-subscribe`), so every note is also delivered once. PostgreSQL gets a fresh
//! database, created with `psql` and dropped afterwards.

use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{json, Value};

use super::{close_all, header, wait_until, Common, Env};
use crate::client::{Cmd, Proto, Spec};
use crate::procs;
use crate::stats::{percentiles_ms, round};
use crate::sys;

#[derive(Args, Clone, Debug)]
pub struct DurableArgs {
    #[command(flatten)]
    pub common: Common,
    /// Stores to measure.
    #[arg(long, value_delimiter = ',', default_value = "sqlite,postgres")]
    pub stores: Vec<String>,
    /// PostgreSQL server (a fresh database is created on it).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    pub postgres: String,
    /// Connections (one agent and one conversation each).
    #[arg(long, default_value_t = 200)]
    pub connections: usize,
    /// Notes in flight per connection.
    #[arg(long, default_value_t = 2)]
    pub window: u32,
    #[arg(long, default_value_t = 2)]
    pub warmup_s: u64,
    #[arg(long, default_value_t = 10)]
    pub duration_s: u64,
    /// Do not subscribe the writers to their conversations.
    #[arg(long)]
    pub no_subscribe: bool,
}

pub async fn run(args: DurableArgs) -> Result<Value, String> {
    let mut out = header("durable", &Env::new(args.common.clone()));
    out["shape"] = json!({
        "connections": args.connections,
        "window": args.window,
        "subscribed": !args.no_subscribe,
        "body_pad": args.common.body_pad,
    });
    let mut targets = serde_json::Map::new();
    for store in &args.stores {
        let (result, target) = match store.as_str() {
            "sqlite" => (one_store(&args, None).await?, 20_000.0),
            "postgres" => {
                let name = format!("bcbench_durable_{}_{}", std::process::id(), super::clock());
                let url = procs::create_database(&args.postgres, &name)?;
                let result = one_store(&args, Some(url)).await;
                procs::drop_database(&args.postgres, &name);
                (result?, 10_000.0)
            }
            other => return Err(format!("unknown store {other}")),
        };
        targets.insert(
            format!("{store}_at_least_{}k_acks_per_s", target as u64 / 1000),
            json!(result["acks_per_s"].as_f64().map(|a| a >= target)),
        );
        out[store.as_str()] = result;
    }
    out["targets"] = Value::Object(targets);
    Ok(out)
}

async fn one_store(args: &DurableArgs, database_url: Option<String>) -> Result<Value, String> {
    let env = Env::new(args.common.clone());
    let extra: Vec<String> = match &database_url {
        Some(url) => vec!["--database-url".into(), url.clone()],
        None => vec![],
    };
    let server = env.backchannel("durable", &extra)?;
    let n = args.connections;
    let contacts: Vec<String> = (0..n).map(|r| format!("c{r}")).collect();
    let conversations =
        procs::open_conversations(&server.base_url(), &env.common.jwt_secret, &contacts, 16)
            .await?;
    let sources = env.sources(n);
    let specs: Vec<Spec> = conversations
        .iter()
        .enumerate()
        .map(|(i, conversation)| Spec {
            server: server.addr,
            source: sources[i % sources.len()],
            proto: Proto::Backchannel {
                token: env.token("agent", &format!("w{i}")),
                conversation: conversation.clone(),
                since: None,
                subscribe: !args.no_subscribe,
            },
            leak_check: false,
            latency: true,
            group: 0,
            id: i as u32,
            body_pad: args.common.body_pad,
            catch_up_to: None,
        })
        .collect();
    let handles = env.connect(specs).await?;
    let ctx = &env.ctx;
    ctx.stop.set(false);
    let fanout = u32::from(!args.no_subscribe);
    for handle in &handles {
        handle.send(Cmd::Loop {
            window: args.window,
            budget: None,
            fanout,
        });
    }
    tokio::time::sleep(Duration::from_secs(args.warmup_s)).await;
    let pid = server.pid.unwrap_or(0);
    let me = std::process::id();
    ctx.stats.borrow_mut().start_window();
    let (t0, cpu0, me0, busy0) = (
        Instant::now(),
        sys::cpu_micros(pid).unwrap_or(0),
        sys::cpu_micros(me).unwrap_or(0),
        sys::core_busy_micros(),
    );
    let db0 = sys::cpu_micros_of(&["postgres"]);
    tokio::time::sleep(Duration::from_secs(args.duration_s)).await;
    ctx.stats.borrow_mut().stop_window();
    let secs = t0.elapsed().as_secs_f64();
    let cpu = sys::cpu_micros(pid).unwrap_or(0).saturating_sub(cpu0);
    let load_cpu = sys::cpu_micros(me).unwrap_or(0).saturating_sub(me0);
    let db_cpu = sys::cpu_micros_of(&["postgres"]).saturating_sub(db0);
    let busy: Vec<u64> = sys::core_busy_micros()
        .iter()
        .zip(&busy0)
        .map(|(a, b)| a.saturating_sub(*b))
        .collect();
    // Everything else the machine did meanwhile: PostgreSQL, the kernel, other users.
    let other = busy.iter().sum::<u64>().saturating_sub(cpu + load_cpu);
    ctx.stop.set(true);
    let drained = wait_until(Duration::from_secs(30), || {
        let s = ctx.stats.borrow();
        s.total_acks + s.errors >= s.total_sent && s.total_received >= s.total_expected
    })
    .await;
    close_all(handles).await;
    let mut s = ctx.stats.borrow_mut();
    let acks = s.acks;
    let result = json!({
        "store": if database_url.is_some() { "postgres" } else { "sqlite" },
        "acks_per_s": round(acks as f64 / secs, 0),
        "ack_latency": percentiles_ms(&mut s.ack_us),
        "deliveries_per_s": round(s.deliveries as f64 / secs, 0),
        "delivery_latency": percentiles_ms(&mut s.latency_us[0]),
        "window_s": round(secs, 2),
        "server_cpu_util": round(cpu as f64 / 1e6 / secs, 3),
        "server_cpu_us_per_ack": round(cpu as f64 / acks.max(1) as f64, 2),
        "load_cpu_util": round(load_cpu as f64 / 1e6 / secs, 3),
        "cores_busy": busy.iter().map(|&b| round(b as f64 / 1e6 / secs, 3)).collect::<Vec<_>>(),
        "other_cpu_util": round(other as f64 / 1e6 / secs, 3),
        "postgres_cpu_util": round(db_cpu as f64 / 1e6 / secs, 3),
        "all_acknowledged": drained,
        "correctness": s.correctness(),
    });
    drop(s);
    drop(server);
    eprintln!("bc-load: durable {result}");
    Ok(result)
}
