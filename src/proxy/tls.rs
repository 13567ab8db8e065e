//! mTLS as Consul's built-in proxy does it (reference/consul-api.md §5.3): both sides
//! present the service's leaf; both verify the peer's chain against the CA roots; the
//! client side also checks that the server is the service it asked for (its SPIFFE ID,
//! trust domain ignored); the server side leaves the caller's identity to intentions.

use super::x509::{self, ServiceId};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use std::sync::Arc;

/// The service's leaf from `/v1/agent/connect/ca/leaf/<service>`.
#[derive(Debug)]
pub struct Leaf {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// Its own SPIFFE ID: the trust domain and datacenter upstream SNI names are made of.
    pub id: ServiceId,
    pub serial: String,
}

impl Leaf {
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Leaf, String> {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("the leaf certificate is not PEM: {e}"))?;
        let first = chain.first().ok_or("the leaf holds no certificate")?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| format!("the leaf's key is not PEM: {e}"))?;
        let id = x509::uris(first)
            .iter()
            .find_map(|u| ServiceId::parse(u))
            .ok_or("the leaf has no SPIFFE service ID")?;
        let serial = x509::serial(first).unwrap_or_default();
        Ok(Leaf {
            chain,
            key,
            id,
            serial,
        })
    }
}

/// The CA roots from `/v1/agent/connect/ca/roots`, all of them (a rotation has two).
pub fn roots(pems: &[String]) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    for pem in pems {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let cert = cert.map_err(|e| format!("a CA root is not PEM: {e}"))?;
            store
                .add(cert)
                .map_err(|e| format!("a CA root is not usable: {e}"))?;
        }
    }
    if store.is_empty() {
        return Err("Consul gave no CA root".into());
    }
    Ok(store)
}

/// ring's suites, ordered as BoringSSL (Envoy) orders them: AES-128-GCM first where the CPU
/// has AES instructions, else ChaCha20-Poly1305, which is faster in software (32-bit ARM
/// boards without the crypto extensions). rustls alone would pick AES-256-GCM, a third
/// slower than AES-128 for the same hardware.
fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite as suite;
    let mut provider = rustls::crypto::ring::default_provider();
    let aes_first = aes_in_hardware();
    let rank = |s: &rustls::SupportedCipherSuite| {
        let id = s.suite();
        let order = if aes_first {
            [
                suite::TLS13_AES_128_GCM_SHA256.suite(),
                suite::TLS13_AES_256_GCM_SHA384.suite(),
                suite::TLS13_CHACHA20_POLY1305_SHA256.suite(),
            ]
        } else {
            [
                suite::TLS13_CHACHA20_POLY1305_SHA256.suite(),
                suite::TLS13_AES_128_GCM_SHA256.suite(),
                suite::TLS13_AES_256_GCM_SHA384.suite(),
            ]
        };
        order.iter().position(|o| *o == id).unwrap_or(order.len())
    };
    provider.cipher_suites.sort_by_key(rank);
    Arc::new(provider)
}

fn aes_in_hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("aes")
        && std::arch::is_x86_feature_detected!("pclmulqdq");
    #[cfg(target_arch = "aarch64")]
    return std::arch::is_aarch64_feature_detected!("aes");
    #[allow(unreachable_code)]
    false
}

/// The public listener's TLS: a client certificate chaining to the roots is required.
pub fn server(leaf: &Leaf, roots: &RootCertStore) -> Result<Arc<ServerConfig>, String> {
    server_with(provider(), leaf, roots)
}

fn server_with(
    provider: Arc<CryptoProvider>,
    leaf: &Leaf,
    roots: &RootCertStore,
) -> Result<Arc<ServerConfig>, String> {
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots.clone()),
        provider.clone(),
    )
    .build()
    .map_err(|e| format!("client verifier: {e}"))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(leaf.chain.clone(), leaf.key.clone_key())
        .map_err(|e| format!("the leaf: {e}"))?;
    // The records after the handshake are sealed by `record` with the session's keys.
    config.enable_secret_extraction = true;
    // No resumption: every caller shows its certificate (and intentions are asked).
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(Arc::new(config))
}

/// An upstream's TLS: presents the leaf, and accepts only a server whose chain leads to
/// the roots and whose SPIFFE ID is `expected` (trust domain aside).
pub fn client(
    leaf: &Leaf,
    roots: &RootCertStore,
    expected: ServiceId,
) -> Result<Arc<ClientConfig>, String> {
    client_with(provider(), leaf, roots, expected)
}

