//! `POST /api/events` (CONTRACT.md section 7) and in-process publishing, end to end: real HTTP
//! in, real WebSocket subscribers out.

use std::time::Duration;

use cortex_protocol::{EventError, PublishEvent};
use cortex_realtime::PublishError;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::util::*;

/// One HTTP client for many publishes (keeps the connection alive).
struct Publisher {
    http: reqwest::Client,
    url: String,
}

impl Publisher {
    fn new(s: &TestServer) -> Publisher {
        Publisher {
            http: reqwest::Client::new(),
            url: s.http("/api/events"),
        }
    }

    async fn post(&self, body: &Value) -> (u16, Value) {
        try_publish_with(&self.http, &self.url, PUBLISH_KEY, body)
            .await
            .expect("publish request")
    }

    /// Publishes and asserts 202; returns the answer.
    async fn accepted(&self, body: &Value) -> Value {
        let (status, answer) = self.post(body).await;
        assert_eq!(status, 202, "expected 202 for {body}: {answer}");
        answer
    }

    /// Publishes and asserts 400 with a JSON `{error, message}`; returns `error`.
    async fn refused(&self, body: &Value) -> String {
        let (status, answer) = self.post(body).await;
        assert_eq!(status, 400, "expected 400 for {body}: {answer}");
        assert_error_body(&answer);
        answer["error"].as_str().unwrap().to_owned()
    }
}

/// An error answer is exactly `{"error": "...", "message": "..."}` with both non-empty.
fn assert_error_body(answer: &Value) {
    let obj = answer
        .as_object()
        .unwrap_or_else(|| panic!("error body is not a JSON object: {answer}"));
    assert!(
        obj["error"].as_str().is_some_and(|s| !s.is_empty()),
        "{answer}"
    );
    assert!(
        obj["message"].as_str().is_some_and(|s| !s.is_empty()),
        "{answer}"
    );
    assert_eq!(obj.len(), 2, "only error and message: {answer}");
}

/// Publishes a marker event on `channel` and asserts it is the next thing `c` receives: proof
/// that nothing published before it reached `c`.
async fn barrier(p: &Publisher, c: &mut Client, org: &str, channel: &str) -> Value {
    let answer = p
        .accepted(&json!({
            "orgId": org,
            "type": "task.deleted",
            "payload": {"taskId": "barrier"},
            "channels": [channel],
        }))
        .await;
    let ev = c.recv().await;
    assert_eq!(
        ev["id"], answer["id"],
        "expected the barrier event, got {ev}"
    );
    ev
}

/// A client of `org` subscribed to `channels`.
async fn subscriber(s: &TestServer, org: &str, channels: &[&str]) -> Client {
    let mut c = s.client("u_sub", org).await;
    for ch in channels {
        let r = c.subscribe(ch).await;
        assert_eq!(r["type"], "subscribed", "{r}");
    }
    c
}

/// A minimal valid payload (no timestamp) for each of the sixteen event types.
fn catalogue() -> Vec<(&'static str, Value)> {
    vec![
        (
            "agent.spawned",
            json!({"agentId": "a_1", "agentName": "coder", "taskId": "t_1"}),
        ),
        (
            "agent.completed",
            json!({"agentId": "a_1", "agentName": "coder", "taskId": "t_1", "result": "ok", "duration": 1200}),
        ),
        (
            "agent.failed",
            json!({"agentId": "a_1", "agentName": "coder", "taskId": "t_1", "error": "boom"}),
        ),
        (
            "agent.status",
            json!({"agentId": "a_1", "agentName": "coder", "status": "blocked", "message": "waiting"}),
        ),
        (
            "task.created",
            json!({"taskId": "t_1", "title": "Write tests", "projectId": "p_1"}),
        ),
        (
            "task.status_changed",
            json!({"taskId": "t_1", "oldStatus": "todo", "newStatus": "done"}),
        ),
        (
            "task.updated",
            json!({"taskId": "t_1", "changes": {"title": "New"}}),
        ),
        ("task.deleted", json!({"taskId": "t_1"})),
        (
            "chief.plan.created",
            json!({"planId": "pl_1", "tasks": ["t_1", "t_2"]}),
        ),
        (
            "chief.task.assigned",
            json!({"taskId": "t_1", "agentName": "coder"}),
        ),
        (
            "chief.task.progress",
            json!({"taskId": "t_1", "progress": 50, "message": "halfway"}),
        ),
        (
            "swarm.phase.started",
            json!({"swarmId": "s_1", "phase": "build"}),
        ),
        (
            "swarm.phase.completed",
            json!({"swarmId": "s_1", "phase": "build", "results": {"ok": true}}),
        ),
        ("gate.passed", json!({"taskId": "t_1", "gate": "lint"})),
        (
            "gate.failed",
            json!({"taskId": "t_1", "gate": "lint", "reason": "warnings"}),
        ),
        (
            "chat.message",
            json!({"messageId": "m_1", "agentId": "a_1", "content": "hello"}),
        ),
    ]
}

/// Fields that may hold any JSON value but `null` (so no "mistyped" value exists).
const ANY_FIELDS: [&str; 2] = ["result", "results"];

fn is_utc_rfc3339_near_now(s: &str) -> bool {
    let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) else {
        return false;
    };
    let skew = (OffsetDateTime::now_utc() - t).abs();
    s.ends_with('Z') && skew < time::Duration::seconds(30)
}

fn bad_event_for_batch() -> Value {
    json!({"orgId": "o_1", "type": "chief.task.progress",
        "payload": {"taskId": "t_1", "progress": 101, "message": "too far"}})
}

// ---- accepted events ----

#[tokio::test]
async fn an_accepted_event_answers_202_with_id_channels_and_recipients_and_is_delivered_with_that_id()
 {
    let s = TestServer::start().await;
    let p = Publisher::new(&s);
    let mut c = subscriber(&s, "o_1", &["task:t_9"]).await;
    let body = json!({
        "orgId": "o_1",
        "type": "task.status_changed",
        "payload": {"taskId": "t_9", "oldStatus": "todo", "newStatus": "in_progress",
            "extra": {"nested": [1, 2, {"deep": null}]}, "note": "ünïcødé ✓", "big": 12345678901234i64},
        "channels": ["task:t_9"],
    });
    let answer = p.accepted(&body).await;
    let id = answer["id"].as_str().expect("id is a string");
    assert!(id.starts_with("evt_") && id.len() > 4, "{answer}");
    assert_eq!(answer["channels"], json!(["task:t_9"]));
    assert_eq!(answer["recipients"], 1);

    let ev = c.recv().await;
    assert_eq!(ev["type"], "task.status_changed");
    assert_eq!(ev["channelId"], "task:t_9");
    assert_eq!(ev["id"], id);
    assert_eq!(ev["offset"], 1);
    let payload = ev["payload"].as_object().unwrap();
    for (k, v) in body["payload"].as_object().unwrap() {
        assert_eq!(&payload[k], v, "payload field {k} passes through intact");
    }
    assert_eq!(
        payload.len(),
        body["payload"].as_object().unwrap().len() + 1,
        "only timestamp is added"
    );
    drop(c);
    s.shutdown().await;
}

