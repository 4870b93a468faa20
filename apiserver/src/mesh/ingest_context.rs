//! What the ingest rules check a peer's records against ([`Context`]): this
//! cluster's pod CIDRs (its own Node records in the view), its
//! `--service-cidr`s, and the pod CIDRs of every peer's cached Node records.
//!
//! The CIDRs are indexed ([`CidrIndex`]) and the indexes are built once for
//! all peers, at most every [`MAX_AGE`], not once per peer: at 250 peers ×
//! 100 nodes each peer loop decoded all 25,000 cached Node records twice a
//! second and scanned them for every endpoint, which starved the apiserver
//! during a cold start (docs/benchmarks.md, "Scale").

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clustermesh_proto::keys;
use clustermesh_proto::v1::Kind;

use super::MeshContext;
use super::ingest::{CidrIndex, Context};
use crate::view::View;

/// How old the shared indexes may be before they are built from the view
/// again (the same staleness each peer loop had before they were shared).
pub const MAX_AGE: Duration = Duration::from_millis(500);

struct Built {
    at: Instant,
    own: Arc<CidrIndex>,
    peers: Arc<CidrIndex>,
}

/// The indexes of this cluster's and the peers' pod CIDRs, shared.
#[derive(Default)]
pub struct SharedIndexes {
    built: Mutex<Option<Built>>,
}

impl SharedIndexes {
    /// (this cluster's pod CIDRs, every peer's pod CIDRs by peer), built
    /// from `view` when older than [`MAX_AGE`].
    pub fn get(&self, view: &View, cluster: &str) -> (Arc<CidrIndex>, Arc<CidrIndex>) {
        let mut built = self.built.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = built.as_ref()
            && b.at.elapsed() < MAX_AGE
        {
            return (b.own.clone(), b.peers.clone());
        }
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
        let b = Built {
            at: Instant::now(),
            own: Arc::new(own),
            peers: Arc::new(peers),
        };
        let out = (b.own.clone(), b.peers.clone());
        *built = Some(b);
        out
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
