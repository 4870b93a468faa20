//! A map by record key that keeps an IPv4 address's key as its 4 octets
//! ([`KeyMap`]).
//!
//! An endpoint's record key is its IP's text ("10.1.2.3"). Kept as a
//! string, even one inline without an allocation, that key is 24 bytes in
//! every map entry; as octets it is 4. At 250,000 remote endpoints that is
//! ~20 B per endpoint in each map keyed by record key: the mirror's digests
//! (the agent's, and each peer cache's in the apiserver) and the agent's
//! endpoint map (docs/benchmarks.md, "Keys as octets").
//!
//! A key goes to the octet map exactly when it is the canonical text of an
//! IPv4 address (what [`std::net::Ipv4Addr`]'s `Display` writes), so it is
//! given back ([`KeyRef`]) as the very string it was put in with; any other
//! key is kept as a string. The two maps are walked one after the other:
//! the addresses in numeric order, then the other keys in string order.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use smol_str::SmolStr;

/// The octets of `key` if it is exactly the canonical text of an IPv4
/// address, which is then written back the same.
fn octets(key: &str) -> Option<[u8; 4]> {
    // The shortest is "0.0.0.0", the longest "255.255.255.255"; the
    // parser rejects leading zeros, signs and spaces, so what it accepts
    // is what `Display` writes.
    if !(7..=15).contains(&key.len()) {
        return None;
    }
    key.parse::<Ipv4Addr>().ok().map(|ip| ip.octets())
}

/// A key as kept: given back without an allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyRef<'a> {
    Ipv4(Ipv4Addr),
    Text(&'a str),
}

impl KeyRef<'_> {
    /// The key as an inline string (no allocation for an address).
    pub fn to_smol(&self) -> SmolStr {
        match self {
            KeyRef::Ipv4(ip) => smol_str::format_smolstr!("{ip}"),
            KeyRef::Text(s) => SmolStr::new(s),
        }
    }
}

impl fmt::Display for KeyRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyRef::Ipv4(ip) => ip.fmt(f),
            KeyRef::Text(s) => f.write_str(s),
        }
    }
}

impl PartialEq<&str> for KeyRef<'_> {
    fn eq(&self, other: &&str) -> bool {
        match self {
            KeyRef::Ipv4(ip) => octets(other) == Some(ip.octets()),
            KeyRef::Text(s) => s == other,
        }
    }
}

/// Values by record key; see the module's documentation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyMap<V> {
    ipv4: BTreeMap<[u8; 4], V>,
    text: BTreeMap<SmolStr, V>,
}

impl<V> Default for KeyMap<V> {
    fn default() -> Self {
        KeyMap {
            ipv4: BTreeMap::new(),
            text: BTreeMap::new(),
        }
    }
}

impl<V> KeyMap<V> {
    pub fn len(&self) -> usize {
        self.ipv4.len() + self.text.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ipv4.is_empty() && self.text.is_empty()
    }

    pub fn get(&self, key: &str) -> Option<&V> {
        match octets(key) {
            Some(o) => self.ipv4.get(&o),
            None => self.text.get(key),
        }
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        match octets(key) {
            Some(o) => self.ipv4.get_mut(&o),
            None => self.text.get_mut(key),
        }
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// The value `key` had, if any.
    pub fn insert<K: Borrow<str> + Into<SmolStr>>(&mut self, key: K, v: V) -> Option<V> {
        match octets(key.borrow()) {
            Some(o) => self.ipv4.insert(o, v),
            None => self.text.insert(key.into(), v),
        }
    }

    pub fn remove(&mut self, key: &str) -> Option<V> {
        match octets(key) {
            Some(o) => self.ipv4.remove(&o),
            None => self.text.remove(key),
        }
    }

    /// Every entry: the addresses in numeric order, then the other keys.
    pub fn iter(&self) -> impl Iterator<Item = (KeyRef<'_>, &V)> {
        let ipv4 = self
            .ipv4
            .iter()
            .map(|(o, v)| (KeyRef::Ipv4(Ipv4Addr::from(*o)), v));
        let text = self.text.iter().map(|(k, v)| (KeyRef::Text(k.as_str()), v));
        ipv4.chain(text)
    }

    pub fn keys(&self) -> impl Iterator<Item = KeyRef<'_>> {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.ipv4.values().chain(self.text.values())
    }

    /// Rebuilds both trees from their sorted entries, so their nodes are
    /// full ([`crate::mirror::repack_map`]). O(entries).
    pub fn repack(&mut self) {
        crate::mirror::repack_map(&mut self.ipv4);
        crate::mirror::repack_map(&mut self.text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn addresses_as_octets_other_keys_as_text() {
        let mut m: KeyMap<u32> = KeyMap::default();
        assert_eq!(m.insert("10.0.0.2", 1), None);
        assert_eq!(m.insert("10.0.0.10", 2), None);
        assert_eq!(m.insert("ns/svc/10.0.0.1", 3), None);
        // Not canonical, so kept as the strings they are.
        for k in ["010.0.0.1", "10.0.0.1 ", "10.0.0", "::1", "1.2.3.4.5"] {
            assert_eq!(m.insert(k, 9), None, "{k}");
        }
        assert_eq!(m.insert("10.0.0.2", 4), Some(1), "replaced, counted once");
        assert_eq!(m.len(), 8);
        assert_eq!(m.ipv4.len(), 2, "only the canonical addresses");
        assert_eq!(m.get("10.0.0.2"), Some(&4));
        assert_eq!(m.get("010.0.0.1"), Some(&9));
        assert_eq!(m.get("10.0.0.1"), None);
        let keys: Vec<String> = m.keys().map(|k| k.to_string()).collect();
        assert_eq!(
            keys,
            [
                "10.0.0.2",
                "10.0.0.10",
                "010.0.0.1",
                "1.2.3.4.5",
                "10.0.0",
                "10.0.0.1 ",
                "::1",
                "ns/svc/10.0.0.1"
            ],
            "the addresses in numeric order, then the rest as strings"
        );
        assert!(m.keys().next().is_some_and(|k| k == "10.0.0.2"));
        assert_eq!(m.remove("10.0.0.2"), Some(4));
        assert_eq!(m.remove("10.0.0.2"), None);
        m.repack();
        assert_eq!(m.len(), 7);
        assert_eq!(m.get("ns/svc/10.0.0.1"), Some(&3));
    }

    proptest! {
        /// Whatever a key is, it is given back as exactly the string it
        /// was put in with, and found by it.
        #[test]
        fn every_key_round_trips(
            keys in proptest::collection::vec(
                prop_oneof![
                    (any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>())
                        .prop_map(|(a, b, c, d)| format!("{a}.{b}.{c}.{d}")),
                    "[0-9.]{1,16}",
                    "[a-z0-9./:-]{1,24}",
                ],
                1..40,
            )
        ) {
            let mut m = KeyMap::default();
            for (i, k) in keys.iter().enumerate() {
                m.insert(k.as_str(), i);
            }
            let mut back: Vec<String> = m.keys().map(|k| k.to_string()).collect();
            back.sort();
            let mut want = keys.clone();
            want.sort();
            want.dedup();
            prop_assert_eq!(&back, &want);
            for (k, _) in m.iter() {
                prop_assert!(m.get(&k.to_smol()).is_some());
                prop_assert!(k == k.to_string().as_str());
            }
        }
    }
}
