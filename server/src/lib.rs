//! Backchannel: a real-time collaboration hub for customer-support teams.
//!
//! A conversation has a customer on one side and a team on the other. Every change is an
//! event appended to a durable log and then delivered, live, to every socket allowed to
//! see it. The customer's side of a room can only be handed public events: that rule is
//! carried by the types in [`visibility`], not by checks in handlers.
//!
//! Map of the modules, in the order a note travels through them:
//!
//! - [`ws`]: the WebSocket endpoint. One task per socket reads it, calls the service,
//!   and drains the socket's bounded [`ws::outbox::Outbox`].
//! - [`api`]: the HTTP endpoints, calling the same service.
//! - [`service`]: the one write path. Checks who may do what, builds events, hands them to
//!   the writer and waits until they are durable.
//! - [`store`]: the event log. [`store::writer`] group-commits appends; only `store`
//!   names sqlx.
//! - [`broker`]: publishes committed events to other nodes (Redis) and feeds theirs to
//!   the hub; a no-op on a single node.
//! - [`hub`]: rooms per conversation; delivers committed events to subscribers in `seq`
//!   order, once, serializing each event once per audience.
//! - [`visibility`]: `PublicEvent` and the typed frames each side of a room accepts.
//! - [`auth`]: tokens. [`metrics`]: Prometheus counters. [`config`]: limits and flags.
//!   [`error`]: `ServiceError` and the protocol error code of each.
//!   [`rate`]: commands per second per socket and per user.
//! - [`mentions`] and [`fields`]: parsing `@mentions` and checking custom field values.
//!
//! - [`audit`]: verifying and exporting the hash chains (`backchannel audit`).
//! - [`demo`]: with `--demo` only, the demo pages and the demo users' tokens.
//!
//! [`run`] starts all of it on a bound listener and returns after a graceful shutdown.

pub mod api;
pub mod audit;
pub mod auth;
pub mod broker;
pub mod config;
pub mod demo;
pub mod error;
pub mod fields;
pub mod hub;
pub mod mentions;
pub mod metrics;
pub mod rate;
pub mod service;
pub mod store;
pub mod visibility;
pub mod ws;

mod app;

pub use app::{run, ServerError};
pub use config::{Config, Limits};
