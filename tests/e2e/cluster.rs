//! Many nodes, end to end: every test starts real `backchannel serve` processes on a
//! fresh PostgreSQL database and a Redis (the machine's, or a private `redis-server` it
//! kills and restarts), and checks the cluster's promises from `docs/protocol.md` and
//! `docs/deploy.md` with real clients: a note written on one node reaches staff on
//! another and never its customer; a mention reaches a user connected only elsewhere;
//! after `kill -9` of a node its clients resume on another with `since` and every
//! acknowledged note arrives exactly once and in order; a Redis outage degrades
//! `/readyz` but loses and repeats nothing; a dead node's users turn offline within the
//! presence TTL and conversation presence crosses nodes (never to customers); writers on
//! two nodes share one gap-free order; `backchannel audit verify --database-url`
//! checks the chains of the PostgreSQL store; and `/metrics` counts the appends written
//! on remembered heads and those that fell back. The last three tests pin bugs this suite
//! found and that are fixed (each described above it): subscriptions renewed during a
//! Redis outage, notes whose node died before publishing them, and notifications
//! published while a node was cut off from Redis.

#[path = "cluster_support.rs"]
mod harness;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::support::process::run_cli;
use crate::support::*;
use harness::*;

/// Reads frames until one satisfies `pred` (others are dropped); panics at `deadline`.
async fn wait_frame(
    client: &mut Client,
    deadline: Instant,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    match wait_frame_or_none(client, deadline, pred).await {
        Some(frame) => frame,
        None => panic!("{what}: no such frame in time"),
    }
}

/// Like [`wait_frame`], but `None` at the deadline.
async fn wait_frame_or_none(
    client: &mut Client,
    deadline: Instant,
    pred: impl Fn(&Value) -> bool,
) -> Option<Value> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.try_next_frame(left).await {
            Some(frame) if pred(&frame) => return Some(frame),
            Some(_) => continue,
            None => return None,
        }
    }
}

/// Reads until an event with `seq >= head` arrives; `Err` with what arrived if the
/// deadline passes first.
async fn events_until(
    client: &mut Client,
    head: u64,
    deadline: Instant,
) -> Result<Vec<Value>, Vec<Value>> {
    let mut events = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.try_next_frame(left).await {
            Some(frame) if ty(&frame) == "event" => {
                let done = frame["seq"].as_u64() >= Some(head);
                events.push(frame);
                if done {
                    return Ok(events);
                }
            }
            Some(_) => continue,
            None => return Err(events),
        }
    }
}

/// The ids of a `presence` frame's viewers.
fn viewer_ids(frame: &Value) -> Vec<String> {
    frame["viewers"]
        .as_array()
        .unwrap_or_else(|| panic!("presence without viewers: {frame}"))
        .iter()
        .map(|v| v["id"].as_str().expect("viewer id").to_owned())
        .collect()
}

/// One viewer of a `presence` frame.
fn viewer(frame: &Value, id: &str) -> Option<Value> {
    frame["viewers"]
        .as_array()?
        .iter()
        .find(|v| v["id"] == id)
        .cloned()
}

