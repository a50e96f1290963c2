//! Replicas on separate "hosts": Linux network namespaces joined by a bridge
//! (DESIGN §7: "replicas in network namespaces with `ip route add
//! blackhole`"). Needs root and iproute2's `ip`; [`Hosts::available`] says
//! why not otherwise, and the scenarios that use it SKIP with that reason.
//!
//! Layout of one run with prefix `qkv<pid>n<k>` and subnet `10.77.<s>.0/24`:
//! - namespace `<prefix>h` (the hub) holds bridge `br0`;
//! - namespace `<prefix>r<id>` holds replica `id` with `eth0` =
//!   `10.77.<s>.<id>/24`, a veth whose other end (`r<id>`) is a bridge port;
//! - the driver's own namespace gets veth `<prefix>` = `10.77.<s>.254/24`,
//!   also bridged, so the driver reaches every replica directly.
//!
//! A partition is a `blackhole` route inside the replica namespaces: packets
//! to the blackholed address are dropped and new connections fail, while the
//! driver's own path to every replica stays up. Each one is verified: the
//! route is listed, and the kernel refuses to route to the address.
//!
//! Cleanup: deleting the namespaces removes every veth and the bridge, and
//! [`Hosts`] does so on drop (also on panic). A run killed before its drop
//! leaves them behind; [`Hosts::create`] first removes every namespace and
//! link with the `qkv<pid>n` prefix whose pid is no longer alive.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

/// Every name this module creates starts with this, then the owner's pid.
const PREFIX: &str = "qkv";

/// The first two octets of every run's subnet.
const NET: &str = "10.77";

/// The driver's host number in each subnet.
const DRIVER_HOST: u8 = 254;

/// Makes prefixes unique within one process.
static RUN_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Replica hosts in network namespaces; removed on drop.
pub struct Hosts {
    /// `qkv<pid>n<k>`: namespaces are `<prefix>h`, `<prefix>r<id>`; the
    /// driver-side veth is `<prefix>` itself (at most 15 bytes).
    prefix: String,
    /// The third octet of this run's subnet.
    subnet: u8,
    /// Number of replicas.
    replicas: usize,
    /// Blackhole routes in place: (in the namespace of, to the address of).
    blackholes: Vec<(usize, usize)>,
}

