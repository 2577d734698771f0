//! Slow consumers at scale, against the real binary: 1,000 sockets (agents and customers
//! over four conversations) subscribe and then stop reading while notes and messages keep
//! flowing. Every one of them is closed with 4008, the server's memory stays under the
//! bound stated below while they are stalled, the readers that keep up get every event and
//! stay connected, and every closed socket, reconnecting with `since`, gets exactly what it
//! missed (customers: public events only, as always).
//!
//! The bound, per stalled socket, is what `docs/security.md` states: at most
//! `--send-queue` queued pointers to frames shared with every other recipient, plus what
//! one flush copies into the WebSocket's write buffer (16 KiB and the frame that crosses
//! it), plus the kernel's send buffer (`--socket-send-buffer`, doubled by the kernel; not
//! in the process's RSS, so not measured here).

use std::collections::BTreeSet;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::support::*;

const SLOW_SOCKETS: usize = 1_000;
const CONVERSATIONS: usize = 4;
/// One slow socket in five is the conversation's customer; the rest are agents.
const CUSTOMER_EVERY: usize = 5;
const SEND_QUEUE: usize = 64;
const SOCKET_SEND_BUFFER: usize = 16 * 1024;
/// Body of every note and message: a few of them fill a stalled socket's kernel buffers.
const BODY_BYTES: usize = 2 * 1024;
/// The most the writers may send per conversation before the test gives up on the
/// closes: below the 1,000 events a `subscribe` replays, so that every resume below is
/// a whole replay (about 190 are needed).
const MAX_WRITES_PER_CONVERSATION: u64 = 900;

/// One stalled socket: who it is, where it listens, and (once closed) what it got.
struct Stalled {
    client: Client,
    token: String,
    conversation: String,
    customer: bool,
}

/// The process's resident set size in KiB, from /proc.
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

async fn slow_consumers_closed(http: &Http) -> u64 {
    let reply = http
        .send(http.client.get(format!("{}/metrics", http.base)))
        .await;
    counter(&reply.text, "backchannel_slow_consumers_closed_total")
}

fn event_seqs(frames: &[Value]) -> Vec<u64> {
    seqs(
        &frames
            .iter()
            .filter(|f| ty(f) == "event")
            .cloned()
            .collect::<Vec<_>>(),
    )
}

