//! The `backchannel` binary: parses flags, binds, and hands over to [`backchannel::run`].
//!
//! `backchannel serve` runs a node; `backchannel token` prints a signed token for trying
//! it out and for scripts; `backchannel audit verify|export` checks and exports a
//! conversation's hash chains from the store.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use backchannel::auth::{self, Claims, Keys};
use backchannel::{Config, Limits};
use backchannel_protocol::Role;
use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// jemalloc rather than glibc's malloc: a node holds many small allocations per socket
/// for as long as the socket lives, made and freed from different worker threads, and
/// glibc's per-thread arenas keep more of that resident (`bc-load idle`: 10.4 → 9.1–9.5
/// KiB per idle connection; docs/benchmarks.md).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "backchannel",
    version,
    about = "Real-time collaboration hub for support teams"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node (SQLite in the data directory unless --database-url is given).
    Serve(ServeArgs),
    /// Print a signed token.
    Token(TokenArgs),
    /// Verify or export the audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Recompute every conversation's hash chain; exit 1 naming the first broken event.
    Verify {
        #[arg(long, env = "BACKCHANNEL_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
        /// postgres://... to check a PostgreSQL store instead of the data directory's.
        #[arg(long, env = "DATABASE_URL")]
        database_url: Option<String>,
    },
    /// Write every event with its hash as JSON lines (to --out, or stdout).
    Export {
        #[arg(long, env = "BACKCHANNEL_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
        #[arg(long, env = "DATABASE_URL")]
        database_url: Option<String>,
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Args)]
struct SecretArgs {
    /// Where the SQLite file and the generated secret live.
    #[arg(long, env = "BACKCHANNEL_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// HS256 secret; unset: generated once and kept in the data directory.
    #[arg(long, env = "BACKCHANNEL_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
}

#[derive(Args)]
struct ServeArgs {
    #[arg(long, env = "BACKCHANNEL_LISTEN", default_value = "127.0.0.1:8080")]
    listen: String,
    #[command(flatten)]
    secret: SecretArgs,
    /// postgres://... selects PostgreSQL.
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    /// Redis pub/sub between nodes.
    #[arg(long, env = "BACKCHANNEL_REDIS_URL")]
    redis_url: Option<String>,
    /// Comma-separated origins allowed to open a WebSocket.
    #[arg(long, env = "BACKCHANNEL_ALLOWED_ORIGINS", value_delimiter = ',')]
    allowed_origins: Option<Vec<String>>,
    #[arg(long, env = "BACKCHANNEL_NODE_ID")]
    node_id: Option<String>,
    /// Serve GET /metrics on this address (e.g. 10.0.0.5:9100) instead of the public
    /// listener, so only the monitoring network can read the node's activity counters.
    #[arg(long, env = "BACKCHANNEL_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// Serve the demo (widget, agent console, supervisor view) at / and mint tokens for
    /// its fixed users. For trying Backchannel out only: never in production.
    #[arg(long, env = "BACKCHANNEL_DEMO", value_parser = clap::builder::BoolishValueParser::new())]
    demo: bool,
    /// Open WebSockets before upgrades are refused with 503.
    #[arg(long, env = "BACKCHANNEL_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Open WebSockets of one user before their next hello is refused with 4029.
    #[arg(long, env = "BACKCHANNEL_MAX_CONNECTIONS_PER_USER")]
    max_connections_per_user: Option<usize>,
    /// Frames queued per socket before it is closed with 4008.
    #[arg(long, env = "BACKCHANNEL_SEND_QUEUE")]
    send_queue: Option<usize>,
    /// SO_SNDBUF per socket in bytes, bounding the kernel memory a reader that stops
    /// reading can pin (default 65536; 0 leaves it to the kernel's autotuning).
    #[arg(long, env = "BACKCHANNEL_SOCKET_SEND_BUFFER")]
    socket_send_buffer: Option<usize>,
    #[arg(long, env = "BACKCHANNEL_HEARTBEAT_MS")]
    heartbeat_ms: Option<u64>,
    #[arg(long, env = "BACKCHANNEL_HELLO_TIMEOUT_MS")]
    hello_timeout_ms: Option<u64>,
    /// How long other nodes' presence is believed without a refresh.
    #[arg(long, env = "BACKCHANNEL_PRESENCE_TTL_MS")]
    presence_ttl_ms: Option<u64>,
    /// Idle time after which a connected agent shows as away.
    #[arg(long, env = "BACKCHANNEL_AWAY_AFTER_MS")]
    away_after_ms: Option<u64>,
    /// Commands per second per socket (bursts of twice that).
    #[arg(long, env = "BACKCHANNEL_COMMANDS_PER_SECOND")]
    commands_per_second: Option<u32>,
    /// Commands per second per user on this node, sockets and HTTP together.
    #[arg(long, env = "BACKCHANNEL_USER_COMMANDS_PER_SECOND")]
    user_commands_per_second: Option<u32>,
}

