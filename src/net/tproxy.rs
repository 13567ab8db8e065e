//! Transparent proxy: inside a group's namespace, the nf_tables equivalent of Consul's
//! iptables rule set (reference/consul-api.md §6.1, same order and exclusions), in table
//! `ip outpost-tproxy` with the base chains of Consul's nftables flavour.
//!
//! ```text
//! CONSUL_NAT_OUTPUT (hook output, -100):  [dns -> CONSUL_DNS_REDIRECT] tcp -> CONSUL_PROXY_OUTPUT
//! CONSUL_PROXY_OUTPUT: [excluded uids, cidrs, ports: return] skuid <envoy> return;
//!                      ip daddr 127.0.0.1/32 return; jump CONSUL_PROXY_REDIRECT
//! CONSUL_PROXY_REDIRECT: tcp redirect to :<outbound, 15001>
//! CONSUL_NAT_PREROUTING (hook prerouting, -100): tcp -> CONSUL_PROXY_INBOUND
//! CONSUL_PROXY_INBOUND: [excluded inbound ports: return] tcp -> CONSUL_PROXY_IN_REDIRECT
//! CONSUL_PROXY_IN_REDIRECT: tcp redirect to :<Envoy's public listener>
//! ```
//!
//! Unlike the host table, the set is replaced whole (in one atomic batch) when it differs:
//! order matters here, and the namespace holds nothing else.

use super::netlink::{NLM_F_CREATE, Socket};
use super::nft::{
    Chain, Expr, IPPROTO_TCP, IPPROTO_UDP, NF_INET_LOCAL_OUT, NF_INET_PRE_ROUTING,
    NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END, NFPROTO_IPV4, NFT_MSG_DELTABLE, NFT_MSG_NEWTABLE,
    Table, batch_marker, chain_msg, existing_rules, rule_msg, table_msg, text,
};
use super::spec::TproxyPlan;
use crate::config::Ipv4Net;
use neli::consts::socket::NlFamily;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};

pub const TABLE: &str = "outpost-tproxy";
const NFT_TABLE: Table = Table {
    name: TABLE,
    family: NFPROTO_IPV4,
};
const OUTPUT: &str = "CONSUL_NAT_OUTPUT";
const PREROUTING: &str = "CONSUL_NAT_PREROUTING";
const INBOUND: &str = "CONSUL_PROXY_INBOUND";
const IN_REDIRECT: &str = "CONSUL_PROXY_IN_REDIRECT";
const PROXY_OUTPUT: &str = "CONSUL_PROXY_OUTPUT";
const REDIRECT: &str = "CONSUL_PROXY_REDIRECT";
const DNS_REDIRECT: &str = "CONSUL_DNS_REDIRECT";

const CHAINS: [Chain; 7] = [
    Chain {
        name: INBOUND,
        hook: None,
    },
    Chain {
        name: IN_REDIRECT,
        hook: None,
    },
    Chain {
        name: PROXY_OUTPUT,
        hook: None,
    },
    Chain {
        name: REDIRECT,
        hook: None,
    },
    Chain {
        name: DNS_REDIRECT,
        hook: None,
    },
    Chain {
        name: OUTPUT,
        hook: Some((NF_INET_LOCAL_OUT, -100, "nat")),
    },
    Chain {
        name: PREROUTING,
        hook: Some((NF_INET_PRE_ROUTING, -100, "nat")),
    },
];

fn host(ip: Ipv4Addr) -> Ipv4Net {
    Ipv4Net {
        addr: ip,
        prefix: 32,
    }
}

fn numbers<T: std::str::FromStr>(items: &[String]) -> impl Iterator<Item = T> + '_ {
    items.iter().filter_map(|i| i.parse().ok())
}

