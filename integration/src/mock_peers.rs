//! Synthetic peer clusters for benchmarks and tests: N peers served from one
//! process, each with its own PKI, `ClusterInfo`, nodes with pod CIDRs,
//! endpoints inside them, identities and global services, over the real
//! mTLS gRPC `Watch` (the accept loop is the apiserver's own), with churn at a
//! given rate. The shape of Cilium's scale CI is 250 clusters × 100 nodes ×
//! 1,000 endpoints × 100 identities, churn per cluster nodes 0.1/s,
//! endpoints 1/s, identities 0.2/s.
//!
//! Addresses (honest under the trust boundary of DESIGN §10): peer with
//! cluster ID `c` has node `n` at `100.64.c.n` with pod CIDR `10.c.n.0/24`,
//! and its endpoints inside those CIDRs. Use IDs of 10 and more when the
//! local test cluster's pods live in `10.1/16` or `10.2/16`.
//!
//! Only `GetCluster` and `Watch(scope=exported)` are served; everything else
//! answers UNIMPLEMENTED. A Watch always starts with a full snapshot (resume
//! points are not kept), then live events, then heartbeats once a second.
//!
//! Every churned record carries its change's generation (the peer's change
//! counter) in its content: an endpoint in its pod name (`pod-<e>.g<gen>`,
//! a pod recreated under the same IP), a node in its label
//! `mock/generation`, an identity in its label `k8s:mock/generation`
//! ([`generation_of`] reads it back). [`MockPeers::emitted`] tells when each
//! change was handed to the peer's Watch streams, so a benchmark can match
//! exactly the change it sees arrive elsewhere.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clustermesh_apiserver::server::tls;
use clustermesh_certs::InitOptions;
use clustermesh_proto::identity::MIN_LOCAL;
use clustermesh_proto::v1::cluster_mesh_server::{ClusterMesh, ClusterMeshServer};
use clustermesh_proto::v1::{
    BatchType, ClusterInfo, Endpoint, Event, EventType, GetClusterRequest, Identity, Kind,
    ListServicesRequest, ListServicesResponse, LookupServiceRequest, LookupServiceResponse, Node,
    PeerConfig, Scope, StatusRequest, StatusResponse, SyncedMarker, WatchBatch, WatchRequest,
};
use clustermesh_proto::{ClusterMode, RECORD_KINDS};
use prost::Message;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// Records per peer.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub nodes: u32,
    pub endpoints: u32,
    pub identities: u32,
}

/// Changes per second per peer.
#[derive(Clone, Copy, Debug, Default)]
pub struct Churn {
    pub nodes: f64,
    pub endpoints: f64,
    pub identities: f64,
}

impl Churn {
    /// Cilium's scale CI: nodes 0.1/s, endpoints 1/s, identities 0.2/s.
    pub const CILIUM_SCALE: Churn = Churn {
        nodes: 0.1,
        endpoints: 1.0,
        identities: 0.2,
    };
}

/// How often churn is applied. Endpoints carry their peer's identity 0 at
/// start; churn flips them to identity 1 and back.
const CHURN_STEP: Duration = Duration::from_millis(20);

type RecordId = (Kind, String);

/// One change made by churn, as it was handed to the peer's Watch streams.
#[derive(Clone, Debug)]
pub struct Emitted {
    pub cluster: String,
    pub kind: Kind,
    pub key: String,
    /// The peer's change counter, carried in the record (see [`generation_of`]).
    pub generation: u64,
    /// Just before the event went to the peer's Watch streams.
    pub at: Instant,
}

/// How many emitted changes a slow [`MockPeers::emitted`] receiver may lag.
const EMITTED_BUFFER: usize = 1 << 16;

/// Label that carries a churned node's or identity's generation.
const NODE_GENERATION: &str = "mock/generation";
const IDENTITY_GENERATION: &str = "k8s:mock/generation";

