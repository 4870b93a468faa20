//! The syncer's Watch batch handling (apiserver/src/mesh/cache/ with the
//! ingest rules, the pending gate and the quota): any sequence of batches a
//! peer may send (snapshots cut anywhere, events, markers, bad records,
//! fresh snapshots, sweeps) is applied without a panic, and the writes it
//! yields, applied to a model store, keep the cache's own view true:
//!
//! - the store holds per kind exactly what `PeerCache::counts` says (the
//!   model counts its keys per write);
//! - never more endpoints than the quota, never more bytes held than the quota;
//! - only the peer's own `cache/`/`synced/` keys; no policy unless imported.
//!
//! Input: a byte program (see `step`). Records come from small alphabets
//! (so that keys collide, nodes cover endpoints or stop covering them), with
//! some refused by the rules and some raw bytes.

#![no_main]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use clustermesh_apiserver::mesh::cache::PeerCache;
use clustermesh_apiserver::mesh::ingest::{Cidr, Context, PeerRef};
use clustermesh_apiserver::store::WriteOp;
use clustermesh_proto::v1::{
    Backend, BatchType, Endpoint, Event, EventType, Identity, Kind, NetworkPolicySpec, Node,
    PeerQuota, Policy, Service, WatchBatch,
};
use clustermesh_proto::{ClusterMode, RECORD_KINDS, keys, quota};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use tokio::time::Instant;

const ENDPOINTS: u64 = 3;
const BYTES: u64 = 4096;

struct R<'a>(&'a [u8]);

impl R<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }
}

fn record(kind: Kind, idx: u8, var: u8, r: &mut R) -> (String, Bytes) {
    let cluster = if var & 0x80 != 0 && var & 0x40 != 0 {
        "x"
    } else {
        "a"
    }
    .to_string();
    if var == 0xff {
        let n = usize::from(r.byte().unwrap_or(0) % 16).min(r.0.len());
        let raw = Bytes::copy_from_slice(&r.0[..n]);
        r.0 = &r.0[n..];
        return (format!("raw{idx}"), raw);
    }
    let v = var & 0x3f;
    match kind {
        Kind::Node => {
            let name = format!("n{}", idx % 4);
            let cidrs = match v % 6 {
                0 | 5 => vec![format!("10.1.{}.0/24", idx % 4)],
                1 => vec!["10.1.0.0/16".to_string()],
                2 => vec!["0.0.0.0/0".to_string()],
                3 => vec!["10.2.0.0/24".to_string()],
                _ => vec![],
            };
            let n = Node {
                name: name.clone(),
                internal_ips: vec![format!("192.168.0.{idx}")],
                pod_cidrs: cidrs,
                cluster,
                exported: true,
                ..Default::default()
            };
            (name, n.encode_to_vec().into())
        }
        Kind::Endpoint => {
            let ip = format!("10.1.{}.{}", v % 4, idx % 8 + 1);
            let e = Endpoint {
                ip: ip.clone(),
                identity: (1 << 16) | (256 + u32::from(v % 3)),
                node_ip: "192.168.0.1".into(),
                namespace: "shop".into(),
                pod: format!("p{idx}"),
                cluster,
                exported: true,
                ..Default::default()
            };
            (ip, e.encode_to_vec().into())
        }
        Kind::Identity => {
            let id = (1 << 16) | (256 + u32::from(idx % 8));
            let i = Identity {
                id,
                labels: [("k8s:app".to_string(), format!("app{v}"))].into(),
                cluster,
                exported: true,
            };
            (id.to_string(), i.encode_to_vec().into())
        }
        Kind::Service => {
            let name = format!("s{}", idx % 4);
            let s = Service {
                namespace: "shop".into(),
                name: name.clone(),
                global: true,
                backends: (0..v % 3)
                    .map(|b| Backend {
                        ip: format!("10.1.{}.{}", (v + b) % 4, b + 1),
                        ..Default::default()
                    })
                    .collect(),
                cluster,
                exported: true,
                ..Default::default()
            };
            (format!("shop/{name}"), s.encode_to_vec().into())
        }
        Kind::ServiceBackend => {
            let svc = format!("s{}", idx % 4);
            let ip = format!("10.1.{}.{}", v % 4, idx % 8 + 1);
            let b = clustermesh_proto::v1::ServiceBackend {
                namespace: "shop".into(),
                service: svc.clone(),
                backend: Some(Backend {
                    ip: ip.clone(),
                    ready: v & 1 == 1,
                    ..Default::default()
                }),
                cluster,
                exported: true,
            };
            (
                clustermesh_proto::backends::key("shop", &svc, &ip),
                b.encode_to_vec().into(),
            )
        }
        Kind::Policy | Kind::Unspecified => {
            let name = format!("p{}", idx % 4);
            let p = Policy {
                namespace: "shop".into(),
                name: name.clone(),
                spec: Some(NetworkPolicySpec::default()),
                global: v & 1 == 1,
                cluster,
                exported: true,
            };
            (format!("shop/{name}"), p.encode_to_vec().into())
        }
    }
}

