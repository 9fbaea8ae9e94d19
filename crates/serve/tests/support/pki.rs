//! A throwaway certificate authority for the TLS tests (crates/serve/tests/tls.rs and, through a `#[path]`
//! include, the end-to-end tests/serve_tls.rs): a CA, server certificates for 127.0.0.1 and localhost,
//! client certificates, and TF Serving `SSLConfig` files holding them.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// A certificate authority that signs server and client certificates.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct Leaf {
    pub cert: String,
    pub key: String,
}

impl Leaf {
    /// Certificate then key in one PEM buffer, as reqwest's `Identity::from_pem` wants it.
    pub fn identity_pem(&self) -> String {
        format!("{}{}", self.cert, self.key)
    }
}

impl TestCa {
    pub fn new(name: &str) -> Result<TestCa, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Ok(TestCa { issuer: CertifiedIssuer::self_signed(params, KeyPair::generate()?)? })
    }

    /// The CA certificate, PEM: what clients trust and `custom_ca` holds.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for 127.0.0.1 and localhost.
    pub fn server(&self) -> Result<Leaf, rcgen::Error> {
        self.leaf("kiln test server", &["127.0.0.1", "localhost"], ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate for mutual TLS.
    pub fn client(&self) -> Result<Leaf, rcgen::Error> {
        self.leaf("kiln test client", &[], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn leaf(&self, name: &str, sans: &[&str], usage: ExtendedKeyUsagePurpose) -> Result<Leaf, rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Leaf { cert: cert.pem(), key: key.serialize_pem() })
    }
}

/// TF Serving's `SSLConfig` in text format, PEM contents inline with `\n` escapes.
pub fn ssl_config(server: &Leaf, custom_ca: Option<&str>, client_verify: bool) -> String {
    let quote = |pem: &str| format!("\"{}\"", pem.replace('\n', "\\n"));
    let mut text = format!("server_key: {}\nserver_cert: {}\n", quote(&server.key), quote(&server.cert));
    if let Some(ca) = custom_ca {
        text.push_str(&format!("custom_ca: {}\n", quote(ca)));
    }
    text.push_str(&format!("client_verify: {client_verify}\n"));
    text
}

/// Replaces `path` in one rename, as a careful deployer (or a Kubernetes secret mount) does, so the server
/// never reads half a file.
pub fn write_atomically(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    let staging = path.with_extension("staging");
    std::fs::write(&staging, text)?;
    std::fs::rename(&staging, path)
}

/// An HTTPS client that trusts only `ca` (and presents `identity` when given), on a fresh connection pool.
pub fn https_client(ca: &str, identity: Option<&Leaf>) -> reqwest::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes())?);
    if let Some(leaf) = identity {
        builder = builder.identity(reqwest::Identity::from_pem(leaf.identity_pem().as_bytes())?);
    }
    builder.build()
}
