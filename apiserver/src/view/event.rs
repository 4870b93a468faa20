//! One change as the view keeps it: classified once when it arrives, then
//! filtered (cheaply) per subscriber scope.

use bytes::Bytes;
use clustermesh_proto::keys::{self, Origin, StoreKey};
use clustermesh_proto::v1::{Event, EventType, Kind, RecordHeader, Scope};

/// What a store key is, from the point of view of Watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// `state/...` of this cluster.
    LocalRecord,
    /// `cache/...`: mirrored from a peer.
    PeerRecord,
    /// `synced/<this cluster>/...`
    LocalSynced,
    /// `synced/<peer>/...`
    PeerSynced,
    /// `peers/<name>`: a peer's registration (never sent on Watch; the
    /// mesh supervisor and the trust store act on it).
    Registration,
    /// Meta, leader, peer status, index, heartbeat: never sent on Watch.
    Other,
}

/// A classified store key.
#[derive(Debug, Clone)]
pub struct Target {
    pub class: Class,
    pub kind: Kind,
    pub cluster: String,
    pub key: String,
}

impl Target {
    pub fn of(full_key: &str, local: &str) -> Target {
        let other = || Target {
            class: Class::Other,
            kind: Kind::Unspecified,
            cluster: String::new(),
            key: String::new(),
        };
        match keys::parse(full_key) {
            StoreKey::Record {
                origin,
                kind,
                cluster,
                key,
            } => Target {
                class: match origin {
                    Origin::State if cluster == local => Class::LocalRecord,
                    // A state record of another cluster name is not ours to serve.
                    Origin::State => Class::Other,
                    Origin::Cache => Class::PeerRecord,
                },
                kind,
                cluster: cluster.to_owned(),
                key: key.to_owned(),
            },
            StoreKey::Synced { cluster, kind } => Target {
                class: if cluster == local {
                    Class::LocalSynced
                } else {
                    Class::PeerSynced
                },
                kind,
                cluster: cluster.to_owned(),
                key: String::new(),
            },
            StoreKey::Peer(_) => Target {
                class: Class::Registration,
                ..other()
            },
            _ => other(),
        }
    }

    pub fn is_record(&self) -> bool {
        matches!(self.class, Class::LocalRecord | Class::PeerRecord)
    }
}

/// Whether a record's bytes say it is exported (undecodable → not exported).
pub fn exported_flag(target: &Target, value: &[u8]) -> bool {
    target.is_record()
        && RecordHeader::peek(value)
            .map(|h| h.exported)
            .unwrap_or(false)
}

/// A change in the view.
#[derive(Debug, Clone)]
pub struct ViewEvent {
    pub target: Target,
    /// `None` for a delete.
    pub value: Option<Bytes>,
    pub revision: i64,
    pub exported_before: bool,
    pub exported_now: bool,
    /// A live upsert's propagation stamp (µs since the Unix epoch): when
    /// this apiserver observed a change of its own cluster, or the origin's
    /// stamp carried by a mirrored record. `None` in snapshots.
    pub origin_micros: Option<i64>,
}

impl ViewEvent {
    /// The wire event a subscriber with `scope` and `kinds` gets, if any.
    pub fn to_wire(&self, scope: Scope, kinds: &[Kind]) -> Option<Event> {
        if !kinds.is_empty() && !kinds.contains(&self.target.kind) {
            return None;
        }
        let t = &self.target;
        let ev_type = match (t.class, scope, &self.value) {
            (Class::Other | Class::Registration, _, _) => return None,
            (Class::LocalRecord, Scope::Exported, Some(_)) if self.exported_now => {
                EventType::Upsert
            }
            // Stopped being exported, or deleted while exported: peers see a delete.
            (Class::LocalRecord, Scope::Exported, _) if self.exported_before => EventType::Delete,
            (Class::LocalRecord, Scope::Exported, _) => return None,
            (Class::PeerRecord | Class::PeerSynced, Scope::Exported, _) => return None,
            (_, Scope::Unspecified, _) => return None,
            (Class::LocalRecord | Class::PeerRecord, _, Some(_)) => EventType::Upsert,
            (Class::LocalRecord | Class::PeerRecord, _, None) => EventType::Delete,
            (Class::LocalSynced | Class::PeerSynced, _, Some(_)) => EventType::Synced,
            (Class::LocalSynced | Class::PeerSynced, _, None) => EventType::Unsynced,
        };
        let value = match ev_type {
            EventType::Upsert | EventType::Synced => self.value.clone().unwrap_or_default(),
            _ => Bytes::new(),
        };
        Some(Event {
            r#type: ev_type as i32,
            kind: t.kind as i32,
            cluster: t.cluster.clone(),
            key: t.key.clone(),
            origin_unix_micros: self.origin_micros.filter(|_| ev_type == EventType::Upsert),
            value,
            revision: self.revision,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn ev(full: &str, value: Option<Vec<u8>>, before: bool, now: bool) -> ViewEvent {
        ViewEvent {
            target: Target::of(full, "a"),
            value: value.map(Bytes::from),
            revision: 7,
            exported_before: before,
            exported_now: now,
            origin_micros: None,
        }
    }

    #[test]
    fn scopes() {
        let node = clustermesh_proto::v1::Node {
            exported: true,
            cluster: "a".into(),
            ..Default::default()
        };
        let bytes = node.encode_to_vec();
        let local = keys::state(Kind::Node, "a", "n1");
        let peer = keys::cache(Kind::Node, "b", "n1");
        // exported local record: both scopes
        let e = ev(&local, Some(bytes.clone()), false, true);
        assert_eq!(
            e.to_wire(Scope::Exported, &[]).map(|w| w.r#type),
            Some(EventType::Upsert as i32)
        );
        assert_eq!(
            e.to_wire(Scope::Merged, &[]).map(|w| w.r#type),
            Some(EventType::Upsert as i32)
        );
        // not exported: only merged
        let e = ev(&local, Some(bytes.clone()), false, false);
        assert!(e.to_wire(Scope::Exported, &[]).is_none());
        assert!(e.to_wire(Scope::Merged, &[]).is_some());
        // became unexported: peers see a delete
        let e = ev(&local, Some(bytes.clone()), true, false);
        assert_eq!(
            e.to_wire(Scope::Exported, &[]).map(|w| w.r#type),
            Some(EventType::Delete as i32)
        );
        // peer records never re-exported
        let e = ev(&peer, Some(bytes.clone()), true, true);
        assert!(e.to_wire(Scope::Exported, &[]).is_none());
        let w = e.to_wire(Scope::Merged, &[]).unwrap();
        assert_eq!((w.cluster.as_str(), w.key.as_str()), ("b", "n1"));
        // kind filter
        assert!(e.to_wire(Scope::Merged, &[Kind::Endpoint]).is_none());
        // markers
        let m = ev(&keys::synced("a", Kind::Node), Some(vec![]), false, false);
        assert_eq!(
            m.to_wire(Scope::Exported, &[]).map(|w| w.r#type),
            Some(EventType::Synced as i32)
        );
        let m = ev(&keys::synced("b", Kind::Node), None, false, false);
        assert!(m.to_wire(Scope::Exported, &[]).is_none());
        assert_eq!(
            m.to_wire(Scope::Merged, &[]).map(|w| w.r#type),
            Some(EventType::Unsynced as i32)
        );
        // meta never
        assert!(
            ev(&keys::meta_cluster(), Some(vec![]), false, false)
                .to_wire(Scope::Merged, &[])
                .is_none()
        );
    }
}
