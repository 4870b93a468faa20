//! Capturing one tunnel packet on the underlay with tcpdump and reading the
//! VNI out of the pcap file (VXLAN and Geneve both carry it in bytes 4..7 of
//! their header).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::netns::named_netns_path;

/// A running `tcpdump -c 1` inside a netns; killed on drop if still running.
pub struct Capture {
    child: Child,
    pub file: PathBuf,
}

impl Capture {
    /// Starts capturing one UDP packet from `src` to `port` on `iface` in netns
    /// `ns`, and waits until tcpdump says it is listening.
    pub fn start(
        ns: &str,
        iface: &str,
        src: std::net::Ipv4Addr,
        port: u16,
        file: &Path,
    ) -> Capture {
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", named_netns_path(ns).display()))
            .args(["tcpdump", "-n", "-U", "-i", iface, "-c", "1", "-w"])
            .arg(file)
            .args([
                "udp",
                "dst",
                "port",
                &port.to_string(),
                "and",
                "src",
                "host",
                &src.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start tcpdump (apt-get install tcpdump): {e}"));
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stderr).lines();
            for line in lines.by_ref().map_while(Result::ok) {
                if line.contains("listening on") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("tcpdump did not start listening");
        Capture {
            child,
            file: file.to_path_buf(),
        }
    }

    /// Waits for tcpdump to exit (it stops after one packet) and returns the
    /// VNI of the captured packet.
    pub fn vni(mut self) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Ok(None) => panic!("tcpdump captured nothing within 10 s"),
                Err(e) => panic!("waiting for tcpdump: {e}"),
            }
        }
        let bytes = std::fs::read(&self.file)
            .unwrap_or_else(|e| panic!("reading {}: {e}", self.file.display()));
        tunnel_vni(&bytes).unwrap_or_else(|e| panic!("parsing {}: {e}", self.file.display()))
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.file);
    }
}

/// The VNI of the first packet in a pcap file of Ethernet frames carrying
/// IPv4/UDP/VXLAN or IPv4/UDP/Geneve.
pub fn tunnel_vni(pcap: &[u8]) -> Result<u32, String> {
    if pcap.len() < 24 {
        return Err("short pcap header".into());
    }
    let magic = u32::from_le_bytes([pcap[0], pcap[1], pcap[2], pcap[3]]);
    let le = match magic {
        0xa1b2_c3d4 | 0xa1b2_3c4d => true,
        0xd4c3_b2a1 | 0x4d3c_b2a1 => false,
        m => return Err(format!("not a pcap file (magic {m:#x})")),
    };
    let u32_at = |b: &[u8], o: usize| {
        let a = [b[o], b[o + 1], b[o + 2], b[o + 3]];
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    if u32_at(pcap, 20) != 1 {
        return Err(format!("link type {} is not Ethernet", u32_at(pcap, 20)));
    }
    if pcap.len() < 24 + 16 {
        return Err("no packet".into());
    }
    let caplen = u32_at(pcap, 24 + 8) as usize;
    let pkt = pcap.get(40..40 + caplen).ok_or("truncated packet record")?;
    if pkt.len() < 14 + 20 || pkt[12..14] != [0x08, 0x00] {
        return Err("not IPv4 over Ethernet".into());
    }
    let ihl = usize::from(pkt[14] & 0x0f) * 4;
    if pkt[14 + 9] != 17 {
        return Err("not UDP".into());
    }
    let tunnel = 14 + ihl + 8;
    let hdr = pkt
        .get(tunnel..tunnel + 8)
        .ok_or("truncated tunnel header")?;
    Ok((u32::from(hdr[4]) << 16) | (u32::from(hdr[5]) << 8) | u32::from(hdr[6]))
}

#[cfg(test)]
#[test]
fn parses_a_vxlan_vni() {
    let mut f = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
    f.extend([0; 8]);
    f.extend(65535u32.to_le_bytes());
    f.extend(1u32.to_le_bytes());
    let mut pkt = vec![0u8; 12];
    pkt.extend([0x08, 0x00]);
    let mut iph = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17];
    iph.resize(20, 0);
    pkt.extend(iph);
    pkt.extend([0x12, 0x34, 0x21, 0x18, 0, 0, 0, 0]);
    pkt.extend([0x08, 0, 0, 0, 0x01, 0x01, 0x00, 0]);
    f.extend([0; 8]);
    f.extend((pkt.len() as u32).to_le_bytes());
    f.extend((pkt.len() as u32).to_le_bytes());
    f.extend(pkt);
    assert_eq!(tunnel_vni(&f), Ok(0x010100));
}
