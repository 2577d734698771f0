//! Durability and shutdown, against the real binary: notes acknowledged concurrently over
//! several sockets survive `kill -9` and are each in the history exactly once after a
//! restart on the same data directory (with gap-free seqs, and retries still answered as
//! duplicates); SIGTERM closes every socket with 1001, keeps every acknowledged write and
//! exits 0; in-process, `run` returns once its shutdown future resolves, after closing
//! sockets with 1001.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::task::JoinSet;

use crate::support::*;

/// A note that the server acknowledged: (client_id, body, event_id, seq).
#[derive(Clone, Debug)]
struct Acked {
    client_id: String,
    body: String,
    event_id: String,
    seq: u64,
}

/// Writers that keep writing notes until their socket dies (or `max` each), recording
/// what was acknowledged and counting acknowledgements on `progress`.
fn spawn_writers(
    clients: Vec<Client>,
    conversation: &str,
    max: usize,
    acked: Arc<Mutex<Vec<Acked>>>,
    progress: Arc<tokio::sync::watch::Sender<usize>>,
) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    for (w, mut client) in clients.into_iter().enumerate() {
        let conversation = conversation.to_owned();
        let acked = acked.clone();
        let progress = progress.clone();
        tasks.spawn(async move {
            for i in 0..max {
                let client_id = format!("w{w}-{i}");
                let body = format!("durable note {client_id} {}", unique("b"));
                match client
                    .try_request_collect(note_frame(&conversation, &client_id, &body))
                    .await
                {
                    Ok((_, Ok(ok))) => {
                        acked.lock().unwrap().push(Acked {
                            client_id,
                            body,
                            event_id: ok["event_id"].as_str().expect("event_id").to_owned(),
                            seq: ok["seq"].as_u64().expect("seq"),
                        });
                        progress.send_modify(|n| *n += 1);
                    }
                    Ok((_, Err(error))) => {
                        // A refusal while shutting down is allowed; it is not an ack.
                        assert!(
                            matches!(error["code"].as_str(), Some("unavailable" | "internal")),
                            "unexpected refusal: {error}"
                        );
                        return;
                    }
                    Err(_) => return, // the socket died: the server is gone
                }
            }
        });
    }
    tasks
}

