//! The store is never read or written whole in one message:
//! - an apiserver whose store holds far more than the 4 MiB a gRPC response
//!   may carry (100,000 cached endpoints, ~12 MiB) is SIGKILLed, restarts,
//!   is ready within seconds, serves every record, and rewrites none;
//! - a put too large for one etcd request is refused with a clear error and
//!   counted, and the rest of its batch is written.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clustermesh_apiserver::store::{
    EtcdOptions, MAX_RECORD_BYTES, PAGE_KEYS, Store, StoreError, WriteOp,
};
use clustermesh_certs::Role;
use clustermesh_integration::apiserver::Cluster;
use clustermesh_integration::etcd::EtcdClients as _;
use clustermesh_integration::eventually;
use clustermesh_integration::watcher::Watcher;
use clustermesh_proto::keys::{self, StoreKey};
use clustermesh_proto::v1::{
    Endpoint, Kind, PeerConfig, Scope, StatusRequest, StatusResponse,
    cluster_mesh_client::ClusterMeshClient,
};
use prost::Message;

const RECORDS: usize = 100_000;
const PEER: &str = "peera";

fn endpoint(i: usize) -> Vec<u8> {
    Endpoint {
        ip: ip(i),
        identity: 0x02_0100 + (i as u32 % 4000),
        node_ip: format!("192.168.{}.{}", (i >> 8) & 255, i & 255),
        node_name: format!("node-{}", i % 100),
        namespace: "paging".into(),
        pod: format!("pod-{i}"),
        cluster: PEER.into(),
        exported: true,
        ..Default::default()
    }
    .encode_to_vec()
}

fn ip(i: usize) -> String {
    format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255)
}

async fn store(c: &Cluster) -> Store {
    Store::connect(&EtcdOptions {
        endpoints: c.etcd.endpoints(),
        ..Default::default()
    })
    .await
    .expect("store")
}

async fn status(c: &Cluster) -> anyhow::Result<StatusResponse> {
    let ch = c.api().channel(Role::Admin).await?;
    Ok(ClusterMeshClient::new(ch)
        .status(StatusRequest {})
        .await?
        .into_inner())
}

fn cached_count(st: &StatusResponse) -> u64 {
    st.counts
        .iter()
        .filter(|r| r.cluster == PEER && r.kind == Kind::Endpoint as i32)
        .map(|r| r.count)
        .sum()
}

/// Every key of the store with its mod revision (read with the paged list).
async fn mod_revisions(s: &Store) -> (i64, BTreeMap<String, i64>) {
    let (rev, kvs) = s.list(keys::PREFIX).await.expect("list");
    (
        rev,
        kvs.into_iter()
            .map(|kv| (kv.key, kv.mod_revision))
            .collect(),
    )
}