fn events(r: &mut R) -> Vec<Event> {
    let n = r.byte().unwrap_or(0) % 8;
    let mut out = Vec::new();
    for _ in 0..n {
        let (Some(k), Some(t), Some(idx), Some(var)) = (r.byte(), r.byte(), r.byte(), r.byte())
        else {
            break;
        };
        let kind = RECORD_KINDS[usize::from(k) % RECORD_KINDS.len()];
        let typ = match t % 8 {
            0..=3 => EventType::Upsert,
            4 | 5 => EventType::Delete,
            6 => EventType::Synced,
            _ => EventType::Unsynced,
        };
        let (key, value) = record(kind, idx, var, r);
        let (key, value) = match typ {
            EventType::Upsert => (key, value),
            EventType::Delete => (key, Bytes::new()),
            _ => (String::new(), Bytes::new()),
        };
        out.push(Event {
            r#type: typ as i32,
            kind: kind as i32,
            cluster: "a".into(),
            key,
            value,
            revision: 1,
            ..Default::default()
        });
    }
    out
}

/// The model store: values (the cache's lookup reads them) and how many
/// keys of each kind it holds, kept per write, so that a step's check costs
/// what the step wrote, not the whole store (a whole-store scan per step
/// had made long programs ~10× slower).
#[derive(Default)]
struct Model {
    values: BTreeMap<String, Bytes>,
    counts: BTreeMap<Kind, u64>,
}

type Store = Arc<Mutex<Model>>;

fn lock(s: &Store) -> std::sync::MutexGuard<'_, Model> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// The kind of one of the peer's own keys (`None` for its `synced/` keys);
/// any other key fails the run.
fn own_kind(key: &str) -> Option<Kind> {
    let rest = key.strip_prefix(keys::PREFIX);
    if rest.is_some_and(|r| r.starts_with("synced/a/")) {
        return None;
    }
    let kind = rest
        .and_then(|r| r.strip_prefix("cache/"))
        .and_then(|r| r.split_once('/'))
        .and_then(|(seg, r)| r.starts_with("a/").then_some(seg))
        .and_then(Kind::from_segment);
    match kind {
        Some(k) if RECORD_KINDS.contains(&k) => Some(k),
        _ => panic!("a key that is not the peer's own: {key}"),
    }
}

fn write(store: &Store, ops: &[WriteOp]) {
    let mut s = lock(store);
    let Model { values, counts } = &mut *s;
    for op in ops {
        match op {
            WriteOp::Put { key, value } => {
                let kind = own_kind(key);
                if values.insert(key.clone(), value.clone()).is_none()
                    && let Some(k) = kind
                {
                    *counts.entry(k).or_default() += 1;
                }
            }
            WriteOp::Delete { key } => {
                let kind = own_kind(key);
                if values.remove(key).is_some()
                    && let Some(k) = kind
                {
                    *counts.entry(k).or_default() -= 1;
                }
            }
            WriteOp::DeletePrefix { prefix } => values.retain(|k, _| {
                if !k.starts_with(prefix.as_str()) {
                    return true;
                }
                if let Some(kind) = own_kind(k) {
                    *counts.entry(kind).or_default() -= 1;
                }
                false
            }),
        }
    }
}