/// The generation of the change that produced `value` (a record of `kind`
/// as a mock peer serves it, or as it is mirrored with a stamp appended);
/// None for a record churn never touched.
pub fn generation_of(kind: Kind, value: &[u8]) -> Option<u64> {
    match kind {
        Kind::Endpoint => {
            let e = Endpoint::decode(value).ok()?;
            e.pod.rsplit_once(".g")?.1.parse().ok()
        }
        Kind::Node => {
            let n = Node::decode(value).ok()?;
            n.labels
                .get(NODE_GENERATION)?
                .parse()
                .ok()
                .filter(|g| *g > 0)
        }
        Kind::Identity => Identity::decode(value)
            .ok()?
            .labels
            .get(IDENTITY_GENERATION)?
            .parse()
            .ok(),
        _ => None,
    }
}

/// What a mock peer's synced markers attest (docs/mesh.md "Attested sync").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Markers {
    /// No digest, as an older peer sends (accepted unchecked).
    #[default]
    Legacy,
    /// The true count and digest of what it serves.
    Honest,
    /// A count `extra` higher than what it serves, and a digest off by `extra`.
    Lying { extra: u64 },
}

struct PeerState {
    info: ClusterInfo,
    markers: Markers,
    epoch: String,
    revision: i64,
    records: BTreeMap<RecordId, Bytes>,
    changes: u64,
}

/// One synthetic peer cluster.
pub struct MockPeer {
    pub name: String,
    pub id: u32,
    pub address: String,
    pub ca_pem: String,
    pub shape: Shape,
    state: Arc<Mutex<PeerState>>,
    events: broadcast::Sender<(i64, Event)>,
}

impl MockPeer {
    /// Its registration, as `clustermesh connect` writes it.
    pub fn peer_config(&self) -> PeerConfig {
        PeerConfig {
            name: self.name.clone(),
            addresses: vec![self.address.clone()],
            ca_pem: self.ca_pem.clone(),
            enabled: true,
            cluster_id: self.id,
            ..Default::default()
        }
    }

    /// Records it serves now, by kind.
    pub fn counts(&self) -> BTreeMap<Kind, u64> {
        let st = lock(&self.state);
        let mut out = BTreeMap::new();
        for (k, _) in st.records.keys() {
            *out.entry(*k).or_default() += 1;
        }
        out
    }

    /// Changes made since start (churn).
    pub fn changes(&self) -> u64 {
        lock(&self.state).changes
    }

    /// What its markers attest from the next Watch on.
    pub fn set_markers(&self, m: Markers) {
        lock(&self.state).markers = m;
    }

    /// The identity number of this peer's `k`-th identity.
    pub fn identity(&self, k: u32) -> u32 {
        identity_of(self.id, k)
    }

    /// This peer's `e`-th endpoint (carrying identity 1 when `flipped`), as
    /// it serves it; `e` may go beyond its shape (up to 249 per node).
    pub fn endpoint(&self, e: u32, flipped: bool) -> Endpoint {
        endpoint_record(&self.name, self.id, self.shape, e, flipped)
    }

    /// Adds or replaces (`Some`) or deletes (`None`) the endpoint `ip`,
    /// sent live to every Watch.
    pub fn set_endpoint(&self, ip: &str, record: Option<&Endpoint>) {
        let mut st = lock(&self.state);
        st.changes += 1;
        st.revision += 1;
        let id = (Kind::Endpoint, ip.to_owned());
        let (t, value): (EventType, Bytes) = match record {
            Some(r) => (EventType::Upsert, r.encode_to_vec().into()),
            None => (EventType::Delete, Bytes::new()),
        };
        match record {
            Some(_) => st.records.insert(id, value.clone()),
            None => st.records.remove(&id),
        };
        let ev = Event {
            r#type: t as i32,
            kind: Kind::Endpoint as i32,
            cluster: self.name.clone(),
            key: ip.to_owned(),
            value,
            revision: st.revision,
            origin_unix_micros: Some(clustermesh_proto::stamp::now_micros()),
        };
        let rev = st.revision;
        drop(st);
        let _ = self.events.send((rev, ev));
    }
}

