//! Runtime configuration: what `backchannel serve` was told, with the contract's defaults.
//!
//! `main.rs` fills a [`Config`] from flags and environment; tests build one directly with
//! [`Config::for_tests`]. Nothing else reads flags or the environment.

use std::path::PathBuf;
use std::time::Duration;

/// Everything [`crate::run`] needs besides the listening socket.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the SQLite file and the generated JWT secret live.
    pub data_dir: PathBuf,
    /// `postgres://...` selects PostgreSQL; unset means SQLite in `data_dir`.
    pub database_url: Option<String>,
    /// Redis pub/sub between nodes; unset means this node is alone.
    pub redis_url: Option<String>,
    /// HS256 secret; unset means generated once and kept in `data_dir`.
    pub jwt_secret: Option<String>,
    /// Origins allowed to open a WebSocket; `None` allows any.
    pub allowed_origins: Option<Vec<String>>,
    /// This node's name in logs and metrics.
    pub node_id: String,
    /// Where to serve `GET /metrics` instead of the public listener, e.g. an internal
    /// address for Prometheus; unset, it is on the public listener, as the contract has
    /// it. The counters are the whole node's activity: on a quiet node a customer could
    /// watch `events_appended` move while their own stream stays still.
    pub metrics_listen: Option<String>,
    /// `--demo`: serve the demo pages and mint tokens for the demo users (`demo.rs`).
    /// Never on in production: anyone who can reach the node gets a staff token.
    pub demo: bool,
    pub limits: Limits,
}

/// The bounds that keep one node's memory and work finite whatever clients do.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Open WebSockets; the next upgrade is refused with 503.
    pub max_connections: usize,
    /// Open WebSockets of one user on one node; the next `hello` is refused with 4029,
    /// so one token (or a client that leaks sockets) cannot take the node's slots.
    pub max_connections_per_user: usize,
    /// Frames queued for one socket; a socket whose queue is full is closed with 4008.
    pub send_queue_frames: usize,
    /// SO_SNDBUF of each accepted socket, in bytes (the kernel doubles it for its own
    /// bookkeeping); `None` leaves it to the kernel's autotuning, which lets a socket that
    /// stops reading hold up to `tcp_wmem`'s maximum (4 MiB by default) of kernel memory.
    pub socket_send_buffer: Option<usize>,
    /// Largest client frame, in bytes; a larger one closes the socket with 1009.
    pub max_frame_bytes: usize,
    /// How long a new socket has to send `hello`.
    pub hello_timeout: Duration,
    /// Interval of server pings; a socket silent for two intervals is closed.
    pub heartbeat_interval: Duration,
    /// Conversations one socket may subscribe to at once.
    pub max_subscriptions: usize,
    /// How long a node's presence (viewers, agent status) is believed without a refresh:
    /// the users of a node that died disappear within this time.
    pub presence_ttl: Duration,
    /// A connected staff member without a command for this long shows as `away`.
    pub away_after: Duration,
    /// Commands per second one socket may send (bursts of twice that).
    pub commands_per_second: u32,
    /// Commands per second one user may send over all their sockets and HTTP requests
    /// on one node (bursts of twice that).
    pub user_commands_per_second: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_connections_per_user: 64,
            send_queue_frames: 2_048,
            socket_send_buffer: Some(64 * 1024),
            max_frame_bytes: backchannel_protocol::MAX_FRAME_BYTES,
            hello_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(25),
            max_subscriptions: 500,
            presence_ttl: Duration::from_secs(30),
            away_after: Duration::from_secs(300),
            commands_per_second: 50,
            user_commands_per_second: 100,
        }
    }
}

impl Config {
    /// A node on SQLite in `data_dir`, with a fixed secret, as the tests start it. Rate
    /// limits are lifted (tests that write fast would trip them); the rate-limit tests
    /// set their own.
    pub fn for_tests(data_dir: PathBuf, jwt_secret: &str) -> Self {
        Self {
            data_dir,
            database_url: None,
            redis_url: None,
            jwt_secret: Some(jwt_secret.to_owned()),
            allowed_origins: None,
            node_id: "test".to_owned(),
            metrics_listen: None,
            demo: false,
            limits: Limits {
                max_connections_per_user: 10_000,
                commands_per_second: 1_000_000,
                user_commands_per_second: 1_000_000,
                ..Limits::default()
            },
        }
    }
}
