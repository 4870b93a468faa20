//! The desired state, kept up to date part by part: a change recomputes only
//! the parts it touches (DESIGN §11: work proportional to the change).
//!
//! The parts are those of [`super::desired`]: the local part, one remote
//! part per remote cluster, the policy, the services, the gateway plan. The
//! view's [`Dirty`] says which inputs changed since the last update:
//!
//! | part | recomputed when |
//! |---|---|
//! | gateway plan, tunnel senders | every update (nodes and one lookup per cluster) |
//! | local part | the local cluster's nodes or endpoints, the pods' interfaces |
//! | remote part of cluster X | X's nodes or endpoints, or the gateway chosen for X |
//! | policy | identities, policies, endpoints with named ports, the local part |
//! | services | services or backend records |
//!
//! A change of the local cluster's identity, the node name or the service
//! ranges recomputes everything. The ipcache is the merge of the local and
//! remote parts (precedence in [`super::desired`]); only the prefixes a
//! recomputed part gave or gives are merged again, and the update returns
//! their previous entries so the reconciler writes just those to the map.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use clustermesh_proto::mirror::repack_map;
use clustermesh_proto::v1::ClusterInfo;

use super::desired::{self, Computed, LocalPart, PodIface, RemotePart, changed_keys};
use super::gateways;
use super::services::{self, ServiceIds};
use super::view::{Dirty, View};
use crate::datapath::{IpcacheEntry, Ipv4Prefix};

/// The ipcache entries an update may have changed, with what each was
/// before (None: absent). Entries not listed did not change.
pub type Touched = BTreeMap<Ipv4Prefix, Option<IpcacheEntry>>;

/// A remote part and how many of its endpoints a local pod shadows.
#[derive(Debug, Default)]
struct Remote {
    part: RemotePart,
    shadowed: usize,
}

/// The parts of one node's desired state and their merge ([`Computed`]).
#[derive(Debug, Default)]
pub struct Incremental {
    started: bool,
    cluster: Option<ClusterInfo>,
    node: String,
    service_cidrs: Vec<Ipv4Prefix>,
    ifaces: BTreeMap<Ipv4Addr, PodIface>,
    local: LocalPart,
    remotes: BTreeMap<String, Remote>,
    out: Computed,
}

/// When more than this share of the ipcache is touched, the merge is
/// rebuilt in one pass instead of prefix by prefix.
const REBUILD_DIVISOR: usize = 4;

impl Incremental {
    /// The desired state as of the last update.
    pub fn computed(&self) -> &Computed {
        &self.out
    }

    pub fn into_computed(self) -> Computed {
        self.out
    }

    /// Rebuilds the merged ipcache from its sorted entries, after live
    /// changes left its nodes partly empty (the caller decides when:
    /// [`clustermesh_proto::mirror::worth_repacking`]). The parts are
    /// rebuilt whole on every change and need none.
    pub fn repack(&mut self) {
        repack_map(&mut self.out.desired.ipcache);
    }

    /// Native routes: every remote part's, a later cluster's winning on
    /// the same prefix, none for this node's pods.
    pub fn routes(&self) -> BTreeMap<Ipv4Prefix, Ipv4Addr> {
        let mut out = BTreeMap::new();
        for r in self.remotes.values() {
            for (p, gw) in r.part.routes() {
                if !self.local.is_local(&p) {
                    out.insert(p, gw);
                }
            }
        }
        out
    }

    /// Brings the desired state up to date with `view` (taking its
    /// [`View::dirty`]); returns the ipcache entries that may have changed.
    pub fn update(
        &mut self,
        view: &View,
        node_name: &str,
        ifaces: &BTreeMap<Ipv4Addr, PodIface>,
        ids: &mut ServiceIds,
        service_cidrs: &[Ipv4Prefix],
    ) -> Touched {
        self.update_with(view, &view.dirty, node_name, ifaces, ids, service_cidrs)
    }