/// Keys the apiserver legitimately writes when it starts: leadership, the
/// leader heartbeat and peer status. Records are not among them.
fn bookkeeping(key: &str) -> bool {
    matches!(
        keys::parse(key),
        StoreKey::Leader | StoreKey::Heartbeat | StoreKey::PeerStatus(_)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_more_than_4_mib_of_records_reads_in_pages_and_rewrites_nothing() {
    let flags = ["--stale-ttl".to_string(), "10m".to_string()];
    let mut c = Cluster::start("paging", 1, 1, &flags)
        .await
        .expect("cluster");
    let s = store(&c).await;
    // The records belong to a registered peer (one that is not reachable:
    // its records are kept for --stale-ttl); a new leader withdraws the
    // records of peers that are not registered.
    let ca_pem = std::fs::read_to_string(c.tls_dir().join("ca.crt")).expect("ca.crt");
    c.register_peer(PeerConfig {
        name: PEER.into(),
        addresses: vec!["127.0.0.1:9".into()],
        ca_pem,
        enabled: true,
        cluster_id: 2,
        ..Default::default()
    })
    .await
    .expect("register peer");

    // 100,000 cached endpoints in the store's real format, written as the
    // syncer writes them (transactions bounded by count and bytes).
    let t = Instant::now();
    let mut bytes = 0;
    let mut writers = tokio::task::JoinSet::new();
    for part in 0..4 {
        let s = s.clone();
        let ops: Vec<WriteOp> = (part * RECORDS / 4..(part + 1) * RECORDS / 4)
            .map(|i| {
                let v = endpoint(i);
                bytes += v.len() + keys::cache(Kind::Endpoint, PEER, &ip(i)).len();
                WriteOp::put(keys::cache(Kind::Endpoint, PEER, &ip(i)), v)
            })
            .collect();
        writers.spawn(async move {
            let applied = s.apply(&ops).await.expect("write");
            assert!(applied.refused.is_empty());
        });
    }
    while let Some(r) = writers.join_next().await {
        r.expect("writer");
    }
    println!(
        "wrote {RECORDS} records ({:.1} MiB of keys and values) in {:?}",
        bytes as f64 / 1048576.0,
        t.elapsed()
    );
    assert!(
        bytes > 4 * 1024 * 1024,
        "more than one gRPC response can hold"
    );

    eventually(
        "the view holds every record",
        Duration::from_secs(60),
        || async {
            status(&c)
                .await
                .ok()
                .filter(|st| cached_count(st) == RECORDS as u64)
        },
    )
    .await
    .expect("view loaded");
    let (rev_before, before) = mod_revisions(&s).await;
    assert!(before.len() > RECORDS);
    println!(
        "store revision {rev_before}, {} keys (read in pages of {PAGE_KEYS})",
        before.len()
    );

    // SIGKILL and start again on the same ports.
    let t = Instant::now();
    c.replicas[0].restart().await.expect("restart");
    let ready_after = t.elapsed();
    println!("restarted and ready in {ready_after:?}");
    assert!(
        ready_after < Duration::from_secs(10),
        "ready within seconds: {ready_after:?}"
    );

    // It serves every record: in its status and in a full Watch snapshot.
    let st = status(&c).await.expect("status");
    assert!(st.ready);
    assert_eq!(cached_count(&st), RECORDS as u64);
    let ch = c.api().channel(Role::Agent).await.expect("agent channel");
    let mut w = Watcher::open(ch, Scope::Merged, &[Kind::Endpoint], None)
        .await
        .expect("watch");
    w.until(Duration::from_secs(30), "a full snapshot", |m| {
        m.snapshots >= 1 && !m.in_snapshot()
    })
    .await
    .expect("snapshot");
    let served = w.mirror.records.keys().filter(|k| k.1 == PEER).count();
    assert_eq!(served, RECORDS, "every record served by Watch");

    // Nothing was rewritten: no record's mod revision moved, and every key
    // changed since is the apiserver's own bookkeeping.
    let (rev_after, after) = mod_revisions(&s).await;
    let changed: Vec<&String> = after
        .keys()
        .chain(before.keys())
        .filter(|k| before.get(*k) != after.get(*k))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    println!(
        "store revision {rev_before} -> {rev_after}; keys changed: {:?}",
        changed
    );
    assert!(
        changed.iter().all(|k| bookkeeping(k)),
        "only bookkeeping keys changed (none deleted): {changed:?}"
    );
    let records = |m: &BTreeMap<String, i64>| {
        m.iter()
            .filter(|(k, _)| !bookkeeping(k))
            .map(|(k, r)| (k.clone(), *r))
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(records(&before), records(&after), "records untouched");
    assert!(
        rev_after - rev_before <= changed.len() as i64 * 2 + 2,
        "revision moved only by bookkeeping writes ({rev_before} -> {rev_after})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_too_large_for_one_request_is_refused_and_the_rest_written() {
    let c = Cluster::start("bigrec", 1, 1, &[]).await.expect("cluster");
    let s = store(&c).await;
    // Keys outside the apiserver's keyspace: nothing but this test touches them.
    const PREFIX: &str = "store-paging-test/";
    let small = |i: usize| WriteOp::put(format!("{PREFIX}small/{i:04}"), endpoint(i));
    let big_key = format!("{PREFIX}huge");
    let mut ops: Vec<WriteOp> = (0..200).map(small).collect();
    ops.insert(
        100,
        WriteOp::put(big_key.clone(), vec![7u8; MAX_RECORD_BYTES + 1]),
    );
    // Records that together are far over one request (and over one 4 MiB
    // read response): several transactions, and pages of fewer keys.
    ops.extend(
        (0..12).map(|i| WriteOp::put(format!("{PREFIX}wide/{i:02}"), vec![1u8; 400 * 1024])),
    );

    let applied = s.apply(&ops).await.expect("the rest is written");
    assert_eq!(applied.refused.len(), 1);
    assert_eq!(applied.refused[0].key, big_key);
    let err = StoreError::from(applied.refused[0].clone());
    println!("refused: {err}");
    assert!(err.to_string().contains("not written"));
    assert_eq!(s.refused_records(), 1);

    let (_, kvs) = s.list(PREFIX).await.expect("a paged read of 5 MiB");
    assert_eq!(kvs.len(), 212, "everything but the oversized record");
    assert!(kvs.iter().all(|kv| kv.key != big_key));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paged_read_whose_revision_is_compacted_fails_clearly_and_list_starts_over() {
    let c = Cluster::start("compact", 1, 1, &[]).await.expect("cluster");
    let s = store(&c).await;
    const PREFIX: &str = "store-compact-test/";
    // More than two pages.
    let n = 2 * PAGE_KEYS as usize + 500;
    let ops: Vec<WriteOp> = (0..n)
        .map(|i| WriteOp::put(format!("{PREFIX}{i:06}"), endpoint(i)))
        .collect();
    s.apply(&ops).await.expect("write");
    let mut raw = c.etcd.client().await.expect("etcd client");

    // Compact the store under the read, after its first page.
    let rt = tokio::runtime::Handle::current();
    let mut pages = 0;
    let r = s
        .list_pages(PREFIX, |page| {
            pages += 1;
            assert!(page.len() as i64 <= PAGE_KEYS);
            if pages == 1 {
                tokio::task::block_in_place(|| {
                    rt.block_on(async {
                        let put = raw.put(format!("{PREFIX}later"), "x", None).await;
                        let rev = put.expect("put").header().expect("header").revision();
                        raw.compact(rev, None).await.expect("compact");
                    })
                });
            }
        })
        .await;
    let err = r.expect_err("the read's revision was compacted");
    println!("paged read: {err}");
    assert!(matches!(err, StoreError::Compacted { .. }), "{err:?}");
    assert!(err.to_string().contains("compacted during the paged read"));
    assert_eq!(pages, 1);

    // `list` reads again at the current revision: every key, one snapshot.
    let (rev, kvs) = s.list(PREFIX).await.expect("list");
    assert_eq!(kvs.len(), n + 1);
    assert!(kvs.iter().all(|kv| kv.mod_revision <= rev));
}