#[tokio::test]
async fn a_missing_timestamp_is_filled_in_as_utc_rfc3339_and_a_given_one_is_delivered_verbatim() {
    let s = TestServer::start().await;
    let p = Publisher::new(&s);
    let mut c = subscriber(&s, "o_1", &["task:t_1"]).await;

    p.accepted(&json!({"orgId": "o_1", "type": "task.deleted", "payload": {"taskId": "t_1"}}))
        .await;
    let ev = c.recv().await;
    let filled = ev["payload"]["timestamp"]
        .as_str()
        .expect("timestamp filled in");
    assert!(
        is_utc_rfc3339_near_now(filled),
        "filled-in timestamp {filled:?}"
    );

    for given in [
        "2026-11-25T20:40:16.123Z",
        "2026-11-25T22:40:16.123456+02:00",
        "1999-01-01T00:00:00-05:30",
        "2026-11-25t20:40:16z",
    ] {
        p.accepted(&json!({"orgId": "o_1", "type": "task.deleted",
            "payload": {"taskId": "t_1", "timestamp": given}}))
            .await;
        let ev = c.recv().await;
        assert_eq!(
            ev["payload"]["timestamp"], given,
            "delivered exactly as sent"
        );
    }
    drop(c);
    s.shutdown().await;
}

#[tokio::test]
async fn an_event_over_64_kib_is_refused_with_413_and_a_large_one_under_it_is_delivered_intact() {
    let s = TestServer::start().await;
    let p = Publisher::new(&s);
    let mut c = subscriber(&s, "o_1", &["task:t_1"]).await;

    let big = "x".repeat(60 * 1024);
    let answer = p
        .accepted(&json!({"orgId": "o_1", "type": "task.deleted",
            "payload": {"taskId": "t_1", "blob": big}}))
        .await;
    let ev = c.recv().await;
    assert_eq!(ev["id"], answer["id"]);
    assert_eq!(ev["payload"]["blob"].as_str().unwrap().len(), big.len());

    let huge = "x".repeat(65 * 1024);
    let (status, answer) = p
        .post(&json!({"orgId": "o_1", "type": "task.deleted",
            "payload": {"taskId": "t_1", "blob": huge}, "channels": ["task:t_1"]}))
        .await;
    assert_eq!(status, 413, "{answer}");
    assert_error_body(&answer);
    assert_eq!(answer["error"], "too_large");
    barrier(&p, &mut c, "o_1", "task:t_1").await;
    drop(c);
    s.shutdown().await;
}

// ---- channels ----

#[tokio::test]
async fn channels_are_derived_from_the_payload_and_each_derived_channel_delivers_the_same_event() {
    let s = TestServer::start().await;
    let p = Publisher::new(&s);
    let derived = [
        "agent:coder",
        "task:t_7",
        "swarm:s_3",
        "project:p_4",
        "org:o_1",
    ];
    let mut subs = Vec::new();
    for ch in derived {
        subs.push(subscriber(&s, "o_1", &[ch]).await);
    }
    let answer = p
        .accepted(&json!({
            "orgId": "o_1",
            "type": "agent.spawned",
            "payload": {"agentId": "a_1", "agentName": "coder", "taskId": "t_7",
                "swarmId": "s_3", "projectId": "p_4"},
        }))
        .await;
    assert_eq!(answer["channels"], json!(derived));
    assert_eq!(answer["recipients"], 5);
    for (c, ch) in subs.iter_mut().zip(derived) {
        let ev = c.recv().await;
        assert_eq!(ev["channelId"], ch);
        assert_eq!(ev["id"], answer["id"], "one id on every channel");
        assert_eq!(ev["offset"], 1);
        assert_eq!(ev["payload"]["agentName"], "coder");
    }
    drop(subs);
    s.shutdown().await;
}

#[tokio::test]
async fn derived_channels_are_only_those_the_payload_names_plus_the_org_channel() {
    let s = TestServer::start().await;
    let p = Publisher::new(&s);
    let mut agent = subscriber(&s, "o_1", &["agent:coder"]).await;
    let mut task = subscriber(&s, "o_1", &["task:t_1"]).await;
    let mut org = subscriber(&s, "o_1", &["org:o_1"]).await;

    let answer = p
        .accepted(&json!({"orgId": "o_1", "type": "task.deleted", "payload": {"taskId": "t_1"}}))
        .await;
    assert_eq!(answer["channels"], json!(["task:t_1", "org:o_1"]));
    assert_eq!(task.recv().await["id"], answer["id"]);
    assert_eq!(org.recv().await["id"], answer["id"]);

    // A value that cannot be a channel id (a space) derives no channel.
    let answer = p
        .accepted(&json!({"orgId": "o_1", "type": "chat.message",
            "payload": {"messageId": "m_1", "agentId": "a_1", "content": "hi", "agentName": "My Coder"}}))
        .await;
    assert_eq!(answer["channels"], json!(["org:o_1"]));
    assert_eq!(org.recv().await["id"], answer["id"]);

    barrier(&p, &mut agent, "o_1", "agent:coder").await;
    barrier(&p, &mut task, "o_1", "task:t_1").await;
    drop((agent, task, org));
    s.shutdown().await;
}

#[tokio::test]
async fn explicit_channels_are_used_exactly_and_derived_ones_are_not() {
    let s = TestServer::start().await;
    let p = Publisher::new(&s);
    let mut derived_task = subscriber(&s, "o_1", &["task:t_9"]).await;
    let mut derived_org = subscriber(&s, "o_1", &["org:o_1"]).await;
    let mut named = subscriber(&s, "o_1", &["project:p_4", "agent:zed"]).await;

    let answer = p
        .accepted(&json!({
            "orgId": "o_1",
            "type": "task.status_changed",
            "payload": {"taskId": "t_9", "projectId": "p_4", "oldStatus": "todo", "newStatus": "done"},
            "channels": ["project:p_4", "agent:zed", "project:p_4"],
        }))
        .await;
    assert_eq!(
        answer["channels"],
        json!(["project:p_4", "agent:zed"]),
        "deduplicated, in order"
    );
    assert_eq!(answer["recipients"], 1);
    let first = named.recv().await;
    let second = named.recv().await;
    assert_eq!(first["channelId"], "project:p_4");
    assert_eq!(second["channelId"], "agent:zed");
    assert_eq!(first["id"], answer["id"]);
    assert_eq!(second["id"], answer["id"]);

    barrier(&p, &mut derived_task, "o_1", "task:t_9").await;
    barrier(&p, &mut derived_org, "o_1", "org:o_1").await;
    drop((derived_task, derived_org, named));
    s.shutdown().await;
}

