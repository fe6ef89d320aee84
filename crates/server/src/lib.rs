//! Cortex Realtime: a real-time event gateway.
//!
//! Backend services publish typed events over HTTP (or in-process); browsers, desktop apps and
//! CLIs hold a WebSocket open, subscribe to channels, and receive those events within
//! milliseconds. The wire protocol lives in the `cortex-protocol` crate; this crate is the
//! server, usable as a library: build a [`Server`] from a [`Config`], [`Server::start`] it, and
//! publish in-process through its [`Node`]. The `cortex-realtime` binary is another crate
//! (`crates/cli`) on top of this one.
//!
//! # Layout (lower layers never import higher ones; `docs/architecture.md` has the picture)
//!
//! - `server`: the builder, the listener and the accept loop; [`Server`], [`ServerHandle`].
//! - `http`: the router, the upgrade, health, metrics and the publish endpoints (`ApiError`).
//! - `session`: one connection's state machine, and the one mapping to close codes.
//! - `node`: the composition root, [`Node`]: config, verifier, broker, dispatch, limits.
//! - `publish`: the publish service ([`Node::publish`], [`PublishError`]), HTTP-free.
//! - `dispatch`: what a broker delivers, as frames encoded once per channel, to the hub; the
//!   subscribe join.
//! - `broker`: the backplane seam (the `Broker` trait) and its in-memory implementation.
//! - `hub`: channel -> this node's subscribers; the local fan-out.
//! - `ws`: the frame writer, the shared socket and the outbox (one owner of the direct writes).
//! - `auth`: JWT verification (token policy, key loading).
//! - `admin`: the operators' listener: the console's files, the admin API, heartbeats.
//! - `roster`: who is connected, for operators' disconnects.
//! - `activity`: what a node did (events, closes, the busiest orgs and channels).
//! - `tls`: TLS on a listener: the certificate files read, checked and reloaded, the handshake.
//! - `limits`, `shutdown`, `metrics`, `id`, `config`: the small shared parts.
//! - [`local`]: the zero-configuration desktop mode.

pub(crate) mod activity;
pub(crate) mod admin;
pub(crate) mod auth;
pub(crate) mod broker;
pub mod config;
pub(crate) mod dispatch;
pub(crate) mod http;
pub(crate) mod hub;
pub(crate) mod id;
pub(crate) mod limits;
pub mod local;
pub(crate) mod metrics;
pub(crate) mod node;
pub(crate) mod publish;
pub(crate) mod roster;
pub(crate) mod server;
pub(crate) mod session;
pub(crate) mod shutdown;
pub(crate) mod tls;
pub(crate) mod ws;

#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod internals;

pub use auth::{
    AuthError, CONSOLE_SUBJECT, CONSOLE_TOKEN_TTL, Claims, ConsoleKey, DEFAULT_LEEWAY_SECS,
    KeyError, KeySource, MAX_TOKEN_LEN, VerifierConfig, mint_hs256, mint_hs256_claims,
};
pub use config::{Config, Limits, RedisConfig, RedisServers, Retention, TlsConfig};
pub use cortex_protocol as protocol;
pub use node::{Node, StartError};
pub use publish::{Accepted, PublishError};
pub use server::{Builder, Server, ServerHandle};
pub use shutdown::signal as shutdown_signal;
