//! Helpers shared by the team-collaboration tests (`collab_*.rs`): tokens with `teams`,
//! `handle` and `inboxes` claims, admin definitions (tags, fields, teams, inboxes),
//! notification reads, frame builders for the collaboration commands, bounded waits for
//! a frame of a given shape, and the leak assertion. Built on the common harness in
//! `support/`; nothing here waits without a deadline.

#![allow(dead_code)]

use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::time::Instant;

use crate::support::*;

/// The admin every test uses for definitions.
pub fn root() -> String {
    admin("root")
}

/// A token for `role`/`sub` with a display name and `extra` claims merged in
/// (`teams`, `handle`, `inboxes`, ...).
pub fn token_with(role: &str, sub: &str, extra: Value) -> String {
    let mut c = claims(role, sub);
    c["name"] = json!(format!("{role} {sub}"));
    if let Some(extra) = extra.as_object() {
        for (k, v) in extra {
            c[k.as_str()] = v.clone();
        }
    }
    sign(&c)
}

/// An agent of the `support` inbox in `teams`.
pub fn agent_in_teams(sub: &str, teams: &[&str]) -> String {
    token_with(
        "agent",
        sub,
        json!({"inboxes": ["support"], "teams": teams}),
    )
}

/// Makes a staff member known to the directory without opening a socket (any HTTP
/// request presents the token).
pub async fn make_known(server: &TestServer, token: &str) {
    let reply = server.http.get("/v1/notifications", Some(token)).await;
    assert_eq!(
        reply.status, 200,
        "presenting a staff token: {}",
        reply.text
    );
}

/// A socket after `hello` and one round trip, so the session is registered for
/// notifications by the time this returns.
pub async fn online(server: &TestServer, token: &str) -> Client {
    let mut client = server.client(token).await;
    client.sync().await;
    client
}

pub async fn define_team(server: &TestServer, id: &str) {
    let reply = server
        .http
        .put(
            &format!("/v1/teams/{id}"),
            Some(&root()),
            &json!({"name": id}),
        )
        .await;
    assert_eq!(reply.status, 200, "defining team {id}: {}", reply.text);
}

pub async fn define_tag(server: &TestServer, name: &str) {
    let reply = server
        .http
        .put(&format!("/v1/tags/{name}"), Some(&root()), &json!({}))
        .await;
    assert_eq!(reply.status, 200, "defining tag {name}: {}", reply.text);
}

pub async fn define_field(server: &TestServer, key: &str, body: Value) -> Value {
    let reply = server
        .http
        .put(&format!("/v1/fields/{key}"), Some(&root()), &body)
        .await;
    assert_eq!(reply.status, 200, "defining field {key}: {}", reply.text);
    reply.json()
}

pub async fn define_inbox(server: &TestServer, id: &str) {
    let reply = server
        .http
        .put(
            &format!("/v1/inboxes/{id}"),
            Some(&root()),
            &json!({"name": id}),
        )
        .await;
    assert_eq!(reply.status, 200, "defining inbox {id}: {}", reply.text);
}

/// `GET /v1/notifications` (`?unread=true` if `unread_only`, limit 200); must be 200.
pub async fn notifications(server: &TestServer, token: &str, unread_only: bool) -> Value {
    let path = if unread_only {
        "/v1/notifications?unread=true&limit=200"
    } else {
        "/v1/notifications?limit=200"
    };
    let reply = server.http.get(path, Some(token)).await;
    assert_eq!(reply.status, 200, "notifications: {}", reply.text);
    let body = reply.json();
    assert!(body["notifications"].is_array(), "{body}");
    assert!(body["unread"].is_u64(), "{body}");
    body
}

