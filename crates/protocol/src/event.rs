//! The event catalogue (CONTRACT.md section 5), publish bodies (section 7) and the delivered form.
//!
//! A publish body is checked once, at the edge, into an [`Event`]: its type is known, its payload
//! has every required field with the right JSON type, its timestamp is filled in, and its channels
//! are parsed [`ChannelId`]s. Nothing downstream re-validates.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::channel::{ChannelId, ChannelKind, is_valid_id};

/// Most channels one event may name (explicit or derived).
pub const MAX_CHANNELS_PER_EVENT: usize = 16;
/// Most events in one publish batch.
pub const MAX_BATCH: usize = 100;
/// Longest `idempotencyKey`, in bytes.
pub const MAX_IDEMPOTENCY_KEY: usize = 256;
/// The values an `agent.status` event's `status` may take ([`FieldKind::AgentStatus`]).
pub const AGENT_STATUSES: [&str; 2] = ["error", "blocked"];
/// The lowest and highest `progress` ([`FieldKind::Progress`]), inclusive.
pub const PROGRESS_BOUNDS: (f64, f64) = (0.0, 100.0);

/// The sixteen event types.
#[allow(missing_docs)] // each variant is its wire name, see `as_str`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    AgentSpawned,
    AgentCompleted,
    AgentFailed,
    AgentStatus,
    TaskCreated,
    TaskStatusChanged,
    TaskUpdated,
    TaskDeleted,
    ChiefPlanCreated,
    ChiefTaskAssigned,
    ChiefTaskProgress,
    SwarmPhaseStarted,
    SwarmPhaseCompleted,
    GatePassed,
    GateFailed,
    ChatMessage,
}

/// What a required payload field must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// A JSON string (ids, names, statuses, text).
    Str,
    /// A JSON number.
    Number,
    /// A JSON object.
    Object,
    /// A JSON array.
    Array,
    /// Any JSON value but `null`.
    Any,
    /// An RFC 3339 string; filled in by the server when absent.
    Timestamp,
    /// A number in 0..=100.
    Progress,
    /// `"error"` or `"blocked"`.
    AgentStatus,
}

use FieldKind::*;

impl EventType {
    /// Every type, in catalogue order.
    pub const ALL: [EventType; 16] = [
        EventType::AgentSpawned,
        EventType::AgentCompleted,
        EventType::AgentFailed,
        EventType::AgentStatus,
        EventType::TaskCreated,
        EventType::TaskStatusChanged,
        EventType::TaskUpdated,
        EventType::TaskDeleted,
        EventType::ChiefPlanCreated,
        EventType::ChiefTaskAssigned,
        EventType::ChiefTaskProgress,
        EventType::SwarmPhaseStarted,
        EventType::SwarmPhaseCompleted,
        EventType::GatePassed,
        EventType::GateFailed,
        EventType::ChatMessage,
    ];

