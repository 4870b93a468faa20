//! The one rule that depends on the peer's other records: an endpoint IP,
//! a backend record's IP and every inline backend IP of a service (an older
//! peer's) must lie inside a pod CIDR the same peer announces in its own
//! Node records.
//!
//! Arrival order must not matter, so a record that fails only this rule is
//! not refused but held **pending**: not written, shown in status as
//! pending. Whenever the peer's stored nodes change, every pending and every
//! written endpoint and service is checked again: a node that arrives (or
//! gains a pod CIDR) admits what it covers (written then), a node that is
//! withdrawn (or loses a pod CIDR) takes the records it covered out of the
//! cache again (deleted, and pending until a node covers them once more).
//! The final state depends only on the peer's final set of records.
//!
//! Memory: the gate keeps a copy of each *pending* record only. A written
//! endpoint or backend record costs nothing extra (its key holds its IP,
//! checked by the rules);
//! a written service keeps its backend IPs. When a node change takes a
//! written record back, the cache fetches its value from what it is just
//! writing, from the view or from etcd before deleting it
//! ([`GateOp::Withdraw`]).

use std::collections::BTreeMap;
use std::net::IpAddr;

use bytes::Bytes;
use clustermesh_proto::key_map::KeyRef;
use clustermesh_proto::mirror::RecordId;
use clustermesh_proto::v1::Kind;

use super::Cidr;
use super::net::parse_ip;
use super::records::covered_ips;

/// Kinds whose key holds the one IP the rule checks (an endpoint's IP, a
/// backend record's `<namespace>/<service>/<ip>`), so a written record of
/// them needs no memory here.
fn keyed_by_ip(kind: Kind) -> bool {
    matches!(kind, Kind::Endpoint | Kind::ServiceBackend)
}

/// The IP in the key of a [`keyed_by_ip`] record (an endpoint's key is
/// its IP; a backend's ends with it).
fn key_ip(kind: Kind, key: KeyRef<'_>) -> Option<IpAddr> {
    match (kind, key) {
        (Kind::ServiceBackend, KeyRef::Text(k)) => {
            parse_ip(clustermesh_proto::backends::split_key(k)?.2)
        }
        (Kind::ServiceBackend, KeyRef::Ipv4(_)) => None,
        (_, KeyRef::Ipv4(ip)) => Some(IpAddr::V4(ip)),
        (_, KeyRef::Text(k)) => parse_ip(k),
    }
}

#[derive(Debug, Clone)]
struct Held {
    ips: Vec<IpAddr>,
    value: Bytes,
}

/// What the gate asks the cache to do after the peer's nodes changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateOp {
    /// A pending record is covered now: write it.
    Put(RecordId, Bytes),
    /// A written record is no longer covered: delete it and hand its value
    /// to [`Gate::hold_withdrawn`] (it is pending again).
    Withdraw(RecordId),
}

/// What became of an upsert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write it.
    Admit,
    /// Held pending; `was_written`: an older version may be in the store and must go.
    Pending { was_written: bool },
}

#[derive(Debug, Default)]
pub struct Gate {
    /// Pod CIDRs of the peer's nodes as stored, by node key.
    nodes: BTreeMap<String, Vec<Cidr>>,
    /// Backend IPs of the written services.
    services: BTreeMap<RecordId, Vec<IpAddr>>,
    pending: BTreeMap<RecordId, Held>,
    dirty: bool,
}

impl Gate {
    fn covered(&self, ips: &[IpAddr]) -> bool {
        ips.iter()
            .all(|ip| self.nodes.values().flatten().any(|c| c.contains(ip)))
    }

    /// A record already in the store (seeding).
    pub fn seed(&mut self, id: &RecordId, value: &Bytes) {
        match id.0 {
            Kind::Node => {
                self.nodes
                    .insert(id.2.clone(), crate::cidr::node_pod_cidrs(value));
            }
            Kind::Service => {
                if let Some(ips) = covered_ips(id.0, value) {
                    self.services.insert(id.clone(), ips);
                }
            }
            _ => {}
        }
    }

    /// An upsert the rules passed: written at once, or held pending.
    pub fn upsert(&mut self, id: &RecordId, value: &Bytes) -> Verdict {
        if id.0 == Kind::Node {
            let cidrs = crate::cidr::node_pod_cidrs(value);
            if self.nodes.get(&id.2) != Some(&cidrs) {
                self.nodes.insert(id.2.clone(), cidrs);
                self.dirty = true;
            }
            return Verdict::Admit;
        }
        let Some(ips) = covered_ips(id.0, value) else {
            return Verdict::Admit;
        };
        self.pending.remove(id);
        let was_service = self.services.remove(id).is_some();
        if self.covered(&ips) {
            if id.0 == Kind::Service {
                self.services.insert(id.clone(), ips);
            }
            return Verdict::Admit;
        }
        self.hold(id.clone(), value, ips);
        // An endpoint's key is its IP (a backend record's key ends with
        // it), so its coverage changes only with the peer's nodes, and every
        // such change withdraws what it uncovers: an uncovered endpoint that
        // is not pending was never written.
        Verdict::Pending {
            was_written: was_service,
        }
    }

    fn hold(&mut self, id: RecordId, value: &Bytes, ips: Vec<IpAddr>) {
        // A copy: the value may be a slice of a whole received chunk.
        let value = Bytes::copy_from_slice(value);
        self.pending.insert(id, Held { ips, value });
    }

