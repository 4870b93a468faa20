//! The kernel side of the agent: brings the datapath up (adopting whatever a
//! previous agent pinned) and turns the view into map contents, attached
//! programs, pod MTUs and (native mode) routes — writing only differences.
//!
//! Order within one reconciliation: maps first (a new pod's ipcache entry
//! exists before `from_pod` is attached to its veth, so its first packet is
//! not an unknown source), then program attachment, then pod MTUs, then
//! routes. The desired state is kept by parts ([`Incremental`]); the small
//! maps last written are remembered and diffed in memory, and of the
//! ipcache only the entries an update touched are written (it can hold
//! every remote endpoint of the mesh). The maps are re-read on start, after
//! an error and every `resync_interval` (drift repair). Nothing is applied before the
//! first snapshot is complete: until then the maps stay as they were.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tracing::{debug, info, warn};

use super::config::{AgentConfig, Mode};
use super::desired::{self, Computed, PodIface};
use super::host::PodFinder;
use super::incremental::{Incremental, Touched};
use super::policy_report::RefusalKey;
use super::services::ServiceIds;
use super::status::Status;
use super::view::View;
use super::{mtu, routes};
use crate::datapath::state::ipcache_raw;
use crate::datapath::{
    Datapath, DatapathConfig, DatapathError, Frontend, Loader, RawState, netdev,
};

/// Errors of bringing the datapath up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error("underlay device {dev}: {detail}")]
    Underlay { dev: String, detail: String },
    #[error("enabling IPv4 forwarding for native routing: {0}")]
    Forwarding(std::io::Error),
}

pub struct Reconciler {
    cfg: AgentConfig,
    loader: Loader,
    dp: Datapath,
    pub view: View,
    pub synced: bool,
    ids: ServiceIds,
    finder: PodFinder,
    pod_mtu: u32,
    /// Pod interfaces with `from_pod` attached: name → ifindex.
    attached: BTreeMap<String, u32>,
    /// Pod interfaces whose pod is in the maps (where `from_pod` belongs).
    programmed: BTreeMap<String, u32>,
    /// Host-side ifindexes whose peer MTU has been set (or failed for good).
    mtu_done: BTreeSet<u32>,
    ifaces: BTreeMap<Ipv4Addr, PodIface>,
    /// The desired state, recomputed by the parts a change touches.
    desired: Incremental,
    /// What the maps hold, as far as known.
    last: Known,
    last_read: Instant,
    status: Arc<Mutex<Status>>,
    /// Policy refusals already logged (each is logged once while it lasts).
    refusals_logged: BTreeSet<RefusalKey>,
}

/// What the reconciler knows of the maps' contents.
enum Known {
    /// Nothing (start, or a write failed): read them.
    Unknown,
    /// Everything, read from the maps (the ipcache included).
    Read(RawState),
    /// Everything but the ipcache as last written; the ipcache holds the
    /// desired state's ipcache as of before the current update.
    Applied(RawState),
}

