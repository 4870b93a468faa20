//! The incremental desired state against the one built from nothing: after
//! every change of a random sequence (nodes that come, go, become gateways
//! and lose their liveness; endpoints that move between clusters, collide
//! with this node's pods and each other; identities, policies, services,
//! the pods' interfaces) the two are equal, and writing only the touched
//! ipcache entries leaves the map equal to the desired ipcache.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use clustermesh_proto::mirror::Change;
use clustermesh_proto::v1::Kind;

use super::super::incremental::Incremental;
use super::*;

const CLUSTERS: [&str; 4] = ["c1", "c2", "c3", "c4"];
const NODES: [&str; 3] = ["gw", "w1", "w2"];

fn node_name(cluster: &str, n: &str) -> String {
    if cluster == "c1" && n == "gw" {
        NODE.to_string()
    } else {
        format!("{cluster}-{n}")
    }
}

/// An endpoint address from a pool small enough that addresses collide
/// across clusters and with this node's pods.
fn pool_ip(rng: &mut StdRng) -> String {
    format!(
        "10.{}.{}.{}",
        rng.random_range(1..4),
        rng.random_range(0..3),
        rng.random_range(10..14)
    )
}

/// One random change to `v` (or to the pods' interfaces).
fn step(rng: &mut StdRng, v: &mut View, ifs: &mut BTreeMap<Ipv4Addr, PodIface>) {
    let c = CLUSTERS[rng.random_range(0..CLUSTERS.len())];
    let cid = c[1..].parse::<u32>().unwrap_or(9);
    // Small address pools, so that prefixes collide across clusters.
    match rng.random_range(0..100) {
        0..=14 => {
            let n = NODES[rng.random_range(0..NODES.len())];
            let cidr = match rng.random_range(0..4) {
                0 => format!(
                    "10.{}.{}.0/24",
                    rng.random_range(1..4),
                    rng.random_range(0..3)
                ),
                1 => format!("10.1.0.{}/32", rng.random_range(10..13)),
                _ => format!("10.{cid}.{}.0/24", rng.random_range(0..3)),
            };
            let mut rec = node(
                c,
                &node_name(c, n),
                &format!("172.31.{cid}.{}", rng.random_range(1..4)),
                &cidr,
                n == "gw" || rng.random_bool(0.2),
            );
            if rng.random_bool(0.2) {
                rec.gateway_live = Some(rng.random_bool(0.5));
            }
            v.insert_node(rec);
        }
        15..=19 => {
            let n = NODES[rng.random_range(0..NODES.len())];
            v.apply(&Change::Delete {
                id: (Kind::Node, c.into(), node_name(c, n)),
            });
        }
        20..=54 => {
            let ip = pool_ip(rng);
            let id = match rng.random_range(0..10) {
                0 => 0,
                _ => (cid << 16) | 0x100 | rng.random_range(0..3),
            };
            let on = node_name(c, NODES[rng.random_range(0..NODES.len())]);
            let ports: &[(&str, u32)] = if rng.random_bool(0.3) {
                &[("http", 8080)]
            } else {
                &[]
            };
            v.insert_endpoint(endpoint(c, &ip, id, &on, "shop", ports));
        }
        55..=69 => {
            let ip = pool_ip(rng);
            v.apply(&Change::Delete {
                id: (Kind::Endpoint, c.into(), ip),
            });
        }
        70..=77 => {
            let n = rng.random_range(0..3);
            let app = ["frontend", "backend", "tools"][rng.random_range(0..3)];
            v.insert_identity(identity(c, (cid << 16) | 0x100 | n, "shop", app, &[]));
        }
        78..=81 => {
            let target = ["frontend", "backend"][rng.random_range(0..2)];
            let from = ["frontend", "tools"][rng.random_range(0..2)];
            v.insert_policy(ingress_policy(
                c,
                target,
                vec![pb::PolicyRule {
                    peers: vec![pod_peer(&[("app", from)])],
                    ports: vec![tcp(8080)],
                }],
            ));
        }
        82..=85 => {
            let fe = format!("10.96.0.{}", rng.random_range(1..3));
            let b = format!("10.{cid}.0.{}", rng.random_range(10..14));
            v.insert_service(svc(c, &fe, PbAffinity::None, &[(&b, rng.random_bool(0.7))]));
        }
        86..=91 => {
            // This node's pods' interfaces come and go.
            let ip = ip(&format!("10.1.0.{}", rng.random_range(10..14)));
            if ifs.remove(&ip).is_none() {
                let i = 10 + u32::from(ip.octets()[3]);
                ifs.insert(
                    ip,
                    iface(i, rng.random_bool(0.5).then_some([2, 1, 1, 1, 1, 1])),
                );
            }
        }
        _ => {
            // A whole cluster goes away.
            for n in NODES {
                v.apply(&Change::Delete {
                    id: (Kind::Node, c.into(), node_name(c, n)),
                });
            }
            let keys: Vec<_> = v
                .endpoints
                .of_cluster(c)
                .map(|(k, _)| k.to_string())
                .collect();
            for k in keys {
                v.apply(&Change::Delete {
                    id: (Kind::Endpoint, c.into(), k.to_string()),
                });
            }
        }
    }
}

