//! The floor as a supervisor sees it on one node (`watch_agents`): an agent with a socket
//! is `online`, viewing the conversations they subscribe to; `away` after the away time
//! without a command (a `ping` is not one); `online` again after a command; `offline`
//! once their last socket closes. Each change is shown once.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use crate::collab_support::*;
use crate::support::*;

/// Long enough that the checks before it (a refresh or two, then 1.5 s of quiet) finish
/// well inside it on a loaded machine.
const AWAY_AFTER: Duration = Duration::from_secs(5);

/// The `agent_presence` frames about `user`, up to and including the first that `until`
/// accepts (within `within`).
async fn presence_until(
    watcher: &mut Client,
    user: &str,
    within: Duration,
    until: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + within;
    let mut frames = Vec::new();
    while let Some(frame) = watcher
        .try_next_frame(deadline.saturating_duration_since(Instant::now()))
        .await
    {
        if ty(&frame) == "agent_presence" && frame["id"] == user {
            let done = until(&frame);
            frames.push(frame);
            if done {
                return frames;
            }
        }
    }
    panic!("no awaited agent_presence for {user} within {within:?}: {frames:?}");
}

/// Nothing more about `user` for a while (presence is refreshed once a second).
async fn nothing_more_about(watcher: &mut Client, user: &str) {
    let more: Vec<Value> = watcher
        .collect_for(Duration::from_millis(1_500))
        .await
        .into_iter()
        .filter(|f| ty(f) == "agent_presence" && f["id"] == user)
        .collect();
    assert!(more.is_empty(), "shown once: {more:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_is_online_viewing_then_away_then_online_then_offline() {
    let server = TestServer::start_with(|config| config.limits.away_after = AWAY_AFTER).await;
    let conv = server.open_as_customer(&customer("carla")).await;
    let mut sup = online(&server, &supervisor("sofia")).await;
    sup.ok(json!({"type": "watch_agents"})).await;
    let viewing = json!([conv]);

    let mut alice = online(&server, &agent("alice")).await;
    alice.subscribe(&conv, None).await;
    let started = Instant::now();
    // The first refresh may come before the subscription: online, then viewing.
    let frames = presence_until(&mut sup, "alice", AWAY_AFTER, |f| f["viewing"] == viewing).await;
    assert!(frames.iter().all(|f| f["status"] == "online"), "{frames:?}");
    nothing_more_about(&mut sup, "alice").await;

    // Only pings: away once the away time has passed.
    let pinging = async {
        loop {
            alice.send_json(&json!({"type": "ping"})).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let frames = tokio::select! {
        frames = presence_until(&mut sup, "alice", AWAY_AFTER * 2, |_| true) => frames,
        _ = pinging => unreachable!(),
    };
    // (Its last command was the subscribe, just before `started`.)
    let since = started.elapsed() + Duration::from_millis(500);
    assert!(since >= AWAY_AFTER, "away too soon: {frames:?}");
    assert_eq!(frames[0]["status"], "away", "{frames:?}");
    assert_eq!(frames[0]["viewing"], viewing, "still viewing: {frames:?}");
    nothing_more_about(&mut sup, "alice").await;

    // A command: online again, still viewing.
    alice.note(&conv, "n-1", "back at it").await;
    let frames = presence_until(&mut sup, "alice", AWAY_AFTER, |_| true).await;
    assert_eq!(frames[0]["status"], "online", "{frames:?}");
    assert_eq!(frames[0]["viewing"], viewing, "{frames:?}");

    // Unsubscribed: viewing nothing. Closed: offline, once.
    alice
        .ok(json!({"type": "unsubscribe", "conversation_id": conv}))
        .await;
    let frames = presence_until(&mut sup, "alice", AWAY_AFTER, |_| true).await;
    assert_eq!(frames[0]["status"], "online", "{frames:?}");
    assert_eq!(frames[0]["viewing"], json!([]), "{frames:?}");
    alice.close().await;
    let frames = presence_until(&mut sup, "alice", AWAY_AFTER, |_| true).await;
    assert_eq!(frames[0]["status"], "offline", "{frames:?}");
    nothing_more_about(&mut sup, "alice").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_supervisor_scoped_to_some_inboxes_does_not_see_the_floor() {
    // The floor names the conversations every agent views, in every inbox: a scoped
    // supervisor would learn other inboxes' conversation ids from it.
    let server = TestServer::start().await;
    let scoped = supervisor_in("sue", &["support"]);
    let mut sue = server.client(&scoped).await;
    sue.error_code(json!({"type": "watch_agents"}), "forbidden")
        .await;
    server
        .http
        .get("/v1/agents", Some(&scoped))
        .await
        .assert_error(403, "forbidden");
    // A supervisor of every inbox does.
    let mut sam = server.client(&supervisor("sam")).await;
    sam.ok(json!({"type": "watch_agents"})).await;
    let reply = server
        .http
        .get("/v1/agents", Some(&supervisor("sam")))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
}
