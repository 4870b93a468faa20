//! The datapath end-to-end tests (root: network namespaces, real eBPF, real
//! packets), one binary so the workspace links one test executable for them
//! instead of one each. They run one at a time ([`datapath_support::exclusive`]),
//! as they did when each was its own binary: each builds a whole topology and
//! measures timing-sensitive things (failover gaps, probes).

mod datapath_support;

mod datapath_e2e;
mod datapath_nodes;
mod datapath_policy_scope;
mod netpol_replay;
mod policy_e2e;
