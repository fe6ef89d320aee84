//! Key and pub/sub channel names. Every name of an org carries the org as its hash tag
//! (`{org}`), so one org lives on one Redis Cluster slot, a publish updates all of an event's
//! channels atomically in one script, and orgs spread over a Cluster's shards. Names only: this
//! module never talks to Redis.

use crate::hub::ChannelKey;

/// The pseudo-org of the nodes' control channel (`PREFIX:{~control}:events`: heartbeats and
/// disconnects of the admin module). `~` is never in an org id, so no org's names meet it.
pub(crate) const CONTROL: &str = "~control";

/// The Redis Cluster slot of everything of `org` (its names' hash tag is the org).
pub(crate) fn slot(org: &str) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(org.as_bytes()) % 16384
}

/// The names of one deployment (its prefix).
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    /// Names under `prefix`.
    pub(crate) fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    /// The org's pub/sub channel: every event of the org, published once.
    pub(crate) fn events(&self, org: &str) -> String {
        format!("{}:{{{org}}}:events", self.prefix)
    }

    /// The org a pub/sub channel name belongs to (the inverse of [`Keys::events`]).
    pub(crate) fn org_of<'a>(&self, events: &'a str) -> Option<&'a str> {
        events
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":{")?
            .strip_suffix("}:events")
    }

    /// A channel's epoch, offset and history stream.
    pub(crate) fn channel(&self, key: &ChannelKey) -> [String; 3] {
        let (p, org, ch) = (&self.prefix, &key.org, key.channel.as_str());
        [
            format!("{p}:{{{org}}}:epoch:{ch}"),
            format!("{p}:{{{org}}}:offset:{ch}"),
            format!("{p}:{{{org}}}:history:{ch}"),
        ]
    }

    /// The connection leases of a user (`sub`) of an org.
    pub(crate) fn leases(&self, org: &str, sub: &str) -> String {
        format!("{}:{{{org}}}:conns:{sub}", self.prefix)
    }

    /// An idempotency key of an org.
    pub(crate) fn idempotency(&self, org: &str, key: &str) -> String {
        format!("{}:{{{org}}}:idem:{key}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cortex_protocol::ChannelId;
    use std::sync::Arc;

    #[test]
    fn every_name_of_an_org_carries_its_hash_tag() {
        let k = Keys::new("cortex");
        let key = ChannelKey::new(Arc::from("o_1"), ChannelId::parse("task:t_9").unwrap());
        let names = k.channel(&key);
        assert_eq!(names[0], "cortex:{o_1}:epoch:task:t_9");
        for n in names.iter().chain([
            &k.events("o_1"),
            &k.idempotency("o_1", "k"),
            &k.leases("o_1", "u_1"),
        ]) {
            assert!(n.contains("{o_1}"), "{n}");
        }
        assert_eq!(k.org_of(&k.events("o_1")), Some("o_1"));
        assert_eq!(k.org_of("other:{o_1}:events"), None);
    }

    #[test]
    fn slots_are_the_cluster_key_slots_of_the_hash_tag() {
        // Values of CLUSTER KEYSLOT (Redis 7.0): "foo" and "{foo}:anything" share one slot.
        assert_eq!(slot("foo"), 12182);
        // CRC16/XMODEM of "123456789" is 0x31c3, below 16384.
        assert_eq!(slot("123456789"), 0x31c3);
    }
}
