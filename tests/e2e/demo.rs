//! The demo (`serve --demo`, `server/src/demo.rs`): without the flag none of its routes
//! exist; with it, the pages are served, `POST /demo/token` mints tokens for the demo
//! cast only, a demo token is a real one (it says `hello`, it opens a conversation), the
//! seed (team, tags, fields, directory, one sample conversation) is there once however
//! often the node starts, and the binary prints the URL to open.
//!
//! The pages themselves are driven in a real browser by `browser-tests/`.

use serde_json::{json, Value};

use crate::support::*;

const PAGES: [&str; 6] = [
    "/",
    "/demo/widget",
    "/demo/console",
    "/demo/supervisor",
    "/demo/widget.js",
    "/demo/assets/backchannel-client.js",
];

async fn demo_server() -> TestServer {
    TestServer::start_with(|config| config.demo = true).await
}

/// A demo token for `user`, as the pages get it.
async fn demo_token(http: &Http, user: &str) -> String {
    let reply = http
        .post("/demo/token", None, &json!({ "user": user }))
        .await;
    assert_eq!(reply.status, 200, "token for {user}: {}", reply.text);
    let body = reply.json();
    assert_eq!(body["user"]["id"], user, "{body}");
    assert!(body["expires_at"].as_u64().is_some_and(|exp| exp > now()));
    body["token"].as_str().expect("token").to_owned()
}

fn names(body: &Value, list: &str, key: &str) -> Vec<String> {
    body[list]
        .as_array()
        .unwrap_or_else(|| panic!("no `{list}` in {body}"))
        .iter()
        .map(|item| item[key].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn without_demo_every_demo_route_is_404() {
    let server = TestServer::start().await;
    for path in PAGES
        .iter()
        .chain(&["/demo/users", "/demo/assets/demo.css"])
    {
        server
            .http
            .get(path, None)
            .await
            .assert_error(404, "not_found");
    }
    server
        .http
        .post("/demo/token", None, &json!({"user": "alice"}))
        .await
        .assert_error(404, "not_found");
    // Nothing was seeded either.
    let tags = server.http.get("/v1/tags", Some(&agent("alice"))).await;
    assert_eq!(tags.status, 200, "{}", tags.text);
    assert!(
        names(&tags.json(), "tags", "name").is_empty(),
        "{}",
        tags.text
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_serves_its_pages() {
    let server = demo_server().await;
    for path in PAGES {
        let reply = server.http.get(path, None).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.text);
        let expected = if path.ends_with(".js") {
            "text/javascript"
        } else {
            "text/html"
        };
        assert!(
            reply.content_type.starts_with(expected),
            "{path}: {}",
            reply.content_type
        );
    }
    server
        .http
        .get("/demo/assets/nope.js", None)
        .await
        .assert_error(404, "not_found");
    // The API is still there beside it.
    assert_eq!(server.http.get("/healthz", None).await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_token_refuses_anyone_outside_the_cast() {
    let server = demo_server().await;
    for user in ["mallory", "Alice", "", "admin", "dave", "alice "] {
        server
            .http
            .post("/demo/token", None, &json!({ "user": user }))
            .await
            .assert_error(403, "forbidden");
    }
    for body in [
        json!({}),
        json!({"user": 1}),
        json!({"user": "alice", "role": "admin"}),
    ] {
        server
            .http
            .post("/demo/token", None, &body)
            .await
            .assert_error(400, "bad_request");
    }
    // A token is never kept by a cache on the way.
    let request = server
        .http
        .client
        .post(format!("{}/demo/token", server.http.base))
        .json(&json!({"user": "alice"}));
    let response = request.send().await.expect("a token");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response
            .headers()
            .get("cache-control")
            .map(|v| v.as_bytes()),
        Some(&b"no-store"[..])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_demo_token_says_hello_and_works() {
    let server = demo_server().await;
    for (user, role) in [
        ("carol", "customer"),
        ("alice", "agent"),
        ("bob", "agent"),
        ("sam", "supervisor"),
    ] {
        let token = demo_token(&server.http, user).await;
        let mut client = server.connect().await;
        let welcome = client.hello(&token).await;
        assert_eq!(welcome["user"]["id"], user, "{welcome}");
        assert_eq!(welcome["user"]["role"], role, "{welcome}");
    }

    // The customer opens a conversation; the agents of the demo inbox see it.
    let carol = demo_token(&server.http, "carol").await;
    let conversation = server.open_as_customer(&carol).await;
    let alice = demo_token(&server.http, "alice").await;
    let view = server.conversation(&alice, &conversation).await.json();
    assert_eq!(view["contact_id"], "carol", "{view}");

    // The seed: the team, tags, fields, and the staff known before they sign in (so a
    // transfer to Bob works although Bob never presented a token here).
    let teams = server.http.get("/v1/teams", Some(&alice)).await.json();
    assert_eq!(names(&teams, "teams", "id"), vec!["tier2"]);
    let tags = names(
        &server.http.get("/v1/tags", Some(&alice)).await.json(),
        "tags",
        "name",
    );
    for tag in ["vip", "billing"] {
        assert!(tags.contains(&tag.to_owned()), "{tags:?}");
    }
    let fields = names(
        &server.http.get("/v1/fields", Some(&alice)).await.json(),
        "fields",
        "key",
    );
    for field in ["plan", "account_tier"] {
        assert!(fields.contains(&field.to_owned()), "{fields:?}");
    }
    let transfer = server
        .http
        .post(
            &format!("/v1/conversations/{conversation}/assign"),
            Some(&alice),
            &json!({"assignee_id": "bob", "team_id": "tier2", "note": "over to you"}),
        )
        .await;
    assert_eq!(transfer.status, 200, "{}", transfer.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_prints_the_demo_url_and_seeds_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut first = ServerProcess::spawn_with(dir.path(), &["--demo"]).await;
    let url = format!("demo: open http://{}/", first.addr);
    // The line follows `listening on`, which is all `spawn_with` waits for.
    let deadline = tokio::time::Instant::now() + STEP;
    while !first.output().contains(&url) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(first.output().contains(&url), "{}", first.output());
    let sam = demo_token(&first.http, "sam").await;
    let before = first.http.list(&sam, "").await.json();
    assert_eq!(
        list_items(&before).len(),
        1,
        "one sample conversation: {before}"
    );
    first.sigterm();
    assert!(first.wait(STEP).await.success());

    let second = ServerProcess::spawn_with(dir.path(), &["--demo"]).await;
    let sam = demo_token(&second.http, "sam").await;
    let after = second.http.list(&sam, "").await.json();
    assert_eq!(list_items(&after).len(), 1, "seeded again: {after}");
    let tags = names(
        &second.http.get("/v1/tags", Some(&sam)).await.json(),
        "tags",
        "name",
    );
    assert_eq!(tags.iter().filter(|t| *t == "vip").count(), 1, "{tags:?}");

    // The same binary without the flag: no demo.
    second.sigterm();
    let mut second = second;
    assert!(second.wait(STEP).await.success());
    let plain = ServerProcess::spawn(dir.path()).await;
    assert!(!plain.output().contains("demo:"), "{}", plain.output());
    plain
        .http
        .get("/", None)
        .await
        .assert_error(404, "not_found");
}
