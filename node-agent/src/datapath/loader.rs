//! Loading the BPF objects and attaching their programs.
//!
//! Maps are created-or-adopted from pins in the pin directory (see
//! [`super::pins`]); links are pinned under `<pin dir>/links/` on kernels with
//! TCX/bpf_link (≥ 6.6), so programs stay attached while the agent is down and
//! a restarted agent swaps in its programs atomically (`bpf_link_update`)
//! instead of detaching and re-attaching.

use std::fs;
use std::path::{Path, PathBuf};

use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::SchedClassifierLink;
use aya::programs::{CgroupAttachMode, CgroupSockAddr, SchedClassifier, TcAttachType};
use aya::util::KernelVersion;
use aya::{Ebpf, EbpfLoader};
use tracing::{debug, info, warn};

use super::error::{DatapathError, Result};
use super::maps::Datapath;
use super::pins::{self, check_pinned_maps, links_dir, prepare_pin_dir};

/// The TC object (`bpf/cm_tc.c`).
static TC_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/cm_tc.bpf.o"));
/// The socket-LB object (`bpf/cm_lb.c`).
static LB_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/cm_lb.bpf.o"));

/// Program names (C function names).
pub const PROG_FROM_POD: &str = "from_pod";
pub const PROG_FROM_TUNNEL: &str = "from_tunnel";
pub const PROG_FROM_UNDERLAY: &str = "from_underlay";
const TC_PROGRAMS: [&str; 3] = [PROG_FROM_POD, PROG_FROM_TUNNEL, PROG_FROM_UNDERLAY];
pub const PROG_CONNECT4: &str = "cm_connect4";
pub const PROG_SENDMSG4: &str = "cm_sendmsg4";
pub const PROG_RECVMSG4: &str = "cm_recvmsg4";
const LB_PROGRAMS: [&str; 3] = [PROG_CONNECT4, PROG_SENDMSG4, PROG_RECVMSG4];

/// The loaded programs of one agent and the pin directory of its maps and links.
pub struct Loader {
    pin_dir: PathBuf,
    tc: Ebpf,
    lb: Ebpf,
    /// Links are bpf_links that can be pinned (TCX, kernel ≥ 6.6).
    pinned_links: bool,
}

impl Loader {
    /// Prepares `pin_dir` (mounting bpffs at /sys/fs/bpf if needed), checks that
    /// any maps already pinned there match this build, loads both objects
    /// (creating missing maps, adopting pinned ones — their contents are kept)
    /// and loads the programs into the kernel. Nothing is attached yet.
    pub fn load(pin_dir: impl Into<PathBuf>) -> Result<Self> {
        let pin_dir = pin_dir.into();
        prepare_pin_dir(&pin_dir)?;
        let adopted = check_pinned_maps(&pin_dir)?;
        let mut tc = EbpfLoader::new()
            .default_map_pin_directory(&pin_dir)
            .load(TC_OBJECT)
            .map_err(|e| DatapathError::Load {
                object: "cm_tc.bpf.o",
                source: Box::new(e),
            })?;
        let mut lb = EbpfLoader::new()
            .default_map_pin_directory(&pin_dir)
            .load(LB_OBJECT)
            .map_err(|e| DatapathError::Load {
                object: "cm_lb.bpf.o",
                source: Box::new(e),
            })?;
        for name in TC_PROGRAMS {
            sched_classifier(&mut tc, name)?
                .load()
                .map_err(|e| DatapathError::program(name, e))?;
        }
        for name in LB_PROGRAMS {
            sock_addr(&mut lb, name)?
                .load()
                .map_err(|e| DatapathError::program(name, e))?;
        }
        let pinned_links = KernelVersion::current()
            .map(|v| v >= KernelVersion::new(6, 6, 0))
            .unwrap_or(false);
        if !pinned_links {
            warn!(
                "kernel < 6.6: TC programs attach through netlink and detach when the agent exits"
            );
        }
        info!(pin_dir = %pin_dir.display(), adopted = adopted.len(), "datapath loaded");
        Ok(Loader {
            pin_dir,
            tc,
            lb,
            pinned_links,
        })
    }

