//! The one rule that depends on the peer's other records: an endpoint IP
//! and every backend IP of a service must lie inside a pod CIDR the same
//! peer announces in its own Node records.
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
//! The gate keeps a copy of each written or pending endpoint and service
//! (the mirror keeps only digests), so it can write or re-admit them without
//! asking the peer again.

use std::collections::BTreeMap;
use std::net::IpAddr;

use bytes::Bytes;
use clustermesh_proto::mirror::RecordId;
use clustermesh_proto::v1::Kind;

use super::records::covered_ips;
use super::{Cidr, Context};

#[derive(Debug, Clone)]
struct Held {
    ips: Vec<IpAddr>,
    value: Bytes,
}

/// What the gate asks the cache to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateOp {
    Put(RecordId, Bytes),
    Delete(RecordId),
}

/// What became of an upsert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write it.
    Admit,
    /// Held pending; `was_written`: an older version is in the store and must go.
    Pending { was_written: bool },
}

#[derive(Debug, Default)]
pub struct Gate {
    /// Pod CIDRs of the peer's nodes as stored, by node key.
    nodes: BTreeMap<String, Vec<Cidr>>,
    written: BTreeMap<RecordId, Held>,
    pending: BTreeMap<RecordId, Held>,
    dirty: bool,
}

impl Gate {
    fn covered(&self, ips: &[IpAddr]) -> bool {
        ips.iter()
            .all(|ip| self.nodes.values().flatten().any(|c| c.contains(ip)))
    }

    fn held(kind: Kind, value: &Bytes) -> Option<Held> {
        covered_ips(kind, value).map(|ips| Held {
            ips,
            // A copy: the value may be a slice of a whole received chunk.
            value: Bytes::copy_from_slice(value),
        })
    }

    /// A record already in the store (seeding).
    pub fn seed(&mut self, id: RecordId, value: &Bytes) {
        if id.0 == Kind::Node {
            self.nodes
                .insert(id.2.clone(), Context::pod_cidrs([value.as_ref()]));
        } else if let Some(h) = Self::held(id.0, value) {
            self.written.insert(id, h);
        }
    }

    /// An upsert the rules passed: written at once, or held pending.
    pub fn upsert(&mut self, id: &RecordId, value: &Bytes) -> Verdict {
        if id.0 == Kind::Node {
            let cidrs = Context::pod_cidrs([value.as_ref()]);
            if self.nodes.get(&id.2) != Some(&cidrs) {
                self.nodes.insert(id.2.clone(), cidrs);
                self.dirty = true;
            }
            return Verdict::Admit;
        }
        let Some(h) = Self::held(id.0, value) else {
            return Verdict::Admit;
        };
        if self.covered(&h.ips) {
            self.pending.remove(id);
            self.written.insert(id.clone(), h);
            Verdict::Admit
        } else {
            self.pending.insert(id.clone(), h);
            Verdict::Pending {
                was_written: self.written.remove(id).is_some(),
            }
        }
    }

    /// Whether `id` is held pending (so not in the store).
    pub fn is_pending(&self, id: &RecordId) -> bool {
        self.pending.contains_key(id)
    }

    /// The peer dropped `id`, and it was pending: forget it.
    pub fn forget_pending(&mut self, id: &RecordId) {
        self.pending.remove(id);
    }

    /// `id` was deleted from the store.
    pub fn deleted(&mut self, id: &RecordId) {
        if id.0 == Kind::Node {
            if self.nodes.remove(&id.2).is_some() {
                self.dirty = true;
            }
        } else {
            self.written.remove(id);
            self.pending.remove(id);
        }
    }

    /// After the peer's nodes changed: the pending records now covered are
    /// written, the written ones no longer covered are deleted (and pending).
    pub fn recheck(&mut self) -> Vec<GateOp> {
        if !std::mem::take(&mut self.dirty) {
            return Vec::new();
        }
        let mut ops = Vec::new();
        let lost: Vec<RecordId> = self
            .written
            .iter()
            .filter(|(_, h)| !self.covered(&h.ips))
            .map(|(id, _)| id.clone())
            .collect();
        let won: Vec<RecordId> = self
            .pending
            .iter()
            .filter(|(_, h)| self.covered(&h.ips))
            .map(|(id, _)| id.clone())
            .collect();
        for id in lost {
            if let Some(h) = self.written.remove(&id) {
                ops.push(GateOp::Delete(id.clone()));
                self.pending.insert(id, h);
            }
        }
        for id in won {
            if let Some(h) = self.pending.remove(&id) {
                ops.push(GateOp::Put(id.clone(), h.value.clone()));
                self.written.insert(id, h);
            }
        }
        ops
    }

    /// Pending records, per kind.
    pub fn pending_ids(&self) -> impl Iterator<Item = &RecordId> {
        self.pending.keys()
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
        assert_eq!(g.recheck(), vec![GateOp::Put(e.clone(), ep("10.1.0.5"))]);
        assert_eq!(g.pending_count(), 0);
        // Node first: admitted at once.
        let mut h = Gate::default();
        h.upsert(&n, &node("10.1.0.0/16"));
        assert!(h.recheck().is_empty());
        assert_eq!(h.upsert(&e, &ep("10.1.0.5")), Verdict::Admit);
        // The node goes: the endpoint leaves the store and waits again.
        g.deleted(&n);
        assert_eq!(g.recheck(), vec![GateOp::Delete(e.clone())]);
        assert!(g.is_pending(&e));
        // A node that narrows its range likewise.
        h.upsert(&n, &node("10.2.0.0/16"));
        assert_eq!(h.recheck(), vec![GateOp::Delete(e.clone())]);
        assert_eq!(
            h.upsert(&e, &ep("10.1.0.6")),
            Verdict::Pending { was_written: false }
        );
    }
}
