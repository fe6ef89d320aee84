//! The Rust client of Cortex Realtime: a WebSocket connection that keeps itself up.
//!
//! It connects with any token transport (the `auth` frame by default), subscribes to channels
//! at any time, delivers typed events in order and exactly once, and across disconnects:
//! reconnects with backoff (1 s doubling to 30 s, full jitter), obeys every close code
//! (CONTRACT.md section 8), resubscribes every channel resuming from the last event seen, tells
//! the application per channel whether the gap was recovered, and refreshes its token ahead of
//! expiry.
//!
//! ```no_run
//! use cortex_client::{Client, ClientEvent, TokenError};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let (client, mut events) = Client::builder("ws://127.0.0.1:8080/api/ws")
//!     .token_provider(|| async { Ok::<_, TokenError>(fetch_token().await) })
//!     .start()?;
//! client.subscribe("task:t_9".parse()?);
//! while let Some(ev) = events.recv().await {
//!     match ev {
//!         ClientEvent::Event(e) => println!("{} {} {}", e.channel, e.type_name, e.payload),
//!         ClientEvent::Resubscribed { channel, recovered: false, .. } => {
//!             println!("{channel}: events were missed; reload its state");
//!         }
//!         ClientEvent::Stopped(why) => println!("stopped: {why}"),
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! # async fn fetch_token() -> String { String::new() }
//! ```
//!
//! # Layout
//!
//! - [`client`]: [`ClientBuilder`], the [`Client`] handle (subscribe, unsubscribe, close) and
//!   the bounded [`Events`] stream with its overflow policy.
//! - [`event`]: what the application receives: [`ClientEvent`], [`Event`], [`Disconnect`],
//!   [`Stop`].
//! - [`token`]: [`TokenProvider`], [`TokenError`] and the [`TokenTransport`]s.
//! - [`backoff`]: [`Backoff`], the reconnect delays.
//! - `connection` (private): one attempt: TCP, the upgrade, authentication, `connected`.
//! - `worker` (private): the task that runs connections: the close-code policy, subscriptions
//!   and resume, de-duplication, token refresh. Tested with tokio's paused clock against a
//!   scripted server over an in-memory pipe.
//!
//! # Decisions
//!
//! - Delivery is exactly once per channel in offset order: an event at or below the last
//!   offset seen on its channel in the same epoch is dropped, whatever the server sends.
//! - After 4002 (token expired) the provider is asked at once and the client reconnects without
//!   a backoff delay. A token refused as expired before `connected` twice in a row stops the
//!   client ([`Stop::TokenExpired`]): the provider has nothing fresher.
//! - 4001 (and HTTP 401 `unauthorized`) stops the client ([`Stop::Unauthorized`]): no
//!   reconnect loop on a bad token.
//! - A close code the contract does not name, a TCP error, or an end without a close frame
//!   backs off and resumes.
//! - A 4009 that arrives before a resume's `subscribed` reply means the replay alone overflowed
//!   the server's outbound queue, and would again: that channel's resume is given up, it is
//!   subscribed afresh and reported as `Resubscribed { recovered: false }` (no reconnect loop).
//! - Refresh: 60 s before expiry or at 80 % of the remaining lifetime, whichever is earlier,
//!   but not before a quarter of it.
//! - The client sends at most 50 commands a second (the server allows 100), so resubscribing
//!   128 channels never trips the server's rate limit.
//! - `ws://` only: the workspace's WebSocket library is built without TLS.

pub mod backoff;
pub mod client;
mod connection;
pub mod event;
pub mod token;
mod worker;

pub use backoff::Backoff;
pub use client::{Client, ClientBuilder, Error, Events};
pub use connection::UrlError;
pub use cortex_protocol::{ChannelId, ErrorCode, EventType};
pub use event::{ClientEvent, Connected, Disconnect, Event, Stop};
pub use token::{TokenError, TokenFuture, TokenProvider, TokenTransport};
