//! The `manifests:DIR` source: every `*.yaml`/`*.yml` file of a directory
//! (not recursive, dot-files skipped), multi-document, polled for changes.
//!
//! Changes are found by polling each file's mtime, size and inode every
//! 200 ms: no extra dependency, works on every filesystem (including the
//! network and overlay filesystems where inotify misses changes, and
//! ConfigMap volumes that swap a symlink), and a change is picked up within
//! about 200 ms. A file that does not parse keeps its previous objects and
//! is reported in `Errors` until it parses again. Writers should replace
//! files atomically (write a dot-file, then rename) so a half-written file
//! is never read.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Source, SourceUpdate};

pub mod parse;
pub mod scan;

pub use parse::{ParseError, parse_manifests};
pub use scan::ManifestsScanner;

/// Reads Kubernetes objects from the YAML files of one directory.
#[derive(Clone, Debug)]
pub struct ManifestsSource {
    dir: PathBuf,
    interval: Duration,
}

impl ManifestsSource {
    /// How often the directory is polled.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(200);

    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ManifestsSource {
            dir: dir.into(),
            interval: Self::DEFAULT_INTERVAL,
        }
    }

    /// Polls every `interval` instead of every 200 ms.
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }
}

async fn run(dir: PathBuf, interval: Duration, tx: mpsc::Sender<SourceUpdate>) {
    let mut scanner = ManifestsScanner::new(dir);
    loop {
        let scanned = tokio::task::spawn_blocking(move || {
            let updates = scanner.scan();
            (scanner, updates)
        })
        .await;
        let updates;
        (scanner, updates) = match scanned {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "manifests: scan task failed; source stopped");
                return;
            }
        };
        for u in updates {
            if tx.send(u).await.is_err() {
                return;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = tx.closed() => return,
        }
    }
}

impl Source for ManifestsSource {
    fn run(self: Box<Self>, tx: mpsc::Sender<SourceUpdate>) -> JoinHandle<()> {
        tokio::spawn(run(self.dir, self.interval, tx))
    }

    fn name(&self) -> String {
        format!("manifests:{}", self.dir.display())
    }
}
