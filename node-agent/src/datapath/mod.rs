//! The eBPF datapath of a gateway node: BPF objects (built from `bpf/` by
//! build.rs), their pinned maps, and the typed layer that programs them.
//!
//! - [`Loader`] loads the objects with maps pinned under a per-node directory
//!   and attaches `from_pod` / `from_tunnel` (TC) and the socket LB (cgroup).
//! - [`Datapath`] opens the pinned maps and reads/writes them; [`Datapath::apply`]
//!   reconciles a [`DesiredState`] as a diff against what the maps hold.
//! - [`netdev`] creates the collect-metadata tunnel device and looks up
//!   interfaces; [`netns`] runs code inside another network namespace.
//!
//! See docs/datapath.md for the maps, the programs and a packet's walk.

pub mod error;
pub mod loader;
pub mod maps;
pub mod metrics;
pub mod netdev;
pub mod netns;
pub mod pins;
pub mod policy_key;
pub mod reconcile;
pub mod rules;
pub mod state;
pub mod types;

pub use error::{DatapathError, Result};
pub use loader::{Loader, attached_links, destroy, detach_all};
pub use maps::{Datapath, PolicyStats};
pub use metrics::{Counter, Metrics, Reason};
pub use netdev::TunnelKind;
pub use pins::default_pin_dir;
pub use policy_key::{PolicyLocal, PolicyPeer, PolicyRule, PortPrefix};
pub use reconcile::ApplyReport;
pub use rules::{
    Affinity, Backend, Direction, Frontend, PROTO_ICMP, PROTO_TCP, PROTO_UDP, Service, Verdict,
};
pub use state::{
    DatapathConfig, DesiredState, Endpoint, IpcacheEntry, Ipv4Prefix, Location, RawState,
    TunnelSender,
};
