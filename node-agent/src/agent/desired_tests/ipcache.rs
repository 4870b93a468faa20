//! Local pods, remote endpoints and CIDRs, gateways.

use super::*;

#[test]
fn local_pods_get_local_entries_and_endpoints() {
    let c = run(&mesh());
    let d = &c.desired;
    assert_eq!(c.local_pods, 2);
    assert_eq!(
        d.ipcache[&Ipv4Prefix::host(ip("10.1.0.10"))],
        IpcacheEntry {
            identity: C1_FRONT,
            location: Location::Local { ifindex: 10 }
        }
    );
    assert_eq!(d.endpoints[&10].pod_mac, [2, 1, 1, 1, 1, 10]);
    assert_eq!(d.endpoints[&10].host_mac, [2, 0, 0, 0, 0, 10]);
    assert_eq!(
        d.endpoints[&11].pod_mac, UNKNOWN_POD_MAC,
        "MAC not known yet"
    );
    // The worker's pod and CIDR: this cluster, another node — passed through
    // by from_pod, relayed by this gateway to the worker's InternalIP.
    let worker = Location::Cluster {
        node: Some(ip("192.168.1.11")),
    };
    assert_eq!(
        d.ipcache[&Ipv4Prefix::host(ip("10.1.1.10"))].location,
        worker
    );
    assert_eq!(d.ipcache[&"10.1.1.0/24".parse().unwrap()].location, worker);
    // This node's own CIDR is this cluster's too, and never relayed.
    assert_eq!(
        d.ipcache[&"10.1.0.0/24".parse().unwrap()].location,
        Location::Cluster { node: None }
    );
    assert!(c.plan.is_gateway);

    // A local pod whose interface is not found is pending, not programmed.
    let mut v = mesh();
    v.insert_endpoint(endpoint("c1", "10.1.0.12", C1_FRONT, "c1-gw", "shop", &[]));
    let c = run(&v);
    assert_eq!(c.pending, vec![ip("10.1.0.12")]);
    assert!(
        !c.desired
            .ipcache
            .contains_key(&Ipv4Prefix::host(ip("10.1.0.12")))
    );
}

#[test]
fn remote_endpoints_and_cidrs_go_to_their_gateway() {
    let c = run(&mesh());
    let d = &c.desired;
    let remote = |id| IpcacheEntry {
        identity: id,
        location: Location::Remote {
            tunnel_endpoint: GW2,
        },
    };
    assert_eq!(
        d.ipcache[&Ipv4Prefix::host(ip("10.2.0.11"))],
        remote(C2_BACK)
    );
    // A pod on c2's worker: still via c2's gateway.
    assert_eq!(
        d.ipcache[&Ipv4Prefix::host(ip("10.2.1.12"))],
        remote(C2_TOOL)
    );
    assert_eq!(
        d.ipcache[&"10.2.0.0/24".parse().unwrap()],
        remote(IDENTITY_WORLD)
    );
    assert_eq!(
        d.ipcache[&"10.2.1.0/24".parse().unwrap()],
        remote(IDENTITY_WORLD)
    );
    assert_eq!(c.remote_endpoints, 3);
    assert_eq!(c.plan.via, [("c2".to_string(), GW2)].into());
    // Native routes: the CIDRs (endpoints inside them need no route of their own).
    assert_eq!(c.routes.len(), 2);
    assert_eq!(c.routes[&"10.2.1.0/24".parse().unwrap()], GW2);
    assert!(
        !c.routes.values().any(|g| *g == GW1),
        "no route to the local cluster"
    );
}