/// Waits until the latest `presence` frame this client got for `conversation` satisfies
/// `pred`, reading (and dropping) other frames meanwhile; returns that frame.
async fn wait_presence(
    client: &mut Client,
    conversation: &str,
    deadline: Instant,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    loop {
        let latest = client
            .presence()
            .iter()
            .rev()
            .find(|p| p["conversation_id"] == conversation)
            .cloned();
        if let Some(frame) = latest {
            if pred(&frame) {
                return frame;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{what}: presence frames so far: {:?}",
            client.presence()
        );
        let _ = client.try_next_frame(Duration::from_millis(50)).await;
    }
}

/// The `type`s of every JSON frame in a transcript.
fn transcript_types(client: &Client) -> Vec<String> {
    client
        .transcript()
        .iter()
        .filter_map(|text| serde_json::from_str::<Value>(text).ok())
        .map(|frame| ty(&frame).to_owned())
        .collect()
}

fn events_only(frames: Vec<Value>) -> Vec<Value> {
    frames.into_iter().filter(|f| ty(f) == "event").collect()
}

/// Writes one note and returns its `ok`, as a client would: over the rate limit it waits
/// a little and retries with the same `client_id`. `Err` if the socket died; any other
/// refusal fails the test.
async fn write_note(
    client: &mut Client,
    conversation: &str,
    client_id: &str,
    body: &str,
) -> Result<Value, String> {
    let deadline = Instant::now() + STEP;
    loop {
        let frame = note_frame(conversation, client_id, body);
        match client.try_request_collect(frame).await? {
            (_, Ok(ok)) => return Ok(ok),
            (_, Err(error)) if error["code"] == "rate_limited" && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (_, Err(error)) => panic!("note {client_id} refused: {error}"),
        }
    }
}

/// What a note writer leaves: the acknowledged notes, and the `(client_id, body)` of the
/// note in flight when its socket died, if any.
type Written = (Vec<Acked>, Option<(String, String)>);

/// A writer that writes notes on one socket until its socket dies or `max` are done.
/// Returns the acknowledged notes and the one in flight when the socket died, if any.
fn spawn_note_writer(
    mut client: Client,
    conversation: String,
    name: String,
    max: usize,
    progress: Arc<watch::Sender<usize>>,
) -> JoinHandle<Written> {
    tokio::spawn(async move {
        let mut acked = Vec::new();
        for i in 0..max {
            let client_id = format!("{name}-{i}");
            let body = format!("note {client_id} {}", unique("b"));
            match write_note(&mut client, &conversation, &client_id, &body).await {
                Ok(ok) => {
                    acked.push(Acked::from_ok(&client_id, &body, &ok));
                    progress.send_modify(|n| *n += 1);
                }
                // The socket died (its node was killed): this note may or may not be
                // stored; the client retries it elsewhere with the same client_id.
                Err(_) => return (acked, Some((client_id, body))),
            }
        }
        (acked, None)
    })
}

/// Waits until a watch counter reaches `target`, failing after `timeout`.
async fn wait_count(rx: &mut watch::Receiver<usize>, target: usize, timeout: Duration, what: &str) {
    tokio::time::timeout(timeout, rx.wait_for(|n| *n >= target))
        .await
        .unwrap_or_else(|_| panic!("{what}: fewer than {target} within {timeout:?}"))
        .expect("counter alive");
}

// ---- 1. notes cross nodes to staff, never to the customer ------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_note_written_on_one_node_reaches_staff_on_another_and_never_its_customer() {
    let cluster = Cluster::on_shared_redis().await;
    let (a, b) = cluster.two_nodes().await;
    let cust = customer(&cluster.id("carol"));
    let conv = b.http.open_as_customer(&cust).await;

    // On node B: the customer, an agent and a supervisor, all subscribed.
    let mut customer_b = b.client(&cust).await;
    let (replay, ok) = customer_b.subscribe(&conv, None).await;
    assert_eq!(seqs(&replay), vec![1], "{replay:?}");
    assert_eq!(ok["head"], 1);
    let mut agent_b = b.client(&agent(&cluster.id("yves"))).await;
    let (agent_replay, _) = agent_b.subscribe(&conv, None).await;
    let mut supervisor_b = b.client(&supervisor(&cluster.id("sam"))).await;
    let (supervisor_replay, _) = supervisor_b.subscribe(&conv, None).await;

    // On node A: an agent and a supervisor write.
    let mut agent_a = a.client(&agent(&cluster.id("xena"))).await;
    agent_a.subscribe(&conv, None).await;
    let mut supervisor_a = a.client(&supervisor(&cluster.id("sue"))).await;

    let marker = unique("NOTE-MARKER");
    let note = agent_a
        .note(&conv, "n1", &format!("refund approved {marker}"))
        .await;
    assert_eq!(note["seq"], 2, "agent stream: opened, note: {note}");
    let supervisors_marker = unique("SUPERVISORS-MARKER");
    let coaching = supervisor_a
        .ok(
            json!({"type": "note", "conversation_id": conv, "client_id": "s1",
                   "body": format!("coach xena {supervisors_marker}"),
                   "audience": "supervisors", "note_type": "coaching"}),
        )
        .await;
    assert_eq!(
        coaching["seq"], 3,
        "supervisor stream: opened, note, coaching"
    );
    let edit = agent_a
        .ok(json!({"type": "edit_note", "conversation_id": conv,
                   "note_id": note["event_id"], "body": format!("edited {marker}")}))
        .await;
    assert_eq!(edit["seq"], 3, "agent stream: opened, note, edit: {edit}");
    agent_a
        .send_json(&json!({"type": "typing", "conversation_id": conv, "audience": "internal"}))
        .await;

    // Agents on B get the note, its edit and the internal typing; not the coaching note.
    let got = agent_b.frames_until_seq(3).await;
    let typing_early = got.iter().find(|f| ty(f) == "typing").cloned();
    let mut agent_events = agent_replay.clone();
    agent_events.extend(events_only(got));
    assert_eq!(seqs(&agent_events), vec![1, 2, 3], "{agent_events:?}");
    assert_eq!(agent_events[1]["event"]["id"], note["event_id"]);
    assert_eq!(agent_events[1]["event"]["kind"], "note");
    assert!(agent_events[1]["event"]["body"]
        .as_str()
        .unwrap()
        .contains(&marker));
    assert_eq!(agent_events[2]["event"]["kind"], "note_edited");
    let typing = match typing_early {
        Some(frame) => frame,
        None => {
            let deadline = Instant::now() + STEP;
            wait_frame(&mut agent_b, deadline, "internal typing on B", |f| {
                ty(f) == "typing"
            })
            .await
        }
    };
    assert_eq!(typing["audience"], "internal", "{typing}");
    assert_eq!(typing["user"]["id"], cluster.id("xena").as_str());

    // Supervisors on B get all three, the coaching note included.
    let got = supervisor_b.frames_until_seq(4).await;
    let mut supervisor_events = supervisor_replay;
    supervisor_events.extend(events_only(got));
    assert_eq!(seqs(&supervisor_events), vec![1, 2, 3, 4]);
    assert_eq!(supervisor_events[2]["event"]["id"], coaching["event_id"]);

    // A later public message from A reaches the customer on B with the next public seq.
    let message = agent_a
        .message(&conv, "m1", "Your refund is on its way")
        .await;
    assert_eq!(message["seq"], 4, "agent stream: {message}");
    let event = customer_b.next_event().await;
    assert_eq!(event["seq"], 2, "gap-free public stream: {event}");
    assert_eq!(event["event"]["kind"], "message");
    assert_eq!(event["event"]["id"], message["event_id"]);
    agent_b.frames_until_seq(4).await;
    customer_b.sync().await;
    customer_b.expect_silence(QUIET).await;

    let leaked: Vec<&String> = customer_b
        .transcript()
        .iter()
        .filter(|t| t.contains(&marker) || t.contains(&supervisors_marker))
        .collect();
    assert!(leaked.is_empty(), "customer on B saw a note: {leaked:?}");
    let types = transcript_types(&customer_b);
    for forbidden in ["typing", "presence", "notification"] {
        assert!(
            !types.iter().any(|t| t == forbidden),
            "customer on B got a {forbidden} frame: {:?}",
            customer_b.transcript()
        );
    }
    let event_frames = types.iter().filter(|t| *t == "event").count();
    assert_eq!(
        event_frames, 2,
        "the customer got exactly opened and the message"
    );
    agent_b.sync().await;
    assert!(
        !agent_b
            .transcript()
            .iter()
            .any(|t| t.contains(&supervisors_marker)),
        "an agent on B saw a supervisors-only note"
    );

    // Over HTTP on either node, the customer's stream is the same two events.
    for node in [&a, &b] {
        let history = node.http.history(&cust, &conv).await;
        assert_eq!(history.seqs(), vec![1, 2]);
        assert_eq!(history.head, 2);
        for text in &history.texts {
            assert!(!text.contains(&marker) && !text.contains(&supervisors_marker));
        }
    }
}

// ---- 2. mentions cross nodes ----------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_mention_reaches_a_user_connected_only_to_another_node() {
    let cluster = Cluster::on_shared_redis().await;
    let (a, b) = cluster.two_nodes().await;
    let bob_id = cluster.id("bob");
    let carl_id = cluster.id("carl");
    // bob has a session on B only; carl one on each node.
    let mut bob = b.client(&agent(&bob_id)).await;
    let mut carl_a = a.client(&agent(&carl_id)).await;
    let mut carl_b = b.client(&agent(&carl_id)).await;
    // After a ping, the sessions are registered (the ping is answered after that).
    bob.sync().await;
    carl_a.sync().await;
    carl_b.sync().await;

    let alice_id = cluster.id("alice");
    let mut alice = a.client(&agent(&alice_id)).await;
    let conv = a
        .http
        .open_as_customer(&customer(&cluster.id("cleo")))
        .await;
    let ok = alice
        .note(
            &conv,
            "mention-1",
            &format!("@{bob_id} and @{carl_id}, can you check?"),
        )
        .await;
    let mut mentioned: Vec<String> = ok["mentioned"]
        .as_array()
        .unwrap_or_else(|| panic!("mentioned in {ok}"))
        .iter()
        .map(|m| m.as_str().expect("mentioned id").to_owned())
        .collect();
    mentioned.sort();
    assert_eq!(mentioned, vec![bob_id.clone(), carl_id.clone()], "{ok}");

    let check = |frame: &Value, user: &str| {
        assert_eq!(frame["kind"], "mention", "{user}: {frame}");
        assert_eq!(frame["conversation_id"], conv.as_str(), "{user}: {frame}");
        assert_eq!(frame["event_id"], ok["event_id"], "{user}: {frame}");
        assert_eq!(frame["from"]["id"], alice_id.as_str(), "{user}: {frame}");
        assert_eq!(frame["read"], false, "{user}: {frame}");
    };
    let deadline = Instant::now() + STEP;
    let is_notification = |f: &Value| ty(f) == "notification";
    let bob_frame = wait_frame(
        &mut bob,
        deadline,
        "bob's notification on B",
        is_notification,
    )
    .await;
    check(&bob_frame, "bob on B");
    let carl_frame_b = wait_frame(
        &mut carl_b,
        deadline,
        "carl's notification on B",
        is_notification,
    )
    .await;
    check(&carl_frame_b, "carl on B");
    let carl_frame_a = wait_frame(
        &mut carl_a,
        deadline,
        "carl's notification on A",
        is_notification,
    )
    .await;
    check(&carl_frame_a, "carl on A");
    assert_eq!(
        carl_frame_a["id"], carl_frame_b["id"],
        "one notification, two sessions"
    );

    // Exactly once per session; the author is not notified.
    for (who, client) in [
        ("bob", &mut bob),
        ("carl on A", &mut carl_a),
        ("carl on B", &mut carl_b),
        ("alice", &mut alice),
    ] {
        client.sync().await;
        let more = client
            .take_pending()
            .into_iter()
            .filter(|f| ty(f) == "notification")
            .count();
        assert_eq!(more, 0, "{who} got a second notification");
    }

    // The notification is stored: node B lists it for bob.
    let reply = b
        .http
        .get("/v1/notifications?unread=true", Some(&agent(&bob_id)))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let body = reply.json();
    let listed = body["notifications"].as_array().expect("notifications");
    assert_eq!(listed.len(), 1, "{body}");
    assert_eq!(listed[0]["id"], bob_frame["id"]);
    assert_eq!(body["unread"], 1);
}

