//! The control side of the node agent: a Watch client on the local
//! apiserver's merged view, the desired datapath state computed from it, and
//! the loop that applies only the difference to the pinned maps.
//!
//! - [`view`]: the typed merged view, updated from mirror changes ([`by_cluster`]:
//!   its endpoints grouped by cluster; [`endpoint_info`], [`identity_info`],
//!   [`node_info`]: what it keeps of each record).
//! - [`labels`], [`policy`], [`services`], [`desired`]: the pure desired-state
//!   computation (unit-tested without a kernel).
//! - [`watch`]: the Watch client (reconnect with jittered backoff, resume).
//! - [`host`], [`mtu`], [`routes`]: what the agent reads and sets on the node
//!   (pod interfaces, pod MTU, native-routing routes).
//! - [`reconciler`], [`run`]: bringing the datapath up and keeping it equal
//!   to the desired state; [`health`] and [`status`]: what it shows.

pub mod by_cluster;
pub mod config;
pub mod desired;
pub mod endpoint_info;
pub mod gateways;
pub mod health;
pub mod host;
pub mod identity_info;
pub mod incremental;
pub mod labels;
pub mod mtu;
pub mod node_info;
pub mod policy;
pub mod policy_cidr;
pub mod policy_report;
pub mod propagation;
pub mod reconciler;
pub mod report;
pub mod routes;
pub mod run;
pub mod services;
pub mod status;
pub mod view;
pub mod watch;

#[cfg(test)]
mod desired_tests;

pub use config::{AgentConfig, Mode};
pub use run::{AgentError, run};
