//! Facts about the host read without privileges: its name, the address of the interface
//! that holds the default route (the address services are advertised on by default), and
//! the ports host services listen on (a group must not map one of them).

use super::spec::HostFacts;
use crate::error::{Context, Error};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const ROUTE_TABLE: &str = "/proc/net/route";
const RTF_UP: u32 = 0x1;

pub fn host_facts() -> HostFacts {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let (default_address, default_address_source) = match default_route_address() {
        Ok((iface, ip)) => (
            ip,
            format!("address of {iface}, which holds the default route"),
        ),
        Err(why) => (
            Ipv4Addr::LOCALHOST,
            format!("{why}; set network.advertise_address"),
        ),
    };
    HostFacts {
        hostname,
        default_address,
        default_address_source,
        listening_ports: listeners().iter().map(|l| l.port).collect(),
    }
}

/// A socket of the host's network namespace that listens (TCP) or is bound (UDP).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub proto: &'static str,
    pub address: IpAddr,
    pub port: u16,
    inode: u64,
}

impl Listener {
    /// `tcp 127.0.0.1:8500 (consul, pid 812)`, the owner when it can be found.
    pub fn describe(&self) -> String {
        let owner = owner_of(self.inode)
            .map(|(pid, name)| format!(" ({name}, pid {pid})"))
            .unwrap_or_default();
        let address = match self.address {
            IpAddr::V6(ip) => format!("[{ip}]"),
            IpAddr::V4(ip) => ip.to_string(),
        };
        format!("{} {address}:{}{owner}", self.proto, self.port)
    }
}

/// The host's listening TCP and bound UDP sockets, IPv4 and IPv6.
pub fn listeners() -> Vec<Listener> {
    let mut all = Vec::new();
    for (file, proto, wanted_state) in [
        ("/proc/net/tcp", "tcp", "0A"),
        ("/proc/net/tcp6", "tcp", "0A"),
        ("/proc/net/udp", "udp", "07"),
        ("/proc/net/udp6", "udp", "07"),
    ] {
        if let Ok(text) = std::fs::read_to_string(file) {
            all.extend(parse_sockets(&text, proto, wanted_state));
        }
    }
    all
}

/// Lines of /proc/net/{tcp,udp}[6] (`sl local_address rem_address st … uid timeout inode`)
/// in state `wanted_state` (0A: TCP LISTEN; 07: an unconnected UDP socket).
fn parse_sockets(text: &str, proto: &'static str, wanted_state: &str) -> Vec<Listener> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if *cols.get(3)? != wanted_state {
                return None;
            }
            let (ip, port) = cols.get(1)?.split_once(':')?;
            Some(Listener {
                proto,
                address: kernel_address(ip)?,
                port: u16::from_str_radix(port, 16).ok()?,
                inode: cols.get(9)?.parse().ok()?,
            })
        })
        .collect()
}

/// The kernel prints addresses as 32-bit words in host order, each in hex.
fn kernel_address(hex: &str) -> Option<IpAddr> {
    let words: Vec<u32> = (0..hex.len() / 8)
        .map(|i| u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok())
        .collect::<Option<_>>()?;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    match bytes.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        16 => <[u8; 16]>::try_from(bytes)
            .ok()
            .map(|b| IpAddr::V6(Ipv6Addr::from(b))),
        _ => None,
    }
}

/// The process holding the socket `inode`: its pid and name, found in /proc/*/fd.
fn owner_of(inode: u64) -> Option<(i32, String)> {
    let wanted = format!("socket:[{inode}]");
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let holds = std::fs::read_dir(entry.path().join("fd"))
                .ok()?
                .flatten()
                .any(|fd| {
                    std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == wanted.as_str())
                });
            let name = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            holds.then(|| (pid, name.trim().to_string()))
        })
}

fn default_route_address() -> Result<(String, Ipv4Addr), Error> {
    let table = std::fs::read_to_string(ROUTE_TABLE)
        .with_context(|| format!("cannot read {ROUTE_TABLE}"))?;
    let iface = default_route_interface(&table).ok_or("no IPv4 default route")?;
    let addrs = nix::ifaddrs::getifaddrs().context("cannot list addresses")?;
    addrs
        .filter(|a| a.interface_name == iface)
        .find_map(|a| a.address?.as_sockaddr_in().map(|s| s.ip()))
        .map(|ip| (iface.clone(), ip))
        .ok_or_else(|| {
            Error::permanent(format!(
                "default route interface {iface} has no IPv4 address"
            ))
        })
}

/// The interface of the up default route with the lowest metric, from /proc/net/route
/// (columns: Iface Destination Gateway Flags RefCnt Use Metric Mask ...).
fn default_route_interface(table: &str) -> Option<String> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let flags = u32::from_str_radix(cols.get(3)?, 16).ok()?;
            let metric: u32 = cols.get(6)?.parse().ok()?;
            let is_default = *cols.get(1)? == "00000000" && *cols.get(7)? == "00000000";
            (is_default && flags & RTF_UP != 0).then(|| (metric, cols[0].to_string()))
        })
        .min()
        .map(|(_, iface)| iface)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_lowest_metric_default_route() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
wlan0\t00000000\t0100A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n\
eth0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
eth0\t0001A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(default_route_interface(table).as_deref(), Some("eth0"));
        assert_eq!(default_route_interface("Iface\tDestination\n"), None);
    }

    #[test]
    fn reads_listening_sockets_as_the_kernel_prints_them() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:2134 00000000:0000 0A 00000000:00000000 00:00000000 00000000   100        0 4242 1 0 100 0 0 10 0\n\
   1: 0100007F:2134 0100007F:D2C4 01 00000000:00000000 00:00000000 00000000   100        0 4243 1 0 100 0 0 10 0\n";
        let found = parse_sockets(tcp, "tcp", "0A");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].address, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(found[0].port, 8500);
        let tcp6 = "header\n   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 0:0 0:0 0 0 0 77\n";
        let found = parse_sockets(tcp6, "tcp", "0A");
        assert_eq!(found[0].address, IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(found[0].port, 8080);
    }
}
