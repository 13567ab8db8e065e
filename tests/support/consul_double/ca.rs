//! The double's Connect CA: a root, SPIFFE leaves per service, and their endpoints.

use super::*;

/// The Connect CA (reference/consul-api.md §5, consul-xds.md §3): an EC P-256 root whose URI
/// SAN is the trust domain, and per-service leaves (CN = service, one URI SAN = its SPIFFE ID,
/// server and client auth), made on first request and kept, as the agent caches them.
pub(super) struct Ca {
    cluster_id: String,
    /// Every root the agent lists, oldest first; the last one is active and signs leaves.
    roots: Vec<Root>,
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    /// Moved by a root rotation, for watchers of the roots.
    roots_index: u64,
    /// Per service: its leaf (certificate, key, serial) and the index it was made at.
    leaves: BTreeMap<String, (Leaf, u64)>,
    /// Moved by every leaf made, as the agent's leaf cache moves its index.
    leaf_index: u64,
}

struct Root {
    /// As Consul shows a root's ID: its key ID, hex bytes joined by colons.
    id: String,
    pem: String,
}

#[derive(Clone)]
pub(super) struct Leaf {
    pub cert: String,
    pub key: String,
    /// As Consul shows it: hex bytes joined by colons.
    pub serial: String,
}

/// When a leaf is valid, relative to now.
pub(super) struct Validity {
    pub from: Duration,
    pub until: Duration,
    /// Before now, for an expired leaf.
    pub expired: bool,
}

impl Ca {
    pub(super) fn new() -> Ca {
        // A UUID-shaped cluster ID, different per double.
        let seed = format!(
            "{:032x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
                ^ (u128::from(std::process::id()) << 64)
        );
        let cluster_id = format!(
            "{}-{}-{}-{}-{}",
            &seed[0..8],
            &seed[8..12],
            &seed[12..16],
            &seed[16..20],
            &seed[20..32]
        );
        let (root, issuer) = make_root(&cluster_id, 1);
        Ca {
            roots: vec![root],
            cluster_id,
            issuer,
            roots_index: 1,
            leaves: BTreeMap::new(),
            leaf_index: 10,
        }
    }

    /// A new active root, as `consul connect ca set-config` makes one: the old roots stay
    /// listed (leaves they signed stay valid) and leaves from now on are signed by the new
    /// one. Leaves already made are kept until rotated, as the agent re-signs them later.
    pub(super) fn rotate_root(&mut self) {
        let (root, issuer) = make_root(&self.cluster_id, self.roots.len() + 1);
        self.roots.push(root);
        self.issuer = issuer;
        self.roots_index += 1;
    }

    pub(super) fn roots_index(&self) -> u64 {
        self.roots_index
    }

    /// The active root.
    pub(super) fn root_pem(&self) -> String {
        self.roots.last().map(|r| r.pem.clone()).unwrap_or_default()
    }

    pub(super) fn trust_domain(&self) -> String {
        format!("{}.consul", self.cluster_id)
    }

    /// The service's SPIFFE ID (reference/consul-api.md §5.2).
    pub(super) fn service_uri(&self, service: &str) -> String {
        format!(
            "spiffe://{}/ns/default/dc/dc1/svc/{service}",
            self.trust_domain()
        )
    }

    /// The service's current leaf, made on first request and kept, as the agent caches it.
    pub(super) fn leaf(&mut self, service: &str) -> (Leaf, u64) {
        if let Some(leaf) = self.leaves.get(service) {
            return leaf.clone();
        }
        self.rotate(service)
    }

    /// A new leaf for `service` (what the agent does before the old one expires, or after a
    /// CA rotation); watchers of the leaf see a new index.
    pub(super) fn rotate(&mut self, service: &str) -> (Leaf, u64) {
        self.rotate_as(service, service)
    }

    /// A new leaf for `service` naming `identity` in its SPIFFE ID (a fault: what a
    /// misissued or stolen certificate would present).
    pub(super) fn rotate_as(&mut self, service: &str, identity: &str) -> (Leaf, u64) {
        let leaf = self.issue(identity, None);
        self.leaf_index += 1;
        let entry = (leaf, self.leaf_index);
        self.leaves.insert(service.to_string(), entry.clone());
        entry
    }

    pub(super) fn leaf_index(&self, service: &str) -> u64 {
        self.leaves.get(service).map_or(0, |(_, i)| *i)
    }

