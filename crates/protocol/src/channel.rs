//! Channel ids: `<kind>:<id>`, parsed once at the edge and never re-validated.
//!
//! Grammar (CONTRACT.md section 5): kind is one of `agent`, `swarm`, `project`, `org`, `task`;
//! id matches `[A-Za-z0-9][A-Za-z0-9._-]{0,127}`.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest id part of a channel id, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// The kind of a channel: what sort of thing its events are about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChannelKind {
    /// `agent:<name>`: one agent's lifecycle.
    Agent,
    /// `swarm:<id>`: a swarm's phases.
    Swarm,
    /// `project:<id>`: everything in a project.
    Project,
    /// `org:<id>`: everything in an organisation; only the token's own org may be subscribed.
    Org,
    /// `task:<id>`: one task.
    Task,
}

impl ChannelKind {
    /// Every kind, in a fixed order.
    pub const ALL: [ChannelKind; 5] = [
        ChannelKind::Agent,
        ChannelKind::Swarm,
        ChannelKind::Project,
        ChannelKind::Org,
        ChannelKind::Task,
    ];

    /// The kind's name as written in a channel id.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Agent => "agent",
            ChannelKind::Swarm => "swarm",
            ChannelKind::Project => "project",
            ChannelKind::Org => "org",
            ChannelKind::Task => "task",
        }
    }

    /// Parses a kind name; `None` for anything but the five kinds.
    pub fn parse(s: &str) -> Option<ChannelKind> {
        Some(match s {
            "agent" => ChannelKind::Agent,
            "swarm" => ChannelKind::Swarm,
            "project" => ChannelKind::Project,
            "org" => ChannelKind::Org,
            "task" => ChannelKind::Task,
            _ => return None,
        })
    }
}

/// Why a string is not a channel id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// No `:` separates kind and id.
    #[error("a channel id is <kind>:<id>")]
    MissingSeparator,
    /// The kind is not one of the five.
    #[error("unknown channel kind (expected agent, swarm, project, org or task)")]
    UnknownKind,
    /// The id part breaks `[A-Za-z0-9][A-Za-z0-9._-]{0,127}`.
    #[error("channel id must match [A-Za-z0-9][A-Za-z0-9._-]{{0,127}}")]
    BadId,
}

/// Whether `s` is a valid id part (`[A-Za-z0-9][A-Za-z0-9._-]{0,127}`).
pub fn is_valid_id(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_ID_LEN
        && b[0].is_ascii_alphanumeric()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// A valid channel id. Cheap to clone (the text is shared).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId {
    kind: ChannelKind,
    /// The whole id, `kind:id`.
    full: Arc<str>,
}

impl ChannelId {
    /// Parses `<kind>:<id>`.
    pub fn parse(s: &str) -> Result<ChannelId, ChannelError> {
        let (kind, id) = s.split_once(':').ok_or(ChannelError::MissingSeparator)?;
        let kind = ChannelKind::parse(kind).ok_or(ChannelError::UnknownKind)?;
        if !is_valid_id(id) {
            return Err(ChannelError::BadId);
        }
        Ok(ChannelId {
            kind,
            full: Arc::from(s),
        })
    }

    /// Builds a channel id from a kind and an id part, validating the id.
    pub fn new(kind: ChannelKind, id: &str) -> Result<ChannelId, ChannelError> {
        if !is_valid_id(id) {
            return Err(ChannelError::BadId);
        }
        Ok(ChannelId {
            kind,
            full: Arc::from(format!("{}:{}", kind.as_str(), id)),
        })
    }

    /// The channel's kind.
    pub fn kind(&self) -> ChannelKind {
        self.kind
    }

    /// The id part, after the `:`.
    pub fn id(&self) -> &str {
        &self.full[self.kind.as_str().len() + 1..]
    }

    /// The whole channel id, `kind:id`.
    pub fn as_str(&self) -> &str {
        &self.full
    }
}

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl fmt::Debug for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChannelId({})", self.full)
    }
}

impl std::str::FromStr for ChannelId {
    type Err = ChannelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ChannelId::parse(s)
    }
}

impl Serialize for ChannelId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.full)
    }
}

impl<'de> Deserialize<'de> for ChannelId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        ChannelId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An entry of a token's `channels` allowlist: an exact channel id or `kind:*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelPattern {
    /// Exactly this channel.
    Exact(ChannelId),
    /// Every channel of this kind (`agent:*`).
    Kind(ChannelKind),
}

impl ChannelPattern {
    /// Parses `kind:*` or an exact channel id.
    pub fn parse(s: &str) -> Result<ChannelPattern, ChannelError> {
        match s.split_once(':') {
            Some((kind, "*")) => ChannelKind::parse(kind)
                .map(ChannelPattern::Kind)
                .ok_or(ChannelError::UnknownKind),
            _ => ChannelId::parse(s).map(ChannelPattern::Exact),
        }
    }

    /// Whether the pattern allows `channel`.
    pub fn matches(&self, channel: &ChannelId) -> bool {
        match self {
            ChannelPattern::Exact(c) => c == channel,
            ChannelPattern::Kind(k) => *k == channel.kind(),
        }
    }
}

impl fmt::Display for ChannelPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelPattern::Exact(c) => f.write_str(c.as_str()),
            ChannelPattern::Kind(k) => write!(f, "{}:*", k.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind_and_keeps_the_text() {
        for kind in ChannelKind::ALL {
            let s = format!("{}:a-b_c.9", kind.as_str());
            let c = ChannelId::parse(&s).unwrap();
            assert_eq!(c.kind(), kind);
            assert_eq!(c.id(), "a-b_c.9");
            assert_eq!(c.as_str(), s);
        }
    }

    #[test]
    fn refuses_what_the_grammar_refuses() {
        for bad in [
            "",
            ":",
            "agent",
            "agent:",
            "agent:-x",
            "agent:.x",
            "agent:_x",
            "Agent:x",
            "user:x",
            "agent:a b",
            "agent:a:b",
            "agent:é",
            "agent:a/b",
            " agent:a",
            "agent:a\n",
        ] {
            assert!(ChannelId::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(ChannelId::parse(&format!("task:{}", "a".repeat(128))).is_ok());
        assert!(ChannelId::parse(&format!("task:{}", "a".repeat(129))).is_err());
    }

    #[test]
    fn patterns_match_exactly_or_by_kind() {
        let p = ChannelPattern::parse("agent:*").unwrap();
        assert!(p.matches(&ChannelId::parse("agent:x").unwrap()));
        assert!(!p.matches(&ChannelId::parse("task:x").unwrap()));
        let p = ChannelPattern::parse("project:p_4").unwrap();
        assert!(p.matches(&ChannelId::parse("project:p_4").unwrap()));
        assert!(!p.matches(&ChannelId::parse("project:p_5").unwrap()));
        assert!(ChannelPattern::parse("*:*").is_err());
        assert!(ChannelPattern::parse("agent:a*").is_err());
    }
}
