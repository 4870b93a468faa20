//! One peer's mirrored records: a [`Mirror`] seeded from what the store
//! already holds under `cache/<kind>/<peer>/` and `synced/<peer>/`, fed with
//! the peer's (validated) Watch batches, turned into the exact store writes.
//!
//! Because the mirror starts from the store, the first snapshot after an
//! apiserver restart, a leader change or a reconnect writes only real
//! differences: an unchanged record is never deleted and re-added.
//!
//! A snapshot that replaces everything (the peer's store was wiped, or we
//! could not resume) may come from a peer that is still rebuilding. Records
//! of a kind the peer has not yet marked synced are therefore not swept at
//! the end of that snapshot: their delete waits until the peer marks the kind
//! synced (then only what is still missing goes), or at most `sweep_grace`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clustermesh_proto::mirror::{Change, DigestMirror, RecordId};
use clustermesh_proto::v1::{
    BatchType, Event, EventType, Kind, RecordCount, SyncMismatch, SyncedMarker, WatchBatch,
};
use clustermesh_proto::{RECORD_KINDS, v1::ResumePoint};
use clustermesh_proto::{keys, stamp};
use prost::Message;
use tokio::time::Instant;
use tracing::warn;

use super::attest::Attestations;
use super::ingest::gate::{Gate, GateOp, Verdict};
use super::ingest::quota::{self, Quota};
use super::ingest::{Context, PeerRef, RejectError};
use crate::store::{Kv, WriteOp};
use crate::view::View;

mod seed;

/// What applying one batch produced.
#[derive(Debug, Default)]
pub struct Applied {
    pub ops: Vec<WriteOp>,
    pub rejected: Vec<RejectError>,
    /// Records that became pending (held back until a node covers them).
    pub pending: Vec<RecordId>,
    /// Records a node change took out of the store whose value was not at
    /// hand (neither in this write nor in the view): the caller reads each
    /// from the store and hands it to [`PeerCache::resolve`].
    pub unresolved: Vec<RecordId>,
    pub snapshot_done: bool,
    /// The server cut the stream and asked for a resync.
    pub resync: Option<String>,
    /// The snapshot replaced everything (resume was not possible).
    pub reset: bool,
}

pub struct PeerCache {
    peer: PeerRef,
    mirror: DigestMirror,
    /// Records kept in the store after a snapshot dropped them, until the
    /// peer marks their kind synced or the deadline passes.
    deferred: BTreeMap<RecordId, Instant>,
    /// Endpoints and services waiting for a node of the peer (ingest rules).
    gate: Gate,
    /// What the peer holds here against its quota (written, pending, deferred).
    quota: Quota,
    /// The next Watch starts with a full snapshot (see [`PeerCache::want_snapshot`]).
    fresh_snapshot: bool,
    /// Whether the peer's policies are mirrored (`connect --import-policies`);
    /// otherwise its policy events and markers are ignored.
    import_policies: bool,
    /// Reads a stored value back (the view; see [`PeerCache::with_view`]).
    lookup: Option<Lookup>,
    /// What the peer's markers attest, compared with what was mirrored.
    attest: Attestations,
    /// The peer does not advertise `service-backends` (an older version):
    /// it sends no backend records and no `backends` marker, so its
    /// `services` marker stands for both (see [`PeerCache::set_backend_records`]).
    implied_backends: bool,
}

/// Reads the value stored under a full key.
pub type Lookup = Arc<dyn Fn(&str) -> Option<Bytes> + Send + Sync>;

impl PeerCache {
    /// Where a written record's value is read back when a node change takes
    /// it out of the store again (it then waits with that value).
    pub fn with_view(self, view: Arc<View>) -> Self {
        self.with_lookup(Arc::new(move |key: &str| view.get(key).map(|e| e.value)))
    }

    /// The peer's quota (every field set; see [`clustermesh_proto::quota::or_defaults`]).
    pub fn with_quota(mut self, limits: clustermesh_proto::v1::PeerQuota) -> Self {
        self.quota.set_limits(limits);
        self
    }

    /// Whether the peer's policies are mirrored (default yes; the peer loop
    /// sets the registration's `import_policies`).
    pub fn with_import_policies(mut self, import: bool) -> Self {
        self.import_policies = import;
        self
    }

