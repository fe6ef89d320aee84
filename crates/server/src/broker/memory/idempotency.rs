//! Publish de-duplication: an `idempotencyKey` seen within the window is answered again and not
//! delivered twice. Bounded in time and in entries: past the capacity the oldest keys are
//! forgotten first (their window shortens; memory never grows past the bound).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::broker::FirstAnswer;

type Key = (Arc<str>, String);

/// Keys seen recently, per org.
pub struct Idempotency {
    window: Duration,
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    seen: HashMap<Key, (Instant, FirstAnswer)>,
    order: VecDeque<(Instant, Key)>,
}

impl Idempotency {
    /// Remembers keys for `window`, at most `capacity` at once.
    pub fn new(window: Duration, capacity: usize) -> Idempotency {
        Idempotency {
            window,
            capacity: capacity.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Claims `key` for `answer`: `None` when the key is new (it is now held), or the first
    /// answer when it was seen within the window.
    pub fn claim(
        &self,
        org: &Arc<str>,
        key: &str,
        answer: FirstAnswer,
        now: Instant,
    ) -> Option<FirstAnswer> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        self.expire(&mut inner, now);
        let k: Key = (org.clone(), key.to_owned());
        if let Some((_, first)) = inner.seen.get(&k) {
            return Some(first.clone());
        }
        while inner.seen.len() >= self.capacity {
            let Some((_, old)) = inner.order.pop_front() else {
                break;
            };
            inner.seen.remove(&old);
        }
        inner.seen.insert(k.clone(), (now, answer));
        inner.order.push_back((now, k));
        None
    }

    fn expire(&self, inner: &mut Inner, now: Instant) {
        while let Some((at, _)) = inner.order.front() {
            if now.saturating_duration_since(*at) < self.window {
                break;
            }
            let (at, k) = inner.order.pop_front().expect("front exists");
            // A released-then-reclaimed key has a newer entry: keep it.
            if inner.seen.get(&k).is_some_and(|(t, _)| *t == at) {
                inner.seen.remove(&k);
            }
        }
    }

    #[cfg(test)]
    /// How many keys are held.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .seen
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ans(id: &str) -> FirstAnswer {
        FirstAnswer {
            id: id.into(),
            channels: vec![],
        }
    }

    #[test]
    fn a_key_is_answered_once_within_the_window_per_org() {
        let d = Idempotency::new(Duration::from_secs(300), 100);
        let t = Instant::now();
        let o1: Arc<str> = Arc::from("o1");
        let o2: Arc<str> = Arc::from("o2");
        assert_eq!(d.claim(&o1, "k", ans("a"), t), None);
        assert_eq!(d.claim(&o1, "k", ans("b"), t), Some(ans("a")));
        assert_eq!(d.claim(&o2, "k", ans("c"), t), None, "keys are per org");
        let later = t + Duration::from_secs(301);
        assert_eq!(
            d.claim(&o1, "k", ans("d"), later),
            None,
            "the window passed"
        );
    }

    #[test]
    fn memory_is_bounded_by_capacity() {
        let d = Idempotency::new(Duration::from_secs(300), 10);
        let t = Instant::now();
        let o: Arc<str> = Arc::from("o");
        for i in 0..1000 {
            d.claim(&o, &i.to_string(), ans("x"), t);
        }
        assert_eq!(d.len(), 10);
        assert!(
            d.claim(&o, "999", ans("y"), t).is_some(),
            "the newest are kept"
        );
        assert!(
            d.claim(&o, "0", ans("y"), t).is_none(),
            "the oldest were forgotten"
        );
    }
}
