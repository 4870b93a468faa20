//! 200 concurrent watchers on one apiserver receive every event of a burst;
//! one deliberately stalled watcher is cut off with a resync instruction
//! while the others keep receiving.

use std::time::{Duration, Instant};

use clustermesh_apiserver::store::{EtcdOptions, Store, WriteOp};
use clustermesh_certs::Role;
use clustermesh_integration::apiserver::Cluster;
use clustermesh_integration::watcher::Watcher;
use clustermesh_proto::keys;
use clustermesh_proto::v1::{BatchType, Endpoint, Kind, Scope};
use prost::Message;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint as GrpcEndpoint, Identity};

const WATCHERS: usize = 200;
const TXNS: usize = 600;
const PER_TXN: usize = 5;
/// The apiserver's per-subscriber buffer (batches) in this test.
const BUFFER: usize = 128;

fn endpoint(i: usize) -> Vec<u8> {
    Endpoint {
        ip: format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256),
        identity: 0x01_0100 + (i as u32 % 1000),
        node_ip: "192.168.1.10".into(),
        namespace: "burst".into(),
        pod: format!("pod-{i}-{}", "x".repeat(300)),
        cluster: "fan".into(),
        exported: true,
        ..Default::default()
    }
    .encode_to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_watchers_and_one_stalled() {
    let c = Cluster::start(
        "fan",
        9,
        1,
        &["--watcher-buffer".into(), BUFFER.to_string()],
    )
    .await
    .unwrap();
    let store = Store::connect(&EtcdOptions {
        endpoints: c.etcd.endpoints(),
        ..Default::default()
    })
    .await
    .unwrap();

    // Every watcher on its own mTLS connection, like real agents.
    let mut watchers = Vec::with_capacity(WATCHERS);
    for n in 0..WATCHERS - 1 {
        if n % 50 == 0 {
            eprintln!("opening watcher {n}");
        }
        let ch = c.api().channel(Role::Agent).await.unwrap();
        let mut w = Watcher::open(ch, Scope::Merged, &[Kind::Endpoint], None)
            .await
            .unwrap();
        w.until(Duration::from_secs(20), "snapshot", |m| {
            m.snapshots == 1 && !m.in_snapshot()
        })
        .await
        .unwrap();
        watchers.push(w);
    }
    // The stalled watcher's connection has a small HTTP/2 receive window, as a
    // consumer that stopped reading would soon have: hyper's default (2 MiB)
    // would otherwise absorb the whole burst client-side.
    let (ca, cert, key) = clustermesh_certs::dial::load_pems(&c.tls_dir(), Role::Agent).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key));
    let stalled_ch = GrpcEndpoint::from_shared(format!("https://{}", c.api().grpc))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .initial_stream_window_size(Some(16 * 1024))
        .initial_connection_window_size(Some(16 * 1024))
        .connect()
        .await
        .unwrap();
    let mut stalled = Watcher::open(stalled_ch, Scope::Merged, &[Kind::Endpoint], None)
        .await
        .unwrap();
    stalled
        .until(Duration::from_secs(20), "snapshot", |m| {
            m.snapshots == 1 && !m.in_snapshot()
        })
        .await
        .unwrap();

    // The 199 live watchers read concurrently; the stalled one reads nothing.
    let total = TXNS * PER_TXN;
    let readers: Vec<_> = watchers
        .into_iter()
        .map(|mut w| {
            tokio::spawn(async move {
                w.until(Duration::from_secs(120), "the whole burst", |m| {
                    m.records.len() == total
                })
                .await
                .map(|_| w)
            })
        })
        .collect();

    eprintln!("all watchers open");
    let started = Instant::now();
    for t in 0..TXNS {
        let ops: Vec<_> = (0..PER_TXN)
            .map(|j| {
                let i = t * PER_TXN + j;
                WriteOp::put(
                    keys::state(
                        Kind::Endpoint,
                        "fan",
                        &format!("10.0.{}.{}", i / 256, i % 256),
                    ),
                    endpoint(i),
                )
            })
            .collect();
        store.apply(&ops).await.unwrap();
    }
    let write_time = started.elapsed();

    let mut resyncs = 0;
    for r in readers {
        let w = r
            .await
            .unwrap()
            .expect("every live watcher receives every event");
        assert_eq!(w.mirror.records.len(), total);
        resyncs += w
            .batches
            .iter()
            .filter(|b| b.r#type == BatchType::Resync as i32)
            .count();
        // Every live watcher saw the events in revision order, once.
        let revs: Vec<i64> = w
            .batches
            .iter()
            .filter(|b| b.r#type == BatchType::Events as i32)
            .map(|b| b.revision)
            .collect();
        assert!(
            revs.windows(2).all(|p| p[0] < p[1]),
            "batches in revision order"
        );
    }
    assert_eq!(resyncs, 0, "no live watcher was cut off");
    let delivered = started.elapsed();

    // Now the stalled one reads: what was buffered, then RESYNC, then the end.
    stalled.drain(Duration::from_secs(20)).await.unwrap();
    let last = stalled.batches.last().expect("some batches");
    assert_eq!(
        last.r#type,
        BatchType::Resync as i32,
        "the stalled watcher is told to resync"
    );
    assert!(last.reason.contains("behind"), "{}", last.reason);
    assert!(
        stalled.mirror.records.len() < total,
        "it did not get everything"
    );
    // It can resume from where it stood (or get a snapshot), and catch up.
    let resume = stalled.mirror.resume_point();
    let ch = c.api().channel(Role::Agent).await.unwrap();
    let mut again = Watcher::open_with(
        ch,
        Scope::Merged,
        &[Kind::Endpoint],
        resume,
        stalled.mirror.clone(),
    )
    .await
    .unwrap();
    again
        .until(Duration::from_secs(30), "catch-up", |m| {
            m.records.len() == total
        })
        .await
        .unwrap();
    println!(
        "fan-out: {WATCHERS} watchers, {total} events in {TXNS} txns written in {write_time:?}, all delivered after {delivered:?}; stalled watcher cut at {} records",
        stalled.mirror.records.len()
    );
}
