//! `docs/asyncapi.json`: the WebSocket protocol (CONTRACT.md sections 2, 3 and 8) as AsyncAPI 3.0.
//!
//! The document describes the server: it receives the client messages and sends the replies and
//! the events on the one channel, `/api/ws`. Every message's payload is a `$ref` to its file under
//! `docs/schemas/`, so nothing is written twice. It never describes the HTTP API:
//! [`super::openapi`] does.

use serde_json::{Map, Value, json};

use super::Named;
use crate::close::CloseCode;

/// The AsyncAPI 3.0 document for the named schemas `named`.
pub fn document(named: &[Named]) -> Value {
    let mut messages = Map::new();
    let mut channel_messages = Map::new();
    let (mut receive, mut send_reply, mut send_event) = (Vec::new(), Vec::new(), Vec::new());
    for n in named {
        let (group, name) = match n.key.split_once('/') {
            Some((g @ ("client" | "server" | "event"), name)) => (g, name),
            _ => continue,
        };
        let id = format!("{group}.{name}");
        let mut message = json!({
            "name": name,
            "title": n.schema["title"],
            "payload": {"$ref": format!("./schemas/{}.json", n.key)},
        });
        if let Some(d) = n.schema.get("description") {
            message["summary"] = d.clone();
        }
        messages.insert(id.clone(), message);
        channel_messages.insert(
            id.clone(),
            json!({"$ref": format!("#/components/messages/{id}")}),
        );
        let op = json!({"$ref": format!("#/channels/ws/messages/{id}")});
        match group {
            "client" => receive.push(op),
            "server" => send_reply.push(op),
            _ => send_event.push(op),
        }
    }
    let close_codes: Vec<String> = CloseCode::ALL
        .iter()
        .map(|c| format!("{} ({})", c.code(), c.reason()))
        .collect();
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "Cortex Realtime WebSocket protocol",
            "version": env!("CARGO_PKG_VERSION"),
            "description": format!(
                "The server's side of /api/ws (CONTRACT.md sections 2, 3 and 8): it receives commands and sends \
                 replies and events, one JSON object per text frame. Generated from crates/protocol by \
                 `cargo run -p cortex-protocol --features schema --example schemas -- docs`; do not edit by hand. \
                 Close codes: {}.",
                close_codes.join(", ")
            ),
            "license": {"name": "Apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0"},
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {
                "host": "127.0.0.1:8080",
                "protocol": "ws",
                "description": "`cortex-realtime serve --listen 127.0.0.1:8080` (`wss` with --tls-cert)",
                "security": [{"$ref": "#/components/securitySchemes/queryToken"}, {"$ref": "#/components/securitySchemes/bearerToken"}],
            },
        },
        "channels": {
            "ws": {
                "address": "/api/ws",
                "title": "The WebSocket",
                "description": "The token comes as `?token=`, as `Authorization: Bearer`, or, with neither, in a first `auth` frame within the auth timeout.",
                "messages": channel_messages,
                "bindings": {
                    "ws": {
                        "method": "GET",
                        "query": {
                            "type": "object",
                            "properties": {"token": {"type": "string", "description": "The JWT (optional: see the channel's description)."}},
                        },
                        "bindingVersion": "0.1.0",
                    },
                },
            },
        },
        "operations": {
            "receiveCommand": {
                "action": "receive",
                "title": "A client's command",
                "channel": {"$ref": "#/channels/ws"},
                "messages": receive,
            },
            "sendReply": {
                "action": "send",
                "title": "A reply, or an unsolicited `subscribed` after a gap",
                "channel": {"$ref": "#/channels/ws"},
                "messages": send_reply,
            },
            "sendEvent": {
                "action": "send",
                "title": "An event on a subscribed channel",
                "channel": {"$ref": "#/channels/ws"},
                "messages": send_event,
            },
        },
        "components": {
            "messages": messages,
            "securitySchemes": {
                "queryToken": {"type": "httpApiKey", "name": "token", "in": "query", "description": "A JWT (CONTRACT.md section 4)."},
                "bearerToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
            },
        },
    })
}
