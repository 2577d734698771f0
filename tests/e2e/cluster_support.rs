//! The cluster harness: a fresh PostgreSQL database per test (created through `psql` on
//! the machine's server at 127.0.0.1:5432 and dropped by a guard, also when the test
//! panics), the machine's Redis at 127.0.0.1:6379 or a private `redis-server` that a test
//! can kill and restart on the same port, and nodes that are the real `backchannel`
//! binary started with `--database-url` and `--redis-url` (spawned through
//! `support::ServerProcess`). An unreachable PostgreSQL or Redis fails the test, never
//! skips it. Each test's database gives its nodes their own Redis channels (named by
//! the database's deployment id); node and user ids also carry a per-test tag, so that
//! logs and Redis traffic name one test.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::support::*;

/// The machine's PostgreSQL (trust authentication for `postgres`).
const PG_HOST: &str = "127.0.0.1";
const PG_PORT: &str = "5432";
const PG_USER: &str = "postgres";
/// The machine's Redis, shared by every test that does not need to kill it.
pub const SHARED_REDIS_PORT: u16 = 6379;
/// Presence TTL given to every node: short, so a dead node's users expire quickly.
pub const PRESENCE_TTL: Duration = Duration::from_millis(1500);

/// Runs one SQL statement as `postgres` on the `postgres` database.
fn psql(sql: &str) -> Result<String, String> {
    let output = std::process::Command::new("psql")
        .args([
            "-h", PG_HOST, "-p", PG_PORT, "-U", PG_USER, "-d", "postgres",
        ])
        .args(["-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql])
        .env("PGCONNECT_TIMEOUT", "5")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run psql: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "psql -c {sql:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// A database of its own for one test; dropped (with its connections) when this is.
pub struct Database {
    pub name: String,
}

impl Database {
    /// `CREATE DATABASE bc_e2e_<uuid>`; panics if PostgreSQL is unreachable.
    pub fn create() -> Database {
        let name = format!("bc_e2e_{}", uuid::Uuid::new_v4().simple());
        if let Err(e) = psql(&format!("CREATE DATABASE {name}")) {
            panic!("PostgreSQL at {PG_HOST}:{PG_PORT} (user {PG_USER}) is required: {e}");
        }
        Database { name }
    }

    pub fn url(&self) -> String {
        format!("postgres://{PG_USER}@{PG_HOST}:{PG_PORT}/{}", self.name)
    }

    /// Runs a statement inside this database (for tampering in audit tests).
    pub fn execute(&self, sql: &str) -> String {
        let output = std::process::Command::new("psql")
            .args([
                "-h", PG_HOST, "-p", PG_PORT, "-U", PG_USER, "-d", &self.name,
            ])
            .args(["-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql])
            .env("PGCONNECT_TIMEOUT", "5")
            .stdin(Stdio::null())
            .output()
            .expect("run psql");
        assert!(
            output.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        // FORCE: nodes killed a moment ago may still hold connections.
        if let Err(e) = psql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )) {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}

/// Whether a Redis answers `PING` on `127.0.0.1:port` within a second.
pub async fn redis_answers(port: u16) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        stream.write_all(b"PING\r\n").await.ok()?;
        let mut buf = [0u8; 16];
        let n = stream.read(&mut buf).await.ok()?;
        Some(buf[..n].starts_with(b"+PONG"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), attempt).await,
        Ok(Some(true))
    )
}

/// Sends one inline command to the Redis at `127.0.0.1:port`; the raw reply, with line
/// breaks shown as spaces (for diagnostics).
pub async fn redis_command(port: u16, command: &str) -> String {
    let attempt = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        stream
            .write_all(format!("{command}\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = vec![0u8; 4096];
        let n = stream.read(&mut buf).await.ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).replace("\r\n", " "))
    };
    match tokio::time::timeout(Duration::from_secs(2), attempt).await {
        Ok(Some(reply)) => reply,
        _ => format!("(no answer to {command})"),
    }
}

/// Publishes `payload` on `channel` at the Redis on `127.0.0.1:port`, as a node would (a
/// RESP array, so the payload's spaces and quotes go as they are); Redis's reply.
pub async fn redis_publish(port: u16, channel: &str, payload: &str) -> String {
    let mut command = String::from("*3\r\n$7\r\nPUBLISH\r\n");
    for part in [channel, payload] {
        command.push_str(&format!("${}\r\n{part}\r\n", part.len()));
    }
    let attempt = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        stream.write_all(command.as_bytes()).await.ok()?;
        let mut buf = vec![0u8; 256];
        let n = stream.read(&mut buf).await.ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).trim().to_owned())
    };
    match tokio::time::timeout(Duration::from_secs(2), attempt).await {
        Ok(Some(reply)) => reply,
        _ => format!("(no answer to PUBLISH {channel})"),
    }
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// A `redis-server` of this test's own, without persistence, that can be killed and
/// started again on the same port.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    pub async fn start() -> PrivateRedis {
        let mut last_error = String::new();
        for _ in 0..5 {
            let mut redis = PrivateRedis {
                port: free_port(),
                child: None,
            };
            match redis.launch().await {
                Ok(()) => return redis,
                Err(e) => last_error = e,
            }
        }
        panic!("could not start a private redis-server: {last_error}");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn launch(&mut self) -> Result<(), String> {
        let mut child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot run redis-server: {e}"))?;
        let deadline = Instant::now() + STEP;
        loop {
            if redis_answers(self.port).await {
                self.child = Some(child);
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "redis-server on port {} exited: {status}",
                    self.port
                ));
            }
            if Instant::now() > deadline {
                let _ = child.start_kill();
                return Err(format!("redis-server on port {} never answered", self.port));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL, and wait until it is gone.
    pub async fn kill(&mut self) {
        let mut child = self.child.take().expect("redis is running");
        child.start_kill().expect("kill redis-server");
        tokio::time::timeout(STEP, child.wait())
            .await
            .expect("redis-server did not die")
            .expect("wait for redis-server");
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "redis is still running");
        if let Err(e) = self.launch().await {
            panic!("restarting redis on the same port: {e}");
        }
    }
}

