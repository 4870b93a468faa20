//! What the ingest rules check a peer's records against ([`Context`]): this
//! cluster's pod CIDRs (its own Node records in the view), its
//! `--service-cidr`s, and the pod CIDRs of every peer's cached Node records.
//!
//! The CIDR indexes are the view's ([`crate::view::NodeCidrs`]), kept with
//! every Node record change: a context is current when taken and costs
//! O(1), so a peer loop takes a new one for every batch it applies.

use super::MeshContext;
use super::ingest::Context;

/// The context `peer`'s records are checked in.
pub fn ingest_context(ctx: &MeshContext, peer: &str) -> Context {
    let cidrs = ctx.view.node_cidrs();
    Context {
        own_pods: cidrs.own,
        services: ctx.config.service_cidrs.clone(),
        others: cidrs.peers,
        peer: peer.to_owned(),
    }
}
