//! NAT and filtering for the bridge in one nf_tables table (`ip outpost`): the rule model.
//! The messages that carry it to the kernel are `nft`'s.
//!
//! The whole rule set is derived from the plan. Each rule carries its own text as an nft
//! comment (rule userdata); an apply reads the table's rules, then in one atomic batch adds
//! the missing ones and deletes, by handle, those no longer wanted (so removing a group's
//! rules is applying the set without them, and nothing stale survives a crash). Nothing is
//! flushed or recreated: deleting the last NAT or conntrack rule of a namespace unregisters
//! hooks and waits for RCU grace periods (~5-20 ms), and an unchanged set sends nothing.
//!
//! ```text
//! table ip outpost {
//!   chain prerouting  { type nat hook prerouting priority -100; fib daddr type local jump portmap }
//!   chain output      { type nat hook output priority -100;     fib daddr type local jump portmap }
//!   chain portmap     { meta l4proto tcp th dport 8080 dnat to 172.26.64.2:80 ... }
//!   chain postrouting { type nat hook postrouting priority 100;
//!     ip saddr 172.26.64.0/20 oifname != "outpost" masquerade   # groups -> outside
//!     ct status dnat ip saddr 127.0.0.0/8 masquerade             # host 127.0.0.1 -> group
//!     ct status dnat ip saddr 172.26.64.0/20 oifname "outpost" masquerade }  # hairpin
//!   chain forward { type filter hook forward priority 0;         # into the groups: only
//!     oifname "outpost" ct state established,related accept     #   replies,
//!     oifname "outpost" ct status dnat accept                    #   mapped ports,
//!     oifname "outpost" iifname "outpost" accept                 #   and group to group;
//!     oifname "outpost" drop }                                   #   nothing else
//!   chain input { type filter hook input priority 0;             # CVE-2020-8558: the
//!     iifname != "lo" ip daddr 127.0.0.0/8 ct status & dnat == 0 drop }  # host's loopback
//! }
//! ```
//!
//! The filter chains are what keeps the mesh the only way in (docs/trust-model.md):
//! someone on the LAN who routes the group subnet via the device reaches no group port that
//! is not mapped, and a group that sends to 127.0.0.1 over the bridge (`route_localnet` is on
//! there, for host-to-group mappings on 127.0.0.1) reaches no host service.

use super::netlink::{NLM_F_CREATE, Socket};
use super::nft::{
    Chain, Expr, IPPROTO_TCP, IPPROTO_UDP, NF_INET_FORWARD, NF_INET_LOCAL_IN, NF_INET_LOCAL_OUT,
    NF_INET_POST_ROUTING, NF_INET_PRE_ROUTING, NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END,
    NFPROTO_IPV4, NFPROTO_IPV6, NFT_MSG_DELTABLE, NFT_MSG_NEWTABLE, Table, batch_marker, chain_msg,
    delete_rule_msg, existing_rules, rule_msg, table_exists, table_msg, text, with_socket,
};
use crate::config::naming::IfName;
use crate::config::{Ipv4Net, Ipv6Net};
use std::collections::BTreeSet;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering};

pub const TABLE: &str = "outpost";
const PORTMAP: &str = "portmap";
const IP: Table = Table {
    name: TABLE,
    family: NFPROTO_IPV4,
};
/// The dual-stack bridge's IPv6 rules: a table of their own (an `inet` table would cover
/// both families, but NAT in `inet` tables needs Linux 5.2; edge kernels are often older).
const IP6: Table = Table {
    name: TABLE,
    family: NFPROTO_IPV6,
};

/// One port mapping: host port (tcp and udp) to a group's address and port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub group: String,
    pub label: String,
    pub host_port: u16,
    pub address: Ipv4Addr,
    /// The group's IPv6 address on a dual-stack bridge: the port is mapped for IPv6 too.
    pub address_ipv6: Option<Ipv6Addr>,
    pub port: u16,
}

/// Everything the table is derived from.
#[derive(Clone, Debug)]
pub struct NatSpec {
    pub bridge: IfName,
    pub subnet: Ipv4Net,
    pub subnet_ipv6: Option<Ipv6Net>,
    pub mappings: Vec<Mapping>,
}

