//! Custom fields: admins define them (`PUT /v1/fields/{key}`: `type` text, number,
//! boolean, date, list with `options`, link; `applies_to` conversation or contact;
//! `label`; `required`); `set_fields` checks every value against its definition and a
//! single wrong value is `bad_request` with nothing written (history head, values and the
//! live stream unchanged); `null` clears; values show in the staff views of conversations
//! and contacts and filter the conversation list (`field=key:value`, typed); resolving
//! needs the required conversation fields.

use serde_json::{json, Value};

use crate::collab_support::*;
use crate::support::*;

async fn define_all(server: &TestServer) {
    define_field(
        server,
        "summary",
        json!({"type": "text", "applies_to": "conversation", "label": "Summary"}),
    )
    .await;
    define_field(
        server,
        "amount",
        json!({"type": "number", "applies_to": "conversation"}),
    )
    .await;
    define_field(
        server,
        "urgent",
        json!({"type": "boolean", "applies_to": "conversation"}),
    )
    .await;
    define_field(
        server,
        "due",
        json!({"type": "date", "applies_to": "conversation"}),
    )
    .await;
    define_field(
        server,
        "tier",
        json!({"type": "list", "applies_to": "conversation", "options": ["gold", "silver"]}),
    )
    .await;
    define_field(
        server,
        "ticket",
        json!({"type": "link", "applies_to": "conversation"}),
    )
    .await;
    define_field(
        server,
        "plan",
        json!({"type": "list", "applies_to": "contact", "options": ["free", "pro"], "label": "Plan"}),
    )
    .await;
    define_field(
        server,
        "crm",
        json!({"type": "link", "applies_to": "contact"}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn admins_define_typed_fields() {
    let server = TestServer::start().await;
    let alice_t = agent("alice");
    let defined = define_field(
        &server,
        "tier",
        json!({"type": "list", "applies_to": "conversation", "label": "Tier",
               "required": true, "options": ["gold", "silver"]}),
    )
    .await;
    assert_eq!(defined["key"], "tier");
    assert_eq!(defined["type"], "list");
    assert_eq!(defined["applies_to"], "conversation");
    assert_eq!(defined["label"], "Tier");
    assert_eq!(defined["required"], true);
    assert_eq!(defined["options"], json!(["gold", "silver"]));
    for t in ["text", "number", "boolean", "date", "link"] {
        define_field(
            &server,
            &format!("f-{t}"),
            json!({"type": t, "applies_to": "contact"}),
        )
        .await;
    }

    let put = |key: &str, token: &str, body: Value| {
        let (key, token, http) = (key.to_owned(), token.to_owned(), server.http.clone());
        async move {
            http.put(&format!("/v1/fields/{key}"), Some(&token), &body)
                .await
        }
    };
    put(
        "x",
        &alice_t,
        json!({"type": "text", "applies_to": "conversation"}),
    )
    .await
    .assert_error(403, "forbidden");
    put(
        "x",
        &supervisor("sam"),
        json!({"type": "text", "applies_to": "conversation"}),
    )
    .await
    .assert_error(403, "forbidden");
    for bad in [
        json!({"type": "colour", "applies_to": "conversation"}),
        json!({"type": "text", "applies_to": "inbox"}),
        json!({"type": "list", "applies_to": "conversation"}),
        json!({"type": "list", "applies_to": "conversation", "options": []}),
        json!({"applies_to": "conversation"}),
    ] {
        put("x", &root(), bad.clone())
            .await
            .assert_error(400, "bad_request");
    }
    put(
        "Bad Key",
        &root(),
        json!({"type": "text", "applies_to": "conversation"}),
    )
    .await
    .assert_error(400, "bad_request");

    let reply = server.http.get("/v1/fields", Some(&alice_t)).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let fields = reply.json()["fields"].as_array().cloned().unwrap();
    assert_eq!(fields.len(), 6, "{fields:?}");
    let tier = fields.iter().find(|f| f["key"] == "tier").unwrap();
    assert_eq!(tier["options"], json!(["gold", "silver"]));
    assert_eq!(tier["required"], true);
    let date = fields.iter().find(|f| f["key"] == "f-date").unwrap();
    assert_eq!(date["type"], "date");
    assert_eq!(date["applies_to"], "contact");
    assert_eq!(date["required"], false);
    server
        .http
        .get("/v1/fields", Some(&customer("carol")))
        .await
        .assert_error(403, "forbidden");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_field_value_changes_nothing() {
    let server = TestServer::start().await;
    define_all(&server).await;
    let cust_t = customer("carol");
    let conv = server.open_as_customer(&cust_t).await;
    let alice_t = agent("alice");
    let mut alice = online(&server, &alice_t).await;
    let mut watcher = online(&server, &agent("wendy")).await;
    watcher.subscribe(&conv, None).await;

    let good = json!({
        "summary": "Parcel lost in transit",
        "amount": 42.5,
        "urgent": true,
        "due": "2026-02-28",
        "tier": "gold",
        "ticket": "https://tracker.example.com/T-1"
    });
    let ok = alice
        .ok(fields_frame("conversation", &conv, good.clone()))
        .await;
    assert!(ok["seq"].is_u64(), "{ok}");
    assert_eq!(view(&server, &alice_t, &conv).await["fields"], good);
    watcher.frames_until_seq(ok["seq"].as_u64().unwrap()).await;
    let head = server.head(&alice_t, &conv).await;

    // Each wrong value, alone or beside a good one: refused, nothing written.
    let wrong = [
        json!({"amount": "42"}),
        json!({"amount": true}),
        json!({"urgent": "yes"}),
        json!({"urgent": 1}),
        json!({"due": "2026-02-30"}),
        json!({"due": "28/02/2026"}),
        json!({"due": 20260228}),
        json!({"tier": "bronze"}),
        json!({"tier": "Gold"}),
        json!({"ticket": "javascript:alert(1)"}),
        json!({"ticket": "ftp://example.com/x"}),
        json!({"ticket": "tracker.example.com"}),
        json!({"summary": 7}),
        json!({"summary": "x".repeat(2049)}),
        json!({"summary": "fine", "tier": "bronze"}),
        json!({"tier": "silver", "amount": "lots"}),
        json!({"no-such-field": "x"}),
        json!({"plan": "pro"}),
        json!({}),
    ];
    for fields in &wrong {
        let error = alice
            .error_code(
                fields_frame("conversation", &conv, fields.clone()),
                "bad_request",
            )
            .await;
        assert!(!error["message"].as_str().unwrap().is_empty());
    }
    // Over HTTP as well.
    let reply = server
        .http
        .post(
            "/v1/fields/values",
            Some(&alice_t),
            &json!({"target": "conversation", "id": conv, "fields": {"summary": "changed", "amount": "NaN"}}),
        )
        .await;
    reply.assert_error(400, "bad_request");
    // A wrong value on a contact field.
    alice
        .error_code(
            fields_frame(
                "contact",
                "carol",
                json!({"plan": "enterprise", "crm": "https://crm.example.com/c/1"}),
            ),
            "bad_request",
        )
        .await;

    assert_eq!(
        server.head(&alice_t, &conv).await,
        head,
        "no event was appended"
    );
    assert_eq!(
        view(&server, &alice_t, &conv).await["fields"],
        good,
        "no value changed"
    );
    let reply = server.http.get("/v1/contacts/carol", Some(&alice_t)).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json()["fields"], json!({}), "{}", reply.text);
    assert_no_frame(&mut watcher, "event after refused set_fields", |f| {
        ty(f) == "event"
    })
    .await;

    // Edge values that are right: a whole number, false, a leap day, an http link; null
    // clears.
    let ok = alice
        .ok(fields_frame(
            "conversation",
            &conv,
            json!({"amount": 7, "urgent": false, "due": "2028-02-29", "ticket": "http://t.example/1", "summary": null}),
        ))
        .await;
    assert_eq!(ok["seq"], head + 1);
    let fields = view(&server, &alice_t, &conv).await["fields"].clone();
    assert_eq!(
        fields,
        json!({"amount": 7, "urgent": false, "due": "2028-02-29", "ticket": "http://t.example/1", "tier": "gold"})
    );
    let history = server.history(&alice_t, &conv).await;
    let changed = of_kind(&history, "fields_changed");
    assert_eq!(changed.len(), 2);
    assert_eq!(changed[1]["event"]["changes"]["summary"], Value::Null);
    assert_eq!(changed[1]["event"]["actor"]["id"], "alice");
}

#[tokio::test(flavor = "multi_thread")]
async fn contact_fields_show_on_the_contact_and_in_each_of_its_conversations() {
    let server = TestServer::start().await;
    define_all(&server).await;
    define_inbox(&server, "billing").await;
    let cust_t = customer("carol");
    let alice_t = agent("alice");
    let conv1 = server.open_as_customer(&cust_t).await;
    let conv2 = server.open_as_customer(&cust_t).await;
    let conv_billing = server
        .open(&agent_in("bill", &["billing"]), "billing", Some("carol"))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let other = server.open_as_customer(&customer("dora")).await;
    let heads_before = (
        server.head(&alice_t, &conv1).await,
        server.head(&alice_t, &conv2).await,
        server.head(&alice_t, &other).await,
        server.head(&supervisor("sam"), &conv_billing).await,
    );
    let mut alice = online(&server, &alice_t).await;

    let ok = alice
        .ok(fields_frame(
            "contact",
            "carol",
            json!({"plan": "pro", "crm": "https://crm.example.com/c/9"}),
        ))
        .await;
    assert!(ok["seq"].is_u64(), "{ok}");

    let reply = server.http.get("/v1/contacts/carol", Some(&alice_t)).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let contact = reply.json();
    assert_eq!(contact["id"], "carol");
    assert_eq!(
        contact["fields"],
        json!({"plan": "pro", "crm": "https://crm.example.com/c/9"})
    );

    // Recorded in each of carol's conversations alice may see, and nowhere else.
    for conv in [&conv1, &conv2] {
        let history = server.history(&alice_t, conv).await;
        let changed = of_kind(&history, "fields_changed");
        assert_eq!(changed.len(), 1, "{conv}: {:?}", history.kinds());
        assert_eq!(changed[0]["event"]["target"], "contact");
        assert_eq!(changed[0]["event"]["target_id"], "carol");
        assert_eq!(changed[0]["event"]["changes"]["plan"], "pro");
    }
    assert_eq!(server.head(&alice_t, &conv1).await, heads_before.0 + 1);
    assert_eq!(server.head(&alice_t, &conv2).await, heads_before.1 + 1);
    assert_eq!(server.head(&alice_t, &other).await, heads_before.2);
    assert_eq!(
        server.head(&supervisor("sam"), &conv_billing).await,
        heads_before.3
    );
    // Contact fields are not conversation fields.
    assert_eq!(view(&server, &alice_t, &conv1).await["fields"], json!({}));

    // An unknown contact, or one alice cannot see: not_found.
    alice
        .error_code(
            fields_frame("contact", "nobody", json!({"plan": "pro"})),
            "not_found",
        )
        .await;
    let reply = server.http.get("/v1/contacts/nobody", Some(&alice_t)).await;
    reply.assert_error(404, "not_found");
    server
        .http
        .get("/v1/contacts/carol", Some(&cust_t))
        .await
        .assert_error(403, "forbidden");
}

#[tokio::test(flavor = "multi_thread")]
async fn field_values_filter_the_conversation_list() {
    let server = TestServer::start().await;
    define_all(&server).await;
    let alice_t = agent("alice");
    let a = server.open_as_customer(&customer("ann")).await;
    let b = server.open_as_customer(&customer("ben")).await;
    let c = server.open_as_customer(&customer("cat")).await;
    let mut alice = online(&server, &alice_t).await;
    alice
        .ok(fields_frame(
            "conversation",
            &a,
            json!({"tier": "gold", "amount": 2, "urgent": true}),
        ))
        .await;
    alice
        .ok(fields_frame(
            "conversation",
            &b,
            json!({"tier": "silver", "amount": 2.5, "urgent": false}),
        ))
        .await;
    alice
        .ok(fields_frame(
            "conversation",
            &c,
            json!({"tier": "gold", "amount": 10}),
        ))
        .await;

    let ids = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let want = |list: &[&String]| {
        let mut v: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    };
    // The values appear in the list's items too.
    let items = list_items(&server.list(&alice_t, "").await.json());
    let item_a = items.iter().find(|i| i["id"] == a.as_str()).unwrap();
    assert_eq!(item_a["fields"]["tier"], "gold", "{item_a}");

    assert_eq!(
        ids(list_ids(&server, &alice_t, "field=tier:gold").await),
        want(&[&a, &c])
    );
    assert_eq!(
        ids(list_ids(&server, &alice_t, "field=tier:silver").await),
        want(&[&b])
    );
    assert_eq!(
        ids(list_ids(&server, &alice_t, "field=amount:2").await),
        want(&[&a])
    );
    assert_eq!(
        ids(list_ids(&server, &alice_t, "field=amount:2.0").await),
        want(&[&a])
    );
    assert_eq!(
        ids(list_ids(&server, &alice_t, "field=amount:2.5").await),
        want(&[&b])
    );
    assert_eq!(
        ids(list_ids(&server, &alice_t, "field=urgent:false").await),
        want(&[&b])
    );
    assert_eq!(
        ids(list_ids(&server, &alice_t, &format!("field={}", enc("tier:gold"))).await),
        want(&[&a, &c])
    );
    // A value the field cannot hold, an unknown field, a malformed filter.
    for query in [
        "field=tier:bronze",
        "field=amount:lots",
        "field=nope:1",
        "field=tier",
    ] {
        server
            .http
            .get(&format!("/v1/conversations?{query}"), Some(&alice_t))
            .await
            .assert_error(400, "bad_request");
    }
    // Customers may not filter on fields.
    let reply = server
        .http
        .get("/v1/conversations?field=tier:gold", Some(&customer("ann")))
        .await;
    assert!(
        reply.status == 403 || reply.status == 400,
        "{} {}",
        reply.status,
        reply.text
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn resolving_needs_the_required_fields() {
    let server = TestServer::start().await;
    define_field(
        &server,
        "reason",
        json!({"type": "list", "applies_to": "conversation", "required": true, "options": ["refund", "other"]}),
    )
    .await;
    define_field(
        &server,
        "root-cause",
        json!({"type": "text", "applies_to": "conversation", "required": true}),
    )
    .await;
    define_field(
        &server,
        "optional",
        json!({"type": "text", "applies_to": "conversation"}),
    )
    .await;
    let alice_t = agent("alice");
    let conv = server.open_as_customer(&customer("carol")).await;
    let mut alice = online(&server, &alice_t).await;

    let error = alice
        .error_code(status_frame(&conv, "resolved"), "bad_request")
        .await;
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("reason") && message.contains("root-cause"),
        "{message}"
    );
    alice
        .ok(fields_frame(
            "conversation",
            &conv,
            json!({"reason": "refund"}),
        ))
        .await;
    let error = alice
        .error_code(status_frame(&conv, "resolved"), "bad_request")
        .await;
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("root-cause") && !message.contains("reason"),
        "{message}"
    );
    assert_eq!(view(&server, &alice_t, &conv).await["status"], "open");
    // Other statuses do not need them.
    alice.ok(status_frame(&conv, "pending")).await;
    alice
        .ok(fields_frame(
            "conversation",
            &conv,
            json!({"root-cause": "courier"}),
        ))
        .await;
    alice.ok(status_frame(&conv, "resolved")).await;
    assert_eq!(view(&server, &alice_t, &conv).await["status"], "resolved");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resolve_racing_a_cleared_required_field_is_never_applied_after_the_clear() {
    let server = TestServer::start().await;
    define_field(
        &server,
        "reason",
        json!({"type": "text", "applies_to": "conversation", "required": true}),
    )
    .await;
    let alice_t = agent("alice");
    let conv = server.open_as_customer(&customer("carol")).await;
    let mut alice = online(&server, &alice_t).await;
    let mut bob = online(&server, &agent("bob")).await;
    for round in 0..10 {
        alice
            .ok(fields_frame(
                "conversation",
                &conv,
                json!({"reason": "refund"}),
            ))
            .await;
        alice.ok(status_frame(&conv, "open")).await;
        // Alice clears the required field while Bob resolves, at the same moment.
        let (cleared, resolved) = futures::future::join(
            alice.request(fields_frame("conversation", &conv, json!({"reason": null}))),
            bob.request(status_frame(&conv, "resolved")),
        )
        .await;
        let cleared = cleared.expect("clearing a field is always allowed");
        if let Ok(resolved) = resolved {
            // Accepted: then it must have been applied while the field was still set,
            // that is before the clear in the log.
            assert!(
                resolved["seq"].as_u64() < cleared["seq"].as_u64(),
                "round {round}: resolved at seq {} after the required field was cleared at seq {}",
                resolved["seq"],
                cleared["seq"]
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn staff_open_a_conversation_with_its_fields_in_one_commit() {
    let server = TestServer::start().await;
    define_all(&server).await;
    let alice_t = agent("alice");
    let cust_t = customer("carol");
    let open = |body: Value| {
        let http = &server.http;
        let token = alice_t.clone();
        async move { http.post("/v1/conversations", Some(&token), &body).await }
    };
    let listed = |token: String| {
        let server = &server;
        async move { list_items(&server.list(&token, "").await.json()).len() }
    };

    let reply = open(json!({"inbox_id": "support", "contact_id": "carol",
                            "fields": {"summary": "double charge", "amount": 12}}))
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    let view = reply.json();
    assert_eq!(
        view["fields"],
        json!({"summary": "double charge", "amount": 12})
    );
    assert_eq!(view["head"], 2, "opened, then fields_changed: {view}");
    let conv = view["id"].as_str().expect("id").to_owned();
    // Stored with it: the view, the timeline, and the list's field filter agree.
    let stored = server.conversation(&alice_t, &conv).await.json();
    assert_eq!(stored["fields"], view["fields"]);
    assert_eq!(stored["head"], 2);
    let history = server.history(&alice_t, &conv).await;
    assert_eq!(history.kinds(), ["conversation_opened", "fields_changed"]);
    let found = list_items(
        &server
            .list(&alice_t, "field=summary:double%20charge")
            .await
            .json(),
    );
    assert_eq!(found.len(), 1, "{found:?}");
    // The customer sees a conversation opened, and nothing of its fields.
    let theirs = server.conversation(&cust_t, &conv).await;
    assert_eq!(theirs.json()["head"], 1, "{}", theirs.text);
    assert!(!theirs.text.contains("double charge"), "{}", theirs.text);

    // A wrong value, an unknown key, a contact field, or fields from a customer open
    // nothing at all.
    let before = listed(alice_t.clone()).await;
    for (fields, code) in [
        (json!({"amount": "twelve"}), "bad_request"),
        (json!({"nope": 1}), "bad_request"),
        (json!({"plan": "pro"}), "bad_request"),
        (json!({"summary": "ok", "amount": "x"}), "bad_request"),
    ] {
        let reply =
            open(json!({"inbox_id": "support", "contact_id": "carol", "fields": fields})).await;
        reply.assert_error(400, code);
    }
    let reply = server
        .http
        .post(
            "/v1/conversations",
            Some(&cust_t),
            &json!({"inbox_id": "support", "fields": {"summary": "mine"}}),
        )
        .await;
    reply.assert_error(403, "forbidden");
    assert_eq!(listed(alice_t.clone()).await, before);
    assert_eq!(listed(cust_t.clone()).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_reaches_a_busy_contact_through_their_own_conversation() {
    // The contact view and contact fields look for the caller's conversations of the
    // contact: another inbox's hundred newer ones must not push them out of sight (the
    // answer flipping to 404 also told the agent the contact was busy elsewhere).
    let server = TestServer::start().await;
    define_all(&server).await;
    define_inbox(&server, "billing").await;
    let alice_t = agent("alice");
    let bill_t = agent_in("bill", &["billing"]);
    let own = server.open(&alice_t, "support", Some("frank")).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for _ in 0..101 {
        server.open(&bill_t, "billing", Some("frank")).await;
    }
    let reply = server.http.get("/v1/contacts/frank", Some(&alice_t)).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(
        reply.json()["conversations"],
        json!([own]),
        "{}",
        reply.text
    );
    let reply = server
        .http
        .post(
            "/v1/fields/values",
            Some(&alice_t),
            &json!({"target": "contact", "id": "frank", "fields": {"plan": "pro"}}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
}
