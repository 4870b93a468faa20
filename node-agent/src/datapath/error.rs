//! The one error type of the datapath layer.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while loading, attaching or programming the datapath.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("loading eBPF object {object}: {source}")]
    Load {
        object: &'static str,
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("eBPF program {name}: {source}")]
    Program {
        name: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: String,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("eBPF link {path}: {source}")]
    Link {
        path: PathBuf,
        #[source]
        source: Box<aya::programs::links::LinkError>,
    },
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: Box<aya::pin::PinError>,
    },
    #[error(
        "pinned map {path} does not match this agent's layout: {detail}; remove it (or the pin directory) to recreate"
    )]
    IncompatiblePin { path: PathBuf, detail: String },
    #[error("{path} is not on a bpf filesystem (mount -t bpf bpf <dir>)")]
    NotBpffs { path: PathBuf },
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error("network interface {name:?} not found in this network namespace")]
    NoSuchInterface { name: String },
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("invalid {what}: {detail}")]
    Invalid { what: &'static str, detail: String },
}

impl DatapathError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        DatapathError::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn map(name: &str, source: aya::maps::MapError) -> Self {
        DatapathError::Map {
            name: name.to_string(),
            source: Box::new(source),
        }
    }

    pub(crate) fn program(name: &str, source: aya::programs::ProgramError) -> Self {
        DatapathError::Program {
            name: name.to_string(),
            source: Box::new(source),
        }
    }

    pub(crate) fn invalid(what: &'static str, detail: impl Into<String>) -> Self {
        DatapathError::Invalid {
            what,
            detail: detail.into(),
        }
    }
}

/// Result alias for the datapath layer.
pub type Result<T, E = DatapathError> = std::result::Result<T, E>;
