//! Client and server messages (CONTRACT.md section 3): one JSON object per text frame, tagged by `type`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A command's `ref`: a string or a number, echoed in its reply.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Ref {
    /// A string ref.
    Str(String),
    /// A numeric ref.
    Num(serde_json::Number),
}

/// Where a resuming client left a channel: the last offset it saw, in which epoch.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Since {
    /// The offset of the last event the client received.
    pub offset: u64,
    /// The epoch that offset belongs to.
    pub epoch: String,
}

/// A message from client to server.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ClientMessage {
    /// First frame only, when no token came with the upgrade.
    Auth {
        /// The JWT.
        token: String,
        /// Echoed in the reply.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        r#ref: Option<Ref>,
    },
    /// Start receiving a channel (optionally resuming).
    Subscribe {
        /// The channel id as sent; parsed by the server into a `ChannelId`.
        #[serde(rename = "channelId")]
        channel_id: String,
        /// Resume after this position.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<Since>,
        /// Echoed in the reply.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        r#ref: Option<Ref>,
    },
    /// Stop receiving a channel.
    Unsubscribe {
        /// The channel id as sent.
        #[serde(rename = "channelId")]
        channel_id: String,
        /// Echoed in the reply.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        r#ref: Option<Ref>,
    },
    /// Replace the connection's token before it expires.
    Refresh {
        /// The new JWT.
        token: String,
        /// Echoed in the reply.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        r#ref: Option<Ref>,
    },
    /// Application-level ping.
    Ping {
        /// Echoed in the reply.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        r#ref: Option<Ref>,
    },
}

/// A frame that is not a valid command: why, and the `ref` it carried if one could be read.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeError {
    /// The `ref` of the bad command, when it had a readable one.
    pub r#ref: Option<Ref>,
    /// A human-readable reason (never echoes the frame).
    pub message: String,
}

impl ClientMessage {
    /// Decodes one text frame. Errors carry the command's `ref` so the reply can echo it.
    pub fn decode(text: &str) -> Result<ClientMessage, DecodeError> {
        let value: Value = serde_json::from_str(text).map_err(|e| DecodeError {
            r#ref: None,
            message: format!("not JSON: {}", e.classify_message()),
        })?;
        let Value::Object(map) = &value else {
            return Err(DecodeError {
                r#ref: None,
                message: "a command is a JSON object".into(),
            });
        };
        let r#ref = map
            .get("ref")
            .and_then(|r| serde_json::from_value::<Ref>(r.clone()).ok());
        let ty = match map.get("type") {
            Some(Value::String(t)) => t.clone(),
            Some(_) => {
                return Err(DecodeError {
                    r#ref,
                    message: "`type` must be a string".into(),
                });
            }
            None => {
                return Err(DecodeError {
                    r#ref,
                    message: "missing field `type`".into(),
                });
            }
        };
        if !matches!(
            ty.as_str(),
            "auth" | "subscribe" | "unsubscribe" | "refresh" | "ping"
        ) {
            return Err(DecodeError {
                r#ref,
                message: "unknown command type".into(),
            });
        }
        serde_json::from_value(value).map_err(|e| DecodeError {
            r#ref,
            message: format!("bad `{ty}` command: {}", sanitize(&e.to_string())),
        })
    }