#[tokio::test]
async fn bad_explicit_channels_are_refused_with_invalid_channel() {
    let s = TestServer::start().await;
    let p = Publisher::new(&s);
    let many: Vec<String> = (0..17).map(|i| format!("task:t_{i}")).collect();
    let cases: Vec<Value> = vec![
        json!(["nope"]),
        json!(["agent:"]),
        json!(["agent:has space"]),
        json!(["user:u_1"]),
        json!(["task:-leading-dash"]),
        json!([format!("task:{}", "a".repeat(129))]),
        json!(["org:o_2"]),
        json!([]),
        json!(many),
    ];
    for channels in cases {
        let body = json!({"orgId": "o_1", "type": "task.deleted", "payload": {"taskId": "t_1"},
            "channels": channels});
        assert_eq!(p.refused(&body).await, "invalid_channel", "{channels}");
    }
    let sixteen: Vec<String> = (0..16).map(|i| format!("task:t_{i}")).collect();
    p.accepted(
        &json!({"orgId": "o_1", "type": "task.deleted", "payload": {"taskId": "t_1"},
        "channels": sixteen}),
    )
    .await;
    s.shutdown().await;
}

// ---- the catalogue ----

#[tokio::test]
async fn all_sixteen_event_types_are_accepted_and_delivered_with_a_minimal_payload() {
    let s = TestServer::start().await;
    let p = Publisher::new(&s);
    let mut c = subscriber(&s, "o_1", &["org:o_1"]).await;
    let table = catalogue();
    assert_eq!(table.len(), 16);
    for (offset, (ty, payload)) in (1u64..).zip(&table) {
        let answer = p
            .accepted(&json!({"orgId": "o_1", "type": ty, "payload": payload}))
            .await;
        assert!(
            answer["channels"]
                .as_array()
                .unwrap()
                .contains(&json!("org:o_1")),
            "{ty}: {answer}"
        );
        let ev = c.recv().await;
        assert_eq!(ev["type"], *ty);
        assert_eq!(ev["id"], answer["id"], "{ty}");
        assert_eq!(ev["channelId"], "org:o_1");
        assert_eq!(ev["offset"], offset, "{ty}");
        let mut expected = payload.clone();
        expected["timestamp"] = ev["payload"]["timestamp"].clone();
        assert_eq!(ev["payload"], expected, "{ty}");
        assert!(is_utc_rfc3339_near_now(
            ev["payload"]["timestamp"].as_str().unwrap()
        ));
    }
    drop(c);
    s.shutdown().await;
}

#[tokio::test]
async fn every_required_field_missing_null_or_mistyped_is_refused_with_400_invalid_payload() {
    let s = TestServer::start().await;
    let p = Publisher::new(&s);
    let mut c = subscriber(&s, "o_1", &["org:o_1"]).await;
    for (ty, payload) in catalogue() {
        let mut fields: Vec<String> = payload.as_object().unwrap().keys().cloned().collect();
        fields.push("timestamp".into());
        for field in fields {
            let mut variants: Vec<(&str, Value)> = Vec::new();
            let mut missing = payload.clone();
            if field != "timestamp" {
                missing.as_object_mut().unwrap().remove(&field);
                variants.push(("missing", missing));
            }
            let mut null = payload.clone();
            null[&field] = Value::Null;
            variants.push(("null", null));
            let wrong = match payload.get(&field) {
                _ if ANY_FIELDS.contains(&field.as_str()) => None,
                Some(Value::String(_)) | None => Some(json!(42)),
                Some(_) => Some(json!("not the right type")),
            };
            if let Some(wrong) = wrong {
                let mut mistyped = payload.clone();
                mistyped[&field] = wrong;
                variants.push(("mistyped", mistyped));
            }
            for (how, bad) in variants {
                let body = json!({"orgId": "o_1", "type": ty, "payload": bad});
                let (status, answer) = p.post(&body).await;
                assert_eq!(status, 400, "{ty} with {field} {how}: {answer}");
                assert_error_body(&answer);
                assert_eq!(
                    answer["error"], "invalid_payload",
                    "{ty} with {field} {how}"
                );
                assert!(
                    answer["message"].as_str().unwrap().contains(field.as_str()),
                    "the message names the field: {answer}"
                );
            }
        }
    }
    barrier(&p, &mut c, "o_1", "org:o_1").await;
    drop(c);
    s.shutdown().await;
}

