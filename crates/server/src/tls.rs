//! TLS on a listener of the node (`Config::tls`): the certificate chain and key read from their
//! PEM files and checked at start, read again every few seconds so that a renewed certificate is
//! served to the connections accepted after it (the open ones keep theirs), and the handshake of
//! one accepted TCP connection. Any listener may use it: [`Acceptor::accept`] turns a TCP
//! stream into a TLS one. It never reads HTTP or WebSocket; it also owns the PEM reading the
//! Redis TLS shares ([`pem_certificates`]).
//!
//! What is served: TLS 1.3 and 1.2 (rustls with the ring provider), ALPN `http/1.1` only (a
//! client that offers ALPN without it is refused in the handshake), no client certificates.
//! A connection whose first byte is not a TLS handshake record (plain HTTP on the TLS port) is
//! answered `400` in plain text naming the scheme to use, and closed.

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::config::TlsConfig;

/// What [`Acceptor::accept`] may be given: the listener's TCP stream.
pub(crate) type Tls = TlsStream<TcpStream>;

/// The certificate files cannot be served: the message says which file and why.
#[derive(Debug, thiserror::Error)]
#[error("TLS: {0}")]
pub struct BadCertificate(pub(crate) String);

/// The TLS side of a listener: the configuration in force (swapped when the files change) and
/// the files it came from. Shared by the listeners that serve TLS (`Arc`).
pub(crate) struct Acceptor {
    files: TlsConfig,
    /// Read once per accepted connection; replaced by [`Acceptor::reload`].
    current: RwLock<Arc<ServerConfig>>,
    /// The bytes of the two files last read (served, or refused and warned about once).
    seen: Mutex<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptor")
            .field("cert", &self.files.cert)
            .field("key", &self.files.key)
            .finish()
    }
}

/// How one accepted connection went.
pub(crate) enum Accepted {
    /// The handshake completed.
    Tls(Box<Tls>),
    /// It spoke plain HTTP (answered 400), closed, or failed the handshake: nothing to serve.
    Refused,
}

impl Acceptor {
    /// Reads and checks both files; the error names the file and what is wrong with it.
    pub(crate) fn load(files: &TlsConfig) -> Result<Acceptor, BadCertificate> {
        let (cert, key) = read_pair(files)?;
        let config = server_config(files, &cert, &key)?;
        Ok(Acceptor {
            files: files.clone(),
            current: RwLock::new(config),
            seen: Mutex::new((cert, key)),
        })
    }

    /// Reads both files again; a pair that changed since the last read is served from now on
    /// when it is valid, and otherwise warned about (once per change) while the old one stays.
    /// Returns whether a new pair is in force.
    pub(crate) fn reload(&self) -> bool {
        let (cert, key) = match read_pair(&self.files) {
            Ok(pair) => pair,
            Err(e) => {
                // A file being replaced may be missing for an instant: warn once it stays so.
                let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
                if !seen.0.is_empty() {
                    tracing::warn!(error = %e, "TLS certificate not reloaded; serving the previous one");
                    *seen = (Vec::new(), Vec::new());
                }
                return false;
            }
        };
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if seen.0 == cert && seen.1 == key {
                return false;
            }
            *seen = (cert.clone(), key.clone());
        }
        match server_config(&self.files, &cert, &key) {
            Ok(config) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "TLS certificate not reloaded; serving the previous one");
                false
            }
        }
    }

    /// Reloads every `reload_interval` until `stop` resolves (see [`Acceptor::reload`]).
    pub(crate) async fn watch(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        let mut stop = std::pin::pin!(stop);
        let mut tick =
            tokio::time::interval(self.files.reload_interval.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tick.tick() => {}
            }
            // Two small files: read on a blocking thread all the same (a slow disk must not
            // stall a runtime worker).
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || me.reload()).await;
        }
    }

    /// The TLS handshake on an accepted connection, with the configuration in force now. A
    /// connection whose first byte is not a TLS handshake record gets a plain-text 400 and is
    /// closed. The caller bounds the time it takes.
    pub(crate) async fn accept(&self, tcp: TcpStream) -> Accepted {
        let mut first = [0u8; 1];
        match tcp.peek(&mut first).await {
            Ok(1) if first[0] == HANDSHAKE_RECORD => {}
            Ok(1) => {
                crate::metrics::refused(crate::metrics::Refusal::PlainHttpOnTls);
                refuse_plain(tcp).await;
                return Accepted::Refused;
            }
            _ => return Accepted::Refused,
        }
        let config = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match tokio_rustls::TlsAcceptor::from(config).accept(tcp).await {
            Ok(tls) => Accepted::Tls(Box::new(tls)),
            Err(e) => {
                crate::metrics::refused(crate::metrics::Refusal::TlsHandshake);
                tracing::debug!(error = %e, "TLS handshake failed");
                Accepted::Refused
            }
        }
    }
}