/// A notification from a node of the release before notifications carried their
/// conversation's inbox (a rolling upgrade) names no inbox: the receiving node reads it
/// from the store, so the user's sessions scoped to that inbox still get it live, and
/// their sessions of other inboxes still do not.
#[tokio::test(flavor = "multi_thread")]
async fn a_notification_from_an_older_node_reaches_the_sessions_of_its_inbox() {
    let cluster = Cluster::on_shared_redis().await;
    let a = cluster.node("a").await;
    let bob_id = cluster.id("bob");
    let mut bob_billing = a.client(&agent_in(&bob_id, &["billing"])).await;
    let mut bob_support = a.client(&agent(&bob_id)).await;
    bob_billing.sync().await;
    bob_support.sync().await;
    let conv = a
        .http
        .open_as_customer(&customer(&cluster.id("cleo")))
        .await;

    // What such a node published: `supervisors_only`, but no `inbox`.
    let message = json!({
        "t": "notification",
        "node": "an-older-node",
        "user_id": bob_id,
        "supervisors_only": false,
        "notification": {
            "id": 4_000_000_001u64,
            "kind": "mention",
            "conversation_id": conv,
            "event_id": uuid::Uuid::new_v4().to_string(),
            "from": {"id": cluster.id("alice"), "role": "agent"},
            "at": "2026-12-07T12:00:00Z",
            "read": false,
        },
    });
    let reply = redis_publish(
        SHARED_REDIS_PORT,
        &cluster.channel(&format!("u:{bob_id}")),
        &message.to_string(),
    )
    .await;
    assert_eq!(reply, ":1", "one node listens for bob: {reply}");

    let deadline = Instant::now() + STEP;
    let frame = wait_frame(
        &mut bob_support,
        deadline,
        "the notification on bob's support socket",
        |f| ty(f) == "notification",
    )
    .await;
    assert_eq!(frame["id"], 4_000_000_001u64, "{frame}");
    assert_eq!(frame["conversation_id"], conv.as_str(), "{frame}");
    bob_billing.sync().await;
    let leaked = bob_billing
        .take_pending()
        .into_iter()
        .filter(|f| ty(f) == "notification")
        .count();
    assert_eq!(
        leaked, 0,
        "a support conversation's notification on a billing socket"
    );
}

/// Two deployments (two databases) on one Redis server, each with a user of the same
/// id: a mention in one reaches that user's socket there and never the namesake's in the
/// other, and one deployment's agents never appear on the other's floor.
#[tokio::test(flavor = "multi_thread")]
async fn two_deployments_on_one_redis_never_hear_each_other() {
    let x = Cluster::on_shared_redis().await;
    let y = Cluster::on_shared_redis().await;
    let ((x1, x2), y1) = tokio::join!(x.two_nodes(), y.node("y1"));
    assert_ne!(x.channel("agents"), y.channel("agents"));
    let alice_id = x.id("alice");
    let walt_id = x.id("walt");

    // Y's floor: a supervisor watching, and a user whose id is alice's in X.
    let mut sue_y = y1.client(&supervisor(&y.id("sue"))).await;
    sue_y.ok(json!({"type": "watch_agents"})).await;
    let mut alice_y = y1.client(&agent(&alice_id)).await;
    alice_y.sync().await;
    // X's: alice on node 2, a supervisor on node 2, walt writing on node 1.
    let mut sue_x = x2.client(&supervisor(&x.id("sue"))).await;
    sue_x.ok(json!({"type": "watch_agents"})).await;
    let mut alice_x = x2.client(&agent(&alice_id)).await;
    alice_x.sync().await;
    let mut walt = x1.client(&agent(&walt_id)).await;
    let conv = x1.http.open_as_customer(&customer(&x.id("cleo"))).await;
    let ok = walt
        .note(&conv, "mention", &format!("@{alice_id} secret plan"))
        .await;

    // Through Redis inside X: alice's notification and walt's presence reach node 2.
    let deadline = Instant::now() + STEP;
    let notification = wait_frame(&mut alice_x, deadline, "alice's notification in X", |f| {
        ty(f) == "notification"
    })
    .await;
    assert_eq!(notification["event_id"], ok["event_id"], "{notification}");
    wait_frame(&mut sue_x, deadline, "walt online on X's floor", |f| {
        ty(f) == "agent_presence" && f["id"] == walt_id.as_str()
    })
    .await;

    // Nothing of X in Y: no notification for its alice, no walt on its floor, now or in
    // a fresh snapshot.
    let heard = alice_y.collect_for(QUIET).await;
    assert!(
        !heard.iter().any(|f| ty(f) == "notification"),
        "Y's alice got X's notification: {heard:?}"
    );
    assert!(
        !heard.iter().any(|f| f.to_string().contains("secret plan")),
        "{heard:?}"
    );
    sue_y.ok(json!({"type": "watch_agents"})).await;
    let floor = sue_y.collect_for(QUIET).await;
    assert!(
        floor.iter().any(|f| ty(f) == "agents"),
        "a fresh snapshot: {floor:?}"
    );
    assert!(
        !floor.iter().any(|f| f.to_string().contains(&walt_id)),
        "X's walt is on Y's floor: {floor:?}"
    );
}

