//! clustermesh-node-agent: merged Watch -> desired datapath state -> eBPF maps.
//!
//! This crate holds the datapath layer ([`datapath`]); the Watch client that
//! feeds it comes later.

pub mod datapath;
