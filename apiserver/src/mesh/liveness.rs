//! Peer liveness and redial pacing, as pure state so they are unit-tested
//! without clocks or sockets.
//!
//! A peer is *connected* while something (a batch or a heartbeat) has been
//! heard from it within `peer_timeout`. It *became disconnected* at
//! `last_seen + peer_timeout`; its records are withdrawn `stale_ttl` after
//! that (never when `stale_ttl` is zero).

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

/// Liveness of one peer.
#[derive(Debug, Clone)]
pub struct Liveness {
    /// The last time anything arrived from the peer (the loop start until then).
    pub last_seen: Instant,
    /// Whether anything has arrived since the loop started.
    pub heard: bool,
    pub peer_timeout: Duration,
    /// Zero: never withdraw.
    pub stale_ttl: Duration,
}

impl Liveness {
    pub fn new(start: Instant, peer_timeout: Duration, stale_ttl: Duration) -> Self {
        Liveness {
            last_seen: start,
            heard: false,
            peer_timeout,
            stale_ttl,
        }
    }

    pub fn seen(&mut self, now: Instant) {
        self.last_seen = now;
        self.heard = true;
    }

    pub fn connected(&self, now: Instant) -> bool {
        self.heard && now < self.disconnected_at()
    }

    /// When silence turns into "disconnected".
    pub fn disconnected_at(&self) -> Instant {
        self.last_seen + self.peer_timeout
    }

    /// When the records are withdrawn if nothing arrives before; None if never.
    pub fn withdraw_at(&self) -> Option<Instant> {
        (!self.stale_ttl.is_zero()).then(|| self.disconnected_at() + self.stale_ttl)
    }

    pub fn stale(&self, now: Instant) -> bool {
        self.withdraw_at().is_some_and(|t| now >= t)
    }
}

/// Jittered exponential backoff: each delay is drawn from [d/2, d], d doubling
/// from `min` up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// The delay before the next attempt.
    pub fn delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = d / 2;
        let jitter = rand::rng().random_range(0..=half.as_millis() as u64);
        half + Duration::from_millis(jitter)
    }

    /// After a success: start again from `min`.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_timeline() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut l = Liveness::new(t0, s(1), s(3));
        assert!(!l.connected(t0), "nothing heard yet");
        assert_eq!(
            l.withdraw_at(),
            Some(t0 + s(4)),
            "grace from the loop start"
        );
        l.seen(t0 + s(2));
        assert!(l.connected(t0 + s(2)));
        assert!(l.connected(t0 + Duration::from_millis(2999)));
        assert!(!l.connected(t0 + s(3)), "silent for peer-timeout");
        assert!(!l.stale(t0 + Duration::from_millis(5999)));
        assert!(l.stale(t0 + s(6)), "stale-ttl after it became disconnected");
        let never = Liveness::new(t0, s(1), Duration::ZERO);
        assert_eq!(never.withdraw_at(), None);
        assert!(!never.stale(t0 + s(1_000_000)));
    }

    #[test]
    fn backoff_grows_jittered_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let mut last_cap = Duration::ZERO;
        for i in 0..20 {
            let cap =
                (Duration::from_millis(100) * 2u32.pow(i.min(10))).min(Duration::from_secs(10));
            let d = b.delay();
            assert!(
                d >= cap / 2 && d <= cap,
                "attempt {i}: {d:?} not in [{:?}, {cap:?}]",
                cap / 2
            );
            assert!(cap >= last_cap);
            last_cap = cap;
        }
        b.reset();
        assert!(b.delay() <= Duration::from_millis(100));
    }
}
