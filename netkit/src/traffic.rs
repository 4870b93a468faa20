//! Traffic between test namespaces: pings, a background ping, TCP echo and
//! "whoami" servers (a socket stays in the namespace it was made in, so the
//! accept loops run on plain threads), and their clients.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::cmd::{ns_cmd, ns_command};
use crate::netns::{named_netns_path, run_in_netns};

/// `count` pings 0.2 s apart from netns `ns`; true if every one was answered.
pub fn ping(ns: &str, dst: Ipv4Addr, count: u32) -> bool {
    let (c, d) = (count.to_string(), dst.to_string());
    let out = ns_cmd(
        ns,
        &["ping", "-n", "-q", "-c", &c, "-i", "0.2", "-W", "2", &d],
    );
    out.status.success()
        && String::from_utf8_lossy(&out.stdout).contains(&format!("{count} received"))
}

/// True if none of 3 pings from `ns` to `dst` is answered.
pub fn ping_fails(ns: &str, dst: Ipv4Addr) -> bool {
    let d = dst.to_string();
    let out = ns_cmd(
        ns,
        &["ping", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "1", &d],
    );
    String::from_utf8_lossy(&out.stdout).contains(" 0 received")
}

/// A ping running in the background (`-i 0.1`: 10 per second).
pub struct BackgroundPing(Child);

impl BackgroundPing {
    pub fn start(ns: &str, dst: Ipv4Addr, count: u32) -> BackgroundPing {
        let (c, d) = (count.to_string(), dst.to_string());
        let child = ns_command(
            ns,
            &["ping", "-n", "-q", "-c", &c, "-i", "0.1", "-W", "1", &d],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running ping (apt-get install iputils-ping)");
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

/// A ping at 5/s that reports the longest run without replies: the gap a
/// failover costs.
pub struct GapPing(Child);

impl GapPing {
    pub fn start(ns: &str, dst: Ipv4Addr) -> GapPing {
        let d = dst.to_string();
        let child = ns_command(ns, &["ping", "-n", "-i", "0.2", "-W", "1", &d])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("running ping");
        GapPing(child)
    }

    /// Stops the ping: (longest time between answered pings, answered, last sequence number).
    pub fn finish(self) -> (Duration, u32, u32) {
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGINT);
        }
        let out = self.0.wait_with_output().expect("ping output");
        let text = String::from_utf8_lossy(&out.stdout);
        let seqs: Vec<u32> = text
            .lines()
            .filter_map(|l| l.split("icmp_seq=").nth(1))
            .filter_map(|r| r.split_whitespace().next()?.parse().ok())
            .collect();
        let max_gap = seqs.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        (
            Duration::from_millis(200 * u64::from(max_gap)),
            seqs.len() as u32,
            seqs.last().copied().unwrap_or(0),
        )
    }
}

fn serve(ns: &str, addr: SocketAddr, greeting: bool) -> std::io::Result<()> {
    let listener = run_in_netns(&named_netns_path(ns), move || TcpListener::bind(addr))??;
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                if greeting
                    && conn
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
    Ok(())
}

/// An echo server on `addr` inside netns `ns`.
pub fn start_echo_server(ns: &str, addr: SocketAddr) -> std::io::Result<()> {
    serve(ns, addr, false)
}

/// A server on `addr` inside `ns` that writes "<its ip>\n" to every
/// connection, then echoes.
pub fn start_whoami(ns: &str, addr: SocketAddr) {
    serve(ns, addr, true).unwrap_or_else(|e| panic!("binding {addr} in {ns}: {e}"));
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
    })?
}

/// Connects from netns `ns` to `addr`, sends `msg` and returns what came back.
pub fn tcp_echo(ns: &str, addr: SocketAddr, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let msg = msg.to_vec();
    run_in_netns(&named_netns_path(ns), move || tcp_echo_here(addr, &msg))?
}

/// Connects (from the current network namespace) to `addr`, sends `msg` and
/// returns what came back.
pub fn tcp_echo_here(addr: SocketAddr, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(msg)?;
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got)?;
    Ok(got)
}

/// One `iperf3` TCP stream of `secs` seconds from netns `client` to a
/// one-shot server on `server_ip` in netns `server`: (Gbit/s received,
/// sender retransmits), from iperf3's JSON report.
pub fn iperf(client: &str, server: &str, server_ip: Ipv4Addr, secs: u64) -> (f64, u64) {
    let ip = server_ip.to_string();
    let mut srv = ns_command(server, &["iperf3", "-s", "-1", "-B", &ip])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 server (apt-get install iperf3)");
    std::thread::sleep(Duration::from_millis(500));
    let out = ns_cmd(
        client,
        &["iperf3", "-c", &ip, "-t", &secs.to_string(), "-J"],
    );
    let _ = srv.wait();
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "iperf3 output is not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let end = &j["end"];
    (
        end["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or(0.0)
            / 1e9,
        end["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
    )
}
