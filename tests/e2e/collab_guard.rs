//! The reply guard: `send` with `based_on_seq` (the last seq of their stream the sender
//! has seen) is refused with `conflict` when a message or note by someone else came
//! after it, nothing is stored, and the `error` frame carries `missed` (the unseen events,
//! in the sender's stream); the sender's own events and team activity (assignment, tags)
//! do not trip it. Two agents answering at once from the same seq: exactly one reply is
//! stored. A customer's guard counts public events only, and their `missed` never holds
//! a note; an agent's guard ignores supervisors-only notes.

use futures::future::join;
use serde_json::{json, Value};

use crate::collab_support::*;
use crate::support::*;

fn guarded(conversation: &str, client_id: &str, body: &str, based_on: u64) -> Value {
    let mut frame = send_frame(conversation, client_id, body);
    frame["based_on_seq"] = json!(based_on);
    frame
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reply_based_on_an_old_seq_is_refused_with_what_was_missed() {
    let server = TestServer::start().await;
    define_tag(&server, "vip").await;
    let cust_t = customer("carol");
    let conv = server.open_as_customer(&cust_t).await;
    let alice_t = agent("alice");
    let bob_t = agent("bob");
    let mut carol = online(&server, &cust_t).await;
    carol.subscribe(&conv, None).await;
    let mut alice = online(&server, &alice_t).await;
    let mut bob = online(&server, &bob_t).await;

    let seen = carol.message(&conv, "c-1", "Hello? My parcel").await["seq"]
        .as_u64()
        .unwrap();
    assert_eq!(seen, 2);
    // Alice has read up to 2 (agent stream: opened 1, message 2). Then Bob writes a
    // note and the customer writes again.
    let bob_note = bob.note(&conv, "b-1", "I think it is in the depot").await;
    let carol_msg = carol.message(&conv, "c-2", "Hello??").await;
    let head = server.head(&alice_t, &conv).await;
    assert_eq!(head, 4);

    let error = alice
        .error_code(guarded(&conv, "a-1", "Let me check", 2), "conflict")
        .await;
    let missed = error["missed"]
        .as_array()
        .unwrap_or_else(|| panic!("no missed: {error}"));
    assert_eq!(seqs(missed), vec![3, 4], "{error}");
    assert_eq!(missed[0]["event"]["id"], bob_note["event_id"]);
    assert_eq!(missed[0]["event"]["kind"], "note");
    assert_eq!(missed[1]["event"]["id"], carol_msg["event_id"]);
    assert_eq!(missed[1]["event"]["body"], "Hello??");
    // Nothing was stored or sent to the customer.
    assert_eq!(server.head(&alice_t, &conv).await, head);
    assert!(!server
        .history(&alice_t, &conv)
        .await
        .bodies()
        .contains(&"Let me check".to_owned()));
    carol.frames_until_seq(3).await;
    assert_no_frame(&mut carol, "the refused reply", |f| ty(f) == "event").await;

    // Having seen them, the reply goes through; the same client_id may be reused.
    let ok = alice.ok(guarded(&conv, "a-1", "Let me check", 4)).await;
    assert_eq!(ok["seq"], 5);
    let (_, frame) = wait_for(&mut carol, "the reply", |f| ty(f) == "event").await;
    assert_eq!(frame["event"]["body"], "Let me check");

    // Her own note and message, and team activity by others, do not count.
    alice.note(&conv, "a-n", "note to self").await;
    alice.message(&conv, "a-2", "One moment").await;
    bob.ok(tag_frame(&conv, &["vip"], &[])).await;
    bob.ok(assign_frame(&conv, Some("alice"), None, None)).await;
    bob.ok(status_frame(&conv, "pending")).await;
    let ok = alice.ok(guarded(&conv, "a-3", "Found it", 5)).await;
    assert_eq!(ok["seq"], 11, "{ok}");

    // Over HTTP: 409 conflict.
    bob.note(&conv, "b-2", "fyi").await;
    let reply = server
        .http
        .post(
            &format!("/v1/conversations/{conv}/messages"),
            Some(&alice_t),
            &json!({"client_id": "a-4", "body": "late", "based_on_seq": 11}),
        )
        .await;
    reply.assert_error(409, "conflict");
    // With what was missed, as over the socket.
    let missed = &reply.json()["error"]["missed"];
    assert_eq!(missed[0]["seq"], 12, "{}", reply.text);
    assert_eq!(missed[0]["event"]["body"], "fyi", "{}", reply.text);
    let reply = server
        .http
        .post(
            &format!("/v1/conversations/{conv}/messages"),
            Some(&alice_t),
            &json!({"client_id": "a-4", "body": "on time", "based_on_seq": 12}),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_agents_replying_at_once_store_one_reply() {
    let server = TestServer::start().await;
    let cust_t = customer("carol");
    let conv = server.open_as_customer(&cust_t).await;
    let alice_t = agent("alice");
    let bob_t = agent("bob");
    let mut carol = online(&server, &cust_t).await;
    let mut alice = online(&server, &alice_t).await;
    let mut bob = online(&server, &bob_t).await;

    for round in 0..10 {
        carol
            .message(&conv, &format!("c-{round}"), "anyone there?")
            .await;
        let seen = server.head(&alice_t, &conv).await;
        let (a, b) = join(
            alice.request(guarded(&conv, &format!("a-{round}"), "Alice here", seen)),
            bob.request(guarded(&conv, &format!("b-{round}"), "Bob here", seen)),
        )
        .await;
        let (winner, loser, loser_name) = match (&a, &b) {
            (Ok(ok), Err(error)) => (ok, error, "bob"),
            (Err(error), Ok(ok)) => (ok, error, "alice"),
            _ => panic!("round {round}: exactly one reply must be stored: {a:?} / {b:?}"),
        };
        assert_eq!(loser["code"], "conflict", "{loser}");
        let missed = loser["missed"].as_array().unwrap();
        assert_eq!(
            missed.len(),
            1,
            "{loser_name} missed only the winner's reply: {loser}"
        );
        assert_eq!(missed[0]["event"]["id"], winner["event_id"]);
        assert_eq!(missed[0]["seq"], winner["seq"]);
        assert_eq!(server.head(&alice_t, &conv).await, seen + 1);
    }
    let history = server.history(&cust_t, &conv).await;
    assert_eq!(history.events.len(), 1 + 10 * 2, "one reply per question");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_guard_counts_only_what_the_sender_may_see() {
    let server = TestServer::start().await;
    let cust_t = customer("carol");
    let conv = server.open_as_customer(&cust_t).await;
    let alice_t = agent("alice");
    let marker = unique("GUARD-NOTE");
    let mut carol = online(&server, &cust_t).await;
    let mut alice = online(&server, &alice_t).await;
    let mut sam = online(&server, &supervisor("sam")).await;

    // Notes after the customer's last seen seq do not stop them.
    alice
        .note(&conv, "n-1", &format!("{marker} internal"))
        .await;
    sam.ok(coaching(&conv, "s-1", &format!("{marker} coaching")))
        .await;
    let ok = carol.ok(guarded(&conv, "c-1", "hi", 1)).await;
    assert_eq!(ok["seq"], 2, "{ok}");

    // An agent's reply and another note: the customer misses the reply only.
    let reply = alice.message(&conv, "a-1", "Hello Carol").await;
    alice.note(&conv, "n-2", &format!("{marker} second")).await;
    let error = carol
        .error_code(guarded(&conv, "c-2", "hello?", 2), "conflict")
        .await;
    let missed = error["missed"].as_array().unwrap();
    assert_eq!(seqs(missed), vec![3], "in the public stream: {error}");
    assert_eq!(missed[0]["event"]["kind"], "message");
    assert_eq!(missed[0]["event"]["id"], reply["event_id"]);
    assert_absent(
        "the customer's conflict",
        &[error.to_string()],
        std::slice::from_ref(&marker),
    );
    assert_absent("the customer's socket", carol.transcript(), &[marker]);
    let ok = carol.ok(guarded(&conv, "c-2", "hello?", 3)).await;
    assert_eq!(ok["seq"], 4);

    // An agent's guard does not count a supervisors-only note either: refusing would
    // tell the agent it exists.
    let seen = server.head(&alice_t, &conv).await;
    let coach = format!("{}-agent", unique("GUARD-COACH"));
    sam.ok(coaching(&conv, "s-2", &coach)).await;
    let ok = alice
        .ok(guarded(&conv, "a-2", "Anything else?", seen))
        .await;
    assert_eq!(ok["seq"], seen + 1, "{ok}");
    assert_absent("the agent's socket", alice.transcript(), &[coach]);
}

#[tokio::test(flavor = "multi_thread")]
async fn missed_is_capped_and_a_retried_reply_is_a_duplicate_not_a_conflict() {
    let server = TestServer::start().await;
    let cust_t = customer("carol");
    let conv = server.open_as_customer(&cust_t).await;
    let alice_t = agent("alice");
    let mut carol = online(&server, &cust_t).await;
    let mut alice = online(&server, &alice_t).await;
    let mut bob = online(&server, &agent("bob")).await;

    // A reply that went through, retried (the network lost the ok) after a colleague
    // wrote: the retry is the same reply, not a conflict.
    let ok = alice.ok(guarded(&conv, "a-1", "On it", 1)).await;
    bob.note(&conv, "b-1", "I can take it too").await;
    let retry = alice.ok(guarded(&conv, "a-1", "On it", 1)).await;
    assert_eq!(retry["duplicate"], true, "{retry}");
    assert_eq!(retry["event_id"], ok["event_id"]);
    assert_eq!(retry["seq"], ok["seq"]);

    // Many unseen events: at most 50 in `missed`, in order, nothing stored.
    for i in 0..60 {
        carol
            .message(&conv, &format!("c-{i}"), &format!("message {i}"))
            .await;
    }
    let head = server.head(&alice_t, &conv).await;
    let error = alice
        .error_code(guarded(&conv, "a-2", "Sorry for the wait", 3), "conflict")
        .await;
    let missed = error["missed"].as_array().unwrap();
    assert_eq!(missed.len(), 50, "{}", missed.len());
    let got = seqs(missed);
    assert!(
        got.windows(2).all(|w| w[1] == w[0] + 1),
        "in order without gaps: {got:?}"
    );
    assert!(got[0] > 3 && *got.last().unwrap() <= head, "{got:?}");
    assert_eq!(server.head(&alice_t, &conv).await, head);
}