    /// Whether the peer sends its backends as records (its ClusterInfo
    /// advertises [`clustermesh_proto::backends::CAPABILITY`]). A peer that
    /// does not (an older version) never sends a `backends` marker: its
    /// `services` marker then stands for both, and a `backends` marker is
    /// written and removed with it here, so the peer is shown synced like
    /// any other (docs/mesh.md "Service backends"). Returns the marker to
    /// write when the services marker is already held.
    pub fn set_backend_records(&mut self, sends_records: bool) -> Vec<WriteOp> {
        self.implied_backends = !sends_records;
        let has = |k: Kind| self.mirror.synced.contains(&(self.peer.name.clone(), k));
        if self.implied_backends && has(Kind::Service) && !has(Kind::ServiceBackend) {
            self.mirror
                .synced
                .insert((self.peer.name.clone(), Kind::ServiceBackend));
            return vec![self.marker(Kind::ServiceBackend)];
        }
        Vec::new()
    }

    /// An older peer's `services` marker events, each followed by the same
    /// for `backends` (see [`PeerCache::set_backend_records`]).
    fn imply_backend_markers(&self, batch: &mut WatchBatch) {
        if !self.implied_backends
            || !batch.events.iter().any(|e| {
                e.kind == Kind::Service as i32
                    && matches!(
                        EventType::try_from(e.r#type),
                        Ok(EventType::Synced | EventType::Unsynced)
                    )
            })
        {
            return;
        }
        let mut out = Vec::with_capacity(batch.events.len() + 1);
        for e in std::mem::take(&mut batch.events) {
            let implied = (e.kind == Kind::Service as i32
                && matches!(
                    EventType::try_from(e.r#type),
                    Ok(EventType::Synced | EventType::Unsynced)
                ))
            .then(|| Event {
                kind: Kind::ServiceBackend as i32,
                value: if e.r#type == EventType::Synced as i32 {
                    SyncedMarker {
                        cluster: e.cluster.clone(),
                        kind: Kind::ServiceBackend as i32,
                        records: 0,
                        unix_millis: clustermesh_proto::clock::unix_millis(),
                        digest: None,
                    }
                    .encode_to_vec()
                    .into()
                } else {
                    Bytes::new()
                },
                ..e.clone()
            });
            out.push(e);
            out.extend(implied);
        }
        batch.events = out;
    }

    /// What the peer holds here against its quota.
    pub fn quota(&self) -> &Quota {
        &self.quota
    }

    pub fn with_lookup(mut self, lookup: Lookup) -> Self {
        self.lookup = Some(lookup);
        self
    }

    /// The store prefixes a seed reads.
    pub fn seed_prefixes(peer: &str) -> (Vec<String>, String) {
        (
            RECORD_KINDS
                .iter()
                .map(|k| keys::cache_prefix(*k, peer))
                .collect(),
            keys::synced_prefix(peer),
        )
    }

    /// Where the next Watch resumes; None (a full snapshot) after
    /// [`PeerCache::want_snapshot`] until that snapshot begins.
    pub fn resume_point(&self) -> Option<ResumePoint> {
        if self.fresh_snapshot {
            return None;
        }
        self.mirror.resume_point()
    }

    /// The next Watch asks for a full snapshot (no resume point).
    pub fn want_snapshot(&mut self) {
        self.fresh_snapshot = true;
    }

    /// Kinds the peer marked synced and whose marker attested what was
    /// mirrored (or carried no digest).
    pub fn synced_kinds(&self) -> Vec<Kind> {
        self.mirror
            .synced
            .iter()
            .map(|(_, k)| *k)
            .filter(|k| !self.attest.is_mismatched(*k))
            .collect()
    }

    /// Markers that did not attest what was mirrored.
    pub fn mismatches(&self) -> Vec<SyncMismatch> {
        self.attest.mismatches()
    }

    /// Records held in the store for this peer, per kind.
    pub fn counts(&self) -> Vec<RecordCount> {
        let mut n: BTreeMap<Kind, u64> = BTreeMap::new();
        for kind in RECORD_KINDS {
            let stored = self.stored(kind);
            if stored > 0 {
                n.insert(kind, stored);
            }
        }
        for (kind, _, _) in self.deferred.keys() {
            *n.entry(*kind).or_default() += 1;
        }
        n.into_iter()
            .map(|(kind, count)| RecordCount {
                cluster: self.peer.name.clone(),
                kind: kind as i32,
                count,
            })
            .collect()
    }

    /// Mirrored records of `kind` in the store (not pending).
    fn stored(&self, kind: Kind) -> u64 {
        let mirrored = self.mirror.records.count(&self.peer.name, kind);
        mirrored.saturating_sub(self.gate.pending_of(kind)) as u64
    }

    /// Records held pending (neither written nor refused).
    pub fn pending(&self) -> usize {
        self.gate.pending_count()
    }

    pub fn is_empty(&self) -> bool {
        self.mirror.records.is_empty() && self.deferred.is_empty() && self.mirror.synced.is_empty()
    }

    /// The earliest deferred delete, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deferred.values().min().copied()
    }

