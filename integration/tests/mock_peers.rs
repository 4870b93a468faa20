//! The mock-peer tool (`clustermesh_integration::mock_peers`) against a real
//! apiserver: several synthetic peers are registered like real ones, every
//! record they serve arrives in the local merged Watch, and their churn keeps
//! flowing afterwards.

use std::time::Duration;

use clustermesh_certs::Role;
use clustermesh_integration::apiserver::Cluster;
use clustermesh_integration::mock_peers::{Churn, MockPeers, Shape};
use clustermesh_integration::watcher::Watcher;
use clustermesh_proto::v1::{Endpoint, Kind, Scope};
use prost::Message;

const T: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_peers_sync_into_a_real_apiserver_and_churn_flows() {
    let local = Cluster::start("local", 1, 1, &[])
        .await
        .expect("local cluster");
    let ca = std::fs::read_to_string(local.tls_dir().join(clustermesh_certs::CA_CERT_FILE))
        .expect("local ca.crt");
    let shape = Shape {
        nodes: 4,
        endpoints: 40,
        identities: 5,
    };
    let churn = Churn {
        endpoints: 20.0,
        nodes: 1.0,
        identities: 1.0,
    };
    let mocks = MockPeers::start(10, 3, shape, churn, &ca)
        .await
        .expect("mock peers");
    let ch = local
        .api()
        .channel(Role::Agent)
        .await
        .expect("agent channel");
    let mut w = Watcher::open(ch, Scope::Merged, &[], None)
        .await
        .expect("merged watch");
    for p in &mocks.peers {
        local
            .register_peer(p.peer_config())
            .await
            .unwrap_or_else(|e| panic!("registering {}: {e}", p.name));
    }

    // Every record of every mock peer, and its synced markers.
    let want: Vec<(String, Kind, u64)> = mocks
        .peers
        .iter()
        .flat_map(|p| {
            [
                (p.name.clone(), Kind::Node, u64::from(shape.nodes)),
                (p.name.clone(), Kind::Endpoint, u64::from(shape.endpoints)),
                (p.name.clone(), Kind::Identity, u64::from(shape.identities)),
            ]
        })
        .collect();
    w.until(T, "every mock peer's records and markers", |m| {
        want.iter().all(|(c, k, n)| {
            let have = m
                .records
                .keys()
                .filter(|(kind, cluster, _)| kind == k && cluster == c)
                .count() as u64;
            have == *n && m.synced.contains(&(c.clone(), *k))
        })
    })
    .await
    .expect("initial sync");

    // Churn: an endpoint only carries its peer's identity 1 after a change.
    for p in &mocks.peers {
        let flipped = p.identity(1);
        w.until(T, &format!("a churned endpoint of {}", p.name), |m| {
            m.records.iter().any(|((kind, cluster, _), v)| {
                *kind == Kind::Endpoint
                    && cluster == &p.name
                    && Endpoint::decode(v.as_ref()).is_ok_and(|e| e.identity == flipped)
            })
        })
        .await
        .expect("churn arrives");
        assert!(p.changes() > 0);
        assert_eq!(
            p.counts().get(&Kind::Endpoint).copied(),
            Some(u64::from(shape.endpoints)),
            "churn updates records, never adds or removes endpoints"
        );
    }
}
