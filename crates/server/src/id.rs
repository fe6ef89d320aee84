//! Identifiers: event ids (`evt_` + a ULID: sortable by time, unique), connection ids and epochs.
//! Stateless: it never keeps state and never asks another node (randomness keeps ids apart).

use std::time::{SystemTime, UNIX_EPOCH};

use rand::Rng;

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A new event id: `evt_` and 26 characters of a ULID (48 bits of milliseconds, 80 random bits).
pub fn event_id() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let rnd: u128 = rand::rng().random::<u128>() & ((1u128 << 80) - 1);
    let mut v = (ms << 80) | rnd;
    let mut out = [0u8; 26];
    for c in out.iter_mut().rev() {
        *c = CROCKFORD[(v & 31) as usize];
        v >>= 5;
    }
    let mut s = String::with_capacity(30);
    s.push_str("evt_");
    s.push_str(std::str::from_utf8(&out).expect("ascii"));
    s
}

/// A new channel epoch: `e_` and 12 random hex digits.
pub fn epoch() -> String {
    format!("e_{:012x}", rand::rng().random::<u64>() & 0xffff_ffff_ffff)
}

/// The public form of a connection id: `c_` and 16 hex digits (a per-node random prefix keeps
/// ids from two nodes apart).
pub fn connection_id(node_prefix: u32, conn: u64) -> String {
    format!("c_{node_prefix:08x}{conn:08x}")
}

/// A random per-node prefix for connection ids.
pub fn node_prefix() -> u32 {
    rand::rng().random()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_unique_and_time_sorted() {
        let a = event_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = event_id();
        assert_eq!(a.len(), 30);
        assert!(a.starts_with("evt_"));
        assert!(a[..14] < b[..14], "{a} {b}");
        let many: std::collections::HashSet<_> = (0..10_000).map(|_| event_id()).collect();
        assert_eq!(many.len(), 10_000);
    }

    #[test]
    fn epochs_differ() {
        assert_ne!(epoch(), epoch());
        assert!(epoch().starts_with("e_"));
    }
}
