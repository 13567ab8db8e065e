//! The two facts the proxy needs from a certificate that rustls does not give: its URI SANs
//! (the SPIFFE identity) and its serial number. A small DER walk: the chain itself is
//! verified by webpki before any of this is read.

/// One DER element: its tag, its contents and what follows it.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let len = rest[..count]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[count..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
/// `[0] EXPLICIT` version, `[3] EXPLICIT` extensions (RFC 5280 §4.1).
const VERSION: u8 = 0xa0;
const EXTENSIONS: u8 = 0xa3;
/// id-ce-subjectAltName, 2.5.29.17.
const SAN_OID: &[u8] = &[0x55, 0x1d, 0x11];
/// GeneralName `uniformResourceIdentifier [6] IMPLICIT IA5String`.
const URI_NAME: u8 = 0x86;

/// The fields of TBSCertificate, in order.
fn tbs_fields(cert: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let (SEQUENCE, cert, _) = element(cert)? else {
        return None;
    };
    let (SEQUENCE, mut tbs, _) = element(cert)? else {
        return None;
    };
    let mut fields = Vec::new();
    while !tbs.is_empty() {
        let (tag, value, rest) = element(tbs)?;
        fields.push((tag, value));
        tbs = rest;
    }
    Some(fields)
}

/// The serial number as Consul writes it: lowercase hex bytes joined by colons, without
/// the sign byte DER may add (`ClientCertSerial` of `/v1/agent/connect/authorize`).
pub fn serial(cert: &[u8]) -> Option<String> {
    let fields = tbs_fields(cert)?;
    let mut fields = fields.iter().skip_while(|(tag, _)| *tag == VERSION);
    let (INTEGER, bytes) = fields.next()? else {
        return None;
    };
    let bytes = match bytes {
        [0, rest @ ..] if !rest.is_empty() => rest,
        all => all,
    };
    let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Some(hex.join(":"))
}

/// The certificate's URI subject alternative names.
pub fn uris(cert: &[u8]) -> Vec<String> {
    uris_of(cert).unwrap_or_default()
}

fn uris_of(cert: &[u8]) -> Option<Vec<String>> {
    let fields = tbs_fields(cert)?;
    let (_, extensions) = fields.iter().find(|(tag, _)| *tag == EXTENSIONS)?;
    let (SEQUENCE, mut list, _) = element(extensions)? else {
        return None;
    };
    while !list.is_empty() {
        let (_, extension, rest) = element(list)?;
        list = rest;
        let (_, oid, after) = element(extension)?;
        if oid != SAN_OID {
            continue;
        }
        // `critical BOOLEAN DEFAULT FALSE` may come before the value.
        let (mut tag, mut value, rest) = element(after)?;
        if tag == 0x01 {
            (tag, value, _) = element(rest)?;
        }
        if tag != 0x04 {
            return None;
        }
        let (SEQUENCE, mut names, _) = element(value)? else {
            return None;
        };
        let mut found = Vec::new();
        while !names.is_empty() {
            let (tag, name, rest) = element(names)?;
            names = rest;
            if tag == URI_NAME {
                found.push(String::from_utf8_lossy(name).into_owned());
            }
        }
        return Some(found);
    }
    Some(Vec::new())
}

/// A service's SPIFFE ID (reference/consul-api.md §5.2), as parts: trust domain,
/// namespace, datacenter and service. Other kinds of identity (agents, gateways) give none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceId {
    pub trust_domain: String,
    pub namespace: String,
    pub datacenter: String,
    pub service: String,
}

impl ServiceId {
    pub fn parse(uri: &str) -> Option<ServiceId> {
        let rest = uri.strip_prefix("spiffe://")?;
        let (host, path) = rest.split_once('/')?;
        let parts: Vec<&str> = path.split('/').collect();
        // With an admin partition: /ap/<ap>/ns/<ns>/dc/<dc>/svc/<svc>.
        let parts = match parts.as_slice() {
            ["ap", _, rest @ ..] => rest,
            all => all,
        };
        match parts {
            ["ns", ns, "dc", dc, "svc", svc] if !svc.is_empty() => Some(ServiceId {
                trust_domain: host.to_string(),
                namespace: ns.to_string(),
                datacenter: dc.to_string(),
                service: svc.to_string(),
            }),
            _ => None,
        }
    }

    /// Whether `self` names the same service as `other`. As Consul's Go SDK compares them:
    /// the trust domain is not compared (the roots already vouched for it), the rest
    /// case-insensitively.
    pub fn same_service(&self, other: &ServiceId) -> bool {
        self.namespace.eq_ignore_ascii_case(&other.namespace)
            && self.datacenter.eq_ignore_ascii_case(&other.datacenter)
            && self.service.eq_ignore_ascii_case(&other.service)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair, SanType, SerialNumber};

    fn cert(uris: &[&str], serial: &[u8]) -> Vec<u8> {
        let mut params = CertificateParams::new(vec!["web".to_string()]).unwrap();
        for uri in uris {
            params
                .subject_alt_names
                .push(SanType::URI((*uri).try_into().unwrap()));
        }
        params.serial_number = Some(SerialNumber::from_slice(serial));
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn reads_uri_sans_and_the_serial_as_consul_writes_it() {
        let uri = "spiffe://11111111-2222-3333-4444-555555555555.consul/ns/default/dc/dc1/svc/web";
        let der = cert(&[uri], &[0x0a, 0x1b, 0xff]);
        assert_eq!(uris(&der), vec![uri.to_string()]);
        assert_eq!(serial(&der).as_deref(), Some("0a:1b:ff"));
        // A high first byte gets a DER sign byte, which Consul does not show.
        let der = cert(&[], &[0x9c, 0x01]);
        assert_eq!(serial(&der).as_deref(), Some("9c:01"));
        assert!(uris(&der).is_empty());
    }

    #[test]
    fn garbage_gives_nothing_and_never_panics() {
        let der = cert(&["spiffe://td/ns/default/dc/dc1/svc/web"], &[1]);
        for cut in 0..der.len() {
            let _ = uris(&der[..cut]);
            let _ = serial(&der[..cut]);
        }
        assert!(uris(b"\x30\x84\xff\xff\xff\xff").is_empty());
        assert_eq!(serial(b""), None);
    }

    #[test]
    fn spiffe_service_ids_compare_as_consul_does() {
        let a = ServiceId::parse("spiffe://td-a.consul/ns/default/dc/dc1/svc/Web").unwrap();
        let b = ServiceId::parse("spiffe://td-b.consul/ap/p1/ns/DEFAULT/dc/dc1/svc/web").unwrap();
        assert!(a.same_service(&b));
        let c = ServiceId::parse("spiffe://td-a.consul/ns/default/dc/dc1/svc/db").unwrap();
        assert!(!a.same_service(&c));
        for other in [
            "spiffe://td/agent/client/dc/dc1/id/node",
            "spiffe://td/gateway/mesh/dc/dc1",
            "https://td/ns/default/dc/dc1/svc/web",
            "spiffe://td/ns/default/dc/dc1/svc/",
        ] {
            assert_eq!(ServiceId::parse(other), None, "{other}");
        }
    }
}
