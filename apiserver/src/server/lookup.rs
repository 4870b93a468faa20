//! The global service view: a service's records from this cluster and from
//! every cached peer, backends grouped by cluster, affinity applied. Each
//! cluster's service is put together from its record and its backend
//! records (`clustermesh_proto::backends::assemble`: inline backends of an
//! older peer's record, plus the `ServiceBackend` records).

use std::collections::{BTreeMap, BTreeSet};

use clustermesh_proto::backends;
use clustermesh_proto::keys::{self, StoreKey};
use clustermesh_proto::selection::{self, Candidate};
use clustermesh_proto::v1::{
    Affinity, Backend, ClusterBackends, Kind, LookupServiceResponse, Service, ServiceBackend,
    ServiceSummary,
};
use prost::Message;

use crate::view::View;

/// Where `cluster`'s records of `kind` live: this cluster's state, a peer's cache.
fn record_key(view: &View, kind: Kind, cluster: &str, key: &str) -> String {
    if cluster == view.local_cluster() {
        keys::state(kind, cluster, key)
    } else {
        keys::cache(kind, cluster, key)
    }
}

/// The backends of `cluster`'s backend records of one service.
fn backend_records(view: &View, cluster: &str, namespace: &str, name: &str) -> Vec<Backend> {
    let prefix = record_key(
        view,
        Kind::ServiceBackend,
        cluster,
        &backends::service_prefix(namespace, name),
    );
    view.entries(&prefix)
        .into_iter()
        .filter_map(|(_, e)| ServiceBackend::decode(e.value.as_ref()).ok()?.backend)
        .collect()
}

/// Every backend record (local and cached), by "ns/name", then cluster.
fn all_backend_records(view: &View) -> BTreeMap<String, BTreeMap<String, Vec<Backend>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<Backend>>> = BTreeMap::new();
    let local = view.local_cluster();
    let prefixes = [
        keys::state_prefix(Kind::ServiceBackend, local),
        format!("{}cache/{}/", keys::PREFIX, Kind::ServiceBackend.segment()),
    ];
    for prefix in prefixes {
        for (k, e) in view.entries(&prefix) {
            let StoreKey::Record { cluster, key, .. } = keys::parse(&k) else {
                continue;
            };
            let (Some(svc), Ok(rec)) = (
                backends::service_key_of(key),
                ServiceBackend::decode(e.value.as_ref()),
            ) else {
                continue;
            };
            if let Some(b) = rec.backend {
                out.entry(svc)
                    .or_default()
                    .entry(cluster.to_owned())
                    .or_default()
                    .push(b);
            }
        }
    }
    out
}

/// Every service record (local and cached), keyed by "ns/name", then
/// cluster; its backends are only the inline ones (see [`backends::assemble`]).
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
    let by_cluster: BTreeMap<String, Service> = services(view)
        .remove(&format!("{namespace}/{name}"))?
        .into_iter()
        .map(|(cluster, svc)| {
            let recs = backend_records(view, &cluster, namespace, name);
            let whole = backends::assemble(&svc, &recs);
            (cluster, whole)
        })
        .collect();
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
    let mut records = all_backend_records(view);
    services(view)
        .into_iter()
        .filter_map(|(key, by_cluster)| {
            let mut recs = records.remove(&key).unwrap_or_default();
            let by_cluster: BTreeMap<String, Service> = by_cluster
                .into_iter()
                .map(|(cluster, svc)| {
                    let r = recs.remove(&cluster).unwrap_or_default();
                    let whole = backends::assemble(&svc, &r);
                    (cluster, whole)
                })
                .collect();
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
    use crate::store::Kv;
    use crate::view::ViewConfig;

    fn backend(ip: &str, ready: bool) -> Backend {
        Backend {
            ip: ip.into(),
            ready,
            serving: true,
            ..Default::default()
        }
    }

    fn svc(cluster: &str, inline: Vec<Backend>) -> Service {
        Service {
            namespace: "ns".into(),
            name: "web".into(),
            global: true,
            shared: true,
            frontend_ips: vec![format!("10.96.{}.1", cluster.len())],
            backends: inline,
            cluster: cluster.into(),
            exported: true,
            ..Default::default()
        }
    }

    /// A service is assembled per cluster from its record and its backend
    /// records: this cluster's (state/), a new peer's (backend records) and
    /// an older peer's (inline backends only) all show up whole.
    #[test]
    fn lookup_and_list_assemble_services_from_their_parts() {
        let v = View::new("a", ViewConfig::default());
        let mut kvs = Vec::new();
        let mut put = |key: String, value: Vec<u8>| {
            kvs.push(Kv {
                key,
                value: value.into(),
                mod_revision: 2,
            })
        };
        // a (local) and b (new peer): records without backends, one record per backend.
        for (cluster, ips) in [
            ("a", ["10.1.0.1", "10.1.0.2"]),
            ("b", ["10.2.0.1", "10.2.0.2"]),
        ] {
            let s = svc(cluster, vec![]);
            let key = |kind, k: &str| {
                if cluster == "a" {
                    keys::state(kind, cluster, k)
                } else {
                    keys::cache(kind, cluster, k)
                }
            };
            put(key(Kind::Service, "ns/web"), s.encode_to_vec());
            for (i, ip) in ips.iter().enumerate() {
                let rec = backends::record(&s, &backend(ip, i == 0));
                put(
                    key(Kind::ServiceBackend, &backends::key("ns", "web", ip)),
                    rec.encode_to_vec(),
                );
            }
        }
        // c (older peer): inline backends.
        put(
            keys::cache(Kind::Service, "c", "ns/web"),
            svc("c", vec![backend("10.3.0.1", true)]).encode_to_vec(),
        );
        // A backend record of another service with a name sharing the prefix.
        let other = Service {
            name: "web2".into(),
            ..svc("b", vec![])
        };
        put(
            keys::cache(Kind::Service, "b", "ns/web2"),
            other.encode_to_vec(),
        );
        put(
            keys::cache(Kind::ServiceBackend, "b", "ns/web2/10.2.0.9"),
            backends::record(&other, &backend("10.2.0.9", true)).encode_to_vec(),
        );
        v.load("e", 2, kvs);

        let r = lookup(&v, "ns", "web").expect("found");
        let got: Vec<(String, Vec<String>)> = r
            .clusters
            .iter()
            .map(|c| {
                (
                    c.cluster.clone(),
                    c.backends.iter().map(|b| b.ip.clone()).collect(),
                )
            })
            .collect();
        let want =
            |c: &str, ips: &[&str]| (c.to_string(), ips.iter().map(|s| s.to_string()).collect());
        assert_eq!(
            got,
            vec![
                want("a", &["10.1.0.1", "10.1.0.2"]),
                want("b", &["10.2.0.1", "10.2.0.2"]),
                want("c", &["10.3.0.1"]),
            ]
        );
        assert!(r.clusters[1].backends.iter().all(|b| b.cluster == "b"));
        let mut selected: Vec<String> = r.selected.iter().map(|b| b.ip.clone()).collect();
        selected.sort();
        assert_eq!(selected, ["10.1.0.1", "10.2.0.1", "10.3.0.1"]);

        let l = list(&v, false);
        let web = l.iter().find(|s| s.name == "web").expect("listed");
        assert_eq!((web.backends, web.ready_backends), (5, 3));
        let web2 = l.iter().find(|s| s.name == "web2").expect("listed");
        assert_eq!((web2.backends, web2.ready_backends), (1, 1));
    }

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