#[test]
fn remote_cluster_without_gateway_or_identity_is_skipped() {
    let mut v = mesh();
    v.insert_node(node("c3", "c3-worker", "10.3.255.1", "10.3.0.0/24", false));
    v.insert_endpoint(endpoint(
        "c3",
        "10.3.0.5",
        C3_FRONT,
        "c3-worker",
        "shop",
        &[],
    ));
    v.insert_endpoint(endpoint("c2", "10.2.0.99", 0, "c2-gw", "shop", &[]));
    // An endpoint outside every CIDR gets a /32 route.
    v.insert_endpoint(endpoint("c2", "10.9.9.9", C2_FRONT, "c2-gw", "shop", &[]));
    let c = run(&v);
    assert_eq!(c.no_gateway, 1);
    assert_eq!(c.invalid_endpoints, 1);
    assert!(
        !c.desired
            .ipcache
            .contains_key(&Ipv4Prefix::host(ip("10.3.0.5")))
    );
    assert!(
        !c.desired
            .ipcache
            .contains_key(&"10.3.0.0/24".parse().unwrap())
    );
    assert_eq!(c.routes[&Ipv4Prefix::host(ip("10.9.9.9"))], GW2);
    c.desired.to_raw().expect("valid desired state");
}

#[test]
fn an_ordinary_node_sends_remote_traffic_to_its_own_gateway() {
    let v = mesh();
    let c = compute(
        &v,
        "c1-worker",
        &BTreeMap::new(),
        &mut ServiceIds::new(),
        &[],
    );
    assert!(!c.plan.is_gateway);
    // Every remote destination via this cluster's gateway (its InternalIP).
    assert_eq!(c.plan.via, [("c2".to_string(), GW1)].into());
    assert_eq!(
        c.desired.ipcache[&Ipv4Prefix::host(ip("10.2.0.11"))].location,
        Location::Remote {
            tunnel_endpoint: GW1
        }
    );
    // The gateway's pods are this cluster's: passed through.
    assert_eq!(
        c.desired.ipcache[&Ipv4Prefix::host(ip("10.1.0.10"))].location,
        Location::Cluster { node: Some(GW1) }
    );
    // Senders: this cluster's gateway and worker, c2's gateway (not its worker).
    let ts = &c.desired.tunnel_sources;
    assert_eq!(ts[&GW1], TunnelSender::LocalGateway);
    assert_eq!(ts[&ip("192.168.1.11")], TunnelSender::LocalNode);
    assert_eq!(ts[&GW2], TunnelSender::PeerGateway { cluster_id: 2 });
    assert!(!ts.contains_key(&ip("192.168.2.11")));

    // A gateway that is not live is not used while another one is.
    let mut v2 = v.clone();
    let gw2 = ip("172.31.255.3");
    v2.insert_node(node("c1", "c1-gw2", "172.31.255.3", "10.1.2.0/24", true));
    let mut gw = node("c1", "c1-gw", "172.31.255.1", "10.1.0.0/24", true);
    gw.gateway_live = Some(false);
    v2.insert_node(gw);
    let none = || BTreeMap::new();
    let c = compute(&v2, "c1-worker", &none(), &mut ServiceIds::new(), &[]);
    assert_eq!(c.plan.via, [("c2".to_string(), gw2)].into());
    // With none live, the gateway nodes are used anyway (a restarting agent's
    // pinned datapath still forwards).
    let mut gw2n = node("c1", "c1-gw2", "172.31.255.3", "10.1.2.0/24", true);
    gw2n.gateway_live = Some(false);
    v2.insert_node(gw2n);
    let c = compute(&v2, "c1-worker", &none(), &mut ServiceIds::new(), &[]);
    assert_eq!(c.plan.via.len(), 1);
    assert_eq!(c.remote_endpoints, 3);
    // A cluster without any gateway node is unreachable.
    let mut v3 = v.clone();
    let mut c2gw = node("c2", "c2-gw", "172.31.255.2", "10.2.0.0/24", true);
    c2gw.gateway = false;
    v3.insert_node(c2gw);
    let c = compute(&v3, "c1-worker", &none(), &mut ServiceIds::new(), &[]);
    assert!(c.plan.via.is_empty());
    assert_eq!(c.plan.unreachable, vec!["c2".to_string()]);
}

#[test]
fn service_cidrs_are_left_to_the_cni() {
    let cidr: Ipv4Prefix = "10.96.0.0/12".parse().unwrap();
    let c = compute(&mesh(), NODE, &ifaces(), &mut ServiceIds::new(), &[cidr]);
    assert_eq!(
        c.desired.ipcache[&cidr].location,
        Location::Cluster { node: None }
    );
}