    /// The pin directory of maps and links.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// The raw fd of the loaded `from_pod` program (for `BPF_PROG_TEST_RUN`
    /// in benchmarks); valid while this loader lives.
    pub fn from_pod_fd(&mut self) -> Result<std::os::fd::RawFd> {
        use std::os::fd::{AsFd, AsRawFd};
        let p = sched_classifier(&mut self.tc, PROG_FROM_POD)?;
        let fd = p
            .fd()
            .map_err(|e| DatapathError::program(PROG_FROM_POD, e))?;
        Ok(fd.as_fd().as_raw_fd())
    }

    /// Opens the pinned maps for programming.
    pub fn datapath(&self) -> Result<Datapath> {
        Datapath::open(&self.pin_dir)
    }

    /// Attaches `from_pod` to the ingress of a local pod's host-side veth
    /// (in the calling thread's network namespace).
    pub fn attach_from_pod(&mut self, iface: &str) -> Result<()> {
        self.attach_tc(PROG_FROM_POD, iface)
    }

    /// Attaches `from_tunnel` to the ingress of the collect-metadata tunnel device.
    pub fn attach_from_tunnel(&mut self, iface: &str) -> Result<()> {
        self.attach_tc(PROG_FROM_TUNNEL, iface)
    }

    /// Attaches `from_underlay` to the ingress of the underlay device
    /// (native-routing mode).
    pub fn attach_from_underlay(&mut self, iface: &str) -> Result<()> {
        self.attach_tc(PROG_FROM_UNDERLAY, iface)
    }

    /// Detaches whatever program this datapath attached to `iface` (pod veth,
    /// tunnel or underlay). Returns false if nothing was attached there.
    pub fn detach_iface(&mut self, iface: &str) -> Result<bool> {
        let mut any = false;
        for prog in TC_PROGRAMS {
            any |= remove_pin(&self.link_pin(prog, iface))?;
        }
        Ok(any)
    }

    fn link_pin(&self, prog: &str, target: &str) -> PathBuf {
        let safe: String = target
            .chars()
            .map(|c| if c == '/' { '_' } else { c })
            .collect();
        links_dir(&self.pin_dir).join(format!("{prog}@{safe}"))
    }

    fn attach_tc(&mut self, name: &str, iface: &str) -> Result<()> {
        let pin = self.link_pin(name, iface);
        let pinned_links = self.pinned_links;
        let prog = sched_classifier(&mut self.tc, name)?;
        if pinned_links && pin.exists() {
            // A previous agent's link: swap our program into it atomically.
            match replace_tc_link(prog, &pin) {
                Ok(()) => {
                    info!(prog = name, iface, "replaced program in pinned link");
                    return Ok(());
                }
                Err(e) => {
                    warn!(prog = name, iface, error = %e, "stale link pin; attaching afresh");
                    remove_pin(&pin)?;
                }
            }
        }
        let id = prog
            .attach(iface, TcAttachType::Ingress)
            .map_err(|e| DatapathError::program(name, e))?;
        if !pinned_links {
            info!(prog = name, iface, "attached (netlink)");
            return Ok(());
        }
        let link = prog
            .take_link(id)
            .map_err(|e| DatapathError::program(name, e))?;
        let fd = FdLink::try_from(link).map_err(|e| DatapathError::Link {
            path: pin.clone(),
            source: Box::new(e),
        })?;
        fd.pin(&pin).map_err(|e| DatapathError::Pin {
            path: pin.clone(),
            source: Box::new(e),
        })?;
        info!(prog = name, iface, pin = %pin.display(), "attached (tcx, pinned)");
        Ok(())
    }

