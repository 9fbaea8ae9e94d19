//! TLS on both ports from TF Serving's `--ssl_config_file`, reloaded while serving.
//!
//! The file is TF Serving's `SSLConfig` in text format: `server_key`, `server_cert` and `custom_ca` hold
//! PEM *contents* (use `\n` escapes or adjacent strings, as protobuf text format has no multi-line
//! strings), `client_verify: true` requires client certificates signed by `custom_ca` (mutual TLS).
//! TF Serving secures gRPC only; kiln applies the same material to REST too.
//!
//! The file is re-read every poll interval: a changed file that is valid replaces the certificates for
//! the next handshake (open connections keep theirs), an invalid one is logged and the old ones stay.
//! Handshakes run in the accepted connection's own task with a deadline, so a client speaking plain
//! text, or nothing, costs one task for at most [`HANDSHAKE_TIMEOUT`] and never blocks accepting.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::RootCertStore;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::config::{ConfigError, ConfigFile};

/// Longest a client may take to complete the TLS handshake after connecting.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the SSL config file is re-read when the options do not say.
pub const DEFAULT_SSL_CONFIG_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// gRPC connections waiting for tonic to pick them up.
const GRPC_BACKLOG: usize = 64;

/// TF Serving's `SSLConfig` (model_servers/ssl_config.proto), PEM contents inline.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SslConfig {
    server_key: String,
    server_cert: String,
    custom_ca: String,
    client_verify: bool,
}

/// Which listener a handshake is for: each advertises its own HTTP version through ALPN (gRPC clients
/// insist on `h2`; the REST port speaks HTTP/1.1 only).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Port {
    Rest,
    Grpc,
}

/// The server configurations built from one SSL config file's contents.
struct Loaded {
    config: SslConfig,
    rest: Arc<ServerConfig>,
    grpc: Arc<ServerConfig>,
}

/// The current TLS material of both ports, replaced when the SSL config file changes.
pub(crate) struct Tls {
    file: PathBuf,
    current: RwLock<Arc<Loaded>>,
}

impl Tls {
    /// Reads and checks `file`; any problem (unknown field, missing key or certificate, bad PEM, a key
    /// that does not match its certificate) is an error naming the file and field.
    pub(crate) fn load(file: &Path) -> Result<Arc<Tls>, ConfigError> {
        let (file_text, config) = read_ssl_config(file)?;
        let loaded = build(&file_text, config)?;
        Ok(Arc::new(Tls { file: file.to_owned(), current: RwLock::new(Arc::new(loaded)) }))
    }

    fn current(&self) -> Arc<Loaded> {
        // A poisoned lock still holds a complete `Arc`: writers only swap it.
        self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Whether clients must present a certificate signed by `custom_ca`.
    pub(crate) fn client_verify(&self) -> bool {
        self.current().config.client_verify
    }

    /// Runs the server side of the handshake on `stream` with the current certificates.
    pub(crate) async fn accept<IO>(&self, port: Port, stream: IO) -> std::io::Result<TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let loaded = self.current();
        let config = match port {
            Port::Rest => loaded.rest.clone(),
            Port::Grpc => loaded.grpc.clone(),
        };
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(config).accept(stream)).await {
            Ok(result) => result,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no TLS handshake within {} s", HANDSHAKE_TIMEOUT.as_secs()),
            )),
        }
    }

    /// Re-reads the file; a changed valid file replaces the material (true), an unchanged one is left.
    fn reload(&self) -> Result<bool, ConfigError> {
        let (file, config) = read_ssl_config(&self.file)?;
        if config == self.current().config {
            return Ok(false);
        }
        let loaded = Arc::new(build(&file, config)?);
        *self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = loaded;
        Ok(true)
    }

    /// Re-reads the file every `interval` until `stopped`; each distinct failure is logged once, and the
    /// old certificates keep serving.
    pub(crate) async fn watch(self: Arc<Self>, interval: Duration, mut stopped: watch::Receiver<bool>) {
        let mut last_error = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stopped.wait_for(|s| *s) => return,
            }
            let tls = self.clone();
            match tokio::task::spawn_blocking(move || tls.reload()).await {
                Ok(Ok(changed)) => {
                    if changed {
                        tracing::info!(file = %self.file.display(), "SSL config changed; new TLS handshakes use it");
                    }
                    last_error = None;
                }
                Ok(Err(error)) => {
                    let message = error.to_string();
                    if last_error.as_ref() != Some(&message) {
                        tracing::error!("keeping the current TLS certificates: {message}");
                        last_error = Some(message);
                    }
                }
                Err(error) => tracing::error!("re-reading the SSL config failed: {error}"),
            }
        }
    }
}

