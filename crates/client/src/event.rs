//! What the client tells the application, in order, through [`Events`](crate::Events).

use std::fmt;
use std::time::Duration;

use cortex_protocol::{ChannelId, Delivery, ErrorCode, EventType};
use serde_json::Value;

/// An event as delivered on one channel (CONTRACT.md section 3).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The event type, or `None` for a type this client does not know yet (a newer server):
    /// such events are still delivered, with their wire name in [`Event::type_name`].
    pub event_type: Option<EventType>,
    /// The type's wire name, e.g. `task.status_changed`.
    pub type_name: String,
    /// The channel it arrived on.
    pub channel: ChannelId,
    /// The event's id, the same on every channel it was published to.
    pub id: String,
    /// Its offset on this channel: one more than the previous event's.
    pub offset: u64,
    /// The channel's epoch: offsets count within one epoch.
    pub epoch: String,
    /// The payload.
    pub payload: Value,
    raw: String,
}

impl Event {
    /// Parses an event frame; `None` when it is not one.
    pub(crate) fn parse(text: &str) -> Option<Event> {
        let d: Delivery = serde_json::from_str(text).ok()?;
        Some(Event {
            event_type: EventType::parse(&d.event_type),
            channel: ChannelId::parse(&d.channel_id).ok()?,
            type_name: d.event_type,
            id: d.id,
            offset: d.offset,
            epoch: d.epoch,
            payload: d.payload,
            raw: text.to_owned(),
        })
    }

    /// The frame exactly as the server sent it (field order and payload formatting included),
    /// for tools that pass events on, like `cortex-realtime tail`.
    pub fn as_json(&self) -> &str {
        &self.raw
    }
}

/// The server's `connected` message: who this connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connected {
    /// The connection's id on the server, for support requests and logs.
    pub connection_id: String,
    /// The token's `sub`.
    pub user_id: String,
    /// The token's `org`: every channel lives inside it.
    pub org_id: String,
    /// The token's expiry, RFC 3339; the client refreshes ahead of it.
    pub expires_at: String,
}

/// Why a connection ended, or an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disconnect {
    /// The server closed the connection with this code (CONTRACT.md section 8).
    Closed {
        /// The close code (1005 when the close frame had none).
        code: u16,
        /// The close reason.
        reason: String,
    },
    /// The server refused the WebSocket upgrade with this HTTP status.
    Refused {
        /// The HTTP status, e.g. 429 or 503.
        status: u16,
        /// The `error` field of the JSON body, when there was one.
        error: Option<String>,
    },
    /// The connection could not be made, failed, or ended without a close frame.
    Lost(String),
    /// No `connected` within the handshake timeout, or nothing from the server (not even a
    /// ping) within the idle timeout.
    Timeout,
    /// The token provider failed ([`TokenError::Failed`](crate::TokenError::Failed)).
    Token(String),
}

impl fmt::Display for Disconnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Disconnect::Closed { code, reason } if reason.is_empty() => write!(f, "closed {code}"),
            Disconnect::Closed { code, reason } => write!(f, "closed {code} ({reason})"),
            Disconnect::Refused {
                status,
                error: Some(e),
            } => write!(f, "refused: HTTP {status} {e}"),
            Disconnect::Refused {
                status,
                error: None,
            } => write!(f, "refused: HTTP {status}"),
            Disconnect::Lost(why) => write!(f, "connection lost: {why}"),
            Disconnect::Timeout => f.write_str("timed out"),
            Disconnect::Token(why) => write!(f, "token unavailable: {why}"),
        }
    }
}

/// Why the client stopped for good. The last message of [`Events`](crate::Events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// [`Client::close`](crate::Client::close) was called, every [`Client`](crate::Client)
    /// handle was dropped, or the [`Events`](crate::Events) receiver was dropped.
    Closed,
    /// The server closed with 1000 (normal close).
    ServerClosed,
    /// The token is missing or invalid (close 4001, or HTTP 401 `unauthorized`). Reconnecting
    /// cannot help: get a new token and build a new client.
    Unauthorized,
    /// The token provider handed out tokens that were already expired, twice in a row.
    TokenExpired,
    /// The token provider said there is no token ([`TokenError::Denied`](crate::TokenError::Denied)).
    NoToken(String),
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stop::Closed => f.write_str("closed by the application"),
            Stop::ServerClosed => f.write_str("the server closed the connection (1000)"),
            Stop::Unauthorized => f.write_str("the server refused the token (4001 unauthorized)"),
            Stop::TokenExpired => f.write_str("the token has expired and no fresh one came"),
            Stop::NoToken(why) => write!(f, "no token: {why}"),
        }
    }
}

/// Everything the client tells the application, in the order it happened.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// A connection is up and authenticated; the subscriptions follow.
    Connected(Connected),
    /// A channel subscribed for the first time: events after `offset` follow.
    Subscribed {
        /// The channel.
        channel: ChannelId,
        /// The channel's latest offset: the next event has `offset + 1`.
        offset: u64,
        /// The channel's epoch.
        epoch: String,
    },
    /// A channel was subscribed again after a reconnect, resuming after the last event seen;
    /// or, with `recovered: false` while connected, the server's notice that the channel
    /// skipped events it cannot deliver (its backplane lost them): reload its state.
    Resubscribed {
        /// The channel.
        channel: ChannelId,
        /// `true`: every missed event follows, in order, then live ones. `false`: the missed
        /// events are gone (the history was lost or too short): reload this channel's state
        /// (e.g. over REST); live events follow.
        recovered: bool,
        /// The channel's latest offset.
        offset: u64,
        /// The channel's epoch, new when the server lost the history.
        epoch: String,
    },
    /// An event on a subscribed channel. Never twice, in offset order per channel.
    Event(Event),
    /// A subscribe was refused (`forbidden`, `invalid_channel`, `too_many_subscriptions`): the
    /// channel is no longer among the client's subscriptions.
    SubscribeFailed {
        /// The channel.
        channel: ChannelId,
        /// Why.
        code: ErrorCode,
        /// The server's message.
        message: String,
    },
    /// The server ended a subscription on its own (a refreshed token no longer allows the
    /// channel): it is no longer among the client's subscriptions.
    Unsubscribed {
        /// The channel.
        channel: ChannelId,
    },
    /// The token was refreshed on the live connection.
    Refreshed {
        /// The new expiry, RFC 3339.
        expires_at: String,
    },
    /// The server answered a command with an error other than a refused subscribe (for
    /// example `invalid_token` for a refresh). The connection stays open.
    ServerError {
        /// The error code.
        code: ErrorCode,
        /// The server's message.
        message: String,
    },
    /// The connection ended or an attempt failed; the next attempt starts after `delay`.
    Reconnecting {
        /// What happened.
        cause: Disconnect,
        /// Attempts that failed since the last successful connection, this one included.
        attempt: u32,
        /// The wait before the next attempt (zero after a 4002: a new token is asked for at once).
        delay: Duration,
    },
    /// The client stopped for good; nothing follows.
    Stopped(Stop),
}