    /// Validates and applies one batch. Rejected events are dropped (a
    /// rejected update of a known record deletes it: the peer no longer has
    /// a valid version of it).
    pub fn apply(
        &mut self,
        mut batch: WatchBatch,
        now: Instant,
        sweep_grace: Duration,
        ctx: &Context,
    ) -> Applied {
        let mut out = Applied::default();
        let t = BatchType::try_from(batch.r#type).unwrap_or(BatchType::Unspecified);
        if t == BatchType::SnapshotBegin {
            self.attest.snapshot_begins();
        }
        // Origin stamps of live upserts: written with the record (field 13).
        let mut stamps: BTreeMap<RecordId, i64> = BTreeMap::new();
        if !self.import_policies {
            // Not asked for (see session.rs); a peer that sends them anyway is ignored.
            batch.events.retain(|e| e.kind != Kind::Policy as i32);
        }
        if matches!(t, BatchType::Snapshot | BatchType::Events) {
            self.imply_backend_markers(&mut batch);
            let events = std::mem::take(&mut batch.events);
            for mut e in events {
                let id = (
                    Kind::try_from(e.kind).unwrap_or(Kind::Unspecified),
                    e.cluster.clone(),
                    e.key.clone(),
                );
                let record = matches!(
                    EventType::try_from(e.r#type),
                    Ok(EventType::Upsert | EventType::Delete)
                );
                match self.peer.check(&e, ctx) {
                    Ok(()) => {
                        if record {
                            self.attest.accepted(&id);
                        }
                        // Only live changes are stamped (a snapshot's are not changes).
                        if let Some(at) = e.origin_unix_micros
                            && e.r#type == EventType::Upsert as i32
                            && t == BatchType::Events
                        {
                            stamps.insert(id, at);
                        }
                        batch.events.push(e)
                    }
                    Err(err) => {
                        if e.cluster == self.peer.name && e.r#type == EventType::Upsert as i32 {
                            self.attest.refused(id, &e.value);
                        }
                        if t == BatchType::Events
                            && e.r#type == EventType::Upsert as i32
                            && e.cluster == self.peer.name
                        {
                            e.r#type = EventType::Delete as i32;
                            e.value = Bytes::new();
                            batch.events.push(e);
                        }
                        out.rejected.push(err);
                    }
                }
            }
        }
        if t == BatchType::SnapshotBegin {
            out.reset = batch.reset;
            self.fresh_snapshot = false;
            self.quota.snapshot_begin();
        }
        let mut outcome = self.mirror.apply(&batch);
        if outcome.snapshot_done {
            // A snapshot's deletes first: a peer that replaced records is
            // not refused for quota by the records it no longer has. (Each
            // record appears once in a snapshot's changes, so order between
            // records does not matter otherwise.)
            outcome
                .changes
                .sort_by_key(|c| !matches!(c, Change::Delete { .. }));
        }
        out.snapshot_done = outcome.snapshot_done;
        out.resync = outcome.resync;
        let changed =
            self.attest
                .evaluate(&self.peer.name, &outcome.attested, outcome.snapshot_done);
        let mut newly_synced = BTreeSet::new();
        // The position of each record's last change in this batch, and the
        // records a quota refusal took out of the mirror meanwhile.
        let last: BTreeMap<RecordId, usize> = outcome
            .changes
            .iter()
            .enumerate()
            .filter_map(|(i, c)| match c {
                Change::Upsert { id, .. } | Change::Delete { id } => Some((id.clone(), i)),
                _ => None,
            })
            .collect();
        let mut refused_out: BTreeSet<RecordId> = BTreeSet::new();
        for (index, change) in outcome.changes.into_iter().enumerate() {
            match change {
                Change::Upsert { id, value } => {
                    let key = keys::cache(id.0, &self.peer.name, &id.2);
                    // In the store before this upsert (written or deferred).
                    let in_store = self.quota.holds(&id) && !self.gate.is_pending(&id);
                    if let Err(r) = self.quota.admit(&id, quota::cost(&id, value.len())) {
                        // Not written and not remembered: a resend is checked again.
                        // The peer did send it: its markers count it (attested sync).
                        self.attest.refused(id.clone(), &value);
                        if self.mirror.records.remove(&id).is_some() {
                            refused_out.insert(id.clone());
                        }
                        if r.was_held {
                            let written = !self.gate.is_pending(&id);
                            self.gate.deleted(&id);
                            if written {
                                out.ops.push(WriteOp::delete(key));
                            }
                        }
                        self.deferred.remove(&id);
                        out.rejected.push(r.error);
                        continue;
                    }
                    self.deferred.remove(&id);
                    // An earlier change of this record in the same batch was
                    // refused (quota) and took it out of the mirror; this
                    // later one is admitted, and when it is the batch's last
                    // word on the record the mirror holds it again (else the
                    // store would hold a record the books do not). A later
                    // delete in the batch has the mirror's agreement already.
                    if last.get(&id) == Some(&index) && refused_out.remove(&id) {
                        self.mirror.seed(id.clone(), &value);
                    }
                    // Held now: not among the peer's refused records (an
                    // earlier refusal in this batch may have put it there).
                    self.attest.accepted(&id);
                    let value = match stamps.get(&id) {
                        Some(at) => stamp::append(&value, *at),
                        None => value,
                    };
                    match self.gate.upsert(&id, &value) {
                        Verdict::Admit => out.ops.push(WriteOp::put(key, value)),
                        Verdict::Pending { was_written } => {
                            // `in_store` too: a node deleted earlier in this
                            // batch uncovered an endpoint that was written.
                            if was_written || in_store {
                                out.ops.push(WriteOp::delete(key));
                            }
                            out.pending.push(id);
                        }
                    }
                }
                Change::Delete { id } if self.gate.is_pending(&id) => {
                    self.attest.accepted(&id);
                    self.gate.deleted(&id);
                    self.quota.remove(&id);
                }
                Change::Delete { id } => {
                    // The peer no longer has it: not a refused record either.
                    self.attest.accepted(&id);
                    let kind_synced = self.mirror.synced.contains(&(id.1.clone(), id.0));
                    if outcome.snapshot_done && !kind_synced && !sweep_grace.is_zero() {
                        self.deferred.entry(id).or_insert(now + sweep_grace);
                    } else {
                        self.deferred.remove(&id);
                        self.gate.deleted(&id);
                        self.quota.remove(&id);
                        out.ops
                            .push(WriteOp::delete(keys::cache(id.0, &self.peer.name, &id.2)));
                    }
                }
                Change::Synced { kind, .. } => {
                    newly_synced.insert(kind);
                    if !self.attest.is_mismatched(kind) {
                        // The deferred records the peer's full set no longer have go first.
                        self.sweep(|id, _| id.0 == kind, &mut out.ops);
                        out.ops.push(self.marker(kind));
                    }
                }
                Change::Unsynced { kind, .. } => {
                    self.attest.unsynced(kind);
                    out.ops
                        .push(WriteOp::delete(keys::synced(&self.peer.name, kind)));
                }
            }
        }
        // A kind already synced whose attestation changed: its marker goes
        // (mismatch) or comes back (attested again).
        for kind in changed {
            let synced = self.mirror.synced.contains(&(self.peer.name.clone(), kind));
            if !synced || newly_synced.contains(&kind) {
                continue;
            }
            if self.attest.is_mismatched(kind) {
                out.ops
                    .push(WriteOp::delete(keys::synced(&self.peer.name, kind)));
            } else {
                self.sweep(|id, _| id.0 == kind, &mut out.ops);
                out.ops.push(self.marker(kind));
            }
        }
        if outcome.snapshot_done {
            // Deferred records of kinds already synced in this snapshot go now.
            let synced: BTreeSet<Kind> = self.synced_kinds().into_iter().collect();
            self.sweep(|id, _| synced.contains(&id.0), &mut out.ops);
            self.quota.snapshot_end();
            // The snapshot's staging is freed: hand it back.
            clustermesh_proto::heap::want_release();
        }
        self.recheck(&mut out.ops, &mut out.pending, &mut out.unresolved);
        out
    }

    /// Writes what the gate admits or takes back after the peer's nodes changed.
    fn recheck(
        &mut self,
        ops: &mut Vec<WriteOp>,
        pending: &mut Vec<RecordId>,
        unresolved: &mut Vec<RecordId>,
    ) {
        let records = self.mirror.records.ids().map(|(k, _, key)| (k, key));
        for op in self.gate.recheck(&self.peer.name, records) {
            match op {
                GateOp::Put(id, value) => ops.push(WriteOp::put(
                    keys::cache(id.0, &self.peer.name, &id.2),
                    value,
                )),
                GateOp::Withdraw(id) if !self.mirror.records.contains_key(&id) => {
                    // A deferred record (the peer no longer has it; kept
                    // only until its kind is synced): it goes for good, it
                    // must not wait to be admitted again.
                    self.deferred.remove(&id);
                    self.gate.deleted(&id);
                    self.quota.remove(&id);
                    ops.push(WriteOp::delete(keys::cache(id.0, &self.peer.name, &id.2)));
                }
                GateOp::Withdraw(id) => {
                    let key = keys::cache(id.0, &self.peer.name, &id.2);
                    // The value: from this very write, or from the view.
                    let value = ops
                        .iter()
                        .rev()
                        .find_map(|o| match o {
                            WriteOp::Put { key: k, value } if *k == key => Some(value.clone()),
                            _ => None,
                        })
                        .or_else(|| self.lookup.as_ref()?(&key));
                    match value {
                        Some(v) => self.gate.hold_withdrawn(id.clone(), &v),
                        None => unresolved.push(id.clone()),
                    }
                    ops.push(WriteOp::delete(key));
                    pending.push(id);
                }
            }
        }
    }

    /// The value of a record a node change took back ([`Applied::unresolved`]),
    /// read from the store: it waits with it. Without one it is forgotten
    /// (the peer's next snapshot sends it again and it is checked then).
    pub fn resolve(&mut self, id: RecordId, value: Option<&Bytes>) {
        match value {
            Some(v) => self.gate.hold_withdrawn(id, v),
            None => {
                warn!(peer = %self.peer.name, kind = id.0.segment(), key = %id.2, "value of a withdrawn record not found; it returns with the peer's next snapshot");
                self.mirror.records.remove(&id);
                self.quota.remove(&id);
            }
        }
    }

    /// Deletes the deferred records matching `pick` that the mirror does not hold.
    fn sweep(&mut self, pick: impl Fn(&RecordId, &Instant) -> bool, ops: &mut Vec<WriteOp>) {
        let gone: Vec<RecordId> = self
            .deferred
            .iter()
            .filter(|(id, at)| pick(id, at))
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            self.deferred.remove(&id);
            if !self.mirror.records.contains_key(&id) {
                self.gate.deleted(&id);
                self.quota.remove(&id);
                ops.push(WriteOp::delete(keys::cache(id.0, &self.peer.name, &id.2)));
            }
        }
    }

