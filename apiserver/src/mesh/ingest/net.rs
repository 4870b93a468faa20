//! Addresses and Kubernetes names as the ingest rules parse them (CIDRs:
//! [`crate::cidr`]).

use std::net::IpAddr;
use std::str::FromStr;

pub use crate::cidr::{Cidr, MIN_PREFIX_V4, MIN_PREFIX_V6};

/// An IP address as Kubernetes writes it (no brackets, no zone, no spaces).
pub fn parse_ip(s: &str) -> Option<IpAddr> {
    IpAddr::from_str(s).ok()
}

/// RFC 1123 label: 1..=63 of `[a-z0-9-]`, starting and ending alphanumeric
/// (Kubernetes namespaces, service names).
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// RFC 1123 subdomain: at most 253 characters, labels joined by dots
/// (Kubernetes node, pod and policy names).
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_dns_label("shop-1"));
        assert!(!is_dns_label("Shop"));
        assert!(!is_dns_label("-a"));
        assert!(!is_dns_label(&"a".repeat(64)));
        assert!(is_dns_subdomain("node-1.example"));
        assert!(is_dns_subdomain("pod-10.1.0.5"));
        assert!(!is_dns_subdomain("a..b"));
        assert!(!is_dns_subdomain("a/b"));
        assert!(!is_dns_subdomain(""));
    }
}
