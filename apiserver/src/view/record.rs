//! One key of the view as it is kept: the key, the stored value and the
//! entry's metadata in **one** reference-counted allocation, so that the
//! view's persistent map holds a pointer per key (8 bytes in its nodes)
//! instead of a key string, a value handle and the metadata inline (72
//! bytes, in nodes that a sorted load leaves half full), plus separate
//! allocations for the key, the value and the value's shared header.
//! (docs/benchmarks.md "Compact record tables".)
//!
//! Layout: `mod_revision` (8 bytes, little-endian), flags (1), key length
//! (4, little-endian), the key without the store's prefix
//! ([`keys::PREFIX`], the same for every key the view holds), the value.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use clustermesh_proto::keys;

const REVISION: usize = 0;
const FLAGS: usize = 8;
const KEY_LEN: usize = 9;
const HEADER: usize = 13;

const EXPORTED: u8 = 1;
const STAMPED: u8 = 2;

/// A kept key. Ordered (and borrowed, for lookups) by its key's bytes
/// after the prefix ([`stored`]), which orders it as the full key does.
#[derive(Clone)]
pub struct Record(Arc<[u8]>);

/// What the view keeps of a full store key, and looks it up by: the key
/// after [`keys::PREFIX`]. `None` for a key outside it (the view's feed
/// watches only that prefix).
pub fn stored(full_key: &str) -> Option<&[u8]> {
    full_key.strip_prefix(keys::PREFIX).map(str::as_bytes)
}

impl Record {
    /// `stamped`: `value` ends with a propagation stamp. `None` for a key
    /// outside [`keys::PREFIX`].
    pub fn new(
        full_key: &str,
        value: &[u8],
        mod_revision: i64,
        exported: bool,
        stamped: bool,
    ) -> Option<Self> {
        let key = full_key.strip_prefix(keys::PREFIX)?;
        // A key is bounded by etcd's request limit, far below 4 GiB.
        let key_len = u32::try_from(key.len()).unwrap_or(u32::MAX);
        let key = &key.as_bytes()[..key_len as usize];
        let mut flags = 0;
        if exported {
            flags |= EXPORTED;
        }
        if stamped {
            flags |= STAMPED;
        }
        let mut buf = Vec::with_capacity(HEADER + key.len() + value.len());
        buf.extend_from_slice(&mod_revision.to_le_bytes());
        buf.push(flags);
        buf.extend_from_slice(&key_len.to_le_bytes());
        buf.extend_from_slice(key);
        buf.extend_from_slice(value);
        Some(Record(Arc::from(buf)))
    }

    fn key_end(&self) -> usize {
        let mut le = [0u8; 4];
        le.copy_from_slice(&self.0[KEY_LEN..HEADER]);
        HEADER + u32::from_le_bytes(le) as usize
    }

    /// The key after [`keys::PREFIX`].
    pub fn key_bytes(&self) -> &[u8] {
        &self.0[HEADER..self.key_end()]
    }

    /// The full store key (built from a `&str`, so always UTF-8).
    pub fn key(&self) -> String {
        let mut k = String::with_capacity(keys::PREFIX.len() + self.key_bytes().len());
        self.write_key(&mut k);
        k
    }

    /// The full store key into `buf` (cleared first): for a walk over many
    /// records, one buffer instead of a string per record.
    pub fn write_key(&self, buf: &mut String) {
        buf.clear();
        buf.push_str(keys::PREFIX);
        buf.push_str(&String::from_utf8_lossy(self.key_bytes()));
    }

    /// The full key with its first `prefix` bytes cut (the length of a
    /// full-key prefix this record was found under).
    pub fn key_after(&self, prefix: usize) -> std::borrow::Cow<'_, str> {
        let cut = prefix.saturating_sub(keys::PREFIX.len());
        String::from_utf8_lossy(self.key_bytes().get(cut..).unwrap_or_default())
    }

    pub fn mod_revision(&self) -> i64 {
        let mut le = [0u8; 8];
        le.copy_from_slice(&self.0[REVISION..REVISION + 8]);
        i64::from_le_bytes(le)
    }

    pub fn exported(&self) -> bool {
        self.0[FLAGS] & EXPORTED != 0
    }

    pub fn stamped(&self) -> bool {
        self.0[FLAGS] & STAMPED != 0
    }

    /// The stored value (with its propagation stamp, if any).
    pub fn value_bytes(&self) -> &[u8] {
        &self.0[self.key_end()..]
    }

    /// The stored value as shared bytes: no copy (one small handle).
    pub fn value(&self) -> Bytes {
        let start = self.key_end();
        Bytes::from_owner(Owner(self.0.clone())).slice(start..)
    }

    /// What Watch serves: the value without its propagation stamp (it
    /// travels in `Event.origin_unix_micros`).
    pub fn served(&self) -> Bytes {
        let start = self.key_end();
        let stamp = if self.stamped() {
            clustermesh_proto::stamp::STAMP_LEN
        } else {
            0
        };
        let end = self.0.len().saturating_sub(stamp).max(start);
        Bytes::from_owner(Owner(self.0.clone())).slice(start..end)
    }
}

/// Lets a [`Bytes`] share a record's allocation.
struct Owner(Arc<[u8]>);
impl AsRef<[u8]> for Owner {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("key", &self.key())
            .field("mod_revision", &self.mod_revision())
            .field("value_len", &self.value_bytes().len())
            .finish()
    }
}

impl PartialEq for Record {
    fn eq(&self, other: &Self) -> bool {
        self.key_bytes() == other.key_bytes()
    }
}
impl Eq for Record {}
impl PartialOrd for Record {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Record {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key_bytes().cmp(other.key_bytes())
    }
}
impl Borrow<[u8]> for Record {
    fn borrow(&self) -> &[u8] {
        self.key_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(rest: &str) -> String {
        format!("{}{rest}", keys::PREFIX)
    }

    #[test]
    fn fields_round_trip_and_order_follows_the_key() {
        let r = Record::new(&key("a/b"), b"value\x01", -7, true, false).expect("under the prefix");
        assert_eq!(r.key(), key("a/b"));
        assert_eq!(r.key_bytes(), b"a/b", "kept without the prefix");
        assert_eq!(r.key_after(key("a/").len()), "b");
        assert_eq!(r.mod_revision(), -7);
        assert!(r.exported() && !r.stamped());
        assert_eq!(r.value_bytes(), b"value\x01");
        assert_eq!(&r.value()[..], b"value\x01");
        assert_eq!(&r.served()[..], b"value\x01");
        let s =
            Record::new(&key("a/c"), &[0u8; 20], i64::MAX, false, true).expect("under the prefix");
        assert_eq!(s.mod_revision(), i64::MAX);
        assert!(!s.exported() && s.stamped());
        assert_eq!(
            s.served().len(),
            20 - clustermesh_proto::stamp::STAMP_LEN,
            "the stamp is cut"
        );
        assert!(r < s);
        let e = Record::new(keys::PREFIX, b"", 0, false, false).expect("the prefix itself");
        assert_eq!(e.key(), keys::PREFIX);
        assert!(e.value_bytes().is_empty() && e.served().is_empty());
        assert!(Record::new("elsewhere/x", b"", 0, false, false).is_none());
        assert!(stored("elsewhere/x").is_none());
        // Lookups by the stored key.
        let set: imbl::OrdSet<Record> = [r.clone(), s.clone(), e].into_iter().collect();
        let get = |k: &str| set.get(stored(&key(k)).expect("under the prefix"));
        assert_eq!(get("a/c").map(Record::mod_revision), Some(i64::MAX));
        assert!(get("a/d").is_none());
    }
}
