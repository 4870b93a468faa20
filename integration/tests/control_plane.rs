//! The control-plane integration tests (real etcd, real apiservers, real mTLS),
//! one binary so the workspace links one test executable for all of them
//! instead of one per file (disk and link time on a 2-core CI machine).
//! Run one file's tests with `cargo test -p clustermesh-integration --test
//! control_plane mesh_quota::`.

mod mesh_support;
mod metrics_support;

mod etcd_failover;
mod export_manifests;
mod export_replicas;
mod harness;
mod helm_chart;
mod identity_race;
mod mesh_hostile_peer;
mod mesh_import_policies;
mod mesh_liveness;
mod mesh_metrics;
mod mesh_one_sided_disconnect;
mod mesh_oversized;
mod mesh_pod_lookup;
mod mesh_propagation;
mod mesh_quota;
mod mesh_refusals;
mod mesh_sync;
mod mock_peers;
mod mtls_roles;
mod service_backends;
mod source_markers;
mod store_ownership;
mod store_paging;
mod tls_reload;
mod watch_api;
mod watch_fanout;
