//! Global services → socket load-balancer entries, with affinity applied.
//!
//! A frontend is programmed for every global service **of the local
//! cluster** (its ClusterIPs × ports; clients of this cluster connect to
//! those; Cilium's rule: a global service must exist in each cluster that
//! uses it). Which backends go into its BPF slots (the programs choose
//! uniformly among them) is decided by `clustermesh_proto::selection`, the
//! same function `LookupService` (and so `clustermesh service get`) uses:
//! peers contribute when their record is global and shared; ready backends,
//! serving ones only when none is ready; affinity local/remote/none.
//!
//! A backend's port is the one named like the service port (a single unnamed
//! service port takes the backend's only port). SCTP ports are not
//! load-balanced (the socket programs handle TCP and UDP).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use clustermesh_proto::selection::{self, Candidate};
use clustermesh_proto::v1::{
    Affinity as ProtoAffinity, Backend as ProtoBackend, Service as ProtoService, ServicePort,
};

use super::policy::protocol_number;
use crate::datapath::{Affinity, Backend, Frontend, PROTO_TCP, PROTO_UDP, Service};

/// Stable service IDs per frontend (they key the backend slots, so keeping
/// them stable keeps updates small). Seeded from the pinned maps on start.
#[derive(Clone, Debug, Default)]
pub struct ServiceIds {
    ids: BTreeMap<Frontend, u32>,
    next: u32,
}

impl ServiceIds {
    pub fn new() -> Self {
        ServiceIds {
            ids: BTreeMap::new(),
            next: 1,
        }
    }

    /// Adopts the IDs a previous agent left in the maps.
    pub fn seed(&mut self, existing: impl IntoIterator<Item = (Frontend, u32)>) {
        for (fe, id) in existing {
            if id != 0 && !self.ids.values().any(|v| *v == id) {
                self.ids.insert(fe, id);
                self.next = self.next.max(id.saturating_add(1));
            }
        }
    }

    /// The ID of `fe`, allocating a fresh one (never reused while the agent runs).
    pub fn get(&mut self, fe: Frontend) -> u32 {
        if let Some(id) = self.ids.get(&fe) {
            return *id;
        }
        let id = self.next.max(1);
        self.next = id.wrapping_add(1).max(1);
        self.ids.insert(fe, id);
        id
    }

    /// Forgets frontends that are no longer programmed.
    pub fn retain(&mut self, live: &BTreeSet<Frontend>) {
        self.ids.retain(|fe, _| live.contains(fe));
    }
}

fn affinity(svc: &ProtoService) -> Affinity {
    match ProtoAffinity::try_from(svc.affinity).unwrap_or(ProtoAffinity::None) {
        ProtoAffinity::Local => Affinity::Local,
        ProtoAffinity::Remote => Affinity::Remote,
        ProtoAffinity::None => Affinity::None,
    }
}

/// The backend port for `sp`, or None if the backend does not serve it.
fn backend_port(b: &ProtoBackend, sp: &ServicePort) -> Option<u16> {
    let proto = protocol_number(&sp.protocol);
    let same_proto = |p: &str| protocol_number(p) == proto;
    let port = if sp.name.is_empty() && b.ports.len() == 1 {
        b.ports.first().filter(|p| same_proto(&p.protocol))
    } else {
        b.ports
            .iter()
            .find(|p| p.name == sp.name && same_proto(&p.protocol))
    }?;
    u16::try_from(port.port).ok().filter(|p| *p != 0)
}

/// The backends of `sp` that clients are sent to: every candidate that
/// serves the port, then the one selection the CLI's lookup also uses.
fn backends_for<'a>(
    aff: ProtoAffinity,
    local: &'a ProtoService,
    remotes: &[&'a ProtoService],
    sp: &ServicePort,
) -> Vec<Backend> {
    let mut candidates = Vec::new();
    for (is_local, s) in std::iter::once((true, local)).chain(remotes.iter().map(|r| (false, *r))) {
        for b in &s.backends {
            let (Ok(ip), Some(port)) = (b.ip.parse::<Ipv4Addr>(), backend_port(b, sp)) else {
                continue;
            };
            candidates.push(Candidate {
                local: is_local,
                ready: b.ready,
                serving: b.serving,
                item: Backend { ip, port },
            });
        }
    }
    // The BPF slots are a set: each (ip, port) once, in a stable order.
    let chosen: BTreeSet<Backend> = selection::select(aff, &candidates).into_iter().collect();
    chosen.into_iter().collect()
}

/// Computes the LB entries for `local_cluster` from all service records.
pub fn compute<'a>(
    local_cluster: &str,
    services: impl IntoIterator<Item = &'a ProtoService> + Clone,
    ids: &mut ServiceIds,
) -> BTreeMap<Frontend, Service> {
    let mut out = BTreeMap::new();
    for svc in services.clone() {
        if svc.cluster != local_cluster || !svc.global {
            continue;
        }
        let remotes: Vec<&ProtoService> = services
            .clone()
            .into_iter()
            .filter(|r| {
                r.cluster != local_cluster
                    && r.namespace == svc.namespace
                    && r.name == svc.name
                    && selection::peer_contributes(Some(svc), r)
            })
            .collect();
        let aff = affinity(svc);
        let proto_affinity = ProtoAffinity::try_from(svc.affinity).unwrap_or(ProtoAffinity::None);
        for sp in &svc.ports {
            let proto = match protocol_number(&sp.protocol) {
                Some(p @ (PROTO_TCP | PROTO_UDP)) => p,
                _ => continue,
            };
            let Some(port) = u16::try_from(sp.port).ok().filter(|p| *p != 0) else {
                continue;
            };
            let backends = backends_for(proto_affinity, svc, &remotes, sp);
            for ip in svc
                .frontend_ips
                .iter()
                .filter_map(|s| s.parse::<Ipv4Addr>().ok())
            {
                let fe = Frontend { ip, port, proto };
                out.insert(
                    fe,
                    Service {
                        service_id: ids.get(fe),
                        affinity: aff,
                        backends: backends.clone(),
                    },
                );
            }
        }
    }
    ids.retain(&out.keys().copied().collect());
    out
}
