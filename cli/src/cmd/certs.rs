//! `clustermesh certs init`.

use std::path::PathBuf;

use clustermesh_certs::{InitOptions, init};

pub fn run_init(
    cluster: String,
    out: PathBuf,
    sans: Vec<String>,
    force: bool,
) -> anyhow::Result<()> {
    let report = init(&InitOptions {
        cluster: cluster.clone(),
        out: out.clone(),
        sans,
        force,
    })?;
    println!("Created the PKI of cluster {cluster} in {}:", out.display());
    for f in report.files {
        println!("  {}", f.display());
    }
    println!("Keep ca.key offline if you can: only `certs init` needs it.");
    Ok(())
}
