//! clustermesh-node-agent: programs the eBPF datapath of a gateway node.
//!
//! Without a subcommand it is the agent: it watches the local apiserver's
//! merged view (mTLS, `agent` role), computes the desired datapath state and
//! applies only the difference to the pinned maps (see docs/datapath.md).
//! The `datapath` subcommands operate on the datapath directly.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use clustermesh_node_agent::agent::{self, AgentConfig, Mode, config::parse_pod_dev};
use clustermesh_node_agent::datapath::{
    self, Datapath, DatapathConfig, Loader, TunnelKind, netdev,
    netns::{named_netns_path, run_in_netns},
};
use clustermesh_proto::duration;

/// Programs the eBPF datapath of a gateway node from its local apiserver's merged view.
#[derive(Parser, Debug)]
#[command(name = "clustermesh-node-agent", version)]
struct Args {
    /// The local clustermesh-apiserver (host:port).
    #[arg(long, default_value = "127.0.0.1:7443")]
    apiserver: String,
    /// Directory from `clustermesh certs init` (ca.crt, agent.crt, agent.key).
    #[arg(long)]
    tls_dir: Option<PathBuf>,
    /// This node's name (its endpoints are the local pods; names the pin directory).
    #[arg(long)]
    node_name: Option<String>,
    /// How traffic reaches peer gateways: vxlan (UDP 8472), geneve (UDP 6081) or native routing.
    #[arg(long, default_value = "vxlan")]
    tunnel: Mode,
    /// The device towards the other nodes and the peer gateways (pod MTU = its MTU − tunnel
    /// overhead) [default: the default route's device, else the first with a global IPv4 address].
    #[arg(long)]
    underlay_dev: Option<String>,
    /// This cluster's service CIDR (repeatable): traffic to it is left to the CNI, like
    /// traffic to this cluster's other nodes' pods.
    #[arg(long = "service-cidr")]
    service_cidrs: Vec<datapath::Ipv4Prefix>,
    /// Host-side interface of a local pod, overriding the node's /32 route (repeatable).
    #[arg(long = "pod-dev", value_parser = parse_pod_dev)]
    pod_devs: Vec<(Ipv4Addr, String)>,
    /// Where maps and links are pinned [default: /sys/fs/bpf/clustermesh/<node-name>].
    #[arg(long)]
    pin_dir: Option<PathBuf>,
    /// Plain HTTP /healthz, /status (JSON) and /metrics (Prometheus).
    #[arg(long)]
    health_listen: Option<SocketAddr>,
    /// Name of the collect-metadata tunnel device.
    #[arg(long, default_value = "cm_tunnel")]
    tunnel_dev: String,
    /// cgroup v2 directory the global-service socket load balancer attaches to ("none": off).
    #[arg(long, default_value = "/sys/fs/cgroup")]
    lb_cgroup: String,
    /// Do not set the pod side of local pods' veths to the pod MTU.
    #[arg(long)]
    no_pod_mtu: bool,
    /// Deliver to pods with bpf_redirect instead of bpf_redirect_peer.
    #[arg(long)]
    no_redirect_peer: bool,
    /// How often the datapath counters are logged.
    #[arg(long, default_value = "30s", value_parser = duration::parse)]
    log_interval: Duration,
    /// How often the maps are re-read and fully reconciled.
    #[arg(long, default_value = "60s", value_parser = duration::parse)]
    resync_interval: Duration,
    /// After the first snapshot, how long to wait for the local cluster's
    /// sync markers before programming the datapath anyway.
    #[arg(long, default_value = "10s", value_parser = duration::parse)]
    sync_wait: Duration,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Operate on the eBPF datapath directly.
    #[command(subcommand)]
    Datapath(DatapathCommand),
}

#[derive(Subcommand, Debug)]
enum DatapathCommand {
    /// Load the programs (adopting pinned maps), create the tunnel device and
    /// attach; links are pinned, so everything stays up after this exits.
    Up {
        /// Encapsulation: vxlan (UDP 8472) or geneve (UDP 6081).
        #[arg(long = "tunnel", default_value = "vxlan")]
        kind: TunnelKind,
        /// Name of the collect-metadata tunnel device.
        #[arg(long = "tunnel-dev", default_value = "cm_tunnel")]
        tunnel_dev: String,
        /// Host-side veth of a local pod (repeatable).
        #[arg(long = "pod-veth")]
        pod_veths: Vec<String>,
        /// cgroup v2 directory to attach the socket load balancer to.
        #[arg(long)]
        cgroup: Option<PathBuf>,
        /// Named network namespace (`ip netns`) of the node, if not the current one.
        #[arg(long)]
        netns: Option<String>,
    },
    /// Show attached programs, configuration, map sizes and counters.
    Status,
    /// Detach every program; with --destroy also remove the pinned maps.
    Down {
        #[arg(long)]
        destroy: bool,
    },
}

