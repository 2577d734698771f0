//! Prometheus metrics, served as text at `/metrics`.
//!
//! Counters are plain atomics behind `prometheus-client` types, cheap enough for the
//! per-frame paths.

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::store::AppendShortcutCounters;

pub struct Metrics {
    registry: Registry,
    /// Open WebSockets.
    pub connections: Gauge,
    pub frames_in: Counter,
    pub frames_out: Counter,
    pub events_appended: Counter,
    /// Sockets closed because their send queue overflowed.
    pub slow_consumers_closed: Counter,
    /// Seconds per group-commit transaction.
    commit_seconds: Histogram,
    /// Requests per group-commit transaction.
    commit_batch_size: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::with_store(None)
    }

    /// The metrics, with the store's own counters if its engine keeps any.
    pub fn with_store(shortcut: Option<AppendShortcutCounters>) -> Self {
        let mut registry = Registry::with_prefix("backchannel");
        let connections = Gauge::default();
        let frames_in = Counter::default();
        let frames_out = Counter::default();
        let events_appended = Counter::default();
        let slow_consumers_closed = Counter::default();
        let commit_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        let commit_batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 10));
        registry.register(
            "connections",
            "Open WebSocket connections",
            connections.clone(),
        );
        registry.register("frames_in", "WebSocket frames received", frames_in.clone());
        registry.register("frames_out", "WebSocket frames sent", frames_out.clone());
        registry.register(
            "events_appended",
            "Events durably appended to the log",
            events_appended.clone(),
        );
        registry.register(
            "slow_consumers_closed",
            "Sockets closed with 4008 because their send queue overflowed",
            slow_consumers_closed.clone(),
        );
        registry.register(
            "store_commit_seconds",
            "Latency of one group-commit transaction in the store",
            commit_seconds.clone(),
        );
        registry.register(
            "store_commit_batch_size",
            "Appends per group-commit transaction",
            commit_batch_size.clone(),
        );
        if let Some(shortcut) = shortcut {
            registry.register(
                "store_appends_on_remembered_heads",
                "Batches of plain appends written in one statement on the conversation \
                 heads this node remembered (PostgreSQL)",
                shortcut.written,
            );
            registry.register(
                "store_appends_fell_back",
                "Batches of plain appends that found a remembered head moved by another \
                 node and took the locking path instead (PostgreSQL)",
                shortcut.fell_back,
            );
        }
        Metrics {
            registry,
            connections,
            frames_in,
            frames_out,
            events_appended,
            slow_consumers_closed,
            commit_seconds,
            commit_batch_size,
        }
    }

    pub fn observe_commit(&self, elapsed: Duration, batch: usize) {
        self.commit_seconds.observe(elapsed.as_secs_f64());
        self.commit_batch_size.observe(batch as f64);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::error!("cannot encode metrics: {e}");
        }
        out
    }
}
