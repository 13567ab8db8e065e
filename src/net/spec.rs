//! What `net` is asked to make: the plan produces these (`plan` re-exports them), `net`
//! reads nothing else of the plan, so the arrows point one way: plan -> net.

pub use crate::config::naming::IfName;
use crate::config::{Ipv4Net, Ipv6Net};
use miniserde::Serialize;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// Facts about the host the plan depends on, gathered by the caller (`net::host_facts`).
#[derive(Clone, Debug)]
pub struct HostFacts {
    pub hostname: String,
    /// Used when `network.advertise_address` is not set.
    pub default_address: Ipv4Addr,
    /// Where `default_address` came from, for the plan's reader.
    pub default_address_source: String,
    /// Ports host services listen on (TCP) or are bound to (UDP): dynamic ports of bridge
    /// groups are kept off them.
    pub listening_ports: BTreeSet<u16>,
}

impl HostFacts {
    /// Stand-in facts for checks that only need the plan's shape (variable names), not its
    /// values.
    pub fn placeholder() -> HostFacts {
        HostFacts {
            hostname: "localhost".into(),
            default_address: Ipv4Addr::LOCALHOST,
            default_address_source: "placeholder".into(),
            listening_ports: BTreeSet::new(),
        }
    }
}

/// Who owns the NAT and filter rules (`network.firewall`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firewall {
    /// outpost's nf_tables table: port mappings, masquerade, forward filter, martian drop.
    Nftables,
    /// None of it: the admin's own rules map ports and filter.
    None,
}

impl Firewall {
    /// From `network.firewall` as validated (`nftables` or `none`).
    pub fn from_config(name: &str) -> Firewall {
        if name == "none" {
            Firewall::None
        } else {
            Firewall::Nftables
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Firewall::Nftables => "nftables",
            Firewall::None => "none",
        }
    }
}

serialize_as_str!(Firewall);

#[derive(Clone, Debug, Serialize)]
pub struct BridgePlan {
    pub name: IfName,
    pub address: String,
    pub subnet: Ipv4Net,
    /// The bridge's IPv6 address (gateway/prefix) on a dual-stack bridge.
    pub address_ipv6: Option<String>,
    pub subnet_ipv6: Option<Ipv6Net>,
    pub firewall: Firewall,
    /// The NAT rules every bridge group shares (nft syntax), if the firewall is ours.
    pub firewall_rules: Vec<String>,
}

/// Consul SDK's traffic-redirection config as Nomad fills it (reference/nomad-connect.md
/// §9), and the rules it becomes.
#[derive(Debug, Serialize)]
pub struct TproxyPlan {
    /// Envoy's uid: its own outbound traffic is not redirected (Nomad's default 101).
    pub proxy_uid: String,
    /// Envoy's public listener (the sidecar port inside the namespace).
    pub inbound_port: u16,
    /// Envoy's outbound listener (15001 unless set).
    pub outbound_port: u16,
    /// Sorted, de-duplicated: static ports, `exclude_inbound_ports`, expose listeners.
    pub exclude_inbound_ports: Vec<String>,
    pub exclude_outbound_ports: Vec<u16>,
    pub exclude_outbound_cidrs: Vec<String>,
    pub exclude_uids: Vec<String>,
    /// Consul's DNS (`consul.dns_address`) unless `no_dns`.
    pub dns: Option<String>,
    /// The nf_tables rules (nft syntax) installed in the namespace.
    pub rules: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct NetnsPlan {
    pub name: String,
    pub path: String,
    pub host_veth: IfName,
    pub interface: IfName,
    pub address: String,
    pub gateway: String,
    /// The group's IPv6 address/prefix and default gateway on a dual-stack bridge.
    pub address_ipv6: Option<String>,
    pub gateway_ipv6: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct PortPlan {
    pub label: String,
    pub host_port: u16,
    /// The port inside the group's namespace (equal to `host_port` in host mode).
    pub netns_port: u16,
    pub dynamic: bool,
    /// Added by outpost (sidecar ports), not written in the config.
    pub injected: bool,
}

/// One group as the network sees it: a view into the group's plan.
#[derive(Clone, Copy, Debug)]
pub struct GroupNet<'a> {
    pub name: &'a str,
    /// `None` in host mode: nothing of the group's is the network's to make.
    pub netns: Option<&'a NetnsPlan>,
    pub ports: &'a [PortPlan],
    pub tproxy: Option<&'a TproxyPlan>,
}
