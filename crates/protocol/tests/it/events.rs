//! The event catalogue (CONTRACT.md section 5), publish bodies (section 7) and the delivered form
//! (section 3).

use cortex_protocol::event::{
    MAX_CHANNELS_PER_EVENT, MAX_IDEMPOTENCY_KEY, rfc3339_millis, rfc3339_secs, write_delivery,
};
use cortex_protocol::{ChannelId, Delivery, Event, EventError, EventType, PublishEvent};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Value, json};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

const ORG: &str = "o_1";

/// A publisher's timestamp, distinct from [`now`].
const SENT_AT: &str = "2026-11-25T20:40:16.123Z";

/// The server's clock in these tests: 2026-11-25T21:00:00.987654321Z.
pub(crate) fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(1_795_640_400_987_654_321).expect("in range")
}

/// What the server writes for a missing timestamp at [`now`]: UTC, milliseconds, truncated.
const FILLED_AT: &str = "2026-11-25T21:00:00.987Z";

/// CONTRACT.md section 5 written out: each wire name, a minimal valid payload holding exactly its
/// required fields, and the channels section 7 derives from that payload for org `o_1`.
pub(crate) fn catalogue() -> Vec<(&'static str, Value, &'static [&'static str])> {
    vec![
        (
            "agent.spawned",
            json!({"agentId": "a_1", "agentName": "coder", "taskId": "t_9", "timestamp": SENT_AT}),
            &["agent:coder", "task:t_9", "org:o_1"],
        ),
        (
            "agent.completed",
            json!({
                "agentId": "a_1", "agentName": "coder", "taskId": "t_9",
                "result": {"ok": true}, "duration": 1500, "timestamp": SENT_AT,
            }),
            &["agent:coder", "task:t_9", "org:o_1"],
        ),
        (
            "agent.failed",
            json!({
                "agentId": "a_1", "agentName": "coder", "taskId": "t_9",
                "error": "tests failed", "timestamp": SENT_AT,
            }),
            &["agent:coder", "task:t_9", "org:o_1"],
        ),
        (
            "agent.status",
            json!({
                "agentId": "a_1", "agentName": "coder", "status": "blocked",
                "message": "waiting for review", "timestamp": SENT_AT,
            }),
            &["agent:coder", "org:o_1"],
        ),
        (
            "task.created",
            json!({"taskId": "t_9", "title": "Write tests", "projectId": "p_4", "timestamp": SENT_AT}),
            &["task:t_9", "project:p_4", "org:o_1"],
        ),
        (
            "task.status_changed",
            json!({
                "taskId": "t_9", "oldStatus": "todo", "newStatus": "in_progress",
                "timestamp": SENT_AT,
            }),
            &["task:t_9", "org:o_1"],
        ),
        (
            "task.updated",
            json!({"taskId": "t_9", "changes": {"title": "Write more tests"}, "timestamp": SENT_AT}),
            &["task:t_9", "org:o_1"],
        ),
        (
            "task.deleted",
            json!({"taskId": "t_9", "timestamp": SENT_AT}),
            &["task:t_9", "org:o_1"],
        ),
        (
            "chief.plan.created",
            json!({"planId": "pl_1", "tasks": [{"title": "a"}], "timestamp": SENT_AT}),
            &["org:o_1"],
        ),
        (
            "chief.task.assigned",
            json!({"taskId": "t_9", "agentName": "coder", "timestamp": SENT_AT}),
            &["agent:coder", "task:t_9", "org:o_1"],
        ),
        (
            "chief.task.progress",
            json!({"taskId": "t_9", "progress": 40, "message": "halfway-ish", "timestamp": SENT_AT}),
            &["task:t_9", "org:o_1"],
        ),
        (
            "swarm.phase.started",
            json!({"swarmId": "s_2", "phase": "design", "timestamp": SENT_AT}),
            &["swarm:s_2", "org:o_1"],
        ),
        (
            "swarm.phase.completed",
            json!({"swarmId": "s_2", "phase": "design", "results": ["doc"], "timestamp": SENT_AT}),
            &["swarm:s_2", "org:o_1"],
        ),
        (
            "gate.passed",
            json!({"taskId": "t_9", "gate": "lint", "timestamp": SENT_AT}),
            &["task:t_9", "org:o_1"],
        ),
        (
            "gate.failed",
            json!({"taskId": "t_9", "gate": "lint", "reason": "3 warnings", "timestamp": SENT_AT}),
            &["task:t_9", "org:o_1"],
        ),
        (
            "chat.message",
            json!({"messageId": "m_1", "agentId": "a_1", "content": "hello", "timestamp": SENT_AT}),
            &["org:o_1"],
        ),
    ]
}

/// Values of the wrong JSON type for a required field; empty for `result` and `results`, which take
/// any value but `null`. The first entry of each is the case CONTRACT.md names.
pub(crate) fn mistyped(field: &str) -> Vec<Value> {
    match field {
        "result" | "results" => vec![],
        "duration" => vec![
            json!("1500"),
            json!(true),
            json!([1500]),
            json!({"ms": 1500}),
        ],
        "changes" => vec![json!(["title"]), json!("title"), json!(1)],
        "tasks" => vec![json!({"t_1": "write"}), json!("t_1"), json!(1)],
        "progress" => vec![json!("50"), json!(true), json!([50]), json!({"p": 50})],
        "timestamp" => vec![json!(12345), json!(true), json!({"at": SENT_AT})],
        // Every other required field is a string.
        _ => vec![json!(42), json!(true), json!(["x"]), json!({"x": 1})],
    }
}

fn body(event_type: &str, payload: Value) -> PublishEvent {
    PublishEvent {
        org_id: ORG.to_owned(),
        event_type: event_type.to_owned(),
        payload,
        channels: None,
        idempotency_key: None,
    }
}

fn with_channels(event_type: &str, payload: Value, channels: &[&str]) -> PublishEvent {
    PublishEvent {
        channels: Some(channels.iter().map(|&c| c.to_owned()).collect()),
        ..body(event_type, payload)
    }
}

fn validate(body: PublishEvent) -> Result<Event, EventError> {
    Event::validate(body, now())
}

/// `payload` with `field` set to `value`.
fn set(payload: &Value, field: &str, value: Value) -> Value {
    let mut payload = payload.clone();
    payload[field] = value;
    payload
}

/// `payload` without `field`.
fn remove(payload: &Value, field: &str) -> Value {
    let mut payload = payload.clone();
    payload
        .as_object_mut()
        .expect("catalogue payloads are objects")
        .remove(field);
    payload
}

/// The payload's field names, sorted (whatever order serde_json's map keeps).
fn fields(payload: &Value) -> Vec<String> {
    let mut names: Vec<String> = payload
        .as_object()
        .expect("catalogue payloads are objects")
        .keys()
        .cloned()
        .collect();
    names.sort_unstable();
    names
}

fn channel_names(event: &Event) -> Vec<&str> {
    event.channels.iter().map(ChannelId::as_str).collect()
}

fn task_deleted() -> Value {
    json!({"taskId": "t_9", "timestamp": SENT_AT})
}

fn progress(value: Value) -> Result<Event, EventError> {
    let payload = json!({"taskId": "t_9", "progress": value, "message": "m", "timestamp": SENT_AT});
    validate(body("chief.task.progress", payload))
}

fn agent_status(value: Value) -> Result<Event, EventError> {
    let payload = json!({
        "agentId": "a_1", "agentName": "coder", "status": value, "message": "m", "timestamp": SENT_AT,
    });
    validate(body("agent.status", payload))
}

fn with_timestamp(value: Value) -> Result<Event, EventError> {
    validate(body(
        "task.deleted",
        set(&task_deleted(), "timestamp", value),
    ))
}

fn with_key(key: &str) -> Result<Event, EventError> {
    validate(PublishEvent {
        idempotency_key: Some(key.to_owned()),
        ..body("task.deleted", task_deleted())
    })
}

fn assert_bad_field(result: Result<Event, EventError>, expected_field: &str, context: &str) {
    match result {
        Err(EventError::BadField { field, .. }) if field == expected_field => {}
        other => panic!("{context}: expected BadField({expected_field}), got {other:?}"),
    }
}

// The catalogue.

#[test]
fn catalogue_names_every_event_type_exactly_once() {
    let mut ours: Vec<&str> = catalogue().iter().map(|(name, ..)| *name).collect();
    let mut crates: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
    ours.sort_unstable();
    crates.sort_unstable();
    assert_eq!(crates, ours);
    crates.dedup();
    assert_eq!(crates.len(), 16);
}

#[test]
fn event_type_wire_names_parse_back_and_nothing_else_does() {
    for t in EventType::ALL {
        assert_eq!(EventType::parse(t.as_str()), Some(t));
    }
    for name in [
        "",
        "agent",
        "Agent.Spawned",
        "agent.spawned ",
        "agent_spawned",
        "task.status-changed",
    ] {
        assert_eq!(EventType::parse(name), None, "{name:?}");
    }
}

#[test]
fn required_fields_are_exactly_the_contract_table() {
    for (name, payload, _) in catalogue() {
        let t = EventType::parse(name).expect("a catalogue name");
        let mut required: Vec<&str> = t.required().iter().map(|(f, _)| *f).collect();
        required.sort_unstable();
        assert_eq!(required, fields(&payload), "{name}");
    }
}

#[test]
fn minimal_payload_is_accepted_for_every_type() {
    for (name, payload, _) in catalogue() {
        let event = validate(body(name, payload.clone()))
            .unwrap_or_else(|e| panic!("{name}: minimal payload refused: {e:?}"));
        assert_eq!(event.event_type.as_str(), name);
        assert_eq!(event.org_id, ORG);
        assert_eq!(Value::Object(event.payload), payload, "{name}");
        assert_eq!(event.idempotency_key, None);
    }
}

// Required fields: missing, null, mistyped.

#[test]
fn missing_required_field_is_refused_for_every_type() {
    for (name, payload, _) in catalogue() {
        for field in fields(&payload).iter().filter(|f| *f != "timestamp") {
            let result = validate(body(name, remove(&payload, field)));
            assert!(
                matches!(result, Err(EventError::MissingField(f)) if f == field),
                "{name} without {field} gave {result:?}"
            );
        }
    }
}

#[test]
fn missing_timestamp_is_filled_with_the_current_utc_time_for_every_type() {
    for (name, payload, _) in catalogue() {
        let event = validate(body(name, remove(&payload, "timestamp")))
            .unwrap_or_else(|e| panic!("{name} without timestamp refused: {e:?}"));
        let filled = event.payload["timestamp"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: timestamp not filled with a string"));
        assert_eq!(filled, FILLED_AT, "{name}");
        let parsed = OffsetDateTime::parse(filled, &Rfc3339).expect("RFC 3339");
        assert_eq!(parsed.offset(), UtcOffset::UTC);
        assert!(
            (now() - parsed).whole_milliseconds() == 0,
            "{name}: {filled} is not now"
        );
        assert_eq!(
            Value::Object(event.payload),
            set(&payload, "timestamp", json!(FILLED_AT)),
            "{name}: only the timestamp was added"
        );
    }
}

#[test]
fn null_required_field_is_refused_for_every_type() {
    for (name, payload, _) in catalogue() {
        for field in fields(&payload).iter().filter(|f| *f != "timestamp") {
            let result = validate(body(name, set(&payload, field, Value::Null)));
            assert!(
                matches!(result, Err(EventError::MissingField(f)) if f == field),
                "{name} with {field}: null gave {result:?}"
            );
        }
    }
}

#[test]
fn null_timestamp_is_refused_for_every_type() {
    for (name, payload, _) in catalogue() {
        let result = validate(body(name, set(&payload, "timestamp", Value::Null)));
        assert!(
            result.is_err(),
            "{name}: null timestamp accepted as {result:?}"
        );
    }
}

#[test]
fn mistyped_required_field_is_refused_with_bad_field_for_every_type() {
    for (name, payload, _) in catalogue() {
        for field in fields(&payload) {
            for wrong in mistyped(&field) {
                let result = validate(body(name, set(&payload, &field, wrong.clone())));
                assert_bad_field(result, &field, &format!("{name} with {field}: {wrong}"));
            }
        }
    }
}

#[test]
fn result_and_results_accept_any_value_but_null() {
    for (name, field) in [
        ("agent.completed", "result"),
        ("swarm.phase.completed", "results"),
    ] {
        let (_, payload, _) = catalogue()
            .into_iter()
            .find(|(n, ..)| *n == name)
            .expect("in the catalogue");
        for value in [
            json!("done"),
            json!(0),
            json!(false),
            json!([]),
            json!({}),
            json!({"a": [1]}),
        ] {
            let result = validate(body(name, set(&payload, field, value.clone())));
            assert!(
                result.is_ok(),
                "{name} with {field}: {value} gave {result:?}"
            );
        }
    }
}

#[test]
fn progress_outside_0_to_100_is_refused() {
    for value in [
        json!(-1),
        json!(100.5),
        json!(-0.001),
        json!(101),
        json!(1e300),
        json!(u64::MAX),
        json!(i64::MIN),
    ] {
        assert_bad_field(progress(value.clone()), "progress", &value.to_string());
    }
}

#[test]
fn progress_from_0_to_100_is_accepted() {
    for value in [
        json!(0),
        json!(100),
        json!(55.5),
        json!(0.0),
        json!(100.0),
        json!(-0.0),
        json!(1e-9),
    ] {
        let result = progress(value.clone());
        assert!(result.is_ok(), "progress {value} gave {result:?}");
    }
}

#[test]
fn agent_status_accepts_only_error_or_blocked() {
    for value in ["error", "blocked"] {
        let result = agent_status(json!(value));
        assert!(result.is_ok(), "status {value:?} gave {result:?}");
    }
    for value in [
        json!("Error"),
        json!("BLOCKED"),
        json!("ok"),
        json!(""),
        json!("blocked "),
        json!(1),
        json!(["error"]),
    ] {
        assert_bad_field(agent_status(value.clone()), "status", &value.to_string());
    }
}

// Timestamps.

#[test]
fn given_timestamp_is_kept_exactly_as_sent() {
    for sent in [
        "2026-11-25T20:40:16.123+02:00",
        "2026-11-25T20:40:16Z",
        "2026-11-25T20:40:16.123456789-05:30",
        "2026-11-25T20:40:16.1+00:00",
        "2026-11-25t20:40:16z",
    ] {
        let event = with_timestamp(json!(sent)).unwrap_or_else(|e| panic!("{sent}: {e:?}"));
        assert_eq!(event.payload["timestamp"], json!(sent));
    }
}

#[test]
fn timestamp_that_is_not_rfc3339_is_refused() {
    for value in [
        json!("yesterday"),
        json!("2026-11-25 20:40:16"),
        json!(12345),
        json!(""),
        json!("2026-11-25"),
        json!("2026-11-25T20:40:16"),
        json!("2026-11-25T20:40:16.123"),
        json!("2026-13-25T20:40:16Z"),
        json!("2026-11-25T25:40:16Z"),
        json!("2026-11-25T20:40:16+2:00"),
        json!("2026-11-25T20:40:16Z trailing"),
        json!(" 2026-11-25T20:40:16Z"),
    ] {
        assert_bad_field(
            with_timestamp(value.clone()),
            "timestamp",
            &value.to_string(),
        );
    }
}

#[test]
fn timestamp_with_a_date_time_separator_other_than_t_is_refused() {
    for sent in [
        "2026-11-25x20:40:16Z",
        "2026-11-25_20:40:16Z",
        "2026-11-25/20:40:16Z",
        "2026-11-25020:40:16Z",
    ] {
        let result = with_timestamp(json!(sent));
        assert!(result.is_err(), "{sent} accepted");
    }
}

// Everything else in a body.

#[test]
fn extra_payload_fields_pass_through_untouched() {
    let extra = json!({
        "meta": {"nested": [1, 2.5, {"deep": null}], "text": "é\n\"quoted\""},
        "big": u64::MAX,
        "negative": -7,
        "float": 1.5e300,
        "flag": false,
        "nothing": null,
        "list": [],
    });
    for (name, payload, _) in catalogue() {
        let mut sent = payload.clone();
        for (k, v) in extra.as_object().expect("an object") {
            sent[k] = v.clone();
        }
        let event = validate(body(name, sent.clone())).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(Value::Object(event.payload), sent, "{name}");
    }
}

#[test]
fn unknown_type_is_refused() {
    for name in [
        "agent.unknown",
        "",
        "Agent.Spawned",
        "agent.spawned ",
        "agent",
    ] {
        assert_eq!(
            validate(body(name, task_deleted())),
            Err(EventError::UnknownType),
            "{name:?}"
        );
    }
}

#[test]
fn payload_that_is_not_an_object_is_refused() {
    for payload in [
        json!(null),
        json!([]),
        json!([{"taskId": "t_9"}]),
        json!("t_9"),
        json!(1),
        json!(true),
    ] {
        assert_eq!(
            validate(body("task.deleted", payload.clone())),
            Err(EventError::PayloadNotObject),
            "{payload}"
        );
    }
}

#[test]
fn invalid_org_id_is_refused() {
    let too_long = "o".repeat(129);
    for org in [
        "",
        "o 1",
        "-o",
        "_o",
        "o/1",
        "o:1",
        "é",
        "o\n",
        too_long.as_str(),
    ] {
        let result = validate(PublishEvent {
            org_id: org.to_owned(),
            ..body("task.deleted", task_deleted())
        });
        assert_eq!(result, Err(EventError::InvalidOrg), "{org:?}");
    }
    let longest = "o".repeat(128);
    let event = validate(PublishEvent {
        org_id: longest.clone(),
        ..body("task.deleted", task_deleted())
    })
    .expect("a 128-byte org id is valid");
    assert_eq!(
        channel_names(&event),
        ["task:t_9".to_owned(), format!("org:{longest}")]
    );
}

// Channels.

#[test]
fn channels_are_derived_from_the_payload_and_always_include_the_org() {
    for (name, payload, expected) in catalogue() {
        let event = validate(body(name, payload)).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(channel_names(&event), expected, "{name}");
    }
}

#[test]
fn derivation_uses_every_routing_field_present_even_extra_ones() {
    let payload = json!({
        "messageId": "m_1", "agentId": "a_1", "content": "hi", "timestamp": SENT_AT,
        "agentName": "coder", "taskId": "t_9", "swarmId": "s_2", "projectId": "p_4",
    });
    let event = validate(body("chat.message", payload)).expect("valid");
    assert_eq!(
        channel_names(&event),
        [
            "agent:coder",
            "task:t_9",
            "swarm:s_2",
            "project:p_4",
            "org:o_1"
        ]
    );
}

#[test]
fn derived_value_that_is_not_a_channel_id_is_skipped() {
    let base = json!({"messageId": "m_1", "agentId": "a_1", "content": "hi", "timestamp": SENT_AT});
    for (field, value) in [
        ("agentName", json!("my coder")),
        ("taskId", json!("t 9")),
        ("swarmId", json!("")),
        ("projectId", json!("p/4")),
        ("projectId", json!("é")),
        ("agentName", json!(".coder")),
        ("projectId", json!(4)),
        ("swarmId", json!(null)),
        ("taskId", json!("t".repeat(129))),
    ] {
        let event = validate(body("chat.message", set(&base, field, value.clone())))
            .unwrap_or_else(|e| panic!("{field}: {value}: {e:?}"));
        assert_eq!(channel_names(&event), ["org:o_1"], "{field}: {value}");
    }
    let payload = json!({
        "agentId": "a_1", "agentName": "my coder", "taskId": "t_9", "timestamp": SENT_AT,
    });
    let event = validate(body("agent.spawned", payload)).expect("a name with a space is valid");
    assert_eq!(channel_names(&event), ["task:t_9", "org:o_1"]);
}

#[test]
fn explicit_channels_are_used_exactly_and_deduplicated() {
    let (_, payload, _) = catalogue().swap_remove(0);
    let event = validate(with_channels(
        "agent.spawned",
        payload.clone(),
        &[
            "project:p_4",
            "task:t_9",
            "project:p_4",
            "swarm:s_2",
            "task:t_9",
        ],
    ))
    .expect("valid channels");
    assert_eq!(
        channel_names(&event),
        ["project:p_4", "task:t_9", "swarm:s_2"],
        "no org: or derived channel is added"
    );
    let event = validate(with_channels(
        "agent.spawned",
        payload,
        &["org:o_1", "agent:other"],
    ))
    .expect("the event's own org channel is allowed");
    assert_eq!(channel_names(&event), ["org:o_1", "agent:other"]);
}

#[test]
fn invalid_explicit_channel_is_refused_with_its_index() {
    let good = [
        "task:t_9",
        "project:p_4",
        "agent:coder",
        "swarm:s_2",
        "org:o_1",
    ];
    for bad in [
        "", "task", "task:", "user:x", "task:t 9", "Task:t_9", "task:*", "org:o_2", "org:O_1",
    ] {
        for index in 0..good.len() {
            let mut channels = good;
            channels[index] = bad;
            let result = validate(with_channels("task.deleted", task_deleted(), &channels));
            assert!(
                matches!(result, Err(EventError::InvalidChannel { index: i, .. }) if i == index),
                "{bad:?} at {index}: {result:?}"
            );
        }
    }
    let result = validate(with_channels(
        "task.deleted",
        task_deleted(),
        &["task:t_9", "user:x", "task:t_9", "org:o_2"],
    ));
    assert!(
        matches!(result, Err(EventError::InvalidChannel { index: 1, .. })),
        "the first bad channel is reported: {result:?}"
    );
}

#[test]
fn another_orgs_channel_is_refused() {
    let result = validate(with_channels("task.deleted", task_deleted(), &["org:o_2"]));
    assert!(
        matches!(result, Err(EventError::InvalidChannel { index: 0, .. })),
        "{result:?}"
    );
}

#[test]
fn empty_or_more_than_16_channels_are_refused_with_channel_count() {
    assert_eq!(
        validate(with_channels("task.deleted", task_deleted(), &[])),
        Err(EventError::ChannelCount)
    );
    let names: Vec<String> = (0..=MAX_CHANNELS_PER_EVENT)
        .map(|i| format!("task:t_{i}"))
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(MAX_CHANNELS_PER_EVENT, 16);
    assert_eq!(
        validate(with_channels("task.deleted", task_deleted(), &names)),
        Err(EventError::ChannelCount)
    );
    let event = validate(with_channels("task.deleted", task_deleted(), &names[..16]))
        .expect("16 channels are allowed");
    assert_eq!(channel_names(&event), names[..16]);
}

#[test]
fn idempotency_key_must_be_1_to_256_bytes() {
    assert_eq!(MAX_IDEMPOTENCY_KEY, 256);
    let (k_257, e_129) = ("k".repeat(257), "é".repeat(129));
    for key in ["", k_257.as_str(), e_129.as_str()] {
        assert_eq!(
            with_key(key),
            Err(EventError::BadIdempotencyKey),
            "{} bytes",
            key.len()
        );
    }
    let (k_256, e_128) = ("k".repeat(256), "é".repeat(128));
    for key in ["k", k_256.as_str(), e_128.as_str(), "optional; any text"] {
        let event = with_key(key).unwrap_or_else(|e| panic!("{} bytes: {e:?}", key.len()));
        assert_eq!(event.idempotency_key.as_deref(), Some(key));
    }
}

// The publish body on the wire.

#[test]
fn contract_publish_example_is_accepted_verbatim() {
    let text = r#"{"orgId":"o_1","type":"task.status_changed",
 "payload":{"taskId":"t_9","projectId":"p_4","oldStatus":"todo","newStatus":"in_progress"},
 "channels":["task:t_9","project:p_4"],
 "idempotencyKey":"optional; the same key within 5 minutes is not delivered twice"}"#;
    let body: PublishEvent = serde_json::from_str(text).expect("the contract's example parses");
    assert_eq!(
        body,
        PublishEvent {
            org_id: "o_1".to_owned(),
            event_type: "task.status_changed".to_owned(),
            payload: json!({
                "taskId": "t_9", "projectId": "p_4", "oldStatus": "todo", "newStatus": "in_progress",
            }),
            channels: Some(vec!["task:t_9".to_owned(), "project:p_4".to_owned()]),
            idempotency_key: Some(
                "optional; the same key within 5 minutes is not delivered twice".to_owned()
            ),
        }
    );
    let event = validate(body).expect("the contract's example is valid");
    assert_eq!(event.event_type, EventType::TaskStatusChanged);
    assert_eq!(channel_names(&event), ["task:t_9", "project:p_4"]);
    assert_eq!(event.payload["timestamp"], json!(FILLED_AT));
}

#[test]
fn publish_body_with_an_unknown_top_level_field_is_refused() {
    for extra in [
        r#""extra":1"#,
        r#""channel":["task:t_9"]"#,
        r#""OrgId":"o_1""#,
        r#""idempotency_key":"k""#,
        r#""timestamp":"2026-11-25T20:40:16Z""#,
    ] {
        let text = format!(
            r#"{{"orgId":"o_1","type":"task.deleted","payload":{{"taskId":"t_9"}},{extra}}}"#
        );
        assert!(
            serde_json::from_str::<PublishEvent>(&text).is_err(),
            "{text} should be refused"
        );
    }
}

#[test]
fn publish_body_without_org_type_or_payload_is_refused() {
    for text in [
        r#"{"type":"task.deleted","payload":{"taskId":"t_9"}}"#,
        r#"{"orgId":"o_1","payload":{"taskId":"t_9"}}"#,
        r#"{"orgId":"o_1","type":"task.deleted"}"#,
        r#"{"orgId":1,"type":"task.deleted","payload":{}}"#,
        r#"{"orgId":"o_1","type":"task.deleted","payload":{},"channels":"task:t_9"}"#,
        r#"[]"#,
    ] {
        assert!(
            serde_json::from_str::<PublishEvent>(text).is_err(),
            "{text} should be refused"
        );
    }
}

#[test]
fn publish_body_serializes_back_to_the_same_json() {
    let text = r#"{"orgId":"o_1","type":"task.deleted","payload":{"taskId":"t_9"},"channels":["task:t_9"],"idempotencyKey":"k"}"#;
    let body: PublishEvent = serde_json::from_str(text).expect("parses");
    assert_eq!(
        serde_json::to_value(&body).expect("serializes"),
        serde_json::from_str::<Value>(text).expect("JSON")
    );
    let minimal = r#"{"orgId":"o_1","type":"task.deleted","payload":{}}"#;
    let body: PublishEvent = serde_json::from_str(minimal).expect("parses");
    assert_eq!(
        serde_json::to_string(&body).expect("serializes"),
        minimal,
        "absent options are left out"
    );
}

#[test]
fn error_codes_are_stable() {
    let cases = [
        (EventError::UnknownType, "unknown_type"),
        (EventError::InvalidOrg, "invalid_org"),
        (EventError::PayloadNotObject, "invalid_payload"),
        (EventError::MissingField("taskId"), "invalid_payload"),
        (
            EventError::BadField {
                field: "progress",
                expected: "must be a number from 0 to 100",
            },
            "invalid_payload",
        ),
        (
            EventError::InvalidChannel {
                index: 3,
                reason: "bad".to_owned(),
            },
            "invalid_channel",
        ),
        (EventError::ChannelCount, "invalid_channel"),
        (EventError::BadIdempotencyKey, "invalid_idempotency_key"),
    ];
    for (error, code) in cases {
        assert_eq!(error.code(), code, "{error:?}");
    }
}

#[test]
fn error_messages_name_the_field_and_the_channel_index() {
    assert!(
        EventError::MissingField("taskId")
            .to_string()
            .contains("taskId")
    );
    let bad = EventError::BadField {
        field: "duration",
        expected: "must be a number",
    };
    assert!(bad.to_string().contains("duration"));
    let channel = EventError::InvalidChannel {
        index: 3,
        reason: "bad".to_owned(),
    };
    assert!(channel.to_string().contains('3'));
}

// The delivered form.

const DELIVERED_EXAMPLE: &str = r#"{"type":"task.status_changed","channelId":"project:p_4","id":"evt_01JD...","offset":42,"epoch":"e_b71c",
 "payload":{"taskId":"t_9","oldStatus":"todo","newStatus":"in_progress","timestamp":"2026-11-25T20:40:16.123Z"}}"#;