/// The IPv6 table's chains: the same less `input` (the kernel itself drops packets from
/// `::1` that arrive on another interface; IPv6 has no `route_localnet`).
const CHAINS_IPV6: [Chain; 5] = [CHAINS[0], CHAINS[1], CHAINS[2], CHAINS[3], CHAINS[4]];

const CHAINS: [Chain; 6] = [
    Chain {
        name: "prerouting",
        hook: Some((NF_INET_PRE_ROUTING, -100, "nat")),
    },
    Chain {
        name: "output",
        hook: Some((NF_INET_LOCAL_OUT, -100, "nat")),
    },
    Chain {
        name: PORTMAP,
        hook: None,
    },
    Chain {
        name: "postrouting",
        hook: Some((NF_INET_POST_ROUTING, 100, "nat")),
    },
    Chain {
        name: "forward",
        hook: Some((NF_INET_FORWARD, 0, "filter")),
    },
    Chain {
        name: "input",
        hook: Some((NF_INET_LOCAL_IN, 0, "filter")),
    },
];

/// The rules as (chain, expressions), in order.
fn rules(spec: &NatSpec) -> Vec<(&'static str, Vec<Expr>)> {
    let loopback = Ipv4Net {
        addr: Ipv4Addr::new(127, 0, 0, 0),
        prefix: 8,
    };
    let mut rules = vec![
        ("prerouting", vec![Expr::FibDaddrLocal, Expr::Jump(PORTMAP)]),
        ("output", vec![Expr::FibDaddrLocal, Expr::Jump(PORTMAP)]),
    ];
    for m in &spec.mappings {
        rules.extend(mapping_rules(m));
    }
    let bridge = spec.bridge.clone();
    rules.push((
        "postrouting",
        vec![
            Expr::SaddrIn(spec.subnet),
            Expr::OifName {
                name: bridge.clone(),
                equal: false,
            },
            Expr::Masquerade,
        ],
    ));
    rules.push((
        "postrouting",
        vec![
            Expr::CtStatusDnat,
            Expr::SaddrIn(loopback),
            Expr::Masquerade,
        ],
    ));
    rules.push((
        "postrouting",
        vec![
            Expr::CtStatusDnat,
            Expr::SaddrIn(spec.subnet),
            Expr::OifName {
                name: bridge,
                equal: true,
            },
            Expr::Masquerade,
        ],
    ));
    rules.extend(forward_rules(&spec.bridge));
    rules.push(martian_rule());
    rules
}

/// The IPv6 table's rules: the same mappings, masquerade, hairpin and forward filter for
/// `subnet`. The host's `::1` is left out of the mappings: Linux never routes a packet
/// from the loopback address off the host, so a connection to `[::1]:<port>` is refused
/// rather than left hanging; the host reaches a mapped port on any of its other addresses.
fn rules_ipv6(spec: &NatSpec, subnet: Ipv6Net) -> Vec<(&'static str, Vec<Expr>)> {
    let loopback = Ipv6Net {
        addr: Ipv6Addr::LOCALHOST,
        prefix: 128,
    };
    let mut rules = vec![
        ("prerouting", vec![Expr::FibDaddrLocal, Expr::Jump(PORTMAP)]),
        ("output", vec![Expr::Daddr6In(loopback), Expr::Return]),
        ("output", vec![Expr::FibDaddrLocal, Expr::Jump(PORTMAP)]),
    ];
    for m in &spec.mappings {
        rules.extend(mapping_rules_ipv6(m));
    }
    rules.push((
        "postrouting",
        vec![
            Expr::Saddr6In(subnet),
            Expr::OifName {
                name: spec.bridge.clone(),
                equal: false,
            },
            Expr::Masquerade,
        ],
    ));
    rules.push((
        "postrouting",
        vec![
            Expr::CtStatusDnat,
            Expr::Saddr6In(subnet),
            Expr::OifName {
                name: spec.bridge.clone(),
                equal: true,
            },
            Expr::Masquerade,
        ],
    ));
    rules.extend(forward_rules(&spec.bridge));
    rules
}

