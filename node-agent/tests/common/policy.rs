//! Compiling NetworkPolicy records with the agent's own compiler and
//! programming the result next to a topology's ipcache, and TCP probes.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use clustermesh_node_agent::agent::labels::IdentityLabels;
use clustermesh_node_agent::agent::policy::{
    CompiledPolicy, LocalEndpoint, PeerEndpoint, PolicyInputs, compile,
};
use clustermesh_node_agent::datapath::DesiredState;
use clustermesh_node_agent::datapath::netns::{named_netns_path, run_in_netns};
use clustermesh_proto::v1::{
    self as pb, LabelSelector, NamedPort, NetworkPolicySpec, PolicyPeer, PolicyPort,
};

use super::topology::Topology;

pub const NS: &str = "default";

/// An identity record of namespace `default` with `app=<app>`.
pub fn identity(id: u32, cluster: &str, app: &str) -> pb::Identity {
    pb::Identity {
        id,
        labels: [
            ("app".to_string(), app.to_string()),
            ("io.kubernetes.pod.namespace".into(), NS.into()),
            ("clustermesh.io/cluster".into(), cluster.into()),
        ]
        .into(),
        cluster: cluster.into(),
        exported: true,
    }
}

pub fn app(a: &str) -> LabelSelector {
    LabelSelector {
        match_labels: [("app".to_string(), a.to_string())].into(),
        match_expressions: vec![],
    }
}

pub fn from_app(a: &str) -> PolicyPeer {
    PolicyPeer {
        pod_selector: Some(app(a)),
        ..Default::default()
    }
}

pub fn ip_block(cidr: &str, except: &[&str]) -> PolicyPeer {
    PolicyPeer {
        ip_block: Some(pb::IpBlock {
            cidr: cidr.into(),
            except: except.iter().map(|s| s.to_string()).collect(),
        }),
        ..Default::default()
    }
}

pub fn tcp_range(lo: u32, hi: Option<u32>) -> PolicyPort {
    PolicyPort {
        protocol: "TCP".into(),
        port: Some(lo),
        end_port: hi,
        ..Default::default()
    }
}

pub fn tcp_named(name: &str) -> PolicyPort {
    PolicyPort {
        protocol: "TCP".into(),
        named_port: Some(name.into()),
        ..Default::default()
    }
}

pub fn named(name: &str, port: u32) -> NamedPort {
    NamedPort {
        name: name.into(),
        port,
        protocol: "TCP".into(),
    }
}

/// A policy on `app=<target>` with one ingress or egress rule.
pub fn policy(name: &str, target: &str, egress: bool, rule: pb::PolicyRule) -> pb::Policy {
    let (ingress, egress_rules, types) = if egress {
        (vec![], vec![rule], vec!["Egress".to_string()])
    } else {
        (vec![rule], vec![], vec!["Ingress".to_string()])
    };
    pb::Policy {
        namespace: NS.into(),
        name: name.into(),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(app(target)),
            ingress,
            egress: egress_rules,
            policy_types: types,
        }),
        cluster: "c1".into(),
        exported: true,
        // Across both test clusters (a plain policy selects only its own cluster's pods).
        global: true,
    }
}

/// What the agent would know: identity records and the pods' named ports.
#[derive(Default)]
pub struct Records {
    pub identities: Vec<pb::Identity>,
    pub policies: Vec<pb::Policy>,
    pub named_ports: BTreeMap<Ipv4Addr, Vec<NamedPort>>,
}

/// Gateway `g`'s desired state (topology ipcache, endpoints) plus the policy
/// the agent's compiler makes of `rec` for its pods. `identity_of` overrides
/// a pod's identity (relabels); `skip` leaves pods out (not started yet).
pub fn desired(
    t: &Topology,
    g: usize,
    rec: &Records,
    identity_of: &BTreeMap<Ipv4Addr, u32>,
    skip: &[Ipv4Addr],
) -> (DesiredState, CompiledPolicy) {
    let mut d = t.desired(g);
    d.ipcache
        .retain(|p, _| !skip.iter().any(|ip| p.addr() == *ip));
    let pods = &t.gws[g].pods;
    d.endpoints.retain(|ifindex, _| {
        !pods
            .iter()
            .any(|p| skip.contains(&p.ip) && p.host_ifindex == *ifindex)
    });
    for (p, e) in d.ipcache.iter_mut() {
        if let Some(id) = identity_of.get(&p.addr()) {
            e.identity = *id;
        }
    }
    for p in pods {
        if let (Some(id), Some(ep)) = (identity_of.get(&p.ip), d.endpoints.get_mut(&p.host_ifindex))
        {
            ep.identity = *id;
        }
    }
    let id = |p: &super::topology::Pod| identity_of.get(&p.ip).copied().unwrap_or(p.identity);
    let local: Vec<LocalEndpoint> = t.gws[g]
        .pods
        .iter()
        .filter(|p| !skip.contains(&p.ip))
        .map(|p| LocalEndpoint {
            ip: p.ip,
            identity: id(p),
            namespace: NS.into(),
            named_ports: rec.named_ports.get(&p.ip).cloned().unwrap_or_default(),
        })
        .collect();
    let mut endpoints: BTreeMap<u32, Vec<PeerEndpoint>> = BTreeMap::new();
    for p in t.gws.iter().flat_map(|gw| &gw.pods) {
        if let Some(np) = rec.named_ports.get(&p.ip) {
            endpoints.entry(id(p)).or_default().push(PeerEndpoint {
                ip: p.ip,
                named_ports: np.clone(),
            });
        }
    }
    let identities: BTreeMap<u32, IdentityLabels> = rec
        .identities
        .iter()
        .map(|i| (i.id, IdentityLabels::from_record(i)))
        .collect();
    let c = compile(
        &PolicyInputs {
            local: &local,
            identities: &identities,
            endpoints: &endpoints,
        },
        rec.policies.iter(),
    );
    d.policy = c.rules.clone();
    d.enforced = c.enforced.clone();
    d.policy_cidrs = c.cidrs.clone();
    (d, c)
}

/// Compiles and applies for both gateways; returns gateway `g`'s compilation.
pub fn program(t: &Topology, rec: &Records) -> [CompiledPolicy; 2] {
    let none = BTreeMap::new();
    [0, 1].map(|g| {
        let (d, c) = desired(t, g, rec, &none, &[]);
        t.datapath(g).apply(&d).expect("apply");
        c
    })
}

/// One TCP probe from netns `ns`: connect (within `timeout`), send, read the echo.
pub fn probe(ns: &str, addr: SocketAddr, timeout: Duration) -> bool {
    run_in_netns(&named_netns_path(ns), move || {
        let Ok(mut s) = TcpStream::connect_timeout(&addr, timeout) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(timeout));
        let mut buf = [0u8; 4];
        s.write_all(b"ping").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"ping"
    })
    .unwrap_or(false)
}
