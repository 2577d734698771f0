//! Internal notes must never reach a customer. A unique marker written in notes is
//! searched for in every byte the customer receives on every path: the live socket (the
//! whole session), a replay on a fresh socket, HTTP history, the conversation view, the
//! conversation list, and the error answers to what the customer may not do. Internal
//! typing reaches staff only; supervisors-only notes reach supervisors and admins only;
//! the customer's `seq` stays gap-free while notes are interleaved, and the customer's
//! `updated_at` and `head` do not move when only a note is written.

use std::time::Duration;

use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::support::*;

/// Asserts that none of `needles` occurs in any of `haystack`.
fn assert_absent(what: &str, haystack: &[String], needles: &[String]) {
    for text in haystack {
        for needle in needles {
            assert!(
                !text.contains(needle.as_str()),
                "{what} leaked `{needle}` in: {text}"
            );
        }
    }
}

/// A socket of `token`'s, subscribed to `conversation`.
async fn subscribed(server: &TestServer, token: &str, conversation: &str) -> Client {
    let mut client = server.client(token).await;
    client.subscribe(conversation, None).await;
    client
}

fn typing(conversation: &str, audience: &str) -> Value {
    json!({"type": "typing", "conversation_id": conversation, "audience": audience})
}

/// The three counters of one conversation, advanced as the test writes events.
#[derive(Debug, Clone, Copy)]
struct Heads {
    public: u64,
    agents: u64,
    supervisors: u64,
}