/// The forward filter: new connections into the bridge only through a mapping or from
/// another group.
fn forward_rules(bridge: &IfName) -> Vec<(&'static str, Vec<Expr>)> {
    let to_bridge = || Expr::OifName {
        name: bridge.clone(),
        equal: true,
    };
    vec![
        (
            "forward",
            vec![to_bridge(), Expr::CtStateEstablishedRelated, Expr::Accept],
        ),
        (
            "forward",
            vec![to_bridge(), Expr::CtStatusDnat, Expr::Accept],
        ),
        (
            "forward",
            vec![
                to_bridge(),
                Expr::IifName {
                    name: bridge.clone(),
                    equal: true,
                },
                Expr::Accept,
            ],
        ),
        ("forward", vec![to_bridge(), Expr::Drop]),
    ]
}

/// The martian drop: 127.0.0.0/8 from outside `lo`, unless it is the reply of a mapping.
fn martian_rule() -> (&'static str, Vec<Expr>) {
    let loopback = Ipv4Net {
        addr: Ipv4Addr::new(127, 0, 0, 0),
        prefix: 8,
    };
    (
        "input",
        vec![
            Expr::IifName {
                name: IfName::literal("lo"),
                equal: false,
            },
            Expr::DaddrIn(loopback),
            Expr::CtStatusNotDnat,
            Expr::Drop,
        ],
    )
}

fn mapping_rules(m: &Mapping) -> Vec<(&'static str, Vec<Expr>)> {
    port_rules(m.host_port, Expr::Dnat(m.address, m.port))
}

/// The IPv6 twin of `mapping_rules` (none when the group has no IPv6 address).
fn mapping_rules_ipv6(m: &Mapping) -> Vec<(&'static str, Vec<Expr>)> {
    m.address_ipv6
        .map(|address| port_rules(m.host_port, Expr::Dnat6(address, m.port)))
        .unwrap_or_default()
}

/// `host_port`, tcp and udp, to `dnat`.
fn port_rules(host_port: u16, dnat: Expr) -> Vec<(&'static str, Vec<Expr>)> {
    [IPPROTO_TCP, IPPROTO_UDP]
        .into_iter()
        .map(|proto| {
            (
                PORTMAP,
                vec![Expr::L4Proto(proto), Expr::DstPort(host_port), dnat.clone()],
            )
        })
        .collect()
}