/// The peers; their servers and churn stop when this is dropped.
pub struct MockPeers {
    pub peers: Vec<MockPeer>,
    stop: tokio::sync::watch::Sender<bool>,
    churn: tokio::sync::watch::Sender<Churn>,
    emitted: broadcast::Sender<Emitted>,
    _dir: tempfile::TempDir,
}

impl Drop for MockPeers {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn identity_of(cluster_id: u32, k: u32) -> u32 {
    (cluster_id << ClusterMode::Max255.cluster_shift()) | (MIN_LOCAL + k)
}

fn node_ip(c: u32, n: u32) -> String {
    format!("100.64.{c}.{n}")
}

fn node_record(name: &str, c: u32, n: u32, generation: u64) -> Node {
    Node {
        name: format!("node-{n}"),
        internal_ips: vec![node_ip(c, n)],
        pod_cidrs: vec![format!("10.{c}.{n}.0/24")],
        gateway: n == 0,
        labels: [(NODE_GENERATION.to_string(), generation.to_string())].into(),
        cluster: name.to_owned(),
        exported: true,
        ..Default::default()
    }
}

fn identity_record(name: &str, c: u32, k: u32) -> Identity {
    Identity {
        id: identity_of(c, k),
        labels: [
            ("k8s:app".to_string(), format!("app-{k}")),
            (
                "k8s:io.kubernetes.pod.namespace".to_string(),
                "mock".to_string(),
            ),
            ("clustermesh.io/cluster".to_string(), name.to_owned()),
        ]
        .into(),
        cluster: name.to_owned(),
        exported: true,
    }
}

fn endpoint_record(name: &str, c: u32, shape: Shape, e: u32, flipped: bool) -> Endpoint {
    let n = e % shape.nodes;
    let host = e / shape.nodes + 1;
    let k = if flipped { 1 } else { 0 } % shape.identities.max(1);
    Endpoint {
        ip: format!("10.{c}.{n}.{host}"),
        identity: identity_of(c, k),
        node_ip: node_ip(c, n),
        node_name: format!("node-{n}"),
        namespace: "mock".into(),
        pod: format!("pod-{e}"),
        cluster: name.to_owned(),
        exported: true,
        ..Default::default()
    }
}

fn initial_records(name: &str, c: u32, shape: Shape) -> BTreeMap<RecordId, Bytes> {
    let mut out = BTreeMap::new();
    for n in 0..shape.nodes {
        let r = node_record(name, c, n, 0);
        out.insert((Kind::Node, r.name.clone()), r.encode_to_vec().into());
    }
    for k in 0..shape.identities {
        let r = identity_record(name, c, k);
        out.insert((Kind::Identity, r.id.to_string()), r.encode_to_vec().into());
    }
    for e in 0..shape.endpoints {
        let r = endpoint_record(name, c, shape, e, false);
        out.insert((Kind::Endpoint, r.ip.clone()), r.encode_to_vec().into());
    }
    out
}

impl MockPeers {
    /// Starts `count` peers with cluster IDs `first_id..`, trusting
    /// `client_ca_pem` (the local cluster's CA) for the `remote` role.
    pub async fn start(
        first_id: u32,
        count: u32,
        shape: Shape,
        churn: Churn,
        client_ca_pem: &str,
    ) -> anyhow::Result<MockPeers> {
        anyhow::ensure!(
            shape.nodes >= 1 && shape.nodes <= 250 && shape.endpoints / shape.nodes < 250,
            "shape {shape:?} does not fit the address plan (<= 250 nodes, < 250 endpoints per node)"
        );
        anyhow::ensure!(
            first_id >= 1 && first_id + count <= 256,
            "cluster IDs must fit 1..=255"
        );
        let dir = tempfile::Builder::new().prefix("mock-peers-").tempdir()?;
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let mut peers = Vec::new();
        for c in first_id..first_id + count {
            let name = format!("mock-{c}");
            let tls_dir = dir.path().join(&name);
            clustermesh_certs::init(&InitOptions {
                cluster: name.clone(),
                out: tls_dir.clone(),
                sans: vec![],
                force: false,
            })?;
            let ca_pem = std::fs::read_to_string(tls_dir.join(clustermesh_certs::CA_CERT_FILE))?;
            let server_cfg =
                clustermesh_certs::server_config(&tls_dir, &[client_ca_pem.to_owned()])
                    .with_context(|| format!("{name}: server TLS config"))?;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr: SocketAddr = listener.local_addr()?;
            let state = Arc::new(Mutex::new(PeerState {
                info: ClusterInfo {
                    name: name.clone(),
                    id: c,
                    max_connected_clusters: 255,
                    capabilities: vec![],
                },
                epoch: format!("mock-{c}-{}", std::process::id()),
                markers: Markers::Legacy,
                revision: 1,
                records: initial_records(&name, c, shape),
                changes: 0,
            }));
            let (events, _) = broadcast::channel(4096);
            let svc = PeerService {
                state: state.clone(),
                events: events.clone(),
            };
            let shared: tls::SharedConfig = Arc::new(RwLock::new(server_cfg));
            let incoming = tls::incoming(listener, shared);
            let mut stop_srv = stop_rx.clone();
            tokio::spawn(async move {
                let r = tonic::transport::Server::builder()
                    .add_service(ClusterMeshServer::new(svc))
                    .serve_with_incoming_shutdown(incoming, async move {
                        let _ = stop_srv.changed().await;
                    })
                    .await;
                if let Err(e) = r {
                    tracing::warn!(error = %e, "mock peer server ended");
                }
            });
            peers.push(MockPeer {
                name,
                id: c,
                address: addr.to_string(),
                ca_pem,
                shape,
                state,
                events,
            });
        }
        let targets: Vec<_> = peers
            .iter()
            .map(|p| (p.name.clone(), p.id, p.state.clone(), p.events.clone()))
            .collect();
        let (churn_tx, churn_rx) = tokio::sync::watch::channel(churn);
        let (emitted, _) = broadcast::channel(EMITTED_BUFFER);
        tokio::spawn(run_churn(
            targets,
            shape,
            churn_rx,
            emitted.clone(),
            stop_rx,
        ));
        Ok(MockPeers {
            peers,
            stop,
            churn: churn_tx,
            emitted,
            _dir: dir,
        })
    }

