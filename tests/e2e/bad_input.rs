//! Bad input changes nothing and is answered, not crashed on: invalid JSON, a binary
//! frame, a missing or unknown `type`, missing and mistyped fields, out-of-range bodies
//! and client ids all get `bad_request` (under the frame's `ref` when it has one, exactly
//! once); unknown ids and conversations the caller may not see answer `not_found`
//! (indistinguishably); role refusals answer `forbidden`; a frame over 64 KiB closes the
//! socket with 1009. After each bad input the store is checked unchanged through the HTTP
//! history heads of all three streams.

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::*;

/// What the store holds, as seen from outside: every stream's head and the list sizes.
#[derive(Debug, PartialEq, Eq, Clone)]
struct StoreState {
    heads: (u64, u64, u64),
    conversations: usize,
}

struct Scene {
    server: TestServer,
    conv: String,
    cust: String,
    alice: String,
    sam: String,
}

impl Scene {
    async fn new() -> Scene {
        Self::with(TestServer::start().await).await
    }

    async fn with(server: TestServer) -> Scene {
        let cust = customer("carol");
        let alice = agent("alice");
        let sam = supervisor("sam");
        let conv = server.open_as_customer(&cust).await;
        let mut a = server.client(&alice).await;
        a.message(&conv, "a1", "hello from support").await;
        a.note(&conv, "n1", "internal").await;
        Scene {
            server,
            conv,
            cust,
            alice,
            sam,
        }
    }

    async fn state(&self) -> StoreState {
        let heads = (
            self.server.head(&self.cust, &self.conv).await,
            self.server.head(&self.alice, &self.conv).await,
            self.server.head(&self.sam, &self.conv).await,
        );
        let list = self.server.list(&self.sam, "").await;
        StoreState {
            heads,
            conversations: list_items(&list.json()).len(),
        }
    }
}

