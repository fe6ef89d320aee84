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
    /// The org every channel belongs to (Cortex: the tokens' `org` claim); with several orgs,
    /// the prefix of their names (see [`Target::org_name`]).
    pub org: String,
    /// How many orgs (at least 1): channel index `x` of any kind is in org `x % orgs`.
    pub orgs: u32,
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
    /// The name of org `k`: `--org` itself when there is one org, else `<org>-<k>`.
    pub fn org_name(&self, k: u32) -> String {
        if self.orgs <= 1 {
            self.org.clone()
        } else {
            format!("{}-{}", self.org, k % self.orgs)
        }
    }

    /// The org of channel `c` (of any kind: index `x` is in org `x % orgs`).
    pub fn chan_org(&self, c: &Chan) -> String {
        self.org_name(c.index % self.orgs.max(1))
    }

    /// Channel `c`'s name on the wire (`org:<its org>`, `project:p<k>`, `agent:a<i>`).
    pub fn chan_name(&self, c: &Chan) -> String {
        c.name(&self.chan_org(c))
    }

    /// The WebSocket URL a connection subscribed to `subs` opens on `node` (`host:port`).
    pub fn ws_url(&self, node: &str, subs: &[Chan]) -> String {
        match self.kind {
            Kind::Cortex => format!("ws://{}/api/ws", node),
            Kind::Nchan if subs.len() == 1 => {
                format!("ws://{}/sub/{}", node, self.chan_name(&subs[0]))
            }
            Kind::Nchan => format!(
                "ws://{}/subm?agent=a{}&project=p{}&org={}",
                node,
                subs[0].index,
                subs[1].index,
                self.chan_org(&subs[0])
            ),
            Kind::Socketio => format!("ws://{}/socket.io/?EIO=4&transport=websocket", node),
        }
    }

    /// A token for connection `i` in its org: its own `sub`, so the per-user connection cap
    /// never bites.
    pub fn token(&self, i: u32) -> String {
        mint(
            &self.secret,
            &format!("bench-u{i}"),
            &self.org_name(i % self.orgs.max(1)),
        )
    }

    /// The publish request for `marker`, its text padded to about `event_bytes` as delivered.
    pub fn publish(&self, marker: &Marker, event_bytes: usize) -> Publish {
        let channel = self.chan_name(&marker.chan);
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
                    "orgId": self.chan_org(&marker.chan),
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

/// The subscribe frames Cortex Realtime expects, one per channel (`names`, as
/// [`Target::chan_name`] gives them); a channel with a known position resumes from it
/// (`since`), as the official clients do after a reconnect.
pub fn cortex_subscribes(names: &[String], since: &[Option<Position>]) -> Vec<String> {
    names
        .iter()
        .enumerate()
        .map(|(r, name)| {
            let mut frame = serde_json::json!({"type": "subscribe", "channelId": name, "ref": r});
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

/// The socket.io subscribe frame (an event with ack id 0) for the channels `names`.
pub fn socketio_subscribe(names: &[String]) -> String {
    format!("420{}", serde_json::json!(["subscribe", names]))
}

/// The socket.io CONNECT frame: the token, and, for a client that had a session (socket.io's
/// connection state recovery), its `pid` and the offset of the last event it received, which
/// is what the official client sends to be given what it missed.
pub fn socketio_connect(token: &str, session: Option<(&str, &str)>) -> String {
    let mut auth = serde_json::json!({"token": token});
    if let Some((pid, offset)) = session {
        auth["pid"] = pid.into();
        auth["offset"] = offset.into();
    }
    format!("40{auth}")
}

/// The `pid` of a socket.io CONNECT reply (`40{"sid":..,"pid":..}`), present when the server
/// keeps sessions (connection state recovery): the same `pid` as before means the session
/// was recovered, a new one that it was not.
pub fn socketio_pid(reply: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(reply.strip_prefix("40")?).ok()?;
    Some(v["pid"].as_str()?.to_owned())
}

/// The offset a recovering socket.io server appends to an event, its last argument
/// (`42["event","<body, escaped>","<offset>"]`). Inside the escaped body every `"` follows a
/// backslash, so the last `,"` starts the last argument; `None` for a frame without one.
pub fn socketio_offset(frame: &str) -> Option<&str> {
    let inner = frame.strip_prefix("42[")?.strip_suffix("\"]")?;
    let (head, offset) = inner.rsplit_once(",\"")?;
    // Two arguments after the event name: the body and the offset.
    (head.contains(",\"") && !offset.contains('"')).then_some(offset)
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
            orgs: 1,
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
        let names: Vec<String> = subs.iter().map(|c| c.name("o")).collect();
        let frames = cortex_subscribes(&names, &[None, None, Some(at)]);
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
        let names: Vec<String> = subs.iter().map(|c| c.name("o")).collect();
        assert_eq!(
            socketio_subscribe(&names),
            r#"420["subscribe",["agent:a7","project:p1","org:o"]]"#
        );
    }

    #[test]
    fn socketio_sessions_are_sent_back_and_offsets_read_from_events() {
        assert_eq!(socketio_connect("t", None), r#"40{"token":"t"}"#);
        let again: serde_json::Value = serde_json::from_str(
            socketio_connect("t", Some(("p1", "1700-0")))
                .strip_prefix("40")
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            again,
            serde_json::json!({"token": "t", "pid": "p1", "offset": "1700-0"})
        );
        assert_eq!(
            socketio_pid(r#"40{"sid":"s1","pid":"p1"}"#).as_deref(),
            Some("p1")
        );
        assert_eq!(socketio_pid(r#"40{"sid":"s1"}"#), None);
        assert_eq!(socketio_pid(r#"42["event","x"]"#), None);
        // The body as the server escapes it: quotes and commas inside, a `,\"` too.
        let body = r#"{"type":"chat.message","channelId":"org:o","payload":{"content":"a,\"b #Bo0.3.9#"}}"#;
        let escaped = serde_json::Value::from(body).to_string();
        let with = format!(r#"42["event",{escaped},"1764115200123-0"]"#);
        assert_eq!(socketio_offset(&with), Some("1764115200123-0"));
        let without = format!(r#"42["event",{escaped}]"#);
        assert_eq!(socketio_offset(&without), None);
        assert_eq!(socketio_offset("3"), None);
        assert_eq!(Marker::find(&with).map(|m| m.seq), Some(3));
    }

    #[test]
    fn many_orgs_name_channels_tokens_and_publishes_by_the_org_of_the_index() {
        let mut t = target(Kind::Cortex);
        assert_eq!(t.org_name(3), "bench", "one org: --org itself");
        t.orgs = 4;
        let org7 = Chan {
            kind: ChanKind::Org,
            index: 3,
        };
        assert_eq!(t.chan_name(&org7), "org:bench-3");
        let agent9 = Chan {
            kind: ChanKind::Agent,
            index: 9,
        };
        assert_eq!(t.chan_org(&agent9), "bench-1");
        assert_eq!(t.chan_name(&agent9), "agent:a9");
        let m = Marker {
            chan: org7,
            seq: 1,
            sent_ns: 5,
        };
        let v: serde_json::Value = serde_json::from_str(&t.publish(&m, 250).body).unwrap();
        assert_eq!(
            (v["orgId"].as_str(), v["channels"][0].as_str()),
            (Some("bench-3"), Some("org:bench-3"))
        );
        t.kind = Kind::Nchan;
        let plan = crate::plan::Plan::new(crate::plan::Shape::Org, 100, 5, 0).with_orgs(4);
        assert!(
            t.ws_url("h:1", &plan.subscriptions(9))
                .ends_with("/subm?agent=a9&project=p1&org=bench-1")
        );
    }
}
