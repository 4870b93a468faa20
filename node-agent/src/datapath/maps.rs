//! [`Datapath`]: typed access to the pinned maps of one agent.
//!
//! It opens the maps from their pins (not from a loaded object), so the map
//! programming layer works the same whether this process loaded the programs,
//! a previous agent did, or a test wants to look inside.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::Key as LpmKey;
use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray};

use super::error::{DatapathError, Result};
use super::metrics::{Counter, Metrics, Reason};
use super::pins::{
    MAP_CONFIG, MAP_CT, MAP_ENDPOINTS, MAP_ENFORCED, MAP_IPCACHE, MAP_LB_BACKENDS,
    MAP_LB_FRONTENDS, MAP_METRICS, MAP_POLICY, MAP_POLICY_CIDR, MAP_TUNNEL_SOURCES,
};
use super::policy_key::PolicyRule;
use super::rules::{Direction, Frontend, Service, Verdict};
use super::state::{DatapathConfig, Endpoint, IpcacheEntry, Ipv4Prefix};
use super::types::{
    BackendKey, BackendValue, ConfigValue, CtKey, CtValue, EndpointValue, EnforcedKey, FrontendKey,
    FrontendValue, IpcacheKey, IpcacheValue, MetricValue, PolicyCidrValue, PolicyKey,
    PolicyKeyData, PolicyValue, TunnelSourceValue,
};

/// Counters of one policy entry, as the BPF side accumulated them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyStats {
    pub verdict: Option<Verdict>,
    pub packets: u64,
    pub bytes: u64,
}

/// The pinned maps of one agent (one pin directory).
pub struct Datapath {
    pin_dir: PathBuf,
    pub(crate) ipcache: LpmTrie<MapData, u32, IpcacheValue>,
    pub(crate) endpoints: HashMap<MapData, u32, EndpointValue>,
    pub(crate) policy: LpmTrie<MapData, PolicyKeyData, PolicyValue>,
    pub(crate) policy_cidr: LpmTrie<MapData, u32, PolicyCidrValue>,
    pub(crate) enforced: HashMap<MapData, EnforcedKey, u8>,
    pub(crate) ct: HashMap<MapData, CtKey, CtValue>,
    pub(crate) frontends: HashMap<MapData, FrontendKey, FrontendValue>,
    pub(crate) backends: HashMap<MapData, BackendKey, BackendValue>,
    pub(crate) tunnel_sources: HashMap<MapData, u32, TunnelSourceValue>,
    metrics: PerCpuArray<MapData, MetricValue>,
    config: Array<MapData, ConfigValue>,
}

fn open_map(pin_dir: &Path, name: &str) -> Result<Map> {
    let data = MapData::from_pin(pin_dir.join(name)).map_err(|e| DatapathError::map(name, e))?;
    Map::from_map_data(data).map_err(|e| DatapathError::map(name, e))
}

fn typed<T: TryFrom<Map, Error = MapError>>(pin_dir: &Path, name: &str) -> Result<T> {
    T::try_from(open_map(pin_dir, name)?).map_err(|e| DatapathError::map(name, e))
}

/// True if `e` says the key was not there (ENOENT), which deletes tolerate.
pub(crate) fn is_not_found(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound | MapError::ElementNotFound => true,
        MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// Turns "not found" into `Ok(None)`.
fn found<V>(name: &str, r: std::result::Result<V, MapError>) -> Result<Option<V>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(DatapathError::map(name, e)),
    }
}

/// Collects an aya map iterator, naming the map on error.
pub(crate) fn collect<K: Ord, V>(
    name: &str,
    it: impl Iterator<Item = std::result::Result<(K, V), MapError>>,
) -> Result<BTreeMap<K, V>> {
    let mut out = BTreeMap::new();
    for kv in it {
        let (k, v) = kv.map_err(|e| DatapathError::map(name, e))?;
        out.insert(k, v);
    }
    Ok(out)
}

