//! Service backends as their own records (kind `ServiceBackend`, key
//! `<namespace>/<service>/<ip>`), and the one way every consumer puts a
//! service back together from its parts. See docs/mesh.md "Service backends".
//!
//! - A cluster advertising [`CAPABILITY`] writes a service's record without
//!   backends and one `ServiceBackend` record per backend, so a backend
//!   change is one small event on Watch and one small write.
//! - An older peer's service record carries its backends inline
//!   (`Service.backends`). Consumers take the union ([`assemble`]): inline
//!   backends plus backend records, a record winning over an inline backend
//!   of the same IP, sorted by IP (numerically, then as text).

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::v1::{Backend, Service, ServiceBackend};

/// The `ClusterInfo.capabilities` entry of a cluster that sends backends as
/// `ServiceBackend` records (and a `backends` sync marker).
pub const CAPABILITY: &str = "service-backends";

/// The record key of one backend: `<namespace>/<service>/<ip>`.
pub fn key(namespace: &str, service: &str, ip: &str) -> String {
    format!("{namespace}/{service}/{ip}")
}

/// The prefix of every backend key of one service: `<namespace>/<service>/`.
pub fn service_prefix(namespace: &str, service: &str) -> String {
    format!("{namespace}/{service}/")
}

/// `(namespace, service, ip)` of a backend key; None unless it has three
/// non-empty parts.
pub fn split_key(key: &str) -> Option<(&str, &str, &str)> {
    let mut it = key.splitn(3, '/');
    match (it.next(), it.next(), it.next()) {
        (Some(ns), Some(svc), Some(ip)) if !ns.is_empty() && !svc.is_empty() && !ip.is_empty() => {
            Some((ns, svc, ip))
        }
        _ => None,
    }
}

/// The service key (`<namespace>/<service>`) a backend key belongs to.
pub fn service_key_of(key: &str) -> Option<String> {
    split_key(key).map(|(ns, svc, _)| format!("{ns}/{svc}"))
}

/// The order backends are kept in: by parsed address, then by text.
pub fn ip_order(ip: &str) -> (Option<IpAddr>, &str) {
    (ip.parse().ok(), ip)
}

/// The record of one backend of `svc` (its `cluster` and `exported`).
pub fn record(svc: &Service, backend: &Backend) -> ServiceBackend {
    ServiceBackend {
        namespace: svc.namespace.clone(),
        service: svc.name.clone(),
        backend: Some(Backend {
            cluster: String::new(),
            ..backend.clone()
        }),
        cluster: svc.cluster.clone(),
        exported: svc.exported,
    }
}

/// A service record as this version writes it: `svc` without its backends.
/// (Field by field: cloning the whole record would copy every backend.)
pub fn without_backends(svc: &Service) -> Service {
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
    } = svc;
    Service {
        namespace: namespace.clone(),
        name: name.clone(),
        global: *global,
        shared: *shared,
        affinity: *affinity,
        ports: ports.clone(),
        frontend_ips: frontend_ips.clone(),
        backends: Vec::new(),
        cluster: cluster.clone(),
        exported: *exported,
    }
}

/// The whole service: `svc`'s inline backends (an older peer's) and the
/// backends of its `ServiceBackend` records, one per IP (a record wins over
/// an inline backend), sorted by [`ip_order`].
pub fn assemble<'a>(svc: &Service, records: impl IntoIterator<Item = &'a Backend>) -> Service {
    let mut by_ip: BTreeMap<(Option<IpAddr>, &str), &Backend> = BTreeMap::new();
    for b in &svc.backends {
        by_ip.insert(ip_order(&b.ip), b);
    }
    for b in records {
        by_ip.insert(ip_order(&b.ip), b);
    }
    let backends = by_ip.into_values().cloned().collect();
    Service {
        backends,
        ..without_backends(svc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(ip: &str, ready: bool) -> Backend {
        Backend {
            ip: ip.into(),
            ready,
            ..Default::default()
        }
    }

    #[test]
    fn keys() {
        assert_eq!(key("ns", "web", "10.0.0.1"), "ns/web/10.0.0.1");
        assert_eq!(split_key("ns/web/fd00::1"), Some(("ns", "web", "fd00::1")));
        assert_eq!(split_key("ns/web"), None);
        assert_eq!(split_key("ns//1.2.3.4"), None);
        assert_eq!(service_key_of("ns/web/1.2.3.4").as_deref(), Some("ns/web"));
        assert!(key("ns", "web", "1.2.3.4").starts_with(&service_prefix("ns", "web")));
    }

    #[test]
    fn assemble_takes_the_union_and_records_win() {
        let svc = Service {
            namespace: "ns".into(),
            name: "web".into(),
            backends: vec![b("10.0.0.9", false), b("10.0.0.10", true)],
            ..Default::default()
        };
        let recs = [b("10.0.0.9", true), b("10.0.0.2", true)];
        let whole = assemble(&svc, &recs);
        let ips: Vec<&str> = whole.backends.iter().map(|b| b.ip.as_str()).collect();
        assert_eq!(ips, ["10.0.0.2", "10.0.0.9", "10.0.0.10"]);
        assert!(
            whole.backends[1].ready,
            "the record wins over the inline backend"
        );
        assert_eq!(without_backends(&whole).backends, vec![]);
        let r = record(&svc, &recs[0]);
        assert_eq!((r.namespace.as_str(), r.service.as_str()), ("ns", "web"));
    }
}
