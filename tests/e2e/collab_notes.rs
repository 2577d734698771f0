//! Notes: the five note types (`general` by default, `context`, `transfer`,
//! `resolution`, `coaching`) and refusing any other; pinning (a pinned note shows in its
//! conversation's staff view, a pinned `context` note also in every other conversation
//! of the same contact the caller may see and in `GET /v1/contacts/{id}`, never to the
//! customer); `edit_note` by the author only, the earlier text staying in the history and
//! the audit trail while search and pins show the current text, and edits not notifying.

use serde_json::{json, Value};

use crate::collab_support::*;
use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn every_note_type_is_kept_and_others_are_refused() {
    let server = TestServer::start().await;
    let cust_t = customer("carol");
    let conv = server.open_as_customer(&cust_t).await;
    let alice_t = agent("alice");
    let mut alice = online(&server, &alice_t).await;

    let mut expected = Vec::new();
    let ok = alice.note(&conv, "n-default", "no type given").await;
    expected.push((event_id(&ok), "general"));
    for t in ["general", "context", "transfer", "resolution", "coaching"] {
        let ok = alice
            .ok(note_of(
                &conv,
                &format!("n-{t}"),
                &format!("a {t} note"),
                Some(t),
                None,
            ))
            .await;
        expected.push((event_id(&ok), t));
    }
    // Over HTTP too.
    let reply = server
        .http
        .post(
            &format!("/v1/conversations/{conv}/notes"),
            Some(&alice_t),
            &json!({"client_id": "n-http", "body": "over http", "note_type": "resolution"}),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    expected.push((event_id(&reply.json()), "resolution"));
    let head = server.head(&alice_t, &conv).await;

    alice
        .error_code(
            note_of(&conv, "n-bad", "x", Some("gossip"), None),
            "bad_request",
        )
        .await;
    alice
        .error_code(
            note_of(&conv, "n-bad2", "x", None, Some("everyone")),
            "bad_request",
        )
        .await;
    let reply = server
        .http
        .post(
            &format!("/v1/conversations/{conv}/notes"),
            Some(&alice_t),
            &json!({"client_id": "n-bad3", "body": "x", "note_type": "gossip"}),
        )
        .await;
    reply.assert_error(400, "bad_request");
    // A customer writes no note of any type.
    let reply = server
        .http
        .post(
            &format!("/v1/conversations/{conv}/notes"),
            Some(&cust_t),
            &json!({"client_id": "c-n", "body": "me too", "note_type": "context"}),
        )
        .await;
    reply.assert_error(403, "forbidden");
    assert_eq!(
        server.head(&alice_t, &conv).await,
        head,
        "refused notes changed nothing"
    );

    let history = server.history(&alice_t, &conv).await;
    let notes = of_kind(&history, "note");
    assert_eq!(notes.len(), expected.len());
    for (note, (id, t)) in notes.iter().zip(expected.iter()) {
        assert_eq!(note["event"]["id"], id.as_str());
        assert_eq!(note["event"]["note_type"], *t, "{note}");
        assert_eq!(note["event"]["audience"], "agents", "{note}");
        assert_eq!(note["event"]["actor"]["id"], "alice");
    }
}

fn pinned_bodies(view: &Value) -> Vec<String> {
    view.get("pinned_notes")
        .and_then(Value::as_array)
        .map(|notes| {
            notes
                .iter()
                .map(|n| n["body"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pinned_context_note_follows_the_contact() {
    let server = TestServer::start().await;
    define_inbox(&server, "billing").await;
    let cust_t = customer("carol");
    let alice_t = agent("alice");
    let bill_t = agent_in("bill", &["billing"]);
    let sam_t = supervisor("sam");
    let conv_a = server.open_as_customer(&cust_t).await;
    let conv_b = server.open_as_customer(&cust_t).await;
    let conv_c = server.open(&bill_t, "billing", Some("carol")).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let other = server.open_as_customer(&customer("dora")).await;

    let ctx_text = unique("CTX prefers email, never call");
    let gen_text = unique("GEN waiting on the warehouse");
    let loose_text = unique("LOOSE context but not pinned");
    let mut alice = online(&server, &alice_t).await;
    let ctx = event_id(
        &alice
            .ok(note_of(&conv_a, "ctx", &ctx_text, Some("context"), None))
            .await,
    );
    let gen = event_id(&alice.note(&conv_a, "gen", &gen_text).await);
    alice
        .ok(note_of(
            &conv_a,
            "loose",
            &loose_text,
            Some("context"),
            None,
        ))
        .await;

    let ok = alice.ok(pin_frame(&conv_a, &ctx, true)).await;
    assert!(ok["seq"].is_u64(), "{ok}");
    // `pinned` defaults to true.
    alice
        .ok(json!({"type": "pin_note", "conversation_id": conv_a, "note_id": gen}))
        .await;

    // The pin is in the timeline.
    let history = server.history(&alice_t, &conv_a).await;
    let pins = of_kind(&history, "note_pinned");
    assert_eq!(pins.len(), 2);
    assert_eq!(pins[0]["event"]["note_id"], ctx.as_str());
    assert_eq!(pins[0]["event"]["pinned"], true);
    assert_eq!(pins[0]["event"]["actor"]["id"], "alice");

    // Its own conversation shows both pins, with their details.
    let a_view = view(&server, &alice_t, &conv_a).await;
    let mut bodies = pinned_bodies(&a_view);
    bodies.sort();
    let mut want = vec![ctx_text.clone(), gen_text.clone()];
    want.sort();
    assert_eq!(bodies, want, "{a_view}");
    let pinned_ctx = a_view["pinned_notes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["note_id"] == ctx.as_str())
        .cloned()
        .unwrap();
    assert_eq!(pinned_ctx["conversation_id"], conv_a.as_str());
    assert_eq!(pinned_ctx["note_type"], "context");
    assert_eq!(pinned_ctx["author"]["id"], "alice");

    // The contact's other conversation shows the context note only.
    let b_view = view(&server, &alice_t, &conv_b).await;
    assert_eq!(pinned_bodies(&b_view), vec![ctx_text.clone()], "{b_view}");
    // Another contact's conversation shows nothing.
    assert!(pinned_bodies(&view(&server, &alice_t, &other).await).is_empty());
    // So does the contact.
    let reply = server.http.get("/v1/contacts/carol", Some(&alice_t)).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let contact = reply.json();
    assert_eq!(pinned_bodies(&contact), vec![ctx_text.clone()], "{contact}");
    let convs: Vec<&str> = contact["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(
        convs.contains(&conv_a.as_str()) && convs.contains(&conv_b.as_str()),
        "{contact}"
    );
    assert!(
        !convs.contains(&conv_c.as_str()),
        "alice may not see the billing conversation: {contact}"
    );

    // A billing agent sees the contact's billing conversation, but not a note written in
    // an inbox they do not work in; a supervisor sees it there.
    let c_bill = view(&server, &bill_t, &conv_c).await;
    assert!(
        !c_bill.to_string().contains(&ctx_text),
        "a note from an inbox bill cannot see: {c_bill}"
    );
    let c_sam = view(&server, &sam_t, &conv_c).await;
    assert_eq!(pinned_bodies(&c_sam), vec![ctx_text.clone()], "{c_sam}");

    // The customer sees none of it.
    for conv in [&conv_a, &conv_b] {
        let text = server.conversation(&cust_t, conv).await.text;
        assert_absent(
            "customer view",
            &[text],
            &[ctx_text.clone(), gen_text.clone(), ctx.clone()],
        );
    }

    // Unpinned: gone from the other conversation and the contact.
    alice.ok(pin_frame(&conv_a, &ctx, false)).await;
    assert!(pinned_bodies(&view(&server, &alice_t, &conv_b).await).is_empty());
    assert_eq!(
        pinned_bodies(&view(&server, &alice_t, &conv_a).await),
        vec![gen_text]
    );
    let reply = server.http.get("/v1/contacts/carol", Some(&alice_t)).await;
    assert!(pinned_bodies(&reply.json()).is_empty(), "{}", reply.text);

    // Pinning: staff only, notes of that conversation only.
    let mut carol = online(&server, &cust_t).await;
    carol
        .error_code(pin_frame(&conv_a, &ctx, true), "forbidden")
        .await;
    alice
        .error_code(pin_frame(&conv_b, &ctx, true), "not_found")
        .await;
    alice
        .error_code(
            pin_frame(&conv_a, &uuid::Uuid::new_v4().to_string(), true),
            "not_found",
        )
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_author_edits_a_note_and_the_old_text_stays() {
    let server = TestServer::start().await;
    let cust_t = customer("carol");
    let conv = server.open_as_customer(&cust_t).await;
    let alice_t = agent("alice");
    let bob_t = agent("bob");
    let sam_t = supervisor("sam");
    let mut alice = online(&server, &alice_t).await;
    let mut bob = online(&server, &bob_t).await;
    bob.subscribe(&conv, None).await;
    let mut sam = online(&server, &sam_t).await;
    let mut carol = online(&server, &cust_t).await;

    let original = format!("{} zebracrossing", unique("ORIGINAL"));
    let edited = format!("{} @bob giraffeneck", unique("EDITED"));
    let ok = alice.note(&conv, "n-1", &original).await;
    let note_id = event_id(&ok);
    alice.ok(pin_frame(&conv, &note_id, true)).await;
    let head = server.head(&alice_t, &conv).await;

    // Not the author: refused, whatever the role.
    bob.error_code(edit_frame(&conv, &note_id, "bob's version"), "forbidden")
        .await;
    sam.error_code(edit_frame(&conv, &note_id, "sam's version"), "forbidden")
        .await;
    let code = carol
        .error(edit_frame(&conv, &note_id, "carol's version"))
        .await["code"]
        .clone();
    assert!(
        code == "forbidden" || code == "not_found",
        "customer edit: {code}"
    );
    alice
        .error_code(
            edit_frame(&conv, &uuid::Uuid::new_v4().to_string(), "x"),
            "not_found",
        )
        .await;
    alice
        .error_code(edit_frame(&conv, &note_id, "  "), "bad_request")
        .await;
    assert_eq!(
        server.head(&alice_t, &conv).await,
        head,
        "refused edits changed nothing"
    );

    // The author edits.
    let ok = alice.ok(edit_frame(&conv, &note_id, &edited)).await;
    assert_eq!(ok["seq"], head + 1, "{ok}");
    let edit_id = event_id(&ok);
    let (_, live) = wait_for(&mut bob, "note_edited event", |f| {
        ty(f) == "event" && f["event"]["kind"] == "note_edited"
    })
    .await;
    assert_eq!(live["event"]["id"], edit_id.as_str());
    assert_eq!(live["event"]["note_id"], note_id.as_str());
    assert_eq!(live["event"]["body"], edited.as_str());
    assert_eq!(live["event"]["actor"]["id"], "alice");
    // Edits do not notify, even when they add a mention.
    assert_no_frame(&mut bob, "notification for an edit", is_notification).await;
    assert_eq!(notifications(&server, &bob_t, false).await["unread"], 0);

    // History: the note with its first text, then the edit.
    let history = server.history(&alice_t, &conv).await;
    let note = history
        .events
        .iter()
        .find(|e| e["event"]["id"] == note_id.as_str())
        .unwrap();
    assert_eq!(
        note["event"]["body"],
        original.as_str(),
        "the note event never changes"
    );
    let edits = of_kind(&history, "note_edited");
    assert_eq!(edits.len(), 1);
    assert_eq!(edits[0]["event"]["body"], edited.as_str());

    // The audit trail keeps both texts.
    let reply = server
        .http
        .get(&format!("/v1/conversations/{conv}/audit"), Some(&sam_t))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert!(
        reply.text.contains(&original) && reply.text.contains(&edited),
        "{}",
        reply.text
    );
    assert_eq!(reply.json()["verified"], true);

    // Search and pins show the current text.
    let hits = search(&server, &alice_t, "q=giraffeneck").await;
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0]["note_id"], note_id.as_str());
    assert_eq!(hits[0]["body"], edited.as_str());
    assert!(search(&server, &alice_t, "q=zebracrossing")
        .await
        .is_empty());
    assert_eq!(
        pinned_bodies(&view(&server, &alice_t, &conv).await),
        vec![edited.clone()]
    );

    // A second edit: both earlier texts remain.
    let third = unique("THIRD");
    alice.ok(edit_frame(&conv, &note_id, &third)).await;
    let bodies = server.history(&alice_t, &conv).await.bodies();
    for text in [&original, &edited, &third] {
        assert!(bodies.contains(text), "{text} missing from {bodies:?}");
    }

    // None of it reached the customer.
    let customer_history = server.history(&cust_t, &conv).await;
    assert_absent(
        "customer history",
        &customer_history.texts,
        &[original, edited, third, note_id],
    );
}
