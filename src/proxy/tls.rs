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

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The public listener's TLS: a client certificate chaining to the roots is required.
pub fn server(leaf: &Leaf, roots: &RootCertStore) -> Result<Arc<ServerConfig>, String> {
    let provider = provider();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots.clone()),
        provider.clone(),
    )
    .build()
    .map_err(|e| format!("client verifier: {e}"))?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(leaf.chain.clone(), leaf.key.clone_key())
        .map_err(|e| format!("the leaf: {e}"))?;
    Ok(Arc::new(config))
}

/// An upstream's TLS: presents the leaf, and accepts only a server whose chain leads to
/// the roots and whose SPIFFE ID is `expected` (trust domain aside).
pub fn client(
    leaf: &Leaf,
    roots: &RootCertStore,
    expected: ServiceId,
) -> Result<Arc<ClientConfig>, String> {
    let provider = provider();
    let verifier = SpiffeServer {
        roots: roots.clone(),
        expected,
        algorithms: provider.signature_verification_algorithms,
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(leaf.chain.clone(), leaf.key.clone_key())
        .map_err(|e| format!("the leaf: {e}"))?;
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