    /// The wire name (`task.status_changed`).
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::AgentSpawned => "agent.spawned",
            EventType::AgentCompleted => "agent.completed",
            EventType::AgentFailed => "agent.failed",
            EventType::AgentStatus => "agent.status",
            EventType::TaskCreated => "task.created",
            EventType::TaskStatusChanged => "task.status_changed",
            EventType::TaskUpdated => "task.updated",
            EventType::TaskDeleted => "task.deleted",
            EventType::ChiefPlanCreated => "chief.plan.created",
            EventType::ChiefTaskAssigned => "chief.task.assigned",
            EventType::ChiefTaskProgress => "chief.task.progress",
            EventType::SwarmPhaseStarted => "swarm.phase.started",
            EventType::SwarmPhaseCompleted => "swarm.phase.completed",
            EventType::GatePassed => "gate.passed",
            EventType::GateFailed => "gate.failed",
            EventType::ChatMessage => "chat.message",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The payload fields this type requires, with what each must hold.
    pub fn required(self) -> &'static [(&'static str, FieldKind)] {
        match self {
            EventType::AgentSpawned => &[
                ("agentId", Str),
                ("agentName", Str),
                ("taskId", Str),
                ("timestamp", Timestamp),
            ],
            EventType::AgentCompleted => &[
                ("agentId", Str),
                ("agentName", Str),
                ("taskId", Str),
                ("result", Any),
                ("duration", Number),
                ("timestamp", Timestamp),
            ],
            EventType::AgentFailed => &[
                ("agentId", Str),
                ("agentName", Str),
                ("taskId", Str),
                ("error", Str),
                ("timestamp", Timestamp),
            ],
            EventType::AgentStatus => &[
                ("agentId", Str),
                ("agentName", Str),
                ("status", AgentStatus),
                ("message", Str),
                ("timestamp", Timestamp),
            ],
            EventType::TaskCreated => &[
                ("taskId", Str),
                ("title", Str),
                ("projectId", Str),
                ("timestamp", Timestamp),
            ],
            EventType::TaskStatusChanged => &[
                ("taskId", Str),
                ("oldStatus", Str),
                ("newStatus", Str),
                ("timestamp", Timestamp),
            ],
            EventType::TaskUpdated => &[
                ("taskId", Str),
                ("changes", Object),
                ("timestamp", Timestamp),
            ],
            EventType::TaskDeleted => &[("taskId", Str), ("timestamp", Timestamp)],
            EventType::ChiefPlanCreated => {
                &[("planId", Str), ("tasks", Array), ("timestamp", Timestamp)]
            }
            EventType::ChiefTaskAssigned => &[
                ("taskId", Str),
                ("agentName", Str),
                ("timestamp", Timestamp),
            ],
            EventType::ChiefTaskProgress => &[
                ("taskId", Str),
                ("progress", Progress),
                ("message", Str),
                ("timestamp", Timestamp),
            ],
            EventType::SwarmPhaseStarted => {
                &[("swarmId", Str), ("phase", Str), ("timestamp", Timestamp)]
            }
            EventType::SwarmPhaseCompleted => &[
                ("swarmId", Str),
                ("phase", Str),
                ("results", Any),
                ("timestamp", Timestamp),
            ],
            EventType::GatePassed => &[("taskId", Str), ("gate", Str), ("timestamp", Timestamp)],
            EventType::GateFailed => &[
                ("taskId", Str),
                ("gate", Str),
                ("reason", Str),
                ("timestamp", Timestamp),
            ],
            EventType::ChatMessage => &[
                ("messageId", Str),
                ("agentId", Str),
                ("content", Str),
                ("timestamp", Timestamp),
            ],
        }
    }
}

/// One event as a publisher sends it to `POST /api/events`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PublishEvent {
    /// The tenant the event belongs to.
    pub org_id: String,
    /// The event type's wire name.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The payload object.
    pub payload: Value,
    /// Exactly these channels; derived from the payload when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
    /// The same key within 5 minutes is not delivered twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// Why a publish body was refused (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// `type` is not one of the sixteen.
    #[error("unknown event type")]
    UnknownType,
    /// `orgId` is not a valid id.
    #[error("orgId must match [A-Za-z0-9][A-Za-z0-9._-]{{0,127}}")]
    InvalidOrg,
    /// `payload` is not a JSON object.
    #[error("payload must be a JSON object")]
    PayloadNotObject,
    /// A required field is absent or `null`.
    #[error("payload field `{0}` is required")]
    MissingField(&'static str),
    /// A field has the wrong JSON type or value.
    #[error("payload field `{field}` {expected}")]
    BadField {
        /// The field.
        field: &'static str,
        /// What it must be.
        expected: &'static str,
    },
    /// A channel in `channels` is not a valid channel id, or is another org's `org:` channel.
    #[error("channel {index} of `channels`: {reason}")]
    InvalidChannel {
        /// Its index in `channels`.
        index: usize,
        /// Why.
        reason: String,
    },
    /// `channels` is empty, or names more than [`MAX_CHANNELS_PER_EVENT`].
    #[error("`channels` must name 1 to {MAX_CHANNELS_PER_EVENT} channels")]
    ChannelCount,
    /// `idempotencyKey` is empty or too long.
    #[error("idempotencyKey must be 1 to {MAX_IDEMPOTENCY_KEY} bytes")]
    BadIdempotencyKey,
}

