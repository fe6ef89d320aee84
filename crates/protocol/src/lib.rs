//! The Cortex Realtime wire protocol, shared by the server, the clients and the load generator.
//!
//! No Tokio and no I/O here: only the shapes on the wire and the rules that check them
//! (CONTRACT.md sections 3, 5, 7 and 8).
//!
//! # Layout
//!
//! - [`channel`]: [`ChannelId`] (parsed once, never re-validated) and token allowlist patterns.
//! - [`message`]: client commands and server replies.
//! - [`event`]: the sixteen event types, publish bodies and their checks, the delivered form.
//! - [`close`]: close codes and the reconnect policy each carries.
//! - `schema` (feature `schema`): the JSON Schemas, OpenAPI and AsyncAPI documents of the wire,
//!   generated from the above (`docs/schemas/`, `docs/openapi.json`, `docs/asyncapi.json`).

pub mod channel;
pub mod close;
pub mod event;
pub mod message;
#[cfg(feature = "schema")]
pub mod schema;

pub use channel::{ChannelId, ChannelKind, ChannelPattern};
pub use close::{CloseCode, Reconnect};
pub use event::{Delivery, Event, EventError, EventType, PublishEvent};
pub use message::{ClientMessage, ErrorCode, Ref, ServerMessage, Since};