/// Sends `text` and expects exactly one `bad_request` with `reference` (or none).
/// Returns what was wrong, so a table of cases can report every failing case at once.
async fn expect_bad_request(ws: &mut Client, text: &str, reference: Option<Value>) -> Vec<String> {
    let mut problems = Vec::new();
    ws.send_text(text).await;
    let frame = ws.next_frame(STEP).await;
    if ty(&frame) != "error" || frame["code"] != "bad_request" || !frame["message"].is_string() {
        problems.push(format!("{text}: expected a bad_request error, got {frame}"));
    }
    match &reference {
        Some(r) => {
            if &frame["ref"] != r {
                problems.push(format!(
                    "{text}: the error should carry ref {r}, got {frame}"
                ));
            }
        }
        None => {
            if !frame.get("ref").is_none_or(Value::is_null) {
                problems.push(format!(
                    "{text}: no ref was sent, none should come back: {frame}"
                ));
            }
        }
    }
    // Exactly one answer: nothing else arrives before the barrier's answer.
    ws.sync().await;
    let extra = ws.take_pending();
    if !extra.is_empty() {
        problems.push(format!("{text}: more than one answer: {extra:?}"));
    }
    if let Some(r) = &reference {
        if ws.answers_for(r) > 1 {
            problems.push(format!(
                "{text}: ref {r} answered {} times",
                ws.answers_for(r)
            ));
        }
    }
    problems
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_frames_get_bad_request_and_change_nothing() {
    let scene = Scene::new().await;
    let conv = scene.conv.as_str();
    let before = scene.state().await;
    let mut ws = scene.server.client(&scene.alice).await;
    ws.subscribe(conv, Some(3)).await;

    let long_client_id = "k".repeat(129);
    let long_body = "b".repeat(16 * 1024 + 1);
    let long_unicode_body = "€".repeat(6000); // 6,000 characters, 18,000 bytes
    let cases: Vec<(String, Option<Value>)> = vec![
        (r#"{"type":"#.into(), None),
        ("not json at all".into(), None),
        ("[1,2,3]".into(), None),
        (r#""hello""#.into(), None),
        ("{}".into(), None),
        (r#"{"ref":"m1"}"#.into(), Some(json!("m1"))),
        (r#"{"type":"frobnicate","ref":2}"#.into(), Some(json!(2))),
        (r#"{"type":42,"ref":"m3"}"#.into(), Some(json!("m3"))),
        (json!({"type":"send","ref":"s1","conversation_id":conv,"client_id":"x1"}).to_string(), Some(json!("s1"))),
        (json!({"type":"send","ref":"s2","conversation_id":conv,"client_id":"x2","body":7}).to_string(), Some(json!("s2"))),
        (json!({"type":"send","ref":"s3","conversation_id":"not-a-uuid","client_id":"x3","body":"hi"}).to_string(), Some(json!("s3"))),
        (json!({"type":"send","ref":"s4","conversation_id":42,"client_id":"x4","body":"hi"}).to_string(), Some(json!("s4"))),
        (json!({"type":"send","ref":"s5","conversation_id":conv,"client_id":"","body":"hi"}).to_string(), Some(json!("s5"))),
        (json!({"type":"send","ref":"s6","conversation_id":conv,"client_id":long_client_id,"body":"hi"}).to_string(), Some(json!("s6"))),
        (json!({"type":"send","ref":"s7","conversation_id":conv,"client_id":"x7","body":""}).to_string(), Some(json!("s7"))),
        (json!({"type":"send","ref":"s8","conversation_id":conv,"client_id":"x8","body":long_body}).to_string(), Some(json!("s8"))),
        (json!({"type":"send","ref":"s9","conversation_id":conv,"client_id":"x9","body":long_unicode_body}).to_string(), Some(json!("s9"))),
        (json!({"type":"send","ref":"s10","conversation_id":conv,"body":"hi"}).to_string(), Some(json!("s10"))),
        (json!({"type":"note","ref":"n1","conversation_id":conv,"client_id":"y1","body":"hi","note_type":"bogus"}).to_string(), Some(json!("n1"))),
        (json!({"type":"note","ref":"n2","conversation_id":conv,"client_id":"y2","body":"hi","audience":"everyone"}).to_string(), Some(json!("n2"))),
        (json!({"type":"note","ref":"n3","conversation_id":conv,"client_id":"y3","body":long_body}).to_string(), Some(json!("n3"))),
        (json!({"type":"note","ref":"n4","conversation_id":conv,"client_id":"y4","body":["hi"]}).to_string(), Some(json!("n4"))),
        (json!({"type":"subscribe","ref":"b1","conversation_id":conv,"since":-1}).to_string(), Some(json!("b1"))),
        (json!({"type":"subscribe","ref":"b2","conversation_id":conv,"since":"0"}).to_string(), Some(json!("b2"))),
        (json!({"type":"subscribe","ref":"b3"}).to_string(), Some(json!("b3"))),
        (json!({"type":"typing","ref":"t1","conversation_id":conv,"audience":"loud"}).to_string(), Some(json!("t1"))),
        (json!({"type":"typing","ref":"t2","conversation_id":conv}).to_string(), Some(json!("t2"))),
        // Without a ref, a failing command is still answered (without a ref).
        (json!({"type":"send","conversation_id":conv,"client_id":"x11","body":""}).to_string(), None),
    ];
    let mut problems = Vec::new();
    for (text, reference) in &cases {
        problems.extend(expect_bad_request(&mut ws, text, reference.clone()).await);
        assert_eq!(
            scene.state().await,
            before,
            "the store changed after {text}"
        );
    }

    // A `ref` that is neither a string nor a number.
    for text in [
        r#"{"type":"ping","ref":{"id":1}}"#,
        r#"{"type":"ping","ref":[1]}"#,
        r#"{"type":"ping","ref":true}"#,
    ] {
        ws.send_text(text).await;
        let frame = ws.next_frame(STEP).await;
        if ty(&frame) != "error" || frame["code"] != "bad_request" {
            problems.push(format!("{text}: expected a bad_request error, got {frame}"));
        }
        ws.sync().await;
        let extra = ws.take_pending();
        if !extra.is_empty() {
            problems.push(format!("{text}: more than one answer: {extra:?}"));
        }
    }
    assert!(
        problems.is_empty(),
        "bad input mishandled:\n{}",
        problems.join("\n")
    );

    // A binary frame.
    ws.send_binary(br#"{"type":"ping","ref":"bin"}"#.to_vec())
        .await;
    let frame = ws.next_frame(STEP).await;
    assert_eq!(ty(&frame), "error", "{frame}");
    assert_eq!(frame["code"], "bad_request");
    ws.sync().await;
    assert!(ws.take_pending().is_empty());
    assert_eq!(scene.state().await, before);

    // Through all of that the socket stayed usable and nothing was consumed: the next
    // write takes the next seq, and the subscription delivers it.
    let ok = ws.message(conv, "after-bad-input", "still here").await;
    assert_eq!(ok["seq"], before.heads.1 + 1);
    let event = ws.next_event().await;
    assert_eq!(event["seq"], before.heads.1 + 1);
    // The body limit is 16 KiB: exactly 16 KiB is fine.
    let ok = ws
        .message(conv, "exactly-16k", &"b".repeat(16 * 1024))
        .await;
    assert_eq!(ok["seq"], before.heads.1 + 2);
    // And a 128-byte client_id.
    let ok = ws.message(conv, &"k".repeat(128), "long key").await;
    assert_eq!(ok["seq"], before.heads.1 + 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_ref_is_answered_exactly_once_and_frames_without_ref_only_on_failure() {
    let scene = Scene::new().await;
    let conv = scene.conv.as_str();
    let mut ws = scene.server.client(&scene.cust).await;

    // ping: `pong` without a ref, `ok` with one (echoed with its JSON type).
    ws.send_json(&json!({"type": "ping"})).await;
    assert_eq!(ty(&ws.next_frame(STEP).await), "pong");
    ws.send_json(&json!({"type": "ping", "ref": 41})).await;
    let ok = ws.next_frame(STEP).await;
    assert_eq!(ty(&ok), "ok", "{ok}");
    assert_eq!(ok["ref"], json!(41), "a numeric ref comes back as a number");
    ws.send_json(&json!({"type": "ping", "ref": "forty-two"}))
        .await;
    let ok = ws.next_frame(STEP).await;
    assert_eq!(ok["ref"], json!("forty-two"));

    // subscribe without a ref: the replay, but no ok.
    ws.send_json(&json!({"type": "subscribe", "conversation_id": conv}))
        .await;
    ws.sync().await;
    let frames = ws.take_pending();
    all_events(&frames);
    assert_eq!(seqs(&frames), vec![1, 2]);

    // send without a ref: the event arrives on the subscription, but no ok.
    ws.send_json(&send_frame(conv, "quiet", "no answer expected"))
        .await;
    let event = ws.next_event().await;
    assert_eq!(event["seq"], 3);
    ws.sync().await;
    assert!(
        ws.take_pending().is_empty(),
        "no ok for a frame without a ref"
    );

    // A failing frame without a ref: an error without a ref.
    ws.send_json(&note_frame(conv, "nope", "customers can't"))
        .await;
    let error = ws.next_frame(STEP).await;
    assert_eq!(ty(&error), "error");
    assert_eq!(error["code"], "forbidden");
    assert!(error.get("ref").is_none_or(Value::is_null), "{error}");

    // Several commands in a row with refs: one answer each, in order.
    let refs: Vec<Value> = vec![json!("a"), json!(2), json!("c"), json!(4)];
    ws.send_json(&json!({"type": "ping", "ref": refs[0]})).await;
    ws.send_json(&json!({"type": "send", "ref": refs[1], "conversation_id": conv, "client_id": "burst", "body": "x"})).await;
    ws.send_json(&json!({"type": "note", "ref": refs[2], "conversation_id": conv, "client_id": "burst2", "body": "x"})).await;
    ws.send_json(&json!({"type": "unsubscribe", "ref": refs[3], "conversation_id": conv}))
        .await;
    ws.sync().await;
    let frames = ws.take_pending();
    let answers: Vec<&Value> = frames
        .iter()
        .filter(|f| matches!(ty(f), "ok" | "error"))
        .collect();
    let answered: Vec<Value> = answers.iter().map(|f| f["ref"].clone()).collect();
    assert_eq!(answered, refs, "one answer per ref, in order: {frames:?}");
    assert_eq!(ty(answers[1]), "ok");
    assert_eq!(ty(answers[2]), "error");
    assert_eq!(answers[2]["code"], "forbidden");
    for r in &refs {
        assert_eq!(ws.answers_for(r), 1, "ref {r} answered once");
    }
}

/// Replaces `id` in an error message or body so two refusals can be compared.
fn without(text: &str, id: &str) -> String {
    text.replace(id, "<id>")
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_and_invisible_conversations_are_indistinguishable_not_found() {
    let scene = Scene::new().await;
    let server = &scene.server;
    let root = admin("root");
    let reply = server
        .http
        .put(
            "/v1/inboxes/billing",
            Some(&root),
            &json!({"name": "Billing"}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let billing = server.open(&customer("dave"), "billing", None).await;
    let billing = billing["id"].as_str().unwrap().to_owned();
    let nowhere = uuid::Uuid::new_v4().to_string();
    let before = scene.state().await;

    // alice works in `support` only; carol is not billing's contact.
    let mut alice = server.client(&scene.alice).await;
    let mut carol = server.client(&scene.cust).await;
    let probes: [fn(&str) -> Value; 3] = [
        |c| json!({"type": "subscribe", "conversation_id": c}),
        |c| json!({"type": "subscribe", "conversation_id": c, "since": 0}),
        |c| send_frame(c, "probe", "hello?"),
    ];
    for ws in [&mut alice, &mut carol] {
        for make in probes {
            let hidden = ws.error_code(make(&billing), "not_found").await;
            let missing = ws.error_code(make(&nowhere), "not_found").await;
            assert_eq!(
                without(hidden["message"].as_str().unwrap(), &billing),
                without(missing["message"].as_str().unwrap(), &nowhere),
                "a hidden conversation must answer exactly like a missing one"
            );
        }
    }
    let hidden = alice
        .error_code(note_frame(&billing, "probe-n", "x"), "not_found")
        .await;
    let missing = alice
        .error_code(note_frame(&nowhere, "probe-n", "x"), "not_found")
        .await;
    assert_eq!(
        without(hidden["message"].as_str().unwrap(), &billing),
        without(missing["message"].as_str().unwrap(), &nowhere)
    );

    for token in [&scene.alice, &scene.cust] {
        for suffix in ["", "/events", "/events?after=0"] {
            let hidden = server
                .http
                .get(&format!("/v1/conversations/{billing}{suffix}"), Some(token))
                .await;
            let missing = server
                .http
                .get(&format!("/v1/conversations/{nowhere}{suffix}"), Some(token))
                .await;
            hidden.assert_error(404, "not_found");
            missing.assert_error(404, "not_found");
            assert_eq!(
                without(&hidden.text, &billing),
                without(&missing.text, &nowhere)
            );
        }
        let list = server.list(token, "").await;
        assert!(
            !list.text.contains(&billing),
            "listed a hidden conversation"
        );
    }
    assert_eq!(scene.state().await, before);

    // Controls: the same requests succeed for someone who may see it.
    let mut any_inbox = server.client(&agent_in("wanda", &["*"])).await;
    any_inbox.subscribe(&billing, None).await;
    let mut billing_agent = server.client(&agent_in("bill", &["billing"])).await;
    billing_agent.subscribe(&billing, None).await;
    billing_agent
        .error_code(
            json!({"type": "subscribe", "conversation_id": scene.conv}),
            "not_found",
        )
        .await;
    // An agent with no inboxes claim sees nothing.
    let nobody = sign(&claims("agent", "nobody"));
    let mut ws = server.client(&nobody).await;
    ws.error_code(
        json!({"type": "subscribe", "conversation_id": scene.conv}),
        "not_found",
    )
    .await;
    let list = server.list(&nobody, "").await;
    assert!(list_items(&list.json()).is_empty(), "{}", list.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn role_refusals_are_forbidden_and_change_nothing() {
    let scene = Scene::new().await;
    let conv = scene.conv.as_str();
    let before = scene.state().await;
    let mut carol = scene.server.client(&scene.cust).await;
    carol.subscribe(conv, None).await;
    let mut alice = scene.server.client(&scene.alice).await;
    alice.subscribe(conv, None).await;

    carol
        .error_code(note_frame(conv, "c-n", "customer note"), "forbidden")
        .await;
    carol
        .error_code(
            json!({"type": "typing", "conversation_id": conv, "audience": "internal"}),
            "forbidden",
        )
        .await;
    alice
        .error_code(
            json!({"type": "note", "conversation_id": conv, "client_id": "a-s",
                   "body": "for supervisors", "audience": "supervisors"}),
            "forbidden",
        )
        .await;
    assert_eq!(scene.state().await, before);

    // Typing needs a subscription.
    let mut unsubscribed = scene.server.client(&agent("bob")).await;
    unsubscribed
        .error(json!({"type": "typing", "conversation_id": conv, "audience": "public"}))
        .await;
    carol.sync().await;
    alice.sync().await;
    carol.expect_silence(QUIET).await;
    alice
        .expect_silence(std::time::Duration::from_millis(50))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frame_over_64_kib_closes_the_socket_with_1009() {
    let scene = Scene::new().await;
    let conv = scene.conv.as_str();
    let before = scene.state().await;

    // Control: a 60 KB frame (a small message with padding) is accepted.
    let mut ws = scene.server.client(&scene.alice).await;
    let mut frame = send_frame(conv, "padded", "under the limit");
    frame["pad"] = json!("p".repeat(60_000));
    let ok = ws.ok(frame).await;
    assert_eq!(ok["seq"], before.heads.1 + 1);
    let before = scene.state().await;

    // Over the limit: the same message with more padding closes the socket.
    let mut frame = send_frame(conv, "too-big", "over the limit");
    frame["ref"] = json!("big");
    frame["pad"] = json!("p".repeat(64 * 1024));
    ws.send_json(&frame).await;
    let (frames, closed) = ws.drain_until_close(STEP).await;
    assert_eq!(closed.code, Some(1009), "{closed:?}");
    assert!(
        frames.iter().all(|f| ty(f) != "ok"),
        "the oversize frame was executed: {frames:?}"
    );
    assert_eq!(scene.state().await, before, "nothing stored");

    // The server is fine: a new socket works.
    let mut ws = scene.server.client(&scene.alice).await;
    ws.sync().await;
}

/// NUL is refused in every text a client gives, with `bad_request` on both engines
/// (PostgreSQL's text cannot hold it: it answered 503, or stored U+FFFD while echoing
/// NUL), and nothing is stored.
#[tokio::test(flavor = "multi_thread")]
async fn nul_is_refused_in_every_text_field() {
    let scene = Scene::new().await;
    let server = &scene.server;
    let root = admin("root");
    let defined = server
        .http
        .put(
            "/v1/fields/plan",
            Some(&root),
            &json!({"type": "text", "applies_to": "conversation", "label": "Plan"}),
        )
        .await;
    assert_eq!(defined.status, 200, "{}", defined.text);
    let before = scene.state().await;
    let cases = [
        ("/v1/inboxes/legal", json!({"name": "Le\0gal"}), "PUT"),
        ("/v1/teams/tier3", json!({"name": "Tier\0 3"}), "PUT"),
        ("/v1/tags/vip", json!({"color": "red\0"}), "PUT"),
        ("/v1/tags/vip", json!({"description": "\0"}), "PUT"),
        (
            "/v1/fields/tier",
            json!({"type": "text", "applies_to": "conversation", "label": "T\0"}),
            "PUT",
        ),
        (
            "/v1/fields/values",
            json!({"target": "conversation", "id": scene.conv, "fields": {"plan": "p\0ro"}}),
            "POST",
        ),
        (
            "/v1/conversations",
            json!({"inbox_id": "support", "contact_id": "eve\0"}),
            "POST",
        ),
    ];
    for (path, body, method) in cases {
        let reply = if method == "PUT" {
            server.http.put(path, Some(&root), &body).await
        } else {
            server.http.post(path, Some(&root), &body).await
        };
        reply.assert_error(400, "bad_request");
        assert!(!reply.text.contains("\\u0000"), "{path}: {}", reply.text);
    }
    assert_eq!(scene.state().await, before);
    for path in ["/v1/teams", "/v1/tags", "/v1/fields"] {
        let listed = server.http.get(path, Some(&root)).await;
        assert_eq!(listed.status, 200, "{}", listed.text);
        assert!(!listed.text.contains("\\u0000"), "{path}: {}", listed.text);
    }
    let view = server.conversation(&scene.alice, &scene.conv).await;
    assert!(!view.text.contains("\\u0000"), "{}", view.text);
}

/// Every HTTP error has the contract's JSON body: a method a path does not take (405)
/// and a path segment that is not UTF-8 once decoded (400) included.
#[tokio::test(flavor = "multi_thread")]
async fn every_http_error_is_json() {
    let scene = Scene::new().await;
    let http = &scene.server.http;
    let token = Some(scene.alice.as_str());
    let conv = format!("/v1/conversations/{}", scene.conv);
    let messages = format!("{conv}/messages");
    let cases = [
        (Method::DELETE, "/v1/conversations", 405, "bad_request"),
        (Method::PATCH, conv.as_str(), 405, "bad_request"),
        (Method::GET, messages.as_str(), 405, "bad_request"),
        (Method::POST, "/healthz", 405, "bad_request"),
        (Method::GET, "/v1/conversations/%FF", 400, "bad_request"),
        (Method::PUT, "/v1/tags/%FF", 400, "bad_request"),
        (Method::GET, "/v1/contacts/%FF%FE", 400, "bad_request"),
        (Method::GET, "/v1/nothing-here", 404, "not_found"),
    ];
    for (method, path, status, code) in cases {
        let reply = http.raw(method.clone(), path, token, "{}").await;
        assert_eq!(reply.content_type, "application/json", "{method} {path}");
        assert_eq!(reply.status, status, "{method} {path}: {}", reply.text);
        assert_eq!(reply.error_code(), code, "{method} {path}: {}", reply.text);
    }
}

/// A frame that breaks the WebSocket protocol closes the socket with the code RFC 6455
/// gives it (1002; 1007 for text that is not UTF-8), not without one.
#[tokio::test(flavor = "multi_thread")]
async fn websocket_protocol_errors_close_with_their_code() {
    let server = TestServer::start().await;
    // Client frames, masked with the key 0 (so the payload reads as written).
    let cases: [(&str, &[u8], u16); 4] = [
        (
            "text not UTF-8",
            &[0x81, 0x82, 0, 0, 0, 0, 0xFF, 0xFE],
            1007,
        ),
        ("reserved bit set", &[0xC1, 0x81, 0, 0, 0, 0, b'x'], 1002),
        ("unknown opcode", &[0x83, 0x80, 0, 0, 0, 0], 1002),
        ("fragmented ping", &[0x09, 0x80, 0, 0, 0, 0], 1002),
    ];
    for (what, frame, code) in cases {
        let mut ws = server.client(&agent("alice")).await;
        ws.send_raw(frame).await;
        let closed = ws.expect_close(STEP).await;
        assert_eq!(closed.code, Some(code), "{what}: {closed:?}");
    }
    // The node is fine.
    server.client(&agent("alice")).await.sync().await;
}

/// `Authorization` schemes are case-insensitive (RFC 9110): `bearer` works as `Bearer`.
#[tokio::test(flavor = "multi_thread")]
async fn the_bearer_scheme_is_case_insensitive() {
    let scene = Scene::new().await;
    let http = &scene.server.http;
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let request = http
            .client
            .get(format!("{}/v1/conversations", http.base))
            .header("authorization", format!("{scheme} {}", scene.alice));
        let reply = http.send(request).await;
        assert_eq!(reply.status, 200, "{scheme}: {}", reply.text);
    }
    let request = http
        .client
        .get(format!("{}/v1/conversations", http.base))
        .header("authorization", format!("Basic {}", scene.alice));
    http.send(request).await.assert_error(401, "unauthorized");
}

/// A `client_id` stands for one command. A retry gets the first result back; the same
/// key on another command (another conversation, the other kind, or the same subject
/// under another role) is `bad_request` and stores nothing: answering it with the first
/// result acknowledged a command that was never stored.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_id_reused_for_another_command_is_refused_and_stores_nothing() {
    let scene = Scene::new().await;
    let server = &scene.server;
    let other = server.open_as_customer(&customer("dora")).await;
    let mut alice = server.client(&scene.alice).await;
    let first = alice.message(&scene.conv, "k1", "hello again").await;
    let note = alice.note(&scene.conv, "k2", "internal").await;

    // The true retries, over the socket and over HTTP.
    let retry = alice.message(&scene.conv, "k1", "hello again").await;
    assert_eq!(retry["duplicate"], true, "{retry}");
    assert_eq!(retry["event_id"], first["event_id"]);
    let reply = server
        .http
        .post(
            &format!("/v1/conversations/{}/messages", scene.conv),
            Some(&scene.alice),
            &json!({"client_id": "k1", "body": "hello again"}),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    assert_eq!(reply.json()["duplicate"], true, "{}", reply.text);
    assert_eq!(reply.json()["event_id"], first["event_id"]);

    // A customer whose subject is an agent's (tokens are the integrator's to mint).
    let namesake = customer("alice");
    let namesake_conv = server.open_as_customer(&namesake).await;
    let before = (scene.state().await, server.head(&scene.alice, &other).await);
    let reused = [
        send_frame(&other, "k1", "hello again"),
        note_frame(&scene.conv, "k1", "hello again"),
        send_frame(&scene.conv, "k2", "internal"),
    ];
    for frame in reused {
        let error = alice.error_code(frame.clone(), "bad_request").await;
        let message = error["message"].as_str().unwrap_or_default();
        assert!(message.contains("client_id"), "{frame}: {error}");
        assert!(!message.contains("internal"), "{frame}: {error}");
    }
    let reply = server
        .http
        .post(
            &format!("/v1/conversations/{other}/messages"),
            Some(&scene.alice),
            &json!({"client_id": "k1", "body": "hello again"}),
        )
        .await;
    reply.assert_error(400, "bad_request");
    // The namesake customer reusing the agent's key for a note it cannot see: a clear
    // refusal, not a 500 and not the note's id.
    let reply = server
        .http
        .post(
            &format!("/v1/conversations/{namesake_conv}/messages"),
            Some(&namesake),
            &json!({"client_id": "k2", "body": "internal"}),
        )
        .await;
    reply.assert_error(400, "bad_request");
    assert!(!reply.text.contains(note["event_id"].as_str().unwrap()));
    assert_eq!(server.head(&namesake, &namesake_conv).await, 1);
    assert_eq!(
        (scene.state().await, server.head(&scene.alice, &other).await),
        before,
        "nothing was stored"
    );
}

/// `after` is any u64: one past every seq, however large, reads an empty page with the
/// head, never the stream from its start.
#[tokio::test(flavor = "multi_thread")]
async fn a_history_bound_past_the_head_reads_nothing() {
    let scene = Scene::new().await;
    for (who, token) in [("customer", &scene.cust), ("agent", &scene.alice)] {
        let head = scene.server.head(token, &scene.conv).await;
        for after in [head, 1 << 63, u64::MAX] {
            let reply = scene
                .server
                .http
                .get(
                    &format!("/v1/conversations/{}/events?after={after}", scene.conv),
                    Some(token),
                )
                .await;
            assert_eq!(reply.status, 200, "{who} after={after}: {}", reply.text);
            let page = reply.json();
            assert_eq!(page["events"], json!([]), "{who} after={after}: {page}");
            assert_eq!(page["head"], head, "{who} after={after}: {page}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn http_bad_input_is_refused_and_changes_nothing() {
    let scene = Scene::new().await;
    let server = &scene.server;
    let before = scene.state().await;
    let cust = scene.cust.as_str();
    let alice = scene.alice.as_str();
    let root = admin("root");
    use reqwest::Method;

    let cases: Vec<(Reply, u16, &str)> = vec![
        (
            server
                .http
                .raw(
                    Method::POST,
                    "/v1/conversations",
                    Some(cust),
                    "{\"inbox_id\":",
                )
                .await,
            400,
            "bad_request",
        ),
        (
            server
                .http
                .raw(Method::POST, "/v1/conversations", Some(cust), "[]")
                .await,
            400,
            "bad_request",
        ),
        (
            server
                .http
                .post("/v1/conversations", Some(cust), &json!({}))
                .await,
            400,
            "bad_request",
        ),
        (
            server
                .http
                .post("/v1/conversations", Some(cust), &json!({"inbox_id": 5}))
                .await,
            400,
            "bad_request",
        ),
        (
            server
                .http
                .post(
                    "/v1/conversations",
                    Some(cust),
                    &json!({"inbox_id": "support", "surprise": true}),
                )
                .await,
            400,
            "bad_request",
        ),
        (
            server
                .http
                .post(
                    "/v1/conversations",
                    Some(cust),
                    &json!({"inbox_id": "no such inbox!"}),
                )
                .await,
            400,
            "bad_request",
        ),
        (
            server
                .http
                .post(
                    "/v1/conversations",
                    Some(cust),
                    &json!({"inbox_id": "x".repeat(65)}),
                )
                .await,
            400,
            "bad_request",
        ),
        (
            server
                .http
                .post(
                    "/v1/conversations",
                    Some(cust),
                    &json!({"inbox_id": "nowhere"}),
                )
                .await,
            404,
            "not_found",
        ),
        (
            server
                .http
                .post(
                    "/v1/conversations",
                    Some(alice),
                    &json!({"inbox_id": "support"}),
                )
                .await,
            400,
            "bad_request",
        ),
        (
            server
                .http
                .raw(
                    Method::POST,
                    "/v1/conversations",
                    Some(cust),
                    json!({"inbox_id": "support", "subject": "s".repeat(70 * 1024)}).to_string(),
                )
                .await,
            413,
            "too_large",
        ),
        (
            server
                .http
                .get("/v1/conversations/not-a-uuid", Some(cust))
                .await,
            400,
            "bad_request",
        ),
        (
            server
                .http
                .get("/v1/conversations/not-a-uuid/events", Some(cust))
                .await,
            400,
            "bad_request",
        ),
        (
            server
                .http
                .get(
                    &format!("/v1/conversations/{}/events?after=-1", scene.conv),
                    Some(cust),
                )
                .await,
            400,
            "bad_request",
        ),
        (
            server
                .http
                .get(
                    &format!("/v1/conversations/{}/events?limit=ten", scene.conv),
                    Some(cust),
                )
                .await,
            400,
            "bad_request",
        ),
        (
            server
                .http
                .raw(
                    Method::PUT,
                    "/v1/inboxes/billing",
                    Some(&root),
                    "{\"name\":",
                )
                .await,
            400,
            "bad_request",
        ),
        (
            server
                .http
                .put(
                    "/v1/inboxes/billing",
                    Some(&root),
                    &json!({"name": "B", "color": "red"}),
                )
                .await,
            400,
            "bad_request",
        ),
        (
            server
                .http
                .put("/v1/inboxes/bad%20id!", Some(&root), &json!({"name": "B"}))
                .await,
            400,
            "bad_request",
        ),
        (
            server
                .http
                .put(
                    &format!("/v1/inboxes/{}", "i".repeat(65)),
                    Some(&root),
                    &json!({}),
                )
                .await,
            400,
            "bad_request",
        ),
    ];
    for (i, (reply, status, code)) in cases.iter().enumerate() {
        assert_eq!(reply.status, *status, "case {i}: {}", reply.text);
        assert_eq!(reply.error_code(), *code, "case {i}: {}", reply.text);
    }
    assert_eq!(scene.state().await, before, "the store changed");
    // None of the refused inbox definitions exist.
    let reply = server
        .http
        .post(
            "/v1/conversations",
            Some(cust),
            &json!({"inbox_id": "billing"}),
        )
        .await;
    reply.assert_error(404, "not_found");
}
