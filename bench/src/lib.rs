//! Backchannel's benchmarks: a load generator that speaks the wire protocol
//! (`bc-load`), a minimal relay to compare against (`bc-relay`), and the scenarios of
//! `docs/benchmarks.md`.
//!
//! Everything the load generator does runs on one thread pinned to its own core, so
//! the connections share one recorder without locks ([`stats`]). [`client`] is one
//! simulated client, [`procs`] starts the servers and sets up conversations, [`sys`]
//! pins processes and reads `/proc`, and [`scenario`] holds the paced step, the
//! saturation search and the six scenarios.

pub mod client;
pub mod procs;
pub mod scenario;
pub mod stats;
pub mod sys;
