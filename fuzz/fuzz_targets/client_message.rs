//! `ClientMessage::decode` on arbitrary text: never panics; what it accepts survives a
//! serde_json round trip unchanged; what it refuses is refused with a reason that does not echo
//! the frame's string values, and with the frame's `ref` when it had a readable one.

#![no_main]

mod common;

use common::same_json;
use cortex_protocol::{ClientMessage, Ref};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Shortest string value whose presence in an error message counts as an echo.
const ECHO_MIN: usize = 8;
/// Stands in for a suspect string value; no error message of ours contains it.
const CANARY: &str = "\u{2603}";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match ClientMessage::decode(text) {
        Ok(message) => {
            let json = serde_json::to_string(&message).expect("a decoded command serializes");
            let again = ClientMessage::decode(&json)
                .unwrap_or_else(|e| panic!("re-encoded {json:?} does not decode: {e:?}"));
            let (before, after) = (
                serde_json::to_value(&message).expect("serializes"),
                serde_json::to_value(&again).expect("serializes"),
            );
            assert!(
                same_json(&before, &after),
                "{message:?} came back as {again:?}"
            );
        }
        Err(error) => {
            assert!(!error.message.is_empty(), "an error says why");
            let Ok(value) = serde_json::from_str::<Value>(text) else {
                assert!(error.r#ref.is_none(), "no ref can be read from non-JSON");
                return;
            };
            // The ref is echoed whenever the frame is an object with a readable one.
            let expected_ref = value
                .get("ref")
                .and_then(|r| serde_json::from_value::<Ref>(r.clone()).ok());
            assert_eq!(error.r#ref, expected_ref, "ref of {text:?}");
            // A value the message contains may just be our own vocabulary (`subscribe`,
            // `expected`): put a canary in its place and check that the canary is not echoed.
            let mut strings = Vec::new();
            string_values(&value, &mut strings);
            for s in strings {
                if !error.message.contains(s.as_str()) {
                    continue;
                }
                let canary = CANARY.repeat(s.chars().count().max(ECHO_MIN));
                let mut replaced = value.clone();
                replace_string(&mut replaced, &s, &canary);
                let frame = serde_json::to_string(&replaced).expect("a JSON value serializes");
                if let Err(again) = ClientMessage::decode(&frame) {
                    assert!(
                        !again.message.contains(CANARY),
                        "error {:?} echoes a string value of {frame:?}",
                        again.message
                    );
                }
            }
        }
    }
});

/// Every string value (not object key) of at least [`ECHO_MIN`] bytes in `value`.
fn string_values(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) if s.len() >= ECHO_MIN => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| string_values(v, out)),
        Value::Object(map) => map.values().for_each(|v| string_values(v, out)),
        _ => {}
    }
}

/// Replaces every string value equal to `from` by `to`.
fn replace_string(value: &mut Value, from: &str, to: &str) {
    match value {
        Value::String(s) if s == from => *s = to.to_owned(),
        Value::Array(items) => items.iter_mut().for_each(|v| replace_string(v, from, to)),
        Value::Object(map) => map.values_mut().for_each(|v| replace_string(v, from, to)),
        _ => {}
    }
}