#[tokio::test]
async fn bad_values_unknown_types_and_bad_bodies_are_refused_with_400_and_not_delivered() {
    let s = TestServer::start().await;
    let p = Publisher::new(&s);
    // Every accepted event of these reaches org:o_1 (derived channels always include it).
    let mut c = subscriber(&s, "o_1", &["org:o_1"]).await;
    let progress = |v: Value| {
        json!({"orgId": "o_1", "type": "chief.task.progress",
            "payload": {"taskId": "t_1", "progress": v, "message": "m"}})
    };
    let status = |v: &str| {
        json!({"orgId": "o_1", "type": "agent.status",
            "payload": {"agentId": "a", "agentName": "n", "status": v, "message": "m"}})
    };
    let stamped = |ts: &str| json!({"orgId": "o_1", "type": "task.deleted", "payload": {"taskId": "t_1", "timestamp": ts}});
    let cases: Vec<(&str, Value, &str)> = vec![
        ("progress 101", progress(json!(101)), "invalid_payload"),
        ("progress 100.5", progress(json!(100.5)), "invalid_payload"),
        ("progress -1", progress(json!(-1)), "invalid_payload"),
        (
            "progress as string",
            progress(json!("50")),
            "invalid_payload",
        ),
        ("agent.status running", status("running"), "invalid_payload"),
        ("agent.status ERROR", status("ERROR"), "invalid_payload"),
        (
            "timestamp with a space",
            stamped("2026-11-25 20:40:16Z"),
            "invalid_payload",
        ),
        (
            "timestamp date only",
            stamped("2026-11-25"),
            "invalid_payload",
        ),
        (
            "timestamp without offset",
            stamped("2026-11-25T20:40:16"),
            "invalid_payload",
        ),
        (
            "timestamp month 13",
            stamped("2026-13-01T00:00:00Z"),
            "invalid_payload",
        ),
        ("timestamp words", stamped("yesterday"), "invalid_payload"),
        ("timestamp empty", stamped(""), "invalid_payload"),
        (
            "timestamp as number",
            json!({"orgId": "o_1", "type": "task.deleted",
            "payload": {"taskId": "t_1", "timestamp": 1764103216}}),
            "invalid_payload",
        ),
        (
            "unknown type",
            json!({"orgId": "o_1", "type": "task.exploded", "payload": {"taskId": "t_1"}}),
            "unknown_type",
        ),
        (
            "type in another case",
            json!({"orgId": "o_1", "type": "Task.Deleted", "payload": {"taskId": "t_1"}}),
            "unknown_type",
        ),
        (
            "type not a string",
            json!({"orgId": "o_1", "type": 7, "payload": {"taskId": "t_1"}}),
            "bad_request",
        ),
        (
            "type missing",
            json!({"orgId": "o_1", "payload": {"taskId": "t_1"}}),
            "bad_request",
        ),
        (
            "orgId missing",
            json!({"type": "task.deleted", "payload": {"taskId": "t_1"}}),
            "bad_request",
        ),
        (
            "orgId null",
            json!({"orgId": null, "type": "task.deleted", "payload": {"taskId": "t_1"}}),
            "bad_request",
        ),
        (
            "orgId not an id",
            json!({"orgId": "o 1", "type": "task.deleted", "payload": {"taskId": "t_1"}}),
            "invalid_org",
        ),
        (
            "payload missing",
            json!({"orgId": "o_1", "type": "task.deleted"}),
            "bad_request",
        ),
        (
            "payload an array",
            json!({"orgId": "o_1", "type": "task.deleted", "payload": ["t_1"]}),
            "invalid_payload",
        ),
        (
            "payload null",
            json!({"orgId": "o_1", "type": "task.deleted", "payload": null}),
            "invalid_payload",
        ),
        (
            "unknown top-level field",
            json!({"orgId": "o_1", "type": "task.deleted",
            "payload": {"taskId": "t_1"}, "channel": ["task:t_1"]}),
            "bad_request",
        ),
        (
            "channels not an array",
            json!({"orgId": "o_1", "type": "task.deleted",
            "payload": {"taskId": "t_1"}, "channels": "task:t_1"}),
            "bad_request",
        ),
        (
            "empty idempotencyKey",
            json!({"orgId": "o_1", "type": "task.deleted",
            "payload": {"taskId": "t_1"}, "idempotencyKey": ""}),
            "invalid_idempotency_key",
        ),
        (
            "idempotencyKey over 256 bytes",
            json!({"orgId": "o_1", "type": "task.deleted",
            "payload": {"taskId": "t_1"}, "idempotencyKey": "k".repeat(257)}),
            "invalid_idempotency_key",
        ),
        (
            "events and another field",
            json!({"events": [], "orgId": "o_1"}),
            "bad_request",
        ),
        (
            "events not an array",
            json!({"events": {"orgId": "o_1"}}),
            "bad_request",
        ),
        ("events empty", json!({"events": []}), "bad_request"),
        ("empty object", json!({}), "bad_request"),
    ];
    for (what, body, code) in cases {
        let (st, answer) = p.post(&body).await;
        assert_eq!(st, 400, "{what}: {answer}");
        assert_error_body(&answer);
        assert_eq!(answer["error"], code, "{what}: {answer}");
    }
    // Boundaries that are fine.
    for ok in [
        progress(json!(0)),
        progress(json!(100)),
        progress(json!(42.5)),
        status("error"),
    ] {
        p.accepted(&ok).await;
        assert_eq!(c.recv().await["type"], ok["type"]);
    }
    barrier(&p, &mut c, "o_1", "org:o_1").await;
    drop(c);
    s.shutdown().await;
}

#[tokio::test]
async fn a_body_that_is_not_json_or_not_an_object_is_refused_with_400() {
    let s = TestServer::start().await;
    let url = s.http("/api/events");
    let auth = format!("Bearer {PUBLISH_KEY}");
    for body in ["", "not json", "{\"orgId\":", "{\"a\":1}}", "\u{feff}{}"] {
        let (status, answer) = post_raw(&url, Some(&auth), body).await;
        assert_eq!(status, 400, "{body:?}: {answer}");
        assert_error_body(&answer);
        assert_eq!(answer["error"], "bad_json", "{body:?}");
    }
    for body in [
        "[]",
        "[{\"orgId\":\"o_1\"}]",
        "\"text\"",
        "42",
        "null",
        "true",
    ] {
        let (status, answer) = post_raw(&url, Some(&auth), body).await;
        assert_eq!(status, 400, "{body:?}: {answer}");
        assert_error_body(&answer);
        assert_eq!(answer["error"], "bad_request", "{body:?}");
    }
    s.shutdown().await;
}

// ---- auth and limits ----

#[tokio::test]
async fn a_missing_wrong_or_non_bearer_publish_key_is_refused_with_401_and_nothing_is_delivered() {
    let s = TestServer::start().await;
    let p = Publisher::new(&s);
    let mut c = subscriber(&s, "o_1", &["task:t_9"]).await;
    let url = s.http("/api/events");
    let body = event("o_1", &["task:t_9"], 1).to_string();
    let wrong_prefix = format!("Bearer {}", &PUBLISH_KEY[..PUBLISH_KEY.len() - 1]);
    let longer = format!("Bearer {PUBLISH_KEY}x");
    let basic = format!("Basic {PUBLISH_KEY}");
    let bare = PUBLISH_KEY.to_owned();
    let cases: Vec<Option<&str>> = vec![
        None,
        Some(""),
        Some("Bearer"),
        Some("Bearer "),
        Some("Bearer wrong-key"),
        Some(&wrong_prefix),
        Some(&longer),
        Some(&basic),
        Some(&bare),
    ];
    for auth in cases {
        let (status, answer) = post_raw(&url, auth, body.clone()).await;
        assert_eq!(status, 401, "{auth:?}: {answer}");
        assert_error_body(&answer);
        assert_eq!(answer["error"], "unauthorized");
    }
    // The key is checked before the body: a bad body with a wrong key is still 401.
    let (status, _) = post_raw(&url, Some("Bearer wrong"), "not json").await;
    assert_eq!(status, 401);
    let ev = barrier(&p, &mut c, "o_1", "task:t_9").await;
    assert_eq!(ev["offset"], 1, "no refused publish took an offset");
    drop(c);
    s.shutdown().await;
}

