//! The HTTP API: `/healthz`, `/readyz`, `/metrics` (Prometheus text naming connection,
//! frame, event and store-latency metrics), `PUT /v1/inboxes/{id}` (admins only),
//! `POST /v1/conversations` (customer and staff rules, each side's view),
//! `GET /v1/conversations` with its filters and limit, `GET /v1/conversations/{id}` and
//! history paging with `after` and `limit`.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::support::*;

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

const CUSTOMER_VIEW: &[&str] = &[
    "id",
    "inbox_id",
    "subject",
    "status",
    "created_at",
    "updated_at",
    "head",
];
const STAFF_VIEW: &[&str] = &[
    "id",
    "inbox_id",
    "contact_id",
    "subject",
    "status",
    "assignee_id",
    "team_id",
    "tags",
    "fields",
    "pinned_notes",
    "created_at",
    "updated_at",
    "head",
];

/// A customer's view has the documented fields and nothing else (`subject` may be
/// omitted when there is none).
fn assert_customer_view(view: &Value) {
    let keys = keys(view);
    let allowed = set(CUSTOMER_VIEW);
    assert!(
        keys.is_subset(&allowed),
        "customer view has extra fields: {view}"
    );
    for required in [
        "id",
        "inbox_id",
        "status",
        "created_at",
        "updated_at",
        "head",
    ] {
        assert!(
            keys.contains(required),
            "customer view lacks {required}: {view}"
        );
    }
    let _: backchannel_protocol::http::CustomerConversation =
        serde_json::from_value(view.clone()).expect("customer view matches the protocol");
}

fn assert_staff_view(view: &Value) {
    let keys = keys(view);
    let allowed = set(STAFF_VIEW);
    assert!(
        keys.is_subset(&allowed),
        "staff view has unknown fields: {view}"
    );
    for required in [
        "id",
        "inbox_id",
        "contact_id",
        "status",
        "created_at",
        "updated_at",
        "head",
    ] {
        assert!(
            keys.contains(required),
            "staff view lacks {required}: {view}"
        );
    }
    let _: backchannel_protocol::http::StaffConversation =
        serde_json::from_value(view.clone()).expect("staff view matches the protocol");
}

fn ids(items: &[Value]) -> BTreeSet<String> {
    items
        .iter()
        .map(|i| i["id"].as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn health_readiness_and_metrics() {
    let server = TestServer::start().await;
    let reply = server.http.get("/healthz", None).await;
    assert_eq!(reply.status, 200, "{}", reply.text);

    let reply = server.http.get("/readyz", None).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json(), json!({"store": "ok", "broker": "ok"}));

    // Some traffic, so every family has something to count.
    let cust = customer("carol");
    let conv = server.open_as_customer(&cust).await;
    let mut a = server.client(&agent("alice")).await;
    a.subscribe(&conv, None).await;
    a.note(&conv, "n1", "counted").await;
    a.message(&conv, "m1", "counted too").await;

    let reply = server.http.get("/metrics", None).await;
    assert_eq!(reply.status, 200);
    assert!(
        reply.content_type.starts_with("text/plain")
            || reply
                .content_type
                .starts_with("application/openmetrics-text"),
        "content-type {}",
        reply.content_type
    );
    let names: Vec<String> = reply
        .text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_lowercase)
        .collect();
    assert!(!names.is_empty(), "no `# TYPE` lines in:\n{}", reply.text);
    // PostgreSQL's append shortcut has no counterpart on SQLite: no counters for it.
    assert!(
        !reply.text.contains("store_appends_on_remembered_heads"),
        "{}",
        reply.text
    );
    let has = |pred: &dyn Fn(&str) -> bool| names.iter().any(|n| pred(n));
    assert!(
        has(&|n| n.contains("connection")),
        "no connection metric in {names:?}"
    );
    assert!(
        has(&|n| n.contains("frame")),
        "no frame metric in {names:?}"
    );
    assert!(
        has(&|n| n.contains("event")),
        "no event metric in {names:?}"
    );
    assert!(
        has(&|n| n.contains("store")
            && (n.contains("latency") || n.contains("duration") || n.contains("seconds"))),
        "no store latency metric in {names:?}"
    );
    // Samples are well-formed `name{labels} value` lines.
    for line in reply
        .text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let value = line.rsplit(' ').next().unwrap();
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "malformed sample: {line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_move_to_their_own_address_with_metrics_listen() {
    // The node's counters tell its whole activity; a deployment serves them where only
    // its monitoring reaches, and then the public listener does not have them.
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let metrics_addr = free.local_addr().expect("its address");
    drop(free);
    let server = TestServer::start_with(|config| {
        config.metrics_listen = Some(metrics_addr.to_string());
    })
    .await;
    let conv = server.open_as_customer(&customer("carol")).await;
    server
        .client(&agent("alice"))
        .await
        .note(&conv, "n1", "counted")
        .await;

    server
        .http
        .get("/metrics", None)
        .await
        .assert_error(404, "not_found");
    let internal = Http::new(metrics_addr);
    let reply = internal.get("/metrics", None).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert!(counter(&reply.text, "backchannel_events_appended_total") >= 2);
    // Only the metrics: the API is not served there.
    internal
        .get("/v1/conversations", Some(&agent("alice")))
        .await
        .assert_error(404, "not_found");
    server
        .shutdown()
        .await
        .expect("a clean shutdown, the metrics server too");
}

