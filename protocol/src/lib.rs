//! Backchannel's wire contract, in types.
//!
//! This crate is the one place where the shapes that cross the network are defined: the
//! frames a client sends over the WebSocket ([`client`]), the frames the server sends back
//! ([`server`]), the events of a conversation ([`event`]), the JSON bodies of the HTTP API
//! ([`http`]) and the ids and roles they are made of ([`ids`]). The server and the tests
//! follow it; `docs/protocol.md` describes it for people.
//!
//! **This crate does no IO** and knows nothing of storage, sockets or tasks: it only
//! (de)serializes. Rules about who may see what live in the server, which builds the
//! customer's frames from a type that can only hold public events.

pub mod client;
pub mod event;
pub mod http;
pub mod ids;
pub mod server;

pub use client::{decode, ClientFrame, DecodeError, Decoded, FrameHead, Ref};
pub use event::{
    Actor, EventData, EventView, FieldTarget, NoteAudience, NoteType, Status, Visibility,
};
pub use ids::{Audience, ConversationId, EventId, InboxId, Role, TeamId, UserId};
pub use server::{close_code, ErrorCode};

/// Largest text frame a client may send, in bytes; a larger one closes the socket with 1009.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// Longest message or note body, in bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Longest `client_id`, in bytes.
pub const MAX_CLIENT_ID_BYTES: usize = 128;
/// Most events a `subscribe` replays before answering `truncated: true`.
pub const MAX_REPLAY: u64 = 1000;
