//! Propagation stamps (DESIGN §12): when the origin apiserver observed a
//! change, carried on the wire as `Event.origin_unix_micros` and, in the
//! records a mirroring apiserver writes under `cache/`, as field 13 of the
//! record bytes (`RecordHeader.origin_unix_micros`, an `sfixed64`): the
//! 9 bytes `0x69` + 8 bytes little-endian appended to the origin's bytes.
//! Record decoders skip the field; [`split`] takes it off again, so
//! comparisons and digests see exactly the bytes the origin served.

use bytes::{BufMut, Bytes, BytesMut};

use crate::v1::RecordHeader;

/// Tag of field 13, wire type 1 (64-bit).
const TAG: u8 = (13 << 3) | 1;
/// Bytes a stamp adds to a record.
pub const STAMP_LEN: usize = 9;
const LEN: usize = STAMP_LEN;

/// Microseconds since the Unix epoch now (0 before 1970).
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `record` with the stamp `micros` appended (any earlier stamp removed).
pub fn append(record: &Bytes, micros: i64) -> Bytes {
    let (bare, _) = split(record);
    let mut out = BytesMut::with_capacity(bare.len() + LEN);
    out.extend_from_slice(&bare);
    out.put_u8(TAG);
    out.put_i64_le(micros);
    out.freeze()
}

/// The origin's bytes and the stamp, if `value` carries one.
pub fn split(value: &Bytes) -> (Bytes, Option<i64>) {
    let n = value.len();
    if n < LEN || value[n - LEN] != TAG {
        return (value.clone(), None);
    }
    // The tag byte could be the tail of some other field: only a decode
    // that finds field 13 with these very bytes says it is a stamp.
    let mut le = [0u8; 8];
    le.copy_from_slice(&value[n - 8..]);
    let micros = i64::from_le_bytes(le);
    match RecordHeader::peek(value) {
        Ok(h) if h.origin_unix_micros == Some(micros) => (value.slice(..n - LEN), Some(micros)),
        _ => (value.clone(), None),
    }
}

/// Seconds from `origin_micros` to `now_micros`; a negative delta (the
/// origin's clock is ahead of ours) is `Err` with the skew in seconds.
pub fn delay_seconds(origin_micros: i64, now_micros: i64) -> Result<f64, f64> {
    let d = now_micros.saturating_sub(origin_micros) as f64 / 1e6;
    if d < 0.0 { Err(-d) } else { Ok(d) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::Node;
    use prost::Message;

    #[test]
    fn append_and_split_round_trip() {
        let n = Node {
            name: "n1".into(),
            cluster: "a".into(),
            exported: true,
            ..Default::default()
        };
        let bare = Bytes::from(n.encode_to_vec());
        let stamped = append(&bare, 1_700_000_000_123_456);
        assert_eq!(stamped.len(), bare.len() + LEN);
        assert_eq!(Node::decode(stamped.clone()).expect("decodes"), n);
        let h = RecordHeader::peek(&stamped).expect("header");
        assert_eq!(h.origin_unix_micros, Some(1_700_000_000_123_456));
        assert!(h.exported);
        assert_eq!(split(&stamped), (bare.clone(), Some(1_700_000_000_123_456)));
        assert_eq!(split(&bare), (bare.clone(), None));
        // Restamping replaces.
        assert_eq!(split(&append(&stamped, 5)), (bare, Some(5)));
    }

    #[test]
    fn a_record_ending_like_a_tag_is_not_a_stamp() {
        // A name whose last 9 bytes look like a stamp.
        let mut name = "x".repeat(4);
        name.push('i');
        name.push_str("12345678");
        let n = Node {
            name,
            ..Default::default()
        };
        let bare = Bytes::from(n.encode_to_vec());
        assert_eq!(split(&bare).1, None);
    }

    #[test]
    fn negative_delays_are_skew() {
        assert_eq!(delay_seconds(1_000_000, 3_500_000), Ok(2.5));
        assert_eq!(delay_seconds(3_000_000, 1_000_000), Err(2.0));
    }
}
