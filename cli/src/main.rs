//! `clustermesh`: the operator's command.

use clap::Parser;
use clustermesh_cli::args::Cli;

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
    if let Err(e) = clustermesh_cli::run::run(&cli).await {
        eprintln!("error: {e:#}");
        if let Some(why) = clustermesh_cli::run::diagnose(&cli, &e).await {
            eprintln!("  the server refused this client: {why}");
        }
        std::process::exit(1);
    }
}