fn main() -> anyhow::Result<()> {
    // Before the runtime's threads: they would each take an arena.
    let one_arena = clustermesh_proto::heap::limit_arenas();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run(one_arena))
}

async fn run(one_arena: bool) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    if !one_arena {
        tracing::warn!("mallopt(M_ARENA_MAX, 1) was refused; glibc's default arenas are in use");
    }
    let args = Args::parse();
    let pin_dir = match (&args.pin_dir, &args.node_name) {
        (Some(dir), _) => Some(dir.clone()),
        (None, Some(node)) => Some(datapath::default_pin_dir(node)),
        (None, None) => None,
    };
    let Some(Command::Datapath(cmd)) = args.command else {
        return run_agent(args, pin_dir).await;
    };
    let pin_dir = pin_dir.context("--node-name or --pin-dir is required")?;
    match cmd {
        DatapathCommand::Up {
            kind,
            tunnel_dev,
            pod_veths,
            cgroup,
            netns,
        } => {
            let up = move || up(pin_dir, kind, &tunnel_dev, &pod_veths, cgroup);
            match netns {
                Some(ns) => run_in_netns(&named_netns_path(&ns), up)??,
                None => up()?,
            }
        }
        DatapathCommand::Status => status(&pin_dir)?,
        DatapathCommand::Down { destroy } => {
            if destroy {
                datapath::destroy(&pin_dir)?;
                println!("detached all programs and removed {}", pin_dir.display());
            } else {
                let n = datapath::detach_all(&pin_dir)?;
                println!(
                    "detached {n} program link(s); maps stay pinned in {}",
                    pin_dir.display()
                );
            }
        }
    }
    Ok(())
}

async fn run_agent(args: Args, pin_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let node = args
        .node_name
        .context("--node-name is required (this node's name in the cluster)")?;
    let tls_dir = args
        .tls_dir
        .context("--tls-dir is required (the directory of `clustermesh certs init`)")?;
    let mut cfg = AgentConfig::new(
        &args.apiserver,
        tls_dir,
        &node,
        args.tunnel,
        args.underlay_dev.as_deref(),
    );
    cfg.service_cidrs = args.service_cidrs;
    if let Some(dir) = pin_dir {
        cfg.pin_dir = dir;
    }
    cfg.pod_devs = args.pod_devs.into_iter().collect();
    cfg.health_listen = args.health_listen;
    cfg.tunnel_dev = args.tunnel_dev;
    cfg.lb_cgroup = (args.lb_cgroup != "none").then(|| PathBuf::from(&args.lb_cgroup));
    cfg.set_pod_mtu = !args.no_pod_mtu;
    cfg.redirect_peer = !args.no_redirect_peer;
    cfg.log_interval = args.log_interval;
    cfg.resync_interval = args.resync_interval;
    cfg.sync_wait = args.sync_wait;
    agent::run(cfg).await.context("clustermesh-node-agent")
}

fn up(
    pin_dir: PathBuf,
    tunnel: TunnelKind,
    tunnel_dev: &str,
    pod_veths: &[String],
    cgroup: Option<PathBuf>,
) -> anyhow::Result<()> {
    let tunnel_ifindex = netdev::ensure_tunnel_device(tunnel, tunnel_dev, None)?;
    let mut loader = Loader::load(&pin_dir)?;
    loader.attach_from_tunnel(tunnel_dev)?;
    for veth in pod_veths {
        loader.attach_from_pod(veth)?;
    }
    if let Some(cg) = &cgroup {
        loader.attach_lb(cg)?;
    }
    let mut dp = loader.datapath()?;
    let cfg = DatapathConfig {
        tunnel_ifindex,
        ..dp.config()?
    };
    dp.set_config(&cfg)?;
    println!(
        "datapath up: pins in {}, links {:?}",
        pin_dir.display(),
        loader.attached()?
    );
    Ok(())
}

fn status(pin_dir: &std::path::Path) -> anyhow::Result<()> {
    let dp = Datapath::open(pin_dir)
        .with_context(|| format!("opening maps in {}", pin_dir.display()))?;
    println!("pin dir: {}", pin_dir.display());
    println!("links:   {:?}", datapath::attached_links(pin_dir)?);
    println!("config:  {:?}", dp.config()?);
    let state = dp.read_state()?;
    println!(
        "entries: ipcache {} endpoints {} policy {} enforced {} frontends {} backends {} ct {}",
        state.ipcache.len(),
        state.endpoints.len(),
        state.policy.len(),
        state.enforced.len(),
        state.frontends.len(),
        state.backends.len(),
        dp.ct_len()?
    );
    for (reason, c) in dp.metrics()?.iter() {
        println!(
            "{:<24} packets {:>12} bytes {:>14}",
            reason.name(),
            c.packets,
            c.bytes
        );
    }
    Ok(())
}
