//! Streams and `seq`: each audience reads its own gap-free stream; live delivery is in
//! order and exactly once, also with concurrent writers; `subscribe` replays before its
//! `ok` and joins the live feed without a gap; `since` resumes exactly where a client left
//! off; `send` and `note` are idempotent per author and `client_id` (across reconnects
//! too); re-subscribing stays one subscription; `unsubscribe` stops delivery; a `since`
//! beyond the head resets; a replay over 1,000 events is truncated and the rest pages
//! over HTTP.

use serde_json::{json, Value};
use tokio::task::JoinSet;

use crate::support::*;

fn event_ids(entries: &[Value]) -> Vec<String> {
    entries
        .iter()
        .map(|e| e["event"]["id"].as_str().expect("event id").to_owned())
        .collect()
}

/// `count` notes over one socket, one after the other; returns each `ok`.
async fn write_notes(
    mut client: Client,
    conversation: String,
    prefix: String,
    count: usize,
) -> Vec<Value> {
    let mut oks = Vec::with_capacity(count);
    for i in 0..count {
        let ok = client
            .note(
                &conversation,
                &format!("{prefix}-{i}"),
                &format!("note {prefix} #{i}"),
            )
            .await;
        oks.push(ok);
    }
    oks
}

/// Writes `count` notes spread over `sockets` agent sockets concurrently.
async fn write_notes_concurrently(
    server: &TestServer,
    conversation: &str,
    sockets: usize,
    count: usize,
) -> Vec<Value> {
    let mut tasks = JoinSet::new();
    for w in 0..sockets {
        let client = server.client(&agent(&format!("writer-{w}"))).await;
        let n = count / sockets + usize::from(w < count % sockets);
        tasks.spawn(write_notes(
            client,
            conversation.to_owned(),
            format!("w{w}"),
            n,
        ));
    }
    let mut oks = Vec::new();
    while let Some(result) = tasks.join_next().await {
        oks.extend(result.expect("writer task"));
    }
    assert_eq!(oks.len(), count);
    oks
}

