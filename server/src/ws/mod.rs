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

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};

use crate::api::ApiError;
use crate::app::AppState;
use crate::error::ServiceError;

/// Read chunk per socket: chat frames are small; a large frame is read in several chunks.
const READ_BUFFER_BYTES: usize = 512;
/// Frames are written through once this much is buffered (and at every flush).
const WRITE_BUFFER_BYTES: usize = 16 * 1024;
/// Most bytes buffered for writing before a write fails: a backstop behind the outbox.
const MAX_WRITE_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// Holds one of the node's connection slots until dropped.
pub struct SocketPermit(Arc<AppState>);

impl SocketPermit {
    fn acquire(state: &Arc<AppState>) -> Option<SocketPermit> {
        let open = state.open_sockets.fetch_add(1, Ordering::AcqRel);
        if open >= state.limits.max_connections {
            state.open_sockets.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        state.metrics.connections.inc();
        Some(SocketPermit(state.clone()))
    }
}

impl Drop for SocketPermit {
    fn drop(&mut self) {
        self.0.open_sockets.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.connections.dec();
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
