//! The global service view: a service's records from this cluster and from
//! every cached peer, backends grouped by cluster, affinity applied.

use std::collections::{BTreeMap, BTreeSet};

use clustermesh_proto::keys::{self, StoreKey};
use clustermesh_proto::selection::{self, Candidate};
use clustermesh_proto::v1::{
    Affinity, Backend, ClusterBackends, Kind, LookupServiceResponse, Service, ServiceSummary,
};
use prost::Message;

use crate::view::View;

/// Every service record (local and cached), keyed by "ns/name", then cluster.
fn services(view: &View) -> BTreeMap<String, BTreeMap<String, Service>> {
    let mut out: BTreeMap<String, BTreeMap<String, Service>> = BTreeMap::new();
    let local = view.local_cluster();
    let prefixes = [
        keys::state_prefix(Kind::Service, local),
        format!("{}cache/{}/", keys::PREFIX, Kind::Service.segment()),
    ];
    for prefix in prefixes {
        for (k, e) in view.entries(&prefix) {
            let StoreKey::Record { cluster, key, .. } = keys::parse(&k) else {
                continue;
            };
            if let Ok(svc) = Service::decode(e.value.as_ref()) {
                out.entry(key.to_owned())
                    .or_default()
                    .insert(cluster.to_owned(), svc);
            }
        }
    }
    out
}

/// Which backends a client in `local` is sent to: the one decision the
/// datapath also uses (`clustermesh_proto::selection`). `contributing` names
/// the clusters whose records count (this one, and peers whose record is
/// global and shared).
pub fn select(
    affinity: Affinity,
    local: &str,
    clusters: &[ClusterBackends],
    contributing: &BTreeSet<String>,
) -> Vec<Backend> {
    let candidates: Vec<Candidate<&Backend>> = clusters
        .iter()
        .filter(|c| contributing.contains(&c.cluster))
        .flat_map(|c| {
            c.backends
                .iter()
                .map(|b| Candidate::of(c.cluster == local, b))
        })
        .collect();
    selection::select(affinity, &candidates)
        .into_iter()
        .cloned()
        .collect()
}

pub fn lookup(view: &View, namespace: &str, name: &str) -> Option<LookupServiceResponse> {
    let local = view.local_cluster().to_owned();
    let by_cluster = services(view).remove(&format!("{namespace}/{name}"))?;
    // The local definition (if any) decides affinity and ports; else the first peer's.
    let primary = by_cluster
        .get(&local)
        .or_else(|| by_cluster.values().next())?
        .clone();
    let local_svc = by_cluster.get(&local);
    let mut frontends = Vec::new();
    let mut clusters = Vec::new();
    let mut contributing = BTreeSet::new();
    for (cluster, svc) in &by_cluster {
        if cluster == &local {
            if svc.global {
                contributing.insert(cluster.clone());
            }
        } else if selection::peer_contributes(local_svc, svc) {
            contributing.insert(cluster.clone());
        }
        // A peer's backends count only for a global service.
        if cluster != &local && !(svc.global && primary.global) {
            continue;
        }
        frontends.extend(svc.frontend_ips.iter().cloned());
        let backends = svc
            .backends
            .iter()
            .cloned()
            .map(|mut b| {
                b.cluster = cluster.clone();
                b
            })
            .collect();
        clusters.push(ClusterBackends {
            cluster: cluster.clone(),
            backends,
        });
    }
    let affinity = Affinity::try_from(primary.affinity).unwrap_or(Affinity::None);
    let selected = select(affinity, &local, &clusters, &contributing);
    Some(LookupServiceResponse {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        global: primary.global,
        affinity: affinity as i32,
        ports: primary.ports,
        frontend_ips: frontends,
        clusters,
        selected,
    })
}

pub fn list(view: &View, global_only: bool) -> Vec<ServiceSummary> {
    services(view)
        .into_iter()
        .filter_map(|(key, by_cluster)| {
            let (namespace, name) = key.split_once('/')?;
            let first = by_cluster.values().next()?;
            let global = by_cluster.values().any(|s| s.global);
            if global_only && !global {
                return None;
            }
            let backends = by_cluster.values().flat_map(|s| s.backends.iter());
            let (total, ready) =
                backends.fold((0u32, 0u32), |(t, r), b| (t + 1, r + u32::from(b.ready)));
            Some(ServiceSummary {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                global,
                shared: first.shared,
                affinity: first.affinity,
                clusters: by_cluster.keys().cloned().collect(),
                backends: total,
                ready_backends: ready,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cb(cluster: &str, ips: &[(&str, bool)]) -> ClusterBackends {
        ClusterBackends {
            cluster: cluster.into(),
            backends: ips
                .iter()
                .map(|(ip, ready)| Backend {
                    ip: (*ip).into(),
                    ready: *ready,
                    ..Default::default()
                })
                .collect(),
        }
    }

    #[test]
    fn affinity() {
        let cs = vec![
            cb("a", &[("1.0.0.1", true)]),
            cb("b", &[("2.0.0.1", true), ("2.0.0.2", false)]),
            cb("c", &[("3.0.0.1", true)]),
        ];
        // c's record is not shared: it never contributes.
        let contributing: BTreeSet<String> = ["a".into(), "b".into()].into();
        let ips = |v: Vec<Backend>| v.into_iter().map(|b| b.ip).collect::<Vec<_>>();
        let sel = |aff, cs: &[ClusterBackends]| ips(select(aff, "a", cs, &contributing));
        assert_eq!(sel(Affinity::None, &cs), ["1.0.0.1", "2.0.0.1"]);
        assert_eq!(sel(Affinity::Local, &cs), ["1.0.0.1"]);
        assert_eq!(sel(Affinity::Remote, &cs), ["2.0.0.1"]);
        let no_local = vec![
            cb("a", &[("1.0.0.1", false)]),
            cb("b", &[("2.0.0.1", true)]),
        ];
        assert_eq!(
            sel(Affinity::Local, &no_local),
            ["2.0.0.1"],
            "falls back to remote"
        );
    }
}