    /// The command's `ref`, if it has one.
    pub fn r#ref(&self) -> Option<&Ref> {
        match self {
            ClientMessage::Auth { r#ref, .. }
            | ClientMessage::Subscribe { r#ref, .. }
            | ClientMessage::Unsubscribe { r#ref, .. }
            | ClientMessage::Refresh { r#ref, .. }
            | ClientMessage::Ping { r#ref } => r#ref.as_ref(),
        }
    }
}

/// serde's messages may quote input values; keep only the part before any quoted value, so a
/// token sent in the wrong place is never echoed back.
fn sanitize(msg: &str) -> String {
    /// Names serde may quote in backticks that are ours to repeat.
    const OURS: &[&str] = &[
        "type",
        "token",
        "channelId",
        "since",
        "offset",
        "epoch",
        "ref",
        "auth",
        "subscribe",
        "unsubscribe",
        "refresh",
        "ping",
    ];
    let cut = msg.find('"').map_or(msg, |i| &msg[..i]);
    let cut = cut.split(" at line ").next().unwrap_or(cut);
    // Backtick-quoted text is a field name: keep ours, hide the client's (an unknown member
    // name could be a token sent in the wrong place).
    let mut out = String::new();
    for (i, part) in cut.split('`').enumerate() {
        if i % 2 == 1 {
            out.push('`');
            out.push_str(if OURS.contains(&part) { part } else { "…" });
            out.push('`');
        } else {
            out.push_str(part);
        }
    }
    out.chars().take(200).collect()
}

trait ClassifyMessage {
    fn classify_message(&self) -> &'static str;
}

impl ClassifyMessage for serde_json::Error {
    fn classify_message(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "read error",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "unexpected data",
            serde_json::error::Category::Eof => "unexpected end of input",
        }
    }
}

/// The `code` of an `error` reply.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, not an object, unknown `type`, missing field.
    BadRequest,
    /// The channel id breaks the grammar.
    InvalidChannel,
    /// The token may not see that channel.
    Forbidden,
    /// The connection holds the maximum number of subscriptions.
    TooManySubscriptions,
    /// Too many commands.
    RateLimited,
    /// A refresh token that does not verify.
    InvalidToken,
    /// A refresh token for another `sub` or `org`.
    TokenMismatch,
    /// The node cannot serve the command now (its backplane is unreachable); the connection
    /// stays open: retry later.
    Unavailable,
}

/// A message from server to client, other than an event (events are pre-serialized by the server,
/// see [`crate::event::write_delivery`]).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerMessage {
    /// Sent once after authentication.
    Connected {
        /// This connection's id.
        #[serde(rename = "connectionId")]
        connection_id: String,
        /// The token's `sub`.
        #[serde(rename = "userId")]
        user_id: String,
        /// The token's `org`.
        #[serde(rename = "orgId")]
        org_id: String,
        /// The token's expiry, RFC 3339.
        #[serde(rename = "expiresAt")]
        expires_at: String,
    },
    /// A subscribe succeeded.
    Subscribed {
        /// The channel.
        #[serde(rename = "channelId")]
        channel_id: String,
        /// The channel's latest offset (0 before its first event).
        offset: u64,
        /// The channel's current epoch.
        epoch: String,
        /// Only when `since` was given: whether every missed event follows.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        /// The command's ref.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        r#ref: Option<Ref>,
    },
    /// An unsubscribe succeeded.
    Unsubscribed {
        /// The channel.
        #[serde(rename = "channelId")]
        channel_id: String,
        /// The command's ref.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        r#ref: Option<Ref>,
    },
    /// A refresh succeeded.
    Refreshed {
        /// The new expiry, RFC 3339.
        #[serde(rename = "expiresAt")]
        expires_at: String,
        /// The command's ref.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        r#ref: Option<Ref>,
    },
    /// Answer to ping.
    Pong {
        /// The command's ref.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        r#ref: Option<Ref>,
    },
    /// A command failed; the connection stays open.
    Error {
        /// What went wrong.
        code: ErrorCode,
        /// A human-readable reason.
        message: String,
        /// The channel the command named, if any.
        #[serde(rename = "channelId", default, skip_serializing_if = "Option::is_none")]
        channel_id: Option<String>,
        /// The command's ref.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        r#ref: Option<Ref>,
    },
}

impl ServerMessage {
    /// The JSON text of this message.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server messages always serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_command() {
        let m = ClientMessage::decode(r#"{"type":"subscribe","channelId":"task:t_9","since":{"offset":41,"epoch":"e_1"},"ref":7}"#).unwrap();
        assert_eq!(
            m,
            ClientMessage::Subscribe {
                channel_id: "task:t_9".into(),
                since: Some(Since {
                    offset: 41,
                    epoch: "e_1".into()
                }),
                r#ref: Some(Ref::Num(7.into())),
            }
        );
        assert!(matches!(
            ClientMessage::decode(r#"{"type":"ping"}"#),
            Ok(ClientMessage::Ping { r#ref: None })
        ));
        assert!(matches!(
            ClientMessage::decode(r#"{"type":"auth","token":"x"}"#),
            Ok(ClientMessage::Auth { .. })
        ));
        assert!(matches!(
            ClientMessage::decode(r#"{"type":"refresh","token":"x","ref":"a"}"#),
            Ok(ClientMessage::Refresh {
                r#ref: Some(Ref::Str(_)),
                ..
            })
        ));
        assert!(matches!(
            ClientMessage::decode(r#"{"type":"unsubscribe","channelId":"x"}"#),
            Ok(ClientMessage::Unsubscribe { .. })
        ));
    }

    #[test]
    fn bad_frames_say_why_and_keep_the_ref() {
        for (frame, has_ref) in [
            ("nope", false),
            ("[]", false),
            ("42", false),
            (r#"{"ref":1}"#, true),
            (r#"{"type":"dance","ref":1}"#, true),
            (r#"{"type":5}"#, false),
            (r#"{"type":"subscribe","ref":"r"}"#, true),
            (r#"{"type":"subscribe","channelId":5,"ref":"r"}"#, true),
            (
                r#"{"type":"subscribe","channelId":"a:b","since":{"offset":-1,"epoch":"e"}}"#,
                false,
            ),
        ] {
            let e = ClientMessage::decode(frame).unwrap_err();
            assert_eq!(e.r#ref.is_some(), has_ref, "{frame}");
            assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn errors_never_echo_string_values() {
        let e = ClientMessage::decode(
            r#"{"type":"subscribe","channelId":"x","token":"SECRET.TOKEN.VALUE"}"#,
        )
        .unwrap_err();
        assert!(!e.message.contains("SECRET"), "{}", e.message);
        let e = ClientMessage::decode(r#"{"type":"ping","oops":"SECRET.TOKEN"}"#).unwrap_err();
        assert!(!e.message.contains("SECRET"), "{}", e.message);
        let e =
            ClientMessage::decode(r#"{"type":"ping","eyJhbGciOiJIUzI1NiJ9SECRET":1}"#).unwrap_err();
        assert!(!e.message.contains("SECRET"), "{}", e.message);
        assert!(e.message.contains("unknown field"), "{}", e.message);
    }

    #[test]
    fn server_messages_have_the_contract_shape() {
        let m = ServerMessage::Subscribed {
            channel_id: "task:t_9".into(),
            offset: 41,
            epoch: "e_b71c".into(),
            recovered: None,
            r#ref: None,
        };
        assert_eq!(
            m.to_json(),
            r#"{"type":"subscribed","channelId":"task:t_9","offset":41,"epoch":"e_b71c"}"#
        );
        let e = ServerMessage::Error {
            code: ErrorCode::TooManySubscriptions,
            message: "m".into(),
            channel_id: None,
            r#ref: Some(Ref::Num(7.into())),
        };
        assert_eq!(
            e.to_json(),
            r#"{"type":"error","code":"too_many_subscriptions","message":"m","ref":7}"#
        );
    }
}