impl Datapath {
    /// Opens the maps pinned in `pin_dir` (created by [`super::Loader::load`]).
    pub fn open(pin_dir: impl AsRef<Path>) -> Result<Self> {
        let d = pin_dir.as_ref();
        Ok(Datapath {
            pin_dir: d.to_path_buf(),
            ipcache: typed(d, MAP_IPCACHE)?,
            endpoints: typed(d, MAP_ENDPOINTS)?,
            policy: typed(d, MAP_POLICY)?,
            policy_cidr: typed(d, MAP_POLICY_CIDR)?,
            enforced: typed(d, MAP_ENFORCED)?,
            ct: typed(d, MAP_CT)?,
            frontends: typed(d, MAP_LB_FRONTENDS)?,
            backends: typed(d, MAP_LB_BACKENDS)?,
            tunnel_sources: typed(d, MAP_TUNNEL_SOURCES)?,
            metrics: typed(d, MAP_METRICS)?,
            config: typed(d, MAP_CONFIG)?,
        })
    }

    /// The pin directory the maps were opened from.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    // ---- config ----

    /// Writes the single `cm_config` entry.
    pub fn set_config(&mut self, cfg: &DatapathConfig) -> Result<()> {
        self.config
            .set(0, cfg.value(), 0)
            .map_err(|e| DatapathError::map(MAP_CONFIG, e))
    }

    /// Reads the `cm_config` entry.
    pub fn config(&self) -> Result<DatapathConfig> {
        let v = self
            .config
            .get(&0, 0)
            .map_err(|e| DatapathError::map(MAP_CONFIG, e))?;
        Ok(DatapathConfig::from_value(&v))
    }

    // ---- ipcache ----

    /// Inserts or replaces the entry of `prefix`.
    pub fn upsert_ipcache(&mut self, prefix: Ipv4Prefix, entry: &IpcacheEntry) -> Result<()> {
        self.upsert_ipcache_raw(prefix.key(), entry.value())
    }

    pub(crate) fn upsert_ipcache_raw(&mut self, k: IpcacheKey, v: IpcacheValue) -> Result<()> {
        self.ipcache
            .insert(&LpmKey::new(k.prefixlen, k.addr), v, 0)
            .map_err(|e| DatapathError::map(MAP_IPCACHE, e))
    }

    /// Removes the entry of exactly `prefix`; false if there was none.
    pub fn delete_ipcache(&mut self, prefix: Ipv4Prefix) -> Result<bool> {
        self.delete_ipcache_raw(prefix.key())
    }

    pub(crate) fn delete_ipcache_raw(&mut self, k: IpcacheKey) -> Result<bool> {
        Ok(found(
            MAP_IPCACHE,
            self.ipcache.remove(&LpmKey::new(k.prefixlen, k.addr)),
        )?
        .is_some())
    }

    /// Longest-prefix lookup of `addr`, as the BPF programs do it.
    pub fn lookup_ipcache(&self, addr: std::net::Ipv4Addr) -> Result<Option<IpcacheValue>> {
        let k = Ipv4Prefix::host(addr).key();
        found(
            MAP_IPCACHE,
            self.ipcache.get(&LpmKey::new(k.prefixlen, k.addr), 0),
        )
    }

    /// Every ipcache entry, raw.
    pub fn ipcache_raw(&self) -> Result<BTreeMap<IpcacheKey, IpcacheValue>> {
        let it = self.ipcache.iter().map(|r| {
            r.map(|(k, v)| {
                (
                    IpcacheKey {
                        prefixlen: k.prefix_len(),
                        addr: k.data(),
                    },
                    v,
                )
            })
        });
        collect(MAP_IPCACHE, it)
    }

    /// Every ipcache entry that reads back as local or remote.
    pub fn ipcache_entries(&self) -> Result<BTreeMap<Ipv4Prefix, IpcacheEntry>> {
        let mut out = BTreeMap::new();
        for (k, v) in self.ipcache_raw()? {
            if let (Ok(p), Some(e)) = (Ipv4Prefix::from_key(k), IpcacheEntry::from_value(&v)) {
                out.insert(p, e);
            }
        }
        Ok(out)
    }

    // ---- endpoints ----

    /// Inserts or replaces the MACs of the pod behind host-side veth `ifindex`.
    pub fn upsert_endpoint(&mut self, ifindex: u32, ep: &Endpoint) -> Result<()> {
        self.endpoints
            .insert(ifindex, ep.value(), 0)
            .map_err(|e| DatapathError::map(MAP_ENDPOINTS, e))
    }

    /// Removes the endpoint of `ifindex`; false if there was none.
    pub fn delete_endpoint(&mut self, ifindex: u32) -> Result<bool> {
        Ok(found(MAP_ENDPOINTS, self.endpoints.remove(&ifindex))?.is_some())
    }

