//! What differs between the servers measured: how a subscriber connects and subscribes, how a
//! frame is read, and how an event is published.
//!
//! - Cortex Realtime: `GET /api/ws` with the token in the `Authorization` header, a `subscribe`
//!   per channel answered by `subscribed`; publish `POST /api/events` with the publish key.
//! - nchan: one WebSocket on three channels (`/subm?agent=..&project=..&org=..`, the location
//!   `scripts/peers` configures); publish `POST /pub/<channel>`.
//! - socket.io 4 (engine.io v4 over a plain WebSocket): `40{"token":..}` to connect,
//!   `420["subscribe",[..]]` answered by the ack `430[3]`, pings `2` answered with `3`; publish
//!   `POST /publish?room=<channel>` (`bench/peers/socketio/server.js`).

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use crate::marker::{Chan, Marker};

/// The server under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Cortex Realtime.
    Cortex,
    /// nginx with the nchan module.
    Nchan,
    /// A socket.io 4 server.
    Socketio,
}

/// How to reach the server under test.
#[derive(Clone, Debug)]
pub struct Target {
    /// Which server.
    pub kind: Kind,
    /// `host:port` of its listener.
    pub addr: String,
    /// The org every channel belongs to (Cortex: the tokens' `org` claim).
    pub org: String,
    /// The HS256 secret tokens are signed with (Cortex; socket.io only needs a token).
    pub secret: String,
    /// The publish key (Cortex).
    pub publish_key: String,
    /// Whether each event carries an `idempotencyKey` (Cortex), so that a publish retried after
    /// an error whose outcome is unknown is never delivered twice.
    pub idempotent: bool,
}

/// An HTTP publish request.
pub struct Publish {
    /// The URL.
    pub url: String,
    /// The body.
    pub body: String,
    /// Whether the body is JSON.
    pub json: bool,
}

impl Target {
    /// The WebSocket URL a connection subscribed to `subs` opens on `node` (`host:port`).
    pub fn ws_url(&self, node: &str, subs: &[Chan]) -> String {
        match self.kind {
            Kind::Cortex => format!("ws://{}/api/ws", node),
            Kind::Nchan if subs.len() == 1 => {
                format!("ws://{}/sub/{}", node, subs[0].name(&self.org))
            }
            Kind::Nchan => format!(
                "ws://{}/subm?agent=a{}&project=p{}&org={}",
                node, subs[0].index, subs[1].index, self.org
            ),
            Kind::Socketio => format!("ws://{}/socket.io/?EIO=4&transport=websocket", node),
        }
    }

    /// A token for connection `i`: its own `sub`, so the per-user connection cap never bites.
    pub fn token(&self, i: u32) -> String {
        mint(&self.secret, &format!("bench-u{i}"), &self.org)
    }

    /// The publish request for `marker`, its text padded to about `event_bytes` as delivered.
    pub fn publish(&self, marker: &Marker, event_bytes: usize) -> Publish {
        let channel = marker.chan.name(&self.org);
        let mut content = String::with_capacity(event_bytes);
        marker.write(&mut content);
        match self.kind {
            Kind::Cortex => {
                // Delivered as {"type","channelId","id","offset","epoch","payload":{..,"timestamp"}}:
                // about 130 bytes around the payload's fields.
                pad(
                    &mut content,
                    event_bytes.saturating_sub(channel.len() + 215),
                );
                let mut body = serde_json::json!({
                    "orgId": self.org,
                    "type": "chat.message",
                    "channels": [channel],
                    "payload": {"messageId": format!("m{}", marker.seq), "agentId": "bench", "content": content},
                });
                if self.idempotent {
                    // The send time makes the key unique to this run; a retry sends the same
                    // marker, so the same key.
                    body["idempotencyKey"] =
                        format!("b{}-{}-{}", marker.sent_ns, channel, marker.seq).into();
                }
                Publish {
                    url: format!("http://{}/api/events", self.addr),
                    body: body.to_string(),
                    json: true,
                }
            }
            Kind::Nchan | Kind::Socketio => {
                // The peers deliver the body as it is (nchan) or as the string of an `event`
                // (socket.io: `42["event","<the body, escaped>"]`): give it the shape Cortex
                // delivers, padded so that the frame is about `event_bytes`.
                let body = |content: &str| {
                    serde_json::json!({
                        "type": "chat.message",
                        "channelId": channel,
                        "payload": {"messageId": format!("m{}", marker.seq), "agentId": "bench", "content": content},
                    })
                    .to_string()
                };
                let frame_len = |body: &str| match self.kind {
                    Kind::Socketio => {
                        serde_json::Value::from(body).to_string().len() + r#"42["event",]"#.len()
                    }
                    _ => body.len(),
                };
                let to = content.len() + event_bytes.saturating_sub(frame_len(&body(&content)));
                pad(&mut content, to);
                let body = body(&content);
                let url = match self.kind {
                    Kind::Nchan => format!("http://{}/pub/{channel}", self.addr),
                    _ => format!("http://{}/publish?room={channel}", self.addr),
                };
                Publish {
                    url,
                    body,
                    json: false,
                }
            }
        }
    }
}

