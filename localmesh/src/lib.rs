//! Local clusters made of real processes, for the CLI's `demo` and the test harness.
//!
//! Everything here starts *real* processes (etcd, workspace binaries) on loopback addresses and
//! cleans them up when the owning handle is dropped — also when the owner panics. Every child
//! gets `PR_SET_PDEATHSIG(SIGKILL)`, so nothing outlives its parent even if that is killed.
//!
//! * [`ports`] — unique free loopback ports.
//! * [`process`] — child processes with log files ([`process::ChildProcess`]), locating
//!   workspace binaries.
//! * [`http`] — plain HTTP GET (hyper) and readiness polling.
//! * [`etcd`] — 1- or 3-member etcd clusters ([`etcd::EtcdCluster`]).
//! * [`apiserver`] — apiserver replicas, PKI and a whole cluster ([`apiserver::Cluster`]).
//!
//! It deliberately has no etcd client, no Kubernetes client and no test-only code: the shipped
//! `clustermesh` binary links it.

pub mod apiserver;
pub mod etcd;
pub mod http;
pub mod ports;
pub mod process;
