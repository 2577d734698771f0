//! Note search: `GET /v1/search/notes?q=` finds the notes the caller may read (their
//! inboxes; supervisors-only notes for supervisors and admins), never public messages,
//! with filters `note_type`, `author` and `tag` and a `limit`; each hit is
//! `{conversation_id, note_id, note_type, audience, author, body, at}`. Search input is
//! words, not query syntax; an empty `q` is `bad_request`; customers are refused.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::collab_support::*;
use crate::support::*;

fn note_ids(hits: &[Value]) -> BTreeSet<String> {
    hits.iter()
        .map(|h| h["note_id"].as_str().expect("note_id").to_owned())
        .collect()
}

fn set(ids: &[&String]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn search_finds_what_the_caller_may_read_with_filters() {
    let server = TestServer::start().await;
    define_inbox(&server, "billing").await;
    define_tag(&server, "vip").await;
    let alice_t = agent("alice");
    let bob_t = agent("bob");
    let bill_t = agent_in("bill", &["billing"]);
    let sam_t = supervisor("sam");
    let cust_t = customer("carol");
    let conv1 = server.open_as_customer(&cust_t).await;
    let conv2 = server.open_as_customer(&customer("dora")).await;
    let conv3 = server.open(&bill_t, "billing", Some("erin")).await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let mut alice = online(&server, &alice_t).await;
    let mut bob = online(&server, &bob_t).await;
    let mut bill = online(&server, &bill_t).await;
    let mut sam = online(&server, &sam_t).await;
    alice.ok(tag_frame(&conv1, &["vip"], &[])).await;

    let n1 = event_id(
        &alice
            .ok(note_of(
                &conv1,
                "n1",
                "Customer wants a Refund for the kettle",
                Some("context"),
                None,
            ))
            .await,
    );
    let n2 = event_id(
        &bob.ok(note_of(
            &conv2,
            "n2",
            "refund issued via courier",
            Some("resolution"),
            None,
        ))
        .await,
    );
    let n3 = event_id(
        &bill
            .note(&conv3, "n3", "refund needs finance approval")
            .await,
    );
    let n4 = event_id(
        &sam.ok(coaching(&conv1, "n4", "coach alice on the refund tone"))
            .await,
    );
    let n5 = event_id(&alice.note(&conv2, "n5", "unrelated: courier delayed").await);
    // A public message with the word is not a note.
    alice
        .message(&conv1, "m1", "Your refund is on its way")
        .await;
    server
        .http
        .post(
            &format!("/v1/conversations/{conv1}/messages"),
            Some(&cust_t),
            &json!({"client_id": "c1", "body": "refund please"}),
        )
        .await;

    // Alice (support) sees the support notes for agents.
    let hits = search(&server, &alice_t, "q=refund").await;
    assert_eq!(note_ids(&hits), set(&[&n1, &n2]), "{hits:?}");
    let hit = hits.iter().find(|h| h["note_id"] == n1.as_str()).unwrap();
    assert_eq!(hit["conversation_id"], conv1.as_str());
    assert_eq!(hit["note_type"], "context");
    assert_eq!(hit["audience"], "agents");
    assert_eq!(hit["author"]["id"], "alice");
    assert_eq!(hit["body"], "Customer wants a Refund for the kettle");
    timestamp(&hit["at"]);
    // Case-insensitive words; every word must match.
    assert_eq!(
        note_ids(&search(&server, &alice_t, "q=REFUND%20kettle").await),
        set(&[&n1])
    );
    assert_eq!(
        note_ids(&search(&server, &alice_t, "q=courier").await),
        set(&[&n2, &n5])
    );
    // Filters.
    assert_eq!(
        note_ids(&search(&server, &alice_t, "q=refund&note_type=context").await),
        set(&[&n1])
    );
    assert_eq!(
        note_ids(&search(&server, &alice_t, "q=refund&note_type=resolution").await),
        set(&[&n2])
    );
    assert_eq!(
        note_ids(&search(&server, &alice_t, "q=refund&author=bob").await),
        set(&[&n2])
    );
    assert_eq!(
        note_ids(&search(&server, &alice_t, "q=courier&author=alice").await),
        set(&[&n5])
    );
    assert_eq!(
        note_ids(&search(&server, &alice_t, "q=refund&tag=vip").await),
        set(&[&n1])
    );
    assert!(search(&server, &alice_t, "q=refund&tag=vip&author=bob")
        .await
        .is_empty());
    assert_eq!(search(&server, &alice_t, "q=refund&limit=1").await.len(), 1);

    // Bill (billing) sees his inbox only; Sam sees every inbox and the coaching note.
    assert_eq!(
        note_ids(&search(&server, &bill_t, "q=refund").await),
        set(&[&n3])
    );
    assert_eq!(
        note_ids(&search(&server, &sam_t, "q=refund").await),
        set(&[&n1, &n2, &n3, &n4])
    );
    assert_eq!(
        note_ids(&search(&server, &sam_t, "q=refund&note_type=coaching").await),
        set(&[&n4])
    );
    assert_eq!(
        note_ids(&search(&server, &admin("root"), "q=refund&tag=vip").await),
        set(&[&n1, &n4])
    );
    // An agent asking for coaching notes by type still gets none.
    assert!(search(&server, &alice_t, "q=refund&note_type=coaching")
        .await
        .is_empty());

    // Input is words, never query syntax; an empty query is refused.
    for q in [
        "refund%22",
        "refund*",
        "refund%20OR%20kettle",
        "NEAR(refund",
        "%22%22",
        "-refund",
        "refund:",
    ] {
        let reply = server
            .http
            .get(&format!("/v1/search/notes?q={q}"), Some(&alice_t))
            .await;
        assert!(
            reply.status == 200 || reply.status == 400,
            "q={q}: {} {}",
            reply.status,
            reply.text
        );
        if reply.status == 400 {
            assert_eq!(reply.error_code(), "bad_request");
        }
    }
    for q in ["", "%20%20"] {
        server
            .http
            .get(&format!("/v1/search/notes?q={q}"), Some(&alice_t))
            .await
            .assert_error(400, "bad_request");
    }
    server
        .http
        .get("/v1/search/notes?q=refund&note_type=gossip", Some(&alice_t))
        .await
        .assert_error(400, "bad_request");
    // Customers may not search.
    server
        .http
        .get("/v1/search/notes?q=refund", Some(&cust_t))
        .await
        .assert_error(403, "forbidden");
}

/// Results come newest first: an order that depends on the matching notes alone. A
/// relevance score that weighs a word by how many notes in the whole index hold it
/// (SQLite's bm25) let an agent learn the words of notes they cannot read from the order
/// of their own: two notes "W W C" and "W C C" swapped places once hidden notes held W.
#[tokio::test(flavor = "multi_thread")]
async fn the_order_of_results_says_nothing_of_notes_the_caller_cannot_read() {
    let server = TestServer::start().await;
    let ivy_t = agent("ivy");
    let conv = server.open_as_customer(&customer("carol")).await;
    let mut ivy = online(&server, &ivy_t).await;
    let mut sam = online(&server, &supervisor("sam")).await;
    // A word only supervisors-only coaching notes hold, and one no hidden note holds.
    for i in 0..3 {
        sam.ok(coaching(
            &conv,
            &format!("coach-{i}"),
            &format!("ivy plover again, escalate {i}"),
        ))
        .await;
    }
    for (word, control) in [("plover", "quokka"), ("marmot", "wombat")] {
        let a = event_id(
            &ivy.note(
                &conv,
                &format!("{word}-a"),
                &format!("{word} {word} {control}"),
            )
            .await,
        );
        let b = event_id(
            &ivy.note(
                &conv,
                &format!("{word}-b"),
                &format!("{word} {control} {control}"),
            )
            .await,
        );
        let hits = search(&server, &ivy_t, &format!("q={word}%20{control}")).await;
        let order: Vec<&str> = hits
            .iter()
            .map(|h| h["note_id"].as_str().expect("note_id"))
            .collect();
        assert_eq!(order, vec![b.as_str(), a.as_str()], "{word}: {hits:?}");
    }
}
