//! nf_tables over NETLINK_NETFILTER, without `nft` or C libraries: the expressions outpost's
//! rules are made of (with their nft-syntax text, used as each rule's comment and key), the
//! messages that create tables, chains and rules, and reading a table's rules back.
//! `firewall` (the host's table) and `tproxy` (a namespace's) build their rule sets from
//! these.

use super::netlink::{
    Message, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST, Socket, attr_string, attrs,
};
use crate::config::naming::IfName;
use crate::config::{Ipv4Net, Ipv6Net};
use neli::consts::socket::NlFamily;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Expr {
    FibDaddrLocal,
    L4Proto(u8),
    DstPort(u16),
    SaddrIn(Ipv4Net),
    DaddrIn(Ipv4Net),
    Saddr6In(Ipv6Net),
    Daddr6In(Ipv6Net),
    /// The socket owner's uid (locally generated packets).
    SkUid(u32),
    Return,
    /// Redirect to a local port.
    Redirect(u16),
    OifName {
        name: IfName,
        equal: bool,
    },
    IifName {
        name: IfName,
        equal: bool,
    },
    CtStatusDnat,
    /// The connection was not DNAT'd (`ct status & dnat == 0`).
    CtStatusNotDnat,
    CtStateEstablishedRelated,
    Accept,
    Drop,
    Jump(&'static str),
    Dnat(Ipv4Addr, u16),
    Dnat6(Ipv6Addr, u16),
    Masquerade,
}

/// A table and its address family (`ip` or `ip6`): every message about it carries both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Table {
    pub(super) name: &'static str,
    pub(super) family: u8,
}

