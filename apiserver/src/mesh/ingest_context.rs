//! What the ingest rules check a peer's records against ([`Context`]): this
//! cluster's pod CIDRs (its own Node records in the view), its
//! `--service-cidr`s, and the pod CIDRs of every peer's cached Node records.
//!
//! The CIDRs are indexed ([`CidrIndex`]) and the indexes are built once for
//! all peers, at most every [`MAX_AGE`], not once per peer: at 250 peers ×
//! 100 nodes each peer loop decoded all 25,000 cached Node records twice a
//! second and scanned them for every endpoint, which starved the apiserver
//! during a cold start (docs/benchmarks.md, "Scale").

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clustermesh_proto::keys;
use clustermesh_proto::v1::Kind;
use tracing::{debug, warn};

use super::MeshContext;
use super::ingest::{CidrIndex, Context};
use crate::view::View;

/// How old the shared indexes may be before they are built from the view
/// again (the same staleness each peer loop had before they were shared).
pub const MAX_AGE: Duration = Duration::from_millis(500);

#[derive(Clone)]
struct Built {
    at: Instant,
    /// [`View::node_changes`] when built: no node changed, nothing to rebuild.
    node_changes: u64,
    own: Arc<CidrIndex>,
    peers: Arc<CidrIndex>,
}

/// The indexes of this cluster's and the peers' pod CIDRs, shared.
///
/// A rebuild (25,000 node records decoded at Cilium's scale shape: tens of
/// milliseconds) never runs under the lock nor on the caller's task: the
/// caller gets the current indexes at once, and one background thread
/// builds the next ones when they are older than [`MAX_AGE`] and a node
/// changed since. Only the very first call builds inline.
#[derive(Default)]
pub struct SharedIndexes {
    built: Mutex<Option<Built>>,
    building: Arc<AtomicBool>,
}

/// Clears the "a build is under way" flag when dropped.
struct Done(Arc<AtomicBool>);

impl Drop for Done {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

fn build(view: &View, cluster: &str) -> Built {
    let started = Instant::now();
    let node_changes = view.node_changes();
    let mut own = CidrIndex::new();
    for (_, e) in view.entries(&keys::state_prefix(Kind::Node, cluster)) {
        for c in Context::pod_cidrs([e.value.as_ref()]) {
            own.insert("", c);
        }
    }
    let mut peers = CidrIndex::new();
    let all = format!("{}cache/{}/", keys::PREFIX, Kind::Node.segment());
    for (k, e) in view.entries(&all) {
        if let keys::StoreKey::Record { cluster, .. } = keys::parse(&k) {
            for c in Context::pod_cidrs([e.value.as_ref()]) {
                peers.insert(cluster, c);
            }
        }
    }
    debug!(elapsed = ?started.elapsed(), peer_cidrs = peers.len(), "ingest CIDR indexes built");
    Built {
        at: Instant::now(),
        node_changes,
        own: Arc::new(own),
        peers: Arc::new(peers),
    }
}

impl SharedIndexes {
    /// (this cluster's pod CIDRs, every peer's pod CIDRs by peer), at most
    /// [`MAX_AGE`] plus one rebuild's time behind the view.
    pub fn get(
        self: &Arc<Self>,
        view: &Arc<View>,
        cluster: &str,
    ) -> (Arc<CidrIndex>, Arc<CidrIndex>) {
        let current = self.built.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(b) = current else {
            let b = build(view, cluster);
            let out = (b.own.clone(), b.peers.clone());
            self.store(b);
            return out;
        };
        if b.at.elapsed() >= MAX_AGE {
            if view.node_changes() == b.node_changes {
                // Nothing changed: the indexes are current as they are.
                let mut guard = self.built.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(g) = guard.as_mut() {
                    g.at = Instant::now();
                }
            } else if !self.building.swap(true, Ordering::AcqRel) {
                let (me, v, c) = (self.clone(), view.clone(), cluster.to_owned());
                let spawned =
                    std::thread::Builder::new()
                        .name("cidr-index".into())
                        .spawn(move || {
                            // Cleared even if the build panicked: the next caller retries.
                            let _done = Done(me.building.clone());
                            let b = build(&v, &c);
                            me.store(b);
                        });
                if let Err(e) = spawned {
                    warn!(error = %e, "cannot start a thread for the CIDR indexes; building inline");
                    self.store(build(view, cluster));
                    self.building.store(false, Ordering::Release);
                }
            }
        }
        (b.own, b.peers)
    }

    fn store(&self, b: Built) {
        let mut guard = self.built.lock().unwrap_or_else(|p| p.into_inner());
        // A slower, older build never replaces a newer one.
        if guard
            .as_ref()
            .is_none_or(|g| g.node_changes <= b.node_changes)
        {
            *guard = Some(b);
        }
    }
}

/// The context `peer`'s records are checked in.
pub fn ingest_context(ctx: &MeshContext, peer: &str) -> Context {
    let (own, peers) = ctx.ingest.get(&ctx.view, &ctx.cluster.name);
    Context {
        own_pods: own,
        services: ctx.config.service_cidrs.clone(),
        others: peers,
        peer: peer.to_owned(),
    }
}
