//! The exporter: source updates → inventory → desired records (identities
//! allocated) → the smallest set of writes that makes `state/*/<cluster>/`
//! equal to it. Runs on every replica (so a new leader's inventory is warm),
//! writes only while leading, fenced on the leader key. On each new term it
//! starts from what the store holds, so a reconcile deletes what the source
//! no longer has and never deletes and re-adds a record that did not change.

pub mod identities;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clustermesh_proto::v1::{self, ClusterInfo, Kind, SyncedMarker};
use clustermesh_proto::{ClusterMode, RECORD_KINDS, keys};
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::server::Runtime;
use crate::source::{Inventory, ObjectKind, SourceUpdate};
use crate::store::{Store, StoreError, WriteOp};
use crate::view::View;
use identities::{AllocError, Allocator};

/// What one leadership term knows about the store.
struct Term {
    /// This cluster's state keys and values, as written.
    written: BTreeMap<String, Bytes>,
    /// digest → identity.
    index: BTreeMap<String, u32>,
    unused_since: HashMap<String, Instant>,
    markers_done: bool,
    /// Records the store refused as too large, with the value refused: not
    /// offered again until the source changes them.
    refused: BTreeMap<String, Bytes>,
}

pub struct Exporter {
    store: Store,
    view: Arc<View>,
    cluster: ClusterInfo,
    alloc: Allocator,
    inventory: Inventory,
    source_synced: BTreeSet<ObjectKind>,
    term: Option<Term>,
    gc_grace: Duration,
    runtime: Arc<Runtime>,
    /// Gateway nodes whose agents hold a live lease (see `crate::agents`).
    live_gateways: watch::Receiver<BTreeSet<String>>,
}

#[derive(Debug, thiserror::Error)]
enum ReconcileError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Alloc(#[from] AllocError),
    #[error("the view did not catch up with the store (revision {0})")]
    ViewBehind(i64),
}

impl Exporter {
    pub fn new(
        store: Store,
        view: Arc<View>,
        cluster: ClusterInfo,
        gc_grace: Duration,
        runtime: Arc<Runtime>,
        live_gateways: watch::Receiver<BTreeSet<String>>,
    ) -> Exporter {
        let mode = ClusterMode::from_max_clusters(cluster.max_connected_clusters)
            .unwrap_or(ClusterMode::Max255);
        let alloc = Allocator::new(store.clone(), mode, cluster.id, &cluster.name);
        Exporter {
            store,
            view,
            cluster,
            alloc,
            inventory: Inventory::new(),
            source_synced: BTreeSet::new(),
            term: None,
            gc_grace,
            runtime,
            live_gateways,
        }
    }

    fn handle(&mut self, u: SourceUpdate) {
        match u {
            SourceUpdate::Synced(k) => {
                self.source_synced.insert(k);
            }
            SourceUpdate::Errors(errs) => {
                for e in &errs {
                    warn!(file = %e.file, line = e.line, error = %e.message, "source error");
                }
                let list = errs
                    .into_iter()
                    .map(|e| v1::SourceError {
                        file: e.file,
                        line: e.line,
                        message: e.message,
                    })
                    .collect();
                if let Ok(mut g) = self.runtime.source_errors.lock() {
                    *g = list;
                }
            }
            other => {
                self.inventory.handle(other);
            }
        }
    }

    fn source_ready(&self) -> bool {
        ObjectKind::ALL
            .iter()
            .all(|k| self.source_synced.contains(k))
    }

