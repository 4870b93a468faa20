//! The serving side of peer trust: the gRPC server accepts client
//! certificates of this cluster's CA and of every registered peer's CA. This
//! task rebuilds the rustls server config whenever the registered CAs change
//! and swaps it in (new connections use it). Which role a peer CA may carry
//! (`remote` only, of that peer only) is checked per call in `server::auth`.
//!
//! It also re-reads this cluster's TLS files (`ca.crt`, `server.crt`,
//! `server.key`) when they change on disk (checked every few seconds), so a
//! rotated certificate takes effect without a restart; a broken file is
//! logged and the config in force is kept.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use clustermesh_certs::{CA_CERT_FILE, CertError, Role, cert_file, key_file, server_config};
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

/// Modification time and size of each of this cluster's server-side TLS files.
type Fingerprint = Vec<Option<(std::time::SystemTime, u64)>>;

fn fingerprint(tls_dir: &Path) -> Fingerprint {
    [
        CA_CERT_FILE,
        cert_file(Role::Server),
        key_file(Role::Server),
    ]
    .iter()
    .map(|f| {
        let m = std::fs::metadata(tls_dir.join(f)).ok()?;
        Some((m.modified().ok()?, m.len()))
    })
    .collect()
}

pub async fn run(ctx: Arc<MeshContext>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut changes = ctx.view.changes();
    let mut current: Option<(Vec<String>, Fingerprint)> = None;
    // The files as the process loaded them at start.
    let mut files = fingerprint(&ctx.tls_dir);
    loop {
        if ctx.view.ready() {
            let state = (peer_cas(&ctx), fingerprint(&ctx.tls_dir));
            if current.as_ref() != Some(&state) {
                let files_changed = files != state.1;
                let pems = &state.0;
                match build(&ctx.tls_dir, pems) {
                    Ok(cfg) => {
                        match ctx.tls.write() {
                            Ok(mut g) => *g = cfg,
                            Err(p) => *p.into_inner() = cfg,
                        }
                        if let Ok(ca) = std::fs::read_to_string(ctx.tls_dir.join(CA_CERT_FILE)) {
                            match ctx.own_ca.write() {
                                Ok(mut g) => *g = ca.into(),
                                Err(p) => *p.into_inner() = ca.into(),
                            }
                        }
                        if files_changed {
                            info!(dir = %ctx.tls_dir.display(), "TLS files changed on disk; reloaded");
                            files = state.1.clone();
                        }
                        info!(peer_cas = pems.len(), "server TLS trust updated");
                        current = Some(state);
                    }
                    Err(e) => {
                        warn!(error = %e, "rebuilding the server TLS config failed; keeping the old one")
                    }
                }
            }
        }
        let idle = if ctx.view.ready() {
            Duration::from_secs(3)
        } else {
            Duration::from_millis(100)
        };
        if !peers_may_have_changed(&mut changes, &mut stop, idle).await {
            return;
        }
    }
}
