//! `cluster`: two nodes on one PostgreSQL database and Redis; notes written through
//! node A, delivered to agents connected to node B. Reports the cross-node delivery
//! latency (agents on B) beside the local one (the sender itself, subscribed on A), at
//! a paced rate given in deliveries per second on node B. The step runs `--rounds`
//! times on the same nodes; `step` holds the medians over the rounds (the cross-node p99
//! is the noisiest figure the benchmarks report), `rounds` each one.
//!
//! Before node B's agents connect, each room's sender writes `--history` events in all
//! (its own deliveries only, so the history costs what its appends cost), and node B's
//! agents then subscribe from the heads it left: the rounds measure a database with
//! history, as `fanout`'s do. The history is then vacuumed and analyzed, as autovacuum
//! would have done by then in a deployment (it visits each database every minute by
//! default, and a fresh benchmark database is minutes younger than that), and
//! checkpointed: the vacuum rewrites every page the history wrote (~180 MB), and left
//! to the kernel, which writes back what has been dirty for 30 s, that burst landed in
//! the second round of every run and held up PostgreSQL's commits behind it
//! (docs/benchmarks-log.md, tenth session). The kernel's writeback of what the rounds
//! themselves dirty, every ~30 s, is the deployment's too and stays in the measurement.
//! `--no-vacuum` skips both.
//!
//! `--target socketio` runs the same step on two Socket.IO nodes
//! (`bench/socketio/server.js`) on the same Redis, through its adapter: what teams pick
//! today for more than one node. It has no store, so there is no history, no database
//! and nothing to replay: its cross-node latency is Redis's hop alone.

use std::time::Duration;

use clap::Args;
use serde_json::{json, Value};

use super::{
    close_all, header, median_step, run_step, Common, Env, Plan, RoomConns, StepParams, Targets,
};
use crate::client::{Proto, Spec};
use crate::procs;
use crate::stats::round;

#[derive(Args, Clone, Debug)]
pub struct ClusterArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    pub postgres: String,
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub redis: String,
    #[arg(long, default_value_t = 400)]
    pub rooms: usize,
    /// Agents per room connected to node B.
    #[arg(long, default_value_t = 5)]
    pub remote_agents: usize,
    /// Offered deliveries per second on node B.
    #[arg(long, default_value_t = 20_000.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 2)]
    pub warmup_s: u64,
    #[arg(long, default_value_t = 10)]
    pub duration_s: u64,
    #[arg(long, default_value_t = 10)]
    pub drain_s: u64,
    /// Rounds of the step: its figures are the medians over them.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// The cross-node p99 the step is judged against, in ms.
    #[arg(long, default_value_t = 5.0)]
    pub p99_ms: f64,
    /// Events written to the rooms before node B's agents connect (0: none).
    #[arg(long, default_value_t = 200_000)]
    pub history: u64,
    /// Appends per second while the history is written.
    #[arg(long, default_value_t = 5_000.0)]
    pub history_rate: f64,
    /// Do not vacuum, analyze and checkpoint the database after the history.
    #[arg(long)]
    pub no_vacuum: bool,
    /// The nodes: Backchannel's (on PostgreSQL and Redis), or Socket.IO's (on Redis).
    #[arg(long, value_parser = ["backchannel", "socketio"], default_value = "backchannel")]
    pub target: String,
    /// The Socket.IO server (with `--target socketio`).
    #[arg(long, default_value = super::SOCKETIO_SERVER)]
    pub socketio_server: std::path::PathBuf,
}

impl ClusterArgs {
    fn socketio(&self) -> bool {
        self.target == "socketio"
    }
}

pub async fn run(args: ClusterArgs) -> Result<Value, String> {
    let env = Env::new(args.common.clone());
    let mut out = header("cluster", &env);
    let result = if args.socketio() {
        measure(&env, &args, None).await?
    } else {
        let name = format!("bcbench_cluster_{}_{}", std::process::id(), super::clock());
        let url = procs::create_database(&args.postgres, &name)?;
        let result = measure(&env, &args, Some(&url)).await;
        procs::drop_database(&args.postgres, &name);
        result?
    };
    let p99 = result["step"]["latency_remote"]["p99_ms"].as_f64();
    out["shape"] = json!({
        "target": args.target,
        "rooms": args.rooms,
        "remote_agents_per_room": args.remote_agents,
        "sends_per_s": round(args.rate / args.remote_agents.max(1) as f64, 1),
        "body_pad": args.common.body_pad,
    });
    out["result"] = result;
    out["targets"] = json!({
        "cross_node_p99_under_5ms_at_20k": p99.map(|p| p < 5.0 && (args.rate - 20_000.0).abs() < 1.0),
    });
    Ok(out)
}

