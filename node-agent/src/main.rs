//! clustermesh-node-agent: a thin binary until the datapath issue lands.

use clap::Parser;

/// Programs the eBPF datapath of a gateway node from its local apiserver's merged view.
#[derive(Parser, Debug)]
#[command(name = "clustermesh-node-agent", version)]
struct Args {
    /// The local clustermesh-apiserver (host:port).
    #[arg(long, default_value = "127.0.0.1:7443")]
    apiserver: String,
    /// This node's name (its endpoints are the local pods).
    #[arg(long)]
    node_name: Option<String>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let args = Args::parse();
    anyhow::bail!(
        "clustermesh-node-agent: the datapath is not built yet (apiserver {}, node {:?}); see issue 'Node agent and the eBPF datapath'",
        args.apiserver,
        args.node_name
    )
}