#[tokio::test(flavor = "multi_thread")]
async fn each_audience_reads_its_own_gap_free_stream() {
    let server = TestServer::start().await;
    let cust = customer("carol");
    let alice = agent("alice");
    let sam = supervisor("sam");
    let conv = server.open_as_customer(&cust).await;
    let mut c = server.client(&cust).await;
    let mut a = server.client(&alice).await;
    let mut s = server.client(&sam).await;

    for i in 0..4 {
        c.message(&conv, &format!("c{i}"), &format!("customer {i}"))
            .await;
        a.note(&conv, &format!("n{i}"), &format!("note {i}")).await;
        s.ok(
            json!({"type": "note", "conversation_id": conv, "client_id": format!("s{i}"),
                    "body": format!("coaching {i}"), "audience": "supervisors"}),
        )
        .await;
        a.message(&conv, &format!("a{i}"), &format!("reply {i}"))
            .await;
    }
    // 1 opened + 8 messages public; + 4 notes for agents; + 4 supervisor notes.
    let public = server.history(&cust, &conv).await;
    let agents = server.history(&alice, &conv).await;
    let sups = server.history(&sam, &conv).await;
    assert_eq!(public.seqs(), range(1, 9));
    assert_eq!(agents.seqs(), range(1, 13));
    assert_eq!(sups.seqs(), range(1, 17));
    assert_eq!((public.head, agents.head, sups.head), (9, 13, 17));

    // Each stream is the visible part of the same log, in the same order.
    let all = event_ids(&sups.events);
    let agent_visible: Vec<String> = sups
        .events
        .iter()
        .filter(|e| e["event"]["audience"] != "supervisors")
        .map(|e| e["event"]["id"].as_str().unwrap().to_owned())
        .collect();
    let public_visible: Vec<String> = sups
        .events
        .iter()
        .filter(|e| e["event"]["kind"] != "note")
        .map(|e| e["event"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(all.len(), 17);
    assert_eq!(event_ids(&agents.events), agent_visible);
    assert_eq!(event_ids(&public.events), public_visible);

    // The shape of every entry is the protocol's.
    for entry in &sups.events {
        let _: backchannel_protocol::http::HistoryEntry = serde_json::from_value(entry.clone())
            .unwrap_or_else(|e| panic!("history entry does not match the protocol ({e}): {entry}"));
    }
    let first = &public.events[0]["event"];
    assert_eq!(first["kind"], "conversation_opened");
    assert_eq!(first["inbox_id"], "support");
    assert_eq!(first["actor"]["id"], "carol");
    assert_eq!(first["actor"]["role"], "customer");
    let message = &public.events[1]["event"];
    assert_eq!(message["kind"], "message");
    assert_eq!(message["body"], "customer 0");
    let note = &agents.events[2]["event"];
    assert_eq!(note["kind"], "note");
    assert_eq!(note["note_type"], "general");
    assert_eq!(note["audience"], "agents");
    assert_eq!(note["actor"]["id"], "alice");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_writers_are_delivered_in_order_exactly_once() {
    let server = TestServer::start().await;
    let cust = customer("carol");
    let conv = server.open_as_customer(&cust).await;
    let mut watcher = server.client(&agent("watcher")).await;
    let (replay, _) = watcher.subscribe(&conv, None).await;
    assert_eq!(seqs(&replay), vec![1]);
    let mut cust_ws = server.client(&cust).await;
    cust_ws.subscribe(&conv, None).await;

    // Four agents write notes while the customer writes messages, all at once.
    let mut customer_writer = server.client(&cust).await;
    let conv2 = conv.clone();
    let customer_task = tokio::spawn(async move {
        let mut oks = Vec::new();
        for i in 0..15 {
            oks.push(
                customer_writer
                    .message(&conv2, &format!("m{i}"), &format!("message {i}"))
                    .await,
            );
        }
        oks
    });
    let notes = write_notes_concurrently(&server, &conv, 4, 60).await;
    let messages = customer_task.await.unwrap();

    // Every ok has a distinct seq; the customer's are their public stream: 2..=16.
    let mut note_seqs: Vec<u64> = notes.iter().map(|o| o["seq"].as_u64().unwrap()).collect();
    note_seqs.sort();
    note_seqs.dedup();
    assert_eq!(note_seqs.len(), 60, "distinct seqs for distinct notes");
    let message_seqs: Vec<u64> = messages
        .iter()
        .map(|o| o["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        message_seqs,
        range(2, 16),
        "a customer's own writes in its stream, in order"
    );

    let head = 1 + 60 + 15;
    let live = watcher.frames_until_seq(head).await;
    watcher.sync().await;
    watcher.expect_silence(QUIET).await;
    all_events(&live);
    assert_eq!(
        seqs(&live),
        range(2, head),
        "agent's live feed: in order, once, no gap"
    );
    let history = server.history(&agent("watcher"), &conv).await;
    assert_eq!(
        event_ids(&live),
        event_ids(&history.events[1..]),
        "live matches history"
    );

    let public_live = cust_ws.frames_until_seq(16).await;
    cust_ws.sync().await;
    cust_ws.expect_silence(QUIET).await;
    assert_eq!(seqs(&public_live), range(2, 16));
}

#[tokio::test(flavor = "multi_thread")]
async fn resume_with_since_gets_exactly_the_missed_events() {
    let server = TestServer::start().await;
    let cust = customer("carol");
    let alice = agent("alice");
    let conv = server.open_as_customer(&cust).await;
    let mut a = server.client(&alice).await;

    let mut c = server.client(&cust).await;
    c.subscribe(&conv, None).await;
    c.message(&conv, "c1", "first").await;
    a.message(&conv, "a1", "reply").await;
    let seen = c.frames_until_seq(3).await;
    assert_eq!(seqs(&seen), vec![2, 3]);
    let last_seen = 3;
    c.close().await;

    // While the customer is away: two replies and three notes.
    a.note(&conv, "n1", "internal 1").await;
    a.message(&conv, "a2", "are you there?").await;
    a.note(&conv, "n2", "internal 2").await;
    a.note(&conv, "n3", "internal 3").await;
    a.message(&conv, "a3", "closing soon").await;

    let mut c = server.client(&cust).await;
    let (replay, ok) = c.subscribe(&conv, Some(last_seen)).await;
    all_events(&replay);
    assert_eq!(
        seqs(&replay),
        vec![4, 5],
        "exactly the missed public events"
    );
    assert_eq!(replay[0]["event"]["body"], "are you there?");
    assert_eq!(replay[1]["event"]["body"], "closing soon");
    assert_eq!(ok["head"], 5);
    assert_eq!(ok["conversation_id"], conv.as_str());
    assert_ne!(ok["truncated"], json!(true));
    assert_ne!(ok["reset"], json!(true));

    // Then live, continuing the same numbering.
    a.message(&conv, "a4", "bye").await;
    let live = c.next_event().await;
    assert_eq!(live["seq"], 6);
    assert_eq!(live["conversation_id"], conv.as_str());

    // The agent's stream resumes the same way, in its own numbering.
    let mut a2 = server.client(&alice).await;
    let (replay, ok) = a2.subscribe(&conv, Some(4)).await;
    assert_eq!(seqs(&replay), range(5, 9));
    assert_eq!(ok["head"], 9);

    // since == head: nothing to replay.
    let mut a3 = server.client(&alice).await;
    let (replay, ok) = a3.subscribe(&conv, Some(9)).await;
    assert!(replay.is_empty(), "{replay:?}");
    assert_eq!(ok["head"], 9);
    assert_ne!(ok["reset"], json!(true));
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_comes_before_ok_and_joins_live_without_gap() {
    let server = TestServer::start().await;
    let cust = customer("carol");
    let conv = server.open_as_customer(&cust).await;
    let total = 200;

    // A writer keeps writing while three subscribers join at different moments.
    let mut writer = server.client(&agent("writer")).await;
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0usize);
    let conv2 = conv.clone();
    let writer_task = tokio::spawn(async move {
        let mut oks = Vec::new();
        for i in 0..total {
            oks.push(
                writer
                    .note(&conv2, &format!("w-{i}"), &format!("note {i}"))
                    .await,
            );
            let _ = progress_tx.send(i + 1);
        }
        oks
    });
    let mut subscribers = Vec::new();
    for i in 0..3 {
        let mut sub = server.client(&agent(&format!("reader-{i}"))).await;
        // Join once the writer is this far (waiting on the writer, not on time).
        tokio::time::timeout(STEP, progress.wait_for(|n| *n >= 30 * (i + 1)))
            .await
            .expect("writer stalled")
            .expect("writer alive");
        let (replay, ok) = sub.subscribe(&conv, Some(0)).await;
        all_events(&replay);
        let head = ok["head"].as_u64().unwrap();
        assert_eq!(
            seqs(&replay),
            range(1, head),
            "replay is everything up to the ok's head"
        );
        subscribers.push((sub, replay, head));
    }
    let oks = writer_task.await.unwrap();
    let final_head = oks.last().unwrap()["seq"].as_u64().unwrap();
    assert_eq!(final_head, 1 + total as u64);

    for (mut sub, replay, head) in subscribers {
        let live = if head < final_head {
            sub.frames_until_seq(final_head).await
        } else {
            Vec::new()
        };
        sub.sync().await;
        sub.expect_silence(QUIET).await;
        all_events(&live);
        let mut all = seqs(&replay);
        all.extend(seqs(&live));
        assert_eq!(
            all,
            range(1, final_head),
            "replay then live: no gap, no duplicate"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn send_and_note_are_idempotent_per_author_and_client_id() {
    let server = TestServer::start().await;
    let cust = customer("carol");
    let alice = agent("alice");
    let conv = server.open_as_customer(&cust).await;
    let mut watcher = server.client(&supervisor("sam")).await;
    watcher.subscribe(&conv, None).await;

    let mut c = server.client(&cust).await;
    let first = c.message(&conv, "retry-me", "original text").await;
    assert_eq!(first["seq"], 2);
    assert_ne!(
        first["duplicate"],
        json!(true),
        "first write is not a duplicate"
    );
    let again = c.message(&conv, "retry-me", "original text").await;
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["event_id"], first["event_id"]);
    assert_eq!(again["seq"], first["seq"]);
    // A retry whose body differs is still the same command: the first result stands.
    let changed = c.message(&conv, "retry-me", "edited text").await;
    assert_eq!(changed["duplicate"], true);
    assert_eq!(changed["event_id"], first["event_id"]);

    // Across a reconnect (the usual reason for a retry).
    c.close().await;
    let mut c = server.client(&cust).await;
    let after_reconnect = c.message(&conv, "retry-me", "original text").await;
    assert_eq!(after_reconnect["duplicate"], true);
    assert_eq!(after_reconnect["event_id"], first["event_id"]);

    // Notes: same rules. The same client_id by another author is a different command.
    let mut a = server.client(&alice).await;
    let note = a.note(&conv, "retry-me", "internal").await;
    assert_ne!(note["duplicate"], json!(true));
    assert_ne!(note["event_id"], first["event_id"]);
    assert_eq!(note["seq"], 3, "agent stream: opened, message, note");
    let note_again = a.note(&conv, "retry-me", "internal").await;
    assert_eq!(note_again["duplicate"], true);
    assert_eq!(note_again["event_id"], note["event_id"]);
    assert_eq!(note_again["seq"], 3);
    assert!(
        note_again["mentioned"].is_array(),
        "note ok carries `mentioned`: {note_again}"
    );

    // Stored and delivered once each.
    let live = watcher.frames_until_seq(3).await;
    watcher.sync().await;
    watcher.expect_silence(QUIET).await;
    assert_eq!(seqs(&live), vec![2, 3]);
    let history = server.history(&supervisor("sam"), &conv).await;
    assert_eq!(history.seqs(), vec![1, 2, 3]);
    assert_eq!(history.events[1]["event"]["body"], "original text");
    assert_eq!(server.head(&cust, &conv).await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn resubscribing_replays_from_the_new_since_and_stays_one_subscription() {
    let server = TestServer::start().await;
    let cust = customer("carol");
    let conv = server.open_as_customer(&cust).await;
    let mut a = server.client(&agent("alice")).await;
    a.message(&conv, "a1", "one").await;
    a.message(&conv, "a2", "two").await;

    let mut c = server.client(&cust).await;
    let (replay, _) = c.subscribe(&conv, None).await;
    assert_eq!(seqs(&replay), vec![1, 2, 3]);
    let (replay, ok) = c.subscribe(&conv, Some(1)).await;
    assert_eq!(seqs(&replay), vec![2, 3], "replays from the new since");
    assert_eq!(ok["head"], 3);

    a.message(&conv, "a3", "three").await;
    let live = c.frames_until_seq(4).await;
    c.sync().await;
    c.expect_silence(QUIET).await;
    assert_eq!(
        seqs(&live),
        vec![4],
        "delivered once, not once per subscribe"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unsubscribe_stops_delivery_until_the_next_subscribe() {
    let server = TestServer::start().await;
    let cust = customer("carol");
    let conv = server.open_as_customer(&cust).await;
    let mut a = server.client(&agent("alice")).await;
    let mut c = server.client(&cust).await;
    c.subscribe(&conv, None).await;
    c.ok(json!({"type": "unsubscribe", "conversation_id": conv}))
        .await;

    a.message(&conv, "a1", "you won't see this live").await;
    a.sync().await;
    c.sync().await;
    c.expect_silence(QUIET).await;

    let (replay, ok) = c.subscribe(&conv, Some(1)).await;
    assert_eq!(seqs(&replay), vec![2]);
    assert_eq!(ok["head"], 2);
    a.message(&conv, "a2", "live again").await;
    assert_eq!(c.next_event().await["seq"], 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn since_beyond_the_head_resets_and_replays_from_the_start() {
    let server = TestServer::start().await;
    let cust = customer("carol");
    let conv = server.open_as_customer(&cust).await;
    let mut a = server.client(&agent("alice")).await;
    a.message(&conv, "a1", "one").await;
    a.note(&conv, "n1", "internal").await;

    // The customer remembers seq 40 from before a restore from backup.
    let mut c = server.client(&cust).await;
    let (replay, ok) = c.subscribe(&conv, Some(40)).await;
    assert_eq!(ok["reset"], true, "{ok}");
    assert_eq!(ok["head"], 2);
    all_events(&replay);
    assert_eq!(
        seqs(&replay),
        vec![1, 2],
        "replay starts from the beginning"
    );

    // An agent's stream has its own head: since 3 is its head, not beyond.
    let mut a2 = server.client(&agent("bob")).await;
    let (replay, ok) = a2.subscribe(&conv, Some(3)).await;
    assert!(replay.is_empty());
    assert_ne!(
        ok["reset"],
        json!(true),
        "since == head is not a reset: {ok}"
    );
    let (replay, ok) = a2.subscribe(&conv, Some(4)).await;
    assert_eq!(ok["reset"], true, "{ok}");
    assert_eq!(seqs(&replay), vec![1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_over_1000_events_is_truncated_and_the_rest_pages_over_http() {
    let server = TestServer::start().await;
    let cust = customer("carol");
    let alice = agent("alice");
    let conv = server.open_as_customer(&cust).await;
    write_notes_concurrently(&server, &conv, 6, 1005).await;
    let head = 1006;
    assert_eq!(server.head(&alice, &conv).await, head);

    let mut a = server.client(&alice).await;
    let (replay, ok) = a.subscribe(&conv, Some(0)).await;
    all_events(&replay);
    assert_eq!(replay.len(), 1000, "at most 1,000 events are replayed");
    assert_eq!(seqs(&replay), range(7, head), "the newest 1,000, in order");
    assert_eq!(ok["truncated"], true, "{ok}");
    assert_eq!(ok["replay_from"], 7);
    assert_eq!(ok["head"], head);

    // The client pages after=since up to replay_from - 1 over HTTP.
    let page = server.history_page(&alice, &conv, 0, 6).await.json();
    assert_eq!(seqs(page["events"].as_array().unwrap()), range(1, 6));
    assert_eq!(page["head"], head);

    // Exactly 1,000 after since: not truncated.
    let mut b = server.client(&alice).await;
    let (replay, ok) = b.subscribe(&conv, Some(6)).await;
    assert_eq!(seqs(&replay), range(7, head));
    assert_ne!(ok["truncated"], json!(true), "{ok}");
    // 1,001 after since: truncated again.
    let (replay, ok) = b.subscribe(&conv, Some(5)).await;
    assert_eq!(replay.len(), 1000);
    assert_eq!(ok["truncated"], true);
    assert_eq!(ok["replay_from"], 7);

    // Default page size is 100; the maximum is honoured.
    let reply = server
        .http
        .get(&format!("/v1/conversations/{conv}/events"), Some(&alice))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(
        seqs(reply.json()["events"].as_array().unwrap()),
        range(1, 100)
    );
    let page = server.history_page(&alice, &conv, 0, 1000).await.json();
    assert_eq!(seqs(page["events"].as_array().unwrap()), range(1, 1000));
}

/// A replay that blocks on a slow reader can outlive its room: when every member leaves
/// meanwhile, the room closes and the join goes on in a new one. It must go on from where
/// the replay got to, not replay again from `since` (found by the 1,000 stalled sockets
/// test, where it sent a resuming customer its missed events twice).
#[tokio::test(flavor = "multi_thread")]
async fn a_replay_outliving_its_room_is_not_repeated() {
    let server = TestServer::start_with(|config| {
        config.limits.send_queue_frames = 16;
    })
    .await;
    let conv = server.open_as_customer(&customer("carol")).await;
    let mut writer = server.client(&agent("writer")).await;
    let body = "x".repeat(15_000);
    let notes = 60;
    for i in 0..notes {
        writer.note(&conv, &format!("n{i}"), &body).await;
    }
    let head = 1 + notes;

    // The room's only member.
    let mut member = server.client(&agent("member")).await;
    member.subscribe(&conv, None).await;

    // A reader with a tiny window asks for the whole replay and does not read yet, so
    // the replay stops on its full queue.
    let mut reader = server.narrow_client(&agent("reader")).await;
    reader
        .send_json(&json!({"type": "subscribe", "conversation_id": conv, "since": 0, "ref": "s"}))
        .await;
    tokio::time::sleep(QUIET).await;

    // The member leaves: the room is empty (the reader is not a member until its replay
    // is done) and closes.
    member.close().await;
    tokio::time::sleep(QUIET).await;

    // Now the reader reads: every event once, then the ok.
    let mut got = Vec::new();
    loop {
        let frame = reader.next_frame(STEP).await;
        match ty(&frame) {
            "event" => got.push(frame["seq"].as_u64().expect("seq")),
            "ok" if frame["ref"] == "s" => {
                assert_eq!(frame["head"], head);
                break;
            }
            other => panic!("unexpected {other} frame: {frame}"),
        }
    }
    assert_eq!(got, range(1, head));

    // And it is live.
    writer.note(&conv, "after", "live").await;
    assert_eq!(reader.next_event().await["seq"], head + 1);
}

/// The `ok` of a `subscribe` is the line between replay and live: every event before it
/// is at or below its `head`, and the first one after it is `head + 1`. Joining while
/// notes pour in is when a live event could slip in ahead of the `ok`; this joins a few
/// hundred times under four writers.
#[tokio::test(flavor = "multi_thread")]
async fn no_live_event_arrives_before_the_subscribe_ok_under_concurrent_writes() {
    let server = TestServer::start().await;
    let conv = server.open_as_customer(&customer("carol")).await;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut writers = JoinSet::new();
    for w in 0..4 {
        let mut writer = server.client(&agent(&format!("writer-{w}"))).await;
        let conv = conv.clone();
        let stop = stop.clone();
        writers.spawn(async move {
            let mut i = 0;
            while !*stop.borrow() {
                writer
                    .note(&conv, &format!("w{w}-{i}"), &format!("note {i}"))
                    .await;
                i += 1;
            }
            i
        });
    }
    let mut readers = JoinSet::new();
    for r in 0..6 {
        let mut reader = server.client(&agent(&format!("reader-{r}"))).await;
        let conv = conv.clone();
        readers.spawn(async move {
            let mut since = 0;
            for _ in 0..200 {
                let (before, ok) = reader.subscribe(&conv, Some(since)).await;
                all_events(&before);
                let head = ok["head"].as_u64().expect("head");
                assert_eq!(
                    seqs(&before),
                    range(since + 1, head),
                    "before the ok: the replay from since up to head, nothing live"
                );
                let after = reader.next_event().await;
                assert_eq!(
                    after["seq"].as_u64(),
                    Some(head + 1),
                    "live starts at head + 1"
                );
                let (_, unsubscribed) = reader
                    .request_collect(json!({"type": "unsubscribe", "conversation_id": conv}))
                    .await;
                unsubscribed.expect("unsubscribe");
                since = head.saturating_sub(3);
            }
        });
    }
    while let Some(done) = readers.join_next().await {
        done.expect("reader");
    }
    stop_tx.send(true).expect("writers listen");
    while let Some(written) = writers.join_next().await {
        assert!(written.expect("writer") > 0);
    }
}
