//! clustermesh-node-agent: programs the eBPF datapath of a gateway node.
//!
//! The Watch client (merged view from the local apiserver -> desired state)
//! is not built yet; the `datapath` subcommands bring the datapath up, show
//! it and take it down, which is what an operator (or a test) needs today.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use clustermesh_node_agent::datapath::{
    self, Datapath, DatapathConfig, Loader, TunnelKind, netdev,
    netns::{named_netns_path, run_in_netns},
};

/// Programs the eBPF datapath of a gateway node from its local apiserver's merged view.
#[derive(Parser, Debug)]
#[command(name = "clustermesh-node-agent", version)]
struct Args {
    /// The local clustermesh-apiserver (host:port).
    #[arg(long, default_value = "127.0.0.1:7443")]
    apiserver: String,
    /// This node's name (its endpoints are the local pods; names the pin directory).
    #[arg(long)]
    node_name: Option<String>,
    /// Where maps and links are pinned [default: /sys/fs/bpf/clustermesh/<node-name>].
    #[arg(long)]
    pin_dir: Option<PathBuf>,
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
        #[arg(long, default_value = "vxlan")]
        tunnel: TunnelKind,
        /// Name of the collect-metadata tunnel device.
        #[arg(long, default_value = "cm_tunnel")]
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
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let args = Args::parse();
    let pin_dir = match (&args.pin_dir, &args.node_name) {
        (Some(dir), _) => Some(dir.clone()),
        (None, Some(node)) => Some(datapath::default_pin_dir(node)),
        (None, None) => None,
    };
    let Some(Command::Datapath(cmd)) = args.command else {
        anyhow::bail!(
            "clustermesh-node-agent: the Watch client is not built yet (apiserver {}, node {:?}); \
             use `clustermesh-node-agent --node-name NAME datapath up|status|down`",
            args.apiserver,
            args.node_name
        );
    };
    let pin_dir = pin_dir.context("--node-name or --pin-dir is required")?;
    match cmd {
        DatapathCommand::Up {
            tunnel,
            tunnel_dev,
            pod_veths,
            cgroup,
            netns,
        } => {
            let up = move || up(pin_dir, tunnel, &tunnel_dev, &pod_veths, cgroup);
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
