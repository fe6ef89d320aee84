//! Micro-benchmarks of the publish path's protocol work, so a regression shows without a load run.
//!
//! - `single`: one ~250-byte publish body (CONTRACT.md section 7): JSON decoding into a
//!   [`PublishEvent`], [`Event::validate`], and both together.
//! - `batch_100`: a `{"events":[...]}` body of 100 such events, decoded and validated; once
//!   straight into typed bodies, once through a `serde_json::Value` first as the server's
//!   publish handler does today.
//! - `delivery`: what a subscriber is sent: the validated payload serialized once per event, then
//!   [`write_delivery`] once per channel.
//! - `channel_id`: [`ChannelId::parse`] on typical ids and on the longest valid one.
//!
//! Run with `cargo bench -p cortex-protocol --bench events`; `cargo test -p cortex-protocol
//! --bench events` runs each benchmark once as a smoke test.

use std::fmt;

use cortex_protocol::event::write_delivery;
use cortex_protocol::{ChannelId, Event, EventType, PublishEvent};
use divan::Bencher;
use divan::counter::{BytesCount, ItemsCount};
use serde::Deserialize;
use serde_json::Value;
use time::OffsetDateTime;

fn main() {
    divan::main();
}

/// A task moving column, with explicit channels, a timestamp and an idempotency key.
const TASK_STATUS_CHANGED: &str = r#"{"orgId":"org_acme","type":"task.status_changed","payload":{"taskId":"t_48213","projectId":"p_4","oldStatus":"todo","newStatus":"in_progress","timestamp":"2026-11-25T20:40:16.123Z"},"channels":["task:t_48213","project:p_4"],"idempotencyKey":"t_48213-status-7"}"#;

/// An agent's chat line, without channels or timestamp: the channels are derived from the
/// payload (`agent:`, `task:`, `org:`) and the timestamp is filled in.
const CHAT_MESSAGE: &str = r#"{"orgId":"org_acme","type":"chat.message","payload":{"messageId":"m_90211","agentId":"a_7","agentName":"builder-7","taskId":"t_48213","content":"Tests pass on the feature branch; opening a pull request for review now, then updating the changelog."}}"#;

/// Which sample body a benchmark runs on.
#[derive(Debug, Clone, Copy)]
enum Sample {
    TaskStatusChanged,
    ChatMessage,
}

const SAMPLES: [Sample; 2] = [Sample::TaskStatusChanged, Sample::ChatMessage];

impl Sample {
    fn json(self) -> &'static str {
        match self {
            Sample::TaskStatusChanged => TASK_STATUS_CHANGED,
            Sample::ChatMessage => CHAT_MESSAGE,
        }
    }

    fn body(self) -> PublishEvent {
        serde_json::from_str(self.json()).expect("the sample decodes")
    }

    /// The validated event, checked once so no benchmark silently times an error path.
    fn event(self) -> Event {
        Event::validate(self.body(), now()).expect("the sample is valid")
    }
}

impl fmt::Display for Sample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ty = match self {
            Sample::TaskStatusChanged => EventType::TaskStatusChanged,
            Sample::ChatMessage => EventType::ChatMessage,
        };
        f.write_str(ty.as_str())
    }
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

mod single {
    use super::*;

    /// JSON bytes to a typed publish body.
    #[divan::bench(args = SAMPLES)]
    fn decode(bencher: Bencher, sample: Sample) {
        let json = sample.json();
        sample.body();
        bencher
            .counter(BytesCount::of_str(json))
            .bench(|| serde_json::from_slice::<PublishEvent>(divan::black_box(json.as_bytes())));
    }

    /// [`Event::validate`] alone (the body is cloned outside the timed part).
    #[divan::bench(args = SAMPLES)]
    fn validate(bencher: Bencher, sample: Sample) {
        let body = sample.body();
        let now = now();
        sample.event();
        bencher
            .with_inputs(|| body.clone())
            .bench_values(|body| Event::validate(body, now));
    }

    /// Decode and validate: the protocol's share of accepting one event.
    #[divan::bench(args = SAMPLES)]
    fn decode_validate(bencher: Bencher, sample: Sample) {
        let json = sample.json();
        let now = now();
        sample.event();
        bencher.counter(BytesCount::of_str(json)).bench(|| {
            let body: PublishEvent =
                serde_json::from_slice(divan::black_box(json.as_bytes())).expect("decodes");
            Event::validate(body, now)
        });
    }
}

mod batch_100 {
    use super::*;

