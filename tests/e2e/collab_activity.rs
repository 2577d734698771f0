//! The activity timeline: assignment, status, tags, fields (conversation and contact),
//! note edits and pins are each an event in the conversation's timeline, with their
//! author and time, delivered live and in the history to agents, in order and without a
//! gap; the customer's socket, history, view and `head` never show any of it.
//! `set_status` takes the four documented statuses only.

use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::collab_support::*;
use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn every_change_is_a_timeline_event_for_agents_and_never_for_the_customer() {
    let server = TestServer::start().await;
    define_tag(&server, "vip").await;
    define_team(&server, "tier2").await;
    define_field(
        &server,
        "order",
        json!({"type": "text", "applies_to": "conversation"}),
    )
    .await;
    define_field(
        &server,
        "plan",
        json!({"type": "list", "applies_to": "contact", "options": ["free", "pro"]}),
    )
    .await;
    let started = OffsetDateTime::now_utc() - time::Duration::seconds(5);
    let cust_t = customer("carol");
    let conv = server.open_as_customer(&cust_t).await;
    let alice_t = agent("alice");
    let bob_t = agent("bob");
    make_known(&server, &bob_t).await;

    let mut carol = online(&server, &cust_t).await;
    carol.subscribe(&conv, None).await;
    let mut watcher = online(&server, &agent("wendy")).await;
    watcher.subscribe(&conv, None).await;
    let customer_before = server.conversation(&cust_t, &conv).await.json();

    let mut alice = online(&server, &alice_t).await;
    let mut bob = online(&server, &bob_t).await;
    let note_id = event_id(&alice.note(&conv, "n-1", "first draft").await);
    // (actor, expected kind, ok)
    let mut done: Vec<(&str, &str, Value)> = Vec::new();
    done.push((
        "alice",
        "assigned",
        alice
            .ok(assign_frame(&conv, Some("bob"), Some("tier2"), None))
            .await,
    ));
    done.push((
        "bob",
        "status_changed",
        bob.ok(status_frame(&conv, "pending")).await,
    ));
    done.push((
        "bob",
        "tags_changed",
        bob.ok(tag_frame(&conv, &["vip"], &[])).await,
    ));
    done.push((
        "alice",
        "fields_changed",
        alice
            .ok(fields_frame(
                "conversation",
                &conv,
                json!({"order": "A-1001"}),
            ))
            .await,
    ));
    done.push((
        "bob",
        "fields_changed",
        bob.ok(fields_frame("contact", "carol", json!({"plan": "pro"})))
            .await,
    ));
    done.push((
        "alice",
        "note_edited",
        alice.ok(edit_frame(&conv, &note_id, "final text")).await,
    ));
    done.push((
        "bob",
        "note_pinned",
        bob.ok(pin_frame(&conv, &note_id, true)).await,
    ));
    done.push((
        "alice",
        "tags_changed",
        alice.ok(tag_frame(&conv, &[], &["vip"])).await,
    ));
    done.push((
        "bob",
        "status_changed",
        bob.ok(status_frame(&conv, "resolved")).await,
    ));

    let history = server.history(&alice_t, &conv).await;
    assert_eq!(history.seqs(), range(1, history.head), "gap-free");
    let activity = &history.events[2..]; // after `conversation_opened` and the note
    assert_eq!(history.events[1]["event"]["kind"], "note");
    assert_eq!(activity.len(), done.len(), "{:?}", history.kinds());
    let now = OffsetDateTime::now_utc() + time::Duration::seconds(5);
    for (entry, (actor, kind, ok)) in activity.iter().zip(done.iter()) {
        let event = &entry["event"];
        assert_eq!(event["kind"], *kind, "{entry}");
        assert_eq!(event["id"], ok["event_id"], "{entry}");
        assert_eq!(entry["seq"], ok["seq"], "{entry}");
        assert_eq!(event["actor"]["id"], *actor, "{entry}");
        assert_eq!(event["actor"]["role"], "agent", "{entry}");
        let at = timestamp(&event["at"]);
        assert!(at >= started && at <= now, "{entry}: time {at}");
    }
    // The details of each kind.
    let e = |i: usize| &activity[i]["event"];
    assert_eq!(
        (e(0)["assignee_id"].clone(), e(0)["team_id"].clone()),
        (json!("bob"), json!("tier2"))
    );
    assert_eq!(e(1)["status"], "pending");
    assert_eq!(
        (e(2)["added"].clone(), e(2)["removed"].clone()),
        (json!(["vip"]), json!([]))
    );
    assert_eq!(e(3)["target"], "conversation");
    assert_eq!(e(3)["target_id"], conv.as_str());
    assert_eq!(e(3)["changes"], json!({"order": "A-1001"}));
    assert_eq!(e(4)["target"], "contact");
    assert_eq!(e(4)["target_id"], "carol");
    assert_eq!(e(4)["changes"], json!({"plan": "pro"}));
    assert_eq!(
        (e(5)["note_id"].clone(), e(5)["body"].clone()),
        (json!(note_id), json!("final text"))
    );
    assert_eq!(
        (e(6)["note_id"].clone(), e(6)["pinned"].clone()),
        (json!(note_id), json!(true))
    );
    assert_eq!(e(7)["removed"], json!(["vip"]));
    assert_eq!(e(8)["status"], "resolved");

    // A subscribed agent got the same events live, in order.
    let live: Vec<Value> = watcher
        .frames_until_seq(history.head)
        .await
        .into_iter()
        .filter(|f| ty(f) == "event")
        .collect();
    assert_eq!(seqs(&live), range(2, history.head));
    for (frame, entry) in live.iter().zip(history.events[1..].iter()) {
        assert_eq!(frame["event"], entry["event"], "live and history agree");
    }

    // The customer: not one event, the same head, and only public kinds in the history.
    let frames = assert_no_frame(&mut carol, "event for the customer", |f| ty(f) == "event").await;
    assert!(frames.is_empty(), "{frames:?}");
    let customer_history = server.history(&cust_t, &conv).await;
    assert_eq!(customer_history.head, 1);
    assert_eq!(customer_history.kinds(), vec!["conversation_opened"]);
    let customer_after = server.conversation(&cust_t, &conv).await.json();
    assert_eq!(customer_after["head"], 1);
    assert_eq!(customer_after["updated_at"], customer_before["updated_at"]);
    let needles: Vec<String> = [
        "tier2",
        "vip",
        "A-1001",
        "\"pro\"",
        "final text",
        "bob",
        "fields_changed",
        "assigned",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(done.iter().map(|(_, _, ok)| event_id(ok)))
    .collect();
    let mut customer_http = customer_history.texts.clone();
    customer_http.push(customer_after.to_string());
    customer_http.push(server.list(&cust_t, "").await.text);
    assert_absent("customer's socket", carol.transcript(), &needles);
    assert_absent("customer's HTTP", &customer_http, &needles);
}

#[tokio::test(flavor = "multi_thread")]
async fn status_takes_the_documented_values_only() {
    let server = TestServer::start().await;
    let cust_t = customer("carol");
    let conv = server.open_as_customer(&cust_t).await;
    let alice_t = agent("alice");
    let mut alice = online(&server, &alice_t).await;
    for status in ["pending", "snoozed", "open", "resolved"] {
        let ok = alice.ok(status_frame(&conv, status)).await;
        assert!(ok["seq"].is_u64(), "{ok}");
        assert_eq!(view(&server, &alice_t, &conv).await["status"], status);
        assert!(list_ids(&server, &alice_t, &format!("status={status}"))
            .await
            .contains(&conv));
    }
    let head = server.head(&alice_t, &conv).await;
    alice
        .error_code(status_frame(&conv, "closed"), "bad_request")
        .await;
    let reply = server
        .http
        .post(
            &format!("/v1/conversations/{conv}/status"),
            Some(&alice_t),
            &json!({"status": "deleted"}),
        )
        .await;
    reply.assert_error(400, "bad_request");
    let mut carol = online(&server, &cust_t).await;
    carol
        .error_code(status_frame(&conv, "open"), "forbidden")
        .await;
    assert_eq!(server.head(&alice_t, &conv).await, head);
    assert_eq!(view(&server, &alice_t, &conv).await["status"], "resolved");
    // Over HTTP.
    let reply = server
        .http
        .post(
            &format!("/v1/conversations/{conv}/status"),
            Some(&alice_t),
            &json!({"status": "open"}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json()["seq"], head + 1);
    assert_eq!(view(&server, &alice_t, &conv).await["status"], "open");
}