/// The rules as (chain, expressions), in the order Consul's SDK leaves them: its `-I`
/// insertions end up reversed at the top of their chain.
fn rules(t: &TproxyPlan) -> Vec<(&'static str, Vec<Expr>)> {
    let tcp = || Expr::L4Proto(IPPROTO_TCP);
    let mut rules = vec![(REDIRECT, vec![tcp(), Expr::Redirect(t.outbound_port)])];
    if let Some(dns) = t
        .dns
        .as_deref()
        .and_then(|d| d.parse::<SocketAddrV4>().ok())
    {
        for proto in [IPPROTO_UDP, IPPROTO_TCP] {
            rules.push((
                DNS_REDIRECT,
                vec![
                    Expr::L4Proto(proto),
                    Expr::DaddrIn(host(*dns.ip())),
                    Expr::DstPort(53),
                    Expr::Dnat(*dns.ip(), dns.port()),
                ],
            ));
        }
        for proto in [IPPROTO_UDP, IPPROTO_TCP] {
            rules.push((
                OUTPUT,
                vec![
                    Expr::L4Proto(proto),
                    Expr::DaddrIn(host(*dns.ip())),
                    Expr::DstPort(53),
                    Expr::Jump(DNS_REDIRECT),
                ],
            ));
        }
    }
    rules.push((OUTPUT, vec![tcp(), Expr::Jump(PROXY_OUTPUT)]));
    let uids: Vec<u32> = numbers(&t.exclude_uids).collect();
    for uid in uids.iter().rev() {
        rules.push((PROXY_OUTPUT, vec![Expr::SkUid(*uid), Expr::Return]));
    }
    let cidrs: Vec<Ipv4Net> = t
        .exclude_outbound_cidrs
        .iter()
        .filter_map(|c| Ipv4Net::parse(c).ok())
        .collect();
    for cidr in cidrs.iter().rev() {
        rules.push((PROXY_OUTPUT, vec![Expr::DaddrIn(*cidr), Expr::Return]));
    }
    for port in t.exclude_outbound_ports.iter().rev() {
        rules.push((
            PROXY_OUTPUT,
            vec![tcp(), Expr::DstPort(*port), Expr::Return],
        ));
    }
    let proxy_uid = t.proxy_uid.parse().unwrap_or(101);
    rules.push((PROXY_OUTPUT, vec![Expr::SkUid(proxy_uid), Expr::Return]));
    rules.push((
        PROXY_OUTPUT,
        vec![Expr::DaddrIn(host(Ipv4Addr::LOCALHOST)), Expr::Return],
    ));
    rules.push((PROXY_OUTPUT, vec![Expr::Jump(REDIRECT)]));
    rules.push((IN_REDIRECT, vec![tcp(), Expr::Redirect(t.inbound_port)]));
    rules.push((PREROUTING, vec![tcp(), Expr::Jump(INBOUND)]));
    let inbound: Vec<u16> = numbers(&t.exclude_inbound_ports).collect();
    for port in inbound.iter().rev() {
        rules.push((INBOUND, vec![tcp(), Expr::DstPort(*port), Expr::Return]));
    }
    rules.push((INBOUND, vec![tcp(), Expr::Jump(IN_REDIRECT)]));
    rules
}

/// The rules in nft syntax, in kernel order per chain (for `plan`).
pub fn describe(t: &TproxyPlan) -> Vec<String> {
    keyed(t).into_iter().map(|(_, _, key)| key).collect()
}

/// Rules sorted into kernel order (chain by chain) with their comment keys.
fn keyed(t: &TproxyPlan) -> Vec<(&'static str, Vec<Expr>, String)> {
    let all = rules(t);
    let mut out = Vec::new();
    for chain in CHAINS.iter().map(|c| c.name) {
        for (c, exprs) in all.iter().filter(|(c, _)| *c == chain) {
            let key = format!("{c}: {}", text(exprs));
            out.push((*c, exprs.clone(), key));
        }
    }
    out
}