    /// Changes the churn rate of every peer from now on.
    pub fn set_churn(&self, churn: Churn) {
        let _ = self.churn.send(churn);
    }

    /// Every change churn makes from now on, with the moment it was sent.
    pub fn emitted(&self) -> broadcast::Receiver<Emitted> {
        self.emitted.subscribe()
    }
}

/// What churn needs of one peer: name, cluster ID, state, event fan-out.
type ChurnTarget = (
    String,
    u32,
    Arc<Mutex<PeerState>>,
    broadcast::Sender<(i64, Event)>,
);

/// Applies churn to every peer: each step adds rate × step to a budget per
/// kind and makes the whole changes it owes (the peers' phases spread).
async fn run_churn(
    targets: Vec<ChurnTarget>,
    shape: Shape,
    churn: tokio::sync::watch::Receiver<Churn>,
    emitted: broadcast::Sender<Emitted>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let step = CHURN_STEP.as_secs_f64();
    // Peers are independent clusters, not phase-locked: peer i starts i/n
    // of a change ahead, so their changes are spread over each period
    // instead of all falling on the same step.
    let n = targets.len().max(1) as f64;
    let mut budget: Vec<[f64; 3]> = (0..targets.len()).map(|i| [i as f64 / n; 3]).collect();
    let mut cursor = vec![[0u32; 3]; targets.len()];
    let mut tick = tokio::time::interval(CHURN_STEP);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let churn = *churn.borrow();
        for (i, (name, c, state, events)) in targets.iter().enumerate() {
            for (kind_i, rate) in [churn.nodes, churn.endpoints, churn.identities]
                .into_iter()
                .enumerate()
            {
                budget[i][kind_i] += rate * step;
                while budget[i][kind_i] >= 1.0 {
                    budget[i][kind_i] -= 1.0;
                    let n = cursor[i][kind_i];
                    cursor[i][kind_i] = n.wrapping_add(1);
                    let mut st = lock(state);
                    st.changes += 1;
                    let generation = st.changes;
                    let (id, value) = match kind_i {
                        0 if shape.nodes > 0 => {
                            let r = node_record(name, *c, n % shape.nodes, generation);
                            ((Kind::Node, r.name.clone()), r.encode_to_vec())
                        }
                        1 if shape.endpoints > 0 => {
                            let e = n % shape.endpoints;
                            let flipped = (n / shape.endpoints).is_multiple_of(2);
                            let mut r = endpoint_record(name, *c, shape, e, flipped);
                            r.pod = format!("{}.g{generation}", r.pod);
                            ((Kind::Endpoint, r.ip.clone()), r.encode_to_vec())
                        }
                        2 if shape.identities > 0 => {
                            // Relabel one identity (an identity's labels changing
                            // keeps its number, as a namespace relabel does).
                            let k = n % shape.identities;
                            let mut r = identity_record(name, *c, k);
                            r.labels
                                .insert(IDENTITY_GENERATION.into(), generation.to_string());
                            ((Kind::Identity, r.id.to_string()), r.encode_to_vec())
                        }
                        _ => continue,
                    };
                    st.revision += 1;
                    let rev = st.revision;
                    let value: Bytes = value.into();
                    st.records.insert(id.clone(), value.clone());
                    let ev = Event {
                        r#type: EventType::Upsert as i32,
                        kind: id.0 as i32,
                        cluster: name.clone(),
                        key: id.1.clone(),
                        value,
                        revision: rev,
                        // When the mock made the change.
                        origin_unix_micros: Some(clustermesh_proto::stamp::now_micros()),
                    };
                    drop(st);
                    if emitted.receiver_count() > 0 {
                        let _ = emitted.send(Emitted {
                            cluster: name.clone(),
                            kind: id.0,
                            key: id.1,
                            generation,
                            at: Instant::now(),
                        });
                    }
                    let _ = events.send((rev, ev));
                }
            }
        }
    }
}

