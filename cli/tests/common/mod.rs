//! Shared by the CLI end-to-end tests: running the built `clustermesh`
//! binary, and small manifests for the `manifests:DIR` source.

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use clustermesh_localmesh::apiserver::Cluster;

/// What one run of the CLI produced.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// Parses stdout as JSON, panicking with the whole run on failure.
    pub fn json(&self) -> serde_json::Value {
        assert!(self.ok(), "command failed: {self:#?}");
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:#?}"))
    }
}

/// The `clustermesh` binary cargo built for this test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_clustermesh")
}

/// Runs `clustermesh args...` with an isolated contexts file; kills it after `timeout`.
pub async fn cli(args: &[String], timeout: Duration) -> Run {
    let mut cmd = tokio::process::Command::new(bin());
    cmd.args(args)
        .env(
            "CLUSTERMESH_CONFIG",
            "/nonexistent/clustermesh-test-config.yaml",
        )
        .env_remove("CLUSTERMESH_SERVER")
        .env_remove("CLUSTERMESH_TLS_DIR")
        .env_remove("CLUSTERMESH_CONTEXT")
        .kill_on_drop(true);
    let out = tokio::time::timeout(timeout, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("clustermesh {args:?} did not finish within {timeout:?}"))
        .unwrap_or_else(|e| panic!("running {}: {e}", bin()));
    let run = Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    eprintln!(
        "$ clustermesh {}\n  -> {:?}{}",
        args.join(" "),
        run.code,
        if run.ok() {
            String::new()
        } else {
            format!("\n  stderr: {}", run.stderr.trim())
        }
    );
    run
}

/// `--server` and `--tls-dir` of a harness cluster, followed by `rest`.
pub fn on(c: &Cluster, rest: &[&str]) -> Vec<String> {
    let mut v = vec![
        "--server".to_owned(),
        c.api().grpc.clone(),
        "--tls-dir".to_owned(),
        c.tls_dir().display().to_string(),
    ];
    v.extend(rest.iter().map(|s| s.to_string()));
    v
}

/// `--peer-server` and `--peer-tls-dir` of a harness cluster.
pub fn peer_flags(c: &Cluster) -> Vec<String> {
    vec![
        "--peer-server".to_owned(),
        c.api().grpc.clone(),
        "--peer-tls-dir".to_owned(),
        c.tls_dir().display().to_string(),
    ]
}

/// Writes `content` to `dir/name` atomically (the source skips dot files).
pub fn write(dir: &Path, name: &str, content: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

pub fn namespace(name: &str, exported: bool) -> String {
    let ann = if exported {
        String::new()
    } else {
        "  annotations:\n    clustermesh.io/global: \"false\"\n".to_owned()
    };
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:\n    kubernetes.io/metadata.name: {name}\n{ann}"
    )
}

pub fn node(name: &str, ip: &str, pod_cidr: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    kubernetes.io/hostname: {name}\n    clustermesh.io/gateway: \"true\"\nspec:\n  podCIDR: {pod_cidr}\n  podCIDRs: [{pod_cidr}]\nstatus:\n  addresses:\n  - type: InternalIP\n    address: {ip}\n"
    )
}

pub fn pod(ns: &str, name: &str, app: &str, ip: &str, node: &str, host_ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels:\n    app: {app}\nspec:\n  nodeName: {node}\n  containers:\n  - name: main\n    image: example\n    ports:\n    - name: http\n      containerPort: 8080\nstatus:\n  phase: Running\n  hostIP: {host_ip}\n  podIP: {ip}\n  podIPs:\n  - ip: {ip}\n"
    )
}

/// A service (global or not) and its EndpointSlice with one ready backend.
pub fn service(ns: &str, name: &str, cluster_ip: &str, global: bool, backend: &str) -> String {
    let ann = if global {
        "  annotations:\n    clustermesh.io/global: \"true\"\n"
    } else {
        ""
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\n{ann}spec:\n  clusterIP: {cluster_ip}\n  clusterIPs: [{cluster_ip}]\n  ports:\n  - name: http\n    port: 80\n    protocol: TCP\n    targetPort: 8080\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: {ns}\n  labels:\n    kubernetes.io/service-name: {name}\naddressType: IPv4\nports:\n- name: http\n  port: 8080\n  protocol: TCP\nendpoints:\n- addresses: [\"{backend}\"]\n  conditions:\n    ready: true\n    serving: true\n"
    )
}
