//! `clustermesh_agent_propagation_delay_seconds{source_cluster}` (DESIGN
//! §12): seconds from the origin apiserver observing a change to this agent
//! having it in its maps. The stamp comes with the live upsert on Watch
//! (`Event.origin_unix_micros`); it is observed once the reconcile that
//! follows has programmed the maps without error. Rendered by hand in the
//! Prometheus text format with the apiserver's buckets.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use clustermesh_proto::stamp;

/// The apiserver's buckets (0.5 ms to 30 s).
pub const BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0,
    30.0,
];

/// Stamps waiting for their reconcile are capped (a datapath that keeps
/// failing must not grow memory); the oldest go first.
pub const MAX_WAITING: usize = 100_000;

#[derive(Clone, Debug, Default)]
struct Series {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// One histogram per origin cluster, and the stamps from the future.
#[derive(Clone, Debug, Default)]
pub struct Propagation {
    series: BTreeMap<String, Series>,
    skewed: BTreeMap<String, u64>,
}

impl Propagation {
    /// A change from `source` stamped at `origin_micros` is in the maps at
    /// `now_micros`. A negative delay (the origin's clock is ahead) is
    /// observed as 0 and counted as skew.
    pub fn observe(&mut self, source: &str, origin_micros: i64, now_micros: i64) {
        let secs = match stamp::delay_seconds(origin_micros, now_micros) {
            Ok(s) => s,
            Err(_) => {
                *self.skewed.entry(source.to_owned()).or_default() += 1;
                0.0
            }
        };
        let s = self.series.entry(source.to_owned()).or_default();
        s.count += 1;
        s.sum += secs;
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                s.buckets[i] += 1;
            }
        }
    }

    /// The two families, in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let name = "clustermesh_agent_propagation_delay_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Seconds from the origin apiserver observing a change to this agent having it in its maps (clocks must be synchronised).\n# TYPE {name} histogram"
        );
        for (src, s) in &self.series {
            let src = escape(src);
            for (le, n) in BUCKETS.iter().zip(s.buckets) {
                let _ = writeln!(
                    out,
                    "{name}_bucket{{source_cluster=\"{src}\",le=\"{le}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "{name}_bucket{{source_cluster=\"{src}\",le=\"+Inf\"}} {}",
                s.count
            );
            let _ = writeln!(out, "{name}_sum{{source_cluster=\"{src}\"}} {}", s.sum);
            let _ = writeln!(out, "{name}_count{{source_cluster=\"{src}\"}} {}", s.count);
        }
        let skew = "clustermesh_agent_propagation_clock_skew_total";
        let _ = writeln!(
            out,
            "# HELP {skew} Propagation stamps from the future (the origin's clock is ahead): observed as 0 s.\n# TYPE {skew} counter"
        );
        for (src, n) in &self.skewed {
            let _ = writeln!(out, "{skew}{{source_cluster=\"{}\"}} {n}", escape(src));
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cumulative_buckets_sum_count_and_skew() {
        let mut p = Propagation::default();
        p.observe("b", 1_000_000, 1_003_000); // 3 ms
        p.observe("b", 1_000_000, 3_000_000); // 2 s
        p.observe("b", 5_000_000, 1_000_000); // skew
        let mut s = String::new();
        p.render(&mut s);
        let n = "clustermesh_agent_propagation_delay_seconds";
        assert!(s.contains(&format!(
            "{n}_bucket{{source_cluster=\"b\",le=\"0.0025\"}} 1\n"
        )));
        assert!(s.contains(&format!(
            "{n}_bucket{{source_cluster=\"b\",le=\"0.005\"}} 2\n"
        )));
        assert!(s.contains(&format!(
            "{n}_bucket{{source_cluster=\"b\",le=\"2.5\"}} 3\n"
        )));
        assert!(s.contains(&format!(
            "{n}_bucket{{source_cluster=\"b\",le=\"+Inf\"}} 3\n"
        )));
        assert!(s.contains(&format!("{n}_count{{source_cluster=\"b\"}} 3\n")));
        assert!(
            s.contains("clustermesh_agent_propagation_clock_skew_total{source_cluster=\"b\"} 1\n")
        );
        assert!(s.contains(&format!("# TYPE {n} histogram\n")));
    }
}