    /// A leaf for `service` signed by this CA (CN = service, one URI SAN = its SPIFFE ID,
    /// server and client auth), valid as `validity` says (default: 72 h from now).
    pub(super) fn issue(&mut self, service: &str, validity: Option<Validity>) -> Leaf {
        use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType};
        let uri = self.service_uri(service);
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::ExplicitNoCa;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, service.to_string());
        params.subject_alt_names = vec![SanType::URI(uri.try_into().expect("a SPIFFE URI"))];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        // Serials as Consul's CA makes them: unique, small, positive.
        self.leaf_index += 1;
        let serial = self.leaf_index.to_be_bytes();
        let serial = &serial[serial.iter().position(|b| *b != 0).unwrap_or(7)..];
        let serial = if serial[0] >= 0x80 {
            [&[0u8][..], serial].concat()
        } else {
            serial.to_vec()
        };
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let now = time::OffsetDateTime::now_utc();
        let validity = validity.unwrap_or(Validity {
            from: Duration::from_secs(60),
            until: Duration::from_secs(72 * 3600),
            expired: false,
        });
        params.not_before = now - validity.from;
        params.not_after = if validity.expired {
            now - validity.until
        } else {
            now + validity.until
        };
        let key = KeyPair::generate().expect("a leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("a leaf");
        let hex: Vec<String> = serial
            .iter()
            .skip_while(|b| **b == 0)
            .map(|b| format!("{b:02x}"))
            .collect();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
            serial: hex.join(":"),
        }
    }
}

/// Root number `n` of the cluster: EC P-256, its URI SAN the trust domain.
fn make_root(
    cluster_id: &str,
    n: usize,
) -> (Root, rcgen::CertifiedIssuer<'static, rcgen::KeyPair>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose, SanType};
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("pri-{} Consul CA {n}", &cluster_id[0..7]),
    );
    params.subject_alt_names = vec![SanType::URI(
        format!("spiffe://{cluster_id}.consul")
            .try_into()
            .expect("a SPIFFE URI"),
    )];
    let key = KeyPair::generate().expect("a CA key");
    let issuer = rcgen::CertifiedIssuer::self_signed(params, key).expect("the CA");
    let id = format!("5e:32:1f:0a:9b:7c:44:21:d3:88:01:6f:aa:42:10:9c:de:7b:35:{n:02x}");
    let root = Root {
        id,
        pem: issuer.pem(),
    };
    (root, issuer)
}

pub(super) fn ca_roots(ca: &Ca) -> Reply {
    let active = ca.roots.len();
    let roots: Array = ca
        .roots
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let fields = [
                ("ID", Value::String(r.id.clone())),
                ("Name", Value::String("Consul CA Primary Cert".into())),
                ("SerialNumber", Value::Number(Number::U64(7 + i as u64))),
                ("SigningKeyID", Value::String(r.id.clone())),
                ("ExternalTrustDomain", Value::String(ca.cluster_id.clone())),
                ("RootCert", Value::String(r.pem.clone())),
                ("IntermediateCerts", Value::Array(Array::new())),
                ("Active", Value::Bool(i + 1 == active)),
                ("PrivateKeyType", Value::String("ec".into())),
                ("PrivateKeyBits", Value::Number(Number::U64(256))),
            ];
            Value::Object(
                fields
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            )
        })
        .collect();
    let mut list = Object::new();
    let active_id = ca.roots.last().map(|r| r.id.clone()).unwrap_or_default();
    list.insert("ActiveRootID".into(), Value::String(active_id));
    list.insert("TrustDomain".into(), Value::String(ca.trust_domain()));
    list.insert("Roots".into(), Value::Array(roots));
    ok_json(Value::Object(list))
}

pub(super) fn ca_leaf(ca: &mut Ca, service: &str) -> Reply {
    let (issued, index) = ca.leaf(service);
    let mut leaf = Object::new();
    let fields = [
        ("SerialNumber", Value::String(issued.serial)),
        ("CertPEM", Value::String(issued.cert)),
        ("PrivateKeyPEM", Value::String(issued.key)),
        ("Service", Value::String(service.into())),
        ("ServiceURI", Value::String(ca.service_uri(service))),
        ("CreateIndex", Value::Number(Number::U64(index))),
        ("ModifyIndex", Value::Number(Number::U64(index))),
    ];
    for (k, v) in fields {
        leaf.insert(k.into(), v);
    }
    ok_json(Value::Object(leaf))
}