/// One rule as the plan shows it: `chain: rule` for the IPv4 table, prefixed with `ip6 `
/// for the IPv6 one.
fn describe(table: Table, rules: Vec<(&'static str, Vec<Expr>)>) -> Vec<String> {
    let prefix = if table == IP6 { "ip6 " } else { "" };
    rules
        .into_iter()
        .map(|(chain, exprs)| format!("{prefix}{chain}: {}", text(&exprs)))
        .collect()
}

/// nft-syntax text of the rules a group's mappings add (for `plan`), both families.
pub fn describe_mapping(m: &Mapping) -> Vec<String> {
    let mut out = describe(IP, mapping_rules(m));
    out.extend(describe(IP6, mapping_rules_ipv6(m)));
    out
}

/// nft-syntax text of the rules shared by all groups (for `plan`), both families.
pub fn describe_shared(spec: &NatSpec) -> Vec<String> {
    let shared = NatSpec {
        mappings: Vec::new(),
        ..spec.clone()
    };
    let mut out = describe(IP, rules(&shared));
    if let Some(subnet) = spec.subnet_ipv6 {
        out.extend(describe(IP6, rules_ipv6(&shared, subnet)));
    }
    out
}

/// Makes the tables hold exactly the rules for `spec`: per family, one atomic batch that
/// adds the missing rules and deletes the unwanted ones; nothing is sent when they already
/// match. Without an IPv6 subnet the `ip6` table goes, if there is one.
pub fn replace(spec: &NatSpec) -> io::Result<()> {
    with_socket(|sock| {
        replace_with(sock, IP, &CHAINS, rules(spec))?;
        match spec.subnet_ipv6 {
            Some(subnet) => {
                IP6_GONE.store(false, Ordering::Relaxed);
                replace_with(sock, IP6, &CHAINS_IPV6, rules_ipv6(spec, subnet))
            }
            // Looked for once per process: only a dual-stack config makes the table, and
            // bring-up syncs the firewall once per group.
            None if IP6_GONE.load(Ordering::Relaxed) => Ok(()),
            None => {
                remove_if_present(sock, IP6)?;
                IP6_GONE.store(true, Ordering::Relaxed);
                Ok(())
            }
        }
    })
}

/// This process has seen to it that there is no `ip6` table.
static IP6_GONE: AtomicBool = AtomicBool::new(false);

fn replace_with(
    sock: &mut Socket,
    table: Table,
    chains: &[Chain],
    rules: Vec<(&'static str, Vec<Expr>)>,
) -> io::Result<()> {
    let existing = existing_rules(sock, table)?;
    let wanted: Vec<(&'static str, Vec<Expr>, String)> = rules
        .into_iter()
        .map(|(chain, exprs)| {
            let key = format!("{chain}: {}", text(&exprs));
            (chain, exprs, key)
        })
        .collect();
    let present: BTreeSet<&str> = existing
        .iter()
        .flatten()
        .filter_map(|r| r.comment.as_deref())
        .collect();
    let wanted_keys: BTreeSet<&str> = wanted.iter().map(|(_, _, key)| key.as_str()).collect();
    let mut changes = Vec::new();
    // Add before deleting, so NAT never has zero rules inside the transaction.
    for (chain, exprs, key) in &wanted {
        if !present.contains(key.as_str()) {
            changes.push(rule_msg(table, chain, exprs, key));
        }
    }
    for rule in existing.iter().flatten() {
        let keep = rule
            .comment
            .as_deref()
            .is_some_and(|c| wanted_keys.contains(c));
        if !keep {
            changes.push(delete_rule_msg(table, &rule.chain, rule.handle));
        }
    }
    if changes.is_empty() && existing.is_some() {
        return Ok(());
    }
    // Creating the table and chains is a no-op when they exist, and repairs a chain deleted
    // by hand.
    let mut batch = vec![
        batch_marker(NFNL_MSG_BATCH_BEGIN),
        table_msg(table, NFT_MSG_NEWTABLE, NLM_F_CREATE),
    ];
    batch.extend(chains.iter().map(|c| chain_msg(table, c)));
    batch.extend(changes);
    batch.push(batch_marker(NFNL_MSG_BATCH_END));
    sock.batch(batch)
}

/// Whether nf_tables answers here (opens the shared socket).
pub fn probe() -> io::Result<()> {
    with_socket(|_| Ok(()))
}

/// Removes both tables, those that exist.
pub fn remove() -> io::Result<()> {
    let removed = with_socket(|sock| {
        remove_if_present(sock, IP)?;
        remove_if_present(sock, IP6)?;
        IP6_GONE.store(true, Ordering::Relaxed);
        Ok(())
    });
    match removed {
        // A kernel without nf_tables has no table of ours either.
        Err(e) if e.kind() == io::ErrorKind::Unsupported => Ok(()),
        other => other,
    }
}

/// Deletes `table` if it exists.
fn remove_if_present(sock: &mut Socket, table: Table) -> io::Result<()> {
    if !table_exists(sock, table)? {
        return Ok(());
    }
    sock.batch(vec![
        batch_marker(NFNL_MSG_BATCH_BEGIN),
        table_msg(table, NFT_MSG_DELTABLE, 0),
        batch_marker(NFNL_MSG_BATCH_END),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_rules_in_nft_syntax() {
        let m = Mapping {
            group: "web".into(),
            label: "http".into(),
            host_port: 8080,
            address: Ipv4Addr::new(172, 26, 64, 2),
            address_ipv6: None,
            port: 80,
        };
        assert_eq!(
            describe_mapping(&m),
            [
                "portmap: meta l4proto tcp th dport 8080 dnat to 172.26.64.2:80",
                "portmap: meta l4proto udp th dport 8080 dnat to 172.26.64.2:80"
            ]
        );
        let spec = NatSpec {
            bridge: IfName::literal("outpost"),
            subnet: Ipv4Net::parse("172.26.64.0/20").unwrap(),
            subnet_ipv6: None,
            mappings: vec![m],
        };
        let shared = describe_shared(&spec);
        assert!(shared.contains(
            &"postrouting: ip saddr 172.26.64.0/20 oifname != \"outpost\" masquerade".to_string()
        ));
        assert_eq!(rules(&spec).len(), shared.len() + 2);
    }
}