impl Heads {
    fn opened() -> Self {
        Heads {
            public: 1,
            agents: 1,
            supervisors: 1,
        }
    }
    fn public_event(&mut self) {
        self.public += 1;
        self.agents += 1;
        self.supervisors += 1;
    }
    fn internal_note(&mut self) {
        self.agents += 1;
        self.supervisors += 1;
    }
    fn supervisors_note(&mut self) {
        self.supervisors += 1;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn notes_never_reach_the_customer_on_any_path() {
    let server = TestServer::start().await;
    let marker = unique("SECRET-NOTE");
    let cust = customer("carol");
    let alice = agent("alice");
    // bob and sam only ever write notes and internal typing: the customer must not even
    // learn that they exist.
    let bob = agent("bob-notes-only");
    let sam = supervisor("sam-notes-only");

    // Every byte the customer receives over HTTP.
    let mut customer_http: Vec<String> = Vec::new();

    let reply = server
        .http
        .post(
            "/v1/conversations",
            Some(&cust),
            &json!({"inbox_id": "support"}),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    customer_http.push(reply.text.clone());
    let conv = reply.json()["id"].as_str().unwrap().to_owned();

    let mut c = server.client(&cust).await;
    let (replay, ok) = c.subscribe(&conv, None).await;
    assert_eq!(seqs(&replay), vec![1]);
    assert_eq!(ok["head"], 1);
    let mut a = server.client(&alice).await;
    a.subscribe(&conv, None).await;
    let mut b = server.client(&bob).await;
    b.subscribe(&conv, None).await;
    let mut s = server.client(&sam).await;
    s.subscribe(&conv, None).await;

    let mut heads = Heads::opened();
    let mut note_ids: Vec<String> = Vec::new();

    let ok = c.message(&conv, "c-1", "Hi, my parcel never arrived").await;
    heads.public_event();
    assert_eq!(
        ok["seq"], heads.public,
        "customer's ok is in the public stream"
    );

    let ok = a
        .note(
            &conv,
            "shared-key",
            &format!("{marker} flagged for fraud review"),
        )
        .await;
    heads.internal_note();
    assert_eq!(ok["seq"], heads.agents, "agent's ok is in the agent stream");
    note_ids.push(ok["event_id"].as_str().unwrap().to_owned());

    // Alice starts writing a note: her team sees it, the customer must not.
    a.send_json(&typing(&conv, "internal")).await;
    a.sync().await;

    let ok = a
        .message(&conv, "a-1", "Sorry to hear that, checking now")
        .await;
    heads.public_event();
    assert_eq!(ok["seq"], heads.agents);

    let ok = b
        .ok(
            json!({"type": "note", "conversation_id": conv, "client_id": "b-1",
                   "body": format!("context: {marker}"), "note_type": "context"}),
        )
        .await;
    heads.internal_note();
    assert_eq!(ok["seq"], heads.agents);
    note_ids.push(ok["event_id"].as_str().unwrap().to_owned());

    let ok = s
        .note(
            &conv,
            "s-1",
            &format!("{marker} from a supervisor, for the team"),
        )
        .await;
    heads.internal_note();
    assert_eq!(
        ok["seq"], heads.supervisors,
        "supervisor's ok is in the supervisor stream"
    );
    note_ids.push(ok["event_id"].as_str().unwrap().to_owned());

    let ok = c.message(&conv, "c-2", "Any news?").await;
    heads.public_event();
    assert_eq!(ok["seq"], heads.public);

    // The customer happens to reuse the client_id Alice used for her note: idempotency is
    // per author, so this is a new message and says nothing about the note.
    let ok = c.message(&conv, "shared-key", "Hello again").await;
    heads.public_event();
    assert_eq!(ok["seq"], heads.public);
    assert_ne!(ok["duplicate"], json!(true), "{ok}");
    assert!(!note_ids.contains(&ok["event_id"].as_str().unwrap().to_owned()));

    let ok = a
        .ok(
            json!({"type": "note", "conversation_id": conv, "client_id": "a-n2",
                   "body": format!("resolution {marker}"), "note_type": "resolution"}),
        )
        .await;
    heads.internal_note();
    assert_eq!(ok["seq"], heads.agents);
    note_ids.push(ok["event_id"].as_str().unwrap().to_owned());

    let ok = a.message(&conv, "a-2", "Refund issued").await;
    heads.public_event();
    assert_eq!(ok["seq"], heads.agents);

    // What the customer may not do; the answers are searched for leaks below too.
    c.error_code(note_frame(&conv, "c-n", "let me write a note"), "forbidden")
        .await;
    c.error_code(typing(&conv, "internal"), "forbidden").await;
    c.error_code(
        json!({"type": "subscribe", "conversation_id": conv, "since": "garbage"}),
        "bad_request",
    )
    .await;
    c.error_code(
        json!({"type": "subscribe", "conversation_id": uuid::Uuid::new_v4().to_string()}),
        "not_found",
    )
    .await;
    c.error_code(send_frame(&conv, "c-3", ""), "bad_request")
        .await;
    let reply = server
        .http
        .get(
            &format!("/v1/conversations/{conv}/events?after=abc"),
            Some(&cust),
        )
        .await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    customer_http.push(reply.text.clone());

    // Wait until each socket has seen the last event, then for anything behind it.
    let mut live = c.frames_until_seq(heads.public).await;
    let mut bob_frames = b.frames_until_seq(heads.agents).await;
    let mut alice_frames = a.frames_until_seq(heads.agents).await;
    for (client, frames) in [
        (&mut c, &mut live),
        (&mut b, &mut bob_frames),
        (&mut a, &mut alice_frames),
    ] {
        client.sync().await;
        frames.extend(client.take_pending());
    }
    s.sync().await;

    // The customer's live socket: public events only, seq 2, 3, 4... without a gap.
    all_events(&live);
    assert_eq!(seqs(&live), range(2, heads.public), "customer's live seqs");
    for frame in &live {
        assert_eq!(frame["event"]["kind"], "message", "{frame}");
    }
    // Bob (another agent) saw Alice's internal typing; the customer saw no typing at all.
    assert!(
        bob_frames.iter().any(|f| ty(f) == "typing"
            && f["audience"] == "internal"
            && f["user"]["id"] == "alice"),
        "bob should see alice's internal typing: {bob_frames:?}"
    );
    let bob_events: Vec<Value> = bob_frames
        .into_iter()
        .filter(|f| ty(f) == "event")
        .collect();
    assert_eq!(
        seqs(&bob_events),
        range(2, heads.agents),
        "agent's live seqs"
    );

    // Positive control: the notes exist and reached the team.
    let alice_notes = alice_frames
        .iter()
        .filter(|f| ty(f) == "event" && f["event"]["kind"] == "note")
        .count();
    assert_eq!(
        alice_notes, 4,
        "alice should have received the 4 notes live"
    );
    let staff_history = server.history(&alice, &conv).await;
    assert_eq!(staff_history.head, heads.agents);
    assert_eq!(
        staff_history
            .bodies()
            .iter()
            .filter(|b| b.contains(&marker))
            .count(),
        4
    );

    // Replay on a fresh customer socket.
    let mut c2 = server.client(&cust).await;
    let (replay, ok) = c2.subscribe(&conv, Some(0)).await;
    all_events(&replay);
    assert_eq!(
        seqs(&replay),
        range(1, heads.public),
        "customer's replay seqs"
    );
    assert_eq!(ok["head"], heads.public);
    for frame in &replay {
        let kind = frame["event"]["kind"].as_str().unwrap();
        assert!(matches!(kind, "conversation_opened" | "message"), "{frame}");
    }

    // HTTP history, conversation view and list.
    let history = server.history(&cust, &conv).await;
    customer_http.extend(history.texts.iter().cloned());
    assert_eq!(history.seqs(), range(1, heads.public));
    assert_eq!(history.head, heads.public);
    for kind in history.kinds() {
        assert!(
            matches!(kind.as_str(), "conversation_opened" | "message"),
            "{kind}"
        );
    }
    let view = server.conversation(&cust, &conv).await;
    customer_http.push(view.text.clone());
    assert_eq!(view.json()["head"], heads.public, "customer view head");
    let list = server.list(&cust, "").await;
    customer_http.push(list.text.clone());
    let items = list_items(&list.json());
    let item = items
        .iter()
        .find(|i| i["id"] == conv.as_str())
        .expect("the customer's conversation is in their list");
    assert_eq!(item["head"], heads.public, "customer list head");

    // Not one byte of it, anywhere.
    let mut needles = vec![
        marker.clone(),
        "bob-notes-only".to_owned(),
        "sam-notes-only".to_owned(),
    ];
    needles.extend(note_ids.iter().cloned());
    assert!(!c.transcript().is_empty() && !c2.transcript().is_empty());
    assert_absent("customer's live socket", c.transcript(), &needles);
    assert_absent("customer's replay socket", c2.transcript(), &needles);
    assert_absent("customer's HTTP", &customer_http, &needles);
    // ... while the marker did travel to the team (so the search could have found it).
    assert!(a.transcript().iter().any(|t| t.contains(&marker)));
}

#[tokio::test(flavor = "multi_thread")]
async fn supervisors_only_notes_reach_supervisors_and_admins_only() {
    let server = TestServer::start().await;
    let marker = unique("COACHING");
    let cust = customer("carol");
    let alice = agent("alice");
    let sam = supervisor("sam");
    let sue = supervisor("sue");
    let root = admin("root");
    let conv = server.open_as_customer(&cust).await;

    let mut c = server.client(&cust).await;
    c.subscribe(&conv, None).await;
    let mut a = server.client(&alice).await;
    a.subscribe(&conv, None).await;
    let mut sam_ws = server.client(&sam).await;
    sam_ws.subscribe(&conv, None).await;
    let mut sue_ws = server.client(&sue).await;
    sue_ws.subscribe(&conv, None).await;
    let mut root_ws = server.client(&root).await;
    root_ws.subscribe(&conv, None).await;

    let mut heads = Heads::opened();
    let ok = sam_ws
        .ok(
            json!({"type": "note", "conversation_id": conv, "client_id": "coach-1",
                   "body": format!("{marker}: alice should apologise first"),
                   "note_type": "coaching", "audience": "supervisors"}),
        )
        .await;
    heads.supervisors_note();
    assert_eq!(ok["seq"], heads.supervisors);
    let note_id = ok["event_id"].as_str().unwrap().to_owned();

    // Supervisors and admins get it live...
    for ws in [&mut sue_ws, &mut root_ws] {
        let frame = ws.next_event().await;
        assert_eq!(frame["seq"], 2);
        assert_eq!(frame["event"]["kind"], "note");
        assert_eq!(frame["event"]["audience"], "supervisors");
        assert_eq!(frame["event"]["note_type"], "coaching");
        assert_eq!(frame["event"]["id"], note_id.as_str());
    }
    // ... the agent and the customer get nothing.
    sam_ws.sync().await;
    a.sync().await;
    c.sync().await;
    a.expect_silence(QUIET).await;
    c.expect_silence(QUIET).await;

    // An agent may not write one.
    a.error_code(
        json!({"type": "note", "conversation_id": conv, "client_id": "a-coach",
               "body": "sneaky", "audience": "supervisors"}),
        "forbidden",
    )
    .await;

    // Nothing moved in the agent's or the customer's stream.
    assert_eq!(server.head(&alice, &conv).await, heads.agents);
    assert_eq!(server.head(&cust, &conv).await, heads.public);
    assert_eq!(server.head(&sam, &conv).await, heads.supervisors);
    let agent_view = server.conversation(&alice, &conv).await;
    assert_eq!(agent_view.json()["head"], heads.agents);

    // Counters stay per stream: an agent note, then a public message.
    let ok = a.note(&conv, "a-1", "regular team note").await;
    heads.internal_note();
    assert_eq!(ok["seq"], heads.agents);
    let ok = c.message(&conv, "c-1", "hello?").await;
    heads.public_event();
    assert_eq!(ok["seq"], heads.public);
    assert_eq!((heads.public, heads.agents, heads.supervisors), (2, 3, 4));
    assert_eq!(seqs(&a.frames_until_seq(3).await), vec![2, 3]);
    assert_eq!(seqs(&c.frames_until_seq(2).await), vec![2]);
    // Sam is subscribed too, so his own note came to him at 2.
    assert_eq!(seqs(&sam_ws.frames_until_seq(4).await), vec![2, 3, 4]);

    // Replay and history for the agent: no trace of it.
    let mut a2 = server.client(&alice).await;
    let (replay, ok) = a2.subscribe(&conv, Some(0)).await;
    assert_eq!(seqs(&replay), range(1, heads.agents));
    assert_eq!(ok["head"], heads.agents);
    let agent_history = server.history(&alice, &conv).await;
    assert_eq!(agent_history.seqs(), range(1, heads.agents));
    let list = server.list(&alice, "").await;

    let needles = vec![marker.clone(), note_id.clone()];
    assert_absent("agent's live socket", a.transcript(), &needles);
    assert_absent("agent's replay", a2.transcript(), &needles);
    assert_absent("agent's HTTP history", &agent_history.texts, &needles);
    assert_absent("agent's list", &[list.text, agent_view.text], &needles);
    assert_absent("customer's live socket", c.transcript(), &needles);
    let customer_history = server.history(&cust, &conv).await;
    assert_absent("customer's HTTP history", &customer_history.texts, &needles);

    // A supervisor's history has it at seq 2.
    let sup_history = server.history(&sue, &conv).await;
    assert_eq!(sup_history.seqs(), range(1, heads.supervisors));
    assert_eq!(sup_history.events[1]["event"]["id"], note_id.as_str());
}

fn timestamp(value: &Value) -> OffsetDateTime {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not a timestamp: {value}"));
    OffsetDateTime::parse(text, &Rfc3339).unwrap_or_else(|e| panic!("{text}: {e}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_note_does_not_move_the_customers_updated_at_or_head() {
    let server = TestServer::start().await;
    let cust = customer("carol");
    let alice = agent("alice");
    let conv = server.open_as_customer(&cust).await;
    let mut a = server.client(&alice).await;

    let customer_before = server.conversation(&cust, &conv).await.json();
    let staff_before = server.conversation(&alice, &conv).await.json();
    let customer_list_before = list_items(&server.list(&cust, "").await.json());

    // Not synchronization: timestamps may be stored with a coarse resolution, so let the
    // clock move far enough that a moved `updated_at` is visible.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    a.note(&conv, "n-1", "customer sounds upset").await;

    let customer_after = server.conversation(&cust, &conv).await.json();
    let staff_after = server.conversation(&alice, &conv).await.json();
    // Control: the staff view moved.
    assert!(
        timestamp(&staff_after["updated_at"]) > timestamp(&staff_before["updated_at"]),
        "staff updated_at should move with a note: {staff_before} -> {staff_after}"
    );
    assert_eq!(staff_after["head"], 2);
    // The customer view did not.
    assert_eq!(customer_after["updated_at"], customer_before["updated_at"]);
    assert_eq!(customer_after["head"], customer_before["head"]);
    assert_eq!(customer_after["head"], 1);
    let customer_list_after = list_items(&server.list(&cust, "").await.json());
    let find = |items: &[Value]| -> Value {
        items
            .iter()
            .find(|i| i["id"] == conv.as_str())
            .cloned()
            .expect("conversation in the customer's list")
    };
    assert_eq!(
        find(&customer_list_after)["updated_at"],
        find(&customer_list_before)["updated_at"]
    );
    assert_eq!(find(&customer_list_after)["head"], 1);

    // A public reply moves both.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    a.message(&conv, "m-1", "We're on it").await;
    let customer_final = server.conversation(&cust, &conv).await.json();
    assert!(
        timestamp(&customer_final["updated_at"]) > timestamp(&customer_before["updated_at"]),
        "customer updated_at should move with a public message"
    );
    assert_eq!(customer_final["head"], 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_supervisors_only_note_does_not_move_the_agents_view_or_list() {
    // Agents see a conversation's activity in their own stream: a coaching note that
    // moved their `updated_at`, or their list's order (or a `limit`ed page of it), would
    // tell them one was written, with their `head` unchanged.
    let server = TestServer::start().await;
    let cust = customer("carol");
    let alice = agent("alice");
    let older = server.open_as_customer(&cust).await;
    let newer = server.open_as_customer(&cust).await;
    let mut sam = server.client(&supervisor("sam")).await;
    let agent_before = server.conversation(&alice, &older).await.json();
    assert_eq!(
        list_ids(&server.list(&alice, "").await.json()),
        [newer.clone(), older.clone()]
    );

    // Not synchronization: let the clock move far enough that a moved `updated_at` is
    // visible at the stored resolution.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    sam.ok(
        json!({"type": "note", "conversation_id": older, "client_id": "coach-1",
                  "body": "tone was off", "note_type": "coaching",
                  "audience": "supervisors"}),
    )
    .await;
    // Control: the supervisor's stream moved.
    assert_eq!(server.head(&supervisor("sam"), &older).await, 2);

    let agent_after = server.conversation(&alice, &older).await.json();
    assert_eq!(agent_after["head"], agent_before["head"]);
    assert_eq!(agent_after["updated_at"], agent_before["updated_at"]);
    for query in ["", "limit=1", "inbox=support"] {
        let ids = list_ids(&server.list(&alice, query).await.json());
        let expected = if query == "limit=1" {
            vec![newer.clone()]
        } else {
            vec![newer.clone(), older.clone()]
        };
        assert_eq!(ids, expected, "agent's list `{query}`");
    }

    // A note agents see moves it for them.
    let mut a = server.client(&alice).await;
    a.note(&older, "n-1", "refund flagged by billing").await;
    let agent_final = server.conversation(&alice, &older).await.json();
    assert!(
        timestamp(&agent_final["updated_at"]) > timestamp(&agent_before["updated_at"]),
        "an agents' note should move the agent's updated_at: {agent_final}"
    );
    assert_eq!(
        list_ids(&server.list(&alice, "limit=1").await.json()),
        [older]
    );
}

/// The ids of a list answer, in its order.
fn list_ids(body: &Value) -> Vec<String> {
    list_items(body)
        .iter()
        .map(|item| item["id"].as_str().expect("an id").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_note_does_not_reorder_the_customers_list() {
    // The list is ordered by latest activity: for a customer, public activity only. A
    // note that moved its conversation up the customer's list (or into a `limit`ed page
    // of it) would tell the customer a note was written.
    let server = TestServer::start().await;
    let cust = customer("carol");
    let alice = agent("alice");
    let older = server.open_as_customer(&cust).await;
    let newer = server.open_as_customer(&cust).await;
    let mut a = server.client(&alice).await;
    assert_eq!(
        list_ids(&server.list(&cust, "").await.json()),
        [newer.clone(), older.clone()]
    );

    a.note(&older, "n-1", "refund flagged by billing").await;
    // Control: the staff list moved.
    let staff = list_ids(&server.list(&alice, "").await.json());
    let position = |id: &String| staff.iter().position(|s| s == id);
    assert!(
        position(&older) < position(&newer),
        "staff list should put the noted conversation first: {staff:?}"
    );
    // The customer's did not, whole or in a page of one.
    assert_eq!(
        list_ids(&server.list(&cust, "").await.json()),
        [newer.clone(), older.clone()]
    );
    assert_eq!(
        list_ids(&server.list(&cust, "limit=1").await.json()),
        [newer.as_str()]
    );

    // A public reply moves it for both.
    a.message(&older, "m-1", "We're on it").await;
    assert_eq!(
        list_ids(&server.list(&cust, "").await.json()),
        [older.clone(), newer.clone()]
    );
    assert_eq!(
        list_ids(&server.list(&cust, "limit=1").await.json()),
        [older]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn supervisors_only_typing_reaches_supervisors_only() {
    // A supervisor writing a coaching note types with audience `supervisors`. Shown to
    // agents as `internal` (and then no note appearing), it told them a note for
    // supervisors was written; nor may their presence frames say so, not even by
    // arriving unchanged.
    let server = TestServer::start().await;
    let cust = customer("carol");
    let conv = server.open_as_customer(&cust).await;
    let mut c = subscribed(&server, &cust, &conv).await;
    let mut a = subscribed(&server, &agent("alice"), &conv).await;
    let mut sue = subscribed(&server, &supervisor("sue"), &conv).await;
    let mut sam = subscribed(&server, &supervisor("sam"), &conv).await;
    // Let the joins' presence frames arrive, then count from here.
    for ws in [&mut c, &mut a, &mut sue, &mut sam] {
        ws.sync().await;
    }
    tokio::time::sleep(QUIET).await;
    for ws in [&mut c, &mut a, &mut sue, &mut sam] {
        ws.collect_for(Duration::from_millis(50)).await;
    }
    let agent_presence_before = a.presence().len();

    sam.send_json(&typing(&conv, "supervisors")).await;
    sam.sync().await;
    let frame = sue.next_frame(STEP).await;
    assert_eq!(ty(&frame), "typing", "{frame}");
    assert_eq!(frame["audience"], "supervisors");
    assert_eq!(frame["user"]["id"], "sam");
    // Sue's presence shows Sam typing for supervisors.
    let deadline = tokio::time::Instant::now() + STEP;
    while !sue.presence().iter().any(|p| {
        p["viewers"].as_array().is_some_and(|vs| {
            vs.iter()
                .any(|v| v["id"] == "sam" && v["typing_audience"] == "supervisors")
        })
    }) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            sue.presence()
        );
        sue.collect_for(Duration::from_millis(50)).await;
    }
    // Alice and the customer hear nothing: no typing frame, no presence frame.
    for ws in [&mut a, &mut c] {
        ws.sync().await;
        ws.expect_silence(QUIET).await;
    }
    assert_eq!(
        a.presence().len(),
        agent_presence_before,
        "{:?}",
        a.presence()
    );
    assert!(a
        .transcript()
        .iter()
        .all(|t| !t.contains("\"supervisors\"")));

    // Only supervisors and admins may type for supervisors.
    a.error_code(typing(&conv, "supervisors"), "forbidden")
        .await;
    c.error_code(typing(&conv, "supervisors"), "forbidden")
        .await;
    sue.expect_silence(QUIET).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn internal_typing_reaches_staff_only() {
    let server = TestServer::start().await;
    let cust = customer("carol");
    let conv = server.open_as_customer(&cust).await;
    let mut c = subscribed(&server, &cust, &conv).await;
    let mut a = subscribed(&server, &agent("alice"), &conv).await;
    let mut b = subscribed(&server, &agent("bob"), &conv).await;
    let mut s = subscribed(&server, &supervisor("sam"), &conv).await;

    // Alice types a note: Bob and Sam see it, Alice (the typist) and the customer don't.
    a.send_json(&typing(&conv, "internal")).await;
    a.sync().await;
    for ws in [&mut b, &mut s] {
        let frame = ws.next_frame(STEP).await;
        assert_eq!(ty(&frame), "typing", "{frame}");
        assert_eq!(frame["conversation_id"], conv.as_str());
        assert_eq!(frame["audience"], "internal");
        assert_eq!(frame["user"]["id"], "alice");
        assert_eq!(frame["user"]["role"], "agent");
    }
    c.sync().await;
    c.expect_silence(QUIET).await;
    a.expect_silence(Duration::from_millis(50)).await;

    // Alice types a reply: everyone else sees it, the customer included.
    a.send_json(&typing(&conv, "public")).await;
    a.sync().await;
    for ws in [&mut c, &mut b, &mut s] {
        let frame = ws.next_frame(STEP).await;
        assert_eq!(ty(&frame), "typing", "{frame}");
        assert_eq!(frame["audience"], "public");
        assert_eq!(frame["user"]["id"], "alice");
    }

    // The customer may not send internal typing; nobody hears of it.
    c.error_code(typing(&conv, "internal"), "forbidden").await;
    c.send_json(&typing(&conv, "public")).await;
    c.sync().await;
    for ws in [&mut a, &mut b, &mut s] {
        let frame = ws.next_frame(STEP).await;
        assert_eq!(ty(&frame), "typing", "{frame}");
        assert_eq!(
            frame["audience"], "public",
            "only the public typing arrives: {frame}"
        );
        assert_eq!(frame["user"]["id"], "carol");
        assert_eq!(frame["user"]["role"], "customer");
    }
    for ws in [&mut a, &mut b, &mut s] {
        ws.sync().await;
        ws.expect_silence(Duration::from_millis(100)).await;
    }

    // Typing is not stored.
    assert_eq!(server.head(&cust, &conv).await, 1);
    assert_eq!(server.head(&supervisor("sam"), &conv).await, 1);
}

/// A marker made only of letters and digits, so full-text search finds it as one word.
fn word_marker() -> String {
    format!("m{}", uuid::Uuid::new_v4().simple())
}

/// Staff-only requests a customer might try over HTTP; every answer is returned so its
/// bytes can be searched, and none may succeed.
async fn customer_http_attempts(
    server: &TestServer,
    cust: &str,
    conv: &str,
    marker: &str,
) -> Vec<String> {
    let mut texts = Vec::new();
    let gets = [
        format!("/v1/search/notes?q={marker}"),
        "/v1/notifications".to_owned(),
        "/v1/notifications?unread=true".to_owned(),
        format!("/v1/conversations/{conv}/audit"),
        "/v1/contacts/carol".to_owned(),
        "/v1/tags".to_owned(),
        "/v1/fields".to_owned(),
        "/v1/teams".to_owned(),
        "/v1/agents".to_owned(),
    ];
    for path in &gets {
        let reply = server.http.get(path, Some(cust)).await;
        assert!(
            matches!(reply.status, 403 | 404),
            "customer GET {path}: {} {}",
            reply.status,
            reply.text
        );
        texts.push(reply.text);
    }
    let posts = [
        (
            format!("/v1/conversations/{conv}/notes"),
            json!({"client_id": "c-note", "body": "hi"}),
        ),
        (
            format!("/v1/conversations/{conv}/assign"),
            json!({"assignee_id": "carol"}),
        ),
        (
            format!("/v1/conversations/{conv}/status"),
            json!({"status": "resolved"}),
        ),
        (
            format!("/v1/conversations/{conv}/tags"),
            json!({"add": ["x"]}),
        ),
        (
            "/v1/fields/values".to_owned(),
            json!({"target": "conversation", "id": conv, "fields": {}}),
        ),
        ("/v1/notifications/read".to_owned(), json!({})),
    ];
    for (path, body) in &posts {
        let reply = server.http.post(path, Some(cust), body).await;
        assert!(
            matches!(reply.status, 403 | 404),
            "customer POST {path}: {} {}",
            reply.status,
            reply.text
        );
        texts.push(reply.text);
    }
    texts
}

#[tokio::test(flavor = "multi_thread")]
async fn internal_activity_never_reaches_the_customer() {
    let server = TestServer::start().await;
    let marker = word_marker();
    let (tag, team, conv_field, contact_field) = (
        "vip-escalation",
        "tier2-team",
        "internal_tier",
        "risk_score",
    );
    let root = admin("root");
    for (path, body) in [
        (format!("/v1/tags/{tag}"), json!({"color": "red"})),
        (format!("/v1/teams/{team}"), json!({"name": "Tier 2"})),
        (
            format!("/v1/fields/{conv_field}"),
            json!({"type": "text", "applies_to": "conversation"}),
        ),
        (
            format!("/v1/fields/{contact_field}"),
            json!({"type": "text", "applies_to": "contact"}),
        ),
    ] {
        let reply = server.http.put(&path, Some(&root), &body).await;
        assert_eq!(reply.status, 200, "PUT {path}: {}", reply.text);
    }
    let cust = customer("carol");
    let alice = agent("alice");
    let mut bob_claims = claims("agent", "bob-internal");
    bob_claims["inboxes"] = json!(["support"]);
    bob_claims["teams"] = json!([team]);
    let bob = sign(&bob_claims);

    let reply = server
        .http
        .post(
            "/v1/conversations",
            Some(&cust),
            &json!({"inbox_id": "support"}),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    let mut customer_http = vec![reply.text.clone()];
    let conv = reply.json()["id"].as_str().unwrap().to_owned();

    let mut c = server.client(&cust).await;
    c.subscribe(&conv, None).await;
    let mut a = server.client(&alice).await;
    a.subscribe(&conv, None).await;
    let mut b = server.client(&bob).await; // bob is known from here on
    b.subscribe(&conv, None).await;

    let ok = c.message(&conv, "c-1", "my card was charged twice").await;
    assert_eq!(ok["seq"], 2);
    let customer_before = server.conversation(&cust, &conv).await.json();
    // Not synchronization: lets a moved `updated_at` be visible at any resolution.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // Everything the team does that the customer must never see.
    let ok = a
        .ok(json!({"type": "note", "conversation_id": conv, "client_id": "n-1",
                   "body": format!("@bob-internal can you check {marker}"), "note_type": "context"}))
        .await;
    assert_eq!(ok["mentioned"], json!(["bob-internal"]), "{ok}");
    let note_id = ok["event_id"].as_str().unwrap().to_owned();
    let mut internal_ids = vec![note_id.clone()];
    for frame in [
        json!({"type": "edit_note", "conversation_id": conv, "note_id": note_id, "body": format!("{marker} (edited)")}),
        json!({"type": "pin_note", "conversation_id": conv, "note_id": note_id}),
        json!({"type": "assign", "conversation_id": conv, "assignee_id": "bob-internal", "team_id": team,
               "note": format!("handing over to @bob-internal: {marker}")}),
        json!({"type": "set_status", "conversation_id": conv, "status": "pending"}),
        json!({"type": "tag", "conversation_id": conv, "add": [tag]}),
        json!({"type": "set_fields", "target": "conversation", "id": conv, "fields": {conv_field: marker}}),
        json!({"type": "set_fields", "target": "contact", "id": "carol", "fields": {contact_field: marker}}),
    ] {
        let ok = a.ok(frame).await;
        internal_ids.push(ok["event_id"].as_str().expect("event_id").to_owned());
    }
    a.send_json(&typing(&conv, "internal")).await;
    a.sync().await;

    // What the customer may try; every answer is searched below.
    for frame in [
        json!({"type": "edit_note", "conversation_id": conv, "note_id": note_id, "body": "mine now"}),
        json!({"type": "pin_note", "conversation_id": conv, "note_id": note_id, "pinned": false}),
        json!({"type": "assign", "conversation_id": conv, "assignee_id": "alice"}),
        json!({"type": "set_status", "conversation_id": conv, "status": "resolved"}),
        json!({"type": "tag", "conversation_id": conv, "remove": [tag]}),
        json!({"type": "set_fields", "target": "conversation", "id": conv, "fields": {conv_field: null}}),
        json!({"type": "set_fields", "target": "contact", "id": "carol", "fields": {contact_field: null}}),
        json!({"type": "read_notifications"}),
        json!({"type": "watch_agents"}),
    ] {
        let error = c.error(frame.clone()).await;
        assert!(
            matches!(error["code"].as_str(), Some("forbidden" | "not_found")),
            "{frame} -> {error}"
        );
    }
    customer_http.extend(customer_http_attempts(&server, &cust, &conv, &marker).await);

    // The customer's view did not move.
    let customer_after = server.conversation(&cust, &conv).await;
    customer_http.push(customer_after.text.clone());
    let customer_after = customer_after.json();
    assert_eq!(customer_after["head"], 2);
    assert_eq!(customer_after["updated_at"], customer_before["updated_at"]);
    let allowed: std::collections::BTreeSet<String> = [
        "id",
        "inbox_id",
        "subject",
        "status",
        "created_at",
        "updated_at",
        "head",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert!(
        keys(&customer_after).is_subset(&allowed),
        "customer view: {customer_after}"
    );

    // A public reply: the customer's next seq is 3, nothing in between.
    a.message(&conv, "a-1", "refund on its way").await;
    let mut live = c.frames_until_seq(3).await;
    c.sync().await;
    live.extend(c.take_pending());
    all_events(&live);
    assert_eq!(seqs(&live), vec![2, 3]);
    assert!(
        c.presence().is_empty(),
        "presence reached a customer: {:?}",
        c.presence()
    );

    // Positive controls: it all happened, and the team saw it.
    let staff = server.history(&alice, &conv).await;
    let kinds = staff.kinds();
    for kind in [
        "note",
        "note_edited",
        "note_pinned",
        "assigned",
        "status_changed",
        "tags_changed",
        "fields_changed",
    ] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "no {kind} in the staff history: {kinds:?}"
        );
    }
    let bob_frames = b.frames_until_seq(staff.head).await;
    let notifications: Vec<&Value> = bob_frames
        .iter()
        .filter(|f| ty(f) == "notification")
        .collect();
    assert!(
        notifications.iter().any(|n| n["kind"] == "mention")
            && notifications.iter().any(|n| n["kind"] == "assigned"),
        "bob should be notified of the mention and the assignment: {notifications:?}"
    );
    let staff_view = server.conversation(&alice, &conv).await.json();
    assert_eq!(staff_view["assignee_id"], "bob-internal");
    assert!(
        staff_view.to_string().contains(&marker),
        "staff view shows the pinned note and field"
    );

    // Replay, history and list for the customer.
    let mut c2 = server.client(&cust).await;
    let (replay, ok) = c2.subscribe(&conv, Some(0)).await;
    assert_eq!(seqs(&replay), vec![1, 2, 3]);
    assert_eq!(ok["head"], 3);
    let history = server.history(&cust, &conv).await;
    assert_eq!(
        history.kinds(),
        vec!["conversation_opened", "message", "message"]
    );
    customer_http.extend(history.texts);
    customer_http.push(server.list(&cust, "").await.text);
    customer_http.push(server.list(&cust, "status=pending").await.text);

    let mut needles = vec![
        marker.clone(),
        "bob-internal".to_owned(),
        tag.to_owned(),
        team.to_owned(),
        conv_field.to_owned(),
        contact_field.to_owned(),
        "\"notification\"".to_owned(),
        "\"presence\"".to_owned(),
    ];
    needles.extend(internal_ids);
    assert_absent("customer's live socket", c.transcript(), &needles);
    assert_absent("customer's replay socket", c2.transcript(), &needles);
    assert_absent("customer's HTTP", &customer_http, &needles);
    assert!(a.transcript().iter().any(|t| t.contains(&marker)));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_reply_guard_does_not_betray_notes_to_the_customer() {
    let server = TestServer::start().await;
    let marker = word_marker();
    let cust = customer("carol");
    let alice = agent("alice");
    let conv = server.open_as_customer(&cust).await;
    let mut c = server.client(&cust).await;
    let mut a = server.client(&alice).await;

    c.message(&conv, "c-1", "hello").await;
    let note = a.note(&conv, "n-1", &format!("{marker} first")).await;
    // The customer has seen everything of their stream (head 2): a note is no conflict.
    let guarded = |client_id: &str, based_on: u64| {
        json!({"type": "send", "conversation_id": conv, "client_id": client_id,
               "body": "still waiting", "based_on_seq": based_on})
    };
    let ok = c.ok(guarded("c-2", 2)).await;
    assert_eq!(ok["seq"], 3);

    // A reply and another note arrive; the customer is behind by the reply only.
    a.message(&conv, "a-1", "sorry for the wait").await;
    let note2 = a.note(&conv, "n-2", &format!("{marker} second")).await;
    let error = c.error_code(guarded("c-3", 3), "conflict").await;
    let missed = error["missed"].as_array().expect("missed");
    assert_eq!(
        seqs(missed),
        vec![4],
        "only the public reply, in the public stream"
    );
    assert_eq!(missed[0]["event"]["kind"], "message");
    assert_eq!(server.head(&cust, &conv).await, 4, "nothing stored");

    let reply = server
        .http
        .post(
            &format!("/v1/conversations/{conv}/messages"),
            Some(&cust),
            &json!({"client_id": "c-4", "body": "hello?", "based_on_seq": 3}),
        )
        .await;
    reply.assert_error(409, "conflict");
    // Over HTTP too, `missed` holds the public reply only.
    let missed = reply.json()["error"]["missed"].clone();
    assert_eq!(
        seqs(missed.as_array().expect("missed")),
        vec![4],
        "{missed}"
    );
    let needles = vec![
        marker.clone(),
        note["event_id"].as_str().unwrap().to_owned(),
        note2["event_id"].as_str().unwrap().to_owned(),
    ];
    assert_absent("customer's socket", c.transcript(), &needles);
    assert_absent("customer's HTTP", &[reply.text], &needles);
}

#[tokio::test(flavor = "multi_thread")]
async fn supervisors_only_notes_stay_with_supervisors_on_every_path() {
    let server = TestServer::start().await;
    let marker = word_marker();
    let cust = customer("carol");
    let alice = agent("alice");
    let sam = supervisor("sam");
    let sue = supervisor("sue");
    let conv = server.open_as_customer(&cust).await;
    let mut a = server.client(&alice).await;
    a.subscribe(&conv, None).await;
    let mut sue_ws = server.client(&sue).await;
    sue_ws.subscribe(&conv, None).await;
    let mut sam_ws = server.client(&sam).await;

    let ok = sam_ws
        .ok(
            json!({"type": "note", "conversation_id": conv, "client_id": "coach-1",
                   "body": format!("@alice @sue {marker} tone was off"),
                   "note_type": "coaching", "audience": "supervisors"}),
        )
        .await;
    assert_eq!(
        ok["mentioned"],
        json!(["sue"]),
        "only those who may read it are notified"
    );
    let note_id = ok["event_id"].as_str().unwrap().to_owned();
    let mut ids = vec![note_id.clone()];
    for frame in [
        json!({"type": "edit_note", "conversation_id": conv, "note_id": note_id, "body": format!("{marker} tone was off (edited)")}),
        json!({"type": "pin_note", "conversation_id": conv, "note_id": note_id}),
    ] {
        ids.push(
            sam_ws.ok(frame).await["event_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    // Control: sue sees the note, the edit, the pin, and a mention.
    let sue_frames = sue_ws.frames_until_seq(4).await;
    assert!(
        sue_frames
            .iter()
            .any(|f| ty(f) == "notification" && f["kind"] == "mention"),
        "{sue_frames:?}"
    );

    // The agent may not touch it; it answers as if it did not exist or was not theirs.
    let mut agent_answers = Vec::new();
    for frame in [
        json!({"type": "edit_note", "conversation_id": conv, "note_id": note_id, "body": "x"}),
        json!({"type": "pin_note", "conversation_id": conv, "note_id": note_id, "pinned": false}),
    ] {
        let error = a.error(frame.clone()).await;
        assert!(
            matches!(error["code"].as_str(), Some("forbidden" | "not_found")),
            "{frame} -> {error}"
        );
        agent_answers.push(error.to_string());
    }
    a.sync().await;
    a.expect_silence(QUIET).await;

    let notifications = server.http.get("/v1/notifications", Some(&alice)).await;
    assert_eq!(notifications.status, 200, "{}", notifications.text);
    let search = server
        .http
        .get(&format!("/v1/search/notes?q={marker}"), Some(&alice))
        .await;
    assert_eq!(search.status, 200, "{}", search.text);
    assert_eq!(search.json()["results"], json!([]), "{}", search.text);
    let view = server.conversation(&alice, &conv).await;
    let history = server.history(&alice, &conv).await;
    assert_eq!(history.head, 1);
    let contact = server.http.get("/v1/contacts/carol", Some(&alice)).await;
    agent_answers.extend([notifications.text, search.text, view.text, contact.text]);
    agent_answers.extend(history.texts);

    // Controls: a supervisor finds it everywhere.
    let sup_search = server
        .http
        .get(&format!("/v1/search/notes?q={marker}"), Some(&sue))
        .await;
    assert_eq!(
        sup_search.json()["results"].as_array().map(Vec::len),
        Some(1),
        "{}",
        sup_search.text
    );
    let sup_notifications = server.http.get("/v1/notifications", Some(&sue)).await;
    assert!(
        sup_notifications.text.contains(&note_id),
        "{}",
        sup_notifications.text
    );

    let mut needles = vec![marker.clone()];
    needles.extend(ids);
    assert_absent("agent's socket", a.transcript(), &needles);
    assert_absent("agent's answers", &agent_answers, &needles);
}
