//! clustermesh-node-agent: merged Watch -> desired datapath state -> eBPF maps.
//!
//! - [`datapath`]: the eBPF programs, their pinned maps and the typed layer
//!   that programs them.
//! - [`agent`]: the Watch client, the desired-state computation and the
//!   reconcile loop that drives the datapath.

pub mod agent;
pub mod datapath;
