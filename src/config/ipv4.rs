//! IPv4 prefixes (`172.26.64.0/20`) as written in the config.

use std::fmt;
use std::net::Ipv4Addr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Net {
    /// Parses `a.b.c.d/n`. `Err` says what is wrong in words fit for a config error.
    pub fn parse(text: &str) -> Result<Ipv4Net, String> {
        let (addr, prefix) = parse_prefix(text, "IPv4", 32, "172.26.64.0/20")?;
        Ok(Ipv4Net { addr, prefix })
    }

    pub fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }

    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network())
    }

    /// The bridge's address: the first address of the subnet (CNI `isGateway` semantics).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network()) + 1)
    }

    /// Addresses groups may lease: after the gateway, before the broadcast address.
    pub fn leasable(&self) -> impl Iterator<Item = Ipv4Addr> {
        (u32::from(self.network()) + 2..u32::from(self.broadcast())).map(Ipv4Addr::from)
    }
}

/// `addr/n` for either family (`family` and `example` name it in messages); `Err` says
/// what is wrong in words fit for a config error.
pub(super) fn parse_prefix<A: std::str::FromStr>(
    text: &str,
    family: &str,
    max: u8,
    example: &str,
) -> Result<(A, u8), String> {
    let (addr, prefix) = text
        .split_once('/')
        .ok_or_else(|| format!("\"{text}\" is not an {family} prefix such as {example}"))?;
    let addr: A = addr
        .parse()
        .map_err(|_| format!("\"{addr}\" in \"{text}\" is not an {family} address"))?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= max)
        .ok_or_else(|| format!("prefix length \"{prefix}\" in \"{text}\" is not 0-{max}"))?;
    Ok((addr, prefix))
}

/// Serialised as its text form (`172.26.64.0/20`).
impl miniserde::Serialize for Ipv4Net {
    fn begin(&self) -> miniserde::ser::Fragment<'_> {
        miniserde::ser::Fragment::Str(std::borrow::Cow::Owned(self.to_string()))
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derives_gateway_and_leasable_range() {
        let net = Ipv4Net::parse("172.26.64.0/20").unwrap();
        assert_eq!(net.gateway(), Ipv4Addr::new(172, 26, 64, 1));
        assert_eq!(net.broadcast(), Ipv4Addr::new(172, 26, 79, 255));
        assert_eq!(net.leasable().next(), Some(Ipv4Addr::new(172, 26, 64, 2)));
        assert_eq!(net.leasable().count(), 4096 - 3);
        assert!(net.contains(Ipv4Addr::new(172, 26, 70, 9)));
        assert!(!net.contains(Ipv4Addr::new(172, 26, 80, 0)));
    }

    #[test]
    fn rejects_malformed_prefixes() {
        for bad in [
            "172.26.64.0",
            "172.26.64/20",
            "172.26.64.0/33",
            "x/20",
            "10.0.0.0/",
        ] {
            assert!(Ipv4Net::parse(bad).is_err(), "{bad}");
        }
    }
}
