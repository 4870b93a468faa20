//! What the agent reads and sets on the node, in network namespaces (needs
//! root): the pod's interface found from the node's /32 route, the pod's MAC
//! from the neighbour table after a probe, and the pod-side MTU set through
//! the host-side veth (through iproute2 and the pod's named network namespace).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::process::Command;

use clustermesh_node_agent::agent::host::PodFinder;
use clustermesh_node_agent::agent::mtu;
use clustermesh_node_agent::datapath::netdev;
use clustermesh_node_agent::datapath::netns::{named_netns_path, run_in_netns};
use common::require_root;

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Netns(Vec<String>);

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

#[test]
fn finds_pod_interface_mac_and_sets_pod_mtu() {
    if !require_root("finds_pod_interface_mac_and_sets_pod_mtu") {
        return;
    }
    let id = std::process::id();
    let (gw, pod) = (format!("cmh{id}-gw"), format!("cmh{id}-pod"));
    let _guard = Netns(vec![pod.clone(), gw.clone()]);
    for ns in [&gw, &pod] {
        ip(&["netns", "add", ns]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
    }
    ip(&[
        "link", "add", "vp0", "netns", &gw, "type", "veth", "peer", "name", "eth0", "netns", &pod,
    ]);
    ip(&["-n", &gw, "addr", "add", "192.0.2.1/32", "dev", "lo"]);
    ip(&["-n", &gw, "link", "set", "vp0", "up"]);
    ip(&["-n", &pod, "link", "set", "eth0", "up"]);
    ip(&["-n", &pod, "addr", "add", "10.1.0.2/32", "dev", "eth0"]);
    ip(&["-n", &pod, "route", "add", "192.0.2.1/32", "dev", "eth0"]);
    ip(&["-n", &gw, "route", "add", "10.1.0.2/32", "dev", "vp0"]);
    let pod_ip: Ipv4Addr = "10.1.0.2".parse().expect("ip");
    let pod_ns = pod.clone();
    let pod_mac = run_in_netns(&named_netns_path(&pod_ns), || netdev::mac_address("eth0"))
        .expect("netns")
        .expect("pod mac");

    let (found, mtu_result, found_again) = run_in_netns(&named_netns_path(&gw), move || {
        let mut finder = PodFinder::new(BTreeMap::new());
        let pods: BTreeSet<Ipv4Addr> = [pod_ip].into();
        let first = finder.find(&pods);
        let set = mtu::set_peer_mtu("vp0", 1400).map_err(|e| e.to_string());
        // Changing the MTU flushes the host's neighbour entry: probe again.
        finder.reset_probes();
        let mut again = finder.find(&pods);
        for _ in 0..20 {
            if again.get(&pod_ip).and_then(|i| i.pod_mac).is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            again = finder.find(&pods);
        }
        (first, set, again)
    })
    .expect("netns");
    let iface = found
        .get(&pod_ip)
        .expect("pod interface from the /32 route");
    assert_eq!(iface.name, "vp0");
    assert_eq!(mtu_result, Ok(Some(1500)), "previous pod MTU returned");
    assert_eq!(
        found_again.get(&pod_ip).and_then(|i| i.pod_mac),
        Some(pod_mac),
        "pod MAC from the neighbour table"
    );
    let out = Command::new("ip")
        .args(["-n", &pod, "-o", "link", "show", "eth0"])
        .output()
        .expect("ip");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("mtu 1400"),
        "pod MTU not set: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}
