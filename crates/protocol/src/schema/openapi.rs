//! `docs/openapi.json`: the HTTP API (CONTRACT.md sections 7 and 10) as OpenAPI 3.1.
//!
//! The request and answer bodies are the named schemas of [`super::schemas`], copied into
//! `components.schemas` (a publisher's tools want one self-contained file); the paths, statuses and
//! headers are written here. It never describes the WebSocket protocol: [`super::asyncapi`] does.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::{Named, referenced, with_refs};
use crate::event::MAX_BATCH;

/// The component name of the named schema `key` (`payload/agent.spawned` ->
/// `payload.agent.spawned`).
pub fn component(key: &str) -> String {
    key.replace('/', ".")
}

fn schema_ref(key: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{}", component(key)) })
}

fn json_body(key: &str, description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": schema_ref(key)}},
    })
}

fn text_body(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"text/plain": {"schema": {"type": "string"}}},
    })
}

fn retry_after() -> Value {
    json!({
        "Retry-After": {
            "description": "Seconds to wait before trying again.",
            "required": true,
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
        }
    })
}

/// The OpenAPI 3.1 document, its components taken from `named`.
pub fn document(named: &[Named]) -> Value {
    let roots = [
        "publish/request",
        "publish/accepted",
        "publish/results",
        "publish/error",
    ];
    // Every schema the roots reach, and nothing else.
    let mut wanted: BTreeSet<String> = roots.iter().map(|s| (*s).to_owned()).collect();
    loop {
        let mut more = BTreeSet::new();
        for n in named.iter().filter(|n| wanted.contains(&n.key)) {
            referenced(&n.schema, &mut more);
        }
        if more.is_subset(&wanted) {
            break;
        }
        wanted.extend(more);
    }
    let to = |key: &str| format!("#/components/schemas/{}", component(key));
    let components: Map<String, Value> = named
        .iter()
        .filter(|n| wanted.contains(&n.key))
        .map(|n| (component(&n.key), with_refs(&n.schema, &to)))
        .collect();

    let mut unavailable = json_body(
        "publish/error",
        "The Redis backplane is unreachable (in a Cluster: the shard of the event's org), or the node is draining. Nothing was delivered; retry after the delay: a retry with the same idempotencyKey is never delivered twice.",
    );
    unavailable["headers"] = retry_after();
    let mut not_ready = text_body(
        "Not ready: `draining`, or `backplane unavailable` while a configured Redis is unreachable.",
    );
    not_ready["headers"] = retry_after();

    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Cortex Realtime HTTP API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Publishing events (CONTRACT.md section 7) and the health endpoints (section 10). \
                Generated from crates/protocol by `cargo run -p cortex-protocol --features schema --example schemas -- docs`; \
                do not edit by hand. The WebSocket protocol is in asyncapi.json; every schema also stands alone in schemas/.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "servers": [{"url": "http://127.0.0.1:8080", "description": "`cortex-realtime serve --listen 127.0.0.1:8080` (https:// with --tls-cert)"}],
        "paths": {
            "/api/events": {
                "post": {
                    "operationId": "publish",
                    "summary": "Publish one event, or a batch",
                    "description": format!(
                        "One event, or `{{\"events\": [...]}}` with 1 to {MAX_BATCH}. Without `channels` the channels are derived \
                         from the payload (agentName, taskId, swarmId, projectId, and always org:<orgId>). \
                         Delivery is at most once per connection, in publish order per channel."
                    ),
                    "security": [{"publishKey": []}],
                    "requestBody": {
                        "required": true,
                        "content": {"application/json": {"schema": schema_ref("publish/request")}},
                    },
                    "responses": {
                        "202": {
                            "description": "Accepted: for one event its answer, for a batch `{\"results\": [...]}` with one answer per event. A repeated idempotencyKey is answered 202 and not delivered again.",
                            "content": {"application/json": {"schema": {"oneOf": [schema_ref("publish/accepted"), schema_ref("publish/results")]}}},
                        },
                        "400": json_body("publish/error", "Bad JSON, unknown `type`, a missing, null or mistyped payload field, a `timestamp` not RFC 3339, `progress` outside 0..100, a bad channel, a batch of more than 100. A batch with one bad event delivers none."),
                        "401": json_body("publish/error", "Missing or wrong publish key."),
                        "413": json_body("publish/error", "The body is over the limit (default 64 KiB per event)."),
                        "503": unavailable,
                    },
                },
            },
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "summary": "Alive",
                    "responses": {"200": text_body("`ok`")},
                },
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "summary": "Ready to deliver",
                    "responses": {
                        "200": text_body("`ready`"),
                        "503": not_ready,
                    },
                },
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics (text exposition format)",
                    "responses": {"200": text_body("The metrics.")},
                },
            },
        },
        "components": {
            "securitySchemes": {
                "publishKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "`Authorization: Bearer <publish key>`: one of the configured publish keys (not a JWT).",
                },
            },
            "schemas": components,
        },
    })
}
