//! Backchannel's end-to-end suite: every test starts its own server (in-process on
//! 127.0.0.1:0 with a fresh data directory, or the real binary) and talks to it over HTTP
//! and WebSocket exactly as a client would, against `docs/protocol.md`.
//!
//! Run with `cargo test --test e2e`. Tests are independent and run in parallel.

mod support;

mod auth;
mod bad_input;
mod durability;
mod http;
mod leaks;
mod limits;
mod property;
mod slow_consumers;
mod streams;

mod cluster;
mod collab_activity;
mod collab_assign;
mod collab_audit;
mod collab_coaching;
mod collab_fields;
mod collab_guard;
mod collab_leaks;
mod collab_mentions;
mod collab_notes;
mod collab_search;
mod collab_support;
mod collab_tags;
mod demo;
mod floor;