    /// [`Incremental::update`] with the changes given (the reconciler takes
    /// them out of its view).
    pub fn update_with(
        &mut self,
        view: &View,
        dirty: &Dirty,
        node_name: &str,
        ifaces: &BTreeMap<Ipv4Addr, PodIface>,
        ids: &mut ServiceIds,
        service_cidrs: &[Ipv4Prefix],
    ) -> Touched {
        let all = !self.started
            || self.cluster != view.cluster
            || self.node != node_name
            || self.service_cidrs != service_cidrs;
        if all {
            self.started = true;
            self.cluster = view.cluster.clone();
            self.node = node_name.to_owned();
            self.service_cidrs = service_cidrs.to_vec();
        }
        let local_cluster = view.local_cluster();
        let plan = gateways::plan(view, node_name, view.cluster_shift());

        let mut touched: BTreeSet<Ipv4Prefix> = BTreeSet::new();
        let local_dirty = all || dirty.clusters.contains(local_cluster) || self.ifaces != *ifaces;
        if local_dirty {
            self.ifaces = ifaces.clone();
            let new = desired::local_part(view, node_name, ifaces, service_cidrs);
            changed_keys(&self.local.ipcache, &new.ipcache, &mut touched);
            self.local = new;
        }

        // Remote clusters: those with nodes or endpoints, reachable or not.
        let clusters: BTreeSet<&str> = plan
            .via
            .keys()
            .map(String::as_str)
            .chain(plan.unreachable.iter().map(String::as_str))
            .collect();
        let gone: Vec<String> = self
            .remotes
            .keys()
            .filter(|c| !clusters.contains(c.as_str()))
            .cloned()
            .collect();
        for c in gone {
            if let Some(r) = self.remotes.remove(&c) {
                touched.extend(r.part.prefixes());
            }
        }
        for c in clusters {
            let via = plan.via.get(c).copied();
            let stale = match self.remotes.get(c) {
                None => true,
                Some(r) => all || r.part.via != via || dirty.clusters.contains(c),
            };
            if stale {
                let new = desired::remote_part(view, c, via);
                let slot = self.remotes.entry(c.to_owned()).or_default();
                new.changed_since(&slot.part, &mut touched);
                slot.part = new;
                slot.shadowed = shadowed(&self.local, &slot.part);
            } else if local_dirty && let Some(slot) = self.remotes.get_mut(c) {
                slot.shadowed = shadowed(&self.local, &slot.part);
            }
        }

        let changed = self.merge(touched);

        let o = &mut self.out;
        o.plan = plan;
        o.desired.tunnel_sources = o.plan.tunnel_sources.clone();
        if local_dirty {
            o.desired.endpoints = self.local.endpoints.clone();
            o.pending = self.local.pending.clone();
            o.local_pods = self.local.local_pods;
            o.cluster_endpoints = self.local.cluster_endpoints;
        }
        o.remote_endpoints = self
            .remotes
            .values()
            .map(|r| r.part.endpoints.len() - r.shadowed)
            .sum();
        o.no_gateway = self.remotes.values().map(|r| r.part.no_gateway).sum();
        o.invalid_endpoints = self.local.invalid_endpoints
            + self
                .remotes
                .values()
                .map(|r| r.part.invalid_endpoints)
                .sum::<usize>();
        if all || local_dirty || dirty.identities || dirty.policies || dirty.named_ports {
            let compiled = desired::policy_part(view, &self.local.policy_endpoints);
            o.desired.policy = compiled.rules;
            o.desired.enforced = compiled.enforced;
            o.desired.policy_cidrs = compiled.cidrs;
            o.policy = compiled.report;
        }
        if all || dirty.services {
            o.desired.services = services::compute(local_cluster, view.services.values(), ids);
        }
        changed
    }

    /// The merged entry of `p`: a local pod, else a remote endpoint (last
    /// cluster first), else a remote pod CIDR (likewise), else this
    /// cluster's entry.
    fn winner(&self, p: &Ipv4Prefix) -> Option<IpcacheEntry> {
        let base = self.local.ipcache.get(p);
        if self.local.is_local(p) {
            return base.copied();
        }
        let remote = |pick: fn(&RemotePart, &Ipv4Prefix) -> Option<IpcacheEntry>| {
            self.remotes.values().rev().find_map(|r| pick(&r.part, p))
        };
        remote(RemotePart::endpoint)
            .or_else(|| remote(RemotePart::cidr))
            .or_else(|| base.copied())
    }

    /// Merges the touched prefixes again (or everything, when many are).
    fn merge(&mut self, touched: BTreeSet<Ipv4Prefix>) -> Touched {
        let mut out = Touched::new();
        if touched.len() > self.out.desired.ipcache.len() / REBUILD_DIVISOR {
            let mut m = self.local.ipcache.clone();
            let cidrs = self.remotes.values().flat_map(|r| r.part.cidr_entries());
            let endpoints = self
                .remotes
                .values()
                .flat_map(|r| r.part.endpoint_entries());
            for (p, e) in cidrs.chain(endpoints) {
                if !self.local.is_local(&p) {
                    m.insert(p, e);
                }
            }
            // Inserts leave the nodes partly empty; rebuilt from its sorted
            // entries the map's nodes are full.
            repack_map(&mut m);
            let old = std::mem::replace(&mut self.out.desired.ipcache, m);
            let mut changed = BTreeSet::new();
            changed_keys(&old, &self.out.desired.ipcache, &mut changed);
            return changed
                .into_iter()
                .map(|p| (p, old.get(&p).copied()))
                .collect();
        }
        for p in touched {
            let now = self.winner(&p);
            let before = match now {
                Some(e) => self.out.desired.ipcache.insert(p, e),
                None => self.out.desired.ipcache.remove(&p),
            };
            if before != now {
                out.insert(p, before);
            }
        }
        out
    }
}

/// How many of `r`'s endpoints are this node's pods (not counted as remote).
fn shadowed(local: &LocalPart, r: &RemotePart) -> usize {
    local
        .policy_endpoints
        .iter()
        .map(|e| Ipv4Prefix::host(e.ip))
        .filter(|p| local.is_local(p) && r.endpoints.contains_key(p))
        .count()
}
