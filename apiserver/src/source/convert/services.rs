//! Services + EndpointSlices → service records.

use std::collections::BTreeMap;
use std::net::IpAddr;

use clustermesh_proto::v1::{Affinity, Backend, BackendPort, Service, ServicePort};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::{NamespaceInfo, is_false, is_true, port_u32, protocol_or_tcp};

/// Label on an EndpointSlice naming the service it belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Our annotation prefix; wins over Cilium's when both are set.
pub const ANNOTATION_PREFIX: &str = "clustermesh.io/";
/// Cilium's annotation prefix, accepted the same way.
pub const CILIUM_ANNOTATION_PREFIX: &str = "service.cilium.io/";

/// The mesh settings of a service, read from its annotations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAnnotations {
    pub global: bool,
    pub shared: bool,
    pub affinity: Affinity,
    /// Set when an annotation value was invalid (and a default used).
    pub warning: Option<String>,
}

fn annotation<'a>(a: Option<&'a BTreeMap<String, String>>, name: &str) -> Option<&'a str> {
    let a = a?;
    a.get(&format!("{ANNOTATION_PREFIX}{name}"))
        .or_else(|| a.get(&format!("{CILIUM_ANNOTATION_PREFIX}{name}")))
        .map(String::as_str)
}

/// Reads `global`, `shared` and `affinity` under `clustermesh.io/` or
/// `service.cilium.io/` (ours wins per annotation). `global` is `"true"`
/// (any case); `shared` defaults to true for a global service unless
/// `"false"`; `affinity` is `local`, `remote` or `none` (default; any other
/// value reads as `none` with a warning).
pub fn service_annotations(annotations: Option<&BTreeMap<String, String>>) -> ServiceAnnotations {
    let global = annotation(annotations, "global").is_some_and(is_true);
    let shared = global && !annotation(annotations, "shared").is_some_and(is_false);
    let mut warning = None;
    let affinity = match annotation(annotations, "affinity").map(|v| v.trim().to_ascii_lowercase())
    {
        None => Affinity::None,
        Some(v) => match v.as_str() {
            "local" => Affinity::Local,
            "remote" => Affinity::Remote,
            "none" | "" => Affinity::None,
            other => {
                warning = Some(format!(
                    "invalid affinity {other:?} (want local, remote or none): using none"
                ));
                Affinity::None
            }
        },
    };
    ServiceAnnotations {
        global,
        shared,
        affinity,
        warning,
    }
}

/// Frontend IPs: `spec.clusterIPs` (or `spec.clusterIP`) without "None", so
/// a headless service has none.
pub fn frontend_ips(svc: &core::Service) -> Vec<String> {
    let Some(spec) = svc.spec.as_ref() else {
        return Vec::new();
    };
    let mut ips: Vec<String> = match spec.cluster_ips.as_ref().filter(|l| !l.is_empty()) {
        Some(list) => list.clone(),
        None => spec.cluster_ip.iter().cloned().collect(),
    };
    ips.retain(|ip| !ip.is_empty() && ip != "None");
    ips.dedup();
    ips
}

/// Whether an EndpointSlice endpoint may receive traffic: ready or serving
/// (both read as true when unset, as the Kubernetes API documents).
fn conditions(ep: &k8s_openapi::api::discovery::v1::Endpoint) -> (bool, bool) {
    let c = ep.conditions.as_ref();
    let ready = c.and_then(|c| c.ready).unwrap_or(true);
    let serving = c.and_then(|c| c.serving).unwrap_or(true);
    (ready, serving)
}

fn ip_order(ip: &str) -> (Option<IpAddr>, String) {
    (ip.parse().ok(), ip.to_string())
}

/// One backend per address of the slices' ready-or-serving endpoints, with
/// the slice's ports, sorted by IP. An address listed twice keeps its first
/// ready entry.
pub fn backends(slices: &[&EndpointSlice]) -> Vec<Backend> {
    let candidates: Vec<Vec<Backend>> = slices.iter().map(|s| slice_backends(s)).collect();
    merge_backends(candidates.iter().map(Vec::as_slice))
}

/// One slice's backend candidates, in the slice's order (none for an FQDN
/// slice): what [`backends`] merges.
pub fn slice_backends(slice: &EndpointSlice) -> Vec<Backend> {
    if slice.address_type == "FQDN" {
        return Vec::new();
    }
    let ports: Vec<BackendPort> = slice
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some(BackendPort {
                name: p.name.clone().unwrap_or_default(),
                port: port_u32(p.port?),
                protocol: protocol_or_tcp(p.protocol.as_ref()),
            })
        })
        .collect();
    let mut out = Vec::new();
    for ep in slice.endpoints.iter().flatten() {
        let (ready, serving) = conditions(ep);
        if !ready && !serving {
            continue;
        }
        for ip in ep.addresses.iter().filter(|a| !a.is_empty()) {
            out.push(Backend {
                ip: ip.clone(),
                ports: ports.clone(),
                ready,
                serving,
                zone: ep.zone.clone().unwrap_or_default(),
                node_name: ep.node_name.clone().unwrap_or_default(),
                cluster: String::new(),
            });
        }
    }
    out
}