/// Starts the two nodes and runs the step; `url` is the PostgreSQL database
/// Backchannel's nodes share (none for Socket.IO's).
async fn measure(env: &Env, args: &ClusterArgs, url: Option<&str>) -> Result<Value, String> {
    let node = |id: &str| match url {
        Some(url) => env.backchannel(
            &format!("cluster-{id}"),
            &[
                "--database-url".into(),
                url.to_owned(),
                "--redis-url".into(),
                args.redis.clone(),
                "--node-id".into(),
                format!("bench-{id}"),
            ],
        ),
        None => env.socketio(&args.socketio_server, Some(&args.redis)),
    };
    let a = node("a")?;
    let b = node("b")?;
    let conversations: Vec<String> = match url {
        Some(_) => {
            let contacts: Vec<String> = (0..args.rooms).map(|r| format!("c{r}")).collect();
            procs::open_conversations(&a.base_url(), &env.common.jwt_secret, &contacts, 16).await?
        }
        None => super::room_ids(args.rooms),
    };
    // Socket.IO keeps no history to write or to skip.
    let history_events = if url.is_some() { args.history } else { 0 };
    let per_room = 1 + args.remote_agents;
    let sources = env.sources(args.rooms * per_room);
    let spec = |id: usize, on_b: bool, room: usize, k: usize, since: Option<u64>| Spec {
        server: if on_b { b.addr } else { a.addr },
        source: sources[id % sources.len()],
        proto: match url {
            Some(_) => Proto::Backchannel {
                token: env.token("agent", &format!("a{room}-{k}")),
                conversation: conversations[room].clone(),
                since,
                subscribe: true,
            },
            None => Proto::SocketIo {
                room: conversations[room].clone(),
                customer: false,
            },
        },
        leak_check: false,
        latency: true,
        group: usize::from(on_b),
        id: id as u32,
        body_pad: env.common.body_pad,
        catch_up_to: None,
    };
    // The senders (agent 0 of each room, on node A) first: handle r is room r's sender.
    let mut handles = env
        .connect(
            (0..args.rooms)
                .map(|r| spec(r, false, r, 0, None))
                .collect(),
        )
        .await?;
    let senders = |fanout: u32| Plan {
        rooms: (0..args.rooms)
            .map(|r| RoomConns {
                agents: vec![r],
                customer: None,
            })
            .collect(),
        note_pct: 100,
        note_fanout: fanout,
        msg_fanout: fanout,
    };
    let targets = Targets::of(&[&a, &b], url.is_some());
    let history = if let (Some(url), true) = (url, history_events > 0) {
        let seconds = history_events as f64 / args.history_rate;
        eprintln!(
            "bc-load: cluster: writing {history_events} events of history at {:.0} appends/s ({seconds:.0} s)",
            args.history_rate
        );
        let step = run_step(
            env,
            &handles,
            &senders(1),
            StepParams {
                sends_per_s: args.history_rate,
                warmup: Duration::ZERO,
                duration: Duration::from_secs_f64(seconds),
                drain: Duration::from_secs(args.drain_s.max(30)),
                p99_limit_ms: args.p99_ms,
            },
            &targets,
        )
        .await;
        let vacuumed = !args.no_vacuum;
        if vacuumed {
            procs::vacuum_analyze(url)?;
            procs::checkpoint(url)?;
        }
        json!({ "events": history_events, "step": step.json, "vacuumed": vacuumed })
    } else {
        json!({ "events": 0 })
    };
    // Node B's agents subscribe from the heads the history left, so none replays it.
    let heads = if history_events > 0 {
        let agents: Vec<String> = (0..args.rooms).map(|r| format!("a{r}-1")).collect();
        procs::agent_stream_heads(
            &b.base_url(),
            &env.common.jwt_secret,
            &conversations,
            &agents,
        )
        .await?
    } else {
        vec![0; args.rooms]
    };
    let mut remote = Vec::with_capacity(args.rooms * args.remote_agents);
    for (r, head) in heads.iter().enumerate() {
        for k in 1..per_room {
            let since = (history_events > 0).then_some(*head);
            remote.push(spec(args.rooms + remote.len(), true, r, k, since));
        }
    }
    handles.extend(env.connect(remote).await?);
    let plan = senders(per_room as u32);
    let params = StepParams {
        sends_per_s: args.rate / args.remote_agents.max(1) as f64,
        warmup: Duration::from_secs(args.warmup_s),
        duration: Duration::from_secs(args.duration_s),
        drain: Duration::from_secs(args.drain_s),
        p99_limit_ms: args.p99_ms,
    };
    let mut rounds = Vec::new();
    for round in 1..=args.rounds.max(1) {
        eprintln!("bc-load: cluster: round {round}");
        rounds.push(run_step(env, &handles, &plan, params, &targets).await.json);
    }
    close_all(handles).await;
    let correctness = env.ctx.stats.borrow().correctness();
    drop(a);
    drop(b);
    Ok(json!({
        "history": history,
        "step": median_step(&rounds, args.p99_ms),
        "rounds": rounds,
        "note": "latency = sender's own note on node A (local); latency_remote = agents on node B; deliveries_per_s counts both nodes",
        "correctness": correctness,
    }))
}
