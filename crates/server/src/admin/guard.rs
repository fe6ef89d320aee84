//! The admin API's door: `Authorization: Bearer <admin key>`, compared in constant time, and a
//! limit on failed attempts per client address (10 within 60 s; then 429 with `Retry-After`
//! until the minute has passed, even with the right key). The table of addresses is bounded:
//! past [`MAX_ADDRESSES`] the addresses not yet in it share one entry, so a flood of sources
//! locks itself out together rather than growing memory.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;

/// Failed attempts allowed per address within [`WINDOW`].
pub(crate) const MAX_FAILURES: u32 = 10;
/// The window of failed attempts, from the first one.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at once.
pub(crate) const MAX_ADDRESSES: usize = 4096;

/// Failed attempts per address: (failures, when the window began).
#[derive(Debug, Default)]
pub(crate) struct Limiter {
    table: Mutex<HashMap<Option<IpAddr>, (u32, Instant)>>,
}

impl Limiter {
    fn slot(
        table: &mut HashMap<Option<IpAddr>, (u32, Instant)>,
        ip: IpAddr,
        now: Instant,
    ) -> Option<IpAddr> {
        if table.contains_key(&Some(ip)) {
            return Some(ip);
        }
        if table.len() >= MAX_ADDRESSES {
            table.retain(|_, (_, since)| now.duration_since(*since) < WINDOW);
        }
        if table.len() >= MAX_ADDRESSES {
            None
        } else {
            Some(ip)
        }
    }

    /// `Err(seconds)` while `ip` is locked out (how long is left), at `now`.
    pub(crate) fn check(&self, ip: IpAddr, now: Instant) -> Result<(), u64> {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let key = Self::slot(&mut t, ip, now);
        match t.get(&key) {
            Some((n, since)) if now.duration_since(*since) < WINDOW && *n >= MAX_FAILURES => {
                let left = WINDOW - now.duration_since(*since);
                Err(left.as_secs().max(1))
            }
            _ => Ok(()),
        }
    }

    /// `ip` failed once more at `now`.
    pub(crate) fn fail(&self, ip: IpAddr, now: Instant) {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let key = Self::slot(&mut t, ip, now);
        let e = t.entry(key).or_insert((0, now));
        if now.duration_since(e.1) >= WINDOW {
            *e = (0, now);
        }
        e.0 += 1;
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.table.lock().unwrap().len()
    }
}

/// Whether an `Authorization` header value carries exactly `key` as its bearer credentials, in
/// time that does not depend on where they differ.
pub(crate) fn key_matches(authorization: Option<&str>, key: &str) -> bool {
    let Some(given) = authorization.and_then(crate::http::bearer) else {
        return false;
    };
    bool::from(given.as_bytes().ct_eq(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eleventh_failure_locks_the_address_out_for_the_rest_of_the_minute() {
        let l = Limiter::default();
        let (ip, other): (IpAddr, IpAddr) =
            ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap());
        let t0 = Instant::now();
        for i in 0..MAX_FAILURES {
            assert_eq!(l.check(ip, t0), Ok(()), "attempt {i}");
            l.fail(ip, t0);
        }
        assert_eq!(l.check(ip, t0 + Duration::from_secs(1)), Err(59));
        assert_eq!(
            l.check(other, t0),
            Ok(()),
            "another address is not locked out"
        );
        assert_eq!(l.check(ip, t0 + WINDOW), Ok(()), "the minute passed");
    }

    #[test]
    fn the_table_is_bounded() {
        let l = Limiter::default();
        let t0 = Instant::now();
        for i in 0..(MAX_ADDRESSES as u32 + 100) {
            l.fail(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert!(l.tracked() <= MAX_ADDRESSES + 1);
    }

    #[test]
    fn only_the_exact_bearer_key_matches() {
        assert!(key_matches(Some("Bearer k1"), "k1"));
        assert!(key_matches(Some("bearer k1"), "k1"));
        assert!(!key_matches(Some("Bearer k12"), "k1"));
        assert!(!key_matches(Some("k1"), "k1"));
        assert!(!key_matches(None, "k1"));
    }
}