    /// Runs until `stop` flips or the source ends.
    pub async fn run(
        mut self,
        mut updates: mpsc::Receiver<SourceUpdate>,
        mut leader: watch::Receiver<bool>,
        token: String,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut dirty = true;
        let mut live_closed = false;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                u = updates.recv() => match u {
                    Some(u) => {
                        self.handle(u);
                        while let Ok(u) = updates.try_recv() {
                            self.handle(u);
                        }
                        dirty = true;
                    }
                    None => {
                        warn!("the source ended; no more updates will be exported");
                        return;
                    }
                },
                _ = leader.changed() => {
                    if !*leader.borrow() {
                        self.term = None;
                    }
                    dirty = true;
                }
                _ = tick.tick() => {
                    if let Some(t) = &self.term
                        && t.unused_since.values().any(|s| s.elapsed() >= self.gc_grace)
                    {
                        dirty = true;
                    }
                }
                r = self.live_gateways.changed(), if !live_closed => {
                    match r {
                        Ok(()) => dirty = true,
                        // No liveness tracker (tests): stop polling it.
                        Err(_) => live_closed = true,
                    }
                }
                _ = stop.changed() => return,
            }
            if !dirty || !*leader.borrow() || !self.source_ready() {
                continue;
            }
            match self.reconcile(&token).await {
                Ok(()) => dirty = false,
                Err(ReconcileError::Store(StoreError::NotLeader)) => {
                    info!("lost leadership while writing; stopping writes");
                    self.term = None;
                }
                Err(e) => {
                    warn!(error = %e, "export failed; retrying");
                    self.term = None;
                }
            }
        }
    }

    async fn start_term(&self) -> Result<Term, ReconcileError> {
        // Every write of earlier leaders must be in the view before we diff against it.
        let rev = self.store.revision().await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.view.revision() < rev {
            if Instant::now() > deadline {
                return Err(ReconcileError::ViewBehind(rev));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut written = BTreeMap::new();
        for kind in RECORD_KINDS {
            for (k, e) in self
                .view
                .entries(&keys::state_prefix(kind, &self.cluster.name))
            {
                written.insert(k, e.value);
            }
        }
        let index = self.alloc.load().await?;
        info!(
            records = written.len(),
            identities = index.len(),
            "export term started"
        );
        Ok(Term {
            written,
            index,
            unused_since: HashMap::new(),
            markers_done: false,
            refused: BTreeMap::new(),
        })
    }

    async fn reconcile(&mut self, token: &str) -> Result<(), ReconcileError> {
        if self.term.is_none() {
            self.term = Some(self.start_term().await?);
        }
        let cluster = self.cluster.name.clone();
        let desired = self.inventory.compute(&cluster);
        for w in &desired.warnings {
            debug!(warning = %w, "conversion");
        }
        let Some(term) = self.term.as_mut() else {
            return Ok(());
        };
        for digest in desired.identities.keys() {
            if !term.index.contains_key(digest) {
                let id = self.alloc.allocate(digest).await?;
                info!(identity = id, digest = %digest, "identity allocated");
                term.index.insert(digest.clone(), id);
            }
        }
        let mut want: BTreeMap<String, Bytes> = BTreeMap::new();
        let mut put = |kind: Kind, key: &str, bytes: Vec<u8>| {
            want.insert(keys::state(kind, &cluster, key), Bytes::from(bytes));
        };
        let live = self.live_gateways.borrow().clone();
        for (name, n) in &desired.nodes {
            if n.gateway {
                // A gateway is usable only while its agent holds its lease.
                let mut n = n.clone();
                n.gateway_live = Some(live.contains(name));
                put(Kind::Node, name, n.encode_to_vec());
            } else {
                put(Kind::Node, name, n.encode_to_vec());
            }
        }
        for (key, s) in &desired.services {
            put(Kind::Service, key, s.encode_to_vec());
        }
        for (key, p) in &desired.policies {
            put(Kind::Policy, key, p.encode_to_vec());
        }
        for (ip, pe) in &desired.endpoints {
            let Some(id) = term.index.get(&pe.labels_digest) else {
                continue;
            };
            let mut ep = pe.endpoint.clone();
            ep.identity = *id;
            put(Kind::Endpoint, ip, ep.encode_to_vec());
        }
        for (digest, (labels, exported)) in &desired.identities {
            if let Some(id) = term.index.get(digest) {
                let rec = v1::Identity {
                    id: *id,
                    labels: labels.clone(),
                    cluster: cluster.clone(),
                    exported: *exported,
                };
                put(Kind::Identity, &id.to_string(), rec.encode_to_vec());
            }
        }
        // Identities no endpoint uses: kept through the grace period, then released.
        let now = Instant::now();
        let mut release = Vec::new();
        for (digest, id) in &term.index {
            if desired.identities.contains_key(digest) {
                term.unused_since.remove(digest);
                continue;
            }
            let since = *term.unused_since.entry(digest.clone()).or_insert(now);
            let key = keys::state(Kind::Identity, &cluster, &id.to_string());
            if now.duration_since(since) < self.gc_grace {
                if let Some(v) = term.written.get(&key) {
                    want.insert(key, v.clone());
                }
            } else {
                release.push((digest.clone(), *id, key));
            }
        }
        let released: BTreeSet<&String> = release.iter().map(|(_, _, k)| k).collect();
        let mut ops = Vec::new();
        term.refused.retain(|k, v| want.get(k) == Some(v));
        for (k, v) in &want {
            if term.written.get(k) != Some(v) && !term.refused.contains_key(k) {
                ops.push(WriteOp::put(k.clone(), v.clone()));
            }
        }
        for k in term.written.keys() {
            if !want.contains_key(k) && !released.contains(k) {
                ops.push(WriteOp::delete(k.clone()));
            }
        }
        if !ops.is_empty() {
            let applied = self.store.apply_fenced(&ops, token).await?;
            debug!(
                writes = ops.len(),
                refused = applied.refused.len(),
                "exported"
            );
            // A refused record (too large for the store) is not written; the
            // store logged and counted it, and it is offered again only when
            // the source changes it.
            let refused: BTreeSet<&str> = applied.refused.iter().map(|r| r.key.as_str()).collect();
            for op in ops {
                match op {
                    WriteOp::Put { key, value } if refused.contains(key.as_str()) => {
                        term.refused.insert(key, value);
                    }
                    WriteOp::Put { key, value } => {
                        term.written.insert(key, value);
                    }
                    WriteOp::Delete { key } => {
                        term.written.remove(&key);
                    }
                    WriteOp::DeletePrefix { .. } => {}
                }
            }
            // An older version of a refused record would be stale: withdraw it.
            let stale: Vec<WriteOp> = term
                .refused
                .keys()
                .filter(|k| term.written.contains_key(*k))
                .map(|k| WriteOp::delete(k.clone()))
                .collect();
            if !stale.is_empty() {
                warn!(
                    records = stale.len(),
                    "withdrawing the stored version of records now too large to write"
                );
                self.store.apply_fenced(&stale, token).await?;
                for op in stale {
                    if let WriteOp::Delete { key } = op {
                        term.written.remove(&key);
                    }
                }
            }
        }
        for (digest, id, key) in release {
            if self.alloc.release(&digest, id, Some(token)).await? {
                info!(identity = id, "identity released after the grace period");
            }
            term.index.remove(&digest);
            term.unused_since.remove(&digest);
            term.written.remove(&key);
        }
        if !term.markers_done {
            let mut ops = Vec::new();
            for kind in RECORD_KINDS {
                let key = keys::synced(&cluster, kind);
                if self.view.get(&key).is_none() {
                    let records = term
                        .written
                        .keys()
                        .filter(|k| k.starts_with(&keys::state_prefix(kind, &cluster)))
                        .count();
                    let marker = SyncedMarker {
                        cluster: cluster.clone(),
                        kind: kind as i32,
                        records: records as u64,
                        unix_millis: clustermesh_proto::clock::unix_millis(),
                        digest: None,
                    };
                    ops.push(WriteOp::put(key, marker.encode_to_vec()));
                }
            }
            self.store.apply_fenced(&ops, token).await?.all_written()?;
            term.markers_done = true;
            info!("all kinds exported; sync markers written");
        }
        Ok(())
    }
}
