//! Cortex Realtime: a real-time event gateway.
//!
//! Backend services publish typed events over HTTP (or in-process); browsers, desktop apps and
//! CLIs hold a WebSocket open, subscribe to channels, and receive those events within
//! milliseconds. The wire protocol lives in the `cortex-protocol` crate; this crate is the
//! server, usable as a library (see [`Server`]) and as the `cortex-realtime` binary.
//!
//! # Layout
//!
//! - [`config`]: every setting, its default and its unit.
//! - [`server`]: the node's shared state, the router, the WebSocket upgrade, graceful serving.
//! - [`session`]: one connection's state machine.
//! - [`outbox`]: the bounded per-connection send queue.
//! - [`socket`]: a connection's TCP socket, shared by its session and its outbox.
//! - [`hub`]: channel -> subscribers on this node; the local fan-out.
//! - [`history`]: per-channel offsets and epochs.
//! - [`broker`]: delivery between the publish API and the hubs ([`broker::MemoryBroker`]).
//! - [`api`]: the publish API and the one mapping of errors to HTTP responses.
//! - [`publisher`]: publishers' keep-alive connections, read without hyper.
//! - [`auth`]: JWT verification.
//! - [`idempotency`]: publish de-duplication.
//! - [`shutdown`]: the drain signal and task tracking.
//! - [`metrics`]: Prometheus counters and gauges.
//! - [`id`]: event, connection and epoch ids.
//! - [`local`]: the zero-configuration desktop mode.

pub mod api;
pub mod auth;
pub mod broker;
pub mod config;
pub mod history;
pub mod hub;
pub mod id;
pub mod idempotency;
pub mod local;
pub mod metrics;
pub mod outbox;
pub mod publisher;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod socket;

pub use api::{Accepted, ApiError};
pub use auth::{KeySource, VerifierConfig, mint_hs256};
pub use config::{Config, Limits};
pub use history::Retention;
/// Why an in-process publish was refused (the name the library's API keeps).
pub type PublishError = ApiError;
pub use cortex_protocol as protocol;
pub use server::{Builder, Node, Server, ServerHandle, StartError};
