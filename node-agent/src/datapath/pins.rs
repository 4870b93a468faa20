//! bpffs and the pin directory: mount bpffs when (and only when) it is not
//! mounted, lay out `<pin dir>/` and `<pin dir>/links/`, and refuse to adopt a
//! pinned map whose layout differs from the one this agent was built with.

use std::fs;
use std::path::{Path, PathBuf};

use aya::maps::{MapInfo, MapType};
use tracing::{debug, info, warn};

use super::error::{DatapathError, Result};
use super::types::{
    BackendKey, BackendValue, ConfigValue, CtKey, CtValue, EndpointValue, EnforcedKey, FrontendKey,
    FrontendValue, IpcacheKey, IpcacheValue, MetricValue, PolicyCidrValue, PolicyKey, PolicyValue,
    RevNatKey, RevNatValue, TunnelSourceValue,
};

/// Where bpffs is conventionally mounted.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";
/// `statfs` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Map names (the pin file names under the pin directory).
pub const MAP_IPCACHE: &str = "cm_ipcache";
pub const MAP_ENDPOINTS: &str = "cm_endpoints";
pub const MAP_POLICY: &str = "cm_policy_lpm";
pub const MAP_POLICY_CIDR: &str = "cm_policy_cidr";
/// Capacity of `cm_policy_lpm` (`CM_POLICY_MAX`).
pub const POLICY_MAX: u32 = 65_536;
/// Capacity of `cm_policy_cidr` (`CM_POLICY_CIDR_MAX`).
pub const POLICY_CIDR_MAX: u32 = 16_384;
/// Maps of earlier agents that this one no longer uses (removed with the pin dir).
pub const RETIRED_MAPS: [&str; 1] = ["cm_policy"];
pub const MAP_ENFORCED: &str = "cm_policy_enforced";
pub const MAP_CT: &str = "cm_ct";
pub const MAP_LB_FRONTENDS: &str = "cm_lb_frontends";
pub const MAP_LB_BACKENDS: &str = "cm_lb_backends";
pub const MAP_LB_REVNAT: &str = "cm_lb_revnat";
pub const MAP_METRICS: &str = "cm_metrics";
pub const MAP_TUNNEL_SOURCES: &str = "cm_tunnel_sources";
pub const MAP_CONFIG: &str = "cm_config";

/// What a pinned map must look like to be adopted (mirrors `bpf/cm_maps.h`).
#[derive(Clone, Copy, Debug)]
pub struct MapSpec {
    pub name: &'static str,
    pub map_type: MapType,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

const fn spec<K, V>(name: &'static str, map_type: MapType, max_entries: u32) -> MapSpec {
    MapSpec {
        name,
        map_type,
        key_size: std::mem::size_of::<K>() as u32,
        value_size: std::mem::size_of::<V>() as u32,
        max_entries,
    }
}

/// Every map of the datapath.
pub const MAP_SPECS: [MapSpec; 12] = [
    spec::<IpcacheKey, IpcacheValue>(MAP_IPCACHE, MapType::LpmTrie, 524_288),
    spec::<u32, EndpointValue>(MAP_ENDPOINTS, MapType::Hash, 4096),
    spec::<PolicyKey, PolicyValue>(MAP_POLICY, MapType::LpmTrie, POLICY_MAX),
    spec::<IpcacheKey, PolicyCidrValue>(MAP_POLICY_CIDR, MapType::LpmTrie, POLICY_CIDR_MAX),
    spec::<EnforcedKey, u8>(MAP_ENFORCED, MapType::Hash, 16_384),
    spec::<CtKey, CtValue>(MAP_CT, MapType::LruHash, 65_536),
    spec::<FrontendKey, FrontendValue>(MAP_LB_FRONTENDS, MapType::Hash, 16_384),
    spec::<BackendKey, BackendValue>(MAP_LB_BACKENDS, MapType::Hash, 65_536),
    spec::<RevNatKey, RevNatValue>(MAP_LB_REVNAT, MapType::LruHash, 65_536),
    spec::<u32, MetricValue>(MAP_METRICS, MapType::PerCpuArray, 24),
    spec::<u32, TunnelSourceValue>(MAP_TUNNEL_SOURCES, MapType::Hash, 16_384),
    spec::<u32, ConfigValue>(MAP_CONFIG, MapType::Array, 1),
];

/// `/sys/fs/bpf/clustermesh/<node-name>`: one directory per agent, so several
/// agents on one machine (tests) never share maps.
pub fn default_pin_dir(node_name: &str) -> PathBuf {
    Path::new(BPFFS_ROOT).join("clustermesh").join(node_name)
}

/// True if `/proc/mounts` lists a bpf filesystem mounted exactly at `dir`.
pub fn bpffs_mounted_at(dir: &Path) -> Result<bool> {
    let mounts = fs::read_to_string("/proc/mounts")
        .map_err(|e| DatapathError::io("reading /proc/mounts", e))?;
    Ok(mounts_has_bpffs(&mounts, dir))
}

fn mounts_has_bpffs(mounts: &str, dir: &Path) -> bool {
    mounts.lines().any(|line| {
        let mut f = line.split_whitespace();
        let (_src, target, fstype) = (f.next(), f.next(), f.next());
        fstype == Some("bpf") && target.map(Path::new) == Some(dir)
    })
}

/// Serialises check-then-mount within this process (parallel tests, several
/// loaders): two threads mounting at once would stack two bpffs instances and
/// hide the first one's pins.
static MOUNT_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Mounts bpffs at `dir` unless one is mounted there already. Returns true if it mounted.
pub fn ensure_bpffs(dir: &Path) -> Result<bool> {
    let _guard = MOUNT_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if bpffs_mounted_at(dir)? {
        return Ok(false);
    }
    fs::create_dir_all(dir)
        .map_err(|e| DatapathError::io(format!("creating {}", dir.display()), e))?;
    let target = cstring(dir)?;
    let fstype = c"bpf";
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(DatapathError::io(
            format!("mounting bpffs at {}", dir.display()),
            std::io::Error::last_os_error(),
        ));
    }
    info!(dir = %dir.display(), "mounted bpffs");
    Ok(true)
}

