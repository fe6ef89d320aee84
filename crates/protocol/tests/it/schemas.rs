//! The generated API documents (docs/schemas, docs/openapi.json, docs/asyncapi.json): they are
//! what the generator writes, every `$ref` resolves, and the schemas agree with the crate's own
//! checks (`Event::validate`, `ClientMessage::decode`, `ChannelId::parse`) on real messages, on
//! every field of every event type, and on generated input.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cortex_protocol::channel::is_valid_id;
use cortex_protocol::event::{is_rfc3339, write_delivery};
use cortex_protocol::schema::{documents, schemas};
use cortex_protocol::{
    ChannelId, ClientMessage, ErrorCode, Event, EventType, PublishEvent, Ref, ServerMessage, Since,
};
use jsonschema::Validator;
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Value, json};

use crate::events::{catalogue, mistyped, now};

/// The repository's docs/ directory.
fn docs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs")
        .canonicalize()
        .expect("docs/ exists")
}

/// A validator for `docs/schemas/<key>.json`, reading the files it refers to from disk.
fn validator(key: &str) -> Validator {
    let path = docs().join(format!("schemas/{key}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let schema: Value = serde_json::from_str(&text).expect("schema files are JSON");
    jsonschema::options()
        .with_base_uri(format!("file://{}", path.display()))
        .should_validate_formats(true)
        .build(&schema)
        .unwrap_or_else(|e| panic!("{key}: {e}"))
}

/// Validators built once per test binary (building one reads its files).
fn cached(key: &'static str) -> &'static Validator {
    static CACHE: OnceLock<std::sync::Mutex<Vec<(&'static str, &'static Validator)>>> =
        OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap();
    if let Some((_, v)) = cache.iter().find(|(k, _)| *k == key) {
        return v;
    }
    let v: &'static Validator = Box::leak(Box::new(validator(key)));
    cache.push((key, v));
    v
}

fn payload_validator(ty: EventType) -> &'static Validator {
    cached(Box::leak(
        format!("payload/{}", ty.as_str()).into_boxed_str(),
    ))
}

fn body(ty: &str, payload: Value) -> PublishEvent {
    PublishEvent {
        org_id: "o_1".into(),
        event_type: ty.into(),
        payload,
        channels: None,
        idempotency_key: None,
    }
}

/// Whether the crate accepts `payload` for `ty` (the rest of the body valid).
fn crate_accepts(ty: EventType, payload: &Value) -> bool {
    Event::validate(body(ty.as_str(), payload.clone()), now()).is_ok()
}

#[test]
fn docs_match_the_generator() {
    let dir = docs();
    let mut wrong = Vec::new();
    for d in documents() {
        let path = dir.join(&d.path);
        // Compared as JSON values: the same whatever order a map keeps its keys in.
        match std::fs::read_to_string(&path).map(|t| serde_json::from_str::<Value>(&t)) {
            Ok(Ok(v)) if v == d.value => {}
            Ok(_) => wrong.push(format!("{} differs", d.path)),
            Err(_) => wrong.push(format!("{} is missing", d.path)),
        }
    }
    // And nothing under docs/schemas that the generator does not write.
    let generated: BTreeSet<String> = documents().into_iter().map(|d| d.path).collect();
    let mut stack = vec![dir.join("schemas")];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("docs/schemas exists") {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path
                .strip_prefix(&dir)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if !generated.contains(&rel) {
                wrong.push(format!("{rel} is not generated"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "docs/ differs from the generator ({}); run \
         `cargo run -p cortex-protocol --features schema --example schemas -- docs`",
        wrong.join(", ")
    );
}

/// Resolves a JSON pointer fragment (`/a/b`, `~1` and `~0` escapes) in `doc`.
fn pointer<'a>(doc: &'a Value, fragment: &str) -> Option<&'a Value> {
    if fragment.is_empty() {
        return Some(doc);
    }
    doc.pointer(fragment)
}

/// Every `$ref` in the file at `path` (and, transitively, in the files it names) resolves to a
/// file that exists and a place in it that exists. Returns the files visited.
fn check_refs(path: &Path, seen: &mut BTreeSet<PathBuf>, errors: &mut Vec<String>) {
    if !seen.insert(path.to_path_buf()) {
        return;
    }
    let doc: Value = match std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
    {
        Some(v) => v,
        None => {
            errors.push(format!("{path:?} is missing or not JSON"));
            return;
        }
    };
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    for r in refs {
        let (file, fragment) = r.split_once('#').unwrap_or((&r, ""));
        if file.contains("://") {
            errors.push(format!("{path:?}: {r} is not a relative reference"));
            continue;
        }
        let target = if file.is_empty() {
            path.to_path_buf()
        } else {
            path.parent().unwrap().join(file)
        };
        let Some(target_doc) = std::fs::read_to_string(&target)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        else {
            errors.push(format!("{path:?}: {r}: no such JSON file"));
            continue;
        };
        if pointer(&target_doc, fragment).is_none() {
            errors.push(format!("{path:?}: {r}: no such place"));
        }
        if !file.is_empty() {
            check_refs(&target.canonicalize().unwrap(), seen, errors);
        }
    }
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                out.push(r.clone());
            }
            m.values().for_each(|x| collect_refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

#[test]
fn every_ref_in_the_documents_resolves() {
    let dir = docs();
    let mut seen = BTreeSet::new();
    let mut errors = Vec::new();
    for d in documents() {
        check_refs(&dir.join(&d.path), &mut seen, &mut errors);
    }
    assert!(errors.is_empty(), "{errors:#?}");
    // The checker itself finds a dangling reference.
    let tmp = std::env::temp_dir().join(format!("cortex-refs-{}.json", std::process::id()));
    std::fs::write(
        &tmp,
        r##"{"a": {"$ref": "#/nope"}, "b": {"$ref": "missing.json"}}"##,
    )
    .unwrap();
    let mut errors = Vec::new();
    check_refs(&tmp, &mut BTreeSet::new(), &mut errors);
    std::fs::remove_file(&tmp).unwrap();
    assert_eq!(errors.len(), 2, "{errors:?}");
}

#[test]
fn every_schema_file_is_a_valid_draft_2020_12_schema() {
    for d in documents() {
        if !d.path.starts_with("schemas/") || d.path == "schemas/index.json" {
            continue;
        }
        jsonschema::draft202012::meta::validate(&d.value)
            .unwrap_or_else(|e| panic!("{}: {e}", d.path));
        let key = d
            .path
            .trim_start_matches("schemas/")
            .trim_end_matches(".json");
        let _ = validator(key);
    }
}

#[test]
fn asyncapi_describes_every_message_on_the_ws_channel() {
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(docs().join("asyncapi.json")).unwrap())
            .unwrap();
    assert_eq!(doc["asyncapi"], "3.0.0");
    assert_eq!(doc["channels"]["ws"]["address"], "/api/ws");
    let names = |op: &str| -> BTreeSet<String> {
        doc["operations"][op]["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let r = m["$ref"].as_str().unwrap();
                r.trim_start_matches("#/channels/ws/messages/").to_owned()
            })
            .collect()
    };
    let expect = |group: &str, names: &[&str]| -> BTreeSet<String> {
        names.iter().map(|n| format!("{group}.{n}")).collect()
    };
    assert_eq!(doc["operations"]["receiveCommand"]["action"], "receive");
    assert_eq!(
        names("receiveCommand"),
        expect(
            "client",
            &["auth", "subscribe", "unsubscribe", "refresh", "ping"]
        )
    );
    assert_eq!(
        names("sendReply"),
        expect(
            "server",
            &[
                "connected",
                "subscribed",
                "unsubscribed",
                "refreshed",
                "pong",
                "error"
            ]
        )
    );
    let events: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
    assert_eq!(names("sendEvent"), expect("event", &events));
}

#[test]
fn openapi_answers_every_status_of_the_publish_contract() {
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(docs().join("openapi.json")).unwrap())
            .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let post = &doc["paths"]["/api/events"]["post"];
    let statuses: BTreeSet<&str> = post["responses"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        statuses,
        BTreeSet::from(["202", "400", "401", "413", "503"])
    );
    assert_eq!(
        post["responses"]["503"]["headers"]["Retry-After"]["required"],
        true
    );
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert!(doc["paths"][path]["get"].is_object(), "{path}");
    }
}

