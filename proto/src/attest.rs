//! Attested sync (DESIGN §12, docs/mesh.md "Attested sync"): a synced
//! marker carries the number of records of its kind and cluster and a
//! digest of their content, computed identically by the apiserver that
//! serves the records and by the one that mirrors them.
//!
//! - `value_digest(v)`: 16 bytes, two SipHash-2-4 passes over
//!   `u64le(len(v)) ‖ v` with keys (k0 = `0x636c_7573_7465_726d` ^ i,
//!   k1 = `0x6573_685f_6d69_7272`), i = 0 then 1, each output little-endian.
//! - `record_hash(key, v)`: SipHash-2-4 with keys
//!   (k0 = `0x6174_7465_7374_6564`, k1 = `0x7265_636f_7264_7321`) over
//!   `u64le(len(key)) ‖ key ‖ value_digest(v)`, where `key` is the Watch
//!   event's key (e.g. `10.1.0.5`, `ns/name`) and `v` the record bytes the
//!   origin serves (without a propagation stamp).
//! - the kind's digest: the wrapping (mod 2^64) sum of `record_hash` over
//!   its records. A sum does not depend on order and is updated per change
//!   (add the new hash, subtract the old), so neither side ever walks a
//!   whole kind to serve or check a marker.

use std::hash::Hasher;

/// The 16-byte digest of one record's bytes (also what a compact
/// [`crate::mirror::Mirror`] keeps per record).
pub fn value_digest(v: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        #[allow(deprecated)]
        let mut h = std::hash::SipHasher::new_with_keys(
            0x636c_7573_7465_726d ^ i as u64,
            0x6573_685f_6d69_7272,
        );
        h.write(&(v.len() as u64).to_le_bytes());
        h.write(v);
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    out
}

/// The hash of one record from its key and [`value_digest`].
pub fn record_hash_of_digest(key: &str, digest: &[u8]) -> u64 {
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new_with_keys(0x6174_7465_7374_6564, 0x7265_636f_7264_7321);
    h.write(&(key.len() as u64).to_le_bytes());
    h.write(key.as_bytes());
    h.write(digest);
    h.finish()
}

/// The hash of one record from its key and bytes.
pub fn record_hash(key: &str, value: &[u8]) -> u64 {
    record_hash_of_digest(key, &value_digest(value))
}

/// Count and digest of a set of records, updated per change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub records: u64,
    pub digest: u64,
}

impl Tally {
    pub fn add(&mut self, hash: u64) {
        self.records += 1;
        self.digest = self.digest.wrapping_add(hash);
    }
    pub fn remove(&mut self, hash: u64) {
        self.records = self.records.saturating_sub(1);
        self.digest = self.digest.wrapping_sub(hash);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_independent_and_incremental() {
        let recs = [("a", &b"1"[..]), ("b", b"2"), ("c", b"3")];
        let mut fwd = Tally::default();
        for (k, v) in recs {
            fwd.add(record_hash(k, v));
        }
        let mut rev = Tally::default();
        for (k, v) in recs.iter().rev() {
            rev.add(record_hash(k, v));
        }
        assert_eq!(fwd, rev);
        rev.remove(record_hash("b", b"2"));
        rev.add(record_hash("b", b"2"));
        assert_eq!(fwd, rev);
        // Key and value both count.
        assert_ne!(record_hash("a", b"1"), record_hash("a", b"2"));
        assert_ne!(record_hash("a", b"1"), record_hash("b", b"1"));
        assert_ne!(record_hash("ab", b""), record_hash("a", b"b"));
    }

    #[test]
    fn known_values() {
        // Pinned so another implementation can check itself against them.
        // (Checked with an independent SipHash-2-4 in Python, docs/mesh.md.)
        assert_eq!(record_hash("10.1.0.5", b"x"), 0x12a0_08e9_914c_cc83);
        assert_eq!(
            value_digest(b"x"),
            [
                0xaf, 0xbc, 0xeb, 0x27, 0x68, 0x5f, 0x05, 0xf0, 0x16, 0xed, 0x8b, 0x5d, 0xb2, 0xbb,
                0x5a, 0x22
            ]
        );
    }
}