    /// A withdrawn record ([`GateOp::Withdraw`]) waits again, with its value.
    pub fn hold_withdrawn(&mut self, id: RecordId, value: &Bytes) {
        let ips = covered_ips(id.0, value).unwrap_or_default();
        self.hold(id, value, ips);
    }

    /// Records of `kind` held pending.
    pub fn pending_of(&self, kind: Kind) -> usize {
        self.pending.keys().filter(|id| id.0 == kind).count()
    }

    /// Whether `id` is held pending (so not in the store).
    pub fn is_pending(&self, id: &RecordId) -> bool {
        self.pending.contains_key(id)
    }

    /// `id` is gone: the peer dropped it (pending) or it was deleted from the store.
    pub fn deleted(&mut self, id: &RecordId) {
        if id.0 == Kind::Node {
            if self.nodes.remove(&id.2).is_some() {
                self.dirty = true;
            }
        } else {
            self.services.remove(id);
            self.pending.remove(id);
        }
    }

    /// After the peer's nodes changed: the pending records now covered are
    /// to be written, the written ones no longer covered withdrawn.
    /// `records` are the (kind, key) of what the mirror holds of this peer
    /// (written endpoints among them).
    pub fn recheck<'a>(
        &mut self,
        cluster: &str,
        records: impl Iterator<Item = (Kind, KeyRef<'a>)>,
    ) -> Vec<GateOp> {
        if !std::mem::take(&mut self.dirty) {
            return Vec::new();
        }
        let mut ops = Vec::new();
        for (kind, key) in records {
            if keyed_by_ip(kind) && !key_ip(kind, key).is_some_and(|ip| self.covered(&[ip])) {
                let id = (kind, cluster.to_owned(), key.to_string());
                if !self.pending.contains_key(&id) {
                    ops.push(GateOp::Withdraw(id));
                }
            }
        }
        let lost: Vec<RecordId> = self
            .services
            .iter()
            .filter(|(_, ips)| !self.covered(ips))
            .map(|(id, _)| id.clone())
            .collect();
        for id in lost {
            self.services.remove(&id);
            ops.push(GateOp::Withdraw(id));
        }
        let won: Vec<RecordId> = self
            .pending
            .iter()
            .filter(|(_, h)| self.covered(&h.ips))
            .map(|(id, _)| id.clone())
            .collect();
        for id in won {
            if let Some(h) = self.pending.remove(&id) {
                if id.0 == Kind::Service {
                    self.services.insert(id.clone(), h.ips);
                }
                ops.push(GateOp::Put(id, h.value));
            }
        }
        ops
    }

    /// Makes the next [`Gate::recheck`] look at everything (after seeding).
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    pub fn clear(&mut self) {
        *self = Gate::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clustermesh_proto::v1::{Endpoint, Node};
    use prost::Message;

    fn node(cidr: &str) -> Bytes {
        Node {
            name: "n".into(),
            pod_cidrs: vec![cidr.into()],
            cluster: "a".into(),
            ..Default::default()
        }
        .encode_to_vec()
        .into()
    }
    fn ep(ip: &str) -> Bytes {
        Endpoint {
            ip: ip.into(),
            cluster: "a".into(),
            ..Default::default()
        }
        .encode_to_vec()
        .into()
    }
    fn id(kind: Kind, key: &str) -> RecordId {
        (kind, "a".into(), key.into())
    }

    #[test]
    fn order_does_not_matter() {
        let (n, e) = (id(Kind::Node, "n"), id(Kind::Endpoint, "10.1.0.5"));
        // Endpoint first: pending, then admitted by its node.
        let mut g = Gate::default();
        assert_eq!(
            g.upsert(&e, &ep("10.1.0.5")),
            Verdict::Pending { was_written: false }
        );
        assert!(g.is_pending(&e));
        assert_eq!(g.upsert(&n, &node("10.1.0.0/16")), Verdict::Admit);
        // As a digest mirror gives them back: an endpoint's key as its address.
        let mirror = [
            (n.0, KeyRef::Text(&n.2)),
            (e.0, KeyRef::Ipv4([10, 1, 0, 5].into())),
        ];
        assert_eq!(
            g.recheck("a", mirror.into_iter()),
            vec![GateOp::Put(e.clone(), ep("10.1.0.5"))]
        );
        assert_eq!(g.pending_count(), 0);
        // Node first: admitted at once.
        let mut h = Gate::default();
        h.upsert(&n, &node("10.1.0.0/16"));
        assert!(h.recheck("a", mirror.into_iter()).is_empty());
        assert_eq!(h.upsert(&e, &ep("10.1.0.5")), Verdict::Admit);
        // The node goes: the endpoint is withdrawn and waits again.
        g.deleted(&n);
        assert_eq!(
            g.recheck("a", mirror.into_iter()),
            vec![GateOp::Withdraw(e.clone())]
        );
        g.hold_withdrawn(e.clone(), &ep("10.1.0.5"));
        assert!(g.is_pending(&e));
        g.upsert(&n, &node("10.1.0.0/16"));
        assert_eq!(
            g.recheck("a", mirror.into_iter()),
            vec![GateOp::Put(e.clone(), ep("10.1.0.5"))]
        );
        // A node that narrows its range likewise.
        h.upsert(&n, &node("10.2.0.0/16"));
        assert_eq!(
            h.recheck("a", mirror.into_iter()),
            vec![GateOp::Withdraw(e.clone())]
        );
    }
}