#[tokio::test(flavor = "multi_thread")]
async fn put_inbox_is_for_admins_only() {
    let server = TestServer::start().await;
    let body = json!({"name": "Billing"});
    for (who, token) in [
        ("customer", customer("carol")),
        ("agent", agent_in("alice", &["*"])),
        ("supervisor", supervisor("sam")),
    ] {
        let reply = server
            .http
            .put("/v1/inboxes/billing", Some(&token), &body)
            .await;
        assert_eq!(reply.status, 403, "{who}: {}", reply.text);
        assert_eq!(reply.error_code(), "forbidden", "{who}");
    }
    let reply = server.http.put("/v1/inboxes/billing", None, &body).await;
    reply.assert_error(401, "unauthorized");
    // None of that created it.
    server
        .http
        .post(
            "/v1/conversations",
            Some(&customer("carol")),
            &json!({"inbox_id": "billing"}),
        )
        .await
        .assert_error(404, "not_found");

    let root = admin("root");
    let reply = server
        .http
        .put("/v1/inboxes/billing", Some(&root), &body)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json(), json!({"id": "billing", "name": "Billing"}));
    // Idempotent, and renames.
    let reply = server
        .http
        .put(
            "/v1/inboxes/billing",
            Some(&root),
            &json!({"name": "Billing & Refunds"}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json()["name"], "Billing & Refunds");
    // Without a name.
    let reply = server
        .http
        .put("/v1/inboxes/sales.eu-1", Some(&root), &json!({}))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json()["id"], "sales.eu-1");
    assert!(reply.json()["name"].is_string());

    // It is usable at once.
    let view = server.open(&customer("carol"), "billing", None).await;
    assert_eq!(view["inbox_id"], "billing");
}

