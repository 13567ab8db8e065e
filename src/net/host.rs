//! Facts about the host read without privileges: its name and the address of the interface
//! that holds the default route (the address services are advertised on by default).

use crate::plan::HostFacts;
use std::net::Ipv4Addr;

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
    }
}

fn default_route_address() -> Result<(String, Ipv4Addr), String> {
    let table = std::fs::read_to_string(ROUTE_TABLE)
        .map_err(|e| format!("cannot read {ROUTE_TABLE}: {e}"))?;
    let iface = default_route_interface(&table).ok_or("no IPv4 default route")?;
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| format!("cannot list addresses: {e}"))?;
    addrs
        .filter(|a| a.interface_name == iface)
        .find_map(|a| a.address?.as_sockaddr_in().map(|s| s.ip()))
        .map(|ip| (iface.clone(), ip))
        .ok_or_else(|| format!("default route interface {iface} has no IPv4 address"))
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
}