impl Target {
    /// The publish request for `markers`: one event as [`Target::publish`], or several in one
    /// batch (Cortex).
    pub fn publish_batch(&self, markers: &[Marker], event_bytes: usize) -> Publish {
        if let [one] = markers {
            return self.publish(one, event_bytes);
        }
        let bodies: Vec<String> = markers
            .iter()
            .map(|m| self.publish(m, event_bytes).body)
            .collect();
        Publish {
            url: format!("http://{}/api/events", self.addr),
            body: format!(r#"{{"events":[{}]}}"#, bodies.join(",")),
            json: true,
        }
    }
}

fn pad(s: &mut String, to: usize) {
    while s.len() < to {
        s.push('x');
    }
}

/// Mints an HS256 token valid for a day.
pub fn mint(secret: &str, sub: &str, org: &str) -> String {
    let exp = crate::marker::now_ns() / 1_000_000_000 + 86_400;
    let claims = serde_json::json!({"sub": sub, "org": org, "exp": exp});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signs any claims")
}

/// Where a connection stands on a channel: the `offset` and `epoch` of the last event it saw
/// (or of a `subscribed` reply), what a Cortex client resumes from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Position {
    /// The channel's offset.
    pub offset: u64,
    /// The channel's epoch.
    pub epoch: String,
}

/// The subscribe frames Cortex Realtime expects, one per channel; a channel with a known
/// position resumes from it (`since`), as the official clients do after a reconnect.
pub fn cortex_subscribes(subs: &[Chan], org: &str, since: &[Option<Position>]) -> Vec<String> {
    subs.iter()
        .enumerate()
        .map(|(r, c)| {
            let mut frame =
                serde_json::json!({"type": "subscribe", "channelId": c.name(org), "ref": r});
            if let Some(Some(p)) = since.get(r) {
                frame["since"] = serde_json::json!({"offset": p.offset, "epoch": p.epoch});
            }
            frame.to_string()
        })
        .collect()
}

/// A Cortex `subscribed` frame, read: the reply to a subscribe, or the server's continuity
/// notice (no `ref`) when it could not prove that nothing was skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscribed {
    /// The channel.
    pub channel: String,
    /// The channel's position now.
    pub position: Position,
    /// `recovered`, when the frame carries it (a resume, or the notice).
    pub recovered: Option<bool>,
}

impl Subscribed {
    /// Reads `text` if it is a `subscribed` frame.
    pub fn parse(text: &str) -> Option<Subscribed> {
        if !text.contains(r#""type":"subscribed""#) {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        Some(Subscribed {
            channel: v["channelId"].as_str()?.to_owned(),
            position: Position {
                offset: v["offset"].as_u64()?,
                epoch: v["epoch"].as_str()?.to_owned(),
            },
            recovered: v["recovered"].as_bool(),
        })
    }
}

