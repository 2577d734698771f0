//! The marker test for team collaboration: a unique marker written in mentions, a
//! transfer (handoff) note, a coaching note, a pinned context note, a note edit, a custom
//! field value, plus staff names, team and tag names and every internal event id, must
//! never appear in any byte the customer receives: the live socket for the whole session,
//! a replay on a fresh socket, HTTP history, the conversation view and list, the reply
//! guard's `missed`, and the answers to everything the customer may not do (notes, edits,
//! pins, assignment, status, tags, fields, notifications, search, contacts, audit,
//! definitions, staff-only list filters), which are refused. The customer never receives
//! a `notification` frame, even when "@" their name. Positive controls show the marker
//! did reach staff, so the search could have found it.

use serde_json::{json, Value};

use crate::collab_support::*;
use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn collaboration_never_reaches_the_customer() {
    let server = TestServer::start().await;
    let marker = unique("COLLAB-SECRET");
    let team = "tier-leak-team";
    let tag = "leak-tag-vip";
    define_team(&server, team).await;
    define_tag(&server, tag).await;
    define_field(
        &server,
        "leak-order",
        json!({"type": "text", "applies_to": "conversation"}),
    )
    .await;
    define_field(
        &server,
        "leak-plan",
        json!({"type": "text", "applies_to": "contact"}),
    )
    .await;

    let cust_t = customer("carol");
    let alice_t = agent_in_teams("alice", &[team]);
    let bob_t = agent_in_teams("bob-leak", &[team]);
    let sam_t = token_with("supervisor", "sam-leak", json!({"teams": [team]}));
    let root_t = admin("root-leak");

    let mut customer_http: Vec<String> = Vec::new();
    let reply = server
        .http
        .post(
            "/v1/conversations",
            Some(&cust_t),
            &json!({"inbox_id": "support"}),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    customer_http.push(reply.text.clone());
    let conv = reply.json()["id"].as_str().unwrap().to_owned();

    let mut carol = online(&server, &cust_t).await;
    carol.subscribe(&conv, None).await;
    let mut alice = online(&server, &alice_t).await;
    let mut bob = online(&server, &bob_t).await;
    let mut sam = online(&server, &sam_t).await;
    make_known(&server, &root_t).await;
    let mut internal_ids: Vec<String> = Vec::new();

    carol.message(&conv, "c-1", "My parcel never arrived").await;

    // A note with mentions of a person, a team, a supervisor and the customer herself.
    let ok = alice
        .note(
            &conv,
            "n-1",
            &format!("{marker}-mention @bob-leak @{team} @sam-leak @carol"),
        )
        .await;
    let mut mentioned: Vec<String> = ok["mentioned"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    mentioned.sort();
    assert_eq!(
        mentioned,
        vec!["bob-leak", "sam-leak"],
        "never the customer: {ok}"
    );
    let mention_note = event_id(&ok);
    internal_ids.push(mention_note.clone());

    // A transfer with a handoff note.
    let ok = alice
        .ok(assign_frame(
            &conv,
            Some("bob-leak"),
            Some(team),
            Some(&format!("{marker}-transfer @sam-leak")),
        ))
        .await;
    internal_ids.push(event_id(&ok));
    // A coaching note mentioning an admin.
    let ok = sam
        .ok(coaching(
            &conv,
            "s-1",
            &format!("{marker}-coaching @root-leak @alice"),
        ))
        .await;
    assert_eq!(ok["mentioned"], json!(["root-leak"]));
    internal_ids.push(event_id(&ok));
    // A pinned context note, an edit, fields, a tag, a status.
    let ctx = event_id(
        &alice
            .ok(note_of(
                &conv,
                "n-2",
                &format!("{marker}-context"),
                Some("context"),
                None,
            ))
            .await,
    );
    internal_ids.push(ctx.clone());
    internal_ids.push(event_id(&alice.ok(pin_frame(&conv, &ctx, true)).await));
    internal_ids.push(event_id(
        &alice
            .ok(edit_frame(
                &conv,
                &mention_note,
                &format!("{marker}-edited @bob-leak"),
            ))
            .await,
    ));
    internal_ids.push(event_id(
        &bob.ok(fields_frame(
            "conversation",
            &conv,
            json!({"leak-order": format!("{marker}-field")}),
        ))
        .await,
    ));
    internal_ids.push(event_id(
        &bob.ok(fields_frame(
            "contact",
            "carol",
            json!({"leak-plan": format!("{marker}-contact")}),
        ))
        .await,
    ));
    internal_ids.push(event_id(&bob.ok(tag_frame(&conv, &[tag], &[])).await));
    internal_ids.push(event_id(&bob.ok(status_frame(&conv, "pending")).await));
    // Internal typing.
    bob.subscribe(&conv, None).await;
    bob.send_json(&json!({"type": "typing", "conversation_id": conv, "audience": "internal"}))
        .await;
    bob.sync().await;
    // A public reply, so the customer does receive something.
    let reply_ok = alice.message(&conv, "a-1", "We found your parcel").await;

    // The customer's reply guard: missed holds public events only.
    let error = carol
        .error_code(
            {
                let mut f = send_frame(&conv, "c-2", "hello?");
                f["based_on_seq"] = json!(2);
                f
            },
            "conflict",
        )
        .await;
    let missed = error["missed"].as_array().unwrap();
    assert_eq!(missed.len(), 1, "{error}");
    assert_eq!(missed[0]["event"]["id"], reply_ok["event_id"]);

    // Everything the customer may not do, over the socket and HTTP.
    let mut error_texts: Vec<String> = Vec::new();
    let refused_frames = [
        note_frame(&conv, "c-n", "a note"),
        edit_frame(&conv, &mention_note, "mine"),
        pin_frame(&conv, &ctx, true),
        assign_frame(&conv, Some("bob-leak"), None, None),
        status_frame(&conv, "resolved"),
        tag_frame(&conv, &[tag], &[]),
        fields_frame("conversation", &conv, json!({"leak-order": "x"})),
        fields_frame("contact", "carol", json!({"leak-plan": "x"})),
        json!({"type": "read_notifications"}),
        json!({"type": "typing", "conversation_id": conv, "audience": "internal"}),
    ];
    for frame in refused_frames {
        let error = carol.error(frame.clone()).await;
        assert!(
            error["code"] == "forbidden" || error["code"] == "not_found",
            "{frame} should be refused: {error}"
        );
        error_texts.push(error.to_string());
    }
    let gets = [
        format!("/v1/search/notes?q={}", enc(&marker)),
        "/v1/notifications".to_owned(),
        "/v1/notifications?unread=true".to_owned(),
        "/v1/contacts/carol".to_owned(),
        format!("/v1/conversations/{conv}/audit"),
        "/v1/tags".to_owned(),
        "/v1/fields".to_owned(),
        "/v1/teams".to_owned(),
    ];
    for path in &gets {
        let reply = server.http.get(path, Some(&cust_t)).await;
        reply.assert_error(403, "forbidden");
        error_texts.push(reply.text);
    }
    for query in [
        format!("tag={tag}"),
        "assignee=bob-leak".to_owned(),
        format!("field={}", enc(&format!("leak-order:{marker}-field"))),
    ] {
        let reply = server
            .http
            .get(&format!("/v1/conversations?{query}"), Some(&cust_t))
            .await;
        assert!(
            reply.status == 403 || reply.status == 400,
            "{query}: {}",
            reply.text
        );
        error_texts.push(reply.text);
    }
    let posts: [(String, Value); 6] = [
        (
            format!("/v1/conversations/{conv}/notes"),
            json!({"client_id": "c-n2", "body": "x"}),
        ),
        (
            format!("/v1/conversations/{conv}/assign"),
            json!({"assignee_id": "bob-leak"}),
        ),
        (
            format!("/v1/conversations/{conv}/status"),
            json!({"status": "open"}),
        ),
        (
            format!("/v1/conversations/{conv}/tags"),
            json!({"add": [tag]}),
        ),
        (
            "/v1/fields/values".to_owned(),
            json!({"target": "contact", "id": "carol", "fields": {"leak-plan": "x"}}),
        ),
        ("/v1/notifications/read".to_owned(), json!({})),
    ];
    for (path, body) in &posts {
        let reply = server.http.post(path, Some(&cust_t), body).await;
        reply.assert_error(403, "forbidden");
        error_texts.push(reply.text);
    }

    // Wait for the customer's socket to have everything, then look for anything more.
    let public_head = server.head(&cust_t, &conv).await;
    assert_eq!(public_head, 3, "opened, carol's message, alice's reply");
    let live: Vec<Value> = carol.frames_until_seq(public_head).await;
    let late = assert_no_frame(&mut carol, "frame beyond the public events", |f| {
        ty(f) == "event" || ty(f) == "notification"
    })
    .await;
    for frame in live.iter().chain(late.iter()) {
        assert!(
            matches!(ty(frame), "event" | "typing"),
            "unexpected frame for the customer: {frame}"
        );
        if ty(frame) == "typing" {
            assert_eq!(frame["audience"], "public", "{frame}");
        }
    }

    // Replay, history, view, list.
    let mut carol2 = online(&server, &cust_t).await;
    let (replay, ok) = carol2.subscribe(&conv, Some(0)).await;
    assert_eq!(seqs(&replay), range(1, public_head));
    assert_eq!(ok["head"], public_head);
    let history = server.history(&cust_t, &conv).await;
    assert_eq!(
        history.kinds(),
        vec!["conversation_opened", "message", "message"]
    );
    customer_http.extend(history.texts.iter().cloned());
    customer_http.push(server.conversation(&cust_t, &conv).await.text);
    customer_http.push(server.list(&cust_t, "").await.text);
    customer_http.push(server.list(&cust_t, "status=pending").await.text);

    let needles = vec![
        marker.clone(),
        "bob-leak".to_owned(),
        "sam-leak".to_owned(),
        "root-leak".to_owned(),
        team.to_owned(),
        tag.to_owned(),
        "leak-order".to_owned(),
        "leak-plan".to_owned(),
        "\"notification\"".to_owned(),
        "mention".to_owned(),
    ];
    let mut with_ids = needles.clone();
    with_ids.extend(internal_ids.iter().cloned());
    assert_absent("customer's live socket", carol.transcript(), &with_ids);
    assert_absent("customer's replay", carol2.transcript(), &with_ids);
    assert_absent("customer's HTTP", &customer_http, &with_ids);
    // The refusals answer requests that named some of these themselves (a note id, a
    // tag); they must not add anything the request did not carry.
    assert_absent(
        "customer's refusals",
        &error_texts,
        &[
            marker.clone(),
            "sam-leak".into(),
            "root-leak".into(),
            team.to_owned(),
        ],
    );

    // Positive controls: the marker reached staff on each path.
    let n = next_notification(&mut bob).await;
    assert_eq!(n["event_id"], mention_note.as_str());
    assert!(!search(&server, &alice_t, &format!("q={}", enc(&marker)))
        .await
        .is_empty());
    assert_eq!(
        search(
            &server,
            &root_t,
            &format!("q={}&note_type=coaching", enc(&marker))
        )
        .await
        .len(),
        1
    );
    assert!(items_of(&notifications(&server, &root_t, true).await).len() == 1);
    let staff_history = server.history(&alice_t, &conv).await;
    assert!(staff_history
        .texts
        .iter()
        .any(|t| t.contains(&format!("{marker}-transfer"))));
    assert!(staff_history
        .texts
        .iter()
        .any(|t| t.contains(&format!("{marker}-field"))));
    let staff_view = server.conversation(&alice_t, &conv).await.text;
    assert!(
        staff_view.contains(&format!("{marker}-context")),
        "{staff_view}"
    );
}