#[derive(Args)]
struct TokenArgs {
    #[arg(long)]
    role: Role,
    #[arg(long)]
    sub: String,
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    handle: Option<String>,
    /// Comma-separated inbox ids, or `*`.
    #[arg(long, value_delimiter = ',')]
    inboxes: Option<Vec<String>>,
    /// Comma-separated team ids.
    #[arg(long, value_delimiter = ',')]
    teams: Option<Vec<String>>,
    /// How long the token is valid: 30m, 1h, 7d...
    #[arg(long, default_value = "1h")]
    ttl: humantime::Duration,
    #[command(flatten)]
    secret: SecretArgs,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Token(args) => token(args),
        Command::Audit(command) => audit(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("backchannel: {message}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> Result<(), String> {
    let (secret, secret_file) =
        auth::load_or_create_secret(args.secret.jwt_secret.as_deref(), &args.secret.data_dir)
            .map_err(|e| e.to_string())?;
    let secret = String::from_utf8(secret).map_err(|_| "the secret is not UTF-8".to_string())?;
    let defaults = Limits::default();
    let config = Config {
        data_dir: args.secret.data_dir,
        database_url: args.database_url,
        redis_url: args.redis_url,
        jwt_secret: Some(secret),
        allowed_origins: args.allowed_origins,
        node_id: args
            .node_id
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()),
        metrics_listen: args.metrics_listen,
        demo: args.demo,
        limits: Limits {
            max_connections: args.max_connections.unwrap_or(defaults.max_connections),
            max_connections_per_user: args
                .max_connections_per_user
                .unwrap_or(defaults.max_connections_per_user),
            send_queue_frames: args.send_queue.unwrap_or(defaults.send_queue_frames),
            socket_send_buffer: match args.socket_send_buffer {
                None => defaults.socket_send_buffer,
                Some(0) => None,
                Some(bytes) => Some(bytes),
            },
            heartbeat_interval: args
                .heartbeat_ms
                .map(Duration::from_millis)
                .unwrap_or(defaults.heartbeat_interval),
            hello_timeout: args
                .hello_timeout_ms
                .map(Duration::from_millis)
                .unwrap_or(defaults.hello_timeout),
            presence_ttl: args
                .presence_ttl_ms
                .map(Duration::from_millis)
                .unwrap_or(defaults.presence_ttl),
            away_after: args
                .away_after_ms
                .map(Duration::from_millis)
                .unwrap_or(defaults.away_after),
            commands_per_second: args
                .commands_per_second
                .unwrap_or(defaults.commands_per_second),
            user_commands_per_second: args
                .user_commands_per_second
                .unwrap_or(defaults.user_commands_per_second),
            ..defaults
        },
    };
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let listener = listen(&args.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
        let address = listener.local_addr().map_err(|e| e.to_string())?;
        match &secret_file {
            Some(path) => println!("jwt secret kept in {}", path.display()),
            None => println!("jwt secret from --jwt-secret"),
        }
        println!("listening on http://{address}");
        if args.demo {
            println!("demo: open http://{address}/");
        }
        backchannel::run(config, listener, shutdown_signal())
            .await
            .map_err(|e| e.to_string())
    })
}

/// Connections the kernel may queue for `accept` (it caps this at `net.core.somaxconn`).
/// tokio's `TcpListener::bind` asks for 128: when thousands of clients reconnect at once
/// (after a deploy or a network blip), the SYNs past the queue are dropped and retried
/// after 1 s, then 3 s, then 7 s (`bc-load idle`, 500 handshakes at a time: 2,689 listen
/// overflows and 15–20 s for 10,000 connections; docs/benchmarks.md).
const LISTEN_BACKLOG: u32 = 4096;