/// Checks that every acknowledged note is in `history` exactly once, at its seq, and
/// that the stream is gap-free and holds no note twice.
fn check_history(history: &History, acked: &[Acked]) {
    assert_eq!(
        history.seqs(),
        range(1, history.head),
        "gap-free after restart"
    );
    let mut by_body: HashMap<String, Vec<&Value>> = HashMap::new();
    for entry in &history.events {
        if let Some(body) = entry["event"]["body"].as_str() {
            by_body.entry(body.to_owned()).or_default().push(entry);
        }
    }
    for (body, entries) in &by_body {
        assert_eq!(entries.len(), 1, "stored more than once: {body}");
    }
    for note in acked {
        let entries = by_body
            .get(&note.body)
            .unwrap_or_else(|| panic!("acknowledged note lost: {note:?}"));
        let entry = entries[0];
        assert_eq!(entry["event"]["id"], note.event_id.as_str(), "{note:?}");
        assert_eq!(entry["seq"], note.seq, "{note:?}");
    }
    let ids: HashSet<&str> = history
        .events
        .iter()
        .map(|e| e["event"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), history.events.len(), "event ids are unique");
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_notes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::spawn(dir.path()).await;
    let cust = customer("carol");
    let alice = agent("alice");
    let conv = server.http.open_as_customer(&cust).await;

    let mut clients = Vec::new();
    for w in 0..4 {
        clients.push(server.client(&agent(&format!("writer-{w}"))).await);
    }
    let acked = Arc::new(Mutex::new(Vec::new()));
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0usize);
    let mut writers = spawn_writers(clients, &conv, 2000, acked.clone(), Arc::new(progress_tx));

    // Kill while the writers are going strong.
    tokio::time::timeout(STEP, progress.wait_for(|n| *n >= 150))
        .await
        .expect("writers too slow")
        .expect("writers alive");
    server.kill9().await;
    tokio::time::timeout(STEP, async {
        while let Some(result) = writers.join_next().await {
            result.expect("writer task");
        }
    })
    .await
    .expect("writers did not notice the crash");
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 150);

    let server = ServerProcess::spawn(dir.path()).await;
    let history = server.http.history(&alice, &conv).await;
    check_history(&history, &acked);
    assert!(
        history.events.len() > acked.len(),
        "opened + every acked note"
    );

    // A client retrying after the crash gets its first answer back, not a second note.
    let sample = &acked[acked.len() / 2];
    let writer = sample.client_id[1..].split('-').next().unwrap().to_owned();
    let mut retry = server.client(&agent(&format!("writer-{writer}"))).await;
    let ok = retry.note(&conv, &sample.client_id, &sample.body).await;
    assert_eq!(ok["duplicate"], true, "{ok}");
    assert_eq!(ok["event_id"], sample.event_id.as_str());
    assert_eq!(ok["seq"], sample.seq);
    // And the stream continues from its head.
    let ok = retry.note(&conv, "after-restart", "new").await;
    assert_eq!(ok["seq"], history.head + 1);
    // The customer's stream was untouched by all those notes.
    assert_eq!(server.http.head(&cust, &conv).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_closes_sockets_with_1001_keeps_acked_writes_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::spawn(dir.path()).await;
    let cust = customer("carol");
    let alice = agent("alice");
    let conv = server.http.open_as_customer(&cust).await;

    let mut c = server.client(&cust).await;
    c.subscribe(&conv, None).await;
    let mut a = server.client(&alice).await;
    a.subscribe(&conv, None).await;
    let ok = a
        .message(&conv, "before-term", "written before SIGTERM")
        .await;
    assert_eq!(ok["seq"], 2);

    // Writers in flight when the signal lands.
    let mut clients = Vec::new();
    for w in 0..3 {
        clients.push(server.client(&agent(&format!("writer-{w}"))).await);
    }
    let acked = Arc::new(Mutex::new(Vec::new()));
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0usize);
    let mut writers = spawn_writers(clients, &conv, 2000, acked.clone(), Arc::new(progress_tx));
    tokio::time::timeout(STEP, progress.wait_for(|n| *n >= 30))
        .await
        .expect("writers too slow")
        .expect("writers alive");

    server.sigterm();
    for ws in [&mut c, &mut a] {
        let closed = ws.expect_close(STEP).await;
        assert_eq!(closed.code, Some(1001), "{closed:?}");
    }
    let status = server.wait(STEP).await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status:?}; output:\n{}",
        server.output()
    );
    tokio::time::timeout(STEP, async {
        while let Some(result) = writers.join_next().await {
            result.expect("writer task");
        }
    })
    .await
    .expect("writers did not notice the shutdown");

    let acked = acked.lock().unwrap().clone();
    let server = ServerProcess::spawn(dir.path()).await;
    let history = server.http.history(&alice, &conv).await;
    check_history(&history, &acked);
    assert_eq!(history.events[1]["event"]["body"], "written before SIGTERM");
    let public = server.http.history(&cust, &conv).await;
    assert_eq!(public.seqs(), vec![1, 2]);
}

#[tokio::test(flavor = "multi_thread")]
async fn in_process_shutdown_closes_sockets_with_1001_and_run_returns_ok() {
    let server = TestServer::start().await;
    let cust = customer("carol");
    let conv = server.open_as_customer(&cust).await;
    let mut c = server.client(&cust).await;
    c.subscribe(&conv, None).await;
    let mut idle = server.client(&agent("alice")).await;
    idle.sync().await;

    let addr = server.addr;
    let waiters = [c, idle].map(|mut ws| tokio::spawn(async move { ws.expect_close(STEP).await }));
    server
        .shutdown()
        .await
        .expect("run returns Ok after a graceful shutdown");
    for waiter in waiters {
        let closed = waiter.await.unwrap();
        assert_eq!(closed.code, Some(1001), "{closed:?}");
    }
    // It no longer accepts connections.
    assert!(
        connect(addr, ConnectOptions::default()).await.is_err(),
        "still accepting after shutdown"
    );
}

/// A graceful shutdown still sends what a socket had queued, megabytes of it for a
/// console that fell behind, and then the 1001 close frame, as the client reads on.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_sends_a_backlog_of_megabytes_then_1001() {
    let server = TestServer::start_with(|config| {
        config.limits.commands_per_second = 100_000;
        config.limits.user_commands_per_second = 100_000;
    })
    .await;
    let conv = server.open_as_customer(&customer("carol")).await;
    let mut behind = server.narrow_client(&agent("bert")).await;
    behind.subscribe(&conv, None).await;
    // 120 notes of 15,000 characters: ~1.8 MB of event frames for `behind`, which reads
    // nothing meanwhile: most of it waits in its queue.
    let mut writer = server.client(&agent("wanda")).await;
    let body = "x".repeat(15_000);
    for i in 0..120 {
        writer.note(&conv, &format!("n-{i}"), &body).await;
    }
    let shutdown = tokio::spawn(server.shutdown());
    let (frames, closed) = behind.drain_until_close(STEP).await;
    let seqs: Vec<u64> = frames
        .iter()
        .filter(|f| ty(f) == "event")
        .filter_map(|f| f["seq"].as_u64())
        .collect();
    assert_eq!(
        seqs.len(),
        120,
        "every queued event arrives before the close"
    );
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "in order: {seqs:?}"
    );
    assert_eq!(closed.code, Some(1001), "{closed:?}");
    shutdown
        .await
        .expect("the shutdown task")
        .expect("run returns Ok after a graceful shutdown");
}

