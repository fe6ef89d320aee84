//! Micro-benchmarks of the hub's local fan-out, so a regression shows without a load run.
//!
//! Every subscriber has its own bounded [`Outbox`] sized as the default [`Limits`]; each
//! iteration pushes one pre-serialized delivery frame (shared bytes, cloned per subscriber) with
//! [`Hub::fan_out`]. The outboxes are drained before each sample, outside the timed part, and a
//! sample is [`SAMPLE_SIZE`] iterations, well below the outbox bound, so no push ever overflows.
//! No task waits on the outboxes, so the cost of waking a connection's task is not included.
//!
//! - `one_channel`: one event to 1, 50, 1,000 and 10,000 subscribers of one channel.
//! - `one_channel_seen`: the same with the `seen` set the publish path passes for an event on
//!   several channels (each connection counted once), built afresh per event as there.
//! - `one_to_one`: one event to each of 1,000 and 10,000 channels that have one subscriber each
//!   (per-user or per-agent channels): a shard lock and a lookup per delivery.
//!
//! Run with `cargo bench -p cortex-realtime --bench fanout`; `cargo test -p cortex-realtime
//! --bench fanout` runs each benchmark once as a smoke test.

use std::sync::Arc;

use cortex_realtime::Limits;
use cortex_realtime::internals::{
    Batch, ChannelKey, ConnId, Hub, Outbox, Queue, Subscriber, Tally,
};
use cortex_realtime::protocol::event::write_delivery;
use cortex_realtime::protocol::{ChannelId, EventType};
use divan::Bencher;
use divan::counter::ItemsCount;
use tokio_tungstenite::tungstenite::Utf8Bytes;

fn main() {
    divan::main();
}

/// Iterations per sample: each outbox holds at most this many frames between drains.
const SAMPLE_SIZE: u32 = 64;

/// Subscriber counts of one channel.
const SUBSCRIBERS: [usize; 4] = [1, 50, 1_000, 10_000];

/// Channel counts for 1:1 fan-out.
const CHANNELS: [usize; 2] = [1_000, 10_000];

/// A typical `task.status_changed` payload, as serialized once per event.
const PAYLOAD: &str = r#"{"taskId":"t_48213","projectId":"p_4","oldStatus":"todo","newStatus":"in_progress","timestamp":"2026-11-25T20:40:16.123Z"}"#;

/// The frame delivered on `channel` (267 bytes on `project:p_4`).
fn frame(channel: &ChannelId) -> Utf8Bytes {
    Utf8Bytes::from(write_delivery(
        EventType::TaskStatusChanged,
        channel,
        "evt_01KB0Z3T6W9Q2M4N8P5R7S1V3X",
        48_213,
        "e_3f9a1c07b2d4",
        PAYLOAD,
    ))
}

fn key(channel: &str) -> ChannelKey {
    ChannelKey::new(
        Arc::from("org_acme"),
        ChannelId::parse(channel).expect("valid channel"),
    )
}

/// A hub, the outboxes of its subscribers, and what is published.
struct Fixture {
    hub: Hub,
    outboxes: Vec<Outbox>,
    /// The channels published to, each with its frame.
    targets: Vec<(ChannelKey, Utf8Bytes)>,
}

impl Fixture {
    /// `subscribers` connections on one channel.
    fn one_channel(subscribers: usize) -> Fixture {
        let mut f = Fixture::empty();
        let key = key("project:p_4");
        for conn in 0..subscribers {
            f.subscribe(&key, conn as ConnId);
        }
        f.targets.push((key.clone(), frame(&key.channel)));
        f
    }

    /// `channels` channels with one connection each.
    fn one_to_one(channels: usize) -> Fixture {
        let mut f = Fixture::empty();
        for conn in 0..channels {
            let key = key(&format!("agent:a_{conn}"));
            f.subscribe(&key, conn as ConnId);
            let msg = frame(&key.channel);
            f.targets.push((key, msg));
        }
        f
    }

    fn empty() -> Fixture {
        Fixture {
            hub: Hub::new(),
            outboxes: Vec::new(),
            targets: Vec::new(),
        }
    }

    fn subscribe(&mut self, key: &ChannelKey, conn: ConnId) {
        let limits = Limits::default();
        let outbox = Outbox::new(limits.outbox_bytes, limits.outbox_events);
        let added = self.hub.subscribe(
            key,
            Subscriber {
                conn,
                outbox: outbox.clone(),
            },
        );
        assert!(added);
        self.outboxes.push(outbox);
    }

    /// Empties every outbox if the last sample filled them. Every iteration reaches every
    /// outbox, so the first one being empty means all are. Panics on an overflow, which would
    /// mean the benchmark timed refused pushes.
    fn drain(&self) {
        let mut out = Queue::new();
        if self.outboxes[0].try_batch(&mut out).is_none() {
            return;
        }
        for outbox in &self.outboxes[1..] {
            out.clear();
            let batch = outbox.try_batch(&mut out);
            assert_ne!(batch, Some(Batch::Overflowed), "an outbox overflowed");
        }
        assert!(
            !self.outboxes[0].overflowed(),
            "an outbox overflowed: raise the bound or lower SAMPLE_SIZE"
        );
    }

    /// Publishes one frame to every target, counting each connection once per event when
    /// `per_event` (an event on several channels); returns how many outboxes took it.
    fn publish(&self, per_event: bool) -> usize {
        let tally = Tally::new(if per_event {
            self.targets.len().max(2)
        } else {
            1
        });
        self.targets
            .iter()
            .map(|(key, msg)| self.hub.fan_out(key, || msg.clone(), &tally))
            .sum()
    }

    /// Times `publish` with the outboxes drained between samples.
    fn bench(&self, bencher: Bencher, deliveries: usize, with_seen: bool) {
        assert_eq!(
            self.publish(false),
            deliveries,
            "every subscriber is reached"
        );
        bencher
            .counter(ItemsCount::new(deliveries))
            .with_inputs(|| self.drain())
            .bench_local_values(|()| self.publish(with_seen));
    }
}

/// One shared frame to every subscriber of one channel.
#[divan::bench(args = SUBSCRIBERS, sample_size = SAMPLE_SIZE)]
fn one_channel(bencher: Bencher, subscribers: usize) {
    Fixture::one_channel(subscribers).bench(bencher, subscribers, false);
}

/// As `one_channel`, with the `seen` set of a multi-channel event.
#[divan::bench(args = SUBSCRIBERS, sample_size = SAMPLE_SIZE)]
fn one_channel_seen(bencher: Bencher, subscribers: usize) {
    Fixture::one_channel(subscribers).bench(bencher, subscribers, true);
}

/// One frame to each of `channels` channels of one subscriber each.
#[divan::bench(args = CHANNELS, sample_size = SAMPLE_SIZE)]
fn one_to_one(bencher: Bencher, channels: usize) {
    Fixture::one_to_one(channels).bench(bencher, channels, false);
}
