//! Applying a desired state as a diff against what the pinned maps hold.
//!
//! The current state is read from the maps themselves (not from memory), so a
//! restarted agent reconciles what its predecessor left instead of flushing:
//! entries that are already right are not touched, and traffic never sees an
//! empty map. Operations are ordered so that no intermediate state drops
//! traffic that both the old and the new state allow:
//! endpoints before the ipcache entries that point at them, policy entries
//! before the ipBlock prefixes and enforcement marks that make them matter
//! (and marks and prefixes removed before their entries), all of policy before
//! the ipcache entries that give an address its (new) identity, backend slots before the frontend count that
//! exposes them (and the count lowered before slots go away).

use std::collections::{BTreeMap, BTreeSet};

use tracing::debug;

use super::error::Result;
use super::maps::{Datapath, collect};
use super::pins::{MAP_ENFORCED, MAP_TUNNEL_SOURCES};
use super::state::{DesiredState, RawState};
use super::types::{
    BackendKey, BackendValue, EndpointValue, EnforcedKey, FrontendKey, FrontendValue, IpcacheKey,
    IpcacheValue, PolicyCidrValue, PolicyKey, TunnelSourceValue,
};

/// One map write, in the order [`plan`] emits them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    UpsertTunnelSource(u32, TunnelSourceValue),
    UpsertEndpoint(u32, EndpointValue),
    UpsertIpcache(IpcacheKey, IpcacheValue),
    UpsertPolicy(PolicyKey, u8),
    UpsertPolicyCidr(IpcacheKey, PolicyCidrValue),
    SetEnforced(EnforcedKey),
    UpsertBackend(BackendKey, BackendValue),
    UpsertFrontend(FrontendKey, FrontendValue),
    DeleteFrontend(FrontendKey),
    DeleteBackend(BackendKey),
    DeleteEnforced(EnforcedKey),
    DeletePolicyCidr(IpcacheKey),
    DeletePolicy(PolicyKey),
    DeleteIpcache(IpcacheKey),
    DeleteEndpoint(u32),
    DeleteTunnelSource(u32),
}

impl Op {
    fn is_delete(&self) -> bool {
        matches!(
            self,
            Op::DeleteFrontend(_)
                | Op::DeleteBackend(_)
                | Op::DeleteEnforced(_)
                | Op::DeletePolicyCidr(_)
                | Op::DeletePolicy(_)
                | Op::DeleteIpcache(_)
                | Op::DeleteEndpoint(_)
                | Op::DeleteTunnelSource(_)
        )
    }
}

/// What [`Datapath::apply`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub upserts: usize,
    pub deletes: usize,
    /// Desired entries that were already right.
    pub unchanged: usize,
}

fn diff<K: Ord + Copy, V: PartialEq + Copy>(
    current: &BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
) -> (Vec<(K, V)>, Vec<K>, usize) {
    let mut up = Vec::new();
    let mut unchanged = 0;
    for (k, v) in desired {
        match current.get(k) {
            Some(cur) if cur == v => unchanged += 1,
            _ => up.push((*k, *v)),
        }
    }
    let del = current
        .keys()
        .filter(|k| !desired.contains_key(k))
        .copied()
        .collect();
    (up, del, unchanged)
}

fn set_diff<K: Ord + Copy>(
    current: &BTreeSet<K>,
    desired: &BTreeSet<K>,
) -> (Vec<K>, Vec<K>, usize) {
    let add = desired.difference(current).copied().collect();
    let del = current.difference(desired).copied().collect();
    (add, del, desired.intersection(current).count())
}

/// The ordered writes that turn `current` into `desired`, and how many desired
/// entries were already in place.
pub fn plan(current: &RawState, desired: &RawState) -> (Vec<Op>, usize) {
    let (ep_up, ep_del, u1) = diff(&current.endpoints, &desired.endpoints);
    let (ip_up, ip_del, u2) = diff(&current.ipcache, &desired.ipcache);
    let (po_up, po_del, u3) = diff(&current.policy, &desired.policy);
    let (pc_up, pc_del, u7) = diff(&current.policy_cidr, &desired.policy_cidr);
    let (en_add, en_del, u4) = set_diff(&current.enforced, &desired.enforced);
    let (be_up, be_del, u5) = diff(&current.backends, &desired.backends);
    let (fe_up, fe_del, u6) = diff(&current.frontends, &desired.frontends);
    let (ts_up, ts_del, u8) = diff(&current.tunnel_sources, &desired.tunnel_sources);

    let mut ops = Vec::new();
    // Senders are accepted before the entries that make their packets deliverable.
    ops.extend(ts_up.into_iter().map(|(k, v)| Op::UpsertTunnelSource(k, v)));
    ops.extend(ep_up.into_iter().map(|(k, v)| Op::UpsertEndpoint(k, v)));
    ops.extend(po_up.into_iter().map(|(k, v)| Op::UpsertPolicy(k, v)));
    ops.extend(pc_up.into_iter().map(|(k, v)| Op::UpsertPolicyCidr(k, v)));
    ops.extend(en_add.into_iter().map(Op::SetEnforced));
    // After the policy of an address's new identity is complete (fail-closed
    // at pod start and on relabels).
    ops.extend(ip_up.into_iter().map(|(k, v)| Op::UpsertIpcache(k, v)));
    ops.extend(be_up.into_iter().map(|(k, v)| Op::UpsertBackend(k, v)));
    ops.extend(fe_up.into_iter().map(|(k, v)| Op::UpsertFrontend(k, v)));
    ops.extend(fe_del.into_iter().map(Op::DeleteFrontend));
    ops.extend(be_del.into_iter().map(Op::DeleteBackend));
    ops.extend(en_del.into_iter().map(Op::DeleteEnforced));
    ops.extend(pc_del.into_iter().map(Op::DeletePolicyCidr));
    ops.extend(po_del.into_iter().map(Op::DeletePolicy));
    ops.extend(ip_del.into_iter().map(Op::DeleteIpcache));
    ops.extend(ep_del.into_iter().map(Op::DeleteEndpoint));
    ops.extend(ts_del.into_iter().map(Op::DeleteTunnelSource));
    (ops, u1 + u2 + u3 + u4 + u5 + u6 + u7 + u8)
}