/// Kill -9 at several random moments of steady writing, restarting on the same data
/// directory each time: every note acknowledged in any round is stored exactly once, at
/// the seq it was acknowledged with, and the stream stays gap-free. The moments come
/// from the clock (printed), so repeated runs try different interleavings.
#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_notes_survive_kill_9_at_random_moments() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(7);
    println!("kill moments seed: {seed}");
    let mut next = seed;
    let mut random_between = |low: usize, high: usize| {
        // A small LCG is plenty for picking moments.
        next = next
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        low + (next >> 33) as usize % (high - low)
    };
    let dir = tempfile::tempdir().unwrap();
    let cust = customer("carol");
    let alice = agent("alice");
    let mut server = ServerProcess::spawn(dir.path()).await;
    let conv = server.http.open_as_customer(&cust).await;
    let mut acked_all = Vec::new();
    for round in 0..3 {
        let mut clients = Vec::new();
        for w in 0..3 {
            clients.push(server.client(&agent(&format!("r{round}-writer-{w}"))).await);
        }
        let acked = Arc::new(Mutex::new(Vec::new()));
        let (progress_tx, mut progress) = tokio::sync::watch::channel(0usize);
        let mut writers = spawn_writers(clients, &conv, 2000, acked.clone(), Arc::new(progress_tx));
        let moment = random_between(5, 150);
        tokio::time::timeout(STEP, progress.wait_for(|n| *n >= moment))
            .await
            .expect("writers too slow")
            .expect("writers alive");
        server.kill9().await;
        tokio::time::timeout(STEP, async {
            while let Some(result) = writers.join_next().await {
                result.expect("writer task");
            }
        })
        .await
        .expect("writers did not notice the crash");
        let acked = acked.lock().unwrap().clone();
        assert!(
            acked.len() >= moment,
            "round {round}: {} acked",
            acked.len()
        );
        acked_all.extend(acked);
        server = ServerProcess::spawn(dir.path()).await;
    }
    let history = server.http.history(&alice, &conv).await;
    check_history(&history, &acked_all);
    assert_eq!(
        server.http.head(&cust, &conv).await,
        1,
        "notes never touch the public stream"
    );
}

/// When the staff member's directory entry was last written, read from the data directory.
fn directory_written_at(dir: &std::path::Path, user: &str) -> i64 {
    let db =
        rusqlite::Connection::open(dir.join("backchannel.sqlite3")).expect("open the database");
    db.query_row("SELECT updated_at FROM users WHERE id = ?", [user], |row| {
        row.get(0)
    })
    .expect("the user is in the directory")
}

/// After a restart every agent reconnects at once; a known agent's `hello` must not
/// rewrite their unchanged directory entry (one fsynced write each, queued behind one
/// another), while a changed one is still written.
#[tokio::test(flavor = "multi_thread")]
async fn a_known_agents_hello_after_a_restart_does_not_rewrite_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::spawn(dir.path()).await;
    let alice = agent("alice");
    server.client(&alice).await;
    server.sigterm();
    server.wait(STEP).await;
    let written = directory_written_at(dir.path(), "alice");

    let mut server = ServerProcess::spawn(dir.path()).await;
    server.client(&alice).await;
    server.sigterm();
    server.wait(STEP).await;
    assert_eq!(
        directory_written_at(dir.path(), "alice"),
        written,
        "an unchanged entry was written again"
    );

    // A new name in the token is news: it is written.
    let server = ServerProcess::spawn(dir.path()).await;
    let mut renamed = claims("agent", "alice");
    renamed["name"] = serde_json::json!("Alice Renamed");
    renamed["inboxes"] = serde_json::json!(["support"]);
    server.client(&sign(&renamed)).await;
    assert!(directory_written_at(dir.path(), "alice") > written);
}
