//! What the publish API refuses and accepts: the sixteen event types and their required fields,
//! bad values and bodies, the publish key and the event size limit.

use serde_json::{Value, json};

use super::{Publisher, assert_error_body, barrier, is_utc_rfc3339_near_now, subscriber};
use crate::util::*;

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