/// A payload for `ty` with every required field, from the crate's table (not the catalogue).
fn example(ty: EventType) -> Value {
    crate::events::catalogue()
        .into_iter()
        .find(|(name, ..)| *name == ty.as_str())
        .map(|(_, p, _)| p)
        .expect("the catalogue names every type")
}

#[test]
fn every_event_types_example_passes_its_schemas() {
    let request = cached("publish/request");
    let server = cached("server-message");
    for (name, payload, _) in catalogue() {
        let ty = EventType::parse(name).unwrap();
        assert!(payload_validator(ty).is_valid(&payload), "{name}");
        assert!(crate_accepts(ty, &payload), "{name}");
        let publish = json!({"orgId": "o_1", "type": name, "payload": payload});
        assert!(request.is_valid(&publish), "{name}");
        assert!(
            request.is_valid(&json!({"events": [publish.clone(), publish.clone()]})),
            "{name} batch"
        );
        // As delivered: what the server writes for it, without and with a given timestamp.
        let mut without = payload.clone();
        without.as_object_mut().unwrap().remove("timestamp");
        for p in [payload.clone(), without] {
            let event = Event::validate(body(name, p), now()).unwrap();
            let json = serde_json::to_string(&event.payload).unwrap();
            for channel in &event.channels {
                let frame = write_delivery(ty, channel, "evt_1", 42, "e_1", &json);
                let frame: Value = serde_json::from_str(&frame).unwrap();
                assert!(cached_event(ty).is_valid(&frame), "{frame}");
                assert!(server.is_valid(&frame), "{frame}");
            }
        }
        // A delivered event of another type's shape fails.
        let mut frame = json!({"type": name, "channelId": "org:o_1", "id": "e", "offset": 1, "epoch": "e", "payload": {}});
        assert!(!server.is_valid(&frame), "{name} empty payload");
        frame["payload"] = example(ty);
        frame["payload"]
            .as_object_mut()
            .unwrap()
            .remove("timestamp");
        assert!(
            !cached_event(ty).is_valid(&frame),
            "{name}: a delivered payload always has its timestamp"
        );
    }
}