impl Datapath {
    /// Reads what the maps hold now (the part [`DesiredState`] describes).
    pub fn read_state(&self) -> Result<RawState> {
        Ok(RawState {
            ipcache: self.ipcache_raw()?,
            endpoints: self.endpoints_raw()?,
            policy: self
                .policy_raw()?
                .into_iter()
                .map(|(k, v)| (k, v.action))
                .collect(),
            policy_cidr: self.policy_cidr_raw()?,
            enforced: collect(MAP_ENFORCED, self.enforced.iter())?
                .into_keys()
                .collect(),
            frontends: self.frontends_raw()?,
            backends: self.backends_raw()?,
            tunnel_sources: collect(MAP_TUNNEL_SOURCES, self.tunnel_sources.iter())?,
        })
    }

    /// Makes the maps equal to `desired`, writing only the difference.
    /// Policy counters of entries that stay are kept.
    pub fn apply(&mut self, desired: &DesiredState) -> Result<ApplyReport> {
        let want = desired.to_raw()?;
        let have = self.read_state()?;
        self.apply_diff(&have, &want)
    }

    /// Writes the difference between `have` (what the maps are known to
    /// hold, e.g. the state last applied) and `want`, without reading the
    /// maps. A caller that is unsure of `have` uses [`Datapath::apply`].
    pub fn apply_diff(&mut self, have: &RawState, want: &RawState) -> Result<ApplyReport> {
        let (ops, unchanged) = plan(have, want);
        let mut report = ApplyReport {
            unchanged,
            ..ApplyReport::default()
        };
        for op in &ops {
            self.execute(op)?;
            if op.is_delete() {
                report.deletes += 1;
            } else {
                report.upserts += 1;
            }
        }
        debug!(?report, "applied desired datapath state");
        Ok(report)
    }

