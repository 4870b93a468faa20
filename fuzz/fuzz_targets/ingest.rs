//! The record decoders plus ingest validation (apiserver/src/mesh/ingest):
//! any event a peer may send is decoded and checked without a panic.
//!
//! Input: `[mode, kind, type, key_len, key.., value..]`. With the high bit
//! of `mode` set, the value is first decoded as its kind and re-keyed the
//! way an honest peer keys it (so the deeper, per-field rules are reached,
//! not only the decode and key checks).

#![no_main]

use bytes::Bytes;
use clustermesh_apiserver::mesh::ingest::{Cidr, Context, PeerRef};
use clustermesh_proto::ClusterMode;
use clustermesh_proto::v1::{
    Endpoint, Event, Identity, Kind, Node, Policy, RecordHeader, Service, ServiceBackend,
};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn cidr(s: &str) -> Cidr {
    Cidr::parse(s).expect("a test CIDR")
}

fn honest_key(kind: Kind, value: &[u8]) -> Option<String> {
    Some(match kind {
        Kind::Node => Node::decode(value).ok()?.name,
        Kind::Endpoint => Endpoint::decode(value).ok()?.ip,
        Kind::Identity => Identity::decode(value).ok()?.id.to_string(),
        Kind::Service => {
            let s = Service::decode(value).ok()?;
            format!("{}/{}", s.namespace, s.name)
        }
        Kind::Policy => {
            let p = Policy::decode(value).ok()?;
            format!("{}/{}", p.namespace, p.name)
        }
        Kind::ServiceBackend => {
            let b = ServiceBackend::decode(value).ok()?;
            clustermesh_proto::backends::key(&b.namespace, &b.service, &b.backend?.ip)
        }
        Kind::Unspecified => return None,
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let (mode, kind, typ) = (data[0], i32::from(data[1] % 8), i32::from(data[2] % 6));
    let klen = usize::from(data[3]).min(data.len() - 4);
    let mut key = String::from_utf8_lossy(&data[4..4 + klen]).into_owned();
    let value = Bytes::copy_from_slice(&data[4 + klen..]);
    // Every decoder on every value.
    let _ = RecordHeader::peek(&value);
    let _ = Node::decode(value.as_ref());
    let _ = Endpoint::decode(value.as_ref());
    let _ = Identity::decode(value.as_ref());
    let _ = Service::decode(value.as_ref());
    let _ = Policy::decode(value.as_ref());
    let _ = ServiceBackend::decode(value.as_ref());
    if mode & 0x80 != 0
        && let Ok(k) = Kind::try_from(kind)
        && let Some(k2) = honest_key(k, &value)
    {
        key = k2;
    }
    let peer = PeerRef {
        name: if mode & 1 == 0 { "a" } else { "b" }.into(),
        id: if mode & 2 == 0 { 1 } else { 300 },
        mode: if mode & 4 == 0 {
            ClusterMode::Max255
        } else {
            ClusterMode::Max511
        },
    };
    let ctx = Context::new(
        vec![cidr("10.2.0.0/16"), cidr("fd00:2::/64")],
        vec![cidr("10.96.0.0/12")],
        vec![("c".into(), cidr("10.3.0.0/16"))],
    );
    let e = Event {
        r#type: typ,
        kind,
        cluster: "a".into(),
        key,
        value,
        revision: 1,
        ..Default::default()
    };
    if let Err(err) = peer.check(&e, &ctx) {
        // Every refusal renders and has a label.
        assert!(!err.reason().label().is_empty());
        let _ = err.to_string();
    }
});
