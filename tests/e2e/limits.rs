//! Limits that keep a node's memory and work bounded: a socket that stops reading while
//! notes flow is closed with 4008 (after a gap-free prefix of the stream) and resumes
//! with `since`, while a reader that keeps up is unaffected; over `max_connections` an
//! upgrade gets HTTP 503 and a freed slot can be reused; a socket silent for two
//! heartbeat intervals is closed with 4002 while one that answers pings stays; a socket
//! may hold at most `max_subscriptions` subscriptions; a live frame arriving during a long
//! replay still finds room in the queue; a burst of leaves costs the staff who stay a few
//! `presence` frames, not one each; a socket that floods pings and reads nothing is closed
//! once the pongs owed to it pass the write bound.

use std::time::Duration;

use serde_json::json;
use tokio::task::JoinSet;

use crate::support::*;

/// The most a kernel may buffer for one TCP sender (tcp_wmem's maximum), 4 MiB if unknown.
fn max_socket_send_buffer() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2).and_then(|n| n.parse().ok()))
        .unwrap_or(4 << 20)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_socket_that_stops_reading_is_closed_with_4008_and_resumes_with_since() {
    let server = TestServer::start_with(|config| {
        config.limits.send_queue_frames = 16;
    })
    .await;
    let cust = customer("carol");
    let conv = server.open_as_customer(&cust).await;

    // The slow reader has a tiny receive window and, after subscribing, reads nothing.
    let mut slow = server.narrow_client(&agent("slow")).await;
    slow.subscribe(&conv, None).await;

    // A reader that keeps up, reading concurrently.
    let body = "x".repeat(15_000);
    // Enough bytes to fill the kernel's buffers on both ends (generously) and then the
    // 16-frame queue several times over.
    let notes = ((max_socket_send_buffer() * 3 / 2) / body.len() + 16 * 4) as u64;
    let head = 1 + notes;
    let mut fast = server.client(&agent("fast")).await;
    fast.subscribe(&conv, None).await;
    let fast_task = tokio::spawn(async move {
        let frames = fast.frames_until_seq(head).await;
        (fast, frames)
    });

    let mut writers = JoinSet::new();
    let sockets = 4;
    for w in 0..sockets {
        let mut client = server.client(&agent(&format!("writer-{w}"))).await;
        let conv = conv.clone();
        let body = body.clone();
        let count = notes / sockets + u64::from(w < notes % sockets);
        writers.spawn(async move {
            for i in 0..count {
                client.note(&conv, &format!("w{w}-{i}"), &body).await;
            }
        });
    }
    while let Some(result) = writers.join_next().await {
        result.expect("writer");
    }

    // The reader that kept up got everything and is still connected.
    let (mut fast, frames) = fast_task.await.expect("fast reader");
    all_events(&frames);
    assert_eq!(seqs(&frames), range(2, head));
    fast.sync().await;

    // The slow one was cut off: what it got is a gap-free prefix, then close 4008.
    let (frames, closed) = slow.drain_until_close(STEP).await;
    assert_eq!(
        closed.code,
        Some(4008),
        "{closed:?} after {} frames",
        frames.len()
    );
    let events: Vec<_> = frames.into_iter().filter(|f| ty(f) == "event").collect();
    let got = seqs(&events);
    let last = got.last().copied().unwrap_or(1);
    assert_eq!(got, range(2, last), "no gap before the cut");
    assert!(
        last < head,
        "a slow reader should not have received everything"
    );

    // It resumes with `since` and misses nothing.
    let mut again = server.client(&agent("slow")).await;
    let (replay, ok) = again.subscribe(&conv, Some(last)).await;
    assert_eq!(ok["head"], head);
    let replayed = seqs(&replay);
    if ok["truncated"] == true {
        let from = ok["replay_from"].as_u64().unwrap();
        assert_eq!(replayed, range(from, head));
    } else {
        assert_eq!(replayed, range(last + 1, head));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn over_max_connections_the_upgrade_gets_503() {
    let server = TestServer::start_with(|config| {
        config.limits.max_connections = 3;
    })
    .await;
    let mut open = Vec::new();
    for i in 0..3 {
        open.push(server.client(&customer(&format!("c{i}"))).await);
    }
    match connect(server.addr, ConnectOptions::default()).await {
        Err(e) => assert_eq!(e.status(), Some(503), "{e:?}"),
        Ok(_) => panic!("a fourth socket was accepted over max_connections = 3"),
    }
    // HTTP still works, and the open sockets too.
    let reply = server.http.get("/healthz", None).await;
    assert_eq!(reply.status, 200);
    for ws in &mut open {
        ws.sync().await;
    }

    // Closing one frees its slot (poll: the server notices a close asynchronously).
    open.pop().unwrap().close().await;
    let deadline = tokio::time::Instant::now() + STEP;
    let mut ws = loop {
        match connect(server.addr, ConnectOptions::default()).await {
            Ok(ws) => break ws,
            Err(e) if e.status() == Some(503) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("the freed slot was not reusable: {e:?}"),
        }
    };
    ws.hello(&customer("c9")).await;
    ws.sync().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_socket_is_closed_with_4002_and_a_live_one_stays() {
    let server = TestServer::start_with(|config| {
        config.limits.heartbeat_interval = Duration::from_millis(200);
    })
    .await;
    let mut quiet = server.connect().await;
    let welcome = quiet.hello(&customer("carol")).await;
    assert_eq!(welcome["heartbeat_ms"], 200);
    let mut lively = server.client(&customer("dave")).await;

    // `lively` keeps reading, so it answers the server's pings; `quiet` reads nothing
    // (and so answers nothing) for the same 1.2 s, five heartbeat intervals.
    let lively_task = tokio::spawn(async move {
        lively.expect_silence(Duration::from_millis(1200)).await;
        lively.sync().await;
        lively
    });
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let closed = quiet.expect_close(STEP).await;
    assert_eq!(closed.code, Some(4002), "{closed:?}");
    let mut lively = lively_task.await.expect("the live socket stayed open");
    lively.sync().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_socket_holds_at_most_max_subscriptions() {
    let server = TestServer::start_with(|config| {
        config.limits.max_subscriptions = 3;
    })
    .await;
    let cust = customer("carol");
    let mut convs = Vec::new();
    for _ in 0..4 {
        convs.push(server.open_as_customer(&cust).await);
    }
    let mut ws = server.client(&cust).await;
    for conv in &convs[..3] {
        ws.subscribe(conv, None).await;
    }
    ws.error_code(
        json!({"type": "subscribe", "conversation_id": convs[3]}),
        "bad_request",
    )
    .await;
    // Re-subscribing is not a new subscription.
    ws.subscribe(&convs[0], Some(1)).await;
    // Unsubscribing frees one.
    ws.ok(json!({"type": "unsubscribe", "conversation_id": convs[1]}))
        .await;
    ws.subscribe(&convs[3], None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_user_may_hold_max_connections_per_user_sockets() {
    // One token (or a client that leaks sockets) must not take the node's every slot.
    let server = TestServer::start_with(|config| {
        config.limits.max_connections_per_user = 3;
    })
    .await;
    let carol = customer("carol");
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(server.client(&carol).await);
    }
    let mut fourth = server.connect().await;
    fourth
        .send_json(&json!({"type": "hello", "token": carol, "ref": "h"}))
        .await;
    let (frames, closed) = fourth.drain_until_close(STEP).await;
    assert_eq!(closed.code, Some(4029), "{closed:?}");
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["code"], "rate_limited", "{frames:?}");
    assert_eq!(frames[0]["ref"], "h", "{frames:?}");
    // Other users are not affected, and a freed slot is the user's again.
    server.client(&customer("dave")).await.sync().await;
    open.pop().expect("a socket").close().await;
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let mut again = server.connect().await;
        again
            .send_json(&json!({"type": "hello", "token": carol}))
            .await;
        let frame = again.next_frame(STEP).await;
        if ty(&frame) == "welcome" {
            break;
        }
        // The closed socket's slot is freed when its task ends, a moment later.
        assert!(tokio::time::Instant::now() < deadline, "{frame}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for ws in &mut open {
        ws.sync().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_over_the_socket_rate_are_refused_and_change_nothing() {
    let server = TestServer::start_with(|config| {
        config.limits.commands_per_second = 5;
        config.limits.user_commands_per_second = 1_000;
    })
    .await;
    let cust = customer("carol");
    let conv = server.open_as_customer(&cust).await;
    let alice = agent("alice");
    let mut ws = server.client(&alice).await;
    let head = server.head(&alice, &conv).await;
    // A burst of twice the rate goes through; the rest is refused, each under its ref.
    let mut accepted = 0;
    let mut limited = 0;
    for i in 0..30 {
        match ws
            .request(note_frame(&conv, &format!("n{i}"), "burst"))
            .await
        {
            Ok(_) => accepted += 1,
            Err(error) => {
                assert_eq!(error["code"], "rate_limited", "{error}");
                limited += 1;
            }
        }
    }
    assert!(limited > 0, "30 notes at once must trip a limit of 5/s");
    assert!(
        (10..=13).contains(&accepted),
        "burst of 10 (+ refill) accepted, got {accepted}"
    );
    assert_eq!(
        server.head(&alice, &conv).await,
        head + accepted,
        "refused notes were not stored"
    );
    // Ping is never limited, and the socket stays open.
    ws.sync().await;
    // After a pause the socket may write again.
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    ws.ok(note_frame(&conv, "after-pause", "calm")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_frames_count_against_the_rate_too() {
    // Each costs an answer like any command: a flood of them must not be free.
    let server = TestServer::start_with(|config| {
        config.limits.commands_per_second = 5;
        config.limits.user_commands_per_second = 1_000;
    })
    .await;
    let mut ws = server.client(&agent("alice")).await;
    for text in ["{\"type\":", "[1]", "\"x\""] {
        for _ in 0..10 {
            ws.send_text(text).await;
        }
    }
    ws.send_binary(vec![1, 2, 3]).await;
    let mut codes = Vec::new();
    while codes.len() < 31 {
        let frame = ws.next_frame(STEP).await;
        assert_eq!(ty(&frame), "error", "{frame}");
        codes.push(frame["code"].as_str().unwrap_or_default().to_owned());
    }
    let limited = codes.iter().filter(|c| *c == "rate_limited").count();
    assert!(
        (17..=21).contains(&limited),
        "a burst of 10 (+ refill) answered as bad_request, the rest limited: {codes:?}"
    );
    assert!(codes
        .iter()
        .all(|c| c == "rate_limited" || c == "bad_request"));
    // Ping is never limited, and the socket stays open.
    ws.sync().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_over_the_user_rate_is_refused_over_http_with_429() {
    let server = TestServer::start_with(|config| {
        config.limits.user_commands_per_second = 3;
    })
    .await;
    let alice = agent("alice");
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let reply = server.http.get("/v1/conversations", Some(&alice)).await;
        statuses.push(reply.status);
        if reply.status == 429 {
            reply.assert_error(429, "rate_limited");
        }
    }
    assert!(
        statuses.contains(&429),
        "12 requests at once over 3/s: {statuses:?}"
    );
    assert!(
        statuses.iter().take(6).all(|s| *s == 200),
        "the burst passes: {statuses:?}"
    );
    // Another user is not affected.
    let bob = agent("bob");
    assert_eq!(
        server
            .http
            .get("/v1/conversations", Some(&bob))
            .await
            .status,
        200
    );
}

/// A long replay fills the socket's queue only up to a reserve, so a live frame for
/// another subscription of the same socket, arriving meanwhile, still finds room: a
/// client that reads is never closed as slow because of its own replay.
#[tokio::test(flavor = "multi_thread")]
async fn a_live_frame_during_a_long_replay_does_not_close_the_socket() {
    let server = TestServer::start_with(|config| {
        config.limits.send_queue_frames = 16;
    })
    .await;
    let live = server.open_as_customer(&customer("carol")).await;
    let replayed = server.open_as_customer(&customer("dave")).await;
    let mut writer = server.client(&agent("writer")).await;
    let body = "x".repeat(15_000);
    let notes = 60;
    for i in 0..notes {
        writer.note(&replayed, &format!("n{i}"), &body).await;
    }

    let mut reader = server.narrow_client(&agent("reader")).await;
    reader.subscribe(&live, None).await;
    // The whole replay, not read yet: it stops when the queue is full but for the reserve.
    reader
        .send_json(
            &json!({"type": "subscribe", "conversation_id": replayed, "since": 0, "ref": "s"}),
        )
        .await;
    tokio::time::sleep(QUIET).await;
    // Two live notes in the other conversation meanwhile.
    writer.note(&live, "live-1", "one").await;
    writer.note(&live, "live-2", "two").await;

    // The reader reads: the replay, the ok, and both live notes; it was not closed.
    let mut replay = Vec::new();
    let mut live_seqs = Vec::new();
    let mut answered = false;
    while !answered || live_seqs.len() < 2 {
        let frame = reader.next_frame(STEP).await;
        match ty(&frame) {
            "event" if frame["conversation_id"] == replayed.as_str() => {
                replay.push(frame["seq"].as_u64().expect("seq"))
            }
            "event" => live_seqs.push(frame["seq"].as_u64().expect("seq")),
            "ok" if frame["ref"] == "s" => answered = true,
            other => panic!("unexpected {other} frame: {frame}"),
        }
    }
    assert_eq!(replay, range(1, 1 + notes));
    assert_eq!(live_seqs, vec![2, 3]);
    reader.sync().await;
}

/// The latest `presence` frame for `conversation` once it satisfies `pred`, reading
/// frames meanwhile; panics after [`STEP`].
async fn await_presence(client: &mut Client, conversation: &str, pred: impl Fn(&[String]) -> bool) {
    let deadline = std::time::Instant::now() + STEP;
    loop {
        let latest = client
            .presence()
            .iter()
            .rev()
            .find(|p| p["conversation_id"] == conversation)
            .map(|p| {
                p["viewers"]
                    .as_array()
                    .map(|v| {
                        v.iter()
                            .filter_map(|v| v["id"].as_str().map(str::to_owned))
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default()
            });
        if latest.as_deref().is_some_and(&pred) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "presence never matched; latest: {latest:?}"
        );
        let _ = client.try_next_frame(Duration::from_millis(50)).await;
    }
}

/// Twenty viewers leaving at once reach the staff who stay as a few `presence` frames
/// (each lists every viewer), not one per leave, and the last one is right.
#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_leaves_reaches_staff_as_a_few_presence_frames() {
    let server = TestServer::start().await;
    let conv = server.open_as_customer(&customer("carol")).await;
    let mut watcher = server.client(&agent("watcher")).await;
    watcher.subscribe(&conv, None).await;
    let mut leaving = Vec::new();
    for i in 0..20 {
        let mut client = server.client(&agent(&format!("leaving-{i}"))).await;
        client.subscribe(&conv, None).await;
        leaving.push(client);
    }
    await_presence(&mut watcher, &conv, |ids| ids.len() == 21).await;
    let before = watcher.presence().len();

    futures::future::join_all(leaving.into_iter().map(|client| client.close())).await;
    await_presence(&mut watcher, &conv, |ids| ids == ["watcher".to_owned()]).await;
    // Nothing more is on its way.
    let _ = watcher.collect_for(QUIET * 2).await;
    let frames = watcher.presence().len() - before;
    assert!(
        (1..=5).contains(&frames),
        "{frames} presence frames for 20 leaves"
    );
}

/// A peer that floods WebSocket pings and reads nothing is closed once the pongs owed to
/// it pass the write bound (1 MiB behind the kernel's buffers), not answered without end.
#[tokio::test(flavor = "multi_thread")]
async fn a_socket_that_pings_without_reading_is_closed_at_the_write_bound() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    let server = TestServer::start().await;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4 * 1024).expect("SO_RCVBUF");
    let stream = socket.connect(server.addr).await.expect("connect");
    let request = format!("ws://{}/v1/ws", server.addr)
        .into_client_request()
        .expect("request");
    let (mut ws, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .expect("handshake");
    ws.send(Message::text(
        json!({"type": "hello", "token": agent("pinger")}).to_string(),
    ))
    .await
    .expect("hello");
    // Pings of 125 bytes, never reading: once the server has taken ~2 MB of them (its
    // buffer, its kernel's and ours), it closes, and a write here fails. 200,000 would
    // owe 25 MB of pongs.
    const PINGS: usize = 200_000;
    let flood = async {
        for i in 0..PINGS {
            if ws
                .feed(Message::Ping(vec![b'p'; 125].into()))
                .await
                .is_err()
            {
                return Some(i);
            }
            if i % 100 == 99 && ws.flush().await.is_err() {
                return Some(i);
            }
        }
        None
    };
    let refused_at = tokio::time::timeout(STEP * 3, flood)
        .await
        .expect("the flood is written or refused, not stuck");
    let Some(refused_at) = refused_at else {
        panic!("{PINGS} pings sent without the server closing: nothing bounds the pongs");
    };
    assert!(
        refused_at > 8_000,
        "closed after {refused_at} pings: before the bound could have been reached"
    );
}

/// A node whose sockets fill up soon when their reader reads nothing: a small queue and
/// send buffer. The stall limit is two heartbeat intervals.
async fn stingy_server(max_connections: usize, heartbeat: Duration) -> TestServer {
    TestServer::start_with(|config| {
        config.limits.send_queue_frames = 16;
        config.limits.socket_send_buffer = Some(4096);
        config.limits.heartbeat_interval = heartbeat;
        config.limits.max_connections = max_connections;
    })
    .await
}

/// A conversation with ~240 KB of notes: more than a stingy socket's buffers hold.
async fn long_conversation(server: &TestServer) -> String {
    let conv = server.open_as_customer(&customer("carol")).await;
    let mut writer = server.client(&agent("writer")).await;
    let body = "x".repeat(4_000);
    for i in 0..60 {
        writer.note(&conv, &format!("n{i}"), &body).await;
    }
    conv
}

/// An agent's socket with a small receive window that asks for the whole of
/// `conversation` and then reads nothing.
async fn subscribed_reading_nothing(server: &TestServer, sub: &str, conversation: &str) -> Client {
    let mut client = server.narrow_client(&agent(sub)).await;
    client
        .send_json(&json!({"type": "subscribe", "conversation_id": conversation, "ref": "s"}))
        .await;
    client
}

/// Waits, reading nothing, until the node has closed `expected` sockets as slow.
async fn until_closed_as_slow(server: &TestServer, expected: u64) {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let metrics = server.http.get("/metrics", None).await.text;
        if counter(&metrics, "backchannel_slow_consumers_closed_total") >= expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not closed as slow within {STEP:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_socket_that_reads_none_of_its_own_answers_is_closed_with_4008_and_frees_its_slot() {
    // A socket's own answers and replays wait for room in its queue instead of closing
    // it at once (a long replay must not close a reader that keeps up), but they wait for
    // the reader's progress, not forever: a client that sent commands, or asked for a
    // long history, and reads nothing held its task and its connection slot for as long
    // as it stayed connected, and kept the node from shutting down.
    let server = stingy_server(2, Duration::from_millis(300)).await;
    let conv = long_conversation(&server).await;

    // A replay of ~240 KB to a socket that reads none of it.
    let mut replayed = subscribed_reading_nothing(&server, "replayed", &conv).await;
    until_closed_as_slow(&server, 1).await;
    let closed = replayed.expect_close(STEP).await;
    assert_eq!(closed.code, Some(4008), "{closed:?}");

    // Commands whose answers it never reads (pings: exempt from the rate limit).
    let mut commanding = server.narrow_client(&agent("commanding")).await;
    for i in 0..3_000 {
        if commanding
            .try_send_text(json!({"type": "ping", "ref": i}).to_string())
            .await
            .is_err()
        {
            break;
        }
    }
    until_closed_as_slow(&server, 2).await;
    let closed = commanding.expect_close(STEP).await;
    assert_eq!(closed.code, Some(4008), "{closed:?}");

    // Both slots are free again.
    let mut a = server.client(&agent("a")).await;
    let mut b = server.client(&agent("b")).await;
    a.sync().await;
    b.sync().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_does_not_wait_for_a_socket_that_reads_nothing() {
    // A stall limit of a minute: shutdown must not wait for it.
    let server = stingy_server(10, Duration::from_secs(30)).await;
    let conv = long_conversation(&server).await;
    let _stalled = subscribed_reading_nothing(&server, "stalled", &conv).await;
    // Shut down while its replay waits for room.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    server.shutdown().await.expect("a clean shutdown");
    // The socket's close frame may wait for its reader up to the close timeout (5 s).
    assert!(
        started.elapsed() < Duration::from_secs(7),
        "shutdown took {:?}",
        started.elapsed()
    );
}
