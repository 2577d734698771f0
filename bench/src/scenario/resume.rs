//! `resume`: thousands of clients reconnect at once and catch up with `since`.
//!
//! Clients subscribe and receive a few notes; then they all disconnect, each room gets
//! `missed` more notes, and every client reconnects at the same moment (all handshakes
//! started together) with `since` = the last `seq` it had. Reported: the time until all
//! of them have received their room's head (and per-client percentiles), the replayed
//! events per second, the server's CPU meanwhile, and gaps or duplicates in the replays.

use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{json, Value};

use super::{close_all, header, secs_since, wait_until, Common, Env};
use crate::client::{self, Cmd, Proto, Spec};
use crate::procs;
use crate::stats::{now_us, percentiles_ms, round};
use crate::sys;

#[derive(Args, Clone, Debug)]
pub struct ResumeArgs {
    #[command(flatten)]
    pub common: Common,
    /// Clients that reconnect.
    #[arg(long, default_value_t = 3_000)]
    pub clients: usize,
    #[arg(long, default_value_t = 300)]
    pub rooms: usize,
    /// Notes per room seen before disconnecting.
    #[arg(long, default_value_t = 3)]
    pub before: u64,
    /// Notes per room written while the clients are away.
    #[arg(long, default_value_t = 20)]
    pub missed: u64,
    #[arg(long, default_value_t = 60)]
    pub timeout_s: u64,
}

pub async fn run(args: ResumeArgs) -> Result<Value, String> {
    let env = Env::new(args.common.clone());
    let mut out = header("resume", &env);
    let n = args.clients;
    let rooms = args.rooms.clamp(1, n.max(1));
    let server = env.backchannel(
        "resume",
        &[
            "--max-connections".to_owned(),
            (n + rooms + 1000).to_string(),
        ],
    )?;
    let contacts: Vec<String> = (0..rooms).map(|r| format!("c{r}")).collect();
    let conversations =
        procs::open_conversations(&server.base_url(), &env.common.jwt_secret, &contacts, 16)
            .await?;
    let sources = env.sources(n + rooms);
    let writer_specs: Vec<Spec> = conversations
        .iter()
        .enumerate()
        .map(|(r, conversation)| Spec {
            server: server.addr,
            source: sources[r % sources.len()],
            proto: Proto::Backchannel {
                token: env.token("agent", &format!("w{r}")),
                conversation: conversation.clone(),
                since: None,
                subscribe: false,
            },
            leak_check: false,
            latency: false,
            group: 0,
            id: r as u32,
            body_pad: env.common.body_pad,
            catch_up_to: None,
        })
        .collect();
    let client_spec = |i: usize, since: Option<u64>, catch_up_to: Option<u64>| Spec {
        server: server.addr,
        source: sources[(rooms + i) % sources.len()],
        proto: Proto::Backchannel {
            token: env.token("agent", &format!("a{i}")),
            conversation: conversations[i % rooms].clone(),
            since,
            subscribe: true,
        },
        leak_check: false,
        latency: true,
        group: 0,
        id: (rooms + i) as u32,
        body_pad: env.common.body_pad,
        catch_up_to,
    };
    let writers = env.connect(writer_specs).await?;
    let clients = env
        .connect((0..n).map(|i| client_spec(i, None, None)).collect())
        .await?;
    let per_room = |r: usize| (n / rooms + usize::from(r < n % rooms)) as u32;
    // Phase 1: a few notes, delivered live.
    for (r, writer) in writers.iter().enumerate() {
        writer.send(Cmd::Loop {
            window: args.before as u32,
            budget: Some(args.before),
            fanout: per_room(r),
        });
    }
    let ctx = &env.ctx;
    let live = wait_until(Duration::from_secs(args.timeout_s), || {
        let s = ctx.stats.borrow();
        s.total_acks >= s.total_sent && s.total_received >= s.total_expected
    })
    .await;
    if !live {
        return Err("phase 1: not every note was delivered".into());
    }
    // Phase 2: everyone leaves; the rooms move on.
    close_all(clients).await;
    for writer in &writers {
        writer.send(Cmd::Loop {
            window: 4,
            budget: Some(args.before + args.missed),
            fanout: 0,
        });
    }
    let written = wait_until(Duration::from_secs(args.timeout_s), || {
        let s = ctx.stats.borrow();
        s.total_acks >= s.total_sent
    })
    .await;
    if !written {
        return Err("phase 2: not every note was acknowledged".into());
    }
    // The stream: conversation_opened is seq 1, then the notes.
    let since = 1 + args.before;
    let head = since + args.missed;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Phase 3: all at once.
    let pid = server.pid.unwrap_or(0);
    let cpu0 = sys::cpu_micros(pid).unwrap_or(0);
    let failures0 = ctx.stats.borrow().connect_failures;
    let overflows0 = sys::listen_overflows();
    let received0 = ctx.stats.borrow().total_received;
    let t0 = now_us();
    let started = Instant::now();
    let handles: Vec<client::Handle> = (0..n)
        .map(|i| client::spawn(client_spec(i, Some(since), Some(head)), ctx.clone()))
        .collect();
    let all = wait_until(Duration::from_secs(args.timeout_s), || {
        ctx.caught_up.borrow().len() + (ctx.stats.borrow().connect_failures - failures0) as usize
            >= n
    })
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = sys::cpu_micros(pid).unwrap_or(0).saturating_sub(cpu0);
    let overflows = sys::listen_overflows()
        .zip(overflows0)
        .map(|(after, before)| after.saturating_sub(before));
    let mut times: Vec<u32> = ctx
        .caught_up
        .borrow()
        .iter()
        .map(|&t| t.saturating_sub(t0).min(u32::MAX as u64) as u32)
        .collect();
    let last = ctx.caught_up.borrow().iter().copied().max().unwrap_or(t0);
    let replayed = ctx.stats.borrow().total_received - received0;
    let caught_up = times.len();
    let all_caught_up_s = secs_since(t0, last);
    close_all(handles).await;
    close_all(writers).await;
    let correctness = ctx.stats.borrow().correctness();
    drop(server);
    out["shape"] = json!({
        "clients": n, "rooms": rooms, "notes_before": args.before, "missed_per_room": args.missed,
        "source_addresses": sources.len(),
    });
    out["result"] = json!({
        "caught_up": caught_up,
        "all_caught_up": all && caught_up == n,
        "all_caught_up_s": round(all_caught_up_s, 3),
        "per_client_catch_up": percentiles_ms(&mut times),
        "replayed_events": replayed,
        "replayed_events_per_s": round(replayed as f64 / all_caught_up_s.max(1e-6), 0),
        "server_cpu_s": round(cpu as f64 / 1e6, 3),
        "server_cpu_util": round(cpu as f64 / 1e6 / elapsed, 3),
        "server_cpu_us_per_client": round(cpu as f64 / n as f64, 1),
        "listen_overflows": overflows,
        "correctness": correctness,
    });
    Ok(out)
}
