//! Identity: every token the contract refuses (alg none, HS384/HS512, a bad signature, a
//! missing or past `exp`, an unknown role, an empty or over-long `sub`, garbage) gets HTTP
//! 401 `unauthorized` and, on a socket, close 4001 with no welcome; a socket that says
//! nothing (or something other than `hello`) within the hello timeout is closed with
//! 4001; the Origin allow-list refuses other origins with HTTP 403; the welcome has the
//! documented shape; tokens printed by `backchannel token` are accepted.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::process::run_cli;
use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn http_refuses_every_bad_token_with_401() {
    let server = TestServer::start().await;
    // Control: a good token works.
    let good = agent("alice");
    let reply = server.http.get("/v1/conversations", Some(&good)).await;
    assert_eq!(reply.status, 200, "{}", reply.text);

    for (label, token) in refused_tokens() {
        let reply = server.http.get("/v1/conversations", Some(&token)).await;
        assert_eq!(reply.status, 401, "{label}: {}", reply.text);
        assert_eq!(reply.error_code(), "unauthorized", "{label}");
    }
    let reply = server.http.get("/v1/conversations", None).await;
    reply.assert_error(401, "unauthorized");
    let reply = server
        .http
        .send(
            server
                .http
                .client
                .get(format!("{}/v1/conversations", server.http.base))
                .header("Authorization", format!("Basic {}", b64url(b"alice:pw"))),
        )
        .await;
    reply.assert_error(401, "unauthorized");
    // Writes are refused the same way, and create nothing.
    let reply = server
        .http
        .post(
            "/v1/conversations",
            Some(&unsigned(&claims("customer", "eve"))),
            &json!({"inbox_id": "support"}),
        )
        .await;
    reply.assert_error(401, "unauthorized");
    let listed = server.list(&supervisor("sam"), "").await;
    assert!(
        list_items(&listed.json()).is_empty(),
        "nothing was created: {}",
        listed.text
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn socket_with_a_refused_token_is_closed_with_4001() {
    let server = TestServer::start().await;
    for (label, token) in refused_tokens() {
        let mut ws = server.connect().await;
        ws.send_json(&json!({"type": "hello", "token": token}))
            .await;
        let (frames, closed) = ws.drain_until_close(STEP).await;
        assert_eq!(closed.code, Some(4001), "{label}: closed with {closed:?}");
        assert!(
            frames.iter().all(|f| ty(f) != "welcome"),
            "{label}: got a welcome: {frames:?}"
        );
        // The close code says unauthorized; the error before it says why.
        let errors: Vec<&Value> = frames.iter().filter(|f| ty(f) == "error").collect();
        assert_eq!(errors.len(), 1, "{label}: {frames:?}");
        assert_eq!(errors[0]["code"], "unauthorized", "{label}: {frames:?}");
        assert!(
            errors[0]["message"].as_str().is_some_and(|m| m.len() > 5),
            "{label}: {frames:?}"
        );
    }
    // Control: a good token is welcomed on the same server.
    let mut ws = server.connect().await;
    ws.hello(&agent("alice")).await;
    ws.sync().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hello_timeout_closes_with_4001() {
    let server = TestServer::start_with(|config| {
        config.limits.hello_timeout = Duration::from_millis(300);
    })
    .await;

    // Silent socket.
    let started = tokio::time::Instant::now();
    let mut silent = server.connect().await;
    let closed = silent.expect_close(STEP).await;
    assert_eq!(closed.code, Some(4001), "{closed:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "closed after {:?}, before the hello timeout",
        started.elapsed()
    );
    assert!(silent.transcript().iter().all(|t| !t.contains("welcome")));

    // A socket whose first frame is not hello is not let in either.
    let mut rude = server.connect().await;
    let conv = uuid::Uuid::new_v4().to_string();
    rude.send_json(&json!({"type": "subscribe", "conversation_id": conv, "ref": 1}))
        .await;
    let (frames, closed) = rude.drain_until_close(STEP).await;
    assert_eq!(closed.code, Some(4001), "{closed:?}");
    assert!(
        frames
            .iter()
            .all(|f| !matches!(ty(f), "welcome" | "ok" | "event")),
        "{frames:?}"
    );

    // A socket that said hello in time stays open past the timeout.
    let mut polite = server.client(&agent("alice")).await;
    polite.expect_silence(Duration::from_millis(600)).await;
    polite.sync().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn welcome_has_the_documented_shape() {
    let server = TestServer::start_with(|config| {
        config.limits.heartbeat_interval = Duration::from_millis(7000);
    })
    .await;
    let mut token_claims = claims("agent", "alice");
    token_claims["name"] = json!("Alice Liddell");
    token_claims["inboxes"] = json!(["support"]);
    let token = sign(&token_claims);

    let mut ws = server.connect().await;
    let welcome = ws.hello(&token).await;
    assert_eq!(welcome["user"]["id"], "alice");
    assert_eq!(welcome["user"]["role"], "agent");
    assert_eq!(welcome["user"]["name"], "Alice Liddell");
    assert_eq!(welcome["heartbeat_ms"], 7000);
    let session = welcome["session_id"]
        .as_str()
        .expect("session_id")
        .to_owned();
    assert!(!session.is_empty());

    // A hello with a `ref` has it answered, as every frame with one.
    let mut referenced = server.connect().await;
    referenced
        .send_json(&json!({"type": "hello", "token": token, "ref": "h-1"}))
        .await;
    let answer = referenced.next_frame(STEP).await;
    assert_eq!(answer["type"], "welcome", "{answer}");
    assert_eq!(answer["ref"], "h-1", "{answer}");
    assert!(
        welcome.get("ref").is_none(),
        "no ref, none echoed: {welcome}"
    );

    let mut other = server.connect().await;
    let welcome2 = other.hello(&token).await;
    assert_ne!(
        welcome2["session_id"],
        session.as_str(),
        "each socket is its own session"
    );

    // A second hello is not a way to change identity.
    let error = ws
        .error(json!({"type": "hello", "token": customer("carol")}))
        .await;
    assert_eq!(error["type"], "error");
    ws.sync().await;
    let conv = server.open_as_customer(&customer("carol")).await;
    ws.subscribe(&conv, None).await; // still alice, an agent of `support`
}

#[tokio::test(flavor = "multi_thread")]
async fn origin_allow_list_refuses_other_origins_with_403() {
    let server = TestServer::start_with(|config| {
        config.allowed_origins = Some(vec!["https://app.example.com".to_owned()]);
    })
    .await;
    let refused = connect(
        server.addr,
        ConnectOptions {
            origin: Some("https://evil.example.net".into()),
            ..Default::default()
        },
    )
    .await;
    match refused {
        Err(e) => assert_eq!(e.status(), Some(403), "{e:?}"),
        Ok(_) => panic!("an upgrade from a foreign Origin was accepted"),
    }
    let mut allowed = connect(
        server.addr,
        ConnectOptions {
            origin: Some("https://app.example.com".into()),
            ..Default::default()
        },
    )
    .await
    .expect("an allowed Origin upgrades");
    allowed.hello(&customer("carol")).await;
    allowed.sync().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn any_origin_is_accepted_without_an_allow_list() {
    let server = TestServer::start().await;
    let mut ws = connect(
        server.addr,
        ConnectOptions {
            origin: Some("https://anything.example.org".into()),
            ..Default::default()
        },
    )
    .await
    .expect("no allow-list: any Origin upgrades");
    ws.hello(&customer("carol")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_from_the_cli_are_accepted() {
    let server = TestServer::start().await;
    let (status, stdout, stderr) = run_cli(&[
        "token",
        "--role",
        "agent",
        "--sub",
        "alice",
        "--inboxes",
        "support",
        "--jwt-secret",
        SECRET,
        "--ttl",
        "1h",
    ])
    .await;
    assert!(status.success(), "backchannel token failed: {stderr}");
    let token = stdout.trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "a JWT: {stdout}");
    // A token the server would refuse is refused here, not printed.
    let (status, stdout, stderr) = run_cli(&[
        "token",
        "--role",
        "agent",
        "--sub",
        "",
        "--jwt-secret",
        SECRET,
    ])
    .await;
    assert!(!status.success(), "an empty sub was minted: {stdout}");
    assert!(stdout.trim().is_empty(), "{stdout}");
    assert!(stderr.contains("sub"), "{stderr}");

    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.required_spec_claims = ["exp".to_owned()].into_iter().collect();
    let decoded = jsonwebtoken::decode::<serde_json::Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes()),
        &validation,
    )
    .expect("an HS256 token signed with the secret");
    let exp = decoded.claims["exp"].as_u64().expect("exp");
    assert!(exp.abs_diff(now() + 3600) < 120, "ttl 1h: exp {exp}");

    let conv = server.open_as_customer(&customer("carol")).await;
    let mut ws = server.connect().await;
    let welcome = ws.hello(&token).await;
    assert_eq!(welcome["user"]["id"], "alice");
    assert_eq!(welcome["user"]["role"], "agent");
    ws.subscribe(&conv, None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_socket_is_closed_with_4001_once_its_token_expires() {
    // A token is good until its `exp` on a socket as over HTTP: a socket opened with it
    // does not outlive it (tokens cannot be revoked, so short-lived ones are the defence,
    // and an open socket receives notifications). Checked at each heartbeat.
    let server = TestServer::start_with(|config| {
        config.limits.heartbeat_interval = Duration::from_millis(200);
    })
    .await;
    let mut expiring = claims("agent", "alice");
    expiring["inboxes"] = json!(["support"]);
    // Past, but within the 5 s the server tolerates for clock skew: refused once the
    // clock reads a whole second past `exp` + 5, so 2 to 3 s from now.
    let issued = std::time::Instant::now();
    expiring["exp"] = json!(now() - 3);
    let token = sign(&expiring);
    let mut ws = server.client(&token).await;
    ws.sync().await;

    let (frames, closed) = ws.drain_until_close(Duration::from_secs(8)).await;
    assert_eq!(closed.code, Some(4001), "{closed:?}");
    // Open until then: not closed at the first heartbeats (200 ms apart) for a token
    // that is still good.
    assert!(
        issued.elapsed() >= Duration::from_millis(1900),
        "closed after {:?}, while the token was good",
        issued.elapsed()
    );
    assert!(
        frames
            .iter()
            .any(|f| f["type"] == "error" && f["code"] == "unauthorized"),
        "the close is explained first: {frames:?}"
    );
    server
        .http
        .get("/v1/conversations", Some(&token))
        .await
        .assert_error(401, "unauthorized");
}