/// The `offset` and `epoch` of a Cortex event frame, read without parsing the JSON: the server
/// writes them before the payload (`{"type",..,"offset":42,"epoch":"e_b71c","payload":..}`),
/// so their first occurrences are the event's own.
pub fn cortex_event_position(text: &str) -> Option<Position> {
    let at = text.find(r#""offset":"#)? + r#""offset":"#.len();
    let digits = text[at..].bytes().take_while(u8::is_ascii_digit).count();
    let offset = text[at..at + digits].parse().ok()?;
    let at = text.find(r#""epoch":""#)? + r#""epoch":""#.len();
    let len = text[at..].find('"')?;
    Some(Position {
        offset,
        epoch: text[at..at + len].to_owned(),
    })
}

/// The socket.io subscribe frame (an event with ack id 0) for `subs`.
pub fn socketio_subscribe(subs: &[Chan], org: &str) -> String {
    let names: Vec<String> = subs.iter().map(|c| c.name(org)).collect();
    format!("420{}", serde_json::json!(["subscribe", names]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::marker::Kind as ChanKind;

    fn target(kind: Kind) -> Target {
        Target {
            kind,
            addr: "127.0.0.1:1".into(),
            org: "bench".into(),
            secret: "s".into(),
            publish_key: "k".into(),
            idempotent: false,
        }
    }

    #[test]
    fn publish_bodies_carry_the_marker_and_the_channel() {
        let m = Marker {
            chan: Chan {
                kind: ChanKind::Project,
                index: 7,
            },
            seq: 3,
            sent_ns: 99,
        };
        let c = target(Kind::Cortex).publish(&m, 250);
        assert!(c.url.ends_with("/api/events"));
        let v: serde_json::Value = serde_json::from_str(&c.body).unwrap();
        assert_eq!(v["channels"][0], "project:p7");
        assert_eq!(Marker::find(&c.body), Some(m));
        let n = target(Kind::Nchan).publish(&m, 250);
        assert!(n.url.ends_with("/pub/project:p7"));
        assert!((240..=260).contains(&n.body.len()), "{}", n.body.len());
        let s = target(Kind::Socketio).publish(&m, 250);
        assert!(s.url.ends_with("/publish?room=project:p7"));
        assert_eq!(Marker::find(&s.body), Some(m));
        // socket.io delivers the body escaped inside `42["event","..."]`.
        let frame = format!(r#"42["event",{}]"#, serde_json::Value::from(s.body));
        assert!((240..=260).contains(&frame.len()), "{}", frame.len());
    }

    #[test]
    fn cortex_positions_are_read_from_events_and_subscribed_frames_and_resumed_from() {
        let event = r#"{"type":"chat.message","channelId":"org:o","id":"evt_1","offset":42,"epoch":"e_b7","payload":{"content":"\"offset\":9 #Bo0.1.2#"}}"#;
        let at = Position {
            offset: 42,
            epoch: "e_b7".into(),
        };
        assert_eq!(cortex_event_position(event), Some(at.clone()));
        assert_eq!(cortex_event_position(r#"{"type":"pong"}"#), None);
        let notice = r#"{"type":"subscribed","channelId":"org:o","offset":50,"epoch":"e_c1","recovered":false}"#;
        let s = Subscribed::parse(notice).unwrap();
        assert_eq!((s.channel.as_str(), s.position.offset), ("org:o", 50));
        assert_eq!(s.recovered, Some(false));
        let reply =
            r#"{"type":"subscribed","channelId":"org:o","ref":0,"offset":0,"epoch":"e_c1"}"#;
        assert_eq!(Subscribed::parse(reply).unwrap().recovered, None);
        assert_eq!(Subscribed::parse(event), None);

        let subs = crate::plan::Plan::new(crate::plan::Shape::Org, 10, 5, 0).subscriptions(7);
        let frames = cortex_subscribes(&subs, "o", &[None, None, Some(at)]);
        let last: serde_json::Value = serde_json::from_str(&frames[2]).unwrap();
        assert_eq!(
            last["since"],
            serde_json::json!({"offset": 42, "epoch": "e_b7"})
        );
        assert!(!frames[0].contains("since"));
    }

    #[test]
    fn socketio_subscribe_is_an_event_with_an_ack_id() {
        let subs = crate::plan::Plan::new(crate::plan::Shape::Org, 10, 5, 0).subscriptions(7);
        assert_eq!(
            socketio_subscribe(&subs, "o"),
            r#"420["subscribe",["agent:a7","project:p1","org:o"]]"#
        );
    }
}
