//! Per-peer quotas ([`PeerQuota`]): the defaults, and the `key=value,...`
//! form the apiserver's `--peer-quota` and `clustermesh connect --quota`
//! accept, e.g. `endpoints=100000,bytes=128MiB`. See docs/mesh.md
//! "Per-peer quotas" for why the defaults are what they are.

use crate::v1::{Kind, PeerQuota};

/// The defaults: sized for a mesh of 250 clusters of ~1,000 endpoints
/// each, with head room of 50× for one large peer (docs/mesh.md).
pub const DEFAULT: PeerQuota = PeerQuota {
    nodes: 5_000,
    endpoints: 50_000,
    identities: 20_000,
    services: 10_000,
    policies: 5_000,
    bytes: 64 * 1024 * 1024,
    // One per (service, backend IP): a pod may back several services.
    backends: 100_000,
};

/// The names of the limits, as in `--peer-quota` and `over_quota`.
pub const NAMES: [&str; 7] = [
    "nodes",
    "endpoints",
    "identities",
    "services",
    "policies",
    "backends",
    "bytes",
];

/// The limit on records of `kind` (0: not set).
pub fn records(q: &PeerQuota, kind: Kind) -> u64 {
    match kind {
        Kind::Node => q.nodes,
        Kind::Endpoint => q.endpoints,
        Kind::Identity => q.identities,
        Kind::Service => q.services,
        Kind::Policy => q.policies,
        Kind::ServiceBackend => q.backends,
        Kind::Unspecified => 0,
    }
}

fn field<'a>(q: &'a mut PeerQuota, name: &str) -> Option<&'a mut u64> {
    Some(match name {
        "nodes" => &mut q.nodes,
        "endpoints" => &mut q.endpoints,
        "identities" => &mut q.identities,
        "services" => &mut q.services,
        "policies" => &mut q.policies,
        "backends" => &mut q.backends,
        "bytes" => &mut q.bytes,
        _ => return None,
    })
}

/// `q` with every zero field taken from `defaults`.
pub fn or_defaults(q: &PeerQuota, defaults: &PeerQuota) -> PeerQuota {
    let pick = |a: u64, b: u64| if a == 0 { b } else { a };
    PeerQuota {
        nodes: pick(q.nodes, defaults.nodes),
        endpoints: pick(q.endpoints, defaults.endpoints),
        identities: pick(q.identities, defaults.identities),
        services: pick(q.services, defaults.services),
        policies: pick(q.policies, defaults.policies),
        bytes: pick(q.bytes, defaults.bytes),
        backends: pick(q.backends, defaults.backends),
    }
}

/// Parses `name=value,...` (names from [`NAMES`]; `bytes` takes a
/// `Ki`/`Mi`/`Gi` (or `KiB`...) suffix). Fields not named stay 0.
pub fn parse(s: &str) -> Result<PeerQuota, String> {
    let mut q = PeerQuota::default();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?}: expected name=value (e.g. endpoints=50000)"))?;
        let name = name.trim();
        let n = if name == "bytes" {
            parse_bytes(value.trim())?
        } else {
            value
                .trim()
                .parse::<u64>()
                .map_err(|_| format!("{part:?}: {value:?} is not a number"))?
        };
        if n == 0 {
            return Err(format!("{part:?}: a quota must be at least 1"));
        }
        *field(&mut q, name).ok_or_else(|| {
            format!(
                "{part:?}: unknown quota {name:?} (one of {})",
                NAMES.join(", ")
            )
        })? = n;
    }
    Ok(q)
}

fn parse_bytes(v: &str) -> Result<u64, String> {
    let digits = v.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &v[digits.len()..];
    let mult: u64 = match unit {
        "" | "B" => 1,
        "Ki" | "KiB" => 1 << 10,
        "Mi" | "MiB" => 1 << 20,
        "Gi" | "GiB" => 1 << 30,
        _ => return Err(format!("{v:?}: unknown unit {unit:?} (use Ki, Mi or Gi)")),
    };
    digits
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{v:?} is not a byte count"))
}

/// `name=value,...` of the non-zero fields (bytes in MiB when whole).
pub fn display(q: &PeerQuota) -> String {
    let mut q2 = *q;
    NAMES
        .iter()
        .filter_map(|n| {
            let v = *field(&mut q2, n)?;
            (v != 0).then(|| {
                if *n == "bytes" && v % (1 << 20) == 0 {
                    format!("{n}={}MiB", v >> 20)
                } else {
                    format!("{n}={v}")
                }
            })
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display() {
        let q = parse("endpoints=100000, bytes=128MiB").unwrap();
        assert_eq!(q.endpoints, 100_000);
        assert_eq!(q.bytes, 128 << 20);
        assert_eq!(q.nodes, 0);
        assert_eq!(display(&q), "endpoints=100000,bytes=128MiB");
        assert_eq!(parse("bytes=1000").unwrap().bytes, 1000);
        assert_eq!(parse("bytes=4Ki").unwrap().bytes, 4096);
        assert!(parse("pods=3").unwrap_err().contains("unknown quota"));
        assert!(parse("nodes").unwrap_err().contains("name=value"));
        assert!(parse("nodes=0").unwrap_err().contains("at least 1"));
        assert!(parse("bytes=3Ti").unwrap_err().contains("unit"));
        assert!(parse("bytes=99999999999999Gi").is_err());
        let full = or_defaults(&q, &DEFAULT);
        assert_eq!(full.endpoints, 100_000);
        assert_eq!(full.nodes, DEFAULT.nodes);
        assert_eq!(records(&full, Kind::Node), 5_000);
        assert_eq!(parse(&display(&DEFAULT)).unwrap(), DEFAULT);
    }
}
