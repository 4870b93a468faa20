//! Which backends of a global service a client of this cluster is sent to.
//!
//! One decision, used by the node agent's load-balancer maps and by
//! `LookupService` (so `clustermesh service get` says what the datapath
//! does):
//! - **Who contributes.** This cluster's record of the service, if it is
//!   global: clients connect to a local frontend, so without a local global
//!   service nothing is load-balanced. A peer's record contributes only when
//!   it is global **and** shared (`shared: "false"` keeps a cluster's backends
//!   to itself, as in Cilium).
//! - **Which backends.** Ready ones. Serving-but-not-ready (terminating)
//!   backends are used only when no contributing cluster has a ready one
//!   (kube-proxy's terminating-endpoint fallback), so a rollout that drains
//!   the last ready pod does not black-hole new connections.
//! - **Affinity.** `local`: this cluster's backends while it has one, else the
//!   peers'; `remote`: the other way round; `none`: all together. The
//!   preference applies within a tier: ready backends of either side beat
//!   serving-only ones of the preferred side.

use crate::v1::{Affinity, Backend, Service};

/// Whether `peer`'s record of a service adds backends to this cluster's view,
/// given this cluster's own record of it (`None`: it has none).
pub fn peer_contributes(local: Option<&Service>, peer: &Service) -> bool {
    local.is_some_and(|l| l.global) && peer.global && peer.shared
}

/// One backend candidate, from this cluster (`local`) or a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate<T> {
    pub local: bool,
    pub ready: bool,
    pub serving: bool,
    pub item: T,
}

impl<'a> Candidate<&'a Backend> {
    /// A candidate for a backend record.
    pub fn of(local: bool, b: &'a Backend) -> Self {
        Candidate {
            local,
            ready: b.ready,
            serving: b.serving,
            item: b,
        }
    }
}

/// The candidates a client is sent to (in their given order), by affinity.
pub fn select<T: Clone>(affinity: Affinity, candidates: &[Candidate<T>]) -> Vec<T> {
    // Tiers in order of preference: (side filter, ready-only?)
    let sides: &[Option<bool>] = match affinity {
        Affinity::None => &[None],
        Affinity::Local => &[Some(true), Some(false)],
        Affinity::Remote => &[Some(false), Some(true)],
    };
    for ready_only in [true, false] {
        for side in sides {
            let chosen: Vec<T> = candidates
                .iter()
                .filter(|c| side.is_none_or(|local| c.local == local))
                .filter(|c| if ready_only { c.ready } else { c.serving })
                .map(|c| c.item.clone())
                .collect();
            if !chosen.is_empty() {
                return chosen;
            }
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(local: bool, ready: bool, serving: bool, name: &'static str) -> Candidate<&'static str> {
        Candidate {
            local,
            ready,
            serving,
            item: name,
        }
    }

    #[test]
    fn affinity_and_fallbacks() {
        let l = c(true, true, true, "l");
        let l_term = c(true, false, true, "l-term");
        let l_down = c(true, false, false, "l-down");
        let r = c(false, true, true, "r");
        let r_term = c(false, false, true, "r-term");
        let all = [
            l.clone(),
            l_term.clone(),
            l_down.clone(),
            r.clone(),
            r_term.clone(),
        ];
        // The pinned cases: (affinity, candidates, selected).
        type Case = (Affinity, Vec<Candidate<&'static str>>, Vec<&'static str>);
        let cases: Vec<Case> = vec![
            (Affinity::None, all.to_vec(), vec!["l", "r"]),
            (Affinity::Local, all.to_vec(), vec!["l"]),
            (Affinity::Remote, all.to_vec(), vec!["r"]),
            // No local ready: local affinity falls back to the remote ready ones,
            // not to a local terminating one.
            (Affinity::Local, vec![l_term.clone(), r.clone()], vec!["r"]),
            (Affinity::Remote, vec![l.clone(), r_term.clone()], vec!["l"]),
            // Nothing ready anywhere: serving (terminating) backends, preferred side first.
            (
                Affinity::Local,
                vec![l_term.clone(), r_term.clone()],
                vec!["l-term"],
            ),
            (
                Affinity::None,
                vec![l_term.clone(), r_term.clone(), l_down.clone()],
                vec!["l-term", "r-term"],
            ),
            // Neither ready nor serving: nothing.
            (Affinity::None, vec![l_down.clone()], vec![]),
            (Affinity::Local, vec![], vec![]),
        ];
        for (aff, cands, want) in cases {
            assert_eq!(select(aff, &cands), want, "{aff:?} {cands:?}");
        }
    }

    #[test]
    fn who_contributes() {
        let svc = |global, shared| Service {
            global,
            shared,
            ..Default::default()
        };
        let local = svc(true, true);
        assert!(peer_contributes(Some(&local), &svc(true, true)));
        assert!(
            !peer_contributes(Some(&local), &svc(true, false)),
            "shared=false"
        );
        assert!(!peer_contributes(Some(&local), &svc(false, false)));
        assert!(
            !peer_contributes(None, &svc(true, true)),
            "no local frontend"
        );
        assert!(
            !peer_contributes(Some(&svc(false, false)), &svc(true, true)),
            "local not global"
        );
        // A local service that does not share its own backends still uses the peers'.
        assert!(peer_contributes(Some(&svc(true, false)), &svc(true, true)));
    }
}