    /// Every endpoint, raw.
    pub fn endpoints_raw(&self) -> Result<BTreeMap<u32, EndpointValue>> {
        collect(MAP_ENDPOINTS, self.endpoints.iter())
    }

    // ---- policy ----

    /// Sets the verdict of `rule` (its counters start at zero; [`Datapath::apply`]
    /// does not touch entries that are already right, so they keep theirs).
    pub fn upsert_policy(&mut self, rule: &PolicyRule, verdict: Verdict) -> Result<()> {
        self.upsert_policy_raw(rule.key(), verdict.raw())
    }

    pub(crate) fn upsert_policy_raw(&mut self, k: PolicyKey, action: u8) -> Result<()> {
        // An LPM lookup from user space is a longest-prefix match, not an
        // exact one, so the old counters cannot be told apart: start fresh.
        let v = PolicyValue {
            action,
            ..Default::default()
        };
        self.policy
            .insert(&LpmKey::new(k.prefixlen, k.data), v, 0)
            .map_err(|e| DatapathError::map(MAP_POLICY, e))
    }

    /// Removes `rule`; false if there was none.
    pub fn delete_policy(&mut self, rule: &PolicyRule) -> Result<bool> {
        self.delete_policy_raw(rule.key())
    }

    pub(crate) fn delete_policy_raw(&mut self, k: PolicyKey) -> Result<bool> {
        Ok(found(
            MAP_POLICY,
            self.policy.remove(&LpmKey::new(k.prefixlen, k.data)),
        )?
        .is_some())
    }

    /// Every policy entry, raw.
    pub fn policy_raw(&self) -> Result<BTreeMap<PolicyKey, PolicyValue>> {
        let it = self.policy.iter().map(|r| {
            r.map(|(k, v)| {
                (
                    PolicyKey {
                        prefixlen: k.prefix_len(),
                        data: k.data(),
                    },
                    v,
                )
            })
        });
        collect(MAP_POLICY, it)
    }

    /// Every policy entry with its counters.
    pub fn policy_entries(&self) -> Result<BTreeMap<PolicyRule, PolicyStats>> {
        let mut out = BTreeMap::new();
        for (k, v) in self.policy_raw()? {
            if let Some(rule) = PolicyRule::from_key(&k) {
                out.insert(
                    rule,
                    PolicyStats {
                        verdict: Verdict::from_raw(v.action),
                        packets: v.packets,
                        bytes: v.bytes,
                    },
                );
            }
        }
        Ok(out)
    }

    pub(crate) fn upsert_policy_cidr_raw(
        &mut self,
        k: IpcacheKey,
        v: PolicyCidrValue,
    ) -> Result<()> {
        self.policy_cidr
            .insert(&LpmKey::new(k.prefixlen, k.addr), v, 0)
            .map_err(|e| DatapathError::map(MAP_POLICY_CIDR, e))
    }

    pub(crate) fn delete_policy_cidr_raw(&mut self, k: IpcacheKey) -> Result<bool> {
        Ok(found(
            MAP_POLICY_CIDR,
            self.policy_cidr.remove(&LpmKey::new(k.prefixlen, k.addr)),
        )?
        .is_some())
    }

    /// Every ipBlock prefix of `cm_policy_cidr`, raw.
    pub fn policy_cidr_raw(&self) -> Result<BTreeMap<IpcacheKey, PolicyCidrValue>> {
        let it = self.policy_cidr.iter().map(|r| {
            r.map(|(k, v)| {
                (
                    IpcacheKey {
                        prefixlen: k.prefix_len(),
                        addr: k.data(),
                    },
                    v,
                )
            })
        });
        collect(MAP_POLICY_CIDR, it)
    }

    /// Marks `identity` as selected by a policy in `dir` (default deny there).
    pub fn set_enforced(&mut self, identity: u32, dir: Direction) -> Result<()> {
        let k = EnforcedKey {
            identity,
            direction: dir.raw(),
            pad: [0; 3],
        };
        self.enforced
            .insert(k, 1, 0)
            .map_err(|e| DatapathError::map(MAP_ENFORCED, e))
    }

    /// Clears the enforcement mark; false if there was none.
    pub fn unset_enforced(&mut self, identity: u32, dir: Direction) -> Result<bool> {
        let k = EnforcedKey {
            identity,
            direction: dir.raw(),
            pad: [0; 3],
        };
        Ok(found(MAP_ENFORCED, self.enforced.remove(&k))?.is_some())
    }