struct PeerService {
    state: Arc<Mutex<PeerState>>,
    events: broadcast::Sender<(i64, Event)>,
}

fn batch(t: BatchType, epoch: &str, revision: i64, events: Vec<Event>) -> WatchBatch {
    WatchBatch {
        r#type: t as i32,
        epoch: epoch.to_owned(),
        revision,
        events,
        ..Default::default()
    }
}

#[tonic::async_trait]
impl ClusterMesh for PeerService {
    type WatchStream = ReceiverStream<Result<WatchBatch, Status>>;

    async fn watch(
        &self,
        req: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let req = req.into_inner();
        if req.scope != Scope::Exported as i32 {
            return Err(Status::permission_denied(
                "a mock peer serves scope exported only",
            ));
        }
        let mut live = self.events.subscribe();
        // The snapshot at one revision; live events after it follow.
        let (epoch, rev, info, events) = {
            let st = lock(&self.state);
            let mut events: Vec<Event> = st
                .records
                .iter()
                .map(|((kind, key), v)| Event {
                    r#type: EventType::Upsert as i32,
                    kind: *kind as i32,
                    cluster: st.info.name.clone(),
                    key: key.clone(),
                    value: v.clone(),
                    revision: st.revision,
                    origin_unix_micros: None,
                })
                .collect();
            for kind in RECORD_KINDS {
                let mut tally = clustermesh_proto::attest::Tally::default();
                for ((k, key), v) in &st.records {
                    if *k == kind {
                        tally.add(clustermesh_proto::attest::record_hash(key, v));
                    }
                }
                let (records, digest) = match st.markers {
                    Markers::Legacy => (tally.records, None),
                    Markers::Honest => (tally.records, Some(tally.digest)),
                    Markers::Lying { extra } => (
                        tally.records + extra,
                        Some(tally.digest.wrapping_add(extra)),
                    ),
                };
                events.push(Event {
                    r#type: EventType::Synced as i32,
                    kind: kind as i32,
                    cluster: st.info.name.clone(),
                    key: String::new(),
                    value: SyncedMarker {
                        cluster: st.info.name.clone(),
                        kind: kind as i32,
                        records,
                        unix_millis: 0,
                        digest,
                    }
                    .encode_to_vec()
                    .into(),
                    revision: st.revision,
                    origin_unix_micros: None,
                });
            }
            (st.epoch.clone(), st.revision, st.info.clone(), events)
        };
        let (tx, rx) = mpsc::channel(16);
        let reset = req.resume.is_some();
        tokio::spawn(async move {
            let send = |b: WatchBatch| {
                let tx = tx.clone();
                async move { tx.send(Ok(b)).await.is_ok() }
            };
            let mut begin = batch(BatchType::SnapshotBegin, &epoch, rev, vec![]);
            begin.reset = reset;
            begin.cluster = Some(info.clone());
            if !send(begin).await {
                return;
            }
            for chunk in clustermesh_proto::chunks::slices(&events) {
                if !send(batch(BatchType::Snapshot, &epoch, rev, chunk.to_vec())).await {
                    return;
                }
            }
            if !send(batch(BatchType::SnapshotEnd, &epoch, rev, vec![])).await {
                return;
            }
            let mut last = rev;
            loop {
                match tokio::time::timeout(Duration::from_secs(1), live.recv()).await {
                    Ok(Ok((r, ev))) => {
                        if r <= last {
                            continue;
                        }
                        last = r;
                        if !send(batch(BatchType::Events, &epoch, r, vec![ev])).await {
                            return;
                        }
                    }
                    Ok(Err(broadcast::error::RecvError::Lagged(_))) => {
                        let mut out = batch(BatchType::Resync, &epoch, last, vec![]);
                        out.reason = "mock peer: subscriber fell behind".into();
                        let _ = send(out).await;
                        return;
                    }
                    Ok(Err(broadcast::error::RecvError::Closed)) => return,
                    Err(_) => {
                        let mut hb = batch(BatchType::Heartbeat, &epoch, last, vec![]);
                        hb.cluster = Some(info.clone());
                        if !send(hb).await {
                            return;
                        }
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_cluster(
        &self,
        _req: Request<GetClusterRequest>,
    ) -> Result<Response<ClusterInfo>, Status> {
        Ok(Response::new(lock(&self.state).info.clone()))
    }

    async fn lookup_service(
        &self,
        _req: Request<LookupServiceRequest>,
    ) -> Result<Response<LookupServiceResponse>, Status> {
        Err(Status::unimplemented("mock peer"))
    }

    async fn list_services(
        &self,
        _req: Request<ListServicesRequest>,
    ) -> Result<Response<ListServicesResponse>, Status> {
        Err(Status::unimplemented("mock peer"))
    }

    async fn status(
        &self,
        _req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        Err(Status::unimplemented("mock peer"))
    }

    async fn report_agent(
        &self,
        _req: Request<clustermesh_proto::v1::AgentReport>,
    ) -> Result<Response<clustermesh_proto::v1::ReportAgentResponse>, Status> {
        Err(Status::unimplemented("mock peer"))
    }
}
