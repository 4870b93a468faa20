//! What the exporter wants in the store, as key → bytes, and the writes that
//! take the store from what is written to it: for every record at the start
//! of a term ([`want_all`], [`diff_all`]), for the changed keys only after
//! that ([`want_keys`], [`diff_keys`]). Pure, so the benchmark drives it too.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use clustermesh_proto::v1::{self, Kind};
use clustermesh_proto::{backends, keys};
use prost::Message;

use crate::source::{Desired, Dirty};
use crate::store::WriteOp;

/// Everything the records are encoded with.
pub struct Wanted<'a> {
    pub desired: &'a Desired,
    /// digest → identity.
    pub index: &'a BTreeMap<String, u32>,
    /// Gateway nodes whose agents hold a live lease.
    pub live: &'a BTreeSet<String>,
    pub cluster: &'a str,
}

impl Wanted<'_> {
    fn node(&self, name: &str) -> Option<Bytes> {
        let n = self.desired.nodes.get(name)?;
        if n.gateway {
            // A gateway is usable only while its agent holds its lease.
            let mut n = n.clone();
            n.gateway_live = Some(self.live.contains(name));
            Some(n.encode_to_vec().into())
        } else {
            Some(n.encode_to_vec().into())
        }
    }

    fn endpoint(&self, ip: &str) -> Option<Bytes> {
        let pe = self.desired.endpoints.get(ip)?;
        let id = self.index.get(&pe.labels_digest)?;
        let mut ep = pe.endpoint.clone();
        ep.identity = *id;
        Some(ep.encode_to_vec().into())
    }

    /// The identity's key and record, if it is in use and allocated.
    fn identity(&self, digest: &str) -> Option<(String, Bytes)> {
        let (labels, exported) = self.desired.identities.get(digest)?;
        let id = self.index.get(digest)?;
        let rec = v1::Identity {
            id: *id,
            labels: labels.clone(),
            cluster: self.cluster.to_string(),
            exported: *exported,
        };
        Some((
            self.key(Kind::Identity, &id.to_string()),
            rec.encode_to_vec().into(),
        ))
    }

    /// A service's record as written: without its backends.
    fn service(&self, key: &str) -> Option<Bytes> {
        let s = self.desired.services.get(key)?;
        Some(backends::without_backends(s).encode_to_vec().into())
    }

    /// The record of one backend (`<namespace>/<service>/<ip>`).
    fn backend(&self, key: &str) -> Option<Bytes> {
        let (ns, svc, ip) = backends::split_key(key)?;
        let s = self.desired.services.get(&format!("{ns}/{svc}"))?;
        // Sorted by IP (services::merge_backends).
        let want = backends::ip_order(ip);
        let i = s
            .backends
            .binary_search_by(|b| backends::ip_order(&b.ip).cmp(&want))
            .ok()?;
        Some(backends::record(s, &s.backends[i]).encode_to_vec().into())
    }

    fn key(&self, kind: Kind, key: &str) -> String {
        keys::state(kind, self.cluster, key)
    }
}

/// Every record's key and bytes (identities only while in use).
pub fn want_all(w: &Wanted) -> BTreeMap<String, Bytes> {
    let d = w.desired;
    let mut want = BTreeMap::new();
    let mut put = |key: String, v: Option<Bytes>| {
        if let Some(v) = v {
            want.insert(key, v);
        }
    };
    for name in d.nodes.keys() {
        put(w.key(Kind::Node, name), w.node(name));
    }
    for (key, s) in &d.services {
        put(w.key(Kind::Service, key), w.service(key));
        for b in &s.backends {
            let rec = backends::record(s, b);
            put(
                w.key(
                    Kind::ServiceBackend,
                    &backends::key(&s.namespace, &s.name, &b.ip),
                ),
                Some(rec.encode_to_vec().into()),
            );
        }
    }
    for (key, p) in &d.policies {
        put(w.key(Kind::Policy, key), Some(p.encode_to_vec().into()));
    }
    for ip in d.endpoints.keys() {
        put(w.key(Kind::Endpoint, ip), w.endpoint(ip));
    }
    for digest in d.identities.keys() {
        if let Some((k, v)) = w.identity(digest) {
            want.insert(k, v);
        }
    }
    want
}