/// Installs the rule set in the current thread's namespace (call it inside
/// `netns::run_in`). Nothing is sent when the table already holds exactly these rules.
pub fn apply(t: &TproxyPlan) -> io::Result<()> {
    let mut sock = Socket::open(NlFamily::Netfilter)?;
    let wanted = keyed(t);
    let have: Vec<Option<String>> = existing_rules(&mut sock, NFT_TABLE)?
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.comment)
        .collect();
    let same = have.len() == wanted.len()
        && have
            .iter()
            .zip(&wanted)
            .all(|(h, (_, _, key))| h.as_deref() == Some(key.as_str()));
    if same {
        return Ok(());
    }
    let mut batch = vec![
        batch_marker(NFNL_MSG_BATCH_BEGIN),
        table_msg(NFT_TABLE, NFT_MSG_NEWTABLE, NLM_F_CREATE),
        table_msg(NFT_TABLE, NFT_MSG_DELTABLE, 0),
        table_msg(NFT_TABLE, NFT_MSG_NEWTABLE, NLM_F_CREATE),
    ];
    batch.extend(CHAINS.iter().map(|c| chain_msg(NFT_TABLE, c)));
    for (chain, exprs, key) in &wanted {
        batch.push(rule_msg(NFT_TABLE, chain, exprs, key));
    }
    batch.push(batch_marker(NFNL_MSG_BATCH_END));
    sock.batch(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_follow_consuls_order_and_exclusions() {
        let t = TproxyPlan {
            proxy_uid: "101".into(),
            inbound_port: 21000,
            outbound_port: 15001,
            exclude_inbound_ports: vec!["9002".into(), "22".into()],
            exclude_outbound_ports: vec![5432, 6379],
            exclude_outbound_cidrs: vec!["10.0.0.0/8".into()],
            exclude_uids: vec!["0".into()],
            dns: Some("192.0.2.10:8600".into()),
            rules: Vec::new(),
        };
        let text = describe(&t);
        let expected = [
            "CONSUL_PROXY_INBOUND: meta l4proto tcp th dport 22 return",
            "CONSUL_PROXY_INBOUND: meta l4proto tcp th dport 9002 return",
            "CONSUL_PROXY_INBOUND: meta l4proto tcp jump CONSUL_PROXY_IN_REDIRECT",
            "CONSUL_PROXY_IN_REDIRECT: meta l4proto tcp redirect to :21000",
            "CONSUL_PROXY_OUTPUT: meta skuid 0 return",
            "CONSUL_PROXY_OUTPUT: ip daddr 10.0.0.0/8 return",
            "CONSUL_PROXY_OUTPUT: meta l4proto tcp th dport 6379 return",
            "CONSUL_PROXY_OUTPUT: meta l4proto tcp th dport 5432 return",
            "CONSUL_PROXY_OUTPUT: meta skuid 101 return",
            "CONSUL_PROXY_OUTPUT: ip daddr 127.0.0.1/32 return",
            "CONSUL_PROXY_OUTPUT: jump CONSUL_PROXY_REDIRECT",
            "CONSUL_PROXY_REDIRECT: meta l4proto tcp redirect to :15001",
            "CONSUL_DNS_REDIRECT: meta l4proto udp ip daddr 192.0.2.10/32 th dport 53 dnat to 192.0.2.10:8600",
            "CONSUL_DNS_REDIRECT: meta l4proto tcp ip daddr 192.0.2.10/32 th dport 53 dnat to 192.0.2.10:8600",
            "CONSUL_NAT_OUTPUT: meta l4proto udp ip daddr 192.0.2.10/32 th dport 53 jump CONSUL_DNS_REDIRECT",
            "CONSUL_NAT_OUTPUT: meta l4proto tcp ip daddr 192.0.2.10/32 th dport 53 jump CONSUL_DNS_REDIRECT",
            "CONSUL_NAT_OUTPUT: meta l4proto tcp jump CONSUL_PROXY_OUTPUT",
            "CONSUL_NAT_PREROUTING: meta l4proto tcp jump CONSUL_PROXY_INBOUND",
        ];
        assert_eq!(text, expected);
    }
}
