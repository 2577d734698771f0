//! Mentions and notifications: `@handle` notifies that staff member and `@team` every
//! member of the team, but only those who may read the note (staff of the conversation's
//! inbox, never the author); the `note`'s `ok` lists them in `mentioned` and the note
//! event carries them. Each mentioned person gets a `notification` frame on every open
//! session and a stored notification (`GET /v1/notifications?unread=true`) whether or not
//! a session was open; notifications are never merged or replaced, their ids increase,
//! and `read_notifications` (socket and HTTP) marks by `ids`, `up_to` or all, for the
//! caller's own notifications only.

use serde_json::{json, Value};

use crate::collab_support::*;
use crate::support::*;

fn check_notification(n: &Value, kind: &str, conversation: &str, event: &str, from: &str) {
    assert_eq!(n["kind"], kind, "{n}");
    assert_eq!(n["conversation_id"], conversation, "{n}");
    assert_eq!(n["event_id"], event, "{n}");
    assert_eq!(n["from"]["id"], from, "{n}");
    assert!(n["id"].is_u64(), "notification id should be a number: {n}");
    assert_eq!(n["read"], false, "{n}");
    timestamp(&n["at"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mention_reaches_every_open_session_and_the_ok_lists_who() {
    let server = TestServer::start().await;
    let conv = server.open_as_customer(&customer("carol")).await;
    let alice_t = agent("alice");
    let bob_t = agent("bob");
    let mut bob1 = online(&server, &bob_t).await;
    let mut bob2 = online(&server, &bob_t).await;
    let mut alice = online(&server, &alice_t).await;

    let frame = note_of(
        &conv,
        "n-1",
        "@bob can you check the refund? (note to self: @alice)",
        None,
        None,
    );
    let ok = alice.ok(frame.clone()).await;
    assert_eq!(
        ok["mentioned"],
        json!(["bob"]),
        "the author is never notified: {ok}"
    );
    let note_id = event_id(&ok);

    // Both of Bob's sessions get the same notification.
    let n1 = next_notification(&mut bob1).await;
    let n2 = next_notification(&mut bob2).await;
    check_notification(&n1, "mention", &conv, &note_id, "alice");
    assert_eq!(n1["from"]["role"], "agent");
    assert_eq!(n1, n2, "every session gets the same notification");
    assert_no_frame(&mut alice, "notification for the author", is_notification).await;

    // The note event names who was notified.
    let history = server.history(&alice_t, &conv).await;
    let note = history.events.last().unwrap();
    assert_eq!(note["event"]["id"], note_id.as_str());
    assert_eq!(note["event"]["mentions"], json!(["bob"]));

    // Stored as well, unread.
    let page = notifications(&server, &bob_t, true).await;
    assert_eq!(page["unread"], 1, "{page}");
    let stored = items_of(&page);
    assert_eq!(stored.len(), 1, "{page}");
    assert_eq!(stored[0]["id"], n1["id"]);
    check_notification(&stored[0], "mention", &conv, &note_id, "alice");

    // A retry of the same note (same client_id) stores and delivers nothing new.
    let again = alice.ok(frame).await;
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["event_id"], note_id.as_str());
    assert_no_frame(
        &mut bob1,
        "second notification for a retried note",
        is_notification,
    )
    .await;
    assert_eq!(notifications(&server, &bob_t, true).await["unread"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn offline_mentions_are_stored_never_replaced_and_marked_read() {
    let server = TestServer::start().await;
    let conv = server.open_as_customer(&customer("carol")).await;
    let alice_t = agent("alice");
    let bob_t = agent("bob");
    let erin_t = agent("erin");
    // Bob has no socket at all: he is known from one HTTP request.
    make_known(&server, &bob_t).await;
    make_known(&server, &erin_t).await;
    let mut alice = online(&server, &alice_t).await;

    let first = alice.note(&conv, "n-1", "@bob first question").await;
    assert_eq!(first["mentioned"], json!(["bob"]));
    let second = alice
        .note(&conv, "n-2", "@bob second question, same thread")
        .await;
    assert_eq!(second["mentioned"], json!(["bob"]));
    let assigned = alice.ok(assign_frame(&conv, Some("bob"), None, None)).await;
    let third = alice.note(&conv, "n-3", "and @Bob a third").await;
    assert_eq!(third["mentioned"], json!(["bob"]));

    let page = notifications(&server, &bob_t, true).await;
    assert_eq!(page["unread"], 4, "{page}");
    let stored = items_of(&page);
    // Newest first; each mention is its own; ids increase with time.
    let expected = [
        ("mention", event_id(&third)),
        ("assigned", event_id(&assigned)),
        ("mention", event_id(&second)),
        ("mention", event_id(&first)),
    ];
    assert_eq!(stored.len(), 4, "{page}");
    for (n, (kind, event)) in stored.iter().zip(expected.iter()) {
        check_notification(n, kind, &conv, event, "alice");
    }
    let ids: Vec<u64> = stored.iter().map(|n| n["id"].as_u64().unwrap()).collect();
    assert!(
        ids.windows(2).all(|w| w[0] > w[1]),
        "ids should increase: {ids:?}"
    );
    let (id_n3, id_assigned, id_n2, id_n1) = (ids[0], ids[1], ids[2], ids[3]);

    // `limit` takes the newest.
    let reply = server
        .http
        .get("/v1/notifications?limit=2", Some(&bob_t))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let newest: Vec<u64> = items_of(&reply.json())
        .iter()
        .map(|n| n["id"].as_u64().unwrap())
        .collect();
    assert_eq!(newest, vec![id_n3, id_assigned]);
    // `before` pages on to the older ones.
    let reply = server
        .http
        .get(
            &format!("/v1/notifications?limit=2&before={id_assigned}"),
            Some(&bob_t),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let older: Vec<u64> = items_of(&reply.json())
        .iter()
        .map(|n| n["id"].as_u64().unwrap())
        .collect();
    assert_eq!(older, vec![id_n2, id_n1]);

    // Someone else cannot mark Bob's notifications read.
    let reply = server
        .http
        .post(
            "/v1/notifications/read",
            Some(&erin_t),
            &json!({"ids": ids}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json()["marked"], 0, "{}", reply.text);
    assert_eq!(notifications(&server, &bob_t, true).await["unread"], 4);

    // Bob comes online and reads them in steps.
    let mut bob = online(&server, &bob_t).await;
    let ok = bob
        .ok(json!({"type": "read_notifications", "up_to": id_n1}))
        .await;
    assert_eq!(
        (ok["marked"].clone(), ok["unread"].clone()),
        (json!(1), json!(3)),
        "{ok}"
    );
    let ok = bob
        .ok(json!({"type": "read_notifications", "ids": [id_n3]}))
        .await;
    assert_eq!(
        (ok["marked"].clone(), ok["unread"].clone()),
        (json!(1), json!(2)),
        "{ok}"
    );
    let ok = bob
        .ok(json!({"type": "read_notifications", "ids": [id_n3]}))
        .await;
    assert_eq!(
        (ok["marked"].clone(), ok["unread"].clone()),
        (json!(0), json!(2)),
        "{ok}"
    );
    bob.error_code(
        json!({"type": "read_notifications", "ids": [id_n2], "up_to": id_n2}),
        "bad_request",
    )
    .await;
    let unread: Vec<u64> = items_of(&notifications(&server, &bob_t, true).await)
        .iter()
        .map(|n| n["id"].as_u64().unwrap())
        .collect();
    assert_eq!(unread, vec![id_assigned, id_n2]);

    // `{}` marks everything.
    let reply = server
        .http
        .post("/v1/notifications/read", Some(&bob_t), &json!({}))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json()["marked"], 2, "{}", reply.text);
    assert_eq!(reply.json()["unread"], 0, "{}", reply.text);
    let page = notifications(&server, &bob_t, true).await;
    assert!(items_of(&page).is_empty(), "{page}");
    assert_eq!(page["unread"], 0);
    // Read, not gone.
    let all = items_of(&notifications(&server, &bob_t, false).await);
    assert_eq!(all.len(), 4);
    assert!(all.iter().all(|n| n["read"] == true), "{all:?}");

    // A new mention after that is a new, unread notification with a larger id.
    let fourth = alice.note(&conv, "n-4", "@bob one more").await;
    let n = next_notification(&mut bob).await;
    check_notification(&n, "mention", &conv, &event_id(&fourth), "alice");
    assert!(n["id"].as_u64().unwrap() > id_n3);
    assert_eq!(notifications(&server, &bob_t, true).await["unread"], 1);
    // `up_to` past every id, however large, marks it too.
    let ok = bob
        .ok(json!({"type": "read_notifications", "up_to": u64::MAX}))
        .await;
    assert_eq!(
        (ok["marked"].clone(), ok["unread"].clone()),
        (json!(1), json!(0)),
        "{ok}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mention_of_someone_without_access_notifies_nobody() {
    let server = TestServer::start().await;
    let cust_t = customer("carol");
    let conv = server.open_as_customer(&cust_t).await;
    let alice_t = agent("alice");
    let bob_t = agent("bob");
    // Dave works in billing only; he has connected, so the directory knows him.
    let dave_t = agent_in("dave", &["billing"]);
    let mut dave = online(&server, &dave_t).await;
    make_known(&server, &bob_t).await;
    // The customer is online too (customers are never mention targets).
    let mut carol = online(&server, &cust_t).await;
    carol.subscribe(&conv, None).await;
    let mut alice = online(&server, &alice_t).await;

    let ok = alice
        .note(&conv, "n-1", "@dave could you look at this?")
        .await;
    assert_eq!(ok["mentioned"], json!([]), "{ok}");
    let history = server.history(&alice_t, &conv).await;
    let mentions = &history.events.last().unwrap()["event"]["mentions"];
    assert!(
        mentions.is_null() || *mentions == json!([]),
        "nobody may be recorded as mentioned: {mentions}"
    );

    // The same note with someone who may read it: only they are notified.
    let ok = alice
        .note(
            &conv,
            "n-2",
            "@dave and @bob, see this; also @carol and @nobody-here",
        )
        .await;
    assert_eq!(ok["mentioned"], json!(["bob"]), "{ok}");

    assert_no_frame(
        &mut dave,
        "notification for an agent without access",
        is_notification,
    )
    .await;
    let page = notifications(&server, &dave_t, false).await;
    assert!(items_of(&page).is_empty(), "{page}");
    assert_eq!(page["unread"], 0);
    assert_eq!(notifications(&server, &bob_t, true).await["unread"], 1);
    carol.sync().await;
    let frames = carol.collect_for(QUIET).await;
    assert!(
        frames.is_empty(),
        "the customer got frames for notes: {frames:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_team_mention_reaches_every_member_online_or_not() {
    let server = TestServer::start().await;
    define_team(&server, "billing-team").await;
    let conv = server.open_as_customer(&customer("carol")).await;

    let alice_t = agent_in_teams("alice", &["billing-team"]); // the author
    let bob_t = agent_in_teams("bob", &["billing-team", "vip"]); // online
    let erin_t = agent_in_teams("erin", &["billing-team"]); // offline
    let sue_t = token_with("supervisor", "sue", json!({"teams": ["billing-team"]})); // online
                                                                                     // Frank is in the team but not in the conversation's inbox.
    let frank_t = token_with(
        "agent",
        "frank",
        json!({"inboxes": ["billing"], "teams": ["billing-team"]}),
    );
    let gina_t = agent("gina"); // online, not in the team

    let mut bob = online(&server, &bob_t).await;
    let mut sue = online(&server, &sue_t).await;
    let mut frank = online(&server, &frank_t).await;
    let mut gina = online(&server, &gina_t).await;
    make_known(&server, &erin_t).await;
    let mut alice = online(&server, &alice_t).await;

    let ok = alice
        .note(&conv, "t-1", "@billing-team please take this one")
        .await;
    let note_id = event_id(&ok);
    let mut mentioned: Vec<String> = ok["mentioned"]
        .as_array()
        .unwrap_or_else(|| panic!("no mentioned list: {ok}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    mentioned.sort();
    assert_eq!(mentioned, vec!["bob", "erin", "sue"], "{ok}");

    for ws in [&mut bob, &mut sue] {
        let n = next_notification(ws).await;
        check_notification(&n, "mention", &conv, &note_id, "alice");
    }
    let page = notifications(&server, &erin_t, true).await;
    assert_eq!(page["unread"], 1, "{page}");
    check_notification(&items_of(&page)[0], "mention", &conv, &note_id, "alice");

    for (who, ws) in [
        ("frank", &mut frank),
        ("gina", &mut gina),
        ("alice", &mut alice),
    ] {
        assert_no_frame(ws, &format!("notification for {who}"), is_notification).await;
    }
    assert!(items_of(&notifications(&server, &frank_t, false).await).is_empty());
    assert!(items_of(&notifications(&server, &gina_t, false).await).is_empty());

    // Team names compare case-insensitively; someone named twice (by handle and by
    // team) is notified once; every mention is its own notification.
    let ok = alice
        .note(
            &conv,
            "t-2",
            "Escalating to @Billing-Team, @bob especially.",
        )
        .await;
    let mut mentioned: Vec<String> = ok["mentioned"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    mentioned.sort();
    assert_eq!(mentioned, vec!["bob", "erin", "sue"], "{ok}");
    let n = next_notification(&mut bob).await;
    assert_eq!(n["event_id"], event_id(&ok).as_str());
    assert_no_frame(
        &mut bob,
        "a second notification for one note",
        is_notification,
    )
    .await;
    let erin_all = items_of(&notifications(&server, &erin_t, true).await);
    assert_eq!(erin_all.len(), 2, "{erin_all:?}");
    assert_eq!(
        erin_all[1]["event_id"],
        note_id.as_str(),
        "the first mention is still there"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn mention_names_follow_the_documented_syntax() {
    let server = TestServer::start().await;
    let conv = server.open_as_customer(&customer("carol")).await;
    let alice_t = agent("alice");
    // An explicit handle; and a sub with capitals and a dot (default handle: lower-cased).
    let robbie_t = token_with(
        "agent",
        "u-1042",
        json!({"inboxes": ["support"], "handle": "robbie"}),
    );
    let zoe_t = token_with("agent", "Zoe.Q", json!({"inboxes": ["support"]}));
    make_known(&server, &robbie_t).await;
    make_known(&server, &zoe_t).await;
    make_known(&server, &agent("bob")).await;
    let mut alice = online(&server, &alice_t).await;

    let cases: &[(&str, &[&str])] = &[
        ("write to bob@example.com about it", &[]),
        ("@ bob, nothing here", &[]),
        ("(@BOB) please", &["bob"]),
        ("thanks @bob.", &["bob"]),
        ("@robbie can you help", &["u-1042"]),
        ("ping @zoe.q.", &["Zoe.Q"]),
        ("@bob-", &["bob"]),
    ];
    for (i, (body, expected)) in cases.iter().enumerate() {
        let ok = alice.note(&conv, &format!("m-{i}"), body).await;
        let mut got: Vec<String> = ok["mentioned"]
            .as_array()
            .unwrap_or_else(|| panic!("no mentioned list for {body:?}: {ok}"))
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        got.sort();
        assert_eq!(got, *expected, "mentions in {body:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_directory_follows_the_latest_token() {
    let server = TestServer::start().await;
    let conv = server.open_as_customer(&customer("carol")).await;
    let mut alice = online(&server, &agent("alice")).await;
    // Dave first works in billing only: not notified.
    let dave_billing = agent_in("dave", &["billing"]);
    make_known(&server, &dave_billing).await;
    let ok = alice.note(&conv, "n-1", "@dave are you there?").await;
    assert_eq!(ok["mentioned"], json!([]), "{ok}");
    // He is given the support inbox: from his next token on, he is.
    let dave_support = agent_in("dave", &["billing", "support"]);
    let mut dave = online(&server, &dave_support).await;
    let ok = alice.note(&conv, "n-2", "@dave now?").await;
    assert_eq!(ok["mentioned"], json!(["dave"]), "{ok}");
    let n = next_notification(&mut dave).await;
    assert_eq!(n["event_id"], ok["event_id"]);
    dave.close().await;
    // And taken off it again: no longer notified.
    make_known(&server, &dave_billing).await;
    let ok = alice.note(&conv, "n-3", "@dave still?").await;
    assert_eq!(ok["mentioned"], json!([]), "{ok}");
    // The one he got is a support conversation's: shown to a token that names support,
    // not to his billing-only one.
    assert_eq!(
        notifications(&server, &dave_billing, true).await["unread"],
        0
    );
    assert_eq!(
        notifications(&server, &dave_support, true).await["unread"],
        1
    );
}

/// A notification names its conversation, its event and its author, and is read through
/// the caller's token as it is now, not as the directory had the user when it was
/// written: a supervisor's agent token (demoted, or one token of each) is never shown a
/// coaching note's notification, live or listed, and an agent no longer in an inbox
/// neither lists, counts nor marks the notifications of its conversations, which must
/// look as if they did not exist.
#[tokio::test(flavor = "multi_thread")]
async fn notifications_follow_the_callers_role_and_inboxes_now() {
    let server = TestServer::start().await;
    let conv = server.open_as_customer(&customer("carol")).await;
    let boss_t = supervisor("boss");
    let sam_agent_t = agent("sam");
    let sam_supervisor_t = supervisor("sam");
    let alice_t = agent("alice");
    // The agent socket first: the directory keeps the last hello's role, supervisor.
    let mut sam_as_agent = online(&server, &sam_agent_t).await;
    let mut sam_as_supervisor = online(&server, &sam_supervisor_t).await;
    let mut boss = online(&server, &boss_t).await;

    let ok = boss
        .ok(coaching(&conv, "c-1", "@sam watch the tone here"))
        .await;
    assert_eq!(ok["mentioned"], json!(["sam"]), "{ok}");
    let coaching_id = event_id(&ok);
    let live = next_notification(&mut sam_as_supervisor).await;
    check_notification(&live, "mention", &conv, &coaching_id, "boss");
    assert_no_frame(
        &mut sam_as_agent,
        "a coaching note's notification",
        is_notification,
    )
    .await;

    let list = |token: &str| {
        let token = token.to_owned();
        let server = &server;
        async move {
            let reply = server.http.get("/v1/notifications", Some(&token)).await;
            assert_eq!(reply.status, 200, "{}", reply.text);
            reply.json()
        }
    };
    let as_supervisor = list(&sam_supervisor_t).await;
    assert_eq!(items_of(&as_supervisor).len(), 1, "{as_supervisor}");
    assert_eq!(as_supervisor["unread"], 1, "{as_supervisor}");
    let as_agent = list(&sam_agent_t).await;
    assert_eq!(as_agent["notifications"], json!([]), "{as_agent}");
    assert_eq!(as_agent["unread"], 0, "{as_agent}");
    let reply = server
        .http
        .post("/v1/notifications/read", Some(&sam_agent_t), &json!({}))
        .await;
    assert_eq!(reply.json()["marked"], 0, "{}", reply.text);
    assert_eq!(list(&sam_supervisor_t).await["unread"], 1);

    // Frank worked in `support` when Alice mentioned him; his token now names `billing`.
    let frank_support_t = agent("frank");
    let frank_billing_t = agent_in("frank", &["billing"]);
    make_known(&server, &frank_support_t).await;
    let mut alice = online(&server, &alice_t).await;
    let ok = alice
        .ok(note_of(&conv, "n-1", "@frank the refund plan", None, None))
        .await;
    assert_eq!(ok["mentioned"], json!(["frank"]), "{ok}");
    let now_billing = list(&frank_billing_t).await;
    assert_eq!(now_billing["notifications"], json!([]), "{now_billing}");
    assert_eq!(now_billing["unread"], 0, "{now_billing}");
    let reply = server
        .http
        .post("/v1/notifications/read", Some(&frank_billing_t), &json!({}))
        .await;
    assert_eq!(reply.json()["marked"], 0, "{}", reply.text);
    let back_in_support = list(&frank_support_t).await;
    assert_eq!(back_in_support["unread"], 1, "{back_in_support}");
    assert_eq!(
        items_of(&back_in_support)[0]["conversation_id"],
        conv.as_str(),
        "{back_in_support}"
    );
}

/// A live notification is shown on a user's sockets whose token names its conversation's
/// inbox, not on every socket of the user: Frank's billing-only console is never told of
/// a support conversation he was mentioned in through his other token, as listing with
/// that token shows nothing either.
#[tokio::test(flavor = "multi_thread")]
async fn live_notifications_follow_each_sockets_inboxes() {
    let server = TestServer::start().await;
    let conv = server.open_as_customer(&customer("carol")).await;
    let frank_billing_t = agent_in("frank", &["billing"]);
    let frank_support_t = agent_in("frank", &["support"]);
    // The support socket last: the directory has him in support, so he is notified.
    let mut frank_billing = online(&server, &frank_billing_t).await;
    let mut frank_support = online(&server, &frank_support_t).await;
    let mut alice = online(&server, &agent("alice")).await;

    let ok = alice
        .ok(note_of(&conv, "n-1", "@frank the refund plan", None, None))
        .await;
    assert_eq!(ok["mentioned"], json!(["frank"]), "{ok}");
    let live = next_notification(&mut frank_support).await;
    check_notification(&live, "mention", &conv, &event_id(&ok), "alice");
    assert_no_frame(
        &mut frank_billing,
        "a support conversation's notification on a billing-only socket",
        is_notification,
    )
    .await;
}
