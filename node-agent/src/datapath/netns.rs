//! Running code inside another network namespace: `clustermesh_netkit::netns`
//! (one implementation for the agent and its tests), errors as [`DatapathError`].

use std::path::Path;

use super::error::{DatapathError, Result};

pub use clustermesh_netkit::netns::named_netns_path;

/// Enters the network namespace at `path` on the calling thread (a thread
/// you own: see [`run_in_netns`]).
pub fn enter_netns(path: &Path) -> Result<()> {
    clustermesh_netkit::netns::enter_netns(path)
        .map_err(|e| DatapathError::io(format!("entering netns {}", path.display()), e))
}

/// Runs `f` on a new thread that first enters the network namespace at `path`.
pub fn run_in_netns<T, F>(path: &Path, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    clustermesh_netkit::netns::run_in_netns(path, f)
        .map_err(|e| DatapathError::io(format!("running in netns {}", path.display()), e))
}
