//! IPv6 prefixes (`fd00:a110:c8::/120`) as written in the config (`network.subnet_ipv6`).

use std::fmt;
use std::net::Ipv6Addr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6Net {
    pub addr: Ipv6Addr,
    pub prefix: u8,
}

impl Ipv6Net {
    /// Parses `addr/n`. `Err` says what is wrong in words fit for a config error.
    pub fn parse(text: &str) -> Result<Ipv6Net, String> {
        let (addr, prefix) = super::ipv4::parse_prefix(text, "IPv6", 128, "fd00:a110:c8::/120")?;
        Ok(Ipv6Net { addr, prefix })
    }

    pub fn mask(&self) -> u128 {
        if self.prefix == 0 {
            0
        } else {
            u128::MAX << (128 - self.prefix)
        }
    }

    pub fn network(&self) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.addr) & self.mask())
    }

    fn last(&self) -> u128 {
        u128::from(self.addr) | !self.mask()
    }

    pub fn contains(&self, ip: Ipv6Addr) -> bool {
        u128::from(ip) & self.mask() == u128::from(self.network())
    }

    /// The bridge's address: the first address after the subnet-router anycast address
    /// (CNI host-local's gateway, as for IPv4).
    pub fn gateway(&self) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.network()) + 1)
    }

    /// Addresses groups may lease: after the gateway, up to the last address (IPv6 has no
    /// broadcast address). Lazy: a /64 is never walked further than the first free one.
    pub fn leasable(&self) -> impl Iterator<Item = Ipv6Addr> {
        (u128::from(self.network()) + 2..=self.last()).map(Ipv6Addr::from)
    }
}

/// Serialised as its text form (`fd00:a110:c8::/120`).
impl miniserde::Serialize for Ipv6Net {
    fn begin(&self) -> miniserde::ser::Fragment<'_> {
        miniserde::ser::Fragment::Str(std::borrow::Cow::Owned(self.to_string()))
    }
}

impl fmt::Display for Ipv6Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derives_gateway_and_leasable_range() {
        let net = Ipv6Net::parse("fd00:a110:c8::/120").unwrap();
        assert_eq!(
            net.gateway(),
            "fd00:a110:c8::1".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            net.leasable().next(),
            Some("fd00:a110:c8::2".parse().unwrap())
        );
        assert_eq!(net.leasable().count(), 256 - 2);
        assert!(net.contains("fd00:a110:c8::ff".parse().unwrap()));
        assert!(!net.contains("fd00:a110:c8::100".parse().unwrap()));
        let wide = Ipv6Net::parse("fd00::/64").unwrap();
        assert_eq!(wide.leasable().nth(1), Some("fd00::3".parse().unwrap()));
    }

    #[test]
    fn rejects_malformed_prefixes() {
        for bad in [
            "fd00::",
            "fd00::/129",
            "fd00::g/64",
            "172.26.64.0/20",
            "fd00::/",
        ] {
            assert!(Ipv6Net::parse(bad).is_err(), "{bad}");
        }
    }
}