impl EventError {
    /// The machine-readable `error` of the 400 body.
    pub fn code(&self) -> &'static str {
        match self {
            EventError::UnknownType => "unknown_type",
            EventError::InvalidOrg => "invalid_org",
            EventError::PayloadNotObject
            | EventError::MissingField(_)
            | EventError::BadField { .. } => "invalid_payload",
            EventError::InvalidChannel { .. } | EventError::ChannelCount => "invalid_channel",
            EventError::BadIdempotencyKey => "invalid_idempotency_key",
        }
    }
}

/// A validated event, ready to route.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The tenant.
    pub org_id: String,
    /// The type.
    pub event_type: EventType,
    /// The payload, with `timestamp` filled in.
    pub payload: Map<String, Value>,
    /// Where it goes (deduplicated, in the order given or derived).
    pub channels: Vec<ChannelId>,
    /// The publisher's de-duplication key.
    pub idempotency_key: Option<String>,
}

impl Event {
    /// Checks a publish body at time `now` (used to fill a missing `timestamp`).
    pub fn validate(body: PublishEvent, now: OffsetDateTime) -> Result<Event, EventError> {
        let event_type = EventType::parse(&body.event_type).ok_or(EventError::UnknownType)?;
        if !is_valid_id(&body.org_id) {
            return Err(EventError::InvalidOrg);
        }
        if let Some(k) = &body.idempotency_key
            && (k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY)
        {
            return Err(EventError::BadIdempotencyKey);
        }
        let Value::Object(mut payload) = body.payload else {
            return Err(EventError::PayloadNotObject);
        };
        check_payload(event_type, &mut payload, now)?;
        let channels = match body.channels {
            Some(given) => explicit_channels(&body.org_id, &given)?,
            None => derive_channels(&body.org_id, &payload),
        };
        Ok(Event {
            org_id: body.org_id,
            event_type,
            payload,
            channels,
            idempotency_key: body.idempotency_key,
        })
    }
}

fn check_payload(
    ty: EventType,
    payload: &mut Map<String, Value>,
    now: OffsetDateTime,
) -> Result<(), EventError> {
    for &(field, kind) in ty.required() {
        let Some(value) = payload.get(field) else {
            if kind == Timestamp {
                payload.insert(field.to_owned(), Value::String(rfc3339_millis(now)));
                continue;
            }
            return Err(EventError::MissingField(field));
        };
        if value.is_null() {
            return Err(EventError::MissingField(field));
        }
        let bad = |expected| Err(EventError::BadField { field, expected });
        match kind {
            Str if !value.is_string() => return bad("must be a string"),
            Number if !value.is_number() => return bad("must be a number"),
            Object if !value.is_object() => return bad("must be an object"),
            Array if !value.is_array() => return bad("must be an array"),
            Timestamp => match value.as_str() {
                Some(s) if is_rfc3339(s) => {}
                _ => return bad("must be an RFC 3339 timestamp"),
            },
            Progress => match value.as_f64() {
                Some(p) if (PROGRESS_BOUNDS.0..=PROGRESS_BOUNDS.1).contains(&p) => {}
                _ => return bad("must be a number from 0 to 100"),
            },
            AgentStatus => match value.as_str() {
                Some(s) if AGENT_STATUSES.contains(&s) => {}
                _ => return bad("must be \"error\" or \"blocked\""),
            },
            _ => {}
        }
    }
    Ok(())
}

fn explicit_channels(org_id: &str, given: &[String]) -> Result<Vec<ChannelId>, EventError> {
    if given.is_empty() || given.len() > MAX_CHANNELS_PER_EVENT {
        return Err(EventError::ChannelCount);
    }
    let mut out: Vec<ChannelId> = Vec::with_capacity(given.len());
    for (index, raw) in given.iter().enumerate() {
        let c = ChannelId::parse(raw).map_err(|e| EventError::InvalidChannel {
            index,
            reason: e.to_string(),
        })?;
        if c.kind() == ChannelKind::Org && c.id() != org_id {
            return Err(EventError::InvalidChannel {
                index,
                reason: "an org: channel must name the event's own orgId".into(),
            });
        }
        if !out.contains(&c) {
            out.push(c);
        }
    }
    Ok(out)
}

