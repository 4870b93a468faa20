//! Peer liveness and redial pacing, as pure state so they are unit-tested
//! without clocks or sockets.
//!
//! A peer is *connected* while something (a batch or a heartbeat) has been
//! heard from it within `peer_timeout`. It *became disconnected* at
//! `last_seen + peer_timeout`; its records are withdrawn `stale_ttl` after
//! that (never when `stale_ttl` is zero).

use std::time::Duration;

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

pub use clustermesh_proto::backoff::Backoff;

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
}