/// The first byte of a TLS record that carries a handshake message (RFC 8446 section 5.1).
const HANDSHAKE_RECORD: u8 = 0x16;

/// Answers a plain-HTTP request on the TLS port, then closes (what is read of the request is
/// dropped; the answer goes out before the close).
async fn refuse_plain(mut tcp: TcpStream) {
    const ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n\
        Content-Length: 59\r\nConnection: close\r\n\r\n\
        This port speaks TLS only: use https:// or wss:// instead.\n";
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = tcp.write_all(ANSWER).await;
        let _ = tcp.shutdown().await;
        // Read what the client sent until it closes, so the close is not a reset that could
        // discard the answer before the client reads it.
        let mut sink = [0u8; 1024];
        while let Ok(n) = tokio::io::AsyncReadExt::read(&mut tcp, &mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// Both files' bytes.
fn read_pair(files: &TlsConfig) -> Result<(Vec<u8>, Vec<u8>), BadCertificate> {
    let read = |path: &Path, what: &str| {
        std::fs::read(path)
            .map_err(|e| BadCertificate(format!("the {what} file {}: {e}", path.display())))
    };
    Ok((
        read(&files.cert, "certificate")?,
        read(&files.key, "private key")?,
    ))
}

/// The server configuration of a chain and its key, checked to match.
fn server_config(
    files: &TlsConfig,
    cert: &[u8],
    key: &[u8],
) -> Result<Arc<ServerConfig>, BadCertificate> {
    let chain = pem_certificates(&files.cert, cert).map_err(BadCertificate)?;
    let at = files.key.display();
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| match e {
        pem::Error::NoItemsFound => BadCertificate(format!(
            "the private key file {at}: no PEM private key in it (-----BEGIN PRIVATE KEY-----, \
             RSA PRIVATE KEY or EC PRIVATE KEY)"
        )),
        e => BadCertificate(format!("the private key file {at}: not PEM: {e}")),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| BadCertificate(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            let why = match e {
                rustls::Error::InconsistentKeys(_) => {
                    "the private key does not match the certificate".to_owned()
                }
                e => e.to_string(),
            };
            BadCertificate(format!(
                "the certificate {} and the private key {at}: {why}",
                files.cert.display()
            ))
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Every certificate of the PEM text `pem` read from `path` (named in the error), at least one.
pub(crate) fn pem_certificates(
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, String> {
    let at = path.display();
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the certificate file {at}: not PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "the certificate file {at}: no PEM certificate in it (-----BEGIN CERTIFICATE-----)"
        ));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    //! Loading only; the handshake, the reload and the refusals are tested end to end
    //! (crates/cli/tests/it/tls.rs) with certificates made by `openssl`.

    use super::*;

    fn files(name: &str, cert: &str, key: &str) -> TlsConfig {
        let dir =
            std::env::temp_dir().join(format!("cortex-srv-tls-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cert.pem"), cert).unwrap();
        std::fs::write(dir.join("key.pem"), key).unwrap();
        TlsConfig::new(dir.join("cert.pem"), dir.join("key.pem"))
    }

    #[test]
    fn files_that_are_missing_or_hold_no_pem_are_refused_naming_the_file() {
        let missing = TlsConfig::new("/nonexistent/cert.pem", "/nonexistent/key.pem");
        let err = Acceptor::load(&missing).unwrap_err().to_string();
        assert!(
            err.contains("certificate file /nonexistent/cert.pem"),
            "{err}"
        );

        let f = files("nopem", "hello\n", "hello\n");
        let err = Acceptor::load(&f).unwrap_err().to_string();
        assert!(err.contains("no PEM certificate in it"), "{err}");

        let f = files(
            "nokey",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "not a key\n",
        );
        let err = Acceptor::load(&f).unwrap_err().to_string();
        assert!(err.contains("no PEM private key in it"), "{err}");
        assert!(err.contains("key.pem"), "{err}");
    }
}