/// Brings the datapath up: tunnel device or native forwarding, programs
/// loaded (maps adopted from their pins), attached, configuration written.
pub fn setup(cfg: &AgentConfig, status: Arc<Mutex<Status>>) -> Result<Reconciler, SetupError> {
    let underlay_dev = match &cfg.underlay_dev {
        Some(d) => d.clone(),
        None => netdev::discover_underlay(&cfg.tunnel_dev).map_err(|e| SetupError::Underlay {
            dev: "(from the routes)".into(),
            detail: e.to_string(),
        })?,
    };
    let underlay = |detail: String| SetupError::Underlay {
        dev: underlay_dev.clone(),
        detail,
    };
    netdev::ifindex(&underlay_dev).map_err(|e| underlay(e.to_string()))?;
    let ul_mtu = mtu::link_mtu(&underlay_dev).map_err(|e| underlay(e.to_string()))?;
    let pod_mtu = ul_mtu.saturating_sub(cfg.mode.overhead());
    let tunnel_ifindex = match cfg.mode {
        Mode::Tunnel(kind) => netdev::ensure_tunnel_device(kind, &cfg.tunnel_dev, Some(pod_mtu))?,
        Mode::Native => {
            routes::enable_forwarding().map_err(SetupError::Forwarding)?;
            0
        }
    };
    let mut loader = Loader::load(&cfg.pin_dir)?;
    match cfg.mode {
        Mode::Tunnel(_) => {
            loader.attach_from_tunnel(&cfg.tunnel_dev)?;
            loader.detach_iface(&underlay_dev)?;
            // Routes a native-mode predecessor installed are not wanted now.
            if let Err(e) = routes::reconcile(&BTreeMap::new()) {
                warn!(error = %e, "cannot remove native-routing routes");
            }
        }
        Mode::Native => {
            loader.attach_from_underlay(&underlay_dev)?;
            if netdev::ifindex(&cfg.tunnel_dev).is_ok() {
                loader.detach_iface(&cfg.tunnel_dev)?;
            }
        }
    }
    if let Some(cg) = &cfg.lb_cgroup
        && let Err(e) = loader.attach_lb(cg)
    {
        warn!(cgroup = %cg.display(), error = %e, "global-service load balancing is off");
    }
    let mut dp = loader.datapath()?;
    // Role and cluster come from the view: until it arrives, keep what a
    // previous agent left (the pinned datapath goes on working).
    let prev = dp.config()?;
    let want = DatapathConfig {
        host_identity: 1,
        tunnel_ifindex,
        redirect_peer: cfg.redirect_peer,
        strict_source: false,
        native: cfg.mode == Mode::Native,
        gateway: prev.gateway,
        cluster_id: prev.cluster_id,
        cluster_shift: prev.cluster_shift,
    };
    if prev != want {
        dp.set_config(&want)?;
    }
    let mut ids = ServiceIds::new();
    ids.seed(
        dp.frontends_raw()?
            .iter()
            .map(|(k, v)| (Frontend::from_key(k), v.service_id)),
    );
    let adopted = dp.read_state()?;
    info!(
        mode = cfg.mode.name(),
        pod_mtu,
        underlay = %underlay_dev,
        underlay_mtu = ul_mtu,
        ipcache = adopted.ipcache.len(),
        policy = adopted.policy.len(),
        frontends = adopted.frontends.len(),
        "datapath up; pinned maps adopted as they are until the first snapshot"
    );
    if let Ok(mut s) = status.lock() {
        s.pod_mtu = pod_mtu;
        s.mode = cfg.mode.name().into();
        s.pin_dir = cfg.pin_dir.display().to_string();
    }
    Ok(Reconciler {
        finder: PodFinder::new(cfg.pod_devs.clone()),
        cfg: cfg.clone(),
        loader,
        dp,
        view: View::new(),
        synced: false,
        ids,
        pod_mtu,
        attached: BTreeMap::new(),
        programmed: BTreeMap::new(),
        mtu_done: BTreeSet::new(),
        ifaces: BTreeMap::new(),
        desired: Incremental::default(),
        last: Known::Read(adopted),
        last_read: Instant::now(),
        status,
        refusals_logged: BTreeSet::new(),
    })
}

impl Reconciler {
    /// The pinned maps (for counters).
    pub fn datapath(&self) -> &Datapath {
        &self.dp
    }

    /// True if the last reconciliation left something undone (an apply
    /// error, a program not attached): the next tick retries.
    pub fn needs_retry(&self) -> bool {
        self.synced
            && (matches!(self.last, Known::Unknown)
                || self
                    .programmed
                    .iter()
                    .any(|(name, i)| self.attached.get(name) != Some(i)))
    }

    /// Rebuilds the view's maps and the merged ipcache from their sorted
    /// entries (after a snapshot, or enough live changes).
    pub fn repack(&mut self) {
        self.view.repack();
        self.desired.repack();
    }

    /// Looks for the local pods' interfaces; true if anything changed.
    pub fn scan(&mut self) -> bool {
        let pods: BTreeSet<Ipv4Addr> = desired::local_pods(&self.view, &self.cfg.node_name)
            .into_keys()
            .collect();
        let found = self.finder.find(&pods);
        if found == self.ifaces {
            return false;
        }
        self.ifaces = found;
        true
    }