#[tokio::test]
async fn the_event_size_limit_is_configurable_and_applies_to_single_events_and_batch_members() {
    let mut config = config();
    config.limits.max_event_bytes = 1024;
    let s = TestServer::with(config).await;
    let p = Publisher::new(&s);
    let url = s.http("/api/events");
    let auth = format!("Bearer {PUBLISH_KEY}");
    let mut c = subscriber(&s, "o_1", &["task:t_1"]).await;

    // An event of exactly `len` bytes of compact JSON.
    let sized = |len: usize| -> Value {
        let mut v = json!({"orgId": "o_1", "type": "task.deleted",
            "payload": {"taskId": "t_1", "pad": ""}, "channels": ["task:t_1"]});
        let base = v.to_string().len();
        v["payload"]["pad"] = json!("p".repeat(len - base));
        assert_eq!(v.to_string().len(), len);
        v
    };
    let (status, answer) = post_raw(&url, Some(&auth), sized(1024).to_string()).await;
    assert_eq!(status, 202, "exactly at the limit: {answer}");
    assert_eq!(c.recv().await["id"], answer["id"]);
    let (status, answer) = post_raw(&url, Some(&auth), sized(1025).to_string()).await;
    assert_eq!(status, 413, "one byte over: {answer}");
    assert_error_body(&answer);
    assert_eq!(answer["error"], "too_large");

    // A batch may be bigger than one event's limit when each member is within it.
    let events: Vec<Value> = (0..20).map(|_| sized(1000)).collect();
    let answer = p.accepted(&json!({ "events": events })).await;
    assert_eq!(answer["results"].as_array().unwrap().len(), 20);
    for _ in 0..20 {
        assert_eq!(c.recv().await["type"], "task.deleted");
    }
    // One member over the limit refuses the whole batch.
    let mut events: Vec<Value> = (0..5).map(|_| sized(500)).collect();
    events.insert(3, sized(2000));
    let (status, answer) = p.post(&json!({ "events": events })).await;
    assert_eq!(status, 413, "{answer}");
    assert_error_body(&answer);
    assert_eq!(answer["error"], "too_large");
    // A body over what any batch may hold is refused without being read whole.
    let (status, _) = post_raw(&url, Some(&auth), vec![b' '; 256 * 1024]).await;
    assert_eq!(status, 413);

    let ev = barrier(&p, &mut c, "o_1", "task:t_1").await;
    assert_eq!(ev["offset"], 22, "only the accepted events took offsets");
    drop(c);
    s.shutdown().await;
}

// ---- batches ----

#[tokio::test]
async fn a_batch_of_100_is_accepted_with_results_in_order_and_delivered_in_order() {
    let s = TestServer::start().await;
    let p = Publisher::new(&s);
    let mut c = subscriber(&s, "o_1", &["task:t_9"]).await;
    let events: Vec<Value> = (1..=100).map(|n| event("o_1", &["task:t_9"], n)).collect();
    let answer = p.accepted(&json!({ "events": events })).await;
    let results = answer["results"].as_array().expect("results");
    assert_eq!(results.len(), 100);
    let mut ids = std::collections::HashSet::new();
    for (n, r) in (1u64..).zip(results) {
        assert_eq!(r["channels"], json!(["task:t_9"]));
        assert_eq!(r["recipients"], 1);
        assert!(
            ids.insert(r["id"].as_str().unwrap().to_owned()),
            "ids are unique"
        );
        let ev = c.recv().await;
        assert_eq!(ev["payload"]["n"], n);
        assert_eq!(ev["offset"], n);
        assert_eq!(ev["id"], r["id"], "result {n} is event {n}");
    }
    drop(c);
    s.shutdown().await;
}

#[tokio::test]
async fn a_batch_of_101_is_refused_with_400_and_nothing_is_delivered() {
    let s = TestServer::start().await;
    let p = Publisher::new(&s);
    let mut c = subscriber(&s, "o_1", &["task:t_9"]).await;
    let events: Vec<Value> = (1..=101).map(|n| event("o_1", &["task:t_9"], n)).collect();
    assert_eq!(
        p.refused(&json!({ "events": events })).await,
        "batch_too_large"
    );
    let ev = barrier(&p, &mut c, "o_1", "task:t_9").await;
    assert_eq!(ev["offset"], 1);
    drop(c);
    s.shutdown().await;
}

#[tokio::test]
async fn a_batch_with_one_bad_event_is_refused_naming_it_and_delivers_none() {
    let s = TestServer::start().await;
    let p = Publisher::new(&s);
    let mut c = subscriber(&s, "o_1", &["task:t_9", "org:o_1", "task:t_1"]).await;
    let mut events: Vec<Value> = (1..=100).map(|n| event("o_1", &["task:t_9"], n)).collect();
    events[49] = bad_event_for_batch();
    let (status, answer) = p.post(&json!({ "events": events })).await;
    assert_eq!(status, 400, "{answer}");
    assert_error_body(&answer);
    assert_eq!(answer["error"], "invalid_payload");
    assert!(
        answer["message"].as_str().unwrap().contains("49"),
        "names the 50th event (index 49): {answer}"
    );

    // Other kinds of bad member: unknown type, mistyped body, bad channel.
    for bad in [
        json!({"orgId": "o_1", "type": "nope", "payload": {}}),
        json!({"orgId": "o_1", "type": "task.deleted", "payload": {"taskId": "t_1"}, "extra": 1}),
        json!({"orgId": "o_1", "type": "task.deleted", "payload": {"taskId": "t_1"}, "channels": ["bad"]}),
        json!("not an event"),
    ] {
        let mut events: Vec<Value> = (1..=10).map(|n| event("o_1", &["task:t_9"], n)).collect();
        events.push(bad.clone());
        p.refused(&json!({ "events": events })).await;
    }

    let ev = barrier(&p, &mut c, "o_1", "task:t_9").await;
    assert_eq!(
        ev["offset"], 1,
        "no event of a refused batch took an offset"
    );
    drop(c);
    s.shutdown().await;
}

// ---- idempotency ----

#[tokio::test]
async fn a_repeated_idempotency_key_is_answered_202_with_the_same_id_and_delivered_once() {
    let s = TestServer::start().await;
    let p = Publisher::new(&s);
    let mut c = subscriber(&s, "o_1", &["task:t_9"]).await;
    let mut body = event("o_1", &["task:t_9"], 1);
    body["idempotencyKey"] = json!("order-42");
    let first = p.accepted(&body).await;
    assert_eq!(first["recipients"], 1);
    let ev = c.recv().await;
    assert_eq!(ev["id"], first["id"]);

    body["payload"]["n"] = json!(2); // even a different payload is not delivered again
    let second = p.accepted(&body).await;
    assert_eq!(second["id"], first["id"]);
    assert_eq!(second["channels"], first["channels"]);
    assert_eq!(second["recipients"], 0, "not delivered again: {second}");

    let ev = barrier(&p, &mut c, "o_1", "task:t_9").await;
    assert_eq!(ev["offset"], 2, "the repeat took no offset");
    drop(c);
    s.shutdown().await;
}

#[tokio::test]
async fn an_idempotency_key_is_scoped_to_its_org() {
    let s = TestServer::start().await;
    let p = Publisher::new(&s);
    let mut a = subscriber(&s, "o_a", &["task:t_9"]).await;
    let mut b = subscriber(&s, "o_b", &["task:t_9"]).await;
    let mut body_a = event("o_a", &["task:t_9"], 1);
    body_a["idempotencyKey"] = json!("shared-key");
    let mut body_b = event("o_b", &["task:t_9"], 1);
    body_b["idempotencyKey"] = json!("shared-key");
    let ans_a = p.accepted(&body_a).await;
    let ans_b = p.accepted(&body_b).await;
    assert_ne!(ans_a["id"], ans_b["id"]);
    assert_eq!(ans_b["recipients"], 1);
    assert_eq!(a.recv().await["id"], ans_a["id"]);
    assert_eq!(b.recv().await["id"], ans_b["id"]);
    barrier(&p, &mut a, "o_a", "task:t_9").await;
    barrier(&p, &mut b, "o_b", "task:t_9").await;
    drop((a, b));
    s.shutdown().await;
}