#[tokio::test(flavor = "multi_thread")]
async fn opening_conversations_as_customer_and_as_staff() {
    let server = TestServer::start().await;
    let cust = customer("carol");
    let alice = agent("alice");

    // A customer: their own contact, their view.
    let view = server.open(&cust, "support", None).await;
    assert_customer_view(&view);
    assert_eq!(view["inbox_id"], "support");
    assert_eq!(view["subject"], "Where is my order?");
    assert_eq!(view["status"], "open");
    assert_eq!(view["head"], 1);
    let conv = view["id"].as_str().unwrap().to_owned();
    assert!(
        uuid::Uuid::parse_str(&conv).is_ok(),
        "conversation ids are UUIDs: {conv}"
    );

    // The staff see the contact and the same conversation.
    let staff = server.conversation(&alice, &conv).await.json();
    assert_staff_view(&staff);
    assert_eq!(staff["contact_id"], "carol");
    assert_eq!(staff["id"], conv.as_str());
    assert_eq!(staff["head"], 1);
    let history = server.history(&alice, &conv).await;
    assert_eq!(history.kinds(), vec!["conversation_opened"]);
    assert_eq!(history.events[0]["event"]["subject"], "Where is my order?");

    // A customer may not open on someone else's behalf; nothing is created.
    let reply = server
        .http
        .post(
            "/v1/conversations",
            Some(&cust),
            &json!({"inbox_id": "support", "contact_id": "mallory"}),
        )
        .await;
    assert!(matches!(reply.status, 400 | 403), "{}", reply.text);
    assert!(matches!(
        reply.error_code().as_str(),
        "bad_request" | "forbidden"
    ));
    let listed = list_items(&server.list(&supervisor("sam"), "").await.json());
    assert_eq!(listed.len(), 1, "{listed:?}");

    // An agent opens for a contact; the response is the staff view.
    let view = server.open(&alice, "support", Some("dave")).await;
    assert_staff_view(&view);
    assert_eq!(view["contact_id"], "dave");
    let daves = view["id"].as_str().unwrap().to_owned();
    // ... and it is dave's: he sees it, carol does not.
    let dave_view = server.conversation(&customer("dave"), &daves).await.json();
    assert_customer_view(&dave_view);
    server
        .http
        .get(&format!("/v1/conversations/{daves}"), Some(&cust))
        .await
        .assert_error(404, "not_found");

    // An agent outside the inbox may not open there.
    let root = admin("root");
    assert_eq!(
        server
            .http
            .put("/v1/inboxes/billing", Some(&root), &json!({}))
            .await
            .status,
        200
    );
    let reply = server
        .http
        .post(
            "/v1/conversations",
            Some(&alice),
            &json!({"inbox_id": "billing", "contact_id": "dave"}),
        )
        .await;
    assert!(matches!(reply.status, 403 | 404), "{}", reply.text);
    // A supervisor may.
    let view = server
        .open(&supervisor("sam"), "billing", Some("dave"))
        .await;
    assert_staff_view(&view);
}

