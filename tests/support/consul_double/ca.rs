//! The double's Connect CA: a root, SPIFFE leaves per service, and their endpoints.

use super::*;

/// The Connect CA (reference/consul-api.md §5, consul-xds.md §3): an EC P-256 root whose URI
/// SAN is the trust domain, and per-service leaves (CN = service, one URI SAN = its SPIFFE ID,
/// server and client auth), made on first request and kept, as the agent caches them.
pub(super) struct Ca {
    cluster_id: String,
    root_pem: String,
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    leaves: BTreeMap<String, (String, String)>,
}

impl Ca {
    pub(super) fn new() -> Ca {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose, SanType};
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
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("pri-{} Consul CA 1", &seed[0..7]),
        );
        params.subject_alt_names = vec![SanType::URI(
            format!("spiffe://{cluster_id}.consul")
                .try_into()
                .expect("a SPIFFE URI"),
        )];
        let key = KeyPair::generate().expect("a CA key");
        let issuer = rcgen::CertifiedIssuer::self_signed(params, key).expect("the CA");
        Ca {
            root_pem: issuer.pem(),
            cluster_id,
            issuer,
            leaves: BTreeMap::new(),
        }
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

    pub(super) fn leaf(&mut self, service: &str) -> (String, String) {
        use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType};
        let uri = self.service_uri(service);
        if let Some(leaf) = self.leaves.get(service) {
            return leaf.clone();
        }
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
        let key = KeyPair::generate().expect("a leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("a leaf");
        let leaf = (cert.pem(), key.serialize_pem());
        self.leaves.insert(service.to_string(), leaf.clone());
        leaf
    }
}

pub(super) fn ca_roots(ca: &Ca) -> Reply {
    let mut root = Object::new();
    let id = "5e:32:1f:0a:9b:7c:44:21:d3:88:01:6f:aa:42:10:9c:de:7b:35:01";
    let fields = [
        ("ID", Value::String(id.into())),
        ("Name", Value::String("Consul CA Primary Cert".into())),
        ("SerialNumber", Value::Number(Number::U64(7))),
        ("SigningKeyID", Value::String(id.into())),
        ("ExternalTrustDomain", Value::String(ca.cluster_id.clone())),
        ("RootCert", Value::String(ca.root_pem.clone())),
        ("IntermediateCerts", Value::Array(Array::new())),
        ("Active", Value::Bool(true)),
        ("PrivateKeyType", Value::String("ec".into())),
        ("PrivateKeyBits", Value::Number(Number::U64(256))),
    ];
    for (k, v) in fields {
        root.insert(k.into(), v);
    }
    let mut roots = Object::new();
    roots.insert("ActiveRootID".into(), Value::String(id.into()));
    roots.insert("TrustDomain".into(), Value::String(ca.trust_domain()));
    roots.insert(
        "Roots".into(),
        Value::Array(std::iter::once(Value::Object(root)).collect()),
    );
    ok_json(Value::Object(roots))
}

pub(super) fn ca_leaf(ca: &mut Ca, service: &str) -> Reply {
    let (cert, key) = ca.leaf(service);
    let mut leaf = Object::new();
    let fields = [
        ("SerialNumber", Value::String("0a:1b".into())),
        ("CertPEM", Value::String(cert)),
        ("PrivateKeyPEM", Value::String(key)),
        ("Service", Value::String(service.into())),
        ("ServiceURI", Value::String(ca.service_uri(service))),
    ];
    for (k, v) in fields {
        leaf.insert(k.into(), v);
    }
    ok_json(Value::Object(leaf))
}