#[test]
fn write_delivery_reproduces_the_contract_example() {
    let example: Value = serde_json::from_str(DELIVERED_EXAMPLE).expect("the example is JSON");
    let channel = ChannelId::parse("project:p_4").expect("valid");
    let payload = serde_json::to_string(&example["payload"]).expect("serializes");
    let written = write_delivery(
        EventType::TaskStatusChanged,
        &channel,
        "evt_01JD...",
        42,
        "e_b71c",
        &payload,
    );
    let value: Value = serde_json::from_str(&written).expect("write_delivery writes JSON");
    assert_eq!(value, example);
    assert!(
        written.starts_with(r#"{"type":"task.status_changed","channelId":"project:p_4","#),
        "{written}"
    );

    let delivery: Delivery = serde_json::from_str(&written).expect("parses as a Delivery");
    assert_eq!(
        delivery,
        Delivery {
            event_type: "task.status_changed".to_owned(),
            channel_id: "project:p_4".to_owned(),
            id: "evt_01JD...".to_owned(),
            offset: 42,
            epoch: "e_b71c".to_owned(),
            payload: example["payload"].clone(),
        }
    );
    assert_eq!(
        serde_json::to_value(&delivery).expect("serializes"),
        example
    );
}

proptest! {
    #[test]
    fn write_delivery_parses_back_into_the_same_delivery(
        event_type in select(EventType::ALL.to_vec()),
        channel in "(agent|swarm|project|org|task):[A-Za-z0-9][A-Za-z0-9._-]{0,127}",
        id in "evt_[0-9A-Z]{26}",
        offset in any::<u64>(),
        epoch in "e_[0-9a-z]{1,16}",
        text in any::<String>(),
        number in any::<i64>(),
    ) {
        let channel = ChannelId::parse(&channel).expect("valid by construction");
        let payload = json!({"text": text, "number": number, "nested": {"list": [text, null]}});
        let payload_json = serde_json::to_string(&payload).expect("serializes");
        let written = write_delivery(event_type, &channel, &id, offset, &epoch, &payload_json);
        let delivery: Delivery = serde_json::from_str(&written).expect("parses as a Delivery");
        prop_assert_eq!(delivery.event_type, event_type.as_str());
        prop_assert_eq!(delivery.channel_id, channel.as_str());
        prop_assert_eq!(delivery.id, id);
        prop_assert_eq!(delivery.offset, offset);
        prop_assert_eq!(delivery.epoch, epoch);
        prop_assert_eq!(delivery.payload, payload);
    }
}

// Time formats.

#[test]
fn rfc3339_millis_writes_utc_with_truncated_milliseconds() {
    assert_eq!(rfc3339_millis(now()), FILLED_AT);
    let plus_two = UtcOffset::from_hms(2, 0, 0).expect("valid offset");
    assert_eq!(rfc3339_millis(now().to_offset(plus_two)), FILLED_AT);
    assert_eq!(
        rfc3339_millis(OffsetDateTime::UNIX_EPOCH),
        "1970-01-01T00:00:00.000Z"
    );
    let nearly_next_second =
        OffsetDateTime::from_unix_timestamp_nanos(1_795_639_216_999_999_999).expect("in range");
    assert_eq!(
        rfc3339_millis(nearly_next_second),
        "2026-11-25T20:40:16.999Z"
    );
}

#[test]
fn rfc3339_secs_writes_utc_seconds() {
    assert_eq!(rfc3339_secs(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339_secs(1_795_639_216), "2026-11-25T20:40:16Z");
    assert_eq!(rfc3339_secs(253_402_300_799), "9999-12-31T23:59:59Z");
    assert_eq!(rfc3339_secs(-62_167_219_200), "0000-01-01T00:00:00Z");
}

#[test]
fn rfc3339_secs_after_year_9999_is_the_last_second_of_9999() {
    for unix in [253_402_300_800, i64::MAX] {
        assert_eq!(rfc3339_secs(unix), "9999-12-31T23:59:59Z", "{unix}");
    }
}

#[test]
fn rfc3339_secs_before_year_0_is_still_rfc3339_and_not_in_the_future() {
    for unix in [
        -62_167_219_201,
        -100_000_000_000,
        -377_705_116_800,
        i64::MIN,
    ] {
        let written = rfc3339_secs(unix);
        let parsed = OffsetDateTime::parse(&written, &Rfc3339)
            .unwrap_or_else(|e| panic!("{unix}: {written:?} is not RFC 3339: {e}"));
        assert!(
            parsed.unix_timestamp() <= -62_167_219_200,
            "{unix}: {written} is later than year 0"
        );
    }
}

/// Unix nanoseconds from 0000-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
const RFC3339_NANOS: std::ops::RangeInclusive<i128> =
    -62_167_219_200_000_000_000..=253_402_300_799_999_999_999;

proptest! {
    #[test]
    fn rfc3339_millis_parses_back_to_the_same_millisecond(nanos in RFC3339_NANOS) {
        let t = OffsetDateTime::from_unix_timestamp_nanos(nanos).expect("in range");
        let written = rfc3339_millis(t);
        prop_assert_eq!(written.len(), 24, "{}", written);
        prop_assert!(written.ends_with('Z'), "{}", written);
        let parsed = OffsetDateTime::parse(&written, &Rfc3339).expect("RFC 3339");
        prop_assert_eq!(parsed.offset(), UtcOffset::UTC);
        prop_assert_eq!(parsed.unix_timestamp_nanos(), nanos.div_euclid(1_000_000) * 1_000_000);
    }

    #[test]
    fn rfc3339_secs_parses_back_to_the_same_second(
        unix in -62_167_219_200i64..=253_402_300_799,
    ) {
        let written = rfc3339_secs(unix);
        prop_assert_eq!(written.len(), 20, "{}", written);
        let parsed = OffsetDateTime::parse(&written, &Rfc3339).expect("RFC 3339");
        prop_assert_eq!(parsed.offset(), UtcOffset::UTC);
        prop_assert_eq!(parsed.unix_timestamp(), unix);
    }
}
