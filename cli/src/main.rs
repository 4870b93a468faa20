//! `clustermesh`: the operator's command.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use clustermesh_cli::cmd::{self, Conn};
use clustermesh_cli::output::Format;

/// Connects Kubernetes clusters into one network: certificates, status, lookups and a local demo.
#[derive(Parser, Debug)]
#[command(name = "clustermesh", version)]
struct Cli {
    /// The apiserver to talk to (host:port).
    #[arg(
        long,
        global = true,
        env = "CLUSTERMESH_SERVER",
        default_value = "127.0.0.1:7443"
    )]
    server: String,
    /// Directory from `clustermesh certs init` holding ca.crt and admin.crt/admin.key.
    #[arg(long, global = true, env = "CLUSTERMESH_TLS_DIR", default_value = ".")]
    tls_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// This cluster and its peers.
    Status {
        /// Wait (up to this long, default 60s) until the cluster is ready and every peer is connected and synced.
        #[arg(long, num_args = 0..=1, default_missing_value = "60s", value_parser = clustermesh_proto::duration::parse)]
        wait: Option<Duration>,
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: Format,
    },
    /// Run a local mesh on this machine (real etcd and apiserver processes).
    Demo {
        /// Print the status and exit instead of running until Ctrl-C.
        #[arg(long)]
        once: bool,
    },
}

#[derive(Subcommand, Debug)]
enum CertsCommand {
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

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let conn = Conn {
        server: cli.server,
        tls_dir: cli.tls_dir,
    };
    let result = match cli.command {
        Command::Certs {
            command:
                CertsCommand::Init {
                    cluster,
                    out,
                    sans,
                    force,
                },
        } => cmd::certs::run_init(cluster, out, sans, force),
        Command::Status { wait, output } => cmd::status::run(&conn, wait, output).await,
        Command::Demo { once } => cmd::demo::run(once).await,
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