/// Channels derived from the payload: `agentName` → `agent:`, `taskId` → `task:`, `swarmId` →
/// `swarm:`, `projectId` → `project:`, and always `org:<orgId>`. A value that is not a valid channel
/// id part (an agent name with a space, say) is skipped: no client could subscribe to it.
pub fn derive_channels(org_id: &str, payload: &Map<String, Value>) -> Vec<ChannelId> {
    let mut out = Vec::with_capacity(5);
    for (field, kind) in [
        ("agentName", ChannelKind::Agent),
        ("taskId", ChannelKind::Task),
        ("swarmId", ChannelKind::Swarm),
        ("projectId", ChannelKind::Project),
    ] {
        if let Some(Value::String(id)) = payload.get(field)
            && let Ok(c) = ChannelId::new(kind, id)
        {
            out.push(c);
        }
    }
    out.push(ChannelId::new(ChannelKind::Org, org_id).expect("org id was validated"));
    out
}

/// Whether `s` is an RFC 3339 date-time. The `time` crate's parser lets any character separate
/// date and time; RFC 3339 allows only `T` (or `t`).
pub fn is_rfc3339(s: &str) -> bool {
    matches!(s.as_bytes().get(10), Some(b'T' | b't')) && OffsetDateTime::parse(s, &Rfc3339).is_ok()
}

/// `2026-11-25T20:40:16.123Z`: UTC, millisecond precision.
pub fn rfc3339_millis(t: OffsetDateTime) -> String {
    use std::fmt::Write as _;
    let t = t.to_offset(time::UtcOffset::UTC);
    // Written into one buffer of the final size (`format!` grows its own, several times).
    let mut s = String::with_capacity(24);
    let _ = write!(
        s,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    );
    s
}

/// `2026-11-25T21:40:16Z` for a unix time in seconds (used for `expiresAt`).
/// Times outside years 0000..=9999 are clamped to those bounds.
pub fn rfc3339_secs(unix: i64) -> String {
    const MIN: i64 = -62_167_219_200; // 0000-01-01T00:00:00Z
    const MAX: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    match OffsetDateTime::from_unix_timestamp(unix.clamp(MIN, MAX)) {
        Ok(t) => {
            let s = rfc3339_millis(t);
            format!("{}Z", &s[..19])
        }
        Err(_) => "9999-12-31T23:59:59Z".into(),
    }
}

/// Writes an event as delivered on one channel. `payload_json` is the payload serialized once
/// per event; `channel`, `id` and `epoch` are ASCII from validated grammars, so no escaping is
/// needed for them.
pub fn write_delivery(
    event_type: EventType,
    channel: &ChannelId,
    id: &str,
    offset: u64,
    epoch: &str,
    payload_json: &str,
) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(80 + channel.as_str().len() + payload_json.len());
    s.push_str("{\"type\":\"");
    s.push_str(event_type.as_str());
    s.push_str("\",\"channelId\":\"");
    s.push_str(channel.as_str());
    s.push_str("\",\"id\":\"");
    s.push_str(id);
    s.push_str("\",\"offset\":");
    let _ = write!(s, "{offset}");
    s.push_str(",\"epoch\":\"");
    s.push_str(epoch);
    s.push_str("\",\"payload\":");
    s.push_str(payload_json);
    s.push('}');
    s
}

/// An event as a client receives it (for clients and tests; the server writes it with
/// [`write_delivery`]).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// The event type's wire name.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The channel it arrived on.
    pub channel_id: String,
    /// The event's id, the same on every channel.
    pub id: String,
    /// Its offset on this channel.
    pub offset: u64,
    /// The channel's epoch.
    pub epoch: String,
    /// The payload.
    pub payload: Value,
}