    fn execute(&mut self, op: &Op) -> Result<()> {
        use super::error::DatapathError as E;
        use super::pins::{MAP_ENDPOINTS, MAP_LB_BACKENDS, MAP_LB_FRONTENDS};
        match *op {
            Op::UpsertEndpoint(k, v) => self
                .endpoints
                .insert(k, v, 0)
                .map_err(|e| E::map(MAP_ENDPOINTS, e))?,
            Op::UpsertIpcache(k, v) => self.upsert_ipcache_raw(k, v)?,
            Op::UpsertPolicy(k, a) => self.upsert_policy_raw(k, a)?,
            Op::UpsertPolicyCidr(k, v) => self.upsert_policy_cidr_raw(k, v)?,
            Op::SetEnforced(k) => self
                .enforced
                .insert(k, 1, 0)
                .map_err(|e| E::map(MAP_ENFORCED, e))?,
            Op::UpsertBackend(k, v) => self
                .backends
                .insert(k, v, 0)
                .map_err(|e| E::map(MAP_LB_BACKENDS, e))?,
            Op::UpsertFrontend(k, v) => self
                .frontends
                .insert(k, v, 0)
                .map_err(|e| E::map(MAP_LB_FRONTENDS, e))?,
            Op::DeleteFrontend(k) => {
                self.delete_frontend_raw(k)?;
            }
            Op::DeleteBackend(k) => {
                self.delete_backend_raw(k)?;
            }
            Op::DeleteEnforced(k) => {
                let r = self.enforced.remove(&k);
                if let Err(e) = r
                    && !super::maps::is_not_found(&e)
                {
                    return Err(E::map(MAP_ENFORCED, e));
                }
            }
            Op::DeletePolicyCidr(k) => {
                self.delete_policy_cidr_raw(k)?;
            }
            Op::DeletePolicy(k) => {
                self.delete_policy_raw(k)?;
            }
            Op::DeleteIpcache(k) => {
                self.delete_ipcache_raw(k)?;
            }
            Op::DeleteEndpoint(k) => {
                self.delete_endpoint(k)?;
            }
            Op::UpsertTunnelSource(k, v) => self
                .tunnel_sources
                .insert(k, v, 0)
                .map_err(|e| E::map(MAP_TUNNEL_SOURCES, e))?,
            Op::DeleteTunnelSource(k) => {
                let r = self.tunnel_sources.remove(&k);
                if let Err(e) = r
                    && !super::maps::is_not_found(&e)
                {
                    return Err(E::map(MAP_TUNNEL_SOURCES, e));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::policy_key::PolicyRule;
    use crate::datapath::rules::{Backend, Direction, Frontend, PROTO_TCP, Service, Verdict};
    use crate::datapath::state::{Endpoint, IpcacheEntry, Ipv4Prefix, Location};
    use std::net::Ipv4Addr;

    fn desired() -> DesiredState {
        let mut d = DesiredState::default();
        d.endpoints.insert(
            5,
            Endpoint {
                pod_mac: [2, 0, 0, 0, 0, 1],
                host_mac: [2, 0, 0, 0, 0, 2],
                identity: 65792,
            },
        );
        d.ipcache.insert(
            Ipv4Prefix::host(Ipv4Addr::new(10, 1, 0, 2)),
            IpcacheEntry {
                identity: 65792,
                location: Location::Local { ifindex: 5 },
            },
        );
        let rule = PolicyRule::identities(65792, 131328, PROTO_TCP, 8080, Direction::Ingress);
        d.policy.insert(rule, Verdict::Allow);
        d.enforced.insert((65792, Direction::Ingress));
        let fe = Frontend {
            ip: Ipv4Addr::new(10, 96, 0, 1),
            port: 80,
            proto: PROTO_TCP,
        };
        let be = Backend {
            ip: Ipv4Addr::new(10, 2, 0, 2),
            port: 8080,
        };
        d.services.insert(
            fe,
            Service {
                service_id: 1,
                affinity: Default::default(),
                backends: vec![be, be],
            },
        );
        d
    }

    fn pos(ops: &[Op], f: impl Fn(&Op) -> bool) -> usize {
        ops.iter().position(f).expect("op present")
    }

    #[test]
    fn empty_to_desired_orders_dependencies_first() {
        let want = desired().to_raw().unwrap();
        let (ops, unchanged) = plan(&RawState::default(), &want);
        assert_eq!(unchanged, 0);
        assert_eq!(ops.len(), 1 + 1 + 1 + 1 + 2 + 1);
        assert!(
            pos(&ops, |o| matches!(o, Op::UpsertEndpoint(..)))
                < pos(&ops, |o| matches!(o, Op::UpsertIpcache(..)))
        );
        assert!(
            pos(&ops, |o| matches!(o, Op::UpsertPolicy(..)))
                < pos(&ops, |o| matches!(o, Op::SetEnforced(..)))
        );
        assert!(
            pos(&ops, |o| matches!(o, Op::SetEnforced(..)))
                < pos(&ops, |o| matches!(o, Op::UpsertIpcache(..))),
            "a pod's address gets its identity only once that identity's policy is in place"
        );
        assert!(
            pos(&ops, |o| matches!(o, Op::UpsertBackend(..)))
                < pos(&ops, |o| matches!(o, Op::UpsertFrontend(..)))
        );
    }

    #[test]
    fn same_state_is_a_no_op() {
        let want = desired().to_raw().unwrap();
        let (ops, unchanged) = plan(&want, &want);
        assert!(ops.is_empty());
        assert_eq!(unchanged, 7);
    }

    #[test]
    fn removal_orders_reverse_dependencies() {
        let have = desired().to_raw().unwrap();
        let (ops, _) = plan(&have, &RawState::default());
        assert!(ops.iter().all(Op::is_delete));
        assert!(
            pos(&ops, |o| matches!(o, Op::DeleteFrontend(..)))
                < pos(&ops, |o| matches!(o, Op::DeleteBackend(..)))
        );
        assert!(
            pos(&ops, |o| matches!(o, Op::DeleteEnforced(..)))
                < pos(&ops, |o| matches!(o, Op::DeletePolicy(..)))
        );
        assert!(
            pos(&ops, |o| matches!(o, Op::DeleteIpcache(..)))
                < pos(&ops, |o| matches!(o, Op::DeleteEndpoint(..)))
        );
    }

    #[test]
    fn shrinking_a_service_lowers_count_before_dropping_slots() {
        let have = desired().to_raw().unwrap();
        let mut d = desired();
        for svc in d.services.values_mut() {
            svc.backends.truncate(1);
        }
        let want = d.to_raw().unwrap();
        let (ops, _) = plan(&have, &want);
        assert_eq!(ops.len(), 2);
        assert!(matches!(ops[0], Op::UpsertFrontend(_, v) if v.count == 1));
        assert!(matches!(ops[1], Op::DeleteBackend(k) if k.slot == 1));
    }
}
