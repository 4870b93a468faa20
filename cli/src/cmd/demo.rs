//! `clustermesh demo`: a local two-cluster mesh on this machine, made of
//! real processes (an etcd and a clustermesh-apiserver per cluster on
//! loopback ports, certificates in a temporary directory, sources from the
//! example manifests), started with the same harness the tests use and
//! connected with the same code as `clustermesh connect`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clustermesh_localmesh::apiserver::Cluster;
use clustermesh_proto::v1::StatusResponse;

use super::{Conn, connect, service, status};
use crate::progress::Progress;

/// The service the demo looks up on each side.
pub const DEMO_SERVICE: (&str, &str) = ("shop", "backend");

/// The two demo clusters: (name, ID).
pub const CLUSTERS: [(&str, u32); 2] = [("cluster1", 1), ("cluster2", 2)];

/// Checks `examples` holds a directory per demo cluster.
pub fn example_dirs(examples: &Path) -> anyhow::Result<[PathBuf; 2]> {
    let dirs = CLUSTERS.map(|(name, _)| examples.join(name));
    for d in &dirs {
        if !d.is_dir() {
            anyhow::bail!(
                "{} is not a directory: --examples must hold cluster1/ and cluster2/ manifests (like examples/ in the repository)",
                d.display()
            );
        }
    }
    Ok(dirs)
}

/// How far `s` (cluster `name`'s status) is in seeing `peer`; None when it
/// is connected, synced and `peer`'s records are visible here.
pub fn sync_gap(s: &StatusResponse, peer: &str) -> Option<String> {
    let here = s.cluster.as_ref().map(|c| c.name.as_str()).unwrap_or("?");
    if !s.ready {
        return Some(format!("{here} not ready"));
    }
    let Some(p) = s.peers.iter().find(|p| p.name == peer) else {
        return Some(format!("{here} has no peer {peer}"));
    };
    if !p.connected {
        return Some(format!("{here} connecting to {peer}"));
    }
    if p.synced.is_empty() {
        return Some(format!("{here} syncing {peer}"));
    }
    let visible: u64 = s
        .counts
        .iter()
        .filter(|c| c.cluster == peer)
        .map(|c| c.count)
        .sum();
    if visible == 0 {
        return Some(format!("{here} has no records of {peer} yet"));
    }
    None
}

