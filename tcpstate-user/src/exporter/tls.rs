//! `tls_server_config` of the web config turned into a rustls server configuration, with
//! exporter-toolkit's names and rules (web/tls_config.go): Go's cipher-suite and curve names,
//! `TLS12`-style versions, and its five client-auth policies.

use std::sync::Arc;

use rustls::{
    crypto::{ring, CryptoProvider, SupportedKxGroup},
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, UnixTime},
    server::{
        danger::{ClientCertVerified, ClientCertVerifier},
        WebPkiClientVerifier,
    },
    DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme, SupportedCipherSuite,
    SupportedProtocolVersion,
};
use tracing::warn;

use serde::Deserialize;

/// `tls_server_config` of the web config, as exporter-toolkit names its fields.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    #[serde(default)]
    pub cert_file: String,
    #[serde(default)]
    pub key_file: String,
    /// Inline PEM, the alternative to cert_file / key_file / client_ca_file.
    #[serde(default)]
    pub cert: String,
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub client_ca: String,
    #[serde(default)]
    pub client_auth_type: String,
    #[serde(default)]
    pub client_ca_file: String,
    #[serde(default)]
    pub cipher_suites: Vec<String>,
    #[serde(default)]
    pub curve_preferences: Vec<String>,
    #[serde(default)]
    pub min_version: Option<String>,
    #[serde(default)]
    pub max_version: Option<String>,
    /// rustls always picks by the server's preference order, which is what `true` (the
    /// default) asks for; `false` is accepted and has no effect.
    #[serde(default)]
    pub prefer_server_cipher_suites: Option<bool>,
    #[serde(default)]
    pub client_allowed_sans: Option<Vec<String>>,
}

/// exporter-toolkit's `IsEnabled`: any TLS field set turns TLS on (and then must be complete).
pub(super) fn is_enabled(t: &RawTls) -> bool {
    [
        &t.cert_file,
        &t.key_file,
        &t.cert,
        &t.key,
        &t.client_ca_file,
        &t.client_ca,
        &t.client_auth_type,
    ]
    .iter()
    .any(|s| !s.is_empty())
}

pub(super) fn server_config(t: &RawTls) -> Result<rustls::ServerConfig, String> {
    if t.cert_file.is_empty() && t.cert.is_empty() {
        return Err("tls_server_config: missing one of cert or cert_file".into());
    }
    if t.key_file.is_empty() && t.key.is_empty() {
        return Err("tls_server_config: missing one of key or key_file".into());
    }
    let certs = pem_input(&t.cert_file, &t.cert, "cert_file")?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&certs)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cert_file {}: not PEM certificates ({e})", t.cert_file))?;
    if certs.is_empty() {
        return Err(format!("cert_file {}: holds no certificate", t.cert_file));
    }
    let key = pem_input(&t.key_file, &t.key, "key_file")?;
    let key = PrivateKeyDer::from_pem_slice(&key)
        .map_err(|e| format!("key_file {}: no PEM private key ({e})", t.key_file))?;

    let provider = Arc::new(provider(t)?);
    let versions = versions(t)?;
    let verifier = client_verifier(t, &provider)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(|e| format!("tls_server_config: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| format!("cert_file and key_file do not make a usable pair: {e}"))?;
    // Our cipher-suite order wins, as exporter-toolkit's prefer_server_cipher_suites: true.
    config.ignore_client_order = t.prefer_server_cipher_suites.unwrap_or(true);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn pem_input(file: &str, inline: &str, what: &str) -> Result<Vec<u8>, String> {
    if file.is_empty() {
        return Ok(inline.as_bytes().to_vec());
    }
    std::fs::read(file).map_err(|e| format!("cannot read {what} {file}: {e}"))
}

/// The ring provider narrowed to the configured TLS 1.2 cipher suites and curves. As in Go,
/// cipher_suites only constrains TLS 1.2; TLS 1.3 suites are always those of the provider.
fn provider(t: &RawTls) -> Result<CryptoProvider, String> {
    let mut p = ring::default_provider();
    if !t.cipher_suites.is_empty() {
        let mut chosen: Vec<SupportedCipherSuite> = p
            .cipher_suites
            .iter()
            .filter(|s| s.version() == &rustls::version::TLS13)
            .copied()
            .collect();
        for name in &t.cipher_suites {
            if TLS13_NAMES.contains(&name.as_str()) {
                continue;
            }
            let Some(suite) = TLS12_SUITES
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, s)| *s)
            else {
                return Err(format!(
                    "cipher suite {name:?} is unknown or not offered by tcpstate (no CBC or RSA key exchange): use some of {}",
                    TLS12_SUITES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                ));
            };
            chosen.push(suite);
        }
        p.cipher_suites = chosen;
    }
    if !t.curve_preferences.is_empty() {
        let mut groups: Vec<&'static dyn SupportedKxGroup> = Vec::new();
        for name in &t.curve_preferences {
            groups.push(match name.as_str() {
                "X25519" => ring::kx_group::X25519,
                "CurveP256" => ring::kx_group::SECP256R1,
                "CurveP384" => ring::kx_group::SECP384R1,
                "CurveP521" => {
                    return Err("curve CurveP521 is not offered by tcpstate's TLS library: use X25519, CurveP256 or CurveP384".into())
                }
                other => {
                    return Err(format!(
                        "unknown curve {other:?}: use X25519, CurveP256 or CurveP384"
                    ))
                }
            });
        }
        p.kx_groups = groups;
    }
    Ok(p)
}

