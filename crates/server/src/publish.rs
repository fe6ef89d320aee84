//! The publish service: the one road for events, taken by the HTTP API, the publishers' lean
//! path and in-process publishing alike.
//!
//! [`Node::publish`] validates every event (all of them or none), gives each an id, serializes
//! each payload once, and hands the batch to [`Broker::publish`](crate::broker::Broker::publish)
//! with each event's idempotency key (the broker de-duplicates, across nodes when it spans
//! them). It knows nothing of HTTP: its error is [`PublishError`], which the HTTP layer maps to
//! answers.

use std::sync::Arc;

use cortex_protocol::event::MAX_BATCH;
use cortex_protocol::{Event, EventError, PublishEvent};
use serde::Serialize;
use time::OffsetDateTime;

use crate::broker::{BrokerError, EventBody, Outcome, PreparedEvent};
use crate::hub::Tally;
use crate::node::Node;
use crate::{id, metrics};

/// The answer for one accepted event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Accepted {
    /// The event's id.
    pub id: String,
    /// The channels it was routed to.
    pub channels: Vec<String>,
    /// Connections of this node it was delivered to.
    pub recipients: usize,
    /// Set when the `idempotencyKey` was seen before: nothing was delivered this time.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

/// Why a publish was refused. Nothing of the batch was delivered.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// More than 100 events in a batch.
    #[error("a batch holds at most {MAX_BATCH} events")]
    BatchTooLarge,
    /// An event failed validation; `index` is its place in a batch.
    #[error("{}{source}", index.map(|i| format!("event {i}: ")).unwrap_or_default())]
    Invalid {
        /// The event's index in a batch.
        index: Option<usize>,
        /// What is wrong with it.
        source: EventError,
    },
    /// The backplane is unreachable, or the node is draining: retry later.
    #[error("the node cannot deliver now (backplane unavailable or draining); retry later")]
    Unavailable,
}

impl From<BrokerError> for PublishError {
    fn from(e: BrokerError) -> Self {
        match e {
            BrokerError::Unavailable => PublishError::Unavailable,
        }
    }
}

impl Node {
    /// Publishes events in-process: the same validation, idempotency and routing as
    /// `POST /api/events`, all of them or none.
    pub async fn publish(&self, bodies: Vec<PublishEvent>) -> Result<Vec<Accepted>, PublishError> {
        if bodies.len() > MAX_BATCH {
            return Err(PublishError::BatchTooLarge);
        }
        let Some(_in_flight) = self.begin_publish() else {
            return Err(PublishError::Unavailable);
        };
        // Not `broker.ready()`: a Cluster with one master gone still takes the other shards'
        // orgs; the broker answers Unavailable for what it cannot take.
        let batch = bodies.len() > 1;
        let now = OffsetDateTime::now_utc();
        let mut prepared = Vec::with_capacity(bodies.len());
        for (i, body) in bodies.into_iter().enumerate() {
            let ev = Event::validate(body, now).map_err(|source| PublishError::Invalid {
                index: batch.then_some(i),
                source,
            })?;
            prepared.push(PreparedEvent {
                org: Arc::from(ev.org_id.as_str()),
                body: Arc::new(EventBody {
                    id: id::event_id(),
                    event_type: ev.event_type,
                    // Straight into a buffer (`Display` would go through the formatting
                    // machinery).
                    payload_json: serde_json::to_string(&ev.payload)
                        .expect("a JSON map serializes"),
                    tally: Tally::new(ev.channels.len()),
                }),
                channels: ev.channels,
                idempotency_key: ev.idempotency_key,
            });
        }
        let started = std::time::Instant::now();
        let outcomes = self.broker.publish(&prepared).await?;
        metrics::publish_fanout(started.elapsed());
        let mut fresh = 0;
        let answers = prepared
            .into_iter()
            .zip(outcomes)
            .map(|(ev, outcome)| match outcome {
                Outcome::Published(_) => {
                    fresh += 1;
                    self.activity
                        .published(&ev.org, &ev.channels, now.unix_timestamp());
                    metrics::published(ev.body.event_type);
                    Accepted {
                        recipients: ev.body.tally.delivered(),
                        channels: ev.channels.iter().map(|c| c.to_string()).collect(),
                        id: ev.body.id.clone(),
                        duplicate: false,
                    }
                }
                Outcome::Duplicate(first) => Accepted {
                    id: first.id,
                    channels: first.channels,
                    recipients: 0,
                    duplicate: true,
                },
            })
            .collect();
        Ok(answers)
    }
}