#[derive(Clone, Copy)]
pub(super) struct Chain {
    pub(super) name: &'static str,
    /// (hook number, priority, chain type) for base chains.
    pub(super) hook: Option<(u32, i32, &'static str)>,
}

pub(super) const NF_INET_PRE_ROUTING: u32 = 0;
pub(super) const NF_INET_LOCAL_IN: u32 = 1;
pub(super) const NF_INET_FORWARD: u32 = 2;
pub(super) const NF_INET_LOCAL_OUT: u32 = 3;
pub(super) const NF_INET_POST_ROUTING: u32 = 4;
pub(super) const IPPROTO_TCP: u8 = 6;
pub(super) const IPPROTO_UDP: u8 = 17;

pub(super) fn text(exprs: &[Expr]) -> String {
    let parts: Vec<String> = exprs
        .iter()
        .map(|e| match e {
            Expr::FibDaddrLocal => "fib daddr type local".into(),
            Expr::L4Proto(p) => format!(
                "meta l4proto {}",
                if *p == IPPROTO_TCP { "tcp" } else { "udp" }
            ),
            Expr::DstPort(p) => format!("th dport {p}"),
            Expr::SaddrIn(net) => format!("ip saddr {net}"),
            Expr::DaddrIn(net) => format!("ip daddr {net}"),
            Expr::Saddr6In(net) => format!("ip6 saddr {net}"),
            Expr::Daddr6In(net) => format!("ip6 daddr {net}"),
            Expr::SkUid(uid) => format!("meta skuid {uid}"),
            Expr::Return => "return".into(),
            Expr::Redirect(port) => format!("redirect to :{port}"),
            Expr::OifName { name, equal } => {
                format!("oifname {}\"{name}\"", if *equal { "" } else { "!= " })
            }
            Expr::IifName { name, equal } => {
                format!("iifname {}\"{name}\"", if *equal { "" } else { "!= " })
            }
            Expr::CtStatusDnat => "ct status dnat".into(),
            Expr::CtStatusNotDnat => "ct status & dnat == 0".into(),
            Expr::CtStateEstablishedRelated => "ct state established,related".into(),
            Expr::Accept => "accept".into(),
            Expr::Drop => "drop".into(),
            Expr::Jump(chain) => format!("jump {chain}"),
            Expr::Dnat(ip, port) => format!("dnat to {ip}:{port}"),
            Expr::Dnat6(ip, port) => format!("dnat to [{ip}]:{port}"),
            Expr::Masquerade => "masquerade".into(),
        })
        .collect();
    parts.join(" ")
}

// --- nf_tables encoding (linux/netfilter/nf_tables.h) ---

const NFNL_SUBSYS_NFTABLES: u16 = 10;
pub(super) const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
pub(super) const NFNL_MSG_BATCH_END: u16 = 0x11;
pub(super) const NFT_MSG_NEWTABLE: u16 = 0;
pub(super) const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_DELRULE: u16 = 8;
pub(super) const NFPROTO_IPV4: u8 = 2;
pub(super) const NFPROTO_IPV6: u8 = 10;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_HANDLE: u16 = 3;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
/// libnftnl's userdata TLV type for a rule comment (what `nft list` shows as `comment`).
const NFTNL_UDATA_RULE_COMMENT: u8 = 0;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;

const NFT_REG_VERDICT: u32 = 0;
const REG1: u32 = 1;
const REG2: u32 = 2;
const NFT_JUMP: i32 = -3;
const NFT_RETURN: i32 = -5;
const NFT_META_SKUID: u32 = 10;
const NF_ACCEPT: u32 = 1;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFT_META_OIFNAME: u32 = 7;
const NFT_META_L4PROTO: u32 = 16;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFT_CT_STATE: u32 = 0;
const NFT_CT_STATUS: u32 = 2;
/// `NF_CT_STATE_BIT(IP_CT_ESTABLISHED) | NF_CT_STATE_BIT(IP_CT_RELATED)`.
const CT_STATE_ESTABLISHED_RELATED: u32 = (1 << 1) | (1 << 2);
const NF_DROP: u32 = 0;
const NFT_META_IIFNAME: u32 = 6;
const IPS_DST_NAT: u32 = 0x20;
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
const NFTA_FIB_F_DADDR: u32 = 1 << 1;
const RTN_LOCAL: u32 = 2;
const NFT_NAT_DNAT: u32 = 1;
const IFNAMSIZ: usize = 16;

fn msg_type(nft_msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | nft_msg
}

fn nfgenmsg(family: u8, res_id: u16) -> [u8; 4] {
    let id = res_id.to_be_bytes();
    [family, 0, id[0], id[1]]
}

pub(super) fn batch_marker(kind: u16) -> Message {
    Message::new(kind, NLM_F_REQUEST).header(&nfgenmsg(0, NFNL_SUBSYS_NFTABLES))
}

pub(super) fn table_msg(table: Table, nft_msg: u16, flags: u16) -> Message {
    let mut m = Message::new(msg_type(nft_msg), NLM_F_REQUEST | NLM_F_ACK | flags)
        .header(&nfgenmsg(table.family, 0));
    m.attr_str(NFTA_TABLE_NAME, table.name);
    m
}

pub(super) fn chain_msg(table: Table, chain: &Chain) -> Message {
    let mut m = Message::new(
        msg_type(NFT_MSG_NEWCHAIN),
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE,
    )
    .header(&nfgenmsg(table.family, 0));
    m.attr_str(NFTA_CHAIN_TABLE, table.name);
    m.attr_str(NFTA_CHAIN_NAME, chain.name);
    if let Some((hook, priority, kind)) = chain.hook {
        m.begin_nest(NFTA_CHAIN_HOOK);
        m.attr_be32(NFTA_HOOK_HOOKNUM, hook);
        m.attr_be32(NFTA_HOOK_PRIORITY, priority as u32);
        m.end_nest();
        m.attr_be32(NFTA_CHAIN_POLICY, NF_ACCEPT);
        m.attr_str(NFTA_CHAIN_TYPE, kind);
    }
    m
}

pub(super) fn delete_rule_msg(table: Table, chain: &str, handle: u64) -> Message {
    let mut m = Message::new(msg_type(NFT_MSG_DELRULE), NLM_F_REQUEST | NLM_F_ACK)
        .header(&nfgenmsg(table.family, 0));
    m.attr_str(NFTA_RULE_TABLE, table.name);
    m.attr_str(NFTA_RULE_CHAIN, chain);
    m.attr(NFTA_RULE_HANDLE, &handle.to_be_bytes());
    m
}

pub(super) fn rule_msg(table: Table, chain: &str, exprs: &[Expr], comment: &str) -> Message {
    let mut m = Message::new(
        msg_type(NFT_MSG_NEWRULE),
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND,
    )
    .header(&nfgenmsg(table.family, 0));
    m.attr_str(NFTA_RULE_TABLE, table.name);
    m.attr_str(NFTA_RULE_CHAIN, chain);
    m.begin_nest(NFTA_RULE_EXPRESSIONS);
    for e in exprs {
        encode(&mut m, e);
    }
    m.end_nest();
    let text = comment.as_bytes();
    let len = text.len().min(250);
    let mut userdata = vec![NFTNL_UDATA_RULE_COMMENT, (len + 1) as u8];
    userdata.extend_from_slice(&text[..len]);
    userdata.push(0);
    m.attr(NFTA_RULE_USERDATA, &userdata);
    m
}

/// Whether `table` exists. (A dump of a missing table's rules is merely empty.) A kernel
/// without nf_tables for the table's family has none.
pub(super) fn table_exists(sock: &mut Socket, table: Table) -> io::Result<bool> {
    const NFT_MSG_GETTABLE: u16 = 1;
    let mut m =
        Message::new(msg_type(NFT_MSG_GETTABLE), NLM_F_REQUEST).header(&nfgenmsg(table.family, 0));
    m.attr_str(NFTA_TABLE_NAME, table.name);
    match sock.dump(m) {
        Ok(_) => Ok(true),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(nix::libc::ENOENT | nix::libc::EAFNOSUPPORT)
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// A rule found in our table: its chain, handle and comment (our key for it).
pub(super) struct Existing {
    pub(super) chain: String,
    pub(super) handle: u64,
    pub(super) comment: Option<String>,
}

/// The rules of `table` in kernel order (`None` when the table does not exist).
pub(super) fn existing_rules(sock: &mut Socket, table: Table) -> io::Result<Option<Vec<Existing>>> {
    let mut m = Message::new(
        msg_type(NFT_MSG_GETRULE),
        NLM_F_REQUEST | super::netlink::NLM_F_DUMP,
    )
    .header(&nfgenmsg(table.family, 0));
    m.attr_str(NFTA_RULE_TABLE, table.name);
    let answers = match sock.dump(m) {
        Ok(answers) => answers,
        Err(e) if e.raw_os_error() == Some(nix::libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut rules = Vec::new();
    for answer in answers
        .iter()
        .filter(|a| a.msg_type == msg_type(NFT_MSG_NEWRULE))
    {
        let mut rule = Existing {
            chain: String::new(),
            handle: 0,
            comment: None,
        };
        for (attr, value) in attrs(answer.payload.get(4..).unwrap_or_default()) {
            match attr {
                NFTA_RULE_CHAIN => rule.chain = attr_string(value),
                NFTA_RULE_HANDLE => {
                    rule.handle = value.try_into().map(u64::from_be_bytes).unwrap_or(0)
                }
                NFTA_RULE_USERDATA => rule.comment = comment_of(value),
                _ => {}
            }
        }
        rules.push(rule);
    }
    Ok(Some(rules))
}

/// The comment TLV in rule userdata.
fn comment_of(userdata: &[u8]) -> Option<String> {
    let mut rest = userdata;
    while rest.len() >= 2 {
        let (kind, len) = (rest[0], rest[1] as usize);
        let value = rest.get(2..2 + len)?;
        if kind == NFTNL_UDATA_RULE_COMMENT {
            return Some(attr_string(value));
        }
        rest = &rest[2 + len..];
    }
    None
}

/// Writes one kernel expression: `name` and its attributes.
fn kernel_expr(m: &mut Message, name: &str, body: impl FnOnce(&mut Message)) {
    m.begin_nest(NFTA_LIST_ELEM);
    m.attr_str(NFTA_EXPR_NAME, name);
    m.begin_nest(NFTA_EXPR_DATA);
    body(m);
    m.end_nest();
    m.end_nest();
}

fn data_value(m: &mut Message, attr: u16, bytes: &[u8]) {
    m.begin_nest(attr);
    m.attr(NFTA_DATA_VALUE, bytes);
    m.end_nest();
}

fn cmp(m: &mut Message, op: u32, bytes: &[u8]) {
    kernel_expr(m, "cmp", |m| {
        m.attr_be32(1, REG1); // NFTA_CMP_SREG
        m.attr_be32(2, op); // NFTA_CMP_OP
        data_value(m, 3, bytes); // NFTA_CMP_DATA
    });
}

fn payload(m: &mut Message, base: u32, offset: u32, len: u32) {
    kernel_expr(m, "payload", |m| {
        m.attr_be32(1, REG1); // DREG
        m.attr_be32(2, base);
        m.attr_be32(3, offset);
        m.attr_be32(4, len);
    });
}

fn meta(m: &mut Message, key: u32) {
    kernel_expr(m, "meta", |m| {
        m.attr_be32(1, REG1); // NFTA_META_DREG
        m.attr_be32(2, key);
    });
}

fn bitwise(m: &mut Message, mask: &[u8]) {
    kernel_expr(m, "bitwise", |m| {
        m.attr_be32(1, REG1); // SREG
        m.attr_be32(2, REG1); // DREG
        m.attr_be32(3, mask.len() as u32);
        data_value(m, 4, mask); // MASK
        data_value(m, 5, &vec![0; mask.len()]); // XOR
    });
}

fn immediate(m: &mut Message, reg: u32, bytes: &[u8]) {
    kernel_expr(m, "immediate", |m| {
        m.attr_be32(1, reg);
        data_value(m, 2, bytes);
    });
}

/// The interface name (in or out, by `key`) compared with `name`.
fn if_name(m: &mut Message, key: u32, name: &IfName, equal: bool) {
    meta(m, key);
    // The kernel compares the whole IFNAMSIZ buffer; an IfName always leaves the NUL.
    let mut padded = [0u8; IFNAMSIZ];
    padded[..name.len()].copy_from_slice(name.as_bytes());
    cmp(m, if equal { NFT_CMP_EQ } else { NFT_CMP_NEQ }, &padded);
}

/// Conntrack's `key` (state or status) masked with `bits`, compared with zero by `op`.
fn ct_bits(m: &mut Message, key: u32, bits: u32, op: u32) {
    kernel_expr(m, "ct", |m| {
        m.attr_be32(1, REG1); // NFTA_CT_DREG
        m.attr_be32(2, key); // NFTA_CT_KEY
    });
    bitwise(m, &bits.to_ne_bytes());
    cmp(m, op, &0u32.to_ne_bytes());
}

/// A final verdict (accept, drop, return).
fn verdict(m: &mut Message, code: i32) {
    kernel_expr(m, "immediate", |m| {
        m.attr_be32(1, NFT_REG_VERDICT);
        m.begin_nest(2); // NFTA_IMMEDIATE_DATA
        m.begin_nest(NFTA_DATA_VERDICT);
        m.attr_be32(NFTA_VERDICT_CODE, code as u32);
        m.end_nest();
        m.end_nest();
    });
}

fn encode(m: &mut Message, e: &Expr) {
    match e {
        Expr::FibDaddrLocal => {
            kernel_expr(m, "fib", |m| {
                m.attr_be32(1, REG1); // NFTA_FIB_DREG
                m.attr_be32(2, NFT_FIB_RESULT_ADDRTYPE);
                m.attr_be32(3, NFTA_FIB_F_DADDR);
            });
            cmp(m, NFT_CMP_EQ, &RTN_LOCAL.to_ne_bytes());
        }
        Expr::L4Proto(proto) => {
            meta(m, NFT_META_L4PROTO);
            cmp(m, NFT_CMP_EQ, &[*proto]);
        }
        Expr::DstPort(port) => {
            payload(m, NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2);
            cmp(m, NFT_CMP_EQ, &port.to_be_bytes());
        }
        Expr::SaddrIn(net) => {
            payload(m, NFT_PAYLOAD_NETWORK_HEADER, 12, 4);
            bitwise(m, &net.mask().to_be_bytes());
            cmp(m, NFT_CMP_EQ, &net.network().octets());
        }
        Expr::OifName { name, equal } => if_name(m, NFT_META_OIFNAME, name, *equal),
        Expr::IifName { name, equal } => if_name(m, NFT_META_IIFNAME, name, *equal),
        Expr::CtStatusDnat => ct_bits(m, NFT_CT_STATUS, IPS_DST_NAT, NFT_CMP_NEQ),
        Expr::CtStatusNotDnat => ct_bits(m, NFT_CT_STATUS, IPS_DST_NAT, NFT_CMP_EQ),
        Expr::CtStateEstablishedRelated => {
            ct_bits(m, NFT_CT_STATE, CT_STATE_ESTABLISHED_RELATED, NFT_CMP_NEQ)
        }
        Expr::Accept => verdict(m, NF_ACCEPT as i32),
        Expr::Drop => verdict(m, NF_DROP as i32),
        Expr::Jump(chain) => kernel_expr(m, "immediate", |m| {
            m.attr_be32(1, NFT_REG_VERDICT);
            m.begin_nest(2); // NFTA_IMMEDIATE_DATA
            m.begin_nest(NFTA_DATA_VERDICT);
            m.attr_be32(NFTA_VERDICT_CODE, NFT_JUMP as u32);
            m.attr_str(NFTA_VERDICT_CHAIN, chain);
            m.end_nest();
            m.end_nest();
        }),
        Expr::Dnat(ip, port) => {
            immediate(m, REG1, &ip.octets());
            immediate(m, REG2, &port.to_be_bytes());
            kernel_expr(m, "nat", |m| {
                m.attr_be32(1, NFT_NAT_DNAT); // NFTA_NAT_TYPE
                m.attr_be32(2, u32::from(NFPROTO_IPV4)); // NFTA_NAT_FAMILY
                m.attr_be32(3, REG1); // REG_ADDR_MIN
                m.attr_be32(5, REG2); // REG_PROTO_MIN
            });
        }
        Expr::Dnat6(ip, port) => {
            immediate(m, REG1, &ip.octets());
            immediate(m, REG2, &port.to_be_bytes());
            kernel_expr(m, "nat", |m| {
                m.attr_be32(1, NFT_NAT_DNAT); // NFTA_NAT_TYPE
                m.attr_be32(2, u32::from(NFPROTO_IPV6)); // NFTA_NAT_FAMILY
                m.attr_be32(3, REG1); // REG_ADDR_MIN
                m.attr_be32(5, REG2); // REG_PROTO_MIN
            });
        }
        Expr::Saddr6In(net) => {
            payload(m, NFT_PAYLOAD_NETWORK_HEADER, 8, 16);
            bitwise(m, &net.mask().to_be_bytes());
            cmp(m, NFT_CMP_EQ, &net.network().octets());
        }
        Expr::Daddr6In(net) => {
            payload(m, NFT_PAYLOAD_NETWORK_HEADER, 24, 16);
            bitwise(m, &net.mask().to_be_bytes());
            cmp(m, NFT_CMP_EQ, &net.network().octets());
        }
        Expr::Masquerade => kernel_expr(m, "masq", |_| {}),
        Expr::DaddrIn(net) => {
            payload(m, NFT_PAYLOAD_NETWORK_HEADER, 16, 4);
            bitwise(m, &net.mask().to_be_bytes());
            cmp(m, NFT_CMP_EQ, &net.network().octets());
        }
        Expr::SkUid(uid) => {
            meta(m, NFT_META_SKUID);
            cmp(m, NFT_CMP_EQ, &uid.to_ne_bytes());
        }
        Expr::Return => verdict(m, NFT_RETURN),
        Expr::Redirect(port) => {
            immediate(m, REG1, &port.to_be_bytes());
            kernel_expr(m, "redir", |m| {
                m.attr_be32(1, REG1); // NFTA_REDIR_REG_PROTO_MIN
            });
        }
    }
}

/// The netfilter socket. A kernel without nf_tables answers EPROTONOSUPPORT, which comes
/// back as `ErrorKind::Unsupported` (callers with nothing to remove may go on).
pub(super) fn open() -> io::Result<Socket> {
    Socket::open(NlFamily::Netfilter).map_err(|e| {
        let kind = match e.raw_os_error() {
            Some(nix::libc::EPROTONOSUPPORT) => io::ErrorKind::Unsupported,
            _ => e.kind(),
        };
        io::Error::new(
            kind,
            format!("cannot open a netfilter netlink socket (is nf_tables in the kernel?): {e}"),
        )
    })
}

/// Runs `f` with the process's netfilter socket. It is opened once and kept: closing a
/// NETLINK_NETFILTER socket costs 5-15 ms (measured here), more than a whole group's
/// bring-up. After an error it is reopened, so no stale answer can be read.
pub(super) fn with_socket<T>(f: impl FnOnce(&mut Socket) -> io::Result<T>) -> io::Result<T> {
    static SOCKET: std::sync::Mutex<Option<Socket>> = std::sync::Mutex::new(None);
    let mut guard = SOCKET
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let sock = match guard.as_mut() {
        Some(sock) => sock,
        None => guard.insert(open()?),
    };
    let result = f(sock);
    if result.is_err() {
        *guard = None;
    }
    result
}
