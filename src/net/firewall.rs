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
    NFT_MSG_DELTABLE, NFT_MSG_NEWTABLE, batch_marker, chain_msg, delete_rule_msg, existing_rules,
    rule_msg, table_msg, text, with_socket,
};
use crate::config::Ipv4Net;
use crate::config::naming::IfName;
use std::collections::BTreeSet;
use std::io;
use std::net::Ipv4Addr;

pub const TABLE: &str = "outpost";
const PORTMAP: &str = "portmap";

/// One port mapping: host port (tcp and udp) to a group's address and port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub group: String,
    pub label: String,
    pub host_port: u16,
    pub address: Ipv4Addr,
    pub port: u16,
}

/// Everything the table is derived from.
#[derive(Clone, Debug)]
pub struct NatSpec {
    pub bridge: IfName,
    pub subnet: Ipv4Net,
    pub mappings: Vec<Mapping>,
}

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
    rules.extend(filter_rules(&spec.bridge));
    rules
}

/// The forward filter (new connections into the bridge only through a mapping) and the
/// martian drop (127.0.0.0/8 from outside `lo`, unless it is the reply of a mapping).
fn filter_rules(bridge: &IfName) -> Vec<(&'static str, Vec<Expr>)> {
    let to_bridge = || Expr::OifName {
        name: bridge.clone(),
        equal: true,
    };
    let loopback = Ipv4Net {
        addr: Ipv4Addr::new(127, 0, 0, 0),
        prefix: 8,
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
        ),
    ]
}

fn mapping_rules(m: &Mapping) -> Vec<(&'static str, Vec<Expr>)> {
    [IPPROTO_TCP, IPPROTO_UDP]
        .into_iter()
        .map(|proto| {
            (
                PORTMAP,
                vec![
                    Expr::L4Proto(proto),
                    Expr::DstPort(m.host_port),
                    Expr::Dnat(m.address, m.port),
                ],
            )
        })
        .collect()
}

/// nft-syntax text of the rules a group's mappings add (for `plan`).
pub fn describe_mapping(m: &Mapping) -> Vec<String> {
    mapping_rules(m)
        .into_iter()
        .map(|(chain, exprs)| format!("{chain}: {}", text(&exprs)))
        .collect()
}

/// nft-syntax text of the rules shared by all groups (for `plan`).
pub fn describe_shared(spec: &NatSpec) -> Vec<String> {
    rules(&NatSpec {
        mappings: Vec::new(),
        ..spec.clone()
    })
    .into_iter()
    .map(|(chain, exprs)| format!("{chain}: {}", text(&exprs)))
    .collect()
}

/// Makes the table hold exactly the rules for `spec`: one atomic batch that adds the
/// missing rules and deletes the unwanted ones; nothing is sent when they already match.
pub fn replace(spec: &NatSpec) -> io::Result<()> {
    with_socket(|sock| replace_with(sock, spec))
}

fn replace_with(sock: &mut Socket, spec: &NatSpec) -> io::Result<()> {
    let existing = existing_rules(sock, TABLE)?;
    let wanted: Vec<(&'static str, Vec<Expr>, String)> = rules(spec)
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
            changes.push(rule_msg(TABLE, chain, exprs, key));
        }
    }
    for rule in existing.iter().flatten() {
        let keep = rule
            .comment
            .as_deref()
            .is_some_and(|c| wanted_keys.contains(c));
        if !keep {
            changes.push(delete_rule_msg(TABLE, &rule.chain, rule.handle));
        }
    }
    if changes.is_empty() && existing.is_some() {
        return Ok(());
    }
    // Creating the table and chains is a no-op when they exist, and repairs a chain deleted
    // by hand.
    let mut batch = vec![
        batch_marker(NFNL_MSG_BATCH_BEGIN),
        table_msg(TABLE, NFT_MSG_NEWTABLE, NLM_F_CREATE),
    ];
    batch.extend(CHAINS.iter().map(|c| chain_msg(TABLE, c)));
    batch.extend(changes);
    batch.push(batch_marker(NFNL_MSG_BATCH_END));
    sock.batch(batch)
}

/// Whether nf_tables answers here (opens the shared socket).
pub fn probe() -> io::Result<()> {
    with_socket(|_| Ok(()))
}

/// Removes the table if it exists.
pub fn remove() -> io::Result<()> {
    let batch = vec![
        batch_marker(NFNL_MSG_BATCH_BEGIN),
        table_msg(TABLE, NFT_MSG_NEWTABLE, NLM_F_CREATE),
        table_msg(TABLE, NFT_MSG_DELTABLE, 0),
        batch_marker(NFNL_MSG_BATCH_END),
    ];
    with_socket(|sock| sock.batch(batch))
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
            mappings: vec![m],
        };
        let shared = describe_shared(&spec);
        assert!(shared.contains(
            &"postrouting: ip saddr 172.26.64.0/20 oifname != \"outpost\" masquerade".to_string()
        ));
        assert_eq!(rules(&spec).len(), shared.len() + 2);
    }
}