// ---- 3. kill -9 a node; its clients resume on another ----------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn after_kill_9_clients_resume_on_another_node_and_miss_or_repeat_nothing() {
    let cluster = Cluster::on_shared_redis().await;
    let (mut a, b) = cluster.two_nodes().await;
    let conv = a
        .http
        .open_as_customer(&customer(&cluster.id("dora")))
        .await;

    // A subscriber on A reads everything until A dies.
    let watcher = agent(&cluster.id("watcher"));
    let mut watcher_a = a.client(&watcher).await;
    let (replay, _) = watcher_a.subscribe(&conv, None).await;
    let reader = tokio::spawn(async move {
        let (frames, closed) = watcher_a.drain_until_close(Duration::from_secs(40)).await;
        (frames, closed)
    });
    // An observer on B the whole time.
    let mut observer = b.client(&agent(&cluster.id("observer"))).await;
    let (observer_replay, _) = observer.subscribe(&conv, None).await;

    // Three writers on A, going strong when A is killed.
    let (progress_tx, mut progress) = watch::channel(0usize);
    let progress_tx = Arc::new(progress_tx);
    let mut writers = Vec::new();
    let mut tokens = Vec::new();
    for w in 0..3 {
        let token = agent(&cluster.id(&format!("writer{w}")));
        let client = a.client(&token).await;
        writers.push(spawn_note_writer(
            client,
            conv.clone(),
            format!("w{w}"),
            5000,
            progress_tx.clone(),
        ));
        tokens.push(token);
    }
    wait_count(&mut progress, 60, STEP, "notes acknowledged on A").await;
    a.kill9().await;

    let mut acked = Vec::new();
    let mut in_flight = Vec::new();
    for writer in writers {
        let (notes, pending) = tokio::time::timeout(STEP, writer)
            .await
            .expect("a writer did not notice the crash")
            .expect("writer task");
        acked.extend(notes);
        in_flight.push(pending);
    }
    let (frames_a, closed) = tokio::time::timeout(STEP, reader)
        .await
        .expect("the subscriber on A did not notice the crash")
        .expect("reader task");
    assert_ne!(
        closed.code,
        Some(1000),
        "a killed node closes nothing cleanly"
    );
    let mut watcher_events = replay;
    watcher_events.extend(events_only(frames_a));
    let last_seen = watcher_events
        .last()
        .map_or(0, |e| e["seq"].as_u64().unwrap());

    // The writers reconnect to B: each retries its note in flight (the same client_id,
    // so it is stored once whether or not A had committed it), then writes a few more.
    let mut retried_duplicates = 0;
    for (w, (token, pending)) in tokens.iter().zip(in_flight).enumerate() {
        let mut client = b.client(token).await;
        if let Some((client_id, body)) = pending {
            let ok = client.note(&conv, &client_id, &body).await;
            if ok["duplicate"] == true {
                retried_duplicates += 1;
            }
            acked.push(Acked::from_ok(&client_id, &body, &ok));
        }
        for i in 0..5 {
            let client_id = format!("w{w}-after-{i}");
            let body = format!("note {client_id} {}", unique("b"));
            let ok = client.note(&conv, &client_id, &body).await;
            assert_ne!(ok["duplicate"], true, "{ok}");
            acked.push(Acked::from_ok(&client_id, &body, &ok));
        }
    }
    let head = acked.iter().map(|n| n.seq).max().unwrap();
    assert_eq!(
        b.http.head(&watcher, &conv).await,
        head,
        "every note after A died was acked"
    );

    // The subscriber resumes on B from the last seq it got on A.
    let mut watcher_b = b.client(&watcher).await;
    let (resumed, ok) = watcher_b.subscribe(&conv, Some(last_seen)).await;
    assert_ne!(ok["reset"], true, "{ok}");
    watcher_events.extend(events_only(resumed));
    if watcher_events.last().map(|e| e["seq"].as_u64().unwrap()) < Some(head) {
        watcher_events.extend(events_only(watcher_b.frames_until_seq(head).await));
    }
    check_delivery("the watcher, on A then B", &watcher_events, head, &acked);

    let mut observer_events = observer_replay;
    observer_events.extend(events_only(observer.frames_until_seq(head).await));
    check_delivery("the observer on B", &observer_events, head, &acked);

    let history = b.http.history(&watcher, &conv).await;
    check_delivery("HTTP history on B", &history.events, head, &acked);
    eprintln!(
        "kill -9: {} notes acknowledged, the watcher had {last_seen} on A, \
         {retried_duplicates} retries were duplicates",
        acked.len()
    );
}

// ---- 4. Redis stops and restarts -------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_restart_degrades_readiness_and_loses_or_repeats_nothing() {
    let mut redis = PrivateRedis::start().await;
    let cluster = Cluster::on_redis(redis.url());
    let (a, b) = cluster.two_nodes().await;
    let conv = a
        .http
        .open_as_customer(&customer(&cluster.id("erin")))
        .await;

    // A subscriber on B, read continuously.
    let reader_token = agent(&cluster.id("reader"));
    let mut reader = b.client(&reader_token).await;
    let (replay, _) = reader.subscribe(&conv, None).await;
    let received = Arc::new(Mutex::new(events_only(replay)));
    let (seen_tx, mut seen) = watch::channel(1usize);
    let stop_reading = Arc::new(AtomicBool::new(false));
    let reading = {
        let received = received.clone();
        let stop = stop_reading.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Some(frame) = reader.try_next_frame(Duration::from_millis(100)).await {
                    if ty(&frame) == "event" {
                        let seq = frame["seq"].as_u64().expect("seq") as usize;
                        received.lock().unwrap().push(frame);
                        seen_tx.send_modify(|s| *s = (*s).max(seq));
                    }
                }
            }
        })
    };

    // A writer on A, acknowledging notes continuously (paced, so the run stays small).
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let (progress, mut progress_rx) = watch::channel(0usize);
    let stop_writing = Arc::new(AtomicBool::new(false));
    let writing = {
        let mut writer = a.client(&agent(&cluster.id("writer"))).await;
        let acked = acked.clone();
        let stop = stop_writing.clone();
        let conv = conv.clone();
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let client_id = format!("n{i}");
                let body = format!("note {i} {}", unique("b"));
                match write_note(&mut writer, &conv, &client_id, &body).await {
                    Ok(ok) => acked
                        .lock()
                        .unwrap()
                        .push(Acked::from_ok(&client_id, &body, &ok)),
                    Err(e) => panic!("note {client_id} not acknowledged: {e}"),
                }
                progress.send_modify(|n| *n += 1);
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let last_acked_seq = |acked: &Mutex<Vec<Acked>>| acked.lock().unwrap().last().map(|n| n.seq);

    // Before the outage, notes cross from A to B.
    wait_count(&mut progress_rx, 10, STEP, "notes before the outage").await;
    let target = last_acked_seq(&acked).unwrap() as usize;
    tokio::time::timeout(STEP, seen.wait_for(|s| *s >= target))
        .await
        .expect("notes from A did not reach B before the outage")
        .unwrap();

    // Redis dies. A notices, reports it, and keeps acknowledging.
    redis.kill().await;
    let killed_at = Instant::now();
    let ready = a.wait_ready("degraded").await;
    assert!(ready.contains("\"store\":\"ok\""), "{ready}");
    let during = *progress_rx.borrow();
    wait_count(
        &mut progress_rx,
        during + 5,
        STEP,
        "notes acknowledged while Redis is down",
    )
    .await;
    let (status, body) = a.readyz().await;
    assert_eq!(
        status, 200,
        "a degraded broker keeps the node ready: {body}"
    );
    assert!(body.contains("degraded"), "Redis is still down: {body}");
    b.wait_ready("degraded").await;

    // It comes back on the same port after about a second.
    tokio::time::sleep_until(killed_at + Duration::from_secs(1)).await;
    redis.restart().await;
    a.wait_ready("\"broker\":\"ok\"").await;
    b.wait_ready("\"broker\":\"ok\"").await;
    let after = *progress_rx.borrow();
    wait_count(
        &mut progress_rx,
        after + 10,
        STEP,
        "notes after Redis is back",
    )
    .await;
    stop_writing.store(true, Ordering::Relaxed);
    tokio::time::timeout(STEP, writing)
        .await
        .expect("the writer did not stop")
        .expect("writer task");

    // Everything acknowledged reaches B's subscriber, once and in order.
    let acked = acked.lock().unwrap().clone();
    let head = acked.last().unwrap().seq;
    let waited = tokio::time::timeout(STEP, seen.wait_for(|s| *s >= head as usize)).await;
    stop_reading.store(true, Ordering::Relaxed);
    tokio::time::timeout(STEP, reading)
        .await
        .expect("the reader did not stop")
        .expect("reader task");
    let received = received.lock().unwrap().clone();
    assert!(
        waited.is_ok(),
        "B's subscriber never got seq {head} (last {:?}); node A:\n{}\nnode B:\n{}",
        received.last().map(|e| &e["seq"]),
        a.output(),
        b.output()
    );
    check_delivery("the subscriber on B", &received, head, &acked);
    eprintln!(
        "redis restart: {} notes acknowledged, {} during the outage",
        acked.len(),
        after - during
    );
}

