//! The marker every benchmark event carries, and per-channel sequence tracking.
//!
//! A marker is plain text without quotes or backslashes (`#Bo0.17.1764115200123456789#`:
//! channel kind and index, sequence number, send time in nanoseconds since the Unix epoch), so
//! it reads the same inside a Cortex event, an nchan message body, or a JSON string that
//! socket.io escapes once more.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// The kind of a benchmark channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `org:<org>`: every connection.
    Org,
    /// `project:p<k>`: a group of connections.
    Project,
    /// `agent:a<i>`: one connection.
    Agent,
}

impl Kind {
    fn letter(self) -> char {
        match self {
            Kind::Org => 'o',
            Kind::Project => 'p',
            Kind::Agent => 'a',
        }
    }

    fn from_letter(b: u8) -> Option<Kind> {
        match b {
            b'o' => Some(Kind::Org),
            b'p' => Some(Kind::Project),
            b'a' => Some(Kind::Agent),
            _ => None,
        }
    }
}

/// One benchmark channel: its kind and index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Chan {
    /// The kind.
    pub kind: Kind,
    /// The index within the kind (always 0 for the org channel).
    pub index: u32,
}

impl Chan {
    /// The channel's name on the wire (`org:<org>`, `project:p<k>`, `agent:a<i>`).
    pub fn name(&self, org: &str) -> String {
        match self.kind {
            Kind::Org => format!("org:{org}"),
            Kind::Project => format!("project:p{}", self.index),
            Kind::Agent => format!("agent:a{}", self.index),
        }
    }
}

/// What a benchmark event says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Marker {
    /// The channel it was published on.
    pub chan: Chan,
    /// Its sequence number on that channel, from 1.
    pub seq: u64,
    /// When the publisher sent it, in nanoseconds since the Unix epoch.
    pub sent_ns: u64,
}

impl Marker {
    /// Appends the marker's text to `out`.
    pub fn write(&self, out: &mut String) {
        let _ = write!(
            out,
            "#B{}{}.{}.{}#",
            self.chan.kind.letter(),
            self.chan.index,
            self.seq,
            self.sent_ns
        );
    }

    /// Finds and parses the first marker in `text`.
    pub fn find(text: &str) -> Option<Marker> {
        let start = text.find("#B")? + 2;
        let rest = text.as_bytes().get(start..)?;
        let kind = Kind::from_letter(*rest.first()?)?;
        let mut fields = [0u64; 3];
        let mut field = 0;
        let mut digits = 0;
        for &b in &rest[1..] {
            match b {
                b'0'..=b'9' => {
                    fields[field] = fields[field]
                        .checked_mul(10)?
                        .checked_add(u64::from(b - b'0'))?;
                    digits += 1;
                }
                b'.' if field < 2 && digits > 0 => {
                    field += 1;
                    digits = 0;
                }
                b'#' if field == 2 && digits > 0 => {
                    return Some(Marker {
                        chan: Chan {
                            kind,
                            index: u32::try_from(fields[0]).ok()?,
                        },
                        seq: fields[1],
                        sent_ns: fields[2],
                    });
                }
                _ => return None,
            }
        }
        None
    }
}

/// Nanoseconds since the Unix epoch, the clock every process of a run shares.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// What one arrival was, for a channel's sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// A sequence number not seen before, in order (possibly after a gap).
    New,
    /// A sequence number not seen before, arriving after a later one: out of order.
    Late,
    /// A sequence number already seen.
    Duplicate,
}

/// The sequence numbers seen on one channel by one connection: the highest, and a window of
/// the 64 below it.
#[derive(Clone, Copy, Debug, Default)]
pub struct SeqTrack {
    last: u64,
    /// Bit k set: `last - 1 - k` was seen.
    window: u64,
}

impl SeqTrack {
    /// Records an arrival of `seq` (from 1) and says what it was.
    pub fn see(&mut self, seq: u64) -> Seen {
        if seq > self.last {
            let shift = seq - self.last;
            let previous = if self.last > 0 { 1u64 } else { 0 };
            self.window = if shift > 64 {
                0
            } else if shift == 64 {
                previous << 63
            } else {
                (self.window << shift) | (previous << (shift - 1))
            };
            self.last = seq;
            return Seen::New;
        }
        if seq == self.last {
            return Seen::Duplicate;
        }
        let k = self.last - 1 - seq;
        if k >= 64 {
            // Too far back to remember: count it as late, not as a duplicate.
            return Seen::Late;
        }
        if self.window & (1 << k) != 0 {
            Seen::Duplicate
        } else {
            self.window |= 1 << k;
            Seen::Late
        }
    }

    /// The highest sequence number seen.
    pub fn last(&self) -> u64 {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_round_trips_and_survives_json_escaping() {
        let m = Marker {
            chan: Chan {
                kind: Kind::Project,
                index: 381,
            },
            seq: 17,
            sent_ns: 1_764_115_200_123_456_789,
        };
        let mut s = String::from("{\"content\":\"");
        m.write(&mut s);
        s.push_str(" padding\"}");
        assert_eq!(Marker::find(&s), Some(m));
        let escaped = serde_json::to_string(&s).unwrap();
        assert_eq!(Marker::find(&escaped), Some(m));
    }

    #[test]
    fn broken_markers_are_not_parsed() {
        for bad in [
            "",
            "#B",
            "#Bo",
            "#Bo1",
            "#Bo1.2",
            "#Bo1.2.3",
            "#Bx1.2.3#",
            "#Bo.2.3#",
            "#Bo1..3#",
            "#Bo1.2.3.4#",
            "#Bo1.2.-3#",
            "#Bo99999999999.1.1#",
        ] {
            assert_eq!(Marker::find(bad), None, "{bad}");
        }
    }

    #[test]
    fn sequence_tracking_tells_new_late_and_duplicate() {
        let mut t = SeqTrack::default();
        assert_eq!(t.see(1), Seen::New);
        assert_eq!(t.see(2), Seen::New);
        assert_eq!(t.see(2), Seen::Duplicate);
        assert_eq!(t.see(5), Seen::New);
        assert_eq!(t.see(4), Seen::Late);
        assert_eq!(t.see(4), Seen::Duplicate);
        assert_eq!(t.see(3), Seen::Late);
        assert_eq!(t.see(1), Seen::Duplicate);
        assert_eq!(t.see(200), Seen::New);
        assert_eq!(t.see(5), Seen::Late, "beyond the window: counted late");
        assert_eq!(t.see(136), Seen::Late);
        assert_eq!(t.see(136), Seen::Duplicate);
        assert_eq!(t.see(264), Seen::New);
        assert_eq!(
            t.see(200),
            Seen::Duplicate,
            "exactly 64 back is still remembered"
        );
        assert_eq!(t.last(), 264);
    }
}
