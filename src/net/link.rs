//! rtnetlink operations: links (bridge, veth), IPv4 and IPv6 addresses and default routes. Each
//! function works in the namespace its socket was opened in.

use super::netlink::{
    Message, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, Socket,
    attr_string, attrs,
};
use neli::consts::socket::NlFamily;
use std::io;
use std::net::IpAddr;
use std::os::fd::RawFd;

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;

const AF_INET: u8 = 2;
const IFF_UP: u32 = 1;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_STATIC: u8 = 4;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: i32,
    pub name: String,
    pub kind: Option<String>,
    pub master: Option<i32>,
    pub up: bool,
    pub mac: Vec<u8>,
}

/// The loopback device's index in every network namespace.
pub const LOOPBACK_INDEX: i32 = 1;

pub fn open() -> io::Result<Socket> {
    Socket::open(NlFamily::Route)
}

fn ifinfomsg(index: i32, flags: u32, change: u32) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h[8..12].copy_from_slice(&flags.to_ne_bytes());
    h[12..16].copy_from_slice(&change.to_ne_bytes());
    h
}

fn parse_link(payload: &[u8]) -> Option<Link> {
    let header = payload.get(..16)?;
    let index = i32::from_ne_bytes(header[4..8].try_into().ok()?);
    let flags = u32::from_ne_bytes(header[8..12].try_into().ok()?);
    let mut link = Link {
        index,
        name: String::new(),
        kind: None,
        master: None,
        up: flags & IFF_UP != 0,
        mac: Vec::new(),
    };
    for (attr_type, value) in attrs(&payload[16..]) {
        match attr_type {
            IFLA_IFNAME => link.name = attr_string(value),
            IFLA_ADDRESS => link.mac = value.to_vec(),
            IFLA_MASTER => link.master = value.try_into().ok().map(i32::from_ne_bytes),
            IFLA_LINKINFO => {
                link.kind = attrs(value)
                    .find(|(t, _)| *t == IFLA_INFO_KIND)
                    .map(|(_, kind)| attr_string(kind));
            }
            _ => {}
        }
    }
    Some(link)
}