    /// Deferred deletes whose grace has passed.
    pub fn sweep_due(&mut self, now: Instant) -> Vec<WriteOp> {
        let mut ops = Vec::new();
        self.sweep(|_, at| *at <= now, &mut ops);
        let mut unresolved = Vec::new();
        self.recheck(&mut ops, &mut Vec::new(), &mut unresolved);
        for id in unresolved {
            self.resolve(id, None);
        }
        ops
    }

    fn marker(&self, kind: Kind) -> WriteOp {
        let records = self.stored(kind);
        let m = SyncedMarker {
            cluster: self.peer.name.clone(),
            kind: kind as i32,
            records,
            unix_millis: clustermesh_proto::clock::unix_millis(),
            digest: None,
        };
        WriteOp::put(keys::synced(&self.peer.name, kind), m.encode_to_vec())
    }

    /// Withdraws everything of this peer: the range deletes, and an empty
    /// mirror (the next Watch starts with a fresh snapshot).
    pub fn withdraw(&mut self) -> Vec<WriteOp> {
        self.mirror = DigestMirror::compact().streaming_into_empty();
        self.deferred.clear();
        self.gate.clear();
        self.attest = Attestations::default();
        self.quota.clear();
        withdraw_ops(&self.peer.name)
    }
}

/// Range deletes of everything mirrored from `peer`.
pub fn withdraw_ops(peer: &str) -> Vec<WriteOp> {
    let mut ops: Vec<WriteOp> = RECORD_KINDS
        .iter()
        .map(|k| WriteOp::delete_prefix(keys::cache_prefix(*k, peer)))
        .collect();
    ops.push(WriteOp::delete_prefix(keys::synced_prefix(peer)));
    ops
}

#[cfg(test)]
mod tests;