// ---- 5. presence across nodes, and a dead node's users expire --------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_late_joiner_on_another_node_sees_who_is_there_at_once() {
    // Presence refreshes every third of its TTL (here 20 s of 60); a node that opens a
    // room asks the others for their viewers instead of waiting for it. Before, ann's node
    // had published her before ben's node had a room, and ben saw her 6-8 s later (up to
    // a refresh), long enough for both to answer the customer.
    let cluster = Cluster::on_shared_redis().await;
    let ttl = Duration::from_secs(60);
    let redis = cluster.redis_url.clone();
    let (a, b) = tokio::join!(
        cluster.node_with("a", &redis, ttl),
        cluster.node_with("b", &redis, ttl)
    );
    let (ann_id, ben_id) = (cluster.id("ann"), cluster.id("ben"));
    let conv = a
        .http
        .open_as_customer(&customer(&cluster.id("cleo")))
        .await;
    let mut ann = a.client(&agent(&ann_id)).await;
    ann.subscribe(&conv, None).await;
    // Ann's node has published her by now; ben's has no room yet.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut ben = b.client(&agent(&ben_id)).await;
    ben.subscribe(&conv, None).await;
    let deadline = Instant::now() + Duration::from_secs(3);
    wait_presence(&mut ben, &conv, deadline, "ben sees ann", |f| {
        viewer(f, &ann_id).is_some()
    })
    .await;
    wait_presence(&mut ann, &conv, deadline, "ann sees ben", |f| {
        viewer(f, &ben_id).is_some()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn presence_crosses_nodes_and_a_killed_nodes_users_turn_offline() {
    let cluster = Cluster::on_shared_redis().await;
    let (mut a, b) = cluster.two_nodes().await;
    let xena_id = cluster.id("xena");
    let yves_id = cluster.id("yves");
    let cleo_id = cluster.id("cleo");

    // A supervisor on B watches the floor.
    let supervisor_token = supervisor(&cluster.id("sue"));
    let mut sup = b.client(&supervisor_token).await;
    sup.ok(json!({"type": "watch_agents"})).await;
    let agents = sup.next_frame(STEP).await;
    assert_eq!(
        ty(&agents),
        "agents",
        "watch_agents answers an agents frame first: {agents}"
    );
    assert!(agents["agents"].is_array(), "{agents}");

    // An agent connects to A and shows up online on B.
    let mut xena = a.client(&agent(&xena_id)).await;
    let deadline = Instant::now() + STEP;
    let online = wait_frame(&mut sup, deadline, "xena online on B's floor", |f| {
        ty(f) == "agent_presence" && f["id"] == xena_id.as_str() && f["status"] == "online"
    })
    .await;
    assert_eq!(online["role"], "agent", "{online}");

    // Conversation presence: xena on A, yves and the customer on B, one conversation.
    let cust = customer(&cleo_id);
    let conv = b.http.open_as_customer(&cust).await;
    let mut cleo = b.client(&cust).await;
    cleo.subscribe(&conv, None).await;
    let mut yves = b.client(&agent(&yves_id)).await;
    yves.subscribe(&conv, None).await;
    xena.subscribe(&conv, None).await;
    let deadline = Instant::now() + STEP;
    let seen_by_xena = wait_presence(&mut xena, &conv, deadline, "xena sees yves", |f| {
        viewer(f, &yves_id).is_some() && viewer(f, &cleo_id).is_some()
    })
    .await;
    let seen_by_yves = wait_presence(&mut yves, &conv, deadline, "yves sees xena", |f| {
        viewer(f, &xena_id).is_some() && viewer(f, &cleo_id).is_some()
    })
    .await;
    for frame in [&seen_by_xena, &seen_by_yves] {
        let ids = viewer_ids(frame);
        let mut unique_ids = ids.clone();
        unique_ids.sort();
        unique_ids.dedup();
        assert_eq!(unique_ids.len(), ids.len(), "once per user: {frame}");
        assert_eq!(ids.len(), 3, "xena, yves, cleo: {frame}");
    }
    // Typing shows in presence on the other node: xena starts a note on A.
    xena.send_json(&json!({"type": "typing", "conversation_id": conv, "audience": "internal"}))
        .await;
    let typing = wait_presence(
        &mut yves,
        &conv,
        deadline,
        "yves sees xena typing",
        |frame| viewer(frame, &xena_id).is_some_and(|v| v["typing"] == true),
    )
    .await;
    let shown = viewer(&typing, &xena_id).unwrap();
    assert_eq!(shown["typing_audience"], "internal", "{typing}");

    // The floor shows xena viewing it, and so does a new snapshot.
    wait_frame(&mut sup, deadline, "xena viewing the conversation", |f| {
        ty(f) == "agent_presence" && f["id"] == xena_id.as_str() && f["viewing"] == json!([conv])
    })
    .await;
    sup.ok(json!({"type": "watch_agents"})).await;
    let snapshot = wait_frame(&mut sup, deadline, "a second agents frame", |f| {
        ty(f) == "agents"
    })
    .await;
    let entry = snapshot["agents"]
        .as_array()
        .expect("agents")
        .iter()
        .find(|e| e["id"] == xena_id.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("xena in the snapshot: {snapshot}"));
    assert_eq!(entry["status"], "online", "{entry}");
    assert_eq!(entry["viewing"], json!([conv]), "{entry}");

    // Nothing so far showed xena offline (so the frame awaited below is news).
    sup.sync().await;
    let flicker: Vec<Value> = sup
        .take_pending()
        .into_iter()
        .filter(|f| ty(f) == "agent_presence" && f["id"] == xena_id.as_str())
        .filter(|f| f["status"] != "online")
        .collect();
    assert!(
        flicker.is_empty(),
        "xena shown not online while connected: {flicker:?}"
    );

    // kill -9 A: within the presence TTL (and a margin) xena is offline and gone.
    a.kill9().await;
    let killed_at = Instant::now();
    let deadline = killed_at + PRESENCE_TTL + Duration::from_millis(2500);
    let offline = wait_frame(&mut sup, deadline, "xena offline after A died", |f| {
        ty(f) == "agent_presence" && f["id"] == xena_id.as_str() && f["status"] == "offline"
    })
    .await;
    let took = killed_at.elapsed();
    assert_eq!(offline["viewing"], json!([]), "{offline}");
    wait_presence(
        &mut yves,
        &conv,
        deadline,
        "xena leaves yves's presence",
        |f| {
            viewer(f, &xena_id).is_none()
                && viewer(f, &yves_id).is_some()
                && viewer(f, &cleo_id).is_some()
        },
    )
    .await;
    let reply = b.http.get("/v1/agents", Some(&supervisor_token)).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let listed = reply.json();
    let entry = listed["agents"]
        .as_array()
        .expect("agents")
        .iter()
        .find(|e| e["id"] == xena_id.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("xena in /v1/agents: {listed}"));
    assert_eq!(entry["status"], "offline", "{entry}");

    // The customer never got a presence frame, nor xena's internal typing.
    cleo.sync().await;
    assert!(cleo.presence().is_empty(), "{:?}", cleo.presence());
    let types = transcript_types(&cleo);
    assert!(
        !types.iter().any(|t| t == "presence" || t == "typing"),
        "customer got presence or internal typing: {:?}",
        cleo.transcript()
    );
    eprintln!("presence: xena offline {took:?} after kill -9 (TTL {PRESENCE_TTL:?})");
}

// ---- 6. storage smoke over PostgreSQL ---------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn audit_verify_checks_the_postgres_store_after_traffic_from_two_nodes() {
    let cluster = Cluster::on_shared_redis().await;
    let (a, b) = cluster.two_nodes().await;
    let cust = customer(&cluster.id("fay"));
    let conv = a.http.open_as_customer(&cust).await;
    let other = b.http.open_as_customer(&customer(&cluster.id("gus"))).await;
    let reader = agent(&cluster.id("reader"));

    // Concurrent writers on both nodes append to one conversation.
    let (progress_tx, _progress) = watch::channel(0usize);
    let progress_tx = Arc::new(progress_tx);
    let mut writers = Vec::new();
    for (node, w) in [(&a, 0), (&b, 1), (&a, 2), (&b, 3)] {
        let client = node.client(&agent(&cluster.id(&format!("w{w}")))).await;
        writers.push(spawn_note_writer(
            client,
            conv.clone(),
            format!("w{w}"),
            15,
            progress_tx.clone(),
        ));
    }
    let mut acked = Vec::new();
    for writer in writers {
        let (notes, pending) = tokio::time::timeout(STEP * 3, writer)
            .await
            .expect("writers finish")
            .expect("writer task");
        assert!(pending.is_none(), "no socket died");
        acked.extend(notes);
    }
    // More kinds of events, through both nodes.
    let mut agent_a = a.client(&agent(&cluster.id("ann"))).await;
    let note = agent_a.note(&conv, "ctx", "context: prefers email").await;
    agent_a
        .ok(json!({"type": "edit_note", "conversation_id": conv,
                   "note_id": note["event_id"], "body": "context: prefers phone"}))
        .await;
    let mut agent_b = b.client(&agent(&cluster.id("ben"))).await;
    agent_b
        .ok(json!({"type": "pin_note", "conversation_id": conv, "note_id": note["event_id"]}))
        .await;
    agent_b.message(&conv, "reply", "We are on it").await;
    agent_b
        .ok(json!({"type": "set_status", "conversation_id": conv, "status": "pending"}))
        .await;
    let mut cust_b = b.client(&cust).await;
    cust_b.message(&conv, "thanks", "Thanks!").await;
    agent_a.message(&other, "hello", "Hello Gus").await;

    let history = b.http.history(&reader, &conv).await;
    assert_eq!(
        history.seqs(),
        range(1, history.head),
        "gap-free across nodes"
    );
    check_delivery("HTTP history", &history.events, history.head, &acked);
    let supervisor_token = supervisor(&cluster.id("sid"));
    for (node, id) in [(&a, &conv), (&b, &other)] {
        let reply = node
            .http
            .get(
                &format!("/v1/conversations/{id}/audit"),
                Some(&supervisor_token),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert_eq!(reply.json()["verified"], true, "{}", reply.text);
    }

    // The real binary verifies every chain in the PostgreSQL database.
    let url = cluster.db.url();
    let (status, stdout, stderr) = run_cli(&["audit", "verify", "--database-url", &url]).await;
    assert!(
        status.success(),
        "audit verify: {status}\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("every chain verifies"), "{stdout}");
    assert!(stdout.contains("in 2 conversations"), "{stdout}");

    // And it reads the rows themselves: a changed payload is reported.
    let victim = &acked[acked.len() / 2];
    cluster.db.execute(&format!(
        "UPDATE events SET payload = replace(payload, 'note ', 'NOTE ') WHERE id = '{}'",
        victim.event_id
    ));
    let (status, stdout, stderr) = run_cli(&["audit", "verify", "--database-url", &url]).await;
    assert_eq!(status.code(), Some(1), "tampered: {stdout}\n{stderr}");
    assert!(
        stderr.contains(&victim.event_id) || stdout.contains(&victim.event_id),
        "names the changed event {}: {stdout}\n{stderr}",
        victim.event_id
    );
}

// ---- 7. concurrent writers on two nodes, subscribers on both ---------------------------

#[tokio::test(flavor = "multi_thread")]
async fn writers_on_two_nodes_are_seen_in_one_order_by_subscribers_on_both() {
    let cluster = Cluster::on_shared_redis().await;
    let (a, b) = cluster.two_nodes().await;
    let conv = a.http.open_as_customer(&customer(&cluster.id("kim"))).await;
    let mut subscribers = Vec::new();
    for (node, name) in [(&a, "sub-a"), (&b, "sub-b")] {
        let mut client = node.client(&agent(&cluster.id(name))).await;
        let (replay, _) = client.subscribe(&conv, None).await;
        subscribers.push((name, client, events_only(replay)));
    }
    let (progress_tx, _progress) = watch::channel(0usize);
    let progress_tx = Arc::new(progress_tx);
    let mut writers = Vec::new();
    for (node, w) in [(&a, 0), (&b, 1), (&a, 2), (&b, 3)] {
        let client = node.client(&agent(&cluster.id(&format!("w{w}")))).await;
        writers.push(spawn_note_writer(
            client,
            conv.clone(),
            format!("w{w}"),
            25,
            progress_tx.clone(),
        ));
    }
    let mut acked = Vec::new();
    for writer in writers {
        let (notes, pending) = tokio::time::timeout(STEP * 3, writer)
            .await
            .expect("writers finish")
            .expect("writer task");
        assert!(pending.is_none(), "no socket died");
        acked.extend(notes);
    }
    let head = acked.iter().map(|n| n.seq).max().unwrap();
    assert_eq!(head, 101, "opened + 100 notes, gap-free across nodes");
    for (name, mut client, mut events) in subscribers {
        events.extend(events_only(client.frames_until_seq(head).await));
        check_delivery(name, &events, head, &acked);
        client.sync().await;
        let extra = events_only(client.take_pending());
        assert!(extra.is_empty(), "{name}: events after the head: {extra:?}");
    }
}

// ---- 8. what /metrics tells an operator about appends on remembered heads -------------

/// Each node counts the batches it wrote in one statement on the heads it remembered,
/// and those that found a head moved by the other node and took the locking path: an
/// operator sees how often nodes write to the same conversations.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_appends_on_remembered_heads_and_their_fallbacks() {
    let cluster = Cluster::on_shared_redis().await;
    let (a, b) = cluster.two_nodes().await;
    let conv = b.http.open_as_customer(&customer(&cluster.id("lou"))).await;
    let mut agent_a = a.client(&agent(&cluster.id("amy"))).await;
    let mut agent_b = b.client(&agent(&cluster.id("bo"))).await;
    const WRITTEN: &str = "backchannel_store_appends_on_remembered_heads_total";
    const FELL_BACK: &str = "backchannel_store_appends_fell_back_total";
    let counts = |node: &Node| {
        let node = node.http.clone();
        async move {
            let text = node.get("/metrics", None).await.text;
            assert!(text.contains(WRITTEN) && text.contains(FELL_BACK), "{text}");
            (counter(&text, WRITTEN), counter(&text, FELL_BACK))
        }
    };

    // A's first note reads the head (B opened the conversation); its second is written
    // on the head the first left.
    agent_a.note(&conv, "a1", "first from A").await;
    assert_eq!(counts(&a).await, (0, 0));
    agent_a.note(&conv, "a2", "second from A").await;
    assert_eq!(counts(&a).await, (1, 0));
    // B remembers the head its open left, which A has moved since.
    let ok = agent_b.note(&conv, "b1", "from B").await;
    assert_eq!(ok["seq"], 4, "{ok}");
    assert_eq!(counts(&b).await, (0, 1));
    // And now A's memory is stale: one fallback, then the shortcut again.
    agent_a.note(&conv, "a3", "third from A").await;
    assert_eq!(counts(&a).await, (1, 1));
    let ok = agent_a.note(&conv, "a4", "fourth from A").await;
    assert_eq!(ok["seq"], 6, "{ok}");
    assert_eq!(counts(&a).await, (2, 1));
}

// ---- server bugs found by this suite (see each test's comment) -------------------------

/// While Redis is down, a node's subscriptions that end and start again (a client
/// reconnecting, or unsubscribing and subscribing again) must be live once Redis is back:
/// deploy.md says each node "resubscribes". A conversation channel (and a user channel)
/// left and re-entered during the outage is unsubscribed right after the reconnect.
#[tokio::test(flavor = "multi_thread")]
async fn subscriptions_renewed_while_redis_is_down_are_live_after_it_returns() {
    let mut redis = PrivateRedis::start().await;
    let cluster = Cluster::on_redis(redis.url());
    let (a, b) = cluster.two_nodes().await;
    let conv = a.http.open_as_customer(&customer(&cluster.id("hal"))).await;
    let bob_id = cluster.id("bob");
    let bob_token = agent(&bob_id);
    let supervisor_token = supervisor(&cluster.id("sue"));

    let mut reader = b.client(&agent(&cluster.id("reader"))).await;
    let (replay, _) = reader.subscribe(&conv, None).await;
    let mut received = events_only(replay);
    let mut bob_before = b.client(&bob_token).await;
    bob_before.sync().await;
    let mut writer = a.client(&agent(&cluster.id("writer"))).await;
    let mut acked = Vec::new();
    let ok = writer.note(&conv, "before", "note before").await;
    acked.push(Acked::from_ok("before", "note before", &ok));
    received.extend(events_only(reader.frames_until_seq(2).await));

    redis.kill().await;
    let killed_at = Instant::now();
    a.wait_ready("degraded").await;
    b.wait_ready("degraded").await;
    // On B, while Redis is down: the reader leaves the conversation and comes back; bob's
    // socket closes and he reconnects.
    reader
        .ok(json!({"type": "unsubscribe", "conversation_id": conv}))
        .await;
    bob_before.close().await;
    let deadline = Instant::now() + STEP;
    loop {
        // Once B shows bob offline, his old session is gone from B.
        let listed = b
            .http
            .get("/v1/agents", Some(&supervisor_token))
            .await
            .json();
        let offline = listed["agents"]
            .as_array()
            .expect("agents")
            .iter()
            .any(|e| e["id"] == bob_id.as_str() && e["status"] == "offline");
        if offline {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "bob never offline on B: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ok = writer.note(&conv, "during", "note during").await;
    acked.push(Acked::from_ok("during", "note during", &ok));
    let (resumed, _) = reader.subscribe(&conv, Some(2)).await;
    received.extend(events_only(resumed));
    let mut bob = b.client(&bob_token).await;
    bob.sync().await;

    tokio::time::sleep_until(killed_at + Duration::from_secs(1)).await;
    redis.restart().await;
    a.wait_ready("\"broker\":\"ok\"").await;
    b.wait_ready("\"broker\":\"ok\"").await;
    for i in 0..3 {
        let client_id = format!("after-{i}");
        let ok = writer.note(&conv, &client_id, "note after").await;
        acked.push(Acked::from_ok(&client_id, "note after", &ok));
    }
    let body = format!("@{bob_id} please look");
    let ok = writer.note(&conv, "mention", &body).await;
    acked.push(Acked::from_ok("mention", &body, &ok));
    let head = ok["seq"].as_u64().unwrap();

    let wait = Instant::now() + Duration::from_secs(5);
    let conversation = events_until(&mut reader, head, wait).await;
    let notification = wait_frame_or_none(&mut bob, wait, |f| ty(f) == "notification").await;
    let numsub = redis_command(
        redis.port,
        &format!(
            "PUBSUB NUMSUB {} {}",
            cluster.channel(&format!("c:{conv}")),
            cluster.channel(&format!("u:{bob_id}"))
        ),
    )
    .await;
    match conversation {
        Ok(events) => received.extend(events),
        Err(events) => panic!(
            "a subscription renewed on B while Redis was down gets no live events once Redis \
             is back: wanted seq {head}, got {:?} after {:?}; bob's notification frame: {}; \
             Redis PUBSUB NUMSUB (conversation, bob): {numsub}",
            seqs(&events),
            seqs(&received),
            notification.map_or("never came".to_owned(), |f| f.to_string()),
        ),
    }
    check_delivery("the reader on B", &received, head, &acked);
    assert!(
        notification.is_some(),
        "bob, reconnected to B during the outage, never got his notification; \
         Redis PUBSUB NUMSUB (conversation, bob): {numsub}"
    );
}

/// "Acknowledge after durable, deliver after commit": an acknowledged note must reach
/// every live subscriber (protocol.md: "every later event arrives exactly once"), and the
/// store, not the broker, is the truth. A node that acknowledges notes and dies before
/// its publishes leave for Redis leaves them undelivered on every other node until some
/// later event in that conversation reveals the hole. The proxy holds A's traffic to
/// Redis so that the window between the ack and the publish is certain, not lucky (the
/// same happens without it, about once in ten `kill -9`s under load).
#[tokio::test(flavor = "multi_thread")]
async fn notes_acknowledged_by_a_node_that_dies_before_publishing_reach_other_nodes() {
    let cluster = Cluster::on_shared_redis().await;
    let proxy = RedisProxy::start(SHARED_REDIS_PORT).await;
    let proxy_url = proxy.url();
    let (mut a, b) = tokio::join!(cluster.node_via("a", &proxy_url), cluster.node("b"));
    let conv = b.http.open_as_customer(&customer(&cluster.id("lou"))).await;
    let observer_token = agent(&cluster.id("observer"));
    let mut observer = b.client(&observer_token).await;
    let (replay, _) = observer.subscribe(&conv, None).await;
    let mut received = events_only(replay);
    let mut writer = a.client(&agent(&cluster.id("writer"))).await;
    let mut acked = Vec::new();
    let ok = writer.note(&conv, "n1", "first note").await;
    acked.push(Acked::from_ok("n1", "first note", &ok));
    received.extend(events_only(observer.frames_until_seq(2).await));

    // A's publishes stall on their way to Redis; A acknowledges two more notes and dies.
    let mut spy =
        RedisSpy::subscribe(SHARED_REDIS_PORT, &cluster.channel(&format!("c:{conv}"))).await;
    proxy.set(Link::Hold);
    for (client_id, body) in [("n2", "second note"), ("n3", "third note")] {
        let ok = writer.note(&conv, client_id, body).await;
        acked.push(Acked::from_ok(client_id, body, &ok));
    }
    a.kill9().await;
    let last = acked.last().unwrap().clone();
    assert!(
        !spy.saw(&last.event_id, Instant::now() + QUIET).await,
        "the scenario needs A's publish to be lost"
    );
    assert_eq!(
        b.http.head(&observer_token, &conv).await,
        last.seq,
        "stored"
    );

    match events_until(
        &mut observer,
        last.seq,
        Instant::now() + Duration::from_secs(5),
    )
    .await
    {
        Ok(events) => received.extend(events),
        Err(events) => panic!(
            "notes acknowledged by node A (stored, head {}) never reached the live \
             subscriber on B after A died: got {:?} after {:?}",
            last.seq,
            seqs(&events),
            seqs(&received)
        ),
    }
    check_delivery("the observer on B", &received, last.seq, &acked);
}

/// protocol.md: every mention "is stored as a notification ... and sent as a
/// `notification` frame to every open session of its user". A node cut off from Redis
/// for a moment re-reads its conversations when it reconnects (that part works), but a
/// notification published meanwhile never reaches its users' sessions on that node.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_cut_off_from_redis_catches_up_events_and_notifications() {
    let cluster = Cluster::on_shared_redis().await;
    let proxy = RedisProxy::start(SHARED_REDIS_PORT).await;
    let proxy_url = proxy.url();
    let (a, b) = tokio::join!(cluster.node("a"), cluster.node_via("b", &proxy_url));
    let conv = a.http.open_as_customer(&customer(&cluster.id("max"))).await;
    let bob_id = cluster.id("bob");
    let mut bob = b.client(&agent(&bob_id)).await;
    bob.sync().await;
    let mut reader = b.client(&agent(&cluster.id("reader"))).await;
    let (replay, _) = reader.subscribe(&conv, None).await;
    let mut received = events_only(replay);
    let mut alice = a.client(&agent(&cluster.id("alice"))).await;
    let mut spy =
        RedisSpy::subscribe(SHARED_REDIS_PORT, &cluster.channel(&format!("u:{bob_id}"))).await;

    // B loses Redis; A writes notes mentioning bob, which A publishes: more than a page
    // of them (the catch-up once read only the newest 50).
    proxy.set(Link::Cut);
    b.wait_ready("degraded").await;
    let mut acked = Vec::new();
    let mut mentioned = BTreeSet::new();
    let mut ok = Value::Null;
    for i in 0..MISSED_MENTIONS {
        let body = format!("@{bob_id} the customer called again ({i})");
        let id = format!("mention-{i}");
        ok = alice.note(&conv, &id, &body).await;
        assert_eq!(ok["mentioned"], json!([bob_id]), "{ok}");
        acked.push(Acked::from_ok(&id, &body, &ok));
        mentioned.insert(ok["event_id"].as_str().unwrap().to_owned());
    }
    let event_id = ok["event_id"].as_str().unwrap().to_owned();
    assert!(
        spy.saw(&event_id, Instant::now() + STEP).await,
        "A published bob's notifications"
    );

    // B is back: the note reaches its subscriber (re-read from the store)...
    proxy.set(Link::Pass);
    b.wait_ready("\"broker\":\"ok\"").await;
    let head = ok["seq"].as_u64().unwrap();
    match events_until(&mut reader, head, Instant::now() + STEP).await {
        Ok(events) => received.extend(events),
        Err(events) => panic!("the note never reached B after it reconnected: {events:?}"),
    }
    check_delivery("the reader on B", &received, head, &acked);
    // ...and every notification reaches bob's open session there, once.
    let mut notified = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while notified.len() < MISSED_MENTIONS {
        match wait_frame_or_none(&mut bob, deadline, |f| ty(f) == "notification").await {
            Some(frame) => notified.push(frame["event_id"].as_str().unwrap_or("").to_owned()),
            None => break,
        }
    }
    let once: BTreeSet<String> = notified.iter().cloned().collect();
    assert_eq!(once.len(), notified.len(), "a notification came twice");
    assert_eq!(
        once,
        mentioned,
        "bob's session on B got {} of the {MISSED_MENTIONS} notifications written while B \
         was cut off from Redis",
        notified.len()
    );
    // And no more: nothing is delivered twice later.
    assert!(
        wait_frame_or_none(&mut bob, Instant::now() + Duration::from_millis(300), |f| {
            ty(f) == "notification"
        })
        .await
        .is_none()
    );
}

/// Notifications written while a node is cut off from Redis: more than one old page.
const MISSED_MENTIONS: usize = 60;