fn log_tails(clusters: &[&Cluster]) -> String {
    clusters
        .iter()
        .map(|c| {
            format!(
                "--- {} apiserver log ({}), last lines:\n{}",
                c.name,
                c.api().child.log_path().display(),
                c.api().child.log_tail(15)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn conn_of(c: &Cluster) -> Conn {
    Conn {
        server: c.api().grpc.clone(),
        tls_dir: c.tls_dir(),
    }
}

/// Waits until each side sees the other; shows progress on a terminal.
async fn wait_synced(
    a: &Conn,
    b: &Conn,
    names: (&str, &str),
    timeout: Duration,
) -> anyhow::Result<[StatusResponse; 2]> {
    let deadline = Instant::now() + timeout;
    let mut progress = Progress::stderr();
    if !progress.enabled() {
        eprintln!("Waiting for {} and {} to sync ...", names.0, names.1);
    }
    loop {
        let (sa, sb) = tokio::join!(status::fetch(a), status::fetch(b));
        let gaps: Vec<String> = match (&sa, &sb) {
            (Ok(sa), Ok(sb)) => [sync_gap(sa, names.1), sync_gap(sb, names.0)]
                .into_iter()
                .flatten()
                .collect(),
            (Err(e), _) | (_, Err(e)) => vec![format!("{e:#}")],
        };
        if gaps.is_empty() {
            let msg = format!("{} and {} are in sync", names.0, names.1);
            if progress.enabled() {
                progress.finish(&msg);
            } else {
                eprintln!("{msg}");
            }
            if let (Ok(sa), Ok(sb)) = (sa, sb) {
                return Ok([sa, sb]);
            }
        }
        if Instant::now() >= deadline {
            progress.finish("");
            anyhow::bail!(
                "the clusters did not sync within {timeout:?}: still waiting for {}",
                gaps.join("; ")
            );
        }
        progress.update(&format!("waiting for sync: {}", gaps.join("; ")));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Prints `service get` of the demo service as seen from `conn`.
async fn print_lookup(conn: &Conn) {
    let (ns, name) = DEMO_SERVICE;
    match service::fetch(conn, ns, name).await {
        Ok((r, here)) => {
            println!("=== service get {ns}/{name}, from {here} ===");
            print!("{}", service::lookup_text(&r, &here));
        }
        Err(e) => println!("(service {ns}/{name} is not available here: {e:#})"),
    }
    println!();
}

pub async fn run(once: bool, examples: &Path, timeout: Duration) -> anyhow::Result<()> {
    let dirs = example_dirs(examples)?;
    let source = |d: &Path| vec!["--source".to_owned(), format!("manifests:{}", d.display())];
    eprintln!(
        "Starting {} and {}: an etcd, a PKI and a clustermesh-apiserver each ...",
        CLUSTERS[0].0, CLUSTERS[1].0
    );
    let (s1, s2) = (source(&dirs[0]), source(&dirs[1]));
    let (c1, c2) = tokio::join!(
        Cluster::start(CLUSTERS[0].0, CLUSTERS[0].1, 1, &s1),
        Cluster::start(CLUSTERS[1].0, CLUSTERS[1].1, 1, &s2),
    );
    let c1 = c1.with_context(|| format!("starting {}", CLUSTERS[0].0))?;
    let c2 = c2.with_context(|| format!("starting {}", CLUSTERS[1].0))?;
    let (a, b) = (conn_of(&c1), conn_of(&c2));
    eprintln!("{}: {}   {}: {}", c1.name, a.server, c2.name, b.server);

    let done = connect::connect(&a, &b, None, &connect::Pairing::default())
        .await
        .with_context(|| format!("connecting {} and {}", c1.name, c2.name))?;
    println!("=== connect {} and {} ===", c1.name, c2.name);
    println!("{}", done.to_text());

    let statuses = wait_synced(&a, &b, (&c1.name, &c2.name), timeout)
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", log_tails(&[&c1, &c2])))?;
    let now = clustermesh_proto::clock::unix_millis();
    for (c, s) in [&c1, &c2].iter().zip(&statuses) {
        println!("=== status of {} ===", c.name);
        println!("{}", status::to_text(s, now));
    }
    print_lookup(&a).await;
    print_lookup(&b).await;

    println!("Talk to the demo clusters (the certificates live only as long as the demo):");
    for (c, conn) in [(&c1, &a), (&c2, &b)] {
        println!(
            "  clustermesh context add {} --server {} --tls-dir {}",
            c.name,
            conn.server,
            conn.tls_dir.display()
        );
    }
    println!(
        "  clustermesh --context {} service get shop/backend -o json",
        c1.name
    );
    if once {
        return Ok(());
    }
    println!("Running; press Ctrl-C to stop (everything started is cleaned up).");
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    eprintln!("stopping");
    drop((c1, c2));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clustermesh_proto::v1::{ClusterInfo, Kind, PeerStatus, RecordCount};

    fn st(peer_connected: bool, synced: bool, count: u64) -> StatusResponse {
        StatusResponse {
            cluster: Some(ClusterInfo {
                name: "cluster1".into(),
                ..Default::default()
            }),
            ready: true,
            peers: vec![PeerStatus {
                name: "cluster2".into(),
                connected: peer_connected,
                enabled: true,
                synced: if synced {
                    vec![Kind::Node as i32]
                } else {
                    vec![]
                },
                ..Default::default()
            }],
            counts: vec![RecordCount {
                cluster: "cluster2".into(),
                kind: Kind::Node as i32,
                count,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn gaps() {
        assert_eq!(sync_gap(&st(true, true, 2), "cluster2"), None);
        assert!(
            sync_gap(&st(false, true, 2), "cluster2")
                .unwrap()
                .contains("connecting")
        );
        assert!(
            sync_gap(&st(true, false, 2), "cluster2")
                .unwrap()
                .contains("syncing")
        );
        assert!(
            sync_gap(&st(true, true, 0), "cluster2")
                .unwrap()
                .contains("no records")
        );
        assert!(
            sync_gap(&st(true, true, 2), "cluster3")
                .unwrap()
                .contains("no peer")
        );
    }

    #[test]
    fn examples_checked() {
        let dir = tempfile::tempdir().unwrap();
        let e = example_dirs(dir.path()).unwrap_err().to_string();
        assert!(e.contains("cluster1"), "{e}");
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        assert!(example_dirs(&repo).is_ok());
    }
}
