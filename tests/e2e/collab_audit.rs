//! The audit trail: `GET /v1/conversations/{id}/audit` (supervisors and admins only)
//! lists every event of the supervisor stream with its visibility and chain hash and says
//! whether the chain verifies; `backchannel audit export` writes every event with the same
//! hash as JSON lines; `backchannel audit verify` exits 0 on an intact store, beside a
//! live node too. A row changed behind the server's back (its payload, its actor),
//! removed, or two rows' contents swapped, with the server stopped and the SQLite file
//! edited directly, makes `audit verify` exit 1 naming the first broken event, and the
//! endpoint report `verified: false` with that event; undoing the change verifies again.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};

use crate::collab_support::*;
use crate::support::process::run_cli;
use crate::support::*;

fn is_hex_hash(s: &str) -> bool {
    s.len() == 64
        && s.chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
}

async fn audit(http: &Http, token: &str, conv: &str) -> Reply {
    http.get(&format!("/v1/conversations/{conv}/audit"), Some(token))
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_audit_endpoint_and_export_list_every_event_with_its_hash() {
    let server = TestServer::start().await;
    define_tag(&server, "vip").await;
    let cust_t = customer("carol");
    let alice_t = agent("alice");
    let sam_t = supervisor("sam");
    let conv = server.open_as_customer(&cust_t).await;
    let other = server.open_as_customer(&customer("dora")).await;
    let mut carol = online(&server, &cust_t).await;
    let mut alice = online(&server, &alice_t).await;
    let mut sam = online(&server, &sam_t).await;
    carol.message(&conv, "c-1", "where is my parcel").await;
    let note = event_id(&alice.note(&conv, "a-1", "checking with the courier").await);
    sam.ok(coaching(&conv, "s-1", "good instinct")).await;
    alice
        .ok(edit_frame(&conv, &note, "courier says tomorrow"))
        .await;
    alice.ok(tag_frame(&conv, &["vip"], &[])).await;
    alice.message(&conv, "a-2", "It arrives tomorrow").await;
    alice.note(&other, "a-3", "another conversation").await;

    let sup_history = server.history(&sam_t, &conv).await;
    let reply = audit(&server.http, &sam_t, &conv).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let report = reply.json();
    assert_eq!(report["conversation_id"], conv.as_str());
    assert_eq!(report["verified"], true, "{report}");
    assert!(
        report.get("first_break").is_none() || report["first_break"].is_null(),
        "{report}"
    );
    let events = report["events"].as_array().unwrap();
    assert_eq!(events.len() as u64, sup_history.head);
    let mut hashes = std::collections::BTreeSet::new();
    for (i, (entry, hist)) in events.iter().zip(sup_history.events.iter()).enumerate() {
        assert_eq!(entry["seq"], i as u64 + 1, "{entry}");
        assert_eq!(
            entry["event"], hist["event"],
            "the audit shows the events as stored"
        );
        let hash = entry["hash"]
            .as_str()
            .unwrap_or_else(|| panic!("no hash: {entry}"));
        assert!(is_hex_hash(hash), "{hash}");
        assert!(hashes.insert(hash.to_owned()), "hashes repeat: {hash}");
        let kind = entry["event"]["kind"].as_str().unwrap();
        let visibility = match (kind, entry["event"]["audience"].as_str()) {
            ("conversation_opened" | "message", _) => "public",
            (_, Some("supervisors")) => "supervisors",
            _ => "internal",
        };
        assert_eq!(entry["visibility"], visibility, "{entry}");
    }
    // The admin reads it too; agents and customers may not; ids are checked.
    let reply = audit(&server.http, &admin("root"), &conv).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    audit(&server.http, &alice_t, &conv)
        .await
        .assert_error(403, "forbidden");
    audit(&server.http, &cust_t, &conv)
        .await
        .assert_error(403, "forbidden");
    let narrow = token_with("supervisor", "nina", json!({"inboxes": ["billing"]}));
    audit(&server.http, &narrow, &conv)
        .await
        .assert_error(404, "not_found");
    audit(&server.http, &sam_t, &uuid::Uuid::new_v4().to_string())
        .await
        .assert_error(404, "not_found");
    audit(&server.http, &sam_t, "not-a-uuid")
        .await
        .assert_error(400, "bad_request");

    // The command line, beside the running node.
    let dir = server.data_dir().to_str().unwrap().to_owned();
    let (status, stdout, stderr) = run_cli(&["audit", "verify", "--data-dir", &dir]).await;
    assert_eq!(status.code(), Some(0), "verify: {stdout} {stderr}");
    let out = server.data_dir().join("export.jsonl");
    let out_s = out.to_str().unwrap().to_owned();
    let (status, stdout, stderr) =
        run_cli(&["audit", "export", "--data-dir", &dir, "--out", &out_s]).await;
    assert_eq!(status.code(), Some(0), "export: {stdout} {stderr}");
    let text = std::fs::read_to_string(&out).expect("export file");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    let other_head = server.head(&sam_t, &other).await;
    assert_eq!(
        lines.len() as u64,
        sup_history.head + other_head,
        "one line per event"
    );
    let exported: BTreeMap<String, String> = lines
        .iter()
        .map(|l| {
            (
                l["id"].as_str().expect("id").to_owned(),
                l["hash"].as_str().expect("hash").to_owned(),
            )
        })
        .collect();
    for entry in events {
        let id = entry["event"]["id"].as_str().unwrap();
        assert_eq!(
            exported.get(id).map(String::as_str),
            entry["hash"].as_str(),
            "{id}"
        );
    }
}

/// Runs one SQL statement on the stopped server's database; returns the rows changed.
async fn exec(data_dir: &Path, statement: &str) -> u64 {
    let db = data_dir.join("backchannel.sqlite3");
    assert!(db.exists(), "no database at {}", db.display());
    let cli_present = std::process::Command::new("sqlite3")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    if cli_present {
        let output = tokio::time::timeout(
            STEP,
            tokio::process::Command::new("sqlite3")
                .arg(&db)
                .arg(format!("{statement}; SELECT changes();"))
                .output(),
        )
        .await
        .expect("sqlite3 in time")
        .expect("run sqlite3");
        assert!(
            output.status.success(),
            "sqlite3 failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        stdout
            .lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected sqlite3 output: {stdout}"))
    } else {
        use sqlx::Connection;
        let url = format!("sqlite://{}", db.display());
        let mut conn = sqlx::SqliteConnection::connect(&url)
            .await
            .expect("open sqlite");
        let done = sqlx::query(statement)
            .execute(&mut conn)
            .await
            .expect("statement");
        conn.close().await.expect("close");
        done.rows_affected()
    }
}

async fn verify(dir: &str) -> (Option<i32>, String) {
    let (status, stdout, stderr) = run_cli(&["audit", "verify", "--data-dir", dir]).await;
    (status.code(), format!("{stdout}\n{stderr}"))
}

async fn stop(process: &mut ServerProcess) {
    process.sigterm();
    let status = process.wait(STEP).await;
    assert!(
        status.success(),
        "server exit: {status:?}\n{}",
        process.output()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_row_changed_behind_the_servers_back_fails_verification() {
    let data = tempfile::tempdir().expect("tempdir");
    let dir = data.path().to_str().unwrap().to_owned();
    let alice_t = agent("alice");
    let sam_t = supervisor("sam");

    let mut process = ServerProcess::spawn(data.path()).await;
    let http = process.http.clone();
    let conv1 = http.open_as_customer(&customer("carol")).await;
    let conv2 = http.open_as_customer(&customer("dora")).await;
    let mut alice = process.client(&alice_t).await;
    let m1 = event_id(
        &alice
            .message(&conv1, "m-1", "Let me check that for you")
            .await,
    );
    let n1 = event_id(
        &alice
            .note(&conv1, "n-1", "refund approved by finance")
            .await,
    );
    alice.note(&conv1, "n-2", "courier informed").await;
    let mut conv2_ids = vec![];
    for i in 0..4 {
        conv2_ids.push(event_id(
            &alice
                .note(&conv2, &format!("c2-{i}"), &format!("step {i}"))
                .await,
        ));
    }
    let before = audit(&http, &sam_t, &conv1).await.json();
    assert_eq!(before["verified"], true, "{before}");
    alice.close().await;
    stop(&mut process).await;

    // Intact: verifies.
    let (code, output) = verify(&dir).await;
    assert_eq!(code, Some(0), "{output}");

    // A note's text changed.
    let changed = exec(
        data.path(),
        &format!("UPDATE events SET payload = replace(payload, 'approved', 'rejected') WHERE id = '{n1}'"),
    )
    .await;
    assert_eq!(changed, 1);
    let (code, output) = verify(&dir).await;
    assert_eq!(code, Some(1), "{output}");
    assert!(
        output.contains(&n1),
        "verify should name the changed event {n1}: {output}"
    );
    // Undone: verifies again (the check is on content, not on having been touched).
    exec(
        data.path(),
        &format!("UPDATE events SET payload = replace(payload, 'rejected', 'approved') WHERE id = '{n1}'"),
    )
    .await;
    let (code, output) = verify(&dir).await;
    assert_eq!(code, Some(0), "{output}");

    // Another column: who wrote the message.
    exec(
        data.path(),
        &format!("UPDATE events SET actor_id = 'mallory' WHERE id = '{m1}'"),
    )
    .await;
    let (code, output) = verify(&dir).await;
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains(&m1), "verify should name {m1}: {output}");
    exec(
        data.path(),
        &format!("UPDATE events SET actor_id = 'alice' WHERE id = '{m1}'"),
    )
    .await;
    assert_eq!(verify(&dir).await.0, Some(0));

    // Two rows' contents swapped (a reordering that keeps the seqs).
    let (a, b) = (&conv2_ids[1], &conv2_ids[2]);
    exec(
        data.path(),
        &format!(
            "UPDATE events SET payload = CASE id WHEN '{a}' THEN (SELECT payload FROM events WHERE id = '{b}') \
             ELSE (SELECT payload FROM events WHERE id = '{a}') END WHERE id IN ('{a}', '{b}')"
        ),
    )
    .await;
    let (code, output) = verify(&dir).await;
    assert_eq!(code, Some(1), "{output}");
    assert!(
        output.contains(a.as_str()),
        "verify should name the first swapped event {a}: {output}"
    );

    // The server, restarted on the tampered store, reports it too.
    let process = ServerProcess::spawn(data.path()).await;
    let report = audit(&process.http, &sam_t, &conv2).await.json();
    assert_eq!(report["verified"], false, "{report}");
    assert_eq!(report["first_break"]["event_id"], a.as_str(), "{report}");
    assert_eq!(report["first_break"]["seq"], 3, "{report}");
    assert!(report["first_break"]["reason"].is_string(), "{report}");
    let report = audit(&process.http, &sam_t, &conv1).await.json();
    assert_eq!(
        report["verified"], true,
        "the other conversation is intact: {report}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_row_fails_verification() {
    let data = tempfile::tempdir().expect("tempdir");
    let dir = data.path().to_str().unwrap().to_owned();
    let alice_t = agent("alice");
    let mut process = ServerProcess::spawn(data.path()).await;
    let conv = process.http.open_as_customer(&customer("carol")).await;
    let mut alice = process.client(&alice_t).await;
    let mut ids = vec![];
    for i in 0..4 {
        ids.push(event_id(
            &alice
                .note(&conv, &format!("n-{i}"), &format!("note {i}"))
                .await,
        ));
    }
    alice.close().await;
    stop(&mut process).await;
    assert_eq!(verify(&dir).await.0, Some(0));

    // A middle row removed: the next one is out of place.
    assert_eq!(
        exec(
            data.path(),
            &format!("DELETE FROM events WHERE id = '{}'", ids[1])
        )
        .await,
        1
    );
    let (code, output) = verify(&dir).await;
    assert_eq!(code, Some(1), "{output}");
    assert!(
        output.contains(&ids[2]) || output.contains(&ids[1]),
        "verify should name the event at the gap: {output}"
    );

    // The last row of another conversation removed: no later row shows the gap, only
    // the head kept on the conversation does.
    let mut process = ServerProcess::spawn(data.path()).await;
    let conv2 = process.http.open_as_customer(&customer("dora")).await;
    let mut alice = process.client(&alice_t).await;
    let last = event_id(&alice.note(&conv2, "x-1", "the last word").await);
    alice.close().await;
    stop(&mut process).await;
    exec(
        data.path(),
        &format!("DELETE FROM events WHERE id = '{last}'"),
    )
    .await;
    let process = ServerProcess::spawn(data.path()).await;
    let report = audit(&process.http, &supervisor("sam"), &conv2)
        .await
        .json();
    assert_eq!(
        report["verified"], false,
        "a missing last event must be noticed: {report}"
    );
    assert!(report["first_break"].is_object(), "{report}");
    let (code, output) = verify(&dir).await;
    assert_eq!(code, Some(1), "{output}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shortened_chain_or_a_conversation_row_removed_fails_verification() {
    // Rows cut off the tail with the head moved back to match, a conversation with no
    // events left, events whose conversation row is gone: each is a valid-looking shorter
    // chain (or none), and each must fail.
    let data = tempfile::tempdir().expect("tempdir");
    let dir = data.path().to_str().unwrap().to_owned();
    let alice_t = agent("alice");
    let mut process = ServerProcess::spawn(data.path()).await;
    let mut alice = process.client(&alice_t).await;
    let mut convs = Vec::new();
    for name in ["carol", "dora", "erin", "fay", "gina"] {
        let conv = process.http.open_as_customer(&customer(name)).await;
        for i in 0..3 {
            alice.note(&conv, &format!("{name}-{i}"), "a note").await;
        }
        convs.push(conv);
    }
    alice.close().await;
    stop(&mut process).await;
    assert_eq!(verify(&dir).await.0, Some(0));

    // The tail cut, and the head set to the new last event's hash.
    let c = &convs[0];
    exec(
        data.path(),
        &format!("DELETE FROM events WHERE conversation_id = '{c}' AND supervisor_seq = 4"),
    )
    .await;
    exec(
        data.path(),
        &format!(
            "UPDATE conversations SET last_hash = (SELECT hash FROM events \
             WHERE conversation_id = '{c}' AND supervisor_seq = 3) WHERE id = '{c}'"
        ),
    )
    .await;
    let (code, output) = verify(&dir).await;
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("counts 4 events; 3 are stored"), "{output}");
    exec(
        data.path(),
        &format!("DELETE FROM events WHERE conversation_id = '{c}'"),
    )
    .await;
    exec(
        data.path(),
        &format!("DELETE FROM conversations WHERE id = '{c}'"),
    )
    .await;
    assert_eq!(verify(&dir).await.0, Some(0), "the rest is whole again");

    // Every event of a conversation deleted, its head zeroed.
    let c = &convs[1];
    exec(
        data.path(),
        &format!("DELETE FROM notes WHERE conversation_id = '{c}'"),
    )
    .await;
    exec(
        data.path(),
        &format!("DELETE FROM events WHERE conversation_id = '{c}'"),
    )
    .await;
    exec(
        data.path(),
        &format!(
            "UPDATE conversations SET last_hash = zeroblob(32), supervisor_seq = 0 WHERE id = '{c}'"
        ),
    )
    .await;
    let (code, output) = verify(&dir).await;
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("no events"), "{output}");
    exec(
        data.path(),
        &format!("DELETE FROM conversations WHERE id = '{c}'"),
    )
    .await;
    assert_eq!(verify(&dir).await.0, Some(0));

    // A row that cannot even be decoded breaks its own conversation, and names it.
    let c = &convs[3];
    exec(
        data.path(),
        &format!(
            "UPDATE events SET payload = x'41' WHERE conversation_id = '{c}' AND supervisor_seq = 2"
        ),
    )
    .await;
    let (code, output) = verify(&dir).await;
    assert_eq!(code, Some(1), "{output}");
    assert!(
        output.contains("cannot be read") && output.contains(c.as_str()),
        "{output}"
    );
    for table in ["notes", "events"] {
        exec(
            data.path(),
            &format!("DELETE FROM {table} WHERE conversation_id = '{c}'"),
        )
        .await;
    }
    exec(
        data.path(),
        &format!("DELETE FROM conversations WHERE id = '{c}'"),
    )
    .await;
    assert_eq!(verify(&dir).await.0, Some(0));

    // The conversation row deleted, its events left (foreign keys off, as a tamperer's).
    let c = &convs[2];
    exec(
        data.path(),
        &format!("PRAGMA foreign_keys = OFF; DELETE FROM conversations WHERE id = '{c}'"),
    )
    .await;
    let (code, output) = verify(&dir).await;
    assert_eq!(code, Some(1), "{output}");
    assert!(
        output.contains("no conversation row") && output.contains(c.as_str()),
        "{output}"
    );
    // And a chain broken elsewhere is reported beside it, not hidden by it.
    let g = &convs[4];
    exec(
        data.path(),
        &format!(
            "UPDATE events SET hash = zeroblob(32) WHERE conversation_id = '{g}' \
             AND supervisor_seq = 2"
        ),
    )
    .await;
    let (code, output) = verify(&dir).await;
    assert_eq!(code, Some(1), "{output}");
    assert!(
        output.contains("no conversation row") && output.contains(c.as_str()),
        "{output}"
    );
    assert!(
        output.contains("chain broken") && output.contains(g.as_str()),
        "{output}"
    );

    // A mistyped directory is not an empty, verified store.
    let missing = data.path().join("typo");
    let (code, output) = verify(missing.to_str().unwrap()).await;
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("no store at"), "{output}");
    assert!(!missing.exists(), "nothing created at the mistyped path");
}

#[tokio::test(flavor = "multi_thread")]
async fn verification_beside_live_appends_reports_no_break() {
    // `audit verify` and the audit endpoint run beside a live node: an append committing
    // between reading a conversation's events and its head made it look truncated.
    let data = tempfile::tempdir().expect("tempdir");
    let dir = data.path().to_str().unwrap().to_owned();
    let process = ServerProcess::spawn(data.path()).await;
    let conv = process.http.open_as_customer(&customer("carol")).await;
    let writing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let http = process.http.clone();
            let conv = conv.clone();
            let writing = writing.clone();
            tokio::spawn(async move {
                let token = agent(&format!("writer{w}"));
                let mut i = 0;
                while writing.load(std::sync::atomic::Ordering::Relaxed) {
                    let reply = http
                        .post(
                            &format!("/v1/conversations/{conv}/notes"),
                            Some(&token),
                            &json!({"client_id": format!("w{w}-{i}"), "body": "busy"}),
                        )
                        .await;
                    assert_eq!(reply.status, 201, "{}", reply.text);
                    i += 1;
                }
            })
        })
        .collect();
    let sam = supervisor("sam");
    for round in 0..12 {
        let (code, output) = verify(&dir).await;
        assert_eq!(code, Some(0), "round {round}: {output}");
        let report = audit(&process.http, &sam, &conv).await.json();
        assert_eq!(report["verified"], true, "round {round}: {report}");
    }
    writing.store(false, std::sync::atomic::Ordering::Relaxed);
    for writer in writers {
        writer.await.expect("writer");
    }
}
