//! Traffic between the pods of the topology: a "whoami" TCP server (answers
//! every connection with its own address), pings, TCP probes, and clients of
//! the socket load balancer (which acts per cgroup, so they run as child
//! processes placed in the agent's cgroup).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clustermesh_node_agent::datapath::netns::{named_netns_path, run_in_netns};

/// Starts a server in netns `ns` on `addr` that writes "<ip>\n" to every
/// connection and then echoes what it reads.
pub fn start_whoami(ns: &str, addr: SocketAddr) {
    let listener = run_in_netns(&named_netns_path(ns), move || TcpListener::bind(addr))
        .expect("entering the pod namespace")
        .unwrap_or_else(|e| panic!("binding {addr} in {ns}: {e}"));
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                if conn
                    .write_all(format!("{}\n", addr.ip()).as_bytes())
                    .is_err()
                {
                    return;
                }
                let mut buf = [0u8; 64 * 1024];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// Connects from netns `ns` to `addr` and returns the server's greeting line.
pub fn whoami(ns: &str, addr: SocketAddr) -> std::io::Result<String> {
    run_in_netns(&named_netns_path(ns), move || -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while s.read(&mut b)? == 1 && b[0] != b'\n' {
            line.push(b[0]);
        }
        s.write_all(b"bye")?;
        Ok(String::from_utf8_lossy(&line).into_owned())
    })
    .map_err(std::io::Error::other)?
}

fn ns_command(ns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", named_netns_path(ns).display()))
        .args(args);
    c
}

/// `count` pings 0.2 s apart; true if every one was answered.
pub fn ping(ns: &str, dst: Ipv4Addr, count: u32) -> bool {
    let out = ns_command(
        ns,
        &[
            "ping",
            "-n",
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            "0.2",
            "-W",
            "2",
            &dst.to_string(),
        ],
    )
    .output()
    .expect("running ping (apt-get install iputils-ping)");
    out.status.success()
        && String::from_utf8_lossy(&out.stdout).contains(&format!("{count} received"))
}

/// True if none of 3 pings is answered.
pub fn ping_fails(ns: &str, dst: Ipv4Addr) -> bool {
    let out = ns_command(
        ns,
        &[
            "ping",
            "-n",
            "-q",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "1",
            &dst.to_string(),
        ],
    )
    .output()
    .expect("running ping");
    String::from_utf8_lossy(&out.stdout).contains(" 0 received")
}

/// A ping running in the background (`-i 0.1`: 10 per second).
pub struct BackgroundPing(Child);

impl BackgroundPing {
    pub fn start(ns: &str, dst: Ipv4Addr, count: u32) -> BackgroundPing {
        let child = ns_command(
            ns,
            &[
                "ping",
                "-n",
                "-q",
                "-c",
                &count.to_string(),
                "-i",
                "0.1",
                "-W",
                "1",
                &dst.to_string(),
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running ping");
        BackgroundPing(child)
    }

    /// Waits for the end; returns (transmitted, received) and the summary.
    pub fn finish(self) -> (u32, u32, String) {
        let out = self.0.wait_with_output().expect("waiting for ping");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let summary = text
            .lines()
            .find(|l| l.contains("transmitted"))
            .unwrap_or_default();
        let num = |word: &str| {
            summary
                .split(',')
                .find(|p| p.contains(word))
                .and_then(|p| p.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        (num("transmitted"), num("received"), text)
    }
}

/// Opens `n` connections to `target` from pod netns `ns` inside cgroup `cg`
/// (where the agent attached the socket load balancer) and returns what
/// each answered ("FAIL" for a failed connection).
pub fn lb_connects(ns: &str, cg: &Path, target: SocketAddr, n: u32) -> Vec<String> {
    let script = format!(
        "for i in $(seq {n}); do timeout 3 bash -c 'read -r l < /dev/tcp/{}/{} && echo \"$l\"' || echo FAIL; done",
        target.ip(),
        target.port()
    );
    let out = Command::new("sh")
        .args(["-c", "echo $$ > \"$0/cgroup.procs\" && exec \"$@\""])
        .arg(cg)
        .arg("nsenter")
        .arg(format!("--net={}", named_netns_path(ns).display()))
        .args(["bash", "-c", &script])
        .output()
        .expect("running the load-balancer client");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .collect()
}
