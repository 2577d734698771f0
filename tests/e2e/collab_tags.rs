//! Tags: admins define them (`PUT /v1/tags/{name}` with `color` and `description`,
//! `DELETE`), staff list them, others may not; `tag` adds and removes defined tags only
//! (an undefined one is `bad_request` and changes nothing; a change that changes nothing
//! appends nothing), names follow the documented alphabet, and
//! `GET /v1/conversations?tag=` lists exactly the tagged conversations.

use serde_json::json;

use crate::collab_support::*;
use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn admins_define_tags_and_staff_read_them() {
    let server = TestServer::start().await;
    let alice_t = agent("alice");
    let sam_t = supervisor("sam");
    let cust_t = customer("carol");

    let reply = server
        .http
        .put(
            "/v1/tags/vip",
            Some(&root()),
            &json!({"color": "#ffcc00", "description": "Top customers"}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json()["name"], "vip");
    define_tag(&server, "refund:pending").await;

    for token in [&alice_t, &sam_t] {
        let reply = server
            .http
            .put("/v1/tags/sneaky", Some(token), &json!({}))
            .await;
        reply.assert_error(403, "forbidden");
    }
    server
        .http
        .put("/v1/tags/sneaky", Some(&cust_t), &json!({}))
        .await
        .assert_error(403, "forbidden");
    server
        .http
        .get("/v1/tags", Some(&cust_t))
        .await
        .assert_error(403, "forbidden");
    for bad in ["Has-Capitals", "with%20space", &"x".repeat(65)] {
        server
            .http
            .put(&format!("/v1/tags/{bad}"), Some(&root()), &json!({}))
            .await
            .assert_error(400, "bad_request");
    }

    let reply = server.http.get("/v1/tags", Some(&alice_t)).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let tags = reply.json()["tags"].as_array().cloned().unwrap();
    let names: Vec<&str> = tags.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 2, "{tags:?}");
    assert!(
        names.contains(&"vip") && names.contains(&"refund:pending"),
        "{tags:?}"
    );
    let vip = tags.iter().find(|t| t["name"] == "vip").unwrap();
    assert_eq!(vip["color"], "#ffcc00");
    assert_eq!(vip["description"], "Top customers");

    // Redefining updates it.
    server
        .http
        .put("/v1/tags/vip", Some(&root()), &json!({"color": "#000000"}))
        .await;
    let tags = server.http.get("/v1/tags", Some(&alice_t)).await.json()["tags"].clone();
    let vip = tags
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "vip")
        .unwrap()
        .clone();
    assert_eq!(vip["color"], "#000000");

    // Delete: admins only; then it is gone and cannot be added.
    let delete = |token: String| {
        let http = server.http.clone();
        async move {
            http.send(
                http.client
                    .delete(format!("{}/v1/tags/refund:pending", http.base))
                    .bearer_auth(token),
            )
            .await
        }
    };
    delete(alice_t.clone()).await.assert_error(403, "forbidden");
    let reply = delete(root()).await;
    assert!(
        reply.status == 200 || reply.status == 204,
        "{} {}",
        reply.status,
        reply.text
    );
    delete(root()).await.assert_error(404, "not_found");
    let tags = server.http.get("/v1/tags", Some(&alice_t)).await.json()["tags"].clone();
    assert_eq!(tags.as_array().unwrap().len(), 1, "{tags}");
    let conv = server.open_as_customer(&cust_t).await;
    let mut alice = online(&server, &alice_t).await;
    alice
        .error_code(tag_frame(&conv, &["refund:pending"], &[]), "bad_request")
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tagging_adds_and_removes_and_filters_the_list() {
    let server = TestServer::start().await;
    define_tag(&server, "vip").await;
    define_tag(&server, "billing").await;
    define_tag(&server, "late").await;
    let alice_t = agent("alice");
    let cust_t = customer("carol");
    let conv1 = server.open_as_customer(&cust_t).await;
    let conv2 = server.open_as_customer(&customer("dora")).await;
    let conv3 = server.open_as_customer(&customer("emma")).await;
    let mut alice = online(&server, &alice_t).await;

    let ok = alice.ok(tag_frame(&conv1, &["vip", "late"], &[])).await;
    assert!(ok["seq"].is_u64(), "{ok}");
    alice.ok(tag_frame(&conv2, &["billing", "late"], &[])).await;
    let reply = server
        .http
        .post(
            &format!("/v1/conversations/{conv3}/tags"),
            Some(&alice_t),
            &json!({"add": ["billing"]}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert!(reply.json()["seq"].is_u64(), "{}", reply.text);

    let tags_of = |v: serde_json::Value| {
        let mut t: Vec<String> = v["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_owned())
            .collect();
        t.sort();
        t
    };
    assert_eq!(
        tags_of(view(&server, &alice_t, &conv1).await),
        vec!["late", "vip"]
    );

    let set = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let sorted = |ids: &[&String]| {
        let mut v: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    };
    assert_eq!(
        set(list_ids(&server, &alice_t, "tag=vip").await),
        sorted(&[&conv1])
    );
    assert_eq!(
        set(list_ids(&server, &alice_t, "tag=billing").await),
        sorted(&[&conv2, &conv3])
    );
    assert_eq!(
        set(list_ids(&server, &alice_t, "tag=late").await),
        sorted(&[&conv1, &conv2])
    );
    assert!(list_ids(&server, &alice_t, "tag=nothing-has-this")
        .await
        .is_empty());

    // Remove, and add+remove together.
    alice.ok(tag_frame(&conv1, &["billing"], &["late"])).await;
    assert_eq!(
        tags_of(view(&server, &alice_t, &conv1).await),
        vec!["billing", "vip"]
    );
    assert_eq!(
        set(list_ids(&server, &alice_t, "tag=late").await),
        sorted(&[&conv2])
    );
    assert_eq!(
        set(list_ids(&server, &alice_t, "tag=billing").await),
        sorted(&[&conv1, &conv2, &conv3])
    );
    // Combined with another filter.
    alice.ok(status_frame(&conv3, "pending")).await;
    assert_eq!(
        list_ids(&server, &alice_t, "tag=billing&status=pending").await,
        vec![conv3.clone()]
    );

    // Nothing to change: answered, nothing appended.
    let head = server.head(&alice_t, &conv1).await;
    let ok = alice.ok(tag_frame(&conv1, &["vip"], &["late"])).await;
    assert!(
        ok.get("seq").is_none(),
        "no change should append nothing: {ok}"
    );
    assert_eq!(server.head(&alice_t, &conv1).await, head);

    // An undefined tag: refused, and the defined one beside it is not added either.
    alice
        .error_code(
            tag_frame(&conv2, &["vip", "undefined-tag"], &[]),
            "bad_request",
        )
        .await;
    alice
        .error_code(tag_frame(&conv2, &[], &[]), "bad_request")
        .await;
    assert_eq!(
        tags_of(view(&server, &alice_t, &conv2).await),
        vec!["billing", "late"]
    );

    // Customers may not tag, nor filter by tag.
    let mut carol = online(&server, &cust_t).await;
    carol
        .error_code(tag_frame(&conv1, &["vip"], &[]), "forbidden")
        .await;
    let reply = server
        .http
        .get("/v1/conversations?tag=vip", Some(&cust_t))
        .await;
    assert!(
        reply.status == 403 || reply.status == 400,
        "a customer filtering by tag: {} {}",
        reply.status,
        reply.text
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_definition_leaves_tagged_conversations_alone() {
    let server = TestServer::start().await;
    define_tag(&server, "legacy").await;
    let alice_t = agent("alice");
    let conv = server.open_as_customer(&customer("carol")).await;
    let mut alice = online(&server, &alice_t).await;
    alice.ok(tag_frame(&conv, &["legacy"], &[])).await;
    let reply = server
        .http
        .send(
            server
                .http
                .client
                .delete(format!("{}/v1/tags/legacy", server.http.base))
                .bearer_auth(root()),
        )
        .await;
    assert!(
        reply.status == 200 || reply.status == 204,
        "{} {}",
        reply.status,
        reply.text
    );
    // Still on the conversation (its history says it was added), and removable.
    assert_eq!(
        view(&server, &alice_t, &conv).await["tags"],
        json!(["legacy"])
    );
    alice
        .error_code(tag_frame(&conv, &["legacy"], &[]), "bad_request")
        .await;
    let ok = alice.ok(tag_frame(&conv, &[], &["legacy"])).await;
    assert!(ok["seq"].is_u64(), "{ok}");
    assert_eq!(view(&server, &alice_t, &conv).await["tags"], json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_conversation_holds_at_most_fifty_tags() {
    let server = TestServer::start().await;
    let names: Vec<String> = (0..51).map(|i| format!("t{i:02}")).collect();
    for name in &names {
        define_tag(&server, name).await;
    }
    let alice_t = agent("alice");
    let conv = server.open_as_customer(&customer("carol")).await;
    let mut alice = online(&server, &alice_t).await;
    let first: Vec<&str> = names[..50].iter().map(String::as_str).collect();
    alice.ok(tag_frame(&conv, &first, &[])).await;
    let head = server.head(&alice_t, &conv).await;
    alice
        .error_code(tag_frame(&conv, &["t50"], &[]), "bad_request")
        .await;
    assert_eq!(server.head(&alice_t, &conv).await, head);
    assert_eq!(
        view(&server, &alice_t, &conv).await["tags"]
            .as_array()
            .unwrap()
            .len(),
        50
    );
    // Swapping one for another stays within the limit.
    alice.ok(tag_frame(&conv, &["t50"], &["t00"])).await;
    let tags = view(&server, &alice_t, &conv).await["tags"].clone();
    assert_eq!(tags.as_array().unwrap().len(), 50);
    assert!(
        tags.as_array().unwrap().contains(&json!("t50"))
            && !tags.as_array().unwrap().contains(&json!("t00"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_tagging_never_exceeds_fifty() {
    let server = TestServer::start().await;
    let names: Vec<String> = (0..53).map(|i| format!("t{i:02}")).collect();
    for name in &names {
        define_tag(&server, name).await;
    }
    let conv = server.open_as_customer(&customer("carol")).await;
    let tokens: Vec<String> = (0..4).map(|i| agent(&format!("agent-{i}"))).collect();
    let mut sockets = Vec::new();
    for t in &tokens {
        sockets.push(online(&server, t).await);
    }
    let first: Vec<&str> = names[..49].iter().map(String::as_str).collect();
    sockets[0].ok(tag_frame(&conv, &first, &[])).await;
    // One slot left; four agents each add a different tag at the same moment.
    let calls = sockets
        .iter_mut()
        .enumerate()
        .map(|(i, ws)| ws.request(tag_frame(&conv, &[names[49 + i].as_str()], &[])));
    let answers = futures::future::join_all(calls).await;
    let accepted = answers.iter().filter(|a| a.is_ok()).count();
    for answer in &answers {
        if let Err(error) = answer {
            assert_eq!(error["code"], "bad_request", "{error}");
        }
    }
    let tags = view(&server, &tokens[0], &conv).await["tags"]
        .as_array()
        .unwrap()
        .len();
    assert!(
        tags <= 50,
        "{tags} tags on one conversation ({accepted} of 4 concurrent adds accepted)"
    );
    assert_eq!(accepted, 1, "exactly one add fits");
}