#[tokio::test(flavor = "multi_thread")]
async fn list_filters_and_scopes() {
    let server = TestServer::start().await;
    let root = admin("root");
    assert_eq!(
        server
            .http
            .put(
                "/v1/inboxes/billing",
                Some(&root),
                &json!({"name": "Billing"})
            )
            .await
            .status,
        200
    );
    let carol = customer("carol");
    let dave = customer("dave");
    let c1 = server.open_as_customer(&carol).await;
    let c2 = server.open_as_customer(&carol).await;
    let d1 = server.open_as_customer(&dave).await;
    let b1 = server.open(&carol, "billing", None).await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Customers: their own only, customer views.
    let items = list_items(&server.list(&carol, "").await.json());
    assert_eq!(ids(&items), set(&[&c1, &c2, &b1]));
    for item in &items {
        assert_customer_view(item);
    }
    let items = list_items(&server.list(&dave, "").await.json());
    assert_eq!(ids(&items), set(&[&d1]));

    // Agents: their inboxes; supervisors: all.
    let items = list_items(&server.list(&agent("alice"), "").await.json());
    assert_eq!(ids(&items), set(&[&c1, &c2, &d1]));
    for item in &items {
        assert_staff_view(item);
    }
    let sam = supervisor("sam");
    let items = list_items(&server.list(&sam, "").await.json());
    assert_eq!(ids(&items), set(&[&c1, &c2, &d1, &b1]));

    // Filters.
    let items = list_items(&server.list(&sam, "inbox=billing").await.json());
    assert_eq!(ids(&items), set(&[&b1]));
    let items = list_items(&server.list(&sam, "inbox=support").await.json());
    assert_eq!(ids(&items), set(&[&c1, &c2, &d1]));
    let items = list_items(&server.list(&sam, "status=open").await.json());
    assert_eq!(items.len(), 4);
    let items = list_items(&server.list(&sam, "status=resolved").await.json());
    assert!(items.is_empty());
    // A status that does not exist is a mistake to say, not an empty list.
    server
        .http
        .get("/v1/conversations?status=bogus", Some(&sam))
        .await
        .assert_error(400, "bad_request");
    let items = list_items(&server.list(&sam, "assignee=alice").await.json());
    assert!(items.is_empty(), "nothing is assigned yet");
    let items = list_items(&server.list(&sam, "limit=2").await.json());
    assert_eq!(items.len(), 2);
    let items = list_items(&server.list(&carol, "inbox=billing").await.json());
    assert_eq!(ids(&items), set(&[&b1]));
    // An agent filtering on an inbox it may not see gets nothing from it.
    let items = list_items(&server.list(&agent("alice"), "inbox=billing").await.json());
    assert!(items.is_empty(), "{items:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn history_pages_with_after_and_limit() {
    let server = TestServer::start().await;
    let cust = customer("carol");
    let alice = agent("alice");
    let conv = server.open_as_customer(&cust).await;
    let mut a = server.client(&alice).await;
    for i in 0..6 {
        a.message(&conv, &format!("m{i}"), &format!("message {i}"))
            .await;
        a.note(&conv, &format!("n{i}"), &format!("note {i}")).await;
    }
    // Agent stream: 13 events; customer stream: 7.
    let page = server.history_page(&alice, &conv, 0, 5).await.json();
    let _: backchannel_protocol::http::HistoryPage =
        serde_json::from_value(page.clone()).expect("history page matches the protocol");
    assert_eq!(page["conversation_id"], conv.as_str());
    assert_eq!(seqs(page["events"].as_array().unwrap()), range(1, 5));
    assert_eq!(page["head"], 13);
    let page = server.history_page(&alice, &conv, 5, 5).await.json();
    assert_eq!(seqs(page["events"].as_array().unwrap()), range(6, 10));
    let page = server.history_page(&alice, &conv, 10, 5).await.json();
    assert_eq!(seqs(page["events"].as_array().unwrap()), range(11, 13));
    let page = server.history_page(&alice, &conv, 13, 5).await.json();
    assert!(page["events"].as_array().unwrap().is_empty());
    let page = server.history_page(&alice, &conv, 50, 5).await.json();
    assert!(page["events"].as_array().unwrap().is_empty());
    assert_eq!(page["head"], 13);

    // `after` is in the caller's stream: customer seq 3 is the second message.
    let page = server.history_page(&cust, &conv, 2, 2).await.json();
    let events = page["events"].as_array().unwrap();
    assert_eq!(seqs(events), vec![3, 4]);
    assert_eq!(events[0]["event"]["body"], "message 1");
    assert_eq!(page["head"], 7);
}

/// `/v1/ws` answers anything but a WebSocket upgrade (RFC 6455, version 13) with a 400
/// saying what is missing, and opens nothing.
#[tokio::test(flavor = "multi_thread")]
async fn the_websocket_endpoint_refuses_requests_that_are_not_an_upgrade() {
    let server = TestServer::start().await;
    let url = format!("{}/v1/ws", server.http.base);
    let upgrade = [
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    type Headers<'a> = Vec<(&'a str, &'a str)>;
    let cases: [(&str, Headers, &str); 4] = [
        ("a plain GET", vec![], "not a WebSocket upgrade"),
        (
            "no Upgrade header",
            upgrade
                .iter()
                .copied()
                .filter(|(k, _)| *k != "upgrade")
                .collect(),
            "not a WebSocket upgrade",
        ),
        (
            "version 8",
            upgrade
                .iter()
                .map(|&(k, v)| (k, if k == "sec-websocket-version" { "8" } else { v }))
                .collect(),
            "Sec-WebSocket-Version",
        ),
        (
            "no key",
            upgrade
                .iter()
                .copied()
                .filter(|(k, _)| *k != "sec-websocket-key")
                .collect(),
            "Sec-WebSocket-Key",
        ),
    ];
    for (case, headers, says) in cases {
        let mut request = server.http.client.get(&url);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let reply = request.send().await.expect("a reply");
        assert_eq!(reply.status().as_u16(), 400, "{case}");
        let body: Value = reply.json().await.expect("a JSON error");
        assert_eq!(body["error"]["code"], "bad_request", "{case}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{case}: {body}");
    }
    let metrics = server.http.get("/metrics", None).await.text;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("backchannel_connections ") && l.ends_with(" 0")),
        "no connection was counted: {metrics}"
    );
}
