//! Support for the datapath end-to-end test and benchmark: the netns
//! topology, agent processes, traffic tools, manifests, and the two
//! connected control planes.
#![allow(dead_code, unused_imports)] // the tests and the benchmarks use different subsets

pub mod agent;
pub mod manifests;
pub mod nodes;
pub mod topology;
pub mod traffic;

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use clustermesh_certs::Role;
use clustermesh_integration::apiserver::Cluster;
use clustermesh_integration::watcher::Watcher;
use clustermesh_node_agent::datapath::{Datapath, Frontend, Ipv4Prefix, types::ip_from_be32};
use clustermesh_proto::v1::{Endpoint, Kind, Scope};
use prost::Message;

pub use clustermesh_netkit::{kernel_has_link_type, pcap, require_root};

/// Held for a whole datapath test: they share one test binary but run one at
/// a time, as each builds a topology of its own and measures timing-sensitive
/// things (failover gaps, probe timeouts). An async lock, so it may be held
/// across awaits; a test that fails while holding it releases it.
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    ONE_AT_A_TIME.lock().await
}

/// The apiserver's Status (Admin role).
pub async fn mesh_status(c: &Cluster) -> clustermesh_proto::v1::StatusResponse {
    let ch = c.api().channel(Role::Admin).await.expect("channel");
    clustermesh_proto::v1::cluster_mesh_client::ClusterMeshClient::new(ch)
        .status(clustermesh_proto::v1::StatusRequest {})
        .await
        .expect("Status")
        .into_inner()
}

/// Waits until `c`'s apiserver counts exactly `want` live gateways of its
/// own cluster `cluster` (liveness leases, docs/mesh.md "Gateways").
pub async fn wait_gateways_live(c: &Cluster, cluster: &str, want: usize, limit: Duration) {
    let r = clustermesh_integration::eventually(
        &format!("{want} live {cluster} gateways"),
        limit,
        || async {
            let s = mesh_status(c).await;
            let live = s
                .gateways
                .iter()
                .filter(|g| g.cluster == cluster && g.live)
                .count();
            (live == want).then_some(())
        },
    )
    .await;
    r.unwrap_or_else(|e| panic!("{e}"));
}

/// Starts a cluster whose source is the manifests in `dir`, with mesh
/// timings short enough for tests.
pub async fn start_cluster(name: &str, id: u32, dir: &Path) -> Cluster {
    let args: Vec<String> = [
        "--source".to_string(),
        format!("manifests:{}", dir.display()),
        "--heartbeat-interval".into(),
        "200ms".into(),
        "--peer-timeout".into(),
        "2s".into(),
    ]
    .to_vec();
    Cluster::start(name, id, 1, &args)
        .await
        .unwrap_or_else(|e| panic!("starting cluster {name}: {e:#}"))
}

/// Admin ConnectPeer on `on` for `peer` (trusting the peer's CA).
pub async fn connect_peer(on: &Cluster, peer: &Cluster) {
    let mut cfg = peer.peer_config().expect("peer config");
    cfg.import_policies = false;
    on.register_peer(cfg)
        .await
        .unwrap_or_else(|e| panic!("ConnectPeer {} on {}: {e}", peer.name, on.name));
}

/// [`connect_peer`] with `import_policies`: `on` applies `peer`'s global policies.
pub async fn connect_peer_importing(on: &Cluster, peer: &Cluster) {
    let mut cfg = peer.peer_config().expect("peer config");
    cfg.import_policies = true;
    on.register_peer(cfg)
        .await
        .unwrap_or_else(|e| panic!("ConnectPeer {} on {}: {e}", peer.name, on.name));
}

/// One agent per gateway of `t`, gateway g served by `clusters[g]` through a
/// relay inside its namespace, each with the common flags plus `extra`.
pub async fn start_gateway_agents(
    t: &topology::Topology,
    clusters: &[&Cluster],
    extra: &[&str],
) -> Vec<agent::Agent> {
    let mut agents = Vec::new();
    for (gw, c) in t.gws.iter().zip(clusters) {
        agent::relay_into_netns(&gw.ns, c.api().grpc.clone()).await;
        agents.push(agent::Agent::start(
            &gw.ns,
            &gw.node,
            &c.tls_dir(),
            &gw.pin_dir,
            &gw.cgroup,
            extra,
            c.dir.path(),
        ));
    }
    agents
}

/// The endpoint record of `ip` (of cluster `owner`) as `on`'s merged view has it.
pub async fn endpoint(on: &Cluster, owner: &str, ip: Ipv4Addr) -> Endpoint {
    let ch = on.api().channel(Role::Admin).await.expect("channel");
    let mut w = Watcher::open(ch, Scope::Merged, &[Kind::Endpoint], None)
        .await
        .expect("watch");
    let id = (Kind::Endpoint, owner.to_string(), ip.to_string());
    w.until(Duration::from_secs(30), "the endpoint record", |m| {
        m.records.contains_key(&id)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let bytes = w.mirror.records.get(&id).cloned().unwrap_or_default();
    Endpoint::decode(bytes).expect("endpoint record")
}

/// The backend IPs programmed for `fe` in the maps pinned at `pin_dir`.
pub fn lb_backends(pin_dir: &Path, fe: Frontend) -> Option<Vec<Ipv4Addr>> {
    let dp = Datapath::open(pin_dir).ok()?;
    let (_, v) = dp
        .frontends_raw()
        .ok()?
        .into_iter()
        .find(|(k, _)| Frontend::from_key(k) == fe)?;
    let backends = dp.backends_raw().ok()?;
    let mut out: Vec<Ipv4Addr> = (0..u32::from(v.count))
        .filter_map(|slot| {
            backends
                .iter()
                .find(|(k, _)| k.service_id == v.service_id && k.slot == slot)
                .map(|(_, b)| ip_from_be32(b.ip))
        })
        .collect();
    out.sort();
    Some(out)
}

/// True if the ipcache pinned at `pin_dir` has an entry for exactly `ip`/32.
pub fn has_host_entry(pin_dir: &Path, ip: Ipv4Addr) -> bool {
    Datapath::open(pin_dir)
        .and_then(|dp| dp.ipcache_entries())
        .map(|m| m.contains_key(&Ipv4Prefix::host(ip)))
        .unwrap_or(false)
}

/// Number of ipcache entries pinned at `pin_dir`.
pub fn ipcache_len(pin_dir: &Path) -> usize {
    Datapath::open(pin_dir)
        .and_then(|dp| dp.ipcache_entries())
        .map(|m| m.len())
        .unwrap_or(0)
}
