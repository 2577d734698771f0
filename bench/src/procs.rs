//! The processes a benchmark runs against, and the set-up it does over HTTP.
//!
//! [`Server::spawn`] starts `backchannel serve` (or `bc-relay`) pinned with `taskset` to
//! the hub's core, with the descriptor limit raised to the hard limit by the shell that
//! execs it, on port 0 and a fresh data directory; it reads the `listening on` line for
//! the address and keeps the PID for `/proc` readings. Dropping it sends SIGTERM (then
//! SIGKILL) and removes the data directory. Tokens are signed here with the secret the
//! server was given, and conversations are opened with `POST /v1/conversations`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// The secret every spawned server is given, so the load generator can sign tokens.
pub const DEFAULT_SECRET: &str = "backchannel-bench-secret-not-for-production";

/// A running server: spawned by us (stopped on drop) or given by address.
pub struct Server {
    pub addr: SocketAddr,
    pub pid: Option<u32>,
    child: Option<Child>,
    data_dir: Option<PathBuf>,
}

/// How to start one server process.
pub struct Launch<'a> {
    pub binary: &'a Path,
    /// Arguments after the binary (for Backchannel: `serve` and its flags).
    pub args: Vec<String>,
    /// `taskset -c` list, or none.
    pub cores: Option<&'a str>,
    /// Where its stderr goes.
    pub log: PathBuf,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
}

impl Server {
    /// A server someone else runs.
    pub fn external(addr: SocketAddr, pid: Option<u32>) -> Server {
        Server {
            addr,
            pid,
            child: None,
            data_dir: None,
        }
    }

    pub fn spawn(launch: Launch<'_>, data_dir: Option<PathBuf>) -> Result<Server, String> {
        let mut command = match launch.cores {
            Some(cores) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cores, "sh"]);
                c
            }
            None => Command::new("sh"),
        };
        // The shell raises the soft descriptor limit to the hard one, then becomes the
        // server (same PID, same affinity).
        command
            .arg("-c")
            .arg("ulimit -n \"$(ulimit -Hn)\" && exec \"$0\" \"$@\"")
            .arg(launch.binary)
            .args(&launch.args)
            .envs(launch.env.iter().map(|(k, v)| (k, v)));
        let log = std::fs::File::create(&launch.log)
            .map_err(|e| format!("cannot create {}: {e}", launch.log.display()))?;
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", launch.binary.display()))?;
        let pid = child.id();
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on http://") {
                    let _ = tx.send(addr.trim().to_owned());
                    break;
                }
            }
            // Keep reading so a later print never fails.
            for _ in lines {}
        });
        let mut server = Server {
            addr: "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!()),
            pid: Some(pid),
            child: Some(child),
            data_dir,
        };
        let addr = rx.recv_timeout(Duration::from_secs(60)).map_err(|_| {
            format!(
                "{} did not print its address; see {}",
                launch.binary.display(),
                launch.log.display()
            )
        })?;
        server.addr = addr.parse().map_err(|e| format!("address {addr}: {e}"))?;
        Ok(server)
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops a spawned server: SIGTERM, then SIGKILL after 10 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: sending a signal to our own child's PID.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        if let Some(dir) = self.data_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A fresh directory under the system's temp dir.
pub fn temp_dir(tag: &str) -> Result<PathBuf, String> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("bc-bench-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    role: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    inboxes: Option<Vec<&'a str>>,
    exp: u64,
}

/// Signs a token for `sub` with `role` (`customer`, `agent`, ...); staff get `support`.
pub fn token(secret: &str, role: &str, sub: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        + 6 * 3600;
    let claims = Claims {
        sub,
        role,
        inboxes: (role != "customer").then(|| vec!["support"]),
        exp,
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap_or_default()
}

/// Opens one conversation per customer sub in `contacts`, `concurrency` at a time;
/// returns their ids in the same order.
pub async fn open_conversations(
    base_url: &str,
    secret: &str,
    contacts: &[String],
    concurrency: usize,
) -> Result<Vec<String>, String> {
    use futures::StreamExt;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .map_err(|e| e.to_string())?;
    let url = format!("{base_url}/v1/conversations");
    let results: Vec<Result<String, String>> = futures::stream::iter(contacts.iter())
        .map(|contact| {
            let http = http.clone();
            let url = url.clone();
            let token = token(secret, "customer", contact);
            async move {
                let request = http.post(&url).bearer_auth(token).json(&serde_json::json!({
                    "inbox_id": "support",
                    "subject": format!("bench {contact}"),
                }));
                let body = json_answer(request, "POST /v1/conversations").await?;
                body["id"]
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("no id in {body}"))
            }
        })
        .buffered(concurrency)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Sends `request` and returns its JSON body, or an error naming `what` if it could not
/// be sent or read, or was answered with anything but success.
async fn json_answer(
    request: reqwest::RequestBuilder,
    what: &str,
) -> Result<serde_json::Value, String> {
    let response = request.send().await.map_err(|e| format!("{what}: {e}"))?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.map_err(|e| format!("{what}: {e}"))?;
    if !status.is_success() {
        return Err(format!("{what}: {status} {body}"));
    }
    Ok(body)
}

/// The head of each conversation's agent stream, read over HTTP
/// (`GET /v1/conversations/{id}/events`) as the agent `agents[i]` of `conversations[i]`.
pub async fn agent_stream_heads(
    base_url: &str,
    secret: &str,
    conversations: &[String],
    agents: &[String],
) -> Result<Vec<u64>, String> {
    let http = reqwest::Client::new();
    let mut heads = Vec::with_capacity(conversations.len());
    for (conversation, agent) in conversations.iter().zip(agents) {
        let url = format!("{base_url}/v1/conversations/{conversation}/events?after=0&limit=1");
        let request = http.get(&url).bearer_auth(token(secret, "agent", agent));
        let body = json_answer(request, &format!("GET {url}")).await?;
        heads.push(
            body["head"]
                .as_u64()
                .ok_or_else(|| format!("no head in {body}"))?,
        );
    }
    Ok(heads)
}

/// Creates a PostgreSQL database with `psql` and returns its URL; `base` is
/// `postgres://user@host:port`.
pub fn create_database(base: &str, name: &str) -> Result<String, String> {
    psql(base, &format!("CREATE DATABASE {name}"))?;
    Ok(format!("{}/{name}", base.trim_end_matches('/')))
}

pub fn drop_database(base: &str, name: &str) {
    if let Err(e) = psql(
        base,
        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    ) {
        eprintln!("bc-load: could not drop database {name}: {e}");
    }
}

/// `VACUUM (ANALYZE)` of the database at `url` (the one `create_database` returned).
pub fn vacuum_analyze(url: &str) -> Result<(), String> {
    run_psql(url, "VACUUM (ANALYZE)")
}

/// `CHECKPOINT`: PostgreSQL writes and syncs every page it holds dirty, so none of it is
/// left for the kernel to write back later, in the middle of a measurement.
pub fn checkpoint(url: &str) -> Result<(), String> {
    run_psql(url, "CHECKPOINT")
}

fn psql(base: &str, sql: &str) -> Result<(), String> {
    run_psql(&format!("{}/postgres", base.trim_end_matches('/')), sql)
}

fn run_psql(url: &str, sql: &str) -> Result<(), String> {
    let output = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-qc", sql])
        .output()
        .map_err(|e| format!("psql: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "psql {sql}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}
