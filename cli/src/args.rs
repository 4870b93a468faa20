//! The command line: global flags, subcommands and their options.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::output::Format;

fn duration(s: &str) -> Result<Duration, String> {
    clustermesh_proto::duration::parse(s)
}

/// Connects Kubernetes clusters into one network: certificates, peers, status, lookups and a local demo.
#[derive(Parser, Debug)]
#[command(name = "clustermesh", version)]
pub struct Cli {
    /// The apiserver to talk to (host:port). Beats --context; default from
    /// the current context, else 127.0.0.1:7443.
    #[arg(long, global = true)]
    pub server: Option<String>,
    /// Directory from `clustermesh certs init` holding ca.crt and admin.crt/admin.key.
    /// Beats --context; default from the current context, else ".".
    #[arg(long, global = true)]
    pub tls_dir: Option<PathBuf>,
    /// Use this context of the contexts file ($CLUSTERMESH_CONFIG or ~/.config/clustermesh/config.yaml).
    #[arg(long, global = true, env = "CLUSTERMESH_CONTEXT")]
    pub context: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

/// `-o table|json`.
#[derive(Args, Debug, Clone, Copy)]
pub struct Output {
    /// Output format: aligned table, or stable JSON (see docs/cli.md).
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub format: Format,
}

/// The peer side of `connect` / `disconnect`.
#[derive(Args, Debug, Clone, Default)]
pub struct Peer {
    /// The peer cluster's apiserver (host:port), as this cluster should dial it.
    #[arg(long)]
    pub peer_server: Option<String>,
    /// The peer's directory from `clustermesh certs init` (its ca.crt and admin.crt/admin.key).
    #[arg(long)]
    pub peer_tls_dir: Option<PathBuf>,
    /// Take the peer's server and TLS directory from this context.
    #[arg(long)]
    pub peer_context: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Named (server, TLS directory) pairs, like kubeconfig contexts.
    Context {
        #[command(subcommand)]
        command: ContextCommand,
    },
    /// Make this cluster and a peer each other's peers (needs admin on both).
    Connect {
        #[command(flatten)]
        peer: Peer,
        /// The address the peer should dial to reach this cluster (default: --server).
        #[arg(long)]
        advertise: Option<String>,
        /// Per-peer quota on what each side accepts from the other, `name=value,...` over
        /// nodes, endpoints, identities, services, policies, backends, bytes (e.g. `endpoints=100000,bytes=128MiB`);
        /// names left out take the apiserver's --peer-quota (see docs/mesh.md "Per-peer quotas").
        #[arg(long, value_parser = clustermesh_proto::quota::parse)]
        quota: Option<clustermesh_proto::v1::PeerQuota>,
        /// Each side applies the other's global NetworkPolicies to its own pods (off by
        /// default: a peer's policies change nothing here; see docs/policy.md).
        #[arg(long)]
        import_policies: bool,
    },
    /// Remove a peer: on this side always, on the peer's side too when its credentials are given.
    Disconnect {
        /// The peer cluster's name.
        peer_name: String,
        #[command(flatten)]
        peer: Peer,
    },
    /// This cluster and its peers.
    Status {
        /// Wait (up to this long, default 60s) until the cluster is ready and every peer is connected and synced.
        #[arg(long, num_args = 0..=1, default_missing_value = "60s", value_parser = duration)]
        wait: Option<Duration>,
        /// Also read this node agent's `/status` (its `--health-listen` address; repeatable):
        /// health, policy entries and the policy rules it refused.
        #[arg(long = "agent", value_name = "HOST:PORT")]
        agents: Vec<String>,
        #[command(flatten)]
        output: Output,
    },
    /// Services: the global view.
    Service {
        #[command(subcommand)]
        command: ServiceCommand,
    },
    /// Security identities of this cluster and its peers.
    Identity {
        #[command(subcommand)]
        command: ListCommand,
    },
    /// Endpoints (pods) of this cluster and its peers.
    Endpoint {
        #[command(subcommand)]
        command: ListCommand,
    },
    /// Nodes of this cluster and its peers.
    Node {
        #[command(subcommand)]
        command: ListCommand,
    },
    /// Run a local two-cluster mesh on this machine (real etcd and apiserver processes).
    Demo {
        /// Print the statuses and lookups, then exit instead of running until Ctrl-C.
        #[arg(long)]
        once: bool,
        /// Directory holding cluster1/ and cluster2/ manifests.
        #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples"))]
        examples: PathBuf,
        /// Give up when the clusters have not synced within this long.
        #[arg(long, default_value = "60s", value_parser = duration)]
        timeout: Duration,
    },
}

#[derive(Subcommand, Debug)]
pub enum CertsCommand {
    /// Create a cluster CA and its role certificates (server, admin, remote, agent).
    Init {
        /// The cluster's name (a DNS label).
        #[arg(long)]
        cluster: String,
        /// Directory to write into.
        #[arg(long)]
        out: PathBuf,
        /// Extra DNS name or IP for the server certificate (127.0.0.1 and localhost are always included).
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Replace an existing CA.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ContextCommand {
    /// Add (or replace) a context from --server and --tls-dir.
    Add { name: String },
    /// Make a context the current one.
    Use { name: String },
    /// List the contexts.
    List {
        #[command(flatten)]
        output: Output,
    },
    /// Remove a context.
    #[command(alias = "delete")]
    Remove { name: String },
}

#[derive(Subcommand, Debug)]
pub enum ServiceCommand {
    /// One service across the mesh: frontends, backends per cluster, affinity, selection.
    Get {
        /// NAMESPACE/NAME, e.g. shop/backend.
        service: String,
        #[command(flatten)]
        output: Output,
    },
    /// Every service this cluster knows (its own and its peers').
    List {
        /// Only global services.
        #[arg(long)]
        global: bool,
        #[command(flatten)]
        output: Output,
    },
}

#[derive(Subcommand, Debug)]
pub enum ListCommand {
    /// List the records of this cluster and its peers (the merged view).
    List {
        /// Only the records of this cluster.
        #[arg(long)]
        cluster: Option<String>,
        #[command(flatten)]
        output: Output,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("clustermesh").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    #[test]
    fn definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_anywhere() {
        let c = parse(&["status", "--server", "a:1", "-o", "json", "--context", "x"]);
        assert_eq!(c.server.as_deref(), Some("a:1"));
        assert_eq!(c.context.as_deref(), Some("x"));
        assert!(c.tls_dir.is_none());
        match c.command {
            Command::Status { wait, output, .. } => {
                assert!(wait.is_none());
                assert_eq!(output.format, Format::Json);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn wait_default_and_value() {
        let Command::Status { wait, .. } = parse(&["status", "--wait"]).command else {
            panic!()
        };
        assert_eq!(wait, Some(Duration::from_secs(60)));
        let Command::Status { wait, .. } = parse(&["status", "--wait=5s"]).command else {
            panic!()
        };
        assert_eq!(wait, Some(Duration::from_secs(5)));
    }

    #[test]
    fn connect_and_disconnect() {
        let c = parse(&[
            "connect",
            "--peer-server",
            "b:1",
            "--peer-tls-dir",
            "/b",
            "--advertise",
            "a:9",
        ]);
        let Command::Connect {
            peer, advertise, ..
        } = c.command
        else {
            panic!()
        };
        assert_eq!(peer.peer_server.as_deref(), Some("b:1"));
        assert_eq!(advertise.as_deref(), Some("a:9"));
        let c = parse(&["disconnect", "cluster2", "--peer-context", "c2"]);
        let Command::Disconnect { peer_name, peer } = c.command else {
            panic!()
        };
        assert_eq!(peer_name, "cluster2");
        assert_eq!(peer.peer_context.as_deref(), Some("c2"));
    }

    #[test]
    fn lists_and_service() {
        let c = parse(&["service", "list", "--global", "-o", "json"]);
        assert!(matches!(
            c.command,
            Command::Service {
                command: ServiceCommand::List { global: true, .. }
            }
        ));
        let c = parse(&["node", "list", "--cluster", "c2"]);
        let Command::Node {
            command: ListCommand::List { cluster, output },
        } = c.command
        else {
            panic!()
        };
        assert_eq!(cluster.as_deref(), Some("c2"));
        assert_eq!(output.format, Format::Table);
        assert!(Cli::try_parse_from(["clustermesh", "status", "-o", "yaml"]).is_err());
    }

    #[test]
    fn demo_defaults() {
        let Command::Demo {
            once,
            examples,
            timeout,
        } = parse(&["demo", "--once"]).command
        else {
            panic!()
        };
        assert!(once);
        assert!(
            examples.ends_with("cli/../examples"),
            "{}",
            examples.display()
        );
        assert_eq!(timeout, Duration::from_secs(60));
    }
}
