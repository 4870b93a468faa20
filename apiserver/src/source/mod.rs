//! Sources of Kubernetes objects and their conversion into records.
//!
//! A [`Source`] delivers [`SourceUpdate`]s (objects applied/deleted, kinds
//! synced, problems found) over a channel; the consumer applies them to an
//! [`Inventory`] and calls [`Inventory::compute`] for the records the store
//! should hold, or to [`Records`], which keeps those records up to date per
//! change and says which keys changed (what the exporter uses). Both sources feed the same inventory and conversion:
//! - `kubernetes`: kube-rs watchers ([`kubernetes::KubernetesSource`]);
//! - `manifests:DIR`: YAML files in a directory ([`manifests::ManifestsSource`]).
//!
//! Rules and RBAC are documented in docs/sources.md.

use std::path::PathBuf;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub mod convert;
pub mod inventory;
pub mod kubernetes;
pub mod manifests;
pub mod objects;
pub mod records;

pub use convert::{Desired, LabelSet, NamespaceInfo, PendingEndpoint, labels_digest};
pub use inventory::Inventory;
pub use objects::{K8sObject, ObjectKind, ObjectRef};
pub use records::{Dirty, Records};

/// What a source reports.
// `Apply` dominates the traffic, so boxing it would cost an allocation per
// update to save space only on the rare other variants.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum SourceUpdate {
    /// An object was added or changed.
    Apply(K8sObject),
    /// An object is gone.
    Delete(ObjectRef),
    /// All objects of this kind have been listed once.
    Synced(ObjectKind),
    /// The problems to show in Status now (replaces the previous list).
    Errors(Vec<SourceError>),
}

/// A problem a source found, e.g. a manifest file that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SourceError {
    /// File (or resource, for the kubernetes source) the problem is in.
    pub file: String,
    /// 1-based line; 0 when unknown or not applicable.
    pub line: u32,
    pub message: String,
}

impl std::fmt::Display for SourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}: {}", self.file, self.line, self.message)
        } else {
            write!(f, "{}: {}", self.file, self.message)
        }
    }
}

/// A running source of Kubernetes objects.
pub trait Source: Send {
    /// Starts the source on the current tokio runtime. It sends updates until
    /// the receiver is dropped (then the task ends) or the task is aborted.
    fn run(self: Box<Self>, tx: mpsc::Sender<SourceUpdate>) -> JoinHandle<()>;
    /// A human name, e.g. `kubernetes` or `manifests:/etc/cm`.
    fn name(&self) -> String;
}

/// An invalid `--source` value.
#[derive(Debug, thiserror::Error)]
pub enum SourceConfigError {
    #[error("unknown source {0:?} (want \"kubernetes\" or \"manifests:DIR\")")]
    Unknown(String),
    #[error("source \"manifests:\" needs a directory (manifests:DIR)")]
    EmptyDir,
    #[error("manifests directory {}: {reason}", path.display())]
    BadDir { path: PathBuf, reason: String },
}

/// Parses a `--source` flag: `kubernetes` or `manifests:DIR` (DIR must be an
/// existing directory).
pub fn from_flag(s: &str) -> Result<Box<dyn Source>, SourceConfigError> {
    let s = s.trim();
    if s == "kubernetes" {
        return Ok(Box::new(kubernetes::KubernetesSource::new()));
    }
    if let Some(dir) = s.strip_prefix("manifests:") {
        if dir.is_empty() {
            return Err(SourceConfigError::EmptyDir);
        }
        let path = PathBuf::from(dir);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => return Ok(Box::new(manifests::ManifestsSource::new(path))),
            Ok(_) => {
                return Err(SourceConfigError::BadDir {
                    path,
                    reason: "not a directory".into(),
                });
            }
            Err(e) => {
                return Err(SourceConfigError::BadDir {
                    path,
                    reason: e.to_string(),
                });
            }
        }
    }
    Err(SourceConfigError::Unknown(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags() {
        assert_eq!(
            from_flag("kubernetes").map(|s| s.name()).ok().as_deref(),
            Some("kubernetes")
        );
        let dir = std::env::temp_dir();
        let flag = format!("manifests:{}", dir.display());
        assert_eq!(from_flag(&flag).map(|s| s.name()).ok(), Some(flag.clone()));
        assert!(matches!(
            from_flag("manifests:"),
            Err(SourceConfigError::EmptyDir)
        ));
        assert!(matches!(
            from_flag("manifests:/nonexistent/clustermesh"),
            Err(SourceConfigError::BadDir { .. })
        ));
        assert!(matches!(
            from_flag("etcd"),
            Err(SourceConfigError::Unknown(_))
        ));
    }
}