impl Hosts {
    /// Whether namespaces can be used here: root, `ip` present and working.
    pub fn available() -> Result<(), String> {
        let uid = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Uid:"))
                    .and_then(|l| l.split_whitespace().nth(1).map(String::from))
            })
            .unwrap_or_default();
        if uid != "0" {
            return Err(format!("needs root for network namespaces (effective uid {uid})"));
        }
        match Command::new("ip").args(["netns", "list"]).stdin(Stdio::null()).output() {
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => Err(format!(
                "`ip netns list` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim_end()
            )),
            Err(e) => Err(format!("no usable `ip` command (iproute2): {e}")),
        }
    }

    /// Creates the namespaces, bridge and addresses for `replicas` hosts.
    pub fn create(replicas: usize) -> Result<Hosts, String> {
        Hosts::available()?;
        if replicas == 0 || replicas >= usize::from(DRIVER_HOST) {
            return Err(format!("{replicas} replicas do not fit a /24 next to the driver"));
        }
        remove_stale();
        let k = RUN_COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{PREFIX}{}n{k}", std::process::id());
        if prefix.len() > 15 {
            return Err(format!("interface name {prefix} is longer than 15 bytes"));
        }
        let subnet = free_subnet(k)?;
        let mut hosts = Hosts { prefix, subnet, replicas, blackholes: Vec::new() };
        // On an error the partly built hosts drop and clean up.
        hosts.build()?;
        Ok(hosts)
    }

    /// Creates everything; see the module docs for the layout.
    fn build(&mut self) -> Result<(), String> {
        let hub = self.hub();
        ip(&["netns", "add", &hub])?;
        ip(&["-n", &hub, "link", "set", "lo", "up"])?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        for id in 1..=self.replicas {
            let ns = self.namespace(id);
            let port = format!("r{id}");
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port,
                "netns", &hub,
            ])?;
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", self.ip(id)), "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &hub, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &hub, "link", "set", &port, "up"])?;
        }
        let me = self.prefix.clone();
        ip(&["link", "add", &me, "type", "veth", "peer", "name", "drv", "netns", &hub])?;
        let driver_addr = format!("{NET}.{}.{DRIVER_HOST}/24", self.subnet);
        ip(&["addr", "add", &driver_addr, "dev", &me])?;
        ip(&["link", "set", &me, "up"])?;
        ip(&["-n", &hub, "link", "set", "drv", "master", "br0"])?;
        ip(&["-n", &hub, "link", "set", "drv", "up"])?;
        Ok(())
    }

    /// The hub namespace's name.
    fn hub(&self) -> String {
        format!("{}h", self.prefix)
    }

    /// Replica `id`'s namespace.
    pub fn namespace(&self, id: usize) -> String {
        format!("{}r{id}", self.prefix)
    }

    /// Replica `id`'s address.
    pub fn ip(&self, id: usize) -> String {
        format!("{NET}.{}.{id}", self.subnet)
    }

    /// The command prefix that runs a program in replica `id`'s namespace.
    pub fn launcher(&self, id: usize) -> Vec<String> {
        ["ip", "netns", "exec"].iter().map(|s| s.to_string()).chain([self.namespace(id)]).collect()
    }

    /// Placements for a cluster: replica `id` on its own address at `port`.
    pub fn placements(&self, port: u16) -> Vec<crate::cluster::Placement> {
        (1..=self.replicas)
            .map(|id| crate::cluster::Placement {
                host: self.ip(id),
                port,
                launcher: self.launcher(id),
            })
            .collect()
    }

    /// Blackholes traffic from `from` to `to` (a route in `from`'s namespace)
    /// and verifies the kernel refuses to route there.
    pub fn blackhole(&mut self, from: usize, to: usize) -> Result<(), String> {
        let (ns, addr) = (self.namespace(from), self.ip(to));
        ip(&["-n", &ns, "route", "add", "blackhole", &format!("{addr}/32")])?;
        self.blackholes.push((from, to));
        self.check_blackhole(from, to)
    }

    /// Checks `from`'s namespace lists a blackhole route to `to` and the
    /// kernel refuses to route there.
    pub fn check_blackhole(&self, from: usize, to: usize) -> Result<(), String> {
        let (ns, addr) = (self.namespace(from), self.ip(to));
        let listed = ip(&["-n", &ns, "route", "show", "type", "blackhole"])?;
        if !listed.lines().any(|l| l.split_whitespace().any(|w| w == addr)) {
            return Err(format!("{ns} lists no blackhole route to {addr}: {listed:?}"));
        }
        match ip(&["-n", &ns, "route", "get", &addr]) {
            Ok(route) => Err(format!("{ns} still routes to {addr}: {}", route.trim_end())),
            Err(_) => Ok(()),
        }
    }

    /// Isolates replica `id` from every other replica, both ways.
    pub fn isolate(&mut self, id: usize) -> Result<(), String> {
        for other in (1..=self.replicas).filter(|&o| o != id) {
            self.blackhole(id, other)?;
            self.blackhole(other, id)?;
        }
        Ok(())
    }

    /// Removes every blackhole route, and checks each address routes again.
    pub fn heal(&mut self) -> Result<(), String> {
        for (from, to) in std::mem::take(&mut self.blackholes) {
            let (ns, addr) = (self.namespace(from), self.ip(to));
            ip(&["-n", &ns, "route", "del", "blackhole", &format!("{addr}/32")])?;
            ip(&["-n", &ns, "route", "get", &addr])
                .map_err(|e| format!("{ns} cannot route to {addr} after the heal: {e}"))?;
        }
        Ok(())
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veths, and with them their peers.
        for id in 1..=self.replicas {
            let _ = ip(&["netns", "del", &self.namespace(id)]);
        }
        let _ = ip(&["netns", "del", &self.hub()]);
        let _ = ip(&["link", "del", &self.prefix]);
    }
}

/// Runs `ip args...`; its stdout, or an error with its stderr.
fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim_end()))
    }
}

/// The pid in a name `qkv<pid>n...`, if it has that form.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    if digits.is_empty() || !rest[digits.len()..].starts_with('n') {
        return None;
    }
    digits.parse().ok()
}

/// Whether a name was made by a driver whose process is gone.
fn is_stale(name: &str) -> bool {
    owner_pid(name).is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
}

/// Removes namespaces and root-namespace links left by killed runs.
fn remove_stale() {
    if let Ok(list) = ip(&["netns", "list"]) {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if is_stale(name) {
                let _ = ip(&["netns", "del", name]);
            }
        }
    }
    if let Ok(links) = ip(&["-o", "link", "show"]) {
        // Lines look like `12: qkv123n0@if11: <...`.
        for link in links.lines().filter_map(|l| l.split(": ").nth(1)) {
            let name = link.split('@').next().unwrap_or(link);
            if is_stale(name) {
                let _ = ip(&["link", "del", name]);
            }
        }
    }
}

/// A third octet for `10.77.x.0/24` that no address or route here uses yet.
fn free_subnet(k: u64) -> Result<u8, String> {
    let used = ip(&["-4", "-o", "addr", "show"])? + &ip(&["-4", "route", "show"])?;
    let start = (u64::from(std::process::id()) + k * 37) % 250;
    (0..250)
        .map(|i| ((start + i) % 250 + 1) as u8)
        .find(|s| !used.contains(&format!("{NET}.{s}.")))
        .ok_or_else(|| format!("no free subnet in {NET}.0.0/16"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_their_owner_pid() {
        assert_eq!(owner_pid("qkv1234n0h"), Some(1234));
        assert_eq!(owner_pid("qkv1234n12r3"), Some(1234));
        assert_eq!(owner_pid("qkvx"), None);
        assert_eq!(owner_pid("qkv12"), None);
        assert_eq!(owner_pid("eth0"), None);
        assert!(!is_stale(&format!("qkv{}n0h", std::process::id())));
    }
}
