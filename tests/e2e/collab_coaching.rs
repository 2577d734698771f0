//! Coaching notes (`audience: supervisors`): only supervisors and admins write and read
//! them, on every path: the live socket, replay, history, note search, pins (the
//! conversation view and the contact), edits, and notifications (a mention of an agent in
//! one notifies nobody; supervisors and admins are notified). Agents see none of it, not
//! even through `pin_note` or `edit_note` on the note's id.

use serde_json::json;

use crate::collab_support::*;
use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn coaching_notes_reach_supervisors_and_admins_only_on_every_path() {
    let server = TestServer::start().await;
    let cust_t = customer("carol");
    let conv = server.open_as_customer(&cust_t).await;
    let alice_t = agent("alice");
    let sam_t = supervisor("sam");
    let sue_t = supervisor("sue");
    let root_t = admin("boss");
    let marker = unique("COACH");
    let word = "pineapplecoaching";

    let mut alice = online(&server, &alice_t).await;
    alice.subscribe(&conv, None).await;
    let mut sue = online(&server, &sue_t).await;
    sue.subscribe(&conv, None).await;
    make_known(&server, &root_t).await;
    let mut sam = online(&server, &sam_t).await;

    // An agent may not write one, however it is asked.
    alice
        .error_code(coaching(&conv, "a-1", "I coach myself"), "forbidden")
        .await;
    let reply = server
        .http
        .post(
            &format!("/v1/conversations/{conv}/notes"),
            Some(&alice_t),
            &json!({"client_id": "a-2", "body": "x", "audience": "supervisors"}),
        )
        .await;
    reply.assert_error(403, "forbidden");

    let body = format!("{marker} {word}: @alice should apologise first; @sue @boss FYI");
    let ok = sam.ok(coaching(&conv, "s-1", &body)).await;
    let note_id = event_id(&ok);
    let mut mentioned: Vec<String> = ok["mentioned"]
        .as_array()
        .unwrap_or_else(|| panic!("{ok}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    mentioned.sort();
    assert_eq!(
        mentioned,
        vec!["boss", "sue"],
        "the agent may not read it, so is not notified"
    );

    // Sue (supervisor) gets the event and a notification; the admin a stored one.
    let (_, frame) = wait_for(&mut sue, "coaching note event", |f| ty(f) == "event").await;
    assert_eq!(frame["event"]["id"], note_id.as_str());
    assert_eq!(frame["event"]["audience"], "supervisors");
    assert_eq!(frame["event"]["note_type"], "coaching");
    let n = next_notification(&mut sue).await;
    assert_eq!(n["event_id"], note_id.as_str());
    assert_eq!(notifications(&server, &root_t, true).await["unread"], 1);

    // Pin it and edit it: both supervisors-only too.
    sam.ok(pin_frame(&conv, &note_id, true)).await;
    let edited = format!("{marker} edited {word}");
    sam.ok(edit_frame(&conv, &note_id, &edited)).await;
    // Agents may not act on it: the note does not exist for them.
    alice
        .error_code(pin_frame(&conv, &note_id, true), "not_found")
        .await;
    let code = alice.error(edit_frame(&conv, &note_id, "mine now")).await["code"].clone();
    assert!(code == "not_found" || code == "forbidden", "{code}");

    // Nothing reached Alice: no event, no notification, on the live socket.
    assert_no_frame(&mut alice, "any frame for the agent", |_| true).await;
    assert!(items_of(&notifications(&server, &alice_t, false).await).is_empty());

    // Replay, history, view, contact, search: nothing for the agent.
    let mut alice2 = online(&server, &alice_t).await;
    let (replay, sub_ok) = alice2.subscribe(&conv, Some(0)).await;
    assert_eq!(seqs(&replay), range(1, sub_ok["head"].as_u64().unwrap()));
    let history = server.history(&alice_t, &conv).await;
    assert_eq!(history.head, 1, "agents' stream did not move");
    let agent_view = server.conversation(&alice_t, &conv).await.text;
    let contact = server.http.get("/v1/contacts/carol", Some(&alice_t)).await;
    assert_eq!(contact.status, 200, "{}", contact.text);
    assert!(search(&server, &alice_t, &format!("q={word}"))
        .await
        .is_empty());
    let search_text = server
        .http
        .get(
            &format!("/v1/search/notes?q={word}&note_type=coaching"),
            Some(&alice_t),
        )
        .await
        .text;
    let needles = vec![marker.clone(), word.to_owned(), note_id.clone()];
    assert_absent("agent's live socket", alice.transcript(), &needles);
    assert_absent("agent's replay", alice2.transcript(), &needles);
    let mut agent_http = history.texts.clone();
    agent_http.extend([
        agent_view,
        contact.text,
        search_text,
        server.list(&alice_t, "").await.text,
    ]);
    assert_absent("agent's HTTP", &agent_http, &needles);

    // Supervisors and admins: everywhere, with the current text in search and pins.
    for token in [&sue_t, &root_t, &sam_t] {
        let hits = search(&server, token, &format!("q={word}")).await;
        assert_eq!(hits.len(), 1, "{hits:?}");
        assert_eq!(hits[0]["note_id"], note_id.as_str());
        assert_eq!(hits[0]["audience"], "supervisors");
        assert_eq!(hits[0]["note_type"], "coaching");
        assert_eq!(hits[0]["body"], edited.as_str());
        let v = view(&server, token, &conv).await;
        let pinned = v["pinned_notes"].as_array().cloned().unwrap_or_default();
        assert_eq!(pinned.len(), 1, "{v}");
        assert_eq!(pinned[0]["body"], edited.as_str());
        let history = server.history(token, &conv).await;
        assert_eq!(
            history.kinds(),
            vec!["conversation_opened", "note", "note_pinned", "note_edited"]
        );
        assert!(
            history.events[2..]
                .iter()
                .all(|e| e["event"]["audience"] == "supervisors"),
            "{:?}",
            history.events
        );
    }

    // And the customer: nothing at all.
    let customer_history = server.history(&cust_t, &conv).await;
    assert_eq!(customer_history.head, 1);
    assert_absent("customer history", &customer_history.texts, &needles);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_supervisor_note_for_agents_is_a_normal_note() {
    // The control: a supervisor's note with the default audience reaches agents.
    let server = TestServer::start().await;
    let conv = server.open_as_customer(&customer("carol")).await;
    let alice_t = agent("alice");
    let mut alice = online(&server, &alice_t).await;
    let mut sam = online(&server, &supervisor("sam")).await;
    let ok = sam
        .ok(note_of(
            &conv,
            "s-1",
            "@alice nice work on this one",
            Some("coaching"),
            None,
        ))
        .await;
    assert_eq!(ok["mentioned"], json!(["alice"]));
    let n = next_notification(&mut alice).await;
    assert_eq!(n["event_id"], ok["event_id"]);
    let history = server.history(&alice_t, &conv).await;
    assert_eq!(
        history.events.last().unwrap()["event"]["audience"],
        "agents"
    );
    assert_eq!(
        history.events.last().unwrap()["event"]["note_type"],
        "coaching"
    );
}
