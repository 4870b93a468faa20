//! The serving side of peer trust: the gRPC server accepts client
//! certificates of this cluster's CA and of every registered peer's CA. This
//! task rebuilds the rustls server config whenever the registered CAs change
//! and swaps it in (new connections use it). Which role a peer CA may carry
//! (`remote` only, of that peer only) is checked per call in `server::auth`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use clustermesh_certs::{CertError, server_config};
use tracing::{info, warn};

use super::{MeshContext, peers_may_have_changed};

/// The CA PEMs the server trusts besides its own: one per registered peer.
fn peer_cas(ctx: &MeshContext) -> Vec<String> {
    let mut pems: Vec<String> = crate::server::admin::list(&ctx.view)
        .into_iter()
        .map(|p| p.ca_pem)
        .filter(|p| !p.trim().is_empty())
        .collect();
    pems.sort();
    pems.dedup();
    pems
}

/// A server config trusting `pems`; a PEM that is not a usable CA is left
/// out (and logged) rather than failing the whole config.
pub fn build(tls_dir: &Path, pems: &[String]) -> Result<Arc<rustls::ServerConfig>, CertError> {
    match server_config(tls_dir, pems) {
        Ok(c) => Ok(c),
        Err(all) => {
            let good: Vec<String> = pems
                .iter()
                .filter(|p| match server_config(tls_dir, std::slice::from_ref(p)) {
                    Ok(_) => true,
                    Err(e) => {
                        warn!(error = %e, "a registered peer CA is not usable; not trusting it");
                        false
                    }
                })
                .cloned()
                .collect();
            if good.len() == pems.len() {
                return Err(all);
            }
            server_config(tls_dir, &good)
        }
    }
}

pub async fn run(ctx: Arc<MeshContext>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut changes = ctx.view.changes();
    let mut current: Option<Vec<String>> = None;
    loop {
        if ctx.view.ready() {
            let pems = peer_cas(&ctx);
            if current.as_ref() != Some(&pems) {
                match build(&ctx.tls_dir, &pems) {
                    Ok(cfg) => {
                        match ctx.tls.write() {
                            Ok(mut g) => *g = cfg,
                            Err(p) => *p.into_inner() = cfg,
                        }
                        info!(peer_cas = pems.len(), "server TLS trust updated");
                        current = Some(pems);
                    }
                    Err(e) => {
                        warn!(error = %e, "rebuilding the server TLS config failed; keeping the old one")
                    }
                }
            }
        }
        let idle = if ctx.view.ready() {
            Duration::from_secs(10)
        } else {
            Duration::from_millis(100)
        };
        if !peers_may_have_changed(&mut changes, &mut stop, idle).await {
            return;
        }
    }
}