/// One test's cluster: its database and the Redis its nodes share.
pub struct Cluster {
    pub db: Database,
    pub redis_url: String,
    /// Makes node and user ids unique to this test.
    tag: String,
}

impl Cluster {
    /// A cluster on the machine's Redis; fails if Redis or PostgreSQL is unreachable.
    pub async fn on_shared_redis() -> Cluster {
        assert!(
            redis_answers(SHARED_REDIS_PORT).await,
            "Redis at 127.0.0.1:{SHARED_REDIS_PORT} is required and did not answer PING"
        );
        Cluster::on_redis(format!("redis://127.0.0.1:{SHARED_REDIS_PORT}"))
    }

    pub fn on_redis(redis_url: String) -> Cluster {
        let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        Cluster {
            db: Database::create(),
            redis_url,
            tag,
        }
    }

    /// A user (or node) id unique to this test: `base-tag`.
    pub fn id(&self, base: &str) -> String {
        format!("{base}-{}", self.tag)
    }

    /// Starts one node and waits until it reports store and broker ready.
    pub async fn node(&self, name: &str) -> Node {
        self.node_via(name, &self.redis_url).await
    }

    /// Starts one node that reaches Redis at `redis_url` (a [`RedisProxy`] in front of
    /// the cluster's Redis) and waits until it reports store and broker ready.
    pub async fn node_via(&self, name: &str, redis_url: &str) -> Node {
        self.node_with(name, redis_url, PRESENCE_TTL).await
    }

    /// A node believing other nodes' presence for `presence_ttl` (and so refreshing its
    /// own every third of it).
    pub async fn node_with(&self, name: &str, redis_url: &str, presence_ttl: Duration) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = self.id(name);
        let url = self.db.url();
        let ttl = presence_ttl.as_millis().to_string();
        let args = [
            "--database-url",
            url.as_str(),
            "--redis-url",
            redis_url,
            "--node-id",
            id.as_str(),
            "--presence-ttl-ms",
            ttl.as_str(),
            "--heartbeat-ms",
            "5000",
        ];
        let process = ServerProcess::spawn_with(dir.path(), &args).await;
        let node = Node {
            process,
            id,
            _dir: dir,
        };
        node.wait_ready("\"broker\":\"ok\"").await;
        node
    }

    /// The Redis channel `bc:{deployment}:{suffix}` of this cluster's deployment (ask
    /// once a node has run the migrations): `c:{conversation}`, `u:{user}`, `agents`.
    pub fn channel(&self, suffix: &str) -> String {
        let deployment = self.db.execute("SELECT id FROM deployment");
        format!("bc:{}:{suffix}", deployment.trim())
    }

    /// Two nodes, started at the same time (both run the migrations on a fresh database).
    pub async fn two_nodes(&self) -> (Node, Node) {
        tokio::join!(self.node("a"), self.node("b"))
    }
}

/// One `backchannel serve` process of a cluster.
pub struct Node {
    pub process: ServerProcess,
    /// Its `--node-id`.
    pub id: String,
    _dir: TempDir,
}

impl Deref for Node {
    type Target = ServerProcess;
    fn deref(&self) -> &ServerProcess {
        &self.process
    }
}

impl DerefMut for Node {
    fn deref_mut(&mut self) -> &mut ServerProcess {
        &mut self.process
    }
}

impl Node {
    /// `GET /readyz`: status and body.
    pub async fn readyz(&self) -> (u16, String) {
        let reply = self.http.get("/readyz", None).await;
        (reply.status, reply.text)
    }

