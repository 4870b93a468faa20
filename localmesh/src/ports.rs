//! Free loopback ports.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, OnceLock};

fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static SET: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    SET.get_or_init(|| Mutex::new(HashSet::new()))
}

/// Returns a TCP port on 127.0.0.1 that was free a moment ago (bind `127.0.0.1:0`, read the port,
/// drop the listener). A process-wide set guarantees the same port is never handed out twice in
/// one test process.
///
/// Panics only if the OS refuses to give out loopback ports at all (nothing a test can recover
/// from).
pub fn free_port() -> u16 {
    let mut last_err = None;
    for _ in 0..1000 {
        match TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|l| l.local_addr()) {
            Ok(addr) => {
                let port = addr.port();
                let mut set = handed_out().lock().unwrap_or_else(|e| e.into_inner());
                if set.insert(port) {
                    return port;
                }
            }
            Err(e) => last_err = Some(e),
        }
    }
    panic!(
        "could not find a free loopback port after 1000 attempts (last bind error: {last_err:?})"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_unique_and_bindable() {
        let mut seen = HashSet::new();
        for _ in 0..200 {
            let p = free_port();
            assert_ne!(p, 0);
            assert!(seen.insert(p), "port {p} handed out twice");
        }
        let p = free_port();
        TcpListener::bind((Ipv4Addr::LOCALHOST, p)).unwrap();
    }
}