/// Accepts gRPC connections on `listener` until `stopped` and yields those whose handshake succeeded,
/// for tonic's `serve_with_incoming`. Failed handshakes (plain text, wrong or missing client
/// certificate, timeouts) are logged at debug level and dropped.
pub(crate) fn grpc_incoming(
    listener: TcpListener,
    tls: Arc<Tls>,
    mut stopped: watch::Receiver<bool>,
) -> ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    let (send, receive) = mpsc::channel(GRPC_BACKLOG);
    tokio::spawn(async move {
        while let Some((stream, peer)) = crate::connections::accept(&listener, &mut stopped, "gRPC").await {
            let (tls, send) = (tls.clone(), send.clone());
            tokio::spawn(async move {
                match tls.accept(Port::Grpc, stream).await {
                    // The receiver is gone only when the server stops.
                    Ok(stream) => drop(send.send(Ok(stream)).await),
                    Err(error) => tracing::debug!(%peer, "gRPC TLS handshake failed: {error}"),
                }
            });
        }
    });
    ReceiverStream::new(receive)
}

/// Reads `SSLConfig` with the strictness of the other config files.
fn read_ssl_config(path: &Path) -> Result<(ConfigFile, SslConfig), ConfigError> {
    let file = ConfigFile::read(path)?;
    file.only(&file.root, &["server_key", "server_cert", "custom_ca", "client_verify"])?;
    let mut config = SslConfig {
        server_key: String::new(),
        server_cert: String::new(),
        custom_ca: String::new(),
        client_verify: false,
    };
    for field in &file.root.fields {
        match field.name.as_str() {
            "server_key" => config.server_key = file.string(field)?,
            "server_cert" => config.server_cert = file.string(field)?,
            "custom_ca" => config.custom_ca = file.string(field)?,
            _ => config.client_verify = file.boolean(field)?,
        }
    }
    let missing = |name: &str, what: &str| {
        file.field_error(None, name, format!("missing or empty: TLS needs {what} (PEM contents, not a path)"))
    };
    if config.server_key.trim().is_empty() {
        return Err(missing("server_key", "the server's private key"));
    }
    if config.server_cert.trim().is_empty() {
        return Err(missing("server_cert", "the server's certificate chain"));
    }
    if config.client_verify && config.custom_ca.trim().is_empty() {
        return Err(missing("custom_ca", "the CA that signs client certificates when client_verify is true"));
    }
    Ok((file, config))
}

