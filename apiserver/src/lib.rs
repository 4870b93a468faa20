//! clustermesh-apiserver: sources → etcd store → in-memory view → mTLS gRPC.

pub mod agents;
pub mod app;
pub mod cidr;
pub mod export;
pub mod health;
pub mod leader;
pub mod mesh;
pub mod metrics;
pub mod server;
pub mod source;
pub mod store;
pub mod view;