/// The notifications array of a page.
pub fn items_of(page: &Value) -> Vec<Value> {
    page["notifications"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// A `note` frame with optional `note_type` and `audience`.
pub fn note_of(
    conversation: &str,
    client_id: &str,
    body: &str,
    note_type: Option<&str>,
    audience: Option<&str>,
) -> Value {
    let mut frame = note_frame(conversation, client_id, body);
    if let Some(t) = note_type {
        frame["note_type"] = json!(t);
    }
    if let Some(a) = audience {
        frame["audience"] = json!(a);
    }
    frame
}

pub fn coaching(conversation: &str, client_id: &str, body: &str) -> Value {
    note_of(
        conversation,
        client_id,
        body,
        Some("coaching"),
        Some("supervisors"),
    )
}

pub fn assign_frame(
    conversation: &str,
    assignee: Option<&str>,
    team: Option<&str>,
    note: Option<&str>,
) -> Value {
    let mut frame = json!({"type": "assign", "conversation_id": conversation});
    if let Some(a) = assignee {
        frame["assignee_id"] = json!(a);
    }
    if let Some(t) = team {
        frame["team_id"] = json!(t);
    }
    if let Some(n) = note {
        frame["note"] = json!(n);
    }
    frame
}

pub fn edit_frame(conversation: &str, note_id: &str, body: &str) -> Value {
    json!({"type": "edit_note", "conversation_id": conversation, "note_id": note_id, "body": body})
}

pub fn pin_frame(conversation: &str, note_id: &str, pinned: bool) -> Value {
    json!({"type": "pin_note", "conversation_id": conversation, "note_id": note_id, "pinned": pinned})
}

pub fn status_frame(conversation: &str, status: &str) -> Value {
    json!({"type": "set_status", "conversation_id": conversation, "status": status})
}

pub fn tag_frame(conversation: &str, add: &[&str], remove: &[&str]) -> Value {
    json!({"type": "tag", "conversation_id": conversation, "add": add, "remove": remove})
}

pub fn fields_frame(target: &str, id: &str, fields: Value) -> Value {
    json!({"type": "set_fields", "target": target, "id": id, "fields": fields})
}

/// The `event_id` of an `ok`.
pub fn event_id(ok: &Value) -> String {
    ok["event_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no event_id in {ok}"))
        .to_owned()
}

/// Reads frames until one satisfies `pred`, within [`STEP`]; returns the frames skipped
/// and the match.
pub async fn wait_for(
    client: &mut Client,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> (Vec<Value>, Value) {
    let deadline = Instant::now() + STEP;
    let mut skipped = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.try_next_frame(left).await {
            Some(frame) if pred(&frame) => return (skipped, frame),
            Some(frame) => skipped.push(frame),
            None => panic!("no {what} within {STEP:?}; frames seen: {skipped:?}"),
        }
    }
}

pub fn is_notification(frame: &Value) -> bool {
    ty(frame) == "notification"
}

/// The next `notification` frame (other frames are skipped).
pub async fn next_notification(client: &mut Client) -> Value {
    wait_for(client, "notification frame", is_notification)
        .await
        .1
}

/// After a round trip on this socket (the caller has its own `ok` for whatever should
/// have caused the frame), asserts that no frame matching `pred` is buffered or arrives
/// within [`QUIET`]. Returns the frames that did arrive.
pub async fn assert_no_frame(
    client: &mut Client,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    client.sync().await;
    let frames = client.collect_for(QUIET).await;
    for frame in &frames {
        assert!(!pred(frame), "expected no {what}, got {frame}");
    }
    frames
}

/// Asserts that none of `needles` occurs in any of `haystack`.
pub fn assert_absent(what: &str, haystack: &[String], needles: &[String]) {
    for text in haystack {
        for needle in needles {
            assert!(
                !text.contains(needle.as_str()),
                "{what} leaked `{needle}` in: {text}"
            );
        }
    }
}

pub fn timestamp(value: &Value) -> OffsetDateTime {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not a timestamp: {value}"));
    OffsetDateTime::parse(text, &Rfc3339).unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// The ids in `GET /v1/conversations?query` as `token`.
pub async fn list_ids(server: &TestServer, token: &str, query: &str) -> Vec<String> {
    let list = server.list(token, query).await;
    list_items(&list.json())
        .iter()
        .map(|i| i["id"].as_str().expect("id").to_owned())
        .collect()
}

/// The staff view of a conversation, as JSON.
pub async fn view(server: &TestServer, token: &str, conversation: &str) -> Value {
    server.conversation(token, conversation).await.json()
}

/// `GET /v1/search/notes?{query}`; must be 200. Returns the results.
pub async fn search(server: &TestServer, token: &str, query: &str) -> Vec<Value> {
    let reply = server
        .http
        .get(&format!("/v1/search/notes?{query}"), Some(token))
        .await;
    assert_eq!(reply.status, 200, "search {query}: {}", reply.text);
    reply.json()["results"]
        .as_array()
        .unwrap_or_else(|| panic!("search answer without results: {}", reply.text))
        .clone()
}

/// The events of a history (`[{seq, event}]`) whose kind is `kind`.
pub fn of_kind<'a>(history: &'a History, kind: &str) -> Vec<&'a Value> {
    history
        .events
        .iter()
        .filter(|e| e["event"]["kind"] == kind)
        .collect()
}

/// Percent-encodes a query value (enough for the values tests use).
pub fn enc(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
