//! The exporter: source updates → records maintained per change
//! ([`Records`]) → identities allocated → the smallest set of writes that
//! makes `state/*/<cluster>/` equal to them. Runs on every replica (so a new
//! leader's records are warm), writes only while leading, fenced on the
//! leader key. On each new term it starts from what the store holds and
//! diffs every record once, so a reconcile deletes what the source no longer
//! has and never deletes and re-adds a record that did not change; after
//! that it diffs only the keys a change touched.

pub mod diff;
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
use crate::source::{Dirty, ObjectKind, Records, SourceUpdate};
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
    /// The live gateways the node records were last written with.
    live: BTreeSet<String>,
    /// No reconcile has diffed every record yet in this term.
    full: bool,
}

pub struct Exporter {
    store: Store,
    view: Arc<View>,
    cluster: ClusterInfo,
    alloc: Allocator,
    records: Records,
    /// Keys changed since the last reconcile of this term.
    pending: Dirty,
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
        let cluster_name = cluster.name.clone();
        Exporter {
            store,
            view,
            cluster,
            alloc,
            records: Records::new(&cluster_name),
            pending: Dirty::default(),
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
                self.records.handle(other);
            }
        }
    }

    /// Moves the records' changed keys to `pending`; without a term they are
    /// dropped (the next term diffs every record).
    fn absorb(&mut self) {
        let changed = self.records.take_dirty();
        if self.term.is_some() {
            self.pending.merge(changed);
        }
    }

    fn end_term(&mut self) {
        self.term = None;
        self.pending = Dirty::default();
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
                        self.absorb();
                        dirty = true;
                    }
                    None => {
                        warn!("the source ended; no more updates will be exported");
                        return;
                    }
                },
                _ = leader.changed() => {
                    if !*leader.borrow() {
                        self.end_term();
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
                    self.end_term();
                }
                Err(e) => {
                    warn!(error = %e, "export failed; retrying");
                    self.end_term();
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
            live: BTreeSet::new(),
            full: true,
        })
    }

    async fn reconcile(&mut self, token: &str) -> Result<(), ReconcileError> {
        if self.term.is_none() {
            self.term = Some(self.start_term().await?);
            self.pending = Dirty::default();
        }
        self.absorb();
        let changed = std::mem::take(&mut self.pending);
        let cluster = self.cluster.name.clone();
        let Some(term) = self.term.as_mut() else {
            return Ok(());
        };
        let desired = self.records.desired();
        if term.full {
            for w in self.records.warnings() {
                debug!(warning = %w, "conversion");
            }
        } else {
            for w in self.records.warnings_of(&changed) {
                debug!(warning = %w, "conversion");
            }
        }
        // Identities new to this term (all of them on its first reconcile).
        let new_digests: Vec<&String> = if term.full {
            desired.identities.keys().collect()
        } else {
            changed
                .identities
                .iter()
                .filter(|d| desired.identities.contains_key(*d))
                .collect()
        };
        for digest in new_digests {
            if !term.index.contains_key(digest) {
                let id = self.alloc.allocate(digest).await?;
                info!(identity = id, digest = %digest, "identity allocated");
                term.index.insert(digest.clone(), id);
            }
        }
        let live = self.live_gateways.borrow().clone();
        let now = Instant::now();
        let mut release = Vec::new();
        let ops = if term.full {
            let wanted = diff::Wanted {
                desired,
                index: &term.index,
                live: &live,
                cluster: &cluster,
            };
            let mut want = diff::want_all(&wanted);
            // Identities no endpoint uses: kept through the grace period, then released.
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
            diff::diff_all(&want, &term.written, &mut term.refused, &released)
        } else {
            let mut changed = changed;
            // A gateway's record changes when its agent's lease comes or goes.
            changed
                .nodes
                .extend(term.live.symmetric_difference(&live).cloned());
            for digest in &changed.identities {
                if desired.identities.contains_key(digest) {
                    term.unused_since.remove(digest);
                } else if term.index.contains_key(digest) {
                    term.unused_since.entry(digest.clone()).or_insert(now);
                }
            }
            for (digest, since) in &term.unused_since {
                if now.duration_since(*since) >= self.gc_grace
                    && let Some(id) = term.index.get(digest)
                {
                    let key = keys::state(Kind::Identity, &cluster, &id.to_string());
                    release.push((digest.clone(), *id, key));
                }
            }
            let wanted = diff::Wanted {
                desired,
                index: &term.index,
                live: &live,
                cluster: &cluster,
            };
            let want = diff::want_keys(&wanted, &changed);
            diff::diff_keys(want, &term.written, &mut term.refused)
        };
        term.live = live;
        term.full = false;
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