/// The TLS 1.2 suites rustls has, under Go's names (crypto/tls cipher_suites.go).
const TLS12_SUITES: [(&str, SupportedCipherSuite); 8] = [
    (
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
        ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        ring::cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        ring::cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        ring::cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
        ring::cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
];

const TLS13_NAMES: [&str; 3] = [
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];

/// min_version defaults to TLS12 and max_version to TLS13, as in exporter-toolkit. rustls has
/// no TLS 1.0 or 1.1: a min_version of TLS10/TLS11 (allowed by the toolkit) is served as TLS12,
/// with a warning, so such a file still works; a max_version below TLS12 cannot be served.
fn versions(t: &RawTls) -> Result<Vec<&'static SupportedProtocolVersion>, String> {
    let rank = |v: &Option<String>, default: u8, what: &str| -> Result<u8, String> {
        match v.as_deref() {
            None => Ok(default),
            Some("TLS10") => Ok(10),
            Some("TLS11") => Ok(11),
            Some("TLS12") => Ok(12),
            Some("TLS13") => Ok(13),
            Some(other) => Err(format!(
                "unknown {what} {other:?}: use TLS10, TLS11, TLS12 or TLS13"
            )),
        }
    };
    let min = rank(&t.min_version, 12, "min_version")?;
    let max = rank(&t.max_version, 13, "max_version")?;
    if max < 12 {
        return Err("max_version below TLS12 cannot be served: tcpstate speaks TLS 1.2 and 1.3 only; use TLS12 or TLS13".into());
    }
    if min > max {
        return Err(format!(
            "min_version TLS{min} is above max_version TLS{max}"
        ));
    }
    if min < 12 {
        warn!("web config min_version TLS{min}: tcpstate speaks TLS 1.2 and 1.3 only, so TLS12 is the minimum");
    }
    let mut v = Vec::new();
    if min <= 12 {
        v.push(&rustls::version::TLS12);
    }
    if max >= 13 {
        v.push(&rustls::version::TLS13);
    }
    Ok(v)
}

fn client_verifier(
    t: &RawTls,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let has_ca = !t.client_ca_file.is_empty() || !t.client_ca.is_empty();
    let roots = || -> Result<Arc<RootCertStore>, String> {
        let pem = pem_input(&t.client_ca_file, &t.client_ca, "client_ca_file")?;
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&pem) {
            let c = c.map_err(|e| format!("client_ca_file {}: {e}", t.client_ca_file))?;
            roots
                .add(c)
                .map_err(|e| format!("client_ca_file {}: {e}", t.client_ca_file))?;
        }
        if roots.is_empty() {
            return Err(format!(
                "client_ca_file {}: holds no certificate",
                t.client_ca_file
            ));
        }
        Ok(Arc::new(roots))
    };
    let webpki = |optional: bool| -> Result<Arc<dyn ClientCertVerifier>, String> {
        if !has_ca {
            return Err(format!(
                "client_auth_type {} needs client_ca_file (the CAs client certificates are verified against)",
                t.client_auth_type
            ));
        }
        let b = WebPkiClientVerifier::builder_with_provider(roots()?, provider.clone());
        let b = if optional {
            b.allow_unauthenticated()
        } else {
            b
        };
        b.build().map_err(|e| format!("client_ca_file: {e}"))
    };
    let verifier = match t.client_auth_type.as_str() {
        "" | "NoClientCert" => {
            if has_ca {
                return Err("client CA's have been configured without a Client Auth Policy: set client_auth_type (e.g. RequireAndVerifyClientCert)".into());
            }
            WebPkiClientVerifier::no_client_auth()
        }
        "RequestClientCert" => Arc::new(AnyClientCert::new(false, provider)),
        "RequireAnyClientCert" | "RequireClientCert" => Arc::new(AnyClientCert::new(true, provider)),
        "VerifyClientCertIfGiven" => webpki(true)?,
        "RequireAndVerifyClientCert" => webpki(false)?,
        other => return Err(format!(
            "invalid client_auth_type {other:?}: use NoClientCert, RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert"
        )),
    };
    if let Some(sans) = &t.client_allowed_sans {
        // Matching SANs needs an X.509 parser this build does not carry; refusing the file is
        // safer than serving without the restriction the user asked for.
        if !sans.is_empty() {
            return Err("client_allowed_sans is not supported by tcpstate yet: remove it, or restrict clients with client_ca_file".into());
        }
    }
    Ok(verifier)
}

/// Go's RequestClientCert and RequireAnyClientCert: a client certificate is asked for (and
/// required by the second) but not checked against any CA. The handshake signature is still
/// verified, so the client proves it holds the certificate's key.
#[derive(Debug)]
struct AnyClientCert {
    mandatory: bool,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl AnyClientCert {
    fn new(mandatory: bool, provider: &CryptoProvider) -> AnyClientCert {
        AnyClientCert {
            mandatory,
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ClientCertVerifier for AnyClientCert {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