/// The store keys of changed records with what they should hold (`None`:
/// nothing). Identities no longer in use are left out: they stay as written
/// through the grace period and are then released.
pub fn want_keys(w: &Wanted, dirty: &Dirty) -> Vec<(String, Option<Bytes>)> {
    let d = w.desired;
    let mut out = Vec::with_capacity(dirty.len());
    for name in &dirty.nodes {
        out.push((w.key(Kind::Node, name), w.node(name)));
    }
    for key in &dirty.services {
        out.push((w.key(Kind::Service, key), w.service(key)));
    }
    for key in &dirty.backends {
        out.push((w.key(Kind::ServiceBackend, key), w.backend(key)));
    }
    for key in &dirty.policies {
        let v = d.policies.get(key).map(|p| p.encode_to_vec().into());
        out.push((w.key(Kind::Policy, key), v));
    }
    for ip in &dirty.endpoints {
        out.push((w.key(Kind::Endpoint, ip), w.endpoint(ip)));
    }
    for digest in &dirty.identities {
        if let Some((k, v)) = w.identity(digest) {
            out.push((k, Some(v)));
        }
    }
    out
}

/// The writes from `written` to `want` (keys in `released` are deleted by
/// their release). Refused records are offered again only once they change.
pub fn diff_all(
    want: &BTreeMap<String, Bytes>,
    written: &BTreeMap<String, Bytes>,
    refused: &mut BTreeMap<String, Bytes>,
    released: &BTreeSet<&String>,
) -> Vec<WriteOp> {
    let mut ops = Vec::new();
    refused.retain(|k, v| want.get(k) == Some(v));
    for (k, v) in want {
        if written.get(k) != Some(v) && !refused.contains_key(k) {
            ops.push(WriteOp::put(k.clone(), v.clone()));
        }
    }
    for k in written.keys() {
        if !want.contains_key(k) && !released.contains(k) {
            ops.push(WriteOp::delete(k.clone()));
        }
    }
    ops
}

/// The writes for changed keys only: the same rules as [`diff_all`] for
/// these keys (every other key's wanted value is unchanged).
pub fn diff_keys(
    changes: Vec<(String, Option<Bytes>)>,
    written: &BTreeMap<String, Bytes>,
    refused: &mut BTreeMap<String, Bytes>,
) -> Vec<WriteOp> {
    let mut ops = Vec::new();
    for (k, v) in changes {
        if refused.get(&k).is_some_and(|r| v.as_ref() != Some(r)) {
            refused.remove(&k);
        }
        match v {
            Some(v) => {
                if written.get(&k) != Some(&v) && !refused.contains_key(&k) {
                    ops.push(WriteOp::put(k, v));
                }
            }
            None => {
                if written.contains_key(&k) {
                    ops.push(WriteOp::delete(k));
                }
            }
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::source::Records;
    use crate::source::records::tests::{random_object, random_ref};

    fn apply(written: &mut BTreeMap<String, Bytes>, ops: Vec<WriteOp>) {
        for op in ops {
            match op {
                WriteOp::Put { key, value } => {
                    written.insert(key, value);
                }
                WriteOp::Delete { key } => {
                    written.remove(&key);
                }
                WriteOp::DeletePrefix { .. } => {}
            }
        }
    }

    /// Diffing only the dirty keys after every change leaves the store as
    /// a full diff would (identities out of use stay until released).
    #[test]
    fn diffing_dirty_keys_keeps_the_store_equal_to_a_full_diff() {
        for seed in 0..100u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut rec = Records::new("c1");
            let mut index: BTreeMap<String, u32> = BTreeMap::new();
            let mut written = BTreeMap::new();
            let mut live = BTreeSet::new();
            for step in 0..120 {
                if rng.random_bool(0.7) {
                    rec.apply(random_object(&mut rng));
                } else {
                    rec.delete(&random_ref(&mut rng));
                }
                let mut dirty = rec.take_dirty();
                if rng.random_bool(0.1) {
                    let n = ["n0", "n1", "n2"][rng.random_range(0..3)].to_string();
                    if !live.remove(&n) {
                        live.insert(n.clone());
                    }
                    dirty.nodes.insert(n);
                }
                for d in rec.desired().identities.keys() {
                    let next = 256 + index.len() as u32;
                    index.entry(d.clone()).or_insert(next);
                }
                let w = Wanted {
                    desired: rec.desired(),
                    index: &index,
                    live: &live,
                    cluster: "c1",
                };
                let mut refused = BTreeMap::new();
                let ops = diff_keys(want_keys(&w, &dirty), &written, &mut refused);
                apply(&mut written, ops);
                let full = want_all(&w);
                let identity_prefix = keys::state_prefix(Kind::Identity, "c1");
                let kept: BTreeMap<String, Bytes> = written
                    .iter()
                    .filter(|(k, _)| !k.starts_with(&identity_prefix) || full.contains_key(*k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                assert_eq!(kept, full, "seed {seed} step {step}");
            }
        }
    }
}