fn cached_event(ty: EventType) -> &'static Validator {
    cached(Box::leak(format!("event/{}", ty.as_str()).into_boxed_str()))
}

#[test]
fn missing_null_or_mistyped_fields_fail_the_schema_exactly_when_the_crate_refuses_them() {
    for (name, payload, _) in catalogue() {
        let ty = EventType::parse(name).unwrap();
        let schema = payload_validator(ty);
        for &(field, _) in ty.required() {
            let mut cases = vec![Value::Null];
            cases.extend(mistyped(field));
            cases.extend([json!(-1), json!(101), json!("not a time"), json!("running")]);
            let mut missing = payload.clone();
            missing.as_object_mut().unwrap().remove(field);
            let mut variants = vec![(missing, "missing".to_owned())];
            for c in cases {
                let mut p = payload.clone();
                p[field] = c.clone();
                variants.push((p, c.to_string()));
            }
            for (p, what) in variants {
                assert_eq!(
                    schema.is_valid(&p),
                    crate_accepts(ty, &p),
                    "{name}.{field} = {what}"
                );
            }
        }
        // Every required field but the timestamp is in the schema's `required`.
        let required: BTreeSet<&str> = ty
            .required()
            .iter()
            .map(|(f, _)| *f)
            .filter(|f| *f != "timestamp")
            .collect();
        let mut p = payload.clone();
        p.as_object_mut().unwrap().retain(|k, _| k == "timestamp");
        assert_eq!(required.is_empty(), schema.is_valid(&p), "{name}");
    }
}