/// The link called `name`, if any.
pub fn get(sock: &mut Socket, name: &str) -> io::Result<Option<Link>> {
    let mut m = Message::new(RTM_GETLINK, NLM_F_REQUEST).header(&ifinfomsg(0, 0, 0));
    m.attr_str(IFLA_IFNAME, name);
    match sock.dump(m) {
        Ok(answers) => Ok(answers.iter().find_map(|a| parse_link(&a.payload))),
        Err(e) if e.raw_os_error() == Some(nix::libc::ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn list(sock: &mut Socket) -> io::Result<Vec<Link>> {
    let m = Message::new(RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP).header(&ifinfomsg(0, 0, 0));
    Ok(sock
        .dump(m)?
        .iter()
        .filter(|a| a.msg_type == RTM_NEWLINK)
        .filter_map(|a| parse_link(&a.payload))
        .collect())
}

/// Creates a bridge with a fixed MAC (so its address does not follow whichever port has
/// the lowest MAC as groups come and go), up.
pub fn create_bridge(sock: &mut Socket, name: &str, mac: [u8; 6]) -> io::Result<()> {
    let mut m = Message::new(
        RTM_NEWLINK,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
    )
    .header(&ifinfomsg(0, IFF_UP, IFF_UP));
    m.attr_str(IFLA_IFNAME, name);
    m.attr(IFLA_ADDRESS, &mac);
    m.begin_nest(IFLA_LINKINFO);
    m.attr_str(IFLA_INFO_KIND, "bridge");
    m.end_nest();
    sock.request(m)
}

/// One RTM_NEWLINK makes the pair: the host end `host_name` attached to `master` and up,
/// the peer created directly inside the namespace `peer_netns_fd` as `peer_name`.
pub fn create_veth(
    sock: &mut Socket,
    host_name: &str,
    master: i32,
    peer_name: &str,
    peer_netns_fd: RawFd,
) -> io::Result<()> {
    let mut m = Message::new(
        RTM_NEWLINK,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
    )
    .header(&ifinfomsg(0, IFF_UP, IFF_UP));
    m.attr_str(IFLA_IFNAME, host_name);
    m.attr_u32(IFLA_MASTER, master as u32);
    m.begin_nest(IFLA_LINKINFO);
    m.attr_str(IFLA_INFO_KIND, "veth");
    m.begin_nest(IFLA_INFO_DATA);
    m.begin_nest(VETH_INFO_PEER);
    // Not up here: the kernel configures the peer before the host end exists, and a veth
    // cannot open without its partner (ENOTCONN).
    m.raw(&ifinfomsg(0, 0, 0));
    m.attr_str(IFLA_IFNAME, peer_name);
    m.attr_u32(IFLA_NET_NS_FD, peer_netns_fd as u32);
    m.end_nest();
    m.end_nest();
    m.end_nest();
    sock.request(m)
}

pub fn set_up(sock: &mut Socket, index: i32) -> io::Result<()> {
    sock.request(set_up_msg(index))
}

pub const IPV4_DEVCONF_RP_FILTER: u16 = 8;
pub const IPV4_DEVCONF_ARP_NOTIFY: u16 = 22;

/// Link up plus per-interface IPv4 settings (`net.ipv4.conf.<if>.*`) in one request:
/// IFLA_AF_SPEC / AF_INET / IFLA_INET_CONF, one attribute per setting.
pub fn set_up_with_ipv4_conf_msg(index: i32, conf: &[(u16, u32)]) -> Message {
    const IFLA_AF_SPEC: u16 = 26;
    const IFLA_INET_CONF: u16 = 1;
    let mut m = set_up_msg(index);
    m.begin_nest(IFLA_AF_SPEC);
    m.begin_nest(u16::from(AF_INET));
    m.begin_nest(IFLA_INET_CONF);
    for (key, value) in conf {
        m.attr_u32(*key, *value);
    }
    m.end_nest();
    m.end_nest();
    m.end_nest();
    m
}

/// The request behind `set_up`, for sending several requests in one write.
pub fn set_up_msg(index: i32) -> Message {
    Message::new(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK).header(&ifinfomsg(index, IFF_UP, IFF_UP))
}

pub fn set_master(sock: &mut Socket, index: i32, master: i32) -> io::Result<()> {
    let mut m =
        Message::new(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK).header(&ifinfomsg(index, 0, 0));
    m.attr_u32(IFLA_MASTER, master as u32);
    sock.request(m)
}

/// Hairpin mode on a bridge port: a frame may leave through the port it came in on. Needed
/// when br_netfilter DNATs a group's own traffic to a mapped host port back to itself.
pub fn set_hairpin(sock: &mut Socket, index: i32) -> io::Result<()> {
    const AF_BRIDGE: u8 = 7;
    const IFLA_PROTINFO: u16 = 12;
    const IFLA_BRPORT_MODE: u16 = 4;
    // PF_BRIDGE handles only RTM_SETLINK; an RTM_NEWLINK would reach the generic handler,
    // which ignores IFLA_PROTINFO without an error.
    const RTM_SETLINK: u16 = 19;
    let mut header = ifinfomsg(index, 0, 0);
    header[0] = AF_BRIDGE;
    let mut m = Message::new(RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK).header(&header);
    m.begin_nest(IFLA_PROTINFO);
    m.attr(IFLA_BRPORT_MODE, &[1]);
    m.end_nest();
    sock.request(m)
}

pub fn delete(sock: &mut Socket, index: i32) -> io::Result<()> {
    let m = Message::new(RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK).header(&ifinfomsg(index, 0, 0));
    match sock.request(m) {
        Err(e) if e.raw_os_error() == Some(nix::libc::ENODEV) => Ok(()),
        other => other,
    }
}

const AF_INET6: u8 = 10;
/// No duplicate address detection: the address is usable at once, not "tentative" for a
/// second or two (nothing else on the bridge can hold it; netavark sets accept_dad=0).
const IFA_F_NODAD: u8 = 0x02;

fn family_of(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { AF_INET } else { AF_INET6 }
}

fn ifaddrmsg(family: u8, prefix: u8, flags: u8, index: i32) -> [u8; 8] {
    let mut h = [0u8; 8];
    h[0] = family;
    h[1] = prefix;
    h[2] = flags;
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h
}

fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// The addresses outpost manages on a link, with prefix lengths: every IPv4 one, and the
/// IPv6 ones of global scope (the kernel's own link-local `fe80::` address stays).
pub fn addresses(sock: &mut Socket, index: i32) -> io::Result<Vec<(IpAddr, u8)>> {
    let m = Message::new(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP).header(&ifaddrmsg(0, 0, 0, 0));
    let mut found = Vec::new();
    for answer in sock.dump(m)? {
        let p = &answer.payload;
        if answer.msg_type != RTM_NEWADDR || p.len() < 8 {
            continue;
        }
        if i32::from_ne_bytes([p[4], p[5], p[6], p[7]]) != index {
            continue;
        }
        let (family, prefix, scope) = (p[0], p[1], p[3]);
        let ip = match family {
            AF_INET => attrs(&p[8..])
                .find(|(t, v)| *t == IFA_LOCAL && v.len() == 4)
                .and_then(|(_, v)| <[u8; 4]>::try_from(v).ok())
                .map(IpAddr::from),
            AF_INET6 if scope == RT_SCOPE_UNIVERSE => attrs(&p[8..])
                .find(|(t, v)| *t == IFA_ADDRESS && v.len() == 16)
                .and_then(|(_, v)| <[u8; 16]>::try_from(v).ok())
                .map(IpAddr::from),
            _ => None,
        };
        if let Some(ip) = ip {
            found.push((ip, prefix));
        }
    }
    Ok(found)
}

/// Makes `wanted` (address, prefix length) the only addresses outpost manages on the link:
/// others are removed (an IPv6 address left from a dual-stack config too), missing ones
/// added. Idempotent.
pub fn set_addresses(sock: &mut Socket, index: i32, wanted: &[(IpAddr, u8)]) -> io::Result<()> {
    let present = addresses(sock, index)?;
    for &(other, other_prefix) in &present {
        if !wanted.contains(&(other, other_prefix)) {
            let family = family_of(other);
            let mut m = Message::new(RTM_DELADDR, NLM_F_REQUEST | NLM_F_ACK).header(&ifaddrmsg(
                family,
                other_prefix,
                0,
                index,
            ));
            m.attr(
                if family == AF_INET {
                    IFA_LOCAL
                } else {
                    IFA_ADDRESS
                },
                &octets(other),
            );
            sock.request(m)?;
        }
    }
    for &(ip, prefix) in wanted {
        sock.request(add_address_msg(index, ip, prefix))?;
    }
    Ok(())
}

/// The request that adds (or refreshes) one address on a link; IPv6 ones skip duplicate
/// address detection.
pub fn add_address_msg(index: i32, ip: IpAddr, prefix: u8) -> Message {
    let family = family_of(ip);
    let flags = if family == AF_INET6 { IFA_F_NODAD } else { 0 };
    let mut m = Message::new(
        RTM_NEWADDR,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
    )
    .header(&ifaddrmsg(family, prefix, flags, index));
    m.attr(IFA_LOCAL, &octets(ip));
    m.attr(IFA_ADDRESS, &octets(ip));
    m
}

/// `ip route replace default via <gateway> dev <index>` in the main table, for the
/// gateway's family.
pub fn replace_default_route(sock: &mut Socket, gateway: IpAddr, index: i32) -> io::Result<()> {
    sock.request(default_route_msg(gateway, index))
}

/// Removes the IPv6 default route, if any (a bridge that was dual-stack and is no more).
pub fn delete_ipv6_default_route(sock: &mut Socket) -> io::Result<()> {
    const RTM_DELROUTE: u16 = 25;
    let header = [
        AF_INET6,
        0,
        0,
        0,
        RT_TABLE_MAIN,
        0,
        RT_SCOPE_UNIVERSE,
        0,
        0,
        0,
        0,
        0,
    ];
    let m = Message::new(RTM_DELROUTE, NLM_F_REQUEST | NLM_F_ACK).header(&header);
    match sock.request(m) {
        // No such route: ESRCH, or ENOENT from newer kernels' nexthop lookup.
        Err(e) if matches!(e.raw_os_error(), Some(nix::libc::ESRCH | nix::libc::ENOENT)) => Ok(()),
        other => other,
    }
}

/// The request behind `replace_default_route`.
pub fn default_route_msg(gateway: IpAddr, index: i32) -> Message {
    let header = [
        family_of(gateway),
        0,
        0,
        0,
        RT_TABLE_MAIN,
        RTPROT_STATIC,
        RT_SCOPE_UNIVERSE,
        RTN_UNICAST,
        0,
        0,
        0,
        0,
    ];
    let mut m = Message::new(
        RTM_NEWROUTE,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
    )
    .header(&header);
    m.attr(RTA_GATEWAY, &octets(gateway));
    m.attr_u32(RTA_OIF, index as u32);
    m
}