fn check(cache: &PeerCache, store: &Store, import: bool) {
    let s = lock(store);
    let mut counted: BTreeMap<Kind, u64> = BTreeMap::new();
    for c in cache.counts() {
        if let Ok(kind) = Kind::try_from(c.kind) {
            counted.insert(kind, c.count);
        }
    }
    for kind in RECORD_KINDS {
        let stored = s.counts.get(&kind).copied().unwrap_or(0);
        assert_eq!(
            stored,
            counted.get(&kind).copied().unwrap_or(0),
            "{kind:?}: the store and the cache's counts disagree"
        );
        if kind == Kind::Policy && !import {
            assert_eq!(stored, 0, "a policy written while not imported");
        }
    }
    assert!(cache.quota().held(Kind::Endpoint) <= ENDPOINTS);
    assert!(cache.quota().held_bytes() <= BYTES);
}

/// `FUZZ_DEBUG=1`: print every batch and its writes (replaying a crash).
fn debug() -> bool {
    static D: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *D.get_or_init(|| std::env::var_os("FUZZ_DEBUG").is_some())
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, program)) = data.split_first() else {
        return;
    };
    let import = flags & 1 == 1;
    let peer = PeerRef {
        name: "a".into(),
        id: 1,
        mode: ClusterMode::Max255,
    };
    let store: Store = Arc::default();
    let s2 = store.clone();
    let mut cache = PeerCache::seeded(peer, vec![], vec![])
        .with_quota(quota::or_defaults(
            &PeerQuota {
                endpoints: ENDPOINTS,
                bytes: BYTES,
                ..Default::default()
            },
            &quota::DEFAULT,
        ))
        .with_import_policies(import)
        .with_lookup(Arc::new(move |k: &str| lock(&s2).values.get(k).cloned()));
    let ctx = Context::new(
        vec![Cidr::parse("10.2.0.0/16").expect("cidr")],
        vec![],
        vec![],
    );
    let grace = if flags & 2 == 0 {
        Duration::ZERO
    } else {
        Duration::from_secs(5)
    };
    let start = Instant::now();
    let mut now = start;
    let mut r = R(program);
    let mut rev = 1;
    while let Some(op) = r.byte() {
        rev += 1;
        let mut b = WatchBatch {
            epoch: "e".into(),
            revision: rev,
            ..Default::default()
        };
        match op % 8 {
            0 => {
                b.r#type = BatchType::SnapshotBegin as i32;
                b.reset = r.byte().unwrap_or(0) & 1 == 1;
            }
            1 => {
                b.r#type = BatchType::Snapshot as i32;
                b.events = events(&mut r);
            }
            2 => b.r#type = BatchType::SnapshotEnd as i32,
            3 | 4 => {
                b.r#type = BatchType::Events as i32;
                b.events = events(&mut r);
            }
            5 => b.r#type = BatchType::Heartbeat as i32,
            6 => {
                now += Duration::from_secs(u64::from(r.byte().unwrap_or(0) % 8));
                let ops = cache.sweep_due(now);
                write(&store, &ops);
                check(&cache, &store, import);
                continue;
            }
            _ => {
                cache.want_snapshot();
                assert!(cache.resume_point().is_none());
                continue;
            }
        }
        if debug() {
            eprintln!("batch {b:?}");
        }
        let a = cache.apply(b, now, grace, &ctx);
        if debug() {
            eprintln!(
                "ops {:?} rejected {:?} pending {:?} unresolved {:?}",
                a.ops, a.rejected, a.pending, a.unresolved
            );
        }
        // As the peer loop does: a withdrawn record's value from this write,
        // else from the store (its delete is not written yet).
        for id in a.unresolved {
            let key = keys::cache(id.0, "a", &id.2);
            let value = a
                .ops
                .iter()
                .rev()
                .find_map(|o| match o {
                    WriteOp::Put { key: k, value } if *k == key => Some(value.clone()),
                    _ => None,
                })
                .or_else(|| lock(&store).values.get(&key).cloned());
            cache.resolve(id, value.as_ref());
        }
        write(&store, &a.ops);
        check(&cache, &store, import);
    }
});