/// True if `path` (or its nearest existing ancestor) lives on a bpffs.
pub fn is_on_bpffs(path: &Path) -> Result<bool> {
    let mut p = path;
    while !p.exists() {
        match p.parent() {
            Some(parent) => p = parent,
            None => return Ok(false),
        }
    }
    let c = cstring(p)?;
    // SAFETY: statfs is plain old data; zeroed is a valid initial value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `st` a valid out-pointer.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(DatapathError::io(
            format!("statfs {}", p.display()),
            std::io::Error::last_os_error(),
        ));
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between libcs
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// Makes `pin_dir` usable: mounts bpffs at `/sys/fs/bpf` if the directory is
/// below it and nothing is mounted there, checks it is on bpffs, and creates
/// `pin_dir` and `pin_dir/links`.
pub fn prepare_pin_dir(pin_dir: &Path) -> Result<()> {
    let root = Path::new(BPFFS_ROOT);
    if pin_dir.starts_with(root) {
        ensure_bpffs(root)?;
    }
    if !is_on_bpffs(pin_dir)? {
        return Err(DatapathError::NotBpffs {
            path: pin_dir.to_path_buf(),
        });
    }
    let links = links_dir(pin_dir);
    fs::create_dir_all(&links)
        .map_err(|e| DatapathError::io(format!("creating {}", links.display()), e))?;
    Ok(())
}

/// Where pinned program links live.
pub fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links")
}

/// Checks every map already pinned in `pin_dir` against [`MAP_SPECS`]. Maps
/// that are not pinned yet are fine (the loader creates them). Returns the
/// names of the maps that will be adopted.
pub fn check_pinned_maps(pin_dir: &Path) -> Result<Vec<&'static str>> {
    let mut adopted = Vec::new();
    for spec in MAP_SPECS.iter() {
        let path = pin_dir.join(spec.name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path).map_err(|e| DatapathError::map(spec.name, e))?;
        let map_type = info
            .map_type()
            .map_err(|e| DatapathError::map(spec.name, e))?;
        let found = (
            map_type,
            info.key_size(),
            info.value_size(),
            info.max_entries(),
        );
        let want = (
            spec.map_type,
            spec.key_size,
            spec.value_size,
            spec.max_entries,
        );
        if found != want {
            return Err(DatapathError::IncompatiblePin {
                path,
                detail: format!(
                    "found (type, key, value, max) = {found:?}, this agent needs {want:?}"
                ),
            });
        }
        debug!(map = spec.name, "adopting pinned map");
        adopted.push(spec.name);
    }
    Ok(adopted)
}

/// Removes everything this datapath pinned under `pin_dir` (maps and links)
/// and the directory itself. Removing a link pin detaches its program.
pub fn remove_pin_dir(pin_dir: &Path) -> Result<()> {
    if !pin_dir.exists() {
        return Ok(());
    }
    let links = links_dir(pin_dir);
    if let Ok(entries) = fs::read_dir(&links) {
        for e in entries.flatten() {
            if let Err(err) = fs::remove_file(e.path()) {
                warn!(path = %e.path().display(), %err, "removing link pin");
            }
        }
    }
    let _ = fs::remove_dir(&links);
    for name in MAP_SPECS.iter().map(|s| s.name).chain(RETIRED_MAPS) {
        let p = pin_dir.join(name);
        if p.exists() {
            fs::remove_file(&p)
                .map_err(|e| DatapathError::io(format!("removing {}", p.display()), e))?;
        }
    }
    fs::remove_dir(pin_dir)
        .map_err(|e| DatapathError::io(format!("removing {}", pin_dir.display()), e))?;
    Ok(())
}

fn cstring(p: &Path) -> Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt as _;
    std::ffi::CString::new(p.as_os_str().as_bytes())
        .map_err(|_| DatapathError::invalid("path", p.display().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_bpffs_in_mounts() {
        let mounts = "sysfs /sys sysfs rw 0 0\nbpf /sys/fs/bpf bpf rw,relatime 0 0\n";
        assert!(mounts_has_bpffs(mounts, Path::new("/sys/fs/bpf")));
        assert!(!mounts_has_bpffs(mounts, Path::new("/sys")));
        assert!(!mounts_has_bpffs(
            "none /sys/fs/bpf tmpfs rw 0 0\n",
            Path::new("/sys/fs/bpf")
        ));
    }

    #[test]
    fn default_pin_dir_is_per_node() {
        assert_eq!(
            default_pin_dir("gw-a"),
            PathBuf::from("/sys/fs/bpf/clustermesh/gw-a")
        );
    }

    #[test]
    fn specs_have_unique_names() {
        let mut names: Vec<_> = MAP_SPECS.iter().map(|s| s.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), MAP_SPECS.len());
    }
}