    /// Every (identity, direction) under default deny.
    pub fn enforced(&self) -> Result<BTreeSet<(u32, Direction)>> {
        Ok(collect(MAP_ENFORCED, self.enforced.iter())?
            .into_keys()
            .filter_map(|k| Direction::from_raw(k.direction).map(|d| (k.identity, d)))
            .collect())
    }

    // ---- load balancing ----

    /// Programs `frontend` -> `service`: writes the backend slots, then the
    /// frontend (with the new count), then removes slots beyond the new count,
    /// so a concurrent connect never picks an empty slot.
    pub fn upsert_service(&mut self, frontend: &Frontend, service: &Service) -> Result<()> {
        let mut d = super::state::DesiredState::default();
        d.services.insert(*frontend, service.clone());
        let raw = d.to_raw()?;
        for (k, v) in &raw.backends {
            self.backends
                .insert(k, v, 0)
                .map_err(|e| DatapathError::map(MAP_LB_BACKENDS, e))?;
        }
        let fk = frontend.key();
        let old = found(MAP_LB_FRONTENDS, self.frontends.get(&fk, 0))?;
        if let Some(fv) = raw.frontends.get(&fk) {
            self.frontends
                .insert(fk, fv, 0)
                .map_err(|e| DatapathError::map(MAP_LB_FRONTENDS, e))?;
        }
        if let Some(old) = old {
            let keep = if old.service_id == service.service_id {
                service.backends.len() as u32
            } else {
                0
            };
            for slot in keep..u32::from(old.count) {
                self.delete_backend_raw(BackendKey {
                    service_id: old.service_id,
                    slot,
                })?;
            }
        }
        Ok(())
    }

    /// Removes `frontend` and its backend slots; false if it was not programmed.
    pub fn delete_service(&mut self, frontend: &Frontend) -> Result<bool> {
        let fk = frontend.key();
        let Some(old) = found(MAP_LB_FRONTENDS, self.frontends.get(&fk, 0))? else {
            return Ok(false);
        };
        self.delete_frontend_raw(fk)?;
        for slot in 0..u32::from(old.count) {
            self.delete_backend_raw(BackendKey {
                service_id: old.service_id,
                slot,
            })?;
        }
        Ok(true)
    }

    pub(crate) fn delete_frontend_raw(&mut self, k: FrontendKey) -> Result<bool> {
        Ok(found(MAP_LB_FRONTENDS, self.frontends.remove(&k))?.is_some())
    }

    pub(crate) fn delete_backend_raw(&mut self, k: BackendKey) -> Result<bool> {
        Ok(found(MAP_LB_BACKENDS, self.backends.remove(&k))?.is_some())
    }

    /// Every frontend, raw.
    pub fn frontends_raw(&self) -> Result<BTreeMap<FrontendKey, FrontendValue>> {
        collect(MAP_LB_FRONTENDS, self.frontends.iter())
    }

    /// Every backend slot, raw.
    pub fn backends_raw(&self) -> Result<BTreeMap<BackendKey, BackendValue>> {
        collect(MAP_LB_BACKENDS, self.backends.iter())
    }

    // ---- connection tracking and counters ----

    /// Number of tracked flows.
    pub fn ct_len(&self) -> Result<usize> {
        let mut n = 0;
        for k in self.ct.keys() {
            k.map_err(|e| DatapathError::map(MAP_CT, e))?;
            n += 1;
        }
        Ok(n)
    }

    /// Forgets every tracked flow (replies of existing flows are then policy-checked).
    pub fn flush_ct(&mut self) -> Result<usize> {
        let keys: Vec<CtKey> = collect(MAP_CT, self.ct.iter())?.into_keys().collect();
        let mut n = 0;
        for k in keys {
            if found(MAP_CT, self.ct.remove(&k))?.is_some() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// The per-reason counters, summed over CPUs.
    pub fn metrics(&self) -> Result<Metrics> {
        let mut m = Metrics::default();
        for index in 0..Reason::SLOTS {
            let per_cpu = self
                .metrics
                .get(&index, 0)
                .map_err(|e| DatapathError::map(MAP_METRICS, e))?;
            let mut c = Counter::default();
            for v in per_cpu.iter() {
                c.packets = c.packets.wrapping_add(v.packets);
                c.bytes = c.bytes.wrapping_add(v.bytes);
            }
            m.set(index, c);
        }
        Ok(m)
    }
}
