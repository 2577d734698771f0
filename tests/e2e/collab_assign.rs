//! Assignment and transfer: `assign` sets assignee and team (absent: none), appends
//! `assigned` and, with `note`, a `transfer` note with its mentions, in one atomic step,
//! and notifies the new assignee (not someone assigning themself). A refused assignment
//! (unknown assignee, assignee outside the inbox, undefined team, blank handoff note)
//! changes nothing. Agents assigning at the same moment, many times over, always leave
//! the conversation with the assignee of the last `assigned` event in its log.

use std::collections::BTreeMap;

use futures::future::join_all;
use serde_json::{json, Value};

use crate::collab_support::*;
use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn assign_with_a_handoff_note_is_one_step_and_notifies_the_new_assignee() {
    let server = TestServer::start().await;
    define_team(&server, "tier2").await;
    let cust_t = customer("carol");
    let conv = server.open_as_customer(&cust_t).await;
    let alice_t = agent("alice");
    let bob_t = agent("bob");
    let carl_t = agent("carl");
    let mut bob = online(&server, &bob_t).await;
    let mut carl = online(&server, &carl_t).await;
    let mut watcher = online(&server, &agent("wendy")).await;
    watcher.subscribe(&conv, None).await;
    let mut carol = online(&server, &cust_t).await;
    carol.subscribe(&conv, None).await;
    let mut alice = online(&server, &alice_t).await;
    let head = server.head(&alice_t, &conv).await;

    let handoff = unique("HANDOFF refund approved, @carl knows the courier");
    let ok = alice
        .ok(assign_frame(
            &conv,
            Some("bob"),
            Some("tier2"),
            Some(&handoff),
        ))
        .await;
    assert_eq!(ok["seq"], head + 1, "the ok is the `assigned` event: {ok}");
    assert_eq!(ok["mentioned"], json!(["carl"]), "{ok}");
    let assigned_id = event_id(&ok);

    // Subscribers see `assigned` then the transfer note, back to back.
    let frames = watcher.frames_until_seq(head + 2).await;
    let events: Vec<Value> = frames.into_iter().filter(|f| ty(f) == "event").collect();
    assert_eq!(seqs(&events), vec![head + 1, head + 2]);
    let assigned = &events[0]["event"];
    assert_eq!(assigned["kind"], "assigned");
    assert_eq!(assigned["id"], assigned_id.as_str());
    assert_eq!(assigned["assignee_id"], "bob");
    assert_eq!(assigned["team_id"], "tier2");
    assert_eq!(assigned["actor"]["id"], "alice");
    let note = &events[1]["event"];
    assert_eq!(note["kind"], "note");
    assert_eq!(note["note_type"], "transfer");
    assert_eq!(note["audience"], "agents");
    assert_eq!(note["body"], handoff.as_str());
    assert_eq!(note["mentions"], json!(["carl"]));
    assert_eq!(note["actor"]["id"], "alice");

    // The new assignee is notified of the assignment, the mentioned agent of the note.
    let n = next_notification(&mut bob).await;
    assert_eq!(n["kind"], "assigned", "{n}");
    assert_eq!(n["event_id"], assigned_id.as_str());
    assert_eq!(n["conversation_id"], conv.as_str());
    assert_eq!(n["from"]["id"], "alice");
    let n = next_notification(&mut carl).await;
    assert_eq!(n["kind"], "mention", "{n}");
    assert_eq!(n["event_id"], note["id"]);
    assert_no_frame(
        &mut alice,
        "notification for the one who assigned",
        is_notification,
    )
    .await;

    // The views agree.
    let v = view(&server, &alice_t, &conv).await;
    assert_eq!(v["assignee_id"], "bob", "{v}");
    assert_eq!(v["team_id"], "tier2", "{v}");
    assert_eq!(v["head"], head + 2);
    assert!(list_ids(&server, &alice_t, "assignee=bob")
        .await
        .contains(&conv));
    assert!(!list_ids(&server, &alice_t, "assignee=carl")
        .await
        .contains(&conv));

    // The customer saw nothing of it.
    assert_no_frame(&mut carol, "any frame for the customer", |_| true).await;
    assert_absent(
        "customer's socket",
        carol.transcript(),
        &[handoff.clone(), "tier2".into(), "\"bob\"".into()],
    );

    // Over HTTP, and assigning oneself notifies nobody.
    let reply = server
        .http
        .post(
            &format!("/v1/conversations/{conv}/assign"),
            Some(&bob_t),
            &json!({"assignee_id": "bob"}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json()["seq"], head + 3, "{}", reply.text);
    assert_no_frame(
        &mut bob,
        "notification for assigning oneself",
        is_notification,
    )
    .await;
    let v = view(&server, &alice_t, &conv).await;
    assert_eq!(v["assignee_id"], "bob");
    assert!(v["team_id"].is_null(), "team absent means none: {v}");

    // Neither: unassigned.
    alice.ok(assign_frame(&conv, None, None, None)).await;
    let v = view(&server, &alice_t, &conv).await;
    assert!(v["assignee_id"].is_null() && v["team_id"].is_null(), "{v}");
    assert!(!list_ids(&server, &alice_t, "assignee=bob")
        .await
        .contains(&conv));
    // Only a team.
    alice
        .ok(assign_frame(&conv, None, Some("tier2"), None))
        .await;
    let v = view(&server, &alice_t, &conv).await;
    assert!(v["assignee_id"].is_null(), "{v}");
    assert_eq!(v["team_id"], "tier2");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_assignment_changes_nothing() {
    let server = TestServer::start().await;
    define_team(&server, "tier2").await;
    let cust_t = customer("carol");
    let conv = server.open_as_customer(&cust_t).await;
    let alice_t = agent("alice");
    make_known(&server, &agent("bob")).await;
    let dave_t = agent_in("dave", &["billing"]);
    make_known(&server, &dave_t).await;
    let mut alice = online(&server, &alice_t).await;
    alice
        .ok(assign_frame(&conv, Some("bob"), Some("tier2"), None))
        .await;
    let before = view(&server, &alice_t, &conv).await;
    let head = before["head"].as_u64().unwrap();

    let refused = [
        assign_frame(&conv, Some("nobody-ever-connected"), None, None),
        assign_frame(&conv, Some("dave"), None, None),
        assign_frame(&conv, Some("carol"), None, None),
        assign_frame(&conv, Some("alice"), Some("no-such-team"), None),
        assign_frame(&conv, Some("alice"), None, Some("   ")),
    ];
    for frame in refused {
        alice.error_code(frame, "bad_request").await;
    }
    let mut carol = online(&server, &cust_t).await;
    carol
        .error_code(assign_frame(&conv, Some("alice"), None, None), "forbidden")
        .await;
    let reply = server
        .http
        .post(
            &format!("/v1/conversations/{conv}/assign"),
            Some(&alice_t),
            &json!({"assignee_id": "dave", "note": "handing to dave"}),
        )
        .await;
    reply.assert_error(400, "bad_request");

    let after = view(&server, &alice_t, &conv).await;
    assert_eq!(after["head"], head, "nothing was appended");
    assert_eq!(after["assignee_id"], "bob");
    assert_eq!(after["team_id"], "tier2");
    let history = server.history(&alice_t, &conv).await;
    assert!(!history
        .bodies()
        .iter()
        .any(|b| b.contains("handing to dave")));
    assert!(items_of(&notifications(&server, &dave_t, false).await).is_empty());
}

/// The assignee of the last `assigned` event in `history`.
fn last_assigned(history: &History) -> Value {
    of_kind(history, "assigned")
        .last()
        .map(|e| e["event"]["assignee_id"].clone())
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_assignments_end_in_the_state_of_the_last_one_logged() {
    let server = TestServer::start().await;
    define_team(&server, "red").await;
    define_team(&server, "blue").await;
    let conv = server.open_as_customer(&customer("carol")).await;
    let names = ["ann", "ben", "cat", "dan"];
    let tokens: Vec<String> = names.iter().map(|n| agent(n)).collect();
    let mut sockets = Vec::new();
    for t in &tokens {
        sockets.push(online(&server, t).await);
    }
    let rounds = 15;
    for round in 0..rounds {
        // Every agent assigns to the next one at the same moment; one more assignment
        // comes over HTTP.
        let http = server.http.clone();
        let http_assignee = names[(round + 2) % names.len()];
        let path = format!("/v1/conversations/{conv}/assign");
        let body = json!({"assignee_id": http_assignee, "team_id": "blue"});
        let http_call = http.post(&path, Some(&tokens[round % tokens.len()]), &body);
        let socket_calls = sockets.iter_mut().enumerate().map(|(i, ws)| {
            let to = names[(i + 1) % names.len()];
            let team = if i % 2 == 0 { "red" } else { "blue" };
            ws.ok(assign_frame(&conv, Some(to), Some(team), None))
        });
        let (oks, reply) = tokio::join!(join_all(socket_calls), http_call);
        assert_eq!(reply.status, 200, "{}", reply.text);
        let mut seqs: Vec<u64> = oks.iter().map(|ok| ok["seq"].as_u64().unwrap()).collect();
        seqs.push(reply.json()["seq"].as_u64().unwrap());
        seqs.sort();
        seqs.dedup();
        assert_eq!(
            seqs.len(),
            names.len() + 1,
            "each assignment has its own seq"
        );

        let history = server.history(&tokens[0], &conv).await;
        let last = of_kind(&history, "assigned")
            .last()
            .cloned()
            .cloned()
            .unwrap();
        let v = view(&server, &tokens[0], &conv).await;
        assert_eq!(
            v["assignee_id"], last["event"]["assignee_id"],
            "round {round}: the view disagrees with the last assigned event {last}"
        );
        assert_eq!(
            v["team_id"], last["event"]["team_id"],
            "round {round}: {last}"
        );
        assert_eq!(
            *seqs.last().unwrap(),
            history.head,
            "the last assignment is the head"
        );
        assert_eq!(history.seqs(), range(1, history.head), "gap-free");
    }

    let history = server.history(&tokens[0], &conv).await;
    assert_eq!(
        of_kind(&history, "assigned").len(),
        rounds * (names.len() + 1)
    );
    let assignee = last_assigned(&history);
    for (name, token) in names.iter().zip(&tokens) {
        let listed = list_ids(&server, token, &format!("assignee={name}")).await;
        assert_eq!(
            listed.contains(&conv),
            assignee == *name,
            "the list filter for {name} disagrees with the log (last: {assignee})"
        );
    }

    // Every assignment to someone else left exactly one `assigned` notification.
    let mut expected: BTreeMap<String, usize> = BTreeMap::new();
    for e in of_kind(&history, "assigned") {
        let to = e["event"]["assignee_id"].as_str().unwrap().to_owned();
        if e["event"]["actor"]["id"] != to.as_str() {
            *expected.entry(to).or_default() += 1;
        }
    }
    for (name, token) in names.iter().zip(&tokens) {
        let got = items_of(&notifications(&server, token, false).await)
            .iter()
            .filter(|n| n["kind"] == "assigned")
            .count();
        assert_eq!(
            got,
            expected.get(*name).copied().unwrap_or(0),
            "assigned notifications of {name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn admins_define_teams_and_staff_read_them() {
    let server = TestServer::start().await;
    let alice_t = agent("alice");
    let reply = server
        .http
        .put(
            "/v1/teams/tier2",
            Some(&root()),
            &json!({"name": "Second line"}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json(), json!({"id": "tier2", "name": "Second line"}));
    for token in [&alice_t, &supervisor("sam"), &customer("carol")] {
        server
            .http
            .put("/v1/teams/sneaky", Some(token), &json!({}))
            .await
            .assert_error(403, "forbidden");
    }
    server
        .http
        .put("/v1/teams/Bad%20Team", Some(&root()), &json!({}))
        .await
        .assert_error(400, "bad_request");
    let reply = server.http.get("/v1/teams", Some(&alice_t)).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(
        reply.json()["teams"],
        json!([{"id": "tier2", "name": "Second line"}])
    );
    server
        .http
        .get("/v1/teams", Some(&customer("carol")))
        .await
        .assert_error(403, "forbidden");
}
