//! A publish body from arbitrary bytes: `serde_json::from_slice::<PublishEvent>` then
//! `Event::validate` never panic, and an accepted event is routable and deliverable: 1 to 16
//! distinct channels (never another org's `org:` channel), every required payload field present
//! and not null, an RFC 3339 `timestamp`, and a delivery frame that is valid JSON carrying the
//! payload unchanged.

#![no_main]

mod common;

use common::same_json;
use cortex_protocol::channel::ChannelKind;
use cortex_protocol::event::{MAX_CHANNELS_PER_EVENT, is_rfc3339, rfc3339_secs, write_delivery};
use cortex_protocol::{Delivery, Event, PublishEvent};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use time::OffsetDateTime;

const NOW: i64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    // The unix-time formatter used for `expiresAt` clamps instead of panicking.
    if let Some(bytes) = data.first_chunk::<8>() {
        let s = rfc3339_secs(i64::from_le_bytes(*bytes));
        assert!(is_rfc3339(&s), "{s:?}");
    }

    let Ok(body) = serde_json::from_slice::<PublishEvent>(data) else {
        return;
    };
    let now = OffsetDateTime::from_unix_timestamp(NOW).expect("a valid time");
    let org_id = body.org_id.clone();
    let event_type = body.event_type.clone();
    let explicit = body.channels.clone();
    let Ok(event) = Event::validate(body, now) else {
        return;
    };

    assert_eq!(event.org_id, org_id);
    assert_eq!(event.event_type.as_str(), event_type);
    assert!(!event.channels.is_empty() && event.channels.len() <= MAX_CHANNELS_PER_EVENT);
    for (i, channel) in event.channels.iter().enumerate() {
        assert!(!event.channels[..i].contains(channel), "{channel} twice");
        if channel.kind() == ChannelKind::Org {
            assert_eq!(channel.id(), org_id, "another org's channel");
        }
        if let Some(given) = &explicit {
            assert!(
                given.iter().any(|g| g == channel.as_str()),
                "{channel} not asked for"
            );
        }
    }
    for (field, _) in event.event_type.required() {
        let value = event.payload.get(*field);
        assert!(value.is_some_and(|v| !v.is_null()), "{field} missing");
    }
    let timestamp = event.payload.get("timestamp").and_then(|t| t.as_str());
    assert!(timestamp.is_some_and(is_rfc3339), "{timestamp:?}");

    let payload_json = serde_json::to_string(&event.payload).expect("a JSON map serializes");
    for channel in &event.channels {
        let frame = write_delivery(event.event_type, channel, "evt_1", 7, "e_1", &payload_json);
        let delivery: Delivery = serde_json::from_str(&frame).expect("a delivery is JSON");
        assert_eq!(delivery.channel_id, channel.as_str());
        assert_eq!(delivery.event_type, event_type);
        assert!(same_json(
            &delivery.payload,
            &Value::Object(event.payload.clone())
        ));
    }
});
