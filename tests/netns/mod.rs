//! A network namespace of its own for one process, so a test can cut it off from the broker,
//! MariaDB and the S3 server like a separate host whose network fails, on this machine only.
//!
//! [`Netns::create`] makes namespace `rc-<random>` and a veth pair (`10.213.N.1` on this side,
//! `10.213.N.2` inside), then relays each service port: inside the namespace `127.0.0.1:P`
//! (where the consumer connects, and what the broker advertises) forwards to `10.213.N.1:P`,
//! which forwards to the real service on this side's `127.0.0.1:P`. [`Netns::cut`] takes the
//! link down: connections stall, as on a real partition (no resets). Dropping it removes the
//! namespace and the pair. Traffic goes only to these addresses and to loopback.
//!
//! Needs root (`ip netns`, `setns`); [`Netns::create`] returns why not otherwise.

#![allow(dead_code)]

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;

pub struct Netns {
    pub name: String,
    host_if: String,
    pub host_ip: Ipv4Addr,
    pub ns_ip: Ipv4Addr,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip` ({e}); install iproute2"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    /// Creates the namespace, the veth pair and the relays of `ports`; `Err` says why it cannot
    /// (not root, no `ip`).
    pub fn create(ports: &[u16]) -> Result<Netns, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("network namespaces need root (ip netns, setns)".into());
        }
        let tag: u16 = rand::random::<u16>() % 250 + 1;
        let id = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
        let ns = Netns {
            name: format!("rc-{id}"),
            host_if: format!("rch{id}"),
            host_ip: Ipv4Addr::new(10, 213, tag as u8, 1),
            ns_ip: Ipv4Addr::new(10, 213, tag as u8, 2),
        };
        let peer = format!("rcn{id}");
        ip(&["netns", "add", &ns.name])?;
        // From here on, Drop cleans up.
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ])?;
        ip(&["link", "set", &peer, "netns", &ns.name])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/30", ns.host_ip),
            "dev",
            &ns.host_if,
        ])?;
        ip(&["link", "set", &ns.host_if, "up"])?;
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &ns.name, "ip"];
            all.extend_from_slice(args);
            ip(&all)
        };
        inside(&["addr", "add", &format!("{}/30", ns.ns_ip), "dev", &peer])?;
        inside(&["link", "set", &peer, "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        for &port in ports {
            // This side: 10.213.N.1:P -> 127.0.0.1:P.
            let outer = TcpListener::bind((ns.host_ip, port))
                .map_err(|e| format!("bind {}:{port}: {e}", ns.host_ip))?;
            relay(outer, SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
            // Inside: 127.0.0.1:P -> 10.213.N.1:P, from a thread that entered the namespace
            // (threads it starts stay there, and so do their sockets).
            let path = format!("/var/run/netns/{}", ns.name);
            let target = SocketAddr::from((ns.host_ip, port));
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let entered = File::open(&path).and_then(|f| {
                    // SAFETY: a valid namespace fd; only this thread changes namespace.
                    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } == 0 {
                        Ok(())
                    } else {
                        Err(io::Error::last_os_error())
                    }
                });
                let bound = entered
                    .and_then(|()| TcpListener::bind((Ipv4Addr::LOCALHOST, port)))
                    .map_err(|e| format!("inside {path}: 127.0.0.1:{port}: {e}"));
                match bound {
                    Ok(listener) => {
                        let _ = tx.send(Ok(()));
                        accept_loop(listener, target);
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
            rx.recv().map_err(|e| e.to_string())??;
        }
        Ok(ns)
    }

    /// Takes the link down: the namespace reaches nothing but itself.
    pub fn cut(&self) {
        ip(&["link", "set", &self.host_if, "down"]).unwrap();
    }

    /// Brings the link back up (stalled connections resume).
    pub fn restore(&self) {
        ip(&["link", "set", &self.host_if, "up"]).unwrap();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace destroys its end of the pair, which destroys both.
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.host_if]);
    }
}

fn relay(listener: TcpListener, target: SocketAddr) {
    std::thread::spawn(move || accept_loop(listener, target));
}

/// Forwards every connection to `target`, both ways, until either side closes.
fn accept_loop(listener: TcpListener, target: SocketAddr) {
    for conn in listener.incoming() {
        let Ok(client) = conn else { continue };
        std::thread::spawn(move || {
            let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(5)) else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (mut c1, mut s1) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (mut c2, mut s2) = (client, server);
            std::thread::spawn(move || {
                let _ = io::copy(&mut c1, &mut s1);
                let _ = s1.shutdown(std::net::Shutdown::Write);
            });
            let _ = io::copy(&mut s2, &mut c2);
            let _ = c2.shutdown(std::net::Shutdown::Write);
        });
    }
}