    /// One full reconciliation of maps, attachments, MTUs and routes.
    pub fn reconcile(&mut self) {
        if !self.synced {
            return;
        }
        let started = Instant::now();
        let dirty = std::mem::take(&mut self.view.dirty);
        let touched = self.desired.update_with(
            &self.view,
            &dirty,
            &self.cfg.node_name,
            &self.ifaces,
            &mut self.ids,
            &self.cfg.service_cidrs,
        );
        let computed = self.desired.computed();
        let res = apply_config(&mut self.dp, &self.view, computed).and_then(|()| {
            apply_maps(
                &mut self.dp,
                &mut self.last,
                &mut self.last_read,
                self.cfg.resync_interval,
                computed,
                &touched,
            )
        });
        // from_pod goes only on veths of pods that are in the maps.
        self.programmed = self
            .ifaces
            .values()
            .filter(|i| computed.desired.endpoints.contains_key(&i.ifindex))
            .map(|i| (i.name.clone(), i.ifindex))
            .collect();
        self.attach_pods();
        self.set_mtus();
        let route_count = match self.cfg.mode {
            Mode::Native => {
                let want = self.desired.routes();
                match routes::reconcile(&want) {
                    Ok(_) => want.len(),
                    Err(e) => {
                        warn!(error = %e, "cannot reconcile routes");
                        0
                    }
                }
            }
            Mode::Tunnel(_) => 0,
        };
        debug!(elapsed = ?started.elapsed(), touched = touched.len(), "reconciled");
        let computed = self.desired.computed();
        log_refusals(&mut self.refusals_logged, computed);
        publish(
            &self.status,
            &self.view,
            &self.attached,
            computed,
            res,
            route_count,
        );
    }

    fn attach_pods(&mut self) {
        let want = self.programmed.clone();
        for (name, ifindex) in &want {
            if self.attached.get(name) == Some(ifindex) {
                continue;
            }
            match self.loader.attach_from_pod(name) {
                Ok(()) => {
                    self.attached.insert(name.clone(), *ifindex);
                }
                Err(e) => warn!(iface = %name, error = %e, "cannot attach from_pod"),
            }
        }
        let gone: Vec<String> = self
            .attached
            .keys()
            .filter(|n| !want.contains_key(*n))
            .cloned()
            .collect();
        for name in gone {
            self.attached.remove(&name);
            match self.loader.detach_iface(&name) {
                Ok(_) => info!(iface = %name, "pod gone: detached from_pod"),
                Err(e) => warn!(iface = %name, error = %e, "cannot detach from_pod"),
            }
        }
    }

    fn set_mtus(&mut self) {
        if !self.cfg.set_pod_mtu {
            return;
        }
        let live: BTreeSet<u32> = self.ifaces.values().map(|i| i.ifindex).collect();
        self.mtu_done.retain(|i| live.contains(i));
        for iface in self.ifaces.values() {
            if self.mtu_done.contains(&iface.ifindex) {
                continue;
            }
            match mtu::set_peer_mtu(&iface.name, self.pod_mtu) {
                Ok(Some(prev)) => {
                    info!(iface = %iface.name, from = prev, to = self.pod_mtu, "set pod MTU");
                    // The change flushes the host's neighbour entry of the pod.
                    self.finder.reset_probes();
                }
                Ok(None) => {}
                Err(e) => warn!(iface = %iface.name, error = %e, "cannot set the pod's MTU"),
            }
            self.mtu_done.insert(iface.ifindex);
        }
    }
}