    /// Attaches the socket load balancer (connect4, sendmsg4, recvmsg4) to the
    /// cgroup v2 directory `cgroup` (e.g. the root of the unified hierarchy).
    /// Attached as bpf_links (kernel ≥ 5.7), which always coexist with other
    /// programs on the cgroup (the kernel rejects explicit attach flags for
    /// links), so a restarted agent attaches its programs before removing its
    /// predecessor's: there is no window without translation.
    pub fn attach_lb(&mut self, cgroup: &Path) -> Result<()> {
        let file = fs::File::open(cgroup)
            .map_err(|e| DatapathError::io(format!("opening cgroup {}", cgroup.display()), e))?;
        let target = cgroup.display().to_string();
        for name in LB_PROGRAMS {
            let pin = self.link_pin(name, &target);
            let prog = sock_addr(&mut self.lb, name)?;
            let id = prog
                .attach(&file, CgroupAttachMode::Single)
                .map_err(|e| DatapathError::program(name, e))?;
            let link = prog
                .take_link(id)
                .map_err(|e| DatapathError::program(name, e))?;
            let fd = FdLink::try_from(link).map_err(|e| DatapathError::Link {
                path: pin.clone(),
                source: Box::new(e),
            })?;
            if remove_pin(&pin)? {
                debug!(prog = name, "replaced previous agent's cgroup link");
            }
            fd.pin(&pin).map_err(|e| DatapathError::Pin {
                path: pin.clone(),
                source: Box::new(e),
            })?;
            info!(prog = name, cgroup = %target, "attached");
        }
        Ok(())
    }

    /// Detaches the socket load balancer from `cgroup`; false if it was not attached.
    pub fn detach_lb(&mut self, cgroup: &Path) -> Result<bool> {
        let target = cgroup.display().to_string();
        let mut any = false;
        for name in LB_PROGRAMS {
            any |= remove_pin(&self.link_pin(name, &target))?;
        }
        Ok(any)
    }

    /// The names of the pinned links (`<program>@<target>`).
    pub fn attached(&self) -> Result<Vec<String>> {
        attached_links(&self.pin_dir)
    }
}

/// The pinned links in `pin_dir` (`<program>@<target>`), sorted.
pub fn attached_links(pin_dir: &Path) -> Result<Vec<String>> {
    let dir = links_dir(pin_dir);
    let mut out = Vec::new();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(DatapathError::io(format!("reading {}", dir.display()), e)),
    };
    for e in entries.flatten() {
        out.push(e.file_name().to_string_lossy().into_owned());
    }
    out.sort();
    Ok(out)
}

/// Detaches every program pinned under `pin_dir` (maps stay).
pub fn detach_all(pin_dir: &Path) -> Result<usize> {
    let mut n = 0;
    for name in attached_links(pin_dir)? {
        if remove_pin(&links_dir(pin_dir).join(&name))? {
            n += 1;
        }
    }
    Ok(n)
}

/// Detaches everything and removes all pins (maps included) and the pin directory.
pub fn destroy(pin_dir: &Path) -> Result<()> {
    detach_all(pin_dir)?;
    pins::remove_pin_dir(pin_dir)
}

fn replace_tc_link(prog: &mut SchedClassifier, pin: &Path) -> Result<()> {
    let link_err = |e| DatapathError::Link {
        path: pin.to_path_buf(),
        source: Box::new(e),
    };
    let old = PinnedLink::from_pin(pin).map_err(link_err)?;
    let link = SchedClassifierLink::try_from(FdLink::from(old)).map_err(link_err)?;
    prog.attach_to_link(link)
        .map_err(|e| DatapathError::program("attach_to_link", e))?;
    // The link stays in the program's link set; dropping it only closes our fd,
    // and the pin keeps it attached.
    Ok(())
}

/// Removes a link pin (detaching it unless someone else holds it); false if absent.
fn remove_pin(pin: &Path) -> Result<bool> {
    match fs::remove_file(pin) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(DatapathError::io(format!("removing {}", pin.display()), e)),
    }
}

fn sched_classifier<'a>(bpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    let p = bpf
        .program_mut(name)
        .ok_or_else(|| DatapathError::invalid("program", format!("{name} not in object")))?;
    p.try_into().map_err(|e| DatapathError::program(name, e))
}

fn sock_addr<'a>(bpf: &'a mut Ebpf, name: &str) -> Result<&'a mut CgroupSockAddr> {
    let p = bpf
        .program_mut(name)
        .ok_or_else(|| DatapathError::invalid("program", format!("{name} not in object")))?;
    p.try_into().map_err(|e| DatapathError::program(name, e))
}