#[tokio::test]
async fn a_repeated_idempotency_key_within_one_batch_is_delivered_once() {
    let s = TestServer::start().await;
    let p = Publisher::new(&s);
    let mut c = subscriber(&s, "o_1", &["task:t_9"]).await;
    let mut e1 = event("o_1", &["task:t_9"], 1);
    e1["idempotencyKey"] = json!("k");
    let e2 = event("o_1", &["task:t_9"], 2);
    let mut e3 = event("o_1", &["task:t_9"], 3);
    e3["idempotencyKey"] = json!("k");
    let answer = p.accepted(&json!({"events": [e1, e2, e3]})).await;
    let r = answer["results"].as_array().unwrap();
    assert_eq!(r.len(), 3);
    assert_eq!(r[0]["id"], r[2]["id"]);
    assert_ne!(r[0]["id"], r[1]["id"]);
    assert_eq!(c.recv().await["payload"]["n"], 1);
    assert_eq!(c.recv().await["payload"]["n"], 2);
    let ev = barrier(&p, &mut c, "o_1", "task:t_9").await;
    assert_eq!(ev["offset"], 3);
    drop(c);
    s.shutdown().await;
}

#[tokio::test]
async fn the_idempotency_key_of_a_refused_batch_is_not_used_up() {
    let s = TestServer::start().await;
    let p = Publisher::new(&s);
    let mut c = subscriber(&s, "o_1", &["task:t_9"]).await;
    let mut good = event("o_1", &["task:t_9"], 1);
    good["idempotencyKey"] = json!("retry-me");
    p.refused(&json!({"events": [good.clone(), bad_event_for_batch()]}))
        .await;
    let answer = p.accepted(&good).await;
    assert_eq!(answer["recipients"], 1, "the retry is delivered: {answer}");
    assert_eq!(c.recv().await["id"], answer["id"]);
    drop(c);
    s.shutdown().await;
}

// ---- order and recipients ----

#[tokio::test]
async fn two_hundred_sequential_events_arrive_in_publish_order_with_contiguous_offsets_for_every_subscriber()
 {
    let s = TestServer::start().await;
    let p = Publisher::new(&s);
    let mut a = subscriber(&s, "o_1", &["task:t_9"]).await;
    let mut b = s.client("u_other", "o_1").await;
    b.subscribe("task:t_9").await;
    let mut ids = Vec::new();
    for n in 1..=200 {
        ids.push(p.accepted(&event("o_1", &["task:t_9"], n)).await["id"].clone());
    }
    for c in [&mut a, &mut b] {
        let mut epoch = None;
        for (n, id) in (1u64..).zip(&ids) {
            let ev = c.recv().await;
            assert_eq!(ev["offset"], n);
            assert_eq!(ev["payload"]["n"], n);
            assert_eq!(&ev["id"], id);
            let e = epoch.get_or_insert_with(|| ev["epoch"].clone());
            assert_eq!(&ev["epoch"], e, "one epoch throughout");
        }
        c.silent_for(Duration::from_millis(50)).await;
    }
    drop((a, b));
    s.shutdown().await;
}

#[tokio::test]
async fn concurrent_publishers_get_contiguous_offsets_without_gaps_or_duplicates() {
    let s = TestServer::start().await;
    let mut c = subscriber(&s, "o_1", &["task:t_9"]).await;
    let url = s.http("/api/events");
    let mut tasks = Vec::new();
    for w in 0..4u64 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            for i in 0..25u64 {
                let resp = http
                    .post(&url)
                    .bearer_auth(PUBLISH_KEY)
                    .json(&event("o_1", &["task:t_9"], w * 100 + i))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status().as_u16(), 202);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut last_per_worker = [None::<u64>; 4];
    for offset in 1..=100u64 {
        let ev = c.recv().await;
        assert_eq!(ev["offset"], offset);
        let n = ev["payload"]["n"].as_u64().unwrap();
        let (w, i) = ((n / 100) as usize, n % 100);
        assert!(
            last_per_worker[w].is_none_or(|last| last < i),
            "each publisher's order kept"
        );
        last_per_worker[w] = Some(i);
    }
    c.silent_for(Duration::from_millis(50)).await;
    drop(c);
    s.shutdown().await;
}

#[tokio::test]
async fn recipients_counts_each_connection_of_the_node_once() {
    let s = TestServer::start().await;
    let p = Publisher::new(&s);
    let mut both = subscriber(&s, "o_1", &["task:t_9", "project:p_4"]).await;
    let mut task_only = subscriber(&s, "o_1", &["task:t_9"]).await;
    let mut project_only = subscriber(&s, "o_1", &["project:p_4"]).await;
    let mut elsewhere = subscriber(&s, "o_1", &["task:t_other"]).await;
    let mut other_org = subscriber(&s, "o_2", &["task:t_9", "project:p_4"]).await;
    let _unsubscribed = s.client("u_idle", "o_1").await;

    let answer = p
        .accepted(&event("o_1", &["task:t_9", "project:p_4"], 1))
        .await;
    assert_eq!(answer["recipients"], 3, "{answer}");
    let first = both.recv().await;
    let second = both.recv().await;
    assert_eq!(first["id"], answer["id"]);
    assert_eq!(second["id"], answer["id"]);
    let mut seen = [first["channelId"].clone(), second["channelId"].clone()];
    seen.sort_by_key(|v| v.to_string());
    assert_eq!(
        seen,
        [json!("project:p_4"), json!("task:t_9")],
        "once per channel"
    );
    assert_eq!(task_only.recv().await["id"], answer["id"]);
    assert_eq!(project_only.recv().await["id"], answer["id"]);

    // Derived channels: task:, project: and org: reach `both` three times, counted once.
    let org_too = subscriber(&s, "o_1", &["org:o_1"]).await;
    let answer = p
        .accepted(&json!({"orgId": "o_1", "type": "task.created",
            "payload": {"taskId": "t_9", "title": "T", "projectId": "p_4"}}))
        .await;
    assert_eq!(
        answer["channels"],
        json!(["task:t_9", "project:p_4", "org:o_1"])
    );
    assert_eq!(answer["recipients"], 4);

    // An unsubscribed connection is no longer counted.
    both.send(json!({"type": "unsubscribe", "channelId": "task:t_9"}))
        .await;
    loop {
        let m = both.recv().await;
        if m["type"] == "unsubscribed" {
            break;
        }
    }
    let answer = p.accepted(&event("o_1", &["task:t_9"], 2)).await;
    assert_eq!(answer["recipients"], 1, "task_only alone: {answer}");
    let answer = p.accepted(&event("o_1", &["task:t_nobody"], 3)).await;
    assert_eq!(answer["recipients"], 0);

    barrier(&p, &mut elsewhere, "o_1", "task:t_other").await;
    barrier(&p, &mut other_org, "o_2", "task:t_9").await;
    drop((
        both,
        task_only,
        project_only,
        elsewhere,
        other_org,
        _unsubscribed,
        org_too,
    ));
    s.shutdown().await;
}

