//! Running code inside another network namespace.
//!
//! `setns(CLONE_NEWNET)` changes the namespace of the calling *thread* only, so
//! [`run_in_netns`] does it on a fresh thread: the caller's namespace never
//! changes, the mount namespace stays the host's (so bpffs pins are visible,
//! unlike under `ip netns exec`, which remounts /sys), and sockets, ifindex
//! lookups and child processes made by `f` belong to the target namespace.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// `/var/run/netns/<name>`, where `ip netns add` binds a named namespace.
pub fn named_netns_path(name: &str) -> PathBuf {
    Path::new("/var/run/netns").join(name)
}

/// Enters the network namespace at `path` on the calling thread.
///
/// Only use this on a thread you own (see [`run_in_netns`]).
pub fn enter_netns(path: &Path) -> io::Result<()> {
    let f = File::open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("opening netns {}: {e}", path.display())))?;
    // SAFETY: a valid open fd and a valid nstype flag.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("setns into {}: {e}", path.display()),
        ));
    }
    Ok(())
}

/// Runs `f` on a new thread that first enters the network namespace at `path`.
pub fn run_in_netns<T, F>(path: &Path, f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let path = path.to_path_buf();
    let handle =
        std::thread::Builder::new()
            .name("cm-netns".into())
            .spawn(move || -> io::Result<T> {
                enter_netns(&path)?;
                Ok(f())
            })?;
    match handle.join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}