/// Any JSON value, small.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        (-5i64..110).prop_map(Value::from),
        (-1.0f64..101.0).prop_map(Value::from),
        select(vec![
            "error",
            "blocked",
            "x",
            "",
            "2026-11-25T20:40:16.123Z",
            "2026-11-25 20:40:16Z",
            "2026-11-25T20:40:16+02:00",
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
            proptest::collection::btree_map("[a-c]", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A payload of `ty`'s fields (each present or not) with arbitrary values, and some other field.
fn arbitrary_payload() -> impl Strategy<Value = (EventType, Value)> {
    select(EventType::ALL.to_vec()).prop_flat_map(|ty| {
        let n = ty.required().len();
        (
            Just(ty),
            proptest::collection::vec(
                prop_oneof![
                    1 => Just(None),
                    1 => any_json().prop_map(Some),
                    2 => Just(Some(Value::Bool(true))), // marker: keep the example's value
                ],
                n,
            ),
            proptest::option::of(any_json()),
        )
            .prop_map(move |(ty, values, extra)| {
                let base = example(ty);
                let mut p = serde_json::Map::new();
                for (&(field, _), v) in ty.required().iter().zip(values) {
                    match v {
                        None => {}
                        Some(Value::Bool(true)) => {
                            p.insert(field.into(), base[field].clone());
                        }
                        Some(v) => {
                            p.insert(field.into(), v);
                        }
                    }
                }
                if let Some(e) = extra {
                    p.insert("extra".into(), e);
                }
                (ty, Value::Object(p))
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn payload_schemas_agree_with_validate((ty, payload) in arbitrary_payload()) {
        prop_assert_eq!(
            payload_validator(ty).is_valid(&payload),
            crate_accepts(ty, &payload),
            "{} {}", ty.as_str(), payload
        );
    }

    #[test]
    fn channel_id_schema_agrees_with_parse(s in "(agent|swarm|project|org|task|Org|x|)(:|)[A-Za-z0-9._ -]{0,3}[a-z.]{0,130}") {
        let v = Value::from(s.clone());
        prop_assert_eq!(cached("common/ChannelId").is_valid(&v), ChannelId::parse(&s).is_ok(), "{}", s);
    }

    #[test]
    fn id_schema_agrees_with_the_org_id_check(s in "[A-Za-z0-9._ é-]{0,3}[a-z]{0,130}") {
        prop_assert_eq!(cached("common/Id").is_valid(&Value::from(s.clone())), is_valid_id(&s), "{}", s);
    }

    #[test]
    fn timestamp_schema_agrees_with_is_rfc3339(
        s in "20[0-9]{2}-(0[0-9]|1[0-3])-([0-3][0-9])[Tt ]([01][0-9]|2[0-4]):[0-6][0-9]:[0-6][0-9](\\.[0-9]{1,9})?([Zz]|[+-]([01][0-9]|2[0-4]):[0-6][0-9]|)"
    ) {
        prop_assert_eq!(cached("common/Timestamp").is_valid(&Value::from(s.clone())), is_rfc3339(&s), "{}", s);
    }

    #[test]
    fn publish_schema_agrees_with_validate_on_the_envelope(
        ty in select(EventType::ALL.to_vec()),
        org in select(vec!["o_1", "o.2", "-bad", ""]),
        channels in proptest::option::of(proptest::collection::vec(
            select(vec!["task:t_9", "agent:a b", "org:o_1", "project:p", "nope"]), 0..18)),
        key in proptest::option::of("[a-z]{0,3}|[a-z]{255,258}"),
    ) {
        let mut body = json!({"orgId": org, "type": ty.as_str(), "payload": example(ty)});
        if let Some(c) = &channels {
            body["channels"] = json!(c);
        }
        if let Some(k) = &key {
            body["idempotencyKey"] = json!(k);
        }
        // `org:o_1` is another org's channel for `o.2`: the one rule a schema cannot say. The
        // crate judges the body with the event's own org channel in its place.
        let mut own = body.clone();
        if let Some(c) = own["channels"].as_array_mut() {
            for x in c.iter_mut().filter(|x| *x == "org:o_1") {
                *x = format!("org:{org}").into();
            }
        }
        let parsed: PublishEvent = serde_json::from_value(own).unwrap();
        let ok = Event::validate(parsed, now()).is_ok();
        prop_assert_eq!(cached("publish/event").is_valid(&body), ok, "{}", body);
    }
}

#[test]
fn publish_schema_refuses_what_the_server_refuses_before_validation() {
    let request = cached("publish/request");
    let good = json!({"orgId": "o_1", "type": "task.deleted", "payload": {"taskId": "t"}});
    assert!(request.is_valid(&good));
    for bad in [
        json!({"orgId": "o_1", "type": "task.nope", "payload": {"taskId": "t"}}),
        json!({"orgId": "o_1", "type": "task.deleted", "payload": {"taskId": "t"}, "extra": 1}),
        json!({"orgId": "o_1", "type": "task.deleted", "payload": ["t"]}),
        json!({"orgId": "o_1", "type": "task.deleted"}),
        json!({"events": []}),
        json!({"events": vec![good.clone(); 101]}),
        json!({"events": [good.clone()], "more": 1}),
        json!([good.clone()]),
    ] {
        assert!(!request.is_valid(&bad), "{bad}");
    }
    // 100 is the most a batch holds.
    assert!(request.is_valid(&json!({"events": vec![good; 100]})));
}

/// Every command of CONTRACT.md section 3, as a client sends it.
fn commands() -> Vec<ClientMessage> {
    let r = Some(Ref::Num(7.into()));
    vec![
        ClientMessage::Auth {
            token: "a.b.c".into(),
            r#ref: None,
        },
        ClientMessage::Subscribe {
            channel_id: "task:t_9".into(),
            since: Some(Since {
                offset: 41,
                epoch: "e_b71c".into(),
            }),
            r#ref: Some(Ref::Str("s".into())),
        },
        ClientMessage::Subscribe {
            channel_id: "agent:my-coder-agent".into(),
            since: None,
            r#ref: None,
        },
        ClientMessage::Unsubscribe {
            channel_id: "agent:my-coder-agent".into(),
            r#ref: r.clone(),
        },
        ClientMessage::Refresh {
            token: "a.b.c".into(),
            r#ref: r.clone(),
        },
        ClientMessage::Ping { r#ref: r },
    ]
}

#[test]
fn every_client_message_passes_the_schema_and_bad_frames_fail_it() {
    let schema = cached("client-message");
    for m in commands() {
        let v = serde_json::to_value(&m).unwrap();
        assert!(schema.is_valid(&v), "{v}");
        let ty = v["type"].as_str().unwrap();
        let own = validator(&format!("client/{ty}"));
        assert!(own.is_valid(&v), "{v}");
        assert_eq!(ClientMessage::decode(&v.to_string()).unwrap(), m);
    }
    for frame in [
        r#"{"ref":1}"#,
        r#"{"type":"dance","ref":1}"#,
        r#"{"type":5}"#,
        r#"{"type":"subscribe","ref":"r"}"#,
        r#"{"type":"subscribe","channelId":5,"ref":"r"}"#,
        r#"{"type":"subscribe","channelId":"a:b","since":{"offset":-1,"epoch":"e"}}"#,
        r#"{"type":"subscribe","channelId":"a:b","since":{"offset":1}}"#,
        r#"{"type":"ping","oops":1}"#,
        r#"{"type":"auth"}"#,
        r#"{"type":"refresh","token":1}"#,
        r#"{"type":"ping","ref":true}"#,
        r#"[]"#,
    ] {
        let v: Value = serde_json::from_str(frame).unwrap();
        assert!(ClientMessage::decode(frame).is_err(), "{frame}");
        assert!(!schema.is_valid(&v), "{frame}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn client_message_schema_agrees_with_decode(
        ty in select(vec!["auth", "subscribe", "unsubscribe", "refresh", "ping", "pong"]),
        fields in proptest::collection::btree_map(
            select(vec!["token", "channelId", "since", "ref", "other"]),
            prop_oneof![
                any_json(),
                Just(json!({"offset": 3, "epoch": "e"})),
                Just(json!("task:t_1")),
            ],
            0..4,
        ),
    ) {
        let mut m = serde_json::Map::new();
        m.insert("type".into(), ty.into());
        for (k, v) in fields {
            m.insert(k.into(), v);
        }
        let v = Value::Object(m);
        prop_assert_eq!(
            cached("client-message").is_valid(&v),
            ClientMessage::decode(&v.to_string()).is_ok(),
            "{}", v
        );
    }
}

#[test]
fn every_server_message_passes_the_schema_of_its_type_only() {
    let any = cached("server-message");
    let r = Some(Ref::Str("x".into()));
    let replies = vec![
        ServerMessage::Connected {
            connection_id: "c_1".into(),
            user_id: "u_1".into(),
            org_id: "o_1".into(),
            expires_at: "2026-11-25T21:40:16Z".into(),
        },
        ServerMessage::Subscribed {
            channel_id: "task:t_9".into(),
            offset: 41,
            epoch: "e_b71c".into(),
            recovered: Some(true),
            r#ref: r.clone(),
        },
        ServerMessage::Subscribed {
            channel_id: "task:t_9".into(),
            offset: 0,
            epoch: "e_b71c".into(),
            recovered: None,
            r#ref: None,
        },
        ServerMessage::Unsubscribed {
            channel_id: "task:t_9".into(),
            r#ref: r.clone(),
        },
        ServerMessage::Refreshed {
            expires_at: "2026-11-25T21:40:16Z".into(),
            r#ref: None,
        },
        ServerMessage::Pong { r#ref: r.clone() },
        ServerMessage::Error {
            code: ErrorCode::Forbidden,
            message: "m".into(),
            channel_id: Some("org:o_2".into()),
            r#ref: r,
        },
    ];
    let kinds = [
        "connected",
        "subscribed",
        "unsubscribed",
        "refreshed",
        "pong",
        "error",
    ];
    for m in replies {
        let v: Value = serde_json::from_str(&m.to_json()).unwrap();
        assert!(any.is_valid(&v), "{v}");
        for kind in kinds {
            assert_eq!(
                validator(&format!("server/{kind}")).is_valid(&v),
                v["type"] == kind,
                "{v} against {kind}"
            );
        }
    }
    // Every error code of the crate is in the schema's list, and nothing else is.
    let codes = cached("common/ErrorCode");
    for code in [
        ErrorCode::BadRequest,
        ErrorCode::InvalidChannel,
        ErrorCode::Forbidden,
        ErrorCode::TooManySubscriptions,
        ErrorCode::RateLimited,
        ErrorCode::InvalidToken,
        ErrorCode::TokenMismatch,
        ErrorCode::Unavailable,
    ] {
        assert!(codes.is_valid(&serde_json::to_value(code).unwrap()));
    }
    assert!(!codes.is_valid(&json!("teapot")));
}

#[test]
fn the_named_schemas_cover_every_event_type_and_message() {
    let keys: BTreeSet<String> = schemas().into_iter().map(|n| n.key).collect();
    for ty in EventType::ALL {
        assert!(keys.contains(&format!("payload/{}", ty.as_str())));
        assert!(keys.contains(&format!("event/{}", ty.as_str())));
    }
    assert_eq!(keys.iter().filter(|k| k.starts_with("client/")).count(), 5);
    assert_eq!(keys.iter().filter(|k| k.starts_with("server/")).count(), 6);
}