// ---- in-process publishing ----

fn in_process(org: &str, ty: &str, payload: Value, channels: Option<&[&str]>) -> PublishEvent {
    PublishEvent {
        org_id: org.into(),
        event_type: ty.into(),
        payload,
        channels: channels.map(|c| c.iter().map(|s| s.to_string()).collect()),
        idempotency_key: None,
    }
}

#[tokio::test]
async fn in_process_publishing_delivers_like_http_and_shares_offsets_with_it() {
    let s = TestServer::start().await;
    let p = Publisher::new(&s);
    let mut c = subscriber(&s, "o_1", &["task:t_9", "org:o_1"]).await;

    let accepted = s
        .node
        .publish(vec![in_process(
            "o_1",
            "task.status_changed",
            json!({"taskId": "t_9", "oldStatus": "todo", "newStatus": "done", "extra": [1]}),
            Some(&["task:t_9"]),
        )])
        .await
        .expect("accepted");
    assert_eq!(accepted.len(), 1);
    assert!(accepted[0].id.starts_with("evt_"));
    assert_eq!(accepted[0].channels, vec!["task:t_9".to_owned()]);
    assert_eq!(accepted[0].recipients, 1);
    let ev = c.recv().await;
    assert_eq!(ev["id"], accepted[0].id.as_str());
    assert_eq!(ev["type"], "task.status_changed");
    assert_eq!(ev["offset"], 1);
    assert_eq!(ev["payload"]["extra"], json!([1]));
    assert!(is_utc_rfc3339_near_now(
        ev["payload"]["timestamp"].as_str().unwrap()
    ));

    // HTTP and in-process publishes are one stream of offsets.
    let http = p.accepted(&event("o_1", &["task:t_9"], 2)).await;
    assert_eq!(c.recv().await["id"], http["id"]);
    let batch = s
        .node
        .publish(vec![
            in_process("o_1", "task.deleted", json!({"taskId": "t_9"}), None),
            in_process(
                "o_1",
                "gate.passed",
                json!({"taskId": "t_9", "gate": "ci"}),
                Some(&["task:t_9"]),
            ),
        ])
        .await
        .expect("accepted");
    assert_eq!(
        batch[0].channels,
        vec!["task:t_9".to_owned(), "org:o_1".to_owned()]
    );
    assert_eq!(
        batch[0].recipients, 1,
        "one connection on two channels counts once"
    );
    let e3 = c.recv().await;
    assert_eq!(
        (e3["channelId"].as_str(), e3["offset"].as_u64()),
        (Some("task:t_9"), Some(3))
    );
    let e3_org = c.recv().await;
    assert_eq!(
        (e3_org["channelId"].as_str(), e3_org["offset"].as_u64()),
        (Some("org:o_1"), Some(1))
    );
    assert_eq!(e3_org["id"], batch[0].id.as_str());
    let e4 = c.recv().await;
    assert_eq!(e4["offset"], 4);
    assert_eq!(e4["id"], batch[1].id.as_str());
    drop(c);
    s.shutdown().await;
}

#[tokio::test]
async fn in_process_publishing_refuses_what_http_refuses_with_the_same_errors() {
    let s = TestServer::start().await;
    let p = Publisher::new(&s);
    let mut c = subscriber(&s, "o_1", &["task:t_1", "org:o_1"]).await;
    let progress_101 = json!({"taskId": "t_1", "progress": 101, "message": "m"});
    let cases: Vec<(PublishEvent, &str)> = vec![
        (
            in_process("o_1", "chief.task.progress", progress_101, None),
            "invalid_payload",
        ),
        (
            in_process("o_1", "task.exploded", json!({"taskId": "t_1"}), None),
            "unknown_type",
        ),
        (
            in_process("o_1", "task.deleted", json!({}), None),
            "invalid_payload",
        ),
        (
            in_process("o_1", "task.deleted", json!({"taskId": null}), None),
            "invalid_payload",
        ),
        (
            in_process("o_1", "task.deleted", json!({"taskId": 7}), None),
            "invalid_payload",
        ),
        (
            in_process(
                "o_1",
                "agent.status",
                json!({"agentId": "a", "agentName": "n", "status": "running", "message": "m"}),
                None,
            ),
            "invalid_payload",
        ),
        (
            in_process(
                "o_1",
                "task.deleted",
                json!({"taskId": "t_1", "timestamp": "2026-11-25 20:40:16Z"}),
                None,
            ),
            "invalid_payload",
        ),
        (
            in_process(
                "o_1",
                "task.deleted",
                json!({"taskId": "t_1"}),
                Some(&["bad"]),
            ),
            "invalid_channel",
        ),
        (
            in_process("o 1", "task.deleted", json!({"taskId": "t_1"}), None),
            "invalid_org",
        ),
    ];
    for (ev, code) in cases {
        let http_body = serde_json::to_value(&ev).unwrap();
        let err = s
            .node
            .publish(vec![ev.clone()])
            .await
            .expect_err("refused in-process");
        let (status, http_answer) = p.post(&http_body).await;
        assert_eq!(status, 400);
        assert_eq!(http_answer["error"], code, "{http_body}");
        let PublishError::Invalid { source, .. } = &err else {
            panic!("{ev:?}: {err:?}");
        };
        assert_eq!(source.code(), code, "{ev:?}");
        assert_eq!(
            http_answer["message"],
            err.to_string(),
            "the same error as over HTTP"
        );
    }

    let err = s
        .node
        .publish(vec![in_process(
            "o_1",
            "chief.task.progress",
            json!({"taskId": "t", "progress": 101, "message": "m"}),
            None,
        )])
        .await
        .expect_err("refused");
    assert!(
        matches!(
            err,
            PublishError::Invalid {
                source: EventError::BadField {
                    field: "progress",
                    ..
                },
                ..
            }
        ),
        "{err:?}"
    );

    // A batch: all or nothing, and at most 100.
    let mut batch: Vec<PublishEvent> = (0..5)
        .map(|_| in_process("o_1", "task.deleted", json!({"taskId": "t_1"}), None))
        .collect();
    batch.push(in_process(
        "o_1",
        "task.deleted",
        json!({"taskId": 1}),
        None,
    ));
    let err = s.node.publish(batch).await.expect_err("refused");
    assert!(
        matches!(err, PublishError::Invalid { index: Some(5), .. }),
        "{err:?}"
    );
    let too_many: Vec<PublishEvent> = (0..101)
        .map(|_| in_process("o_1", "task.deleted", json!({"taskId": "t_1"}), None))
        .collect();
    let err = s.node.publish(too_many).await.expect_err("refused");
    assert!(matches!(err, PublishError::BatchTooLarge), "{err:?}");

    let ev = barrier(&p, &mut c, "o_1", "task:t_1").await;
    assert_eq!(ev["offset"], 1, "nothing refused was delivered");
    drop(c);
    s.shutdown().await;
}

