//! NetworkPolicies → policy records (the spec mirrored into the proto).

use clustermesh_proto::v1::{
    IpBlock, LabelSelector, LabelSelectorRequirement, NetworkPolicySpec, Policy, PolicyPeer,
    PolicyPort, PolicyRule,
};
use k8s_openapi::api::networking::v1 as networking;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{GLOBAL_ANNOTATION, NamespaceInfo, is_true, port_u32, protocol_or_tcp};

/// A Kubernetes label selector in proto form.
pub fn selector(s: &meta::LabelSelector) -> LabelSelector {
    LabelSelector {
        match_labels: s.match_labels.clone().unwrap_or_default(),
        match_expressions: s
            .match_expressions
            .iter()
            .flatten()
            .map(|e| LabelSelectorRequirement {
                key: e.key.clone(),
                operator: e.operator.clone(),
                values: e.values.clone().unwrap_or_default(),
            })
            .collect(),
    }
}

/// A peer; unset selectors stay unset (an empty one matches everything).
pub fn peer(p: &networking::NetworkPolicyPeer) -> PolicyPeer {
    PolicyPeer {
        pod_selector: p.pod_selector.as_ref().map(selector),
        namespace_selector: p.namespace_selector.as_ref().map(selector),
        ip_block: p.ip_block.as_ref().map(|b| IpBlock {
            cidr: b.cidr.clone(),
            except: b.except.clone().unwrap_or_default(),
        }),
    }
}

/// A port: protocol defaulting to TCP; a number or a named port (a string
/// holding only digits is read as a number); `endPort`.
pub fn port(p: &networking::NetworkPolicyPort) -> PolicyPort {
    let (port, named_port) = match &p.port {
        None => (None, None),
        Some(IntOrString::Int(n)) => (Some(port_u32(*n)), None),
        Some(IntOrString::String(s)) => match s.parse::<u32>() {
            Ok(n) => (Some(n), None),
            Err(_) => (None, Some(s.clone())),
        },
    };
    PolicyPort {
        protocol: protocol_or_tcp(p.protocol.as_ref()),
        port,
        named_port,
        end_port: p.end_port.map(port_u32),
    }
}

fn rule(
    peers: Option<&Vec<networking::NetworkPolicyPeer>>,
    ports: Option<&Vec<networking::NetworkPolicyPort>>,
) -> PolicyRule {
    PolicyRule {
        peers: peers.into_iter().flatten().map(peer).collect(),
        ports: ports.into_iter().flatten().map(port).collect(),
    }
}

/// The spec in proto form. `policyTypes` is defaulted the Kubernetes way
/// when not given: `Ingress` always, `Egress` when there are egress rules.
pub fn policy_spec(spec: Option<&networking::NetworkPolicySpec>) -> NetworkPolicySpec {
    let Some(spec) = spec else {
        return NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            ingress: Vec::new(),
            egress: Vec::new(),
            policy_types: vec!["Ingress".to_string()],
        };
    };
    let ingress: Vec<PolicyRule> = spec
        .ingress
        .iter()
        .flatten()
        .map(|r| rule(r.from.as_ref(), r.ports.as_ref()))
        .collect();
    let egress: Vec<PolicyRule> = spec
        .egress
        .iter()
        .flatten()
        .map(|r| rule(r.to.as_ref(), r.ports.as_ref()))
        .collect();
    let policy_types = match spec.policy_types.as_ref().filter(|t| !t.is_empty()) {
        Some(t) => t.clone(),
        None if egress.is_empty() => vec!["Ingress".to_string()],
        None => vec!["Ingress".to_string(), "Egress".to_string()],
    };
    NetworkPolicySpec {
        // An unset podSelector selects every pod, like an empty one.
        pod_selector: Some(spec.pod_selector.as_ref().map(selector).unwrap_or_default()),
        ingress,
        egress,
        policy_types,
    }
}

/// The policy record: every NetworkPolicy is recorded; exported when
/// annotated `clustermesh.io/global: "true"` and its namespace is exported.
pub fn policy_record(np: &networking::NetworkPolicy, ns: &NamespaceInfo, cluster: &str) -> Policy {
    let global = np
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(GLOBAL_ANNOTATION))
        .is_some_and(|v| is_true(v));
    Policy {
        namespace: np.metadata.namespace.clone().unwrap_or_default(),
        name: np.metadata.name.clone().unwrap_or_default(),
        spec: Some(policy_spec(np.spec.as_ref())),
        global,
        cluster: cluster.to_string(),
        exported: global && ns.exported,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use networking::{NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer};

    fn sel(k: &str, v: &str) -> meta::LabelSelector {
        meta::LabelSelector {
            match_labels: Some([(k.to_string(), v.to_string())].into()),
            match_expressions: None,
        }
    }

    #[test]
    fn peers_keep_unset_and_empty_selectors_apart() {
        let p = peer(&NetworkPolicyPeer {
            namespace_selector: Some(meta::LabelSelector::default()),
            pod_selector: None,
            ip_block: None,
        });
        assert_eq!(p.namespace_selector, Some(LabelSelector::default()));
        assert_eq!(p.pod_selector, None);
    }

    #[test]
    fn ports_int_named_endport_default_protocol() {
        let p = port(&networking::NetworkPolicyPort {
            port: Some(IntOrString::Int(8000)),
            end_port: Some(8080),
            protocol: None,
        });
        assert_eq!(
            (p.protocol.as_str(), p.port, p.end_port),
            ("TCP", Some(8000), Some(8080))
        );
        let p = port(&networking::NetworkPolicyPort {
            port: Some(IntOrString::String("http".into())),
            end_port: None,
            protocol: Some("UDP".into()),
        });
        assert_eq!((p.port, p.named_port.as_deref()), (None, Some("http")));
        assert_eq!(p.protocol, "UDP");
        let p = port(&networking::NetworkPolicyPort::default());
        assert_eq!((p.port, p.named_port), (None, None));
    }

    #[test]
    fn policy_types_are_defaulted() {
        let mut spec = networking::NetworkPolicySpec {
            pod_selector: Some(sel("app", "backend")),
            ingress: Some(vec![NetworkPolicyIngressRule::default()]),
            ..Default::default()
        };
        assert_eq!(policy_spec(Some(&spec)).policy_types, vec!["Ingress"]);
        spec.egress = Some(vec![NetworkPolicyEgressRule::default()]);
        let s = policy_spec(Some(&spec));
        assert_eq!(s.policy_types, vec!["Ingress", "Egress"]);
        assert_eq!(s.egress.len(), 1);
        spec.policy_types = Some(vec!["Egress".into()]);
        assert_eq!(policy_spec(Some(&spec)).policy_types, vec!["Egress"]);
        spec.pod_selector = None;
        assert_eq!(
            policy_spec(Some(&spec)).pod_selector,
            Some(LabelSelector::default())
        );
    }
}