/// Builds both ports' rustls configurations; errors name the field whose PEM is wrong.
fn build(file: &ConfigFile, config: SslConfig) -> Result<Loaded, ConfigError> {
    let error = |name: &str, reason: String| {
        file.field_error(file.root.fields.iter().rfind(|f| f.name == name), name, reason)
    };
    let certificates = |field: &str, pem_text: &str| -> Result<Vec<CertificateDer<'static>>, ConfigError> {
        let certs = CertificateDer::pem_slice_iter(pem_text.as_bytes())
            .collect::<Result<Vec<_>, pem::Error>>()
            .map_err(|e| error(field, format!("invalid PEM: {e}")))?;
        if certs.is_empty() {
            return Err(error(field, "holds no `-----BEGIN CERTIFICATE-----` block".into()));
        }
        Ok(certs)
    };
    let chain = certificates("server_cert", &config.server_cert)?;
    let key = PrivateKeyDer::from_pem_slice(config.server_key.as_bytes()).map_err(|e| match e {
        pem::Error::NoItemsFound => error(
            "server_key",
            "holds no PEM private key (PKCS#8, PKCS#1 or SEC1 `BEGIN ... PRIVATE KEY`)".into(),
        ),
        other => error("server_key", format!("invalid PEM: {other}")),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = if config.client_verify {
        let mut roots = RootCertStore::empty();
        for ca in certificates("custom_ca", &config.custom_ca)? {
            roots.add(ca).map_err(|e| error("custom_ca", format!("not a usable CA certificate: {e}")))?;
        }
        Some(
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| error("custom_ca", format!("cannot verify clients with it: {e}")))?,
        )
    } else {
        None
    };
    let server_config = |alpn: &[u8]| -> Result<Arc<ServerConfig>, ConfigError> {
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| error("server_key", format!("no TLS version is usable: {e}")))?;
        let builder = match &verifier {
            Some(verifier) => builder.with_client_cert_verifier(verifier.clone()),
            None => builder.with_no_client_auth(),
        };
        let mut server = builder.with_single_cert(chain.clone(), key.clone_key()).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => {
                error("server_key", "does not match the public key in server_cert".into())
            }
            rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
                error("server_cert", format!("not a usable certificate: {e}"))
            }
            other => error("server_key", format!("not a usable private key: {other}")),
        })?;
        server.alpn_protocols = vec![alpn.to_vec()];
        Ok(Arc::new(server))
    };
    Ok(Loaded { rest: server_config(b"http/1.1")?, grpc: server_config(b"h2")?, config })
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn escaped(pem: &str) -> String {
        format!("\"{}\"", pem.replace('\n', "\\n"))
    }

    /// Loads `text` as an SSL config file; the error message when it is refused.
    fn refusal(text: &str) -> Result<String, Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("ssl.pbtxt");
        std::fs::write(&path, text)?;
        match Tls::load(&path) {
            Ok(_) => Err("accepted".into()),
            Err(error) => Ok(error.to_string()),
        }
    }

    #[test]
    fn loads_tf_ssl_config_and_refuses_bad_ones_naming_the_field() -> TestResult {
        let server = rcgen::generate_simple_self_signed(["localhost".to_owned()])?;
        let other = rcgen::generate_simple_self_signed(["localhost".to_owned()])?;
        let (key, cert) = (escaped(&server.signing_key.serialize_pem()), escaped(&server.cert.pem()));
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("ssl.pbtxt");
        std::fs::write(
            &path,
            format!("server_key: {key}\nserver_cert: {cert}\ncustom_ca: {cert}\nclient_verify: true\n"),
        )?;
        assert!(Tls::load(&path)?.client_verify());

        let cases = [
            (
                format!("server_key: {key}\nserver_cert: {cert}\nciphers: 'x'\n"),
                "line 3: field `ciphers`: unknown",
            ),
            (format!("server_cert: {cert}\n"), "field `server_key`: missing or empty"),
            (format!("server_key: {key}\n"), "field `server_cert`: missing or empty"),
            (
                format!("server_key: {key}\nserver_cert: {cert}\nclient_verify: true\n"),
                "field `custom_ca`: missing",
            ),
            (format!("server_key: {key}\nserver_cert: 'not PEM'\n"), "line 2: field `server_cert`: holds no"),
            (
                format!(
                    "server_key: {key}\nserver_cert: '-----BEGIN CERTIFICATE-----\\n!!\\n-----END CERTIFICATE-----\\n'\n"
                ),
                "field `server_cert`: invalid PEM",
            ),
            (
                format!("server_key: {cert}\nserver_cert: {cert}\n"),
                "line 1: field `server_key`: holds no PEM private key",
            ),
            (
                format!("server_key: {}\nserver_cert: {cert}\n", escaped(&other.signing_key.serialize_pem())),
                "field `server_key`: does not match the public key in server_cert",
            ),
            (
                format!("server_key: {key}\nserver_cert: {cert}\nclient_verify: maybe\n"),
                "field `client_verify`",
            ),
            ("server_key: '-----BEGIN\n".to_owned(), "unterminated string"),
        ];
        for (text, expected) in cases {
            let message = refusal(&text)?;
            assert!(message.contains(expected), "{expected:?} not in {message:?}");
            assert!(message.contains("ssl.pbtxt"), "{message}");
        }
        Ok(())
    }
}
