//! A peer's cache seeded from what the store already holds: the first
//! snapshot after a restart, a leader change or a reconnect then writes
//! only real differences.

use super::*;

impl PeerCache {
    /// A cache holding `records` (cache keys and values read from the store)
    /// and `synced` (the peer's sync markers in the store).
    pub fn seeded(peer: PeerRef, records: Vec<Kv>, synced: Vec<Kv>) -> PeerCache {
        Self::seeded_checked(peer, records, synced, None).0
    }

    /// Like [`PeerCache::seeded`], and with `ctx` the stored records pass the
    /// ingest rules again (they may have been written by an older version, or
    /// before this cluster's ranges changed): a refused record is left out and
    /// its delete returned; an endpoint or service that no stored node of the
    /// peer covers is deleted too and waits pending.
    pub fn seeded_checked(
        peer: PeerRef,
        records: Vec<Kv>,
        synced: Vec<Kv>,
        ctx: Option<&Context>,
    ) -> (PeerCache, Vec<WriteOp>, Vec<RejectError>) {
        let mut mirror = DigestMirror::compact().streaming_into_empty();
        let mut gate = Gate::default();
        let mut held = Quota::default();
        let mut ops = Vec::new();
        let mut refused = Vec::new();
        for kv in &records {
            if let keys::StoreKey::Record {
                kind, cluster, key, ..
            } = keys::parse(&kv.key)
                && cluster == peer.name
            {
                if let Some(ctx) = ctx {
                    let e = Event {
                        r#type: EventType::Upsert as i32,
                        kind: kind as i32,
                        cluster: cluster.to_owned(),
                        key: key.to_owned(),
                        value: kv.value.clone(),
                        revision: 0,
                        origin_unix_micros: None,
                    };
                    if let Err(err) = peer.check(&e, ctx) {
                        ops.push(WriteOp::delete(kv.key.clone()));
                        refused.push(err);
                        continue;
                    }
                }
                let id = (kind, cluster.to_owned(), key.to_owned());
                gate.seed(&id, &kv.value);
                // The mirror and the quota hold the origin's bytes, without our stamp.
                let (origin, _) = stamp::split(&kv.value);
                held.seed(&id, quota::cost(&id, origin.len()));
                mirror.seed(id, &origin);
            }
        }
        mirror.records.repack();
        held.repack();
        for kv in synced {
            if let keys::StoreKey::Synced { cluster, kind } = keys::parse(&kv.key)
                && cluster == peer.name
            {
                mirror.synced.insert((cluster.to_owned(), kind));
            }
        }
        let mut c = PeerCache {
            peer,
            mirror,
            deferred: BTreeMap::new(),
            gate,
            quota: held,
            fresh_snapshot: false,
            import_policies: true,
            lookup: None,
            attest: Attestations::default(),
            implied_backends: false,
        };
        if ctx.is_some() {
            c.gate.mark_dirty();
            let lost: BTreeSet<RecordId> = c
                .gate
                .recheck(
                    &c.peer.name,
                    c.mirror.records.ids().map(|(k, _, key)| (k, key)),
                )
                .into_iter()
                .filter_map(|op| match op {
                    GateOp::Withdraw(id) => Some(id),
                    GateOp::Put(..) => None,
                })
                .collect();
            for kv in &records {
                if let keys::StoreKey::Record {
                    kind, cluster, key, ..
                } = keys::parse(&kv.key)
                {
                    let id = (kind, cluster.to_owned(), key.to_owned());
                    if lost.contains(&id) {
                        c.gate.hold_withdrawn(id, &kv.value);
                        ops.push(WriteOp::delete(kv.key.clone()));
                    }
                }
            }
        }
        (c, ops, refused)
    }
}