    /// A batch body as publishers send it.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Batch {
        events: Vec<PublishEvent>,
    }

    /// `{"events":[...]}` with 100 events, the two samples alternating (about 25 KB).
    fn body() -> String {
        let events: Vec<&str> = (0..100).map(|i| SAMPLES[i % 2].json()).collect();
        format!("{{\"events\":[{}]}}", events.join(","))
    }

    fn validate_all(bodies: Vec<PublishEvent>, now: OffsetDateTime) -> Vec<Event> {
        bodies
            .into_iter()
            .map(|b| Event::validate(b, now).expect("valid"))
            .collect()
    }

    /// Straight into typed bodies, then all validated.
    #[divan::bench]
    fn decode_validate(bencher: Bencher) {
        let json = body();
        let now = now();
        bencher.counter(ItemsCount::new(100usize)).bench(|| {
            let batch: Batch = serde_json::from_slice(divan::black_box(json.as_bytes())).unwrap();
            validate_all(batch.events, now)
        });
    }

    /// Through a `serde_json::Value` first, then each item converted, as the server's
    /// `POST /api/events` handler does; the difference to `decode_validate` is that detour's cost.
    #[divan::bench]
    fn decode_validate_via_value(bencher: Bencher) {
        let json = body();
        let now = now();
        bencher.counter(ItemsCount::new(100usize)).bench(|| {
            let value: Value = serde_json::from_slice(divan::black_box(json.as_bytes())).unwrap();
            let Value::Object(mut top) = value else {
                unreachable!("the batch is an object")
            };
            let Some(Value::Array(items)) = top.remove("events") else {
                unreachable!("the batch has events")
            };
            let bodies = items
                .into_iter()
                .map(|item| serde_json::from_value::<PublishEvent>(item).unwrap())
                .collect();
            validate_all(bodies, now)
        });
    }
}

mod delivery {
    use super::*;

    const EVENT_ID: &str = "evt_01KB0Z3T6W9Q2M4N8P5R7S1V3X";
    const EPOCH: &str = "e_3f9a1c07b2d4";
    const OFFSET: u64 = 48_213;

    /// The validated payload serialized once per event (as the publish path does before
    /// handing the event to the broker).
    #[divan::bench(args = SAMPLES)]
    fn payload_json(bencher: Bencher, sample: Sample) {
        let payload = Value::Object(sample.event().payload);
        bencher
            .counter(BytesCount::of_str(&payload.to_string()))
            .bench(|| divan::black_box(&payload).to_string());
    }

    /// One delivery frame: the bytes every subscriber of one channel is sent.
    #[divan::bench(args = SAMPLES)]
    fn write_frame(bencher: Bencher, sample: Sample) {
        let event = sample.event();
        let payload_json = Value::Object(event.payload).to_string();
        let channel = &event.channels[0];
        let frame = write_delivery(
            event.event_type,
            channel,
            EVENT_ID,
            OFFSET,
            EPOCH,
            &payload_json,
        );
        assert!(serde_json::from_str::<cortex_protocol::Delivery>(&frame).is_ok());
        bencher.counter(BytesCount::of_str(&frame)).bench(|| {
            write_delivery(
                event.event_type,
                divan::black_box(channel),
                EVENT_ID,
                OFFSET,
                EPOCH,
                divan::black_box(&payload_json),
            )
        });
    }

    /// A whole event's frames: the payload serialized once, one frame per channel (2 channels
    /// for `task.status_changed`, 3 derived ones for `chat.message`).
    #[divan::bench(args = SAMPLES)]
    fn per_event(bencher: Bencher, sample: Sample) {
        let event = sample.event();
        bencher
            .counter(ItemsCount::new(event.channels.len()))
            .with_inputs(|| event.clone())
            .bench_values(|event| {
                let payload_json = Value::Object(event.payload).to_string();
                event
                    .channels
                    .iter()
                    .map(|c| {
                        write_delivery(event.event_type, c, EVENT_ID, OFFSET, EPOCH, &payload_json)
                    })
                    .collect::<Vec<_>>()
            });
    }
}

mod channel_id {
    use super::*;

    /// A channel id to parse, shown by a short name.
    struct Case {
        name: &'static str,
        id: String,
    }

    impl fmt::Display for Case {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.name)
        }
    }

    fn cases() -> [Case; 4] {
        let case = |name, id: &str| Case {
            name,
            id: id.to_owned(),
        };
        [
            case("task:t_48213", "task:t_48213"),
            case("project:p_4", "project:p_4"),
            case("agent:builder-7", "agent:builder-7"),
            Case {
                name: "swarm:<128 chars>",
                id: format!("swarm:{}", "s".repeat(128)),
            },
        ]
    }

    /// [`ChannelId::parse`] of a valid id (checks the grammar, copies into an `Arc<str>`).
    #[divan::bench(args = cases())]
    fn parse(case: &Case) -> ChannelId {
        ChannelId::parse(divan::black_box(&case.id)).expect("valid")
    }
}