/// Binds the first address `address` resolves to that accepts a bind, with
/// [`LISTEN_BACKLOG`].
async fn listen(address: &str) -> std::io::Result<tokio::net::TcpListener> {
    let mut last_error = None;
    for addr in tokio::net::lookup_host(address).await? {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // As `TcpListener::bind` does: a restarted server can bind while the old
        // connections linger in TIME_WAIT.
        socket.set_reuseaddr(true)?;
        match socket.bind(addr) {
            Ok(()) => return socket.listen(LISTEN_BACKLOG),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the address resolves to nothing",
        )
    }))
}

/// Resolves on ctrl-c or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}

/// The store `serve` would use with the same flags, which must exist already: an audit
/// pointed at a mistyped directory would otherwise create an empty store there and
/// report that every chain (of none) verifies.
async fn open_store(
    data_dir: &std::path::Path,
    database_url: Option<&str>,
) -> Result<std::sync::Arc<dyn backchannel::store::Store>, String> {
    use backchannel::store::{postgres::PgStore, sqlite::SqliteStore, sqlite::DATABASE_FILE};
    match database_url.filter(|url| !url.is_empty()) {
        Some(url) => Ok(PgStore::open(url).await.map_err(|e| e.to_string())?),
        None => {
            let file = data_dir.join(DATABASE_FILE);
            if !file.is_file() {
                return Err(format!("no store at {}", file.display()));
            }
            Ok(SqliteStore::open(data_dir)
                .await
                .map_err(|e| e.to_string())?)
        }
    }
}

fn audit(command: AuditCommand) -> Result<(), String> {
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        match command {
            AuditCommand::Verify {
                data_dir,
                database_url,
            } => {
                let store = open_store(&data_dir, database_url.as_deref()).await?;
                let report = backchannel::audit::verify_all(store.as_ref())
                    .await
                    .map_err(|e| e.to_string())?;
                store.close().await;
                println!(
                    "checked {} events in {} conversations",
                    report.events, report.conversations
                );
                // Both kinds of damage are reported: events without their conversation
                // must not hide a broken chain elsewhere.
                let mut problems = Vec::new();
                if let Some((conversation, broken)) = report.broken.first() {
                    problems.push(format!(
                        "chain broken in {} conversation(s); first: conversation {conversation}, \
                         seq {}, event {}: {}",
                        report.broken.len(),
                        broken.seq,
                        broken.event_id.as_deref().unwrap_or("(missing)"),
                        broken.reason
                    ));
                }
                if let Some(first) = report.orphaned.first() {
                    problems.push(format!(
                        "events of {} conversation(s) have no conversation row; first: {first}",
                        report.orphaned.len(),
                    ));
                }
                if problems.is_empty() {
                    println!("every chain verifies");
                    Ok(())
                } else {
                    Err(problems.join("\n"))
                }
            }
            AuditCommand::Export {
                data_dir,
                database_url,
                out,
            } => {
                let store = open_store(&data_dir, database_url.as_deref()).await?;
                let mut sink: Box<dyn std::io::Write> = match &out {
                    Some(path) => Box::new(std::io::BufWriter::new(
                        std::fs::File::create(path).map_err(|e| e.to_string())?,
                    )),
                    None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
                };
                let lines = backchannel::audit::export(store.as_ref(), &mut *sink)
                    .await
                    .map_err(|e| e.to_string())?;
                store.close().await;
                eprintln!("exported {lines} events");
                Ok(())
            }
        }
    })
}

fn token(args: TokenArgs) -> Result<(), String> {
    let (secret, _) =
        auth::load_or_create_secret(args.secret.jwt_secret.as_deref(), &args.secret.data_dir)
            .map_err(|e| e.to_string())?;
    let claims = Claims {
        sub: args.sub,
        role: args.role,
        name: args.name,
        handle: args.handle,
        teams: args.teams,
        inboxes: args.inboxes,
        exp: auth::expiry_after(args.ttl.into()),
    };
    let keys = Keys::new(&secret);
    let token = keys.mint(&claims).map_err(|e| e.to_string())?;
    // A token the server would refuse (an empty `sub`, a control character) is an error
    // here, not a token printed for the caller to find out with.
    keys.verify(&token).map_err(|e| e.to_string())?;
    println!("{token}");
    Ok(())
}