/// The role and the cluster in `cm_config`: written before the maps, so
/// the tunnel source checks know this cluster when its senders appear.
fn apply_config(dp: &mut Datapath, view: &View, computed: &Computed) -> Result<(), String> {
    let Some(ci) = view.cluster.as_ref() else {
        return Ok(());
    };
    let shift = view.cluster_shift();
    let have = dp.config().map_err(|e| e.to_string())?;
    let want = DatapathConfig {
        gateway: computed.plan.is_gateway,
        cluster_id: u16::try_from(ci.id).unwrap_or(0),
        cluster_shift: shift as u8,
        ..have
    };
    if want != have {
        info!(
            gateway = want.gateway,
            cluster_id = want.cluster_id,
            "datapath role and cluster set"
        );
        dp.set_config(&want).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Writes the desired state into the maps. Known contents: only the
/// differences of the small maps and the ipcache entries the update
/// touched are written; unknown (start, an earlier error) or a resync due:
/// the maps are read and diffed in full.
fn apply_maps(
    dp: &mut Datapath,
    last: &mut Known,
    last_read: &mut Instant,
    resync_interval: std::time::Duration,
    computed: &Computed,
    touched: &Touched,
) -> Result<(usize, usize, usize), String> {
    let desired = &computed.desired;
    let mut want = desired
        .to_raw_without_ipcache()
        .map_err(|e| e.to_string())?;
    let resync = last_read.elapsed() >= resync_interval;
    let known = std::mem::replace(last, Known::Unknown);
    let have = match known {
        Known::Applied(mut rest) if !resync => {
            // Only the touched prefixes: what they held, what they get.
            rest.ipcache = ipcache_raw(touched.iter().filter_map(|(p, e)| Some((p, e.as_ref()?))))
                .map_err(|e| e.to_string())?;
            want.ipcache = ipcache_raw(
                touched
                    .keys()
                    .filter_map(|p| Some((p, desired.ipcache.get(p)?))),
            )
            .map_err(|e| e.to_string())?;
            rest
        }
        Known::Read(have) if !resync => {
            want.ipcache = ipcache_raw(&desired.ipcache).map_err(|e| e.to_string())?;
            have
        }
        _ => {
            *last_read = Instant::now();
            want.ipcache = ipcache_raw(&desired.ipcache).map_err(|e| e.to_string())?;
            dp.read_state().map_err(|e| e.to_string())?
        }
    };
    let report = dp.apply_diff(&have, &want).map_err(|e| e.to_string())?;
    if report.upserts + report.deletes > 0 {
        info!(
            upserts = report.upserts,
            deletes = report.deletes,
            unchanged = report.unchanged,
            "datapath updated"
        );
    }
    want.ipcache.clear();
    *last = Known::Applied(want);
    Ok((report.upserts, report.deletes, report.unchanged))
}

/// Logs each policy refusal once (again only if it goes away and comes back).
fn log_refusals(logged: &mut BTreeSet<RefusalKey>, c: &Computed) {
    for r in c.policy.refusals.difference(logged) {
        let (why, policy, detail) = r;
        warn!(
            reason = why.label(),
            policy = %policy,
            detail = %detail,
            "policy rule not programmed: left out (the rule admits less, never more)"
        );
    }
    *logged = c.policy.refusals.clone();
}

fn publish(
    status: &Mutex<Status>,
    view: &View,
    attached: &BTreeMap<String, u32>,
    c: &Computed,
    res: Result<(usize, usize, usize), String>,
    routes: usize,
) {
    let Ok(mut s) = status.lock() else {
        return;
    };
    s.records = view.counts();
    let d = &mut s.datapath;
    d.synced = true;
    d.local_pods = c.local_pods;
    d.pending_pods = c.pending.clone();
    d.remote_endpoints = c.remote_endpoints;
    d.remote_clusters = c.plan.via.iter().map(|(k, v)| (k.clone(), *v)).collect();
    d.gateway = c.plan.is_gateway;
    d.unreachable_clusters = c.plan.unreachable.clone();
    d.tunnel_sources = c.desired.tunnel_sources.len();
    d.cluster_endpoints = c.cluster_endpoints;
    d.no_gateway = c.no_gateway;
    d.invalid_endpoints = c.invalid_endpoints;
    d.ipcache_entries = c.desired.ipcache.len();
    d.policy_entries = c.desired.policy.len();
    d.enforced = c.desired.enforced.len();
    d.services = c.desired.services.len();
    d.routes = routes;
    d.attached = attached.keys().cloned().collect();
    d.policy_refused = c.policy.refused();
    d.unresolved_named_ports = c.policy.unresolved_named_ports;
    d.fail_closed_identities = c.policy.fail_closed_identities;
    d.ip_block_prefixes = c.policy.ip_block_prefixes;
    d.applies += 1;
    match res {
        Ok(r) => {
            d.last_apply = Some(r);
            d.last_error = None;
            d.last_apply_unix_ms = clustermesh_proto::clock::unix_millis();
        }
        Err(e) => {
            warn!(error = %e, "applying the desired state failed; will retry");
            d.apply_errors += 1;
            d.last_error = Some(e);
        }
    }
}