#[test]
fn incremental_equals_computed_from_nothing() {
    for seed in 0..40u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut v = mesh();
        let mut ifs = ifaces();
        let mut inc = Incremental::default();
        let mut ids = ServiceIds::new();
        // What the ipcache map holds: only touched entries are written.
        let mut map: BTreeMap<Ipv4Prefix, IpcacheEntry> = BTreeMap::new();
        for i in 0..150 {
            if i > 0 {
                for _ in 0..rng.random_range(1..4) {
                    step(&mut rng, &mut v, &mut ifs);
                }
            }
            let dirty = std::mem::take(&mut v.dirty);
            let touched = inc.update_with(&v, &dirty, NODE, &ifs, &mut ids, &[]);
            let mut fresh_ids = ids.clone();
            let fresh = compute(&v, NODE, &ifs, &mut fresh_ids, &[]);
            let mut got = inc.computed().clone();
            got.routes = inc.routes();
            assert_eq!(got, fresh, "seed {seed}, step {i}");
            for (p, before) in &touched {
                assert_eq!(map.get(p), before.as_ref(), "seed {seed}, step {i}: {p}");
                match got.desired.ipcache.get(p) {
                    Some(e) => map.insert(*p, *e),
                    None => map.remove(p),
                };
            }
            assert_eq!(map, got.desired.ipcache, "seed {seed}, step {i}");
        }
    }
}

/// One endpoint's change touches its own entry, not the other clusters'.
#[test]
fn one_endpoint_change_touches_one_entry() {
    let mut v = mesh();
    for c in 3..40u32 {
        let name = format!("c{c}");
        v.insert_node(node(
            &name,
            &format!("{name}-gw"),
            &format!("172.31.{c}.1"),
            &format!("10.{c}.0.0/24"),
            true,
        ));
        for i in 0..50 {
            v.insert_endpoint(endpoint(
                &name,
                &format!("10.{c}.0.{}", 10 + i),
                (c << 16) | 0x100,
                &format!("{name}-gw"),
                "shop",
                &[],
            ));
        }
    }
    let ifs = ifaces();
    let mut inc = Incremental::default();
    let mut ids = ServiceIds::new();
    let d = std::mem::take(&mut v.dirty);
    inc.update_with(&v, &d, NODE, &ifs, &mut ids, &[]);
    v.insert_endpoint(endpoint(
        "c7",
        "10.7.0.200",
        (7 << 16) | 0x101,
        "c7-gw",
        "shop",
        &[],
    ));
    let d = std::mem::take(&mut v.dirty);
    assert_eq!(d.clusters.len(), 1);
    let touched = inc.update_with(&v, &d, NODE, &ifs, &mut ids, &[]);
    assert_eq!(touched.len(), 1, "{touched:?}");
    assert_eq!(
        touched.get(&Ipv4Prefix::host(ip("10.7.0.200"))),
        Some(&None)
    );
}