// ==== A publisher's connection (publisher.rs: keep-alive HTTP/1.1 without hyper) ====

/// A publisher's TCP connection driven by hand.
struct RawPublisher {
    tcp: tokio::net::TcpStream,
    read: Vec<u8>,
}

impl RawPublisher {
    async fn connect(s: &TestServer) -> RawPublisher {
        RawPublisher {
            tcp: tokio::net::TcpStream::connect(s.addr).await.unwrap(),
            read: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.tcp.write_all(bytes).await.expect("the server reads");
    }

    /// The next response: status, head, body (by `Content-Length`); `None` at end of stream.
    async fn response(&mut self) -> Option<(u16, String, String)> {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some(end) = self.read.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(self.read[..end + 4].to_vec()).unwrap();
                let (status, length) = parse_head(&head);
                let total = end + 4 + length.unwrap_or(0);
                if self.read.len() >= total {
                    let body = String::from_utf8(self.read[end + 4..total].to_vec()).unwrap();
                    self.read.drain(..total);
                    return Some((status, head, body));
                }
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, self.tcp.read(&mut chunk))
                .await
                .expect("an answer within the wait")
                .unwrap_or(0);
            if n == 0 {
                assert!(self.read.is_empty(), "cut short: {:?}", self.read);
                return None;
            }
            self.read.extend_from_slice(&chunk[..n]);
        }
    }

    /// Publishes event `n` on `task:t_1` of `o_1`; returns its id.
    async fn publish(&mut self, n: u64) -> String {
        self.send(publish_request(&event("o_1", &["task:t_1"], n), "").as_bytes())
            .await;
        self.accepted().await
    }

    /// The next response, which must be a 202; returns the event's id.
    async fn accepted(&mut self) -> String {
        let (status, head, body) = self.response().await.expect("an answer");
        assert_eq!(status, 202, "{head}{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["id"].as_str().unwrap().to_owned()
    }
}

/// A publish request with the key, `extra` header lines and `body`.
fn publish_request(body: &Value, extra: &str) -> String {
    let body = body.to_string();
    format!(
        "POST /api/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {PUBLISH_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn pipelined_publishes_on_one_connection_are_answered_and_delivered_in_order() {
    let s = TestServer::start().await;
    let mut sub = subscriber(&s, "o_1", &["task:t_1"]).await;
    let mut p = RawPublisher::connect(&s).await;
    let all: String = (0..20)
        .map(|n| publish_request(&event("o_1", &["task:t_1"], n), ""))
        .collect();
    p.send(all.as_bytes()).await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(p.accepted().await);
    }
    for (n, id) in ids.iter().enumerate() {
        let ev = sub.recv().await;
        assert_eq!(
            (&ev["id"], &ev["payload"]["n"]),
            (&json!(id), &json!(n)),
            "{ev}"
        );
    }
}

#[tokio::test]
async fn a_publish_head_and_body_in_pieces_are_put_together() {
    let s = TestServer::start().await;
    let mut sub = subscriber(&s, "o_1", &["task:t_1"]).await;
    let mut p = RawPublisher::connect(&s).await;
    let req = publish_request(&event("o_1", &["task:t_1"], 7), "");
    let head_end = req.find("\r\n\r\n").unwrap();
    for piece in [
        &req[..20],
        &req[20..head_end],
        &req[head_end..head_end + 10],
        &req[head_end + 10..],
    ] {
        p.send(piece.as_bytes()).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let id = p.accepted().await;
    assert_eq!(sub.recv().await["id"], json!(id));
}

#[tokio::test]
async fn a_publishers_connection_hands_other_requests_to_the_router_and_errors_keep_their_words() {
    let s = TestServer::start().await;
    let mut p = RawPublisher::connect(&s).await;
    p.publish(1).await;
    // An invalid event is answered on the same road, and the connection stays.
    p.send(publish_request(&json!({"orgId": "o_1", "type": "no.such"}), "").as_bytes())
        .await;
    let (status, _, body) = p.response().await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert_error_body(&serde_json::from_str(&body).unwrap());
    // Another route, then a publish without the key: hyper's answers, on the same connection.
    p.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (status, _, body) = p.response().await.unwrap();
    assert_eq!((status, body.as_str()), (200, "ok"));
    let no_key = publish_request(&event("o_1", &["task:t_1"], 2), "")
        .replace(&format!("Authorization: Bearer {PUBLISH_KEY}\r\n"), "");
    p.send(no_key.as_bytes()).await;
    let (status, _, body) = p.response().await.unwrap();
    assert_eq!(status, 401, "{body}");
    p.publish(3).await;
}

#[tokio::test]
async fn a_publishers_connection_can_become_a_websocket() {
    let s = TestServer::start().await;
    let mut p = RawPublisher::connect(&s).await;
    p.publish(1).await;
    let (ws, _) = tokio_tungstenite::client_async(
        s.ws_url(),
        tokio_tungstenite::MaybeTlsStream::Plain(p.tcp),
    )
    .await
    .expect("the upgrade on a publisher's connection");
    let mut c = Client { ws };
    c.send(json!({"type": "auth", "token": token("u_1", "o_1")}))
        .await;
    assert_eq!(c.recv().await["type"], "connected");
    assert_eq!(c.subscribe("task:t_1").await["type"], "subscribed");
    let (status, answer) = s.publish(event("o_1", &["task:t_1"], 2)).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(c.recv().await["id"], answer["id"]);
}

#[tokio::test]
async fn connection_close_is_answered_with_it_then_the_connection_ends() {
    let s = TestServer::start().await;
    let mut p = RawPublisher::connect(&s).await;
    let req = publish_request(&event("o_1", &["task:t_1"], 1), "Connection: close\r\n");
    p.send(req.as_bytes()).await;
    let (status, head, _) = p.response().await.unwrap();
    assert_eq!(status, 202);
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    assert!(p.response().await.is_none(), "closed after the answer");
}

#[tokio::test]
async fn an_idle_publishers_connection_ends_after_the_handshake_timeout_and_at_the_drain() {
    let mut config = config();
    config.limits.handshake_timeout = Duration::from_millis(400);
    let s = TestServer::with(config).await;
    let mut p = RawPublisher::connect(&s).await;
    p.publish(1).await;
    let idle = std::time::Instant::now();
    assert!(p.response().await.is_none());
    let waited = idle.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
        "{waited:?}"
    );

    let s = TestServer::start().await;
    let mut p = RawPublisher::connect(&s).await;
    p.publish(1).await;
    let ended = tokio::spawn(async move { p.response().await.is_none() });
    s.shutdown().await;
    assert!(ended.await.unwrap(), "closed by the drain");
}