async fn spawn_server(dir: &Path) -> ServerProcess {
    let queue = SEND_QUEUE.to_string();
    let buffer = SOCKET_SEND_BUFFER.to_string();
    ServerProcess::spawn_with(
        dir,
        &[
            "--send-queue",
            &queue,
            "--socket-send-buffer",
            &buffer,
            "--max-connections",
            "5000",
            "--commands-per-second",
            "100000",
            "--user-commands-per-second",
            "100000",
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_stalled_sockets_are_closed_with_4008_in_bounded_memory_and_resume() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = spawn_server(dir.path()).await;
    let pid = server.pid();

    let mut conversations = Vec::new();
    for c in 0..CONVERSATIONS {
        let customer_token = customer(&format!("stalled-customer-{c}"));
        let id = server.http.open_as_customer(&customer_token).await;
        conversations.push((id, customer_token));
    }

    // Readers that keep up: one agent per conversation, reading until told its head.
    let mut readers = JoinSet::new();
    let mut reader_heads = Vec::new();
    for (c, (conversation, _)) in conversations.iter().enumerate() {
        let mut client = server.client(&agent(&format!("keeps-up-{c}"))).await;
        client.subscribe(conversation, None).await;
        let (tell_head, head) = tokio::sync::watch::channel(None::<u64>);
        reader_heads.push((conversation.clone(), tell_head));
        let conversation = conversation.clone();
        readers.spawn(async move {
            let mut got = Vec::new();
            loop {
                let target = *head.borrow();
                if target.is_some_and(|target| got.last().copied() >= Some(target)) {
                    break;
                }
                if let Some(frame) = client.try_next_frame(Duration::from_millis(200)).await {
                    if ty(&frame) == "event" {
                        assert_eq!(frame["conversation_id"], conversation.as_str(), "{frame}");
                        got.push(frame["seq"].as_u64().expect("seq"));
                    }
                }
            }
            // Still connected: a command is answered.
            client.sync().await;
            (conversation, got)
        });
    }

    // The stalled sockets: a tiny receive window, hello, subscribe, then no more reads.
    let connecting = Arc::new(Semaphore::new(64));
    let mut joining = JoinSet::new();
    for i in 0..SLOW_SOCKETS {
        let (conversation, customer_token) = conversations[i % CONVERSATIONS].clone();
        let is_customer = i.is_multiple_of(CUSTOMER_EVERY);
        let token = if is_customer {
            customer_token
        } else {
            agent(&format!("stalled-agent-{i}"))
        };
        let addr = server.addr;
        let connecting = connecting.clone();
        joining.spawn(async move {
            let _permit = connecting.acquire_owned().await.expect("semaphore");
            let mut client = connect(
                addr,
                ConnectOptions {
                    recv_buffer: Some(4 * 1024),
                    ..Default::default()
                },
            )
            .await
            .expect("connect a stalled socket");
            client.hello(&token).await;
            client.subscribe(&conversation, None).await;
            Stalled {
                client,
                token,
                conversation,
                customer: is_customer,
            }
        });
    }
    let mut stalled = Vec::with_capacity(SLOW_SOCKETS);
    while let Some(joined) = joining.join_next().await {
        stalled.push(joined.expect("stalled socket task"));
    }
    let rss_before = rss_kib(pid);

    // Writers: two agents per conversation, alternating notes and public messages, until
    // every stalled socket has been closed.
    let done = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let mut writers = JoinSet::new();
    let body = "w".repeat(BODY_BYTES);
    for (c, (conversation, _)) in conversations.iter().enumerate() {
        for w in 0..2 {
            let mut client = server.client(&agent(&format!("writer-{c}-{w}"))).await;
            let (conversation, body, done, writes) = (
                conversation.clone(),
                body.clone(),
                done.clone(),
                writes.clone(),
            );
            writers.spawn(async move {
                let mut sent = 0u64;
                while !done.load(Ordering::Relaxed) && sent < MAX_WRITES_PER_CONVERSATION / 2 {
                    let id = format!("w{c}-{w}-{sent}");
                    if sent.is_multiple_of(2) {
                        client.note(&conversation, &id, &body).await;
                    } else {
                        client.message(&conversation, &id, &body).await;
                    }
                    sent += 1;
                    writes.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    }
    let started = Instant::now();
    let mut rss_peak = rss_before;
    loop {
        rss_peak = rss_peak.max(rss_kib(pid));
        let closed = slow_consumers_closed(&server.http).await;
        if closed >= SLOW_SOCKETS as u64 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90) && !writers.is_empty(),
            "only {closed} of {SLOW_SOCKETS} stalled sockets closed after {} writes",
            writes.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        // A writer task that ended early failed: surface its panic.
        while let Some(result) = writers.try_join_next() {
            result.expect("writer");
        }
    }
    // They read again now: what was in their buffers, then the close frame, which the
    // server waits for only a few seconds to send before it drops the connection.
    let mut draining = JoinSet::new();
    for mut s in stalled {
        draining.spawn(async move {
            let (frames, closed) = s.client.drain_until_close(STEP).await;
            (s, frames, closed)
        });
    }
    done.store(true, Ordering::Relaxed);
    while let Some(result) = writers.join_next().await {
        result.expect("writer");
    }
    rss_peak = rss_peak.max(rss_kib(pid));
    let written = writes.load(Ordering::Relaxed);

    // The bound: per stalled socket one flush's worth of copied bytes (16 KiB plus the
    // frame crossing it, ~3 KiB here) and the queue's slots; every frame written alive at
    // once in both audiences' encodings; and 32 MiB for the store's caches and the
    // allocator's slack.
    let frame_kib = (BODY_BYTES / 1024 + 1) as u64;
    let per_socket_kib = 16 + frame_kib + (SEND_QUEUE as u64 * 32).div_ceil(1024);
    let bound_kib = SLOW_SOCKETS as u64 * per_socket_kib + written * 2 * frame_kib + 32 * 1024;
    let grown = rss_peak.saturating_sub(rss_before);
    eprintln!(
        "stalled sockets: {SLOW_SOCKETS}, writes until all closed: {written}, RSS before \
         {rss_before} KiB, peak {rss_peak} KiB (+{grown} KiB), bound +{bound_kib} KiB"
    );
    assert!(
        grown <= bound_kib,
        "RSS grew by {grown} KiB with {SLOW_SOCKETS} stalled sockets; the bound is {bound_kib} KiB"
    );

    // Where every conversation ended, per audience.
    let mut heads = HashMap::new();
    for (conversation, customer_token) in &conversations {
        let agent_head = server.http.head(&agent("head-reader"), conversation).await;
        let public_head = server.http.head(customer_token, conversation).await;
        heads.insert(conversation.clone(), (agent_head, public_head));
    }

    // The readers that kept up got every event, once, in order, and are still connected.
    for (conversation, tell_head) in &reader_heads {
        tell_head.send_replace(Some(heads[conversation].0));
    }
    while let Some(result) = tokio::time::timeout(STEP * 3, readers.join_next())
        .await
        .expect("the readers that keep up finish")
    {
        let (conversation, got) = result.expect("reader that keeps up");
        assert_eq!(
            got,
            range(2, heads[&conversation].0),
            "a reader that kept up missed or repeated"
        );
    }

    // Every stalled socket: a gap-free prefix, then 4008; then `since` brings the rest.
    // (64 at a time: the replays are checked by this process, which shares the machine.)
    let mut checks = JoinSet::new();
    while let Some(drained) = draining.join_next().await {
        let (s, frames, closed) = drained.expect("draining a stalled socket");
        let addr = server.addr;
        let (agent_head, public_head) = heads[&s.conversation];
        let checking = connecting.clone();
        checks.spawn(async move {
            let _permit = checking.acquire_owned().await.expect("semaphore");
            assert_eq!(closed.code, Some(4008), "{closed:?}");
            if s.customer {
                let internal: Vec<_> = s
                    .client
                    .transcript()
                    .iter()
                    .filter(|t| t.contains("\"note\"") || t.contains("\"presence\""))
                    .cloned()
                    .collect();
                assert!(
                    internal.is_empty(),
                    "internal frames at a customer: {internal:?}"
                );
            }
            let got = event_seqs(&frames);
            let last = got.last().copied().unwrap_or(1);
            assert_eq!(got, range(2, last), "a gap before the cut");
            let head = if s.customer { public_head } else { agent_head };
            assert!(
                last < head,
                "a stalled socket got everything before its close"
            );

            let mut again = connect(addr, ConnectOptions::default())
                .await
                .expect("reconnect");
            again.hello(&s.token).await;
            let (replay, ok) = again.subscribe(&s.conversation, Some(last)).await;
            assert_eq!(ok["head"], head);
            assert_ne!(ok["truncated"], Value::Bool(true), "{ok}");
            assert_eq!(event_seqs(&replay), range(last + 1, head));
            let kinds: BTreeSet<String> = replay
                .iter()
                .map(|f| f["event"]["kind"].as_str().unwrap_or("").to_owned())
                .collect();
            if s.customer {
                assert!(!kinds.contains("note"), "a note replayed to a customer");
            }
            again.close().await;
        });
    }
    let mut resumed = 0;
    while let Some(result) = checks.join_next().await {
        result.expect("stalled socket check");
        resumed += 1;
    }
    assert_eq!(resumed, SLOW_SOCKETS);
}
