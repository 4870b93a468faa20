//! Scraping `/metrics` and parsing it with real parsers (Python's
//! `prometheus_client`, see scripts/install-deps.sh): shared by the
//! metrics tests.

#![allow(dead_code)]

use std::collections::BTreeMap;

use clustermesh_integration::apiserver::Cluster;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One parsed family: its type and samples (name, labels, value).
#[derive(Debug, Clone)]
pub struct Family {
    pub ty: String,
    pub samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

pub type Families = BTreeMap<String, Family>;

/// Parses `/metrics` with Python's prometheus_client: its Prometheus text
/// format parser (`prometheus_client.parser`) for `text/plain`, its
/// OpenMetrics parser (strict: a missing `# EOF`, bad names or values are
/// refused) for `application/openmetrics-text`.
pub const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families as text
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
parse = openmetrics if sys.argv[1] == "openmetrics" else text
out = {}
for f in parse(sys.stdin.read()):
    out[f.name] = {"type": f.type, "samples": [[s.name, s.labels, s.value] for s in f.samples]}
print(json.dumps(out))
"#;

/// The two formats `/metrics` serves, with the Accept header asking for each.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Format {
    /// What Prometheus asks for.
    OpenMetrics,
    /// What a client that asks for nothing in particular (curl) gets.
    Text,
}

impl Format {
    fn accept(self) -> Option<&'static str> {
        match self {
            Format::OpenMetrics => Some(
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
            ),
            Format::Text => None,
        }
    }
    fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0",
            Format::Text => "text/plain; version=0.0.4",
        }
    }
    fn parser(self) -> &'static str {
        match self {
            Format::OpenMetrics => "openmetrics",
            Format::Text => "text",
        }
    }
}

pub async fn parse(text: &str, format: Format) -> Families {
    let mut child = tokio::process::Command::new("python3")
        .args(["-c", PARSE, format.parser()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (scripts/install-deps.sh installs prometheus-client)");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(text.as_bytes()).await.expect("write");
    drop(stdin);
    let out = child.wait_with_output().await.expect("python3 ran");
    assert!(
        out.status.success(),
        "the {format:?} parser refused /metrics: {}\n--- text:\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("parser JSON");
    let mut fams = Families::new();
    for (name, f) in v.as_object().expect("object") {
        let samples = f["samples"]
            .as_array()
            .expect("samples")
            .iter()
            .map(|s| {
                let labels = s[1]
                    .as_object()
                    .expect("labels")
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect();
                (
                    s[0].as_str().unwrap_or_default().to_owned(),
                    labels,
                    s[2].as_f64().unwrap_or(f64::NAN),
                )
            })
            .collect();
        let ty = f["type"].as_str().unwrap_or_default().to_owned();
        fams.insert(name.clone(), Family { ty, samples });
    }
    fams
}

/// `GET /metrics` over plain HTTP/1.1 with `format`'s Accept header:
/// checks the status and Content-Type, returns the body.
pub async fn get_metrics(addr: &str, format: Format) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let accept = format
        .accept()
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
    };
    assert!(header("transfer-encoding").is_none(), "{head}");
    let ct = header("content-type").unwrap_or_default();
    assert!(ct.starts_with(format.content_type()), "{format:?}: {ct}");
    body.to_owned()
}

/// Scrapes `c`'s `/metrics` as Prometheus does and parses it.
pub async fn scrape(c: &Cluster) -> Families {
    scrape_as(c, Format::OpenMetrics).await
}

pub async fn scrape_as(c: &Cluster, format: Format) -> Families {
    scrape_replica(&c.api().health, format).await
}

pub async fn scrape_replica(health: &str, format: Format) -> Families {
    parse(&get_metrics(health, format).await, format).await
}

/// The value of the sample `sample` of family `family` whose labels include `labels`.
pub fn value(f: &Families, family: &str, sample: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let fam = f.get(&format!("clustermesh_apiserver_{family}"))?;
    fam.samples
        .iter()
        .find(|(n, l, _)| {
            *n == format!("clustermesh_apiserver_{sample}")
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
}

pub fn readiness(f: &Families, peer: &str) -> Option<f64> {
    value(
        f,
        "remote_cluster_readiness_status",
        "remote_cluster_readiness_status",
        &[("target_cluster", peer)],
    )
}

/// Count of the histogram `family` for `labels` (0 when it has no series yet).
pub fn histogram_count(f: &Families, family: &str, labels: &[(&str, &str)]) -> f64 {
    value(f, family, &format!("{family}_count"), labels).unwrap_or(0.0)
}

/// The `q` quantile of the histogram `family` for `labels`, interpolated in
/// its buckets as Prometheus' `histogram_quantile` does.
pub fn histogram_quantile(
    f: &Families,
    family: &str,
    labels: &[(&str, &str)],
    q: f64,
) -> Option<f64> {
    let fam = f.get(&format!("clustermesh_apiserver_{family}"))?;
    let mut buckets: Vec<(f64, f64)> = fam
        .samples
        .iter()
        .filter(|(n, l, _)| {
            n.ends_with("_bucket")
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .filter_map(|(_, l, v)| {
            let le = l.get("le")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, *v))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for (le, c) in buckets {
        if c >= rank {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let width = le - prev.0;
            let inb = c - prev.1;
            return Some(if inb <= 0.0 {
                le
            } else {
                prev.0 + width * (rank - prev.1) / inb
            });
        }
        prev = (le, c);
    }
    None
}