fn client_with(
    provider: Arc<CryptoProvider>,
    leaf: &Leaf,
    roots: &RootCertStore,
    expected: ServiceId,
) -> Result<Arc<ClientConfig>, String> {
    let verifier = SpiffeServer {
        roots: roots.clone(),
        expected,
        algorithms: provider.signature_verification_algorithms,
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(leaf.chain.clone(), leaf.key.clone_key())
        .map_err(|e| format!("the leaf: {e}"))?;
    config.enable_secret_extraction = true;
    // Every connection checks the server's certificate afresh.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// The name an upstream is asked for (Consul's SNI for a service in a datacenter):
/// `<service>.default.<dc>.internal.<trust domain>`.
pub fn sni(service: &str, datacenter: &str, trust_domain: &str) -> Option<ServerName<'static>> {
    ServerName::try_from(format!(
        "{service}.default.{datacenter}.internal.{trust_domain}"
    ))
    .ok()
}

/// The caller's SPIFFE URI and serial, from the certificate it presented.
pub fn caller(certs: Option<&[CertificateDer<'_>]>) -> Option<(String, String)> {
    let first = certs?.first()?;
    let uri = x509::uris(first)
        .into_iter()
        .find(|u| u.starts_with("spiffe://"))?;
    Some((uri, x509::serial(first).unwrap_or_default()))
}

#[derive(Debug)]
struct SpiffeServer {
    roots: RootCertStore,
    expected: ServiceId,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for SpiffeServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        let named = x509::uris(end_entity)
            .iter()
            .filter_map(|u| ServiceId::parse(u))
            .any(|id| id.same_service(&self.expected));
        if !named {
            return Err(rustls::Error::General(format!(
                "the server's certificate is not for service {} in {}",
                self.expected.service, self.expected.datacenter
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Certificates for tests: a CA, leaves for services, and the identities expected.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa,
        KeyPair, SanType,
    };

    pub const TD: &str = "11111111-2222-3333-4444-555555555555.consul";

    pub fn make_ca() -> CertifiedIssuer<'static, KeyPair> {
        static MADE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("test CA {n}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    }

    pub fn leaf(ca: &CertifiedIssuer<'static, KeyPair>, service: &str) -> Leaf {
        let mut params = CertificateParams::default();
        let uri = format!("spiffe://{TD}/ns/default/dc/dc1/svc/{service}");
        params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, ca).unwrap();
        Leaf::from_pem(&cert.pem(), &key.serialize_pem()).unwrap()
    }

    pub fn expect(service: &str) -> ServiceId {
        ServiceId {
            trust_domain: TD.into(),
            namespace: "default".into(),
            datacenter: "dc1".into(),
            service: service.into(),
        }
    }

    /// ring's provider with one cipher suite: a peer that speaks only it.
    pub fn only(suite: rustls::SupportedCipherSuite) -> Arc<CryptoProvider> {
        let mut provider = rustls::crypto::ring::default_provider();
        provider.cipher_suites = vec![suite];
        Arc::new(provider)
    }

    pub fn server_speaking(
        suite: rustls::SupportedCipherSuite,
        leaf: &Leaf,
        roots: &RootCertStore,
    ) -> Arc<ServerConfig> {
        server_with(only(suite), leaf, roots).unwrap()
    }

    pub fn client_speaking(
        suite: rustls::SupportedCipherSuite,
        leaf: &Leaf,
        roots: &RootCertStore,
        expected: ServiceId,
    ) -> Arc<ClientConfig> {
        client_with(only(suite), leaf, roots, expected).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    /// A handshake in memory: the client's error, else the server's, else the suite and
    /// what the server saw of the caller.
    fn handshake(
        client: Arc<ClientConfig>,
        server: Arc<ServerConfig>,
    ) -> Result<(rustls::CipherSuite, Option<(String, String)>), String> {
        let name = sni("db", "dc1", TD).unwrap();
        let mut c = rustls::ClientConnection::new(client, name).map_err(|e| e.to_string())?;
        let mut s = rustls::ServerConnection::new(server).map_err(|e| e.to_string())?;
        for _ in 0..10 {
            let mut wire = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut wire).map_err(|e| e.to_string())?;
            }
            s.read_tls(&mut wire.as_slice())
                .map_err(|e| e.to_string())?;
            s.process_new_packets()
                .map_err(|e| format!("server: {e}"))?;
            let mut wire = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut wire).map_err(|e| e.to_string())?;
            }
            c.read_tls(&mut wire.as_slice())
                .map_err(|e| e.to_string())?;
            c.process_new_packets()
                .map_err(|e| format!("client: {e}"))?;
            if !c.is_handshaking() && !s.is_handshaking() {
                let suite = s.negotiated_cipher_suite().ok_or("no suite")?.suite();
                return Ok((suite, caller(s.peer_certificates())));
            }
        }
        Err("no handshake".into())
    }

    #[test]
    fn both_sides_verify_the_chain_and_the_client_checks_the_spiffe_id() {
        let ca = make_ca();
        let store = roots(&[ca.pem()]).unwrap();
        let (web, db) = (leaf(&ca, "web"), leaf(&ca, "db"));
        let server = server(&db, &store).unwrap();
        let (_, seen) = handshake(client(&web, &store, expect("db")).unwrap(), server.clone())
            .expect("web reaches db");
        let (uri, serial) = seen.expect("the caller's identity");
        assert_eq!(uri, format!("spiffe://{TD}/ns/default/dc/dc1/svc/web"));
        assert!(!serial.is_empty());

        // A server that is not db.
        let impostor = self::server(&leaf(&ca, "cache"), &store).unwrap();
        let refused = handshake(client(&web, &store, expect("db")).unwrap(), impostor);
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.contains("not for service db in dc1")),
            "{refused:?}"
        );
        // A client from another CA.
        let other = make_ca();
        let stranger = leaf(&other, "web");
        let both = roots(&[other.pem(), ca.pem()]).unwrap();
        let refused = handshake(client(&stranger, &both, expect("db")).unwrap(), server);
        assert!(
            refused.as_ref().is_err_and(|e| e.contains("UnknownIssuer")),
            "{refused:?}"
        );
    }

    #[test]
    fn aes_128_first_where_the_cpu_has_aes_as_envoy_chooses() {
        let ca = make_ca();
        let store = roots(&[ca.pem()]).unwrap();
        let (web, db) = (leaf(&ca, "web"), leaf(&ca, "db"));
        let (suite, _) = handshake(
            client(&web, &store, expect("db")).unwrap(),
            server(&db, &store).unwrap(),
        )
        .unwrap();
        let wanted = if aes_in_hardware() {
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        } else {
            rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
        };
        assert_eq!(suite, wanted);
    }
}
