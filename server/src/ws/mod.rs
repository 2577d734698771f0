//! The WebSocket endpoint, `GET /v1/ws`.
//!
//! [`upgrade`] applies the checks that happen before a socket exists (allowed origins,
//! the connection limit) and sizes the socket's buffers for a chat protocol rather than
//! tungstenite's defaults (128 KiB of read buffer per connection). Each accepted socket is
//! served by [`connection::serve`]: one task that reads commands and writes the socket's
//! [`outbox::Outbox`] ([`socket::Socket`]).

pub mod connection;
pub mod outbox;
pub mod socket;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};

use crate::api::ApiError;
use crate::app::AppState;
use crate::error::ServiceError;
use outbox::Outbox;

/// Read chunk per socket: chat frames are small; a large frame is read in several chunks.
const READ_BUFFER_BYTES: usize = 512;
/// Frames are written through once this much is buffered (and at every flush).
const WRITE_BUFFER_BYTES: usize = 16 * 1024;
/// Most bytes buffered for writing before a write fails: a backstop behind the outbox.
const MAX_WRITE_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// Every open socket's outbox, so that shutdown reaches each socket's task through the
/// outbox it already watches (a shutdown signal of their own would be one more thing
/// every socket's task polls at every wake-up).
#[derive(Default)]
pub struct LiveSockets {
    registry: parking_lot::Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    outboxes: HashMap<u64, Outbox>,
    stopping: bool,
}

impl LiveSockets {
    /// Asks every open socket to close with 1001 once the command it is running has its
    /// answer queued; sockets opened from now on are asked at once.
    pub fn shut_down(&self) {
        let mut registry = self.registry.lock();
        registry.stopping = true;
        for outbox in registry.outboxes.values() {
            outbox.request_shutdown();
        }
    }

    fn join(&self, outbox: &Outbox) -> u64 {
        let mut registry = self.registry.lock();
        let id = registry.next_id;
        registry.next_id += 1;
        registry.outboxes.insert(id, outbox.clone());
        if registry.stopping {
            outbox.request_shutdown();
        }
        id
    }

    fn leave(&self, id: u64) {
        self.registry.lock().outboxes.remove(&id);
    }
}

/// Holds one of the node's connection slots, and the socket's place among the live
/// sockets once it has an outbox, until dropped.
pub struct SocketPermit {
    state: Arc<AppState>,
    live: Option<u64>,
}

impl SocketPermit {
    fn acquire(state: &Arc<AppState>) -> Option<SocketPermit> {
        let open = state.open_sockets.fetch_add(1, Ordering::AcqRel);
        if open >= state.limits.max_connections {
            state.open_sockets.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        state.metrics.connections.inc();
        Some(SocketPermit {
            state: state.clone(),
            live: None,
        })
    }

    /// Makes the socket reachable by shutdown through its outbox.
    pub fn join(&mut self, outbox: &Outbox) {
        self.live = Some(self.state.live_sockets.join(outbox));
    }
}

impl Drop for SocketPermit {
    fn drop(&mut self) {
        if let Some(id) = self.live {
            self.state.live_sockets.leave(id);
        }
        self.state.open_sockets.fetch_sub(1, Ordering::AcqRel);
        self.state.metrics.connections.dec();
    }
}

pub async fn upgrade(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if let Some(allowed) = &state.allowed_origins {
        // Browsers always send Origin; a page on another site is refused here, before
        // it can use a visitor's cookies or token. Clients that are not browsers send
        // none and authenticate with their token like everyone else.
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or_default();
            if !allowed.iter().any(|a| a == origin) {
                return ApiError(ServiceError::forbidden("origin not allowed")).into_response();
            }
        }
    }
    let Some(permit) = SocketPermit::acquire(&state) else {
        return ApiError(ServiceError::Unavailable(
            "connection limit reached; retry later".into(),
        ))
        .into_response();
    };
    let max_frame = state.limits.max_frame_bytes;
    upgrade
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_write_buffer_size(MAX_WRITE_BUFFER_BYTES)
        .max_message_size(max_frame)
        .max_frame_size(max_frame)
        .on_upgrade(move |socket| {
            // A task of its own rather than inside axum's upgrade task, which then ends:
            // that task's state (the upgrade, the handshake's config) is not kept for the
            // socket's life.
            let sockets = state.sockets.clone();
            sockets.spawn(connection::serve(socket, state, permit));
            std::future::ready(())
        })
}