/// Merges slices' candidates (in slice order): sorted by IP, an address
/// listed twice keeps its first ready entry.
pub fn merge_backends<'a>(slices: impl IntoIterator<Item = &'a [Backend]>) -> Vec<Backend> {
    let mut by_ip: BTreeMap<(Option<IpAddr>, String), &Backend> = BTreeMap::new();
    for b in slices.into_iter().flatten() {
        let slot = by_ip.entry(ip_order(&b.ip)).or_insert(b);
        if !slot.ready && b.ready {
            *slot = b;
        }
    }
    by_ip.into_values().cloned().collect()
}

/// What the conversion reads of one EndpointSlice, kept per slice by the
/// inventory instead of the object.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SliceFacts {
    /// The `kubernetes.io/service-name` label: the service it belongs to.
    pub service: Option<String>,
    /// [`slice_backends`].
    pub backends: Vec<Backend>,
}

impl SliceFacts {
    pub fn from_slice(slice: &EndpointSlice) -> SliceFacts {
        SliceFacts {
            service: slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
                .cloned(),
            backends: slice_backends(slice),
        }
    }
}

/// What the conversion reads of one Service, kept per service by the
/// inventory instead of the object: the record without its backends,
/// cluster and export flag (which other objects decide).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceFacts {
    /// `backends` empty, `cluster` empty, `exported` = `global`.
    pub record: Service,
    /// An invalid annotation, as reported into `warnings`.
    pub warning: Option<String>,
}

impl ServiceFacts {
    pub fn from_service(svc: &core::Service) -> ServiceFacts {
        let namespace = svc.metadata.namespace.clone().unwrap_or_default();
        let name = svc.metadata.name.clone().unwrap_or_default();
        let ann = service_annotations(svc.metadata.annotations.as_ref());
        let warning = ann
            .warning
            .as_ref()
            .map(|w| format!("Service {namespace}/{name}: {w}"));
        let ports = svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .into_iter()
            .flatten()
            .map(|p| ServicePort {
                name: p.name.clone().unwrap_or_default(),
                port: port_u32(p.port),
                protocol: protocol_or_tcp(p.protocol.as_ref()),
            })
            .collect();
        ServiceFacts {
            record: Service {
                namespace,
                name,
                global: ann.global,
                shared: ann.shared,
                affinity: ann.affinity as i32,
                ports,
                frontend_ips: frontend_ips(svc),
                backends: Vec::new(),
                cluster: String::new(),
                exported: ann.global,
            },
            warning,
        }
    }

    /// The record with these backends, in this namespace and cluster.
    pub fn record(&self, backends: Vec<Backend>, ns: &NamespaceInfo, cluster: &str) -> Service {
        Service {
            backends,
            cluster: cluster.to_string(),
            exported: self.record.global && ns.exported,
            ..self.record.clone()
        }
    }
}

/// Whether two versions of a service (with backends) differ only in their
/// backends: then its record as written (without backends) is unchanged.
pub fn same_but_backends(a: Option<&Service>, b: Option<&Service>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            // Destructured so that a new field cannot be forgotten here.
            let Service {
                namespace,
                name,
                global,
                shared,
                affinity,
                ports,
                frontend_ips,
                backends: _,
                cluster,
                exported,
            } = a;
            *namespace == b.namespace
                && *name == b.name
                && *global == b.global
                && *shared == b.shared
                && *affinity == b.affinity
                && *ports == b.ports
                && *frontend_ips == b.frontend_ips
                && *cluster == b.cluster
                && *exported == b.exported
        }
        _ => false,
    }
}

/// The service record. `slices` are the EndpointSlices of this service
/// (same namespace, labelled `kubernetes.io/service-name=<name>`).
/// Exported when global and its namespace is exported. An invalid annotation
/// is reported into `warnings`.
pub fn service_record(
    svc: &core::Service,
    slices: &[&EndpointSlice],
    ns: &NamespaceInfo,
    cluster: &str,
    warnings: &mut Vec<String>,
) -> Service {
    let facts = ServiceFacts::from_service(svc);
    if let Some(w) = &facts.warning {
        warnings.push(w.clone());
    }
    facts.record(backends(slices), ns, cluster)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn annotation_parsing() {
        let a = service_annotations(None);
        assert!(!a.global && !a.shared && a.affinity == Affinity::None && a.warning.is_none());

        let a = service_annotations(Some(&ann(&[("clustermesh.io/global", "TRUE")])));
        assert!(a.global && a.shared);

        let a = service_annotations(Some(&ann(&[
            ("clustermesh.io/global", "true"),
            ("clustermesh.io/shared", "false"),
            ("clustermesh.io/affinity", "Local"),
        ])));
        assert!(a.global && !a.shared && a.affinity == Affinity::Local);

        // shared means nothing without global
        let a = service_annotations(Some(&ann(&[("clustermesh.io/shared", "true")])));
        assert!(!a.shared);

        let a = service_annotations(Some(&ann(&[
            ("service.cilium.io/global", "true"),
            ("service.cilium.io/affinity", "remote"),
        ])));
        assert!(a.global && a.shared && a.affinity == Affinity::Remote);

        // ours wins over Cilium's, per annotation
        let a = service_annotations(Some(&ann(&[
            ("service.cilium.io/global", "true"),
            ("clustermesh.io/global", "false"),
            ("service.cilium.io/affinity", "remote"),
        ])));
        assert!(!a.global && a.affinity == Affinity::Remote);

        let a = service_annotations(Some(&ann(&[("clustermesh.io/affinity", "nearest")])));
        assert_eq!(a.affinity, Affinity::None);
        assert!(a.warning.as_deref().is_some_and(|w| w.contains("nearest")));
    }
}