    /// Polls `/readyz` until its body contains `needle` (deadline [`STEP`]).
    pub async fn wait_ready(&self, needle: &str) -> String {
        let deadline = Instant::now() + STEP;
        loop {
            let (status, body) = self.readyz().await;
            if status == 200 && body.contains(needle) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "node {}: /readyz never contained {needle} (last: {status} {body}); output:\n{}",
                self.id,
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A note the server acknowledged.
#[derive(Clone, Debug)]
pub struct Acked {
    pub client_id: String,
    pub body: String,
    pub event_id: String,
    pub seq: u64,
}

impl Acked {
    pub fn from_ok(client_id: &str, body: &str, ok: &Value) -> Acked {
        Acked {
            client_id: client_id.to_owned(),
            body: body.to_owned(),
            event_id: ok["event_id"].as_str().expect("event_id in ok").to_owned(),
            seq: ok["seq"].as_u64().expect("seq in ok"),
        }
    }
}

/// Checks what one subscriber received (`event` frames in arrival order, possibly over
/// several connections, or HTTP history entries): exactly the seqs `1..=head` in order,
/// each once, and every acknowledged note at its seq with its event id.
pub fn check_delivery(who: &str, events: &[Value], head: u64, acked: &[Acked]) {
    let got = seqs(events);
    if got != range(1, head) {
        let mut seen: HashMap<u64, usize> = HashMap::new();
        for s in &got {
            *seen.entry(*s).or_default() += 1;
        }
        let repeated: Vec<u64> = seen
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(s, _)| *s)
            .collect();
        let missing: Vec<u64> = (1..=head).filter(|s| !seen.contains_key(s)).collect();
        let out_of_order = got.windows(2).filter(|w| w[1] <= w[0]).count();
        panic!(
            "{who}: expected seqs 1..={head} once each in order; got {} events, \
             repeated {repeated:?}, missing {missing:?}, {out_of_order} out of order",
            got.len()
        );
    }
    let by_seq: HashMap<u64, &Value> = events
        .iter()
        .map(|e| (e["seq"].as_u64().unwrap(), e))
        .collect();
    for note in acked {
        let event = by_seq
            .get(&note.seq)
            .unwrap_or_else(|| panic!("{who}: acknowledged note not delivered: {note:?}"));
        assert_eq!(
            event["event"]["id"],
            note.event_id.as_str(),
            "{who}: seq {} is not the acknowledged note {}: {event}",
            note.seq,
            note.client_id
        );
        assert_eq!(
            event["event"]["body"],
            note.body.as_str(),
            "{who}: {note:?}"
        );
    }
}

/// What a [`RedisProxy`] does with the bytes of the nodes behind it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// Forwards both ways.
    Pass,
    /// Keeps what nodes send (publishes included) without forwarding it: a node whose
    /// publishes are slow to leave.
    Hold,
    /// Closes every connection and every new one at once: a node cut off from Redis.
    Cut,
}

/// A TCP proxy in front of the machine's Redis, for one node: the test decides when
/// that node's traffic passes, stalls or is cut, without touching the other nodes.
pub struct RedisProxy {
    pub port: u16,
    link: watch::Sender<Link>,
    accept: JoinHandle<()>,
}

impl RedisProxy {
    pub async fn start(upstream_port: u16) -> RedisProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let (link, link_rx) = watch::channel(Link::Pass);
        let accept = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                if *link_rx.borrow() == Link::Cut {
                    continue; // dropped: closed at once
                }
                connections.spawn(forward(client, upstream_port, link_rx.clone()));
            }
        });
        RedisProxy { port, link, accept }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn set(&self, link: Link) {
        self.link.send_replace(link);
    }
}

impl Drop for RedisProxy {
    fn drop(&mut self) {
        // Aborting the accept task drops its JoinSet, which aborts every connection.
        self.accept.abort();
    }
}

async fn forward(client: TcpStream, upstream_port: u16, mut link: watch::Receiver<Link>) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let mut hold = link.clone();
    let up = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if hold.wait_for(|l| *l == Link::Pass).await.is_err() {
                return;
            }
            if server_write.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let down = async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = link.wait_for(|l| *l == Link::Cut) => {}
    }
}

/// A plain Redis subscriber, to see what the nodes publish.
pub struct RedisSpy {
    stream: TcpStream,
    seen: Vec<u8>,
}

impl RedisSpy {
    /// `SUBSCRIBE channel` on the Redis at `port`, confirmed.
    pub async fn subscribe(port: u16, channel: &str) -> RedisSpy {
        let stream = tokio::time::timeout(STEP, TcpStream::connect(("127.0.0.1", port)))
            .await
            .expect("connect to redis in time")
            .expect("connect to redis");
        let mut spy = RedisSpy {
            stream,
            seen: Vec::new(),
        };
        let command = format!(
            "*2\r\n$9\r\nSUBSCRIBE\r\n${}\r\n{channel}\r\n",
            channel.len()
        );
        spy.stream
            .write_all(command.as_bytes())
            .await
            .expect("send SUBSCRIBE");
        assert!(
            spy.saw(channel, Instant::now() + STEP).await,
            "SUBSCRIBE {channel} not confirmed"
        );
        spy.seen.clear();
        spy
    }

    /// Whether `needle` has been published (or arrives before `deadline`).
    pub async fn saw(&mut self, needle: &str, deadline: Instant) -> bool {
        let mut buf = [0u8; 4096];
        loop {
            if self
                .seen
                .windows(needle.len())
                .any(|w| w == needle.as_bytes())
            {
                return true;
            }
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => self.seen.extend_from_slice(&buf[..n]),
                _ => return false,
            }
        }
    }
}
