//! `clustermesh demo`: a local mesh on this machine, made of real processes
//! (etcd and clustermesh-apiserver on loopback ports, certificates in a
//! temporary directory), started with the same harness the tests use.
//! For now one cluster; the mesh-sync issue turns it into two connected ones.

use std::io::Write;
use std::time::Duration;

use clustermesh_integration::apiserver::Cluster;

use super::{Conn, status};

pub async fn run(once: bool) -> anyhow::Result<()> {
    eprint!("Starting cluster1: etcd, PKI, clustermesh-apiserver ...");
    let _ = std::io::stderr().flush();
    let cluster = Cluster::start("cluster1", 1, 1, &[]).await?;
    eprintln!(" ready");
    let api = cluster.api();
    let conn = Conn {
        server: api.grpc.clone(),
        tls_dir: cluster.tls_dir(),
    };
    let st = status::fetch(&conn).await?;
    println!("{}", status::to_text(&st));
    println!(
        "apiserver: {}  (health {}), TLS directory: {}",
        api.grpc,
        api.health,
        cluster.tls_dir().display()
    );
    println!(
        "Try: clustermesh --server {} --tls-dir {} status",
        api.grpc,
        cluster.tls_dir().display()
    );
    if once {
        return Ok(());
    }
    println!("Running; press Ctrl-C to stop (everything started is cleaned up).");
    tokio::signal::ctrl_c().await?;
    eprintln!("stopping");
    drop(cluster);
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(())
}
