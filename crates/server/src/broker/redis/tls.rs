//! TLS to Redis (`rediss://`): the roots a Redis server's certificate is checked against, read
//! once at start (the CA file given, or else the system's trusted roots), for both kinds of
//! connection: redis-rs's (commands, given the CA's PEM as [`redis::TlsCertificates`]) and ours
//! (pub/sub, [`Tls::connect`]). Both check the certificate and its name (a host name, or an IP
//! address among its subject alternative names); there is no way to turn the check off.

use std::io;
use std::path::Path;
use std::sync::Arc;

use redis::TlsCertificates;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The roots could not be read.
#[derive(Debug, thiserror::Error)]
#[error("TLS to Redis: {0}")]
pub(crate) struct BadTls(pub(crate) String);

/// How the node's own connections to a `rediss://` Redis are opened (cheap to clone).
#[derive(Clone)]
pub(crate) struct Tls(TlsConnector);

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

impl Tls {
    /// Reads the roots: every certificate of the PEM file `ca`, or without one the system's.
    /// Returns also what redis-rs is given for its own connections (the same roots).
    pub(crate) fn load(ca: Option<&Path>) -> Result<(Tls, TlsCertificates), BadTls> {
        // redis-rs builds its configurations with the process's default provider; an embedder
        // that installed one first keeps it.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let provider = rustls::crypto::CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
        // redis-rs reads the system's roots on every connection, even with a CA file given,
        // and fails when reading them fails: so is this node refused at start.
        let system = rustls_native_certs::load_native_certs();
        if let Some(e) = system.errors.first() {
            return Err(BadTls(format!(
                "the system's trusted root certificates cannot be read: {e}"
            )));
        }
        let mut roots = RootCertStore::empty();
        let pem = match ca {
            Some(path) => {
                let pem = read_ca(path, &mut roots)?;
                Some(pem)
            }
            None => {
                let (added, _) = roots.add_parsable_certificates(system.certs);
                if added == 0 {
                    return Err(BadTls(
                        "no trusted root certificate on this system to check Redis's \
                         certificate against: give the CA file that signed it \
                         (--redis-tls-ca)"
                            .into(),
                    ));
                }
                None
            }
        };
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| BadTls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let certificates = TlsCertificates {
            client_tls: None,
            root_cert: pem,
        };
        Ok((Tls(TlsConnector::from(Arc::new(config))), certificates))
    }

    /// TLS over `tcp`, to the server named `host` (checked against its certificate).
    pub(crate) async fn connect(
        &self,
        host: &str,
        tcp: TcpStream,
    ) -> io::Result<TlsStream<TcpStream>> {
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{host}: {e}")))?;
        self.0.connect(name, tcp).await
    }
}

/// Adds every certificate of the PEM file at `path` to `roots` (read as the listener's own
/// certificates are, [`crate::tls::pem_certificates`]); the file's bytes.
fn read_ca(path: &Path, roots: &mut RootCertStore) -> Result<Vec<u8>, BadTls> {
    let at = path.display();
    let pem = std::fs::read(path).map_err(|e| BadTls(format!("the CA file {at}: {e}")))?;
    let certs = crate::tls::pem_certificates(path, &pem)
        .map_err(|e| BadTls(e.replacen("the certificate file", "the CA file", 1)))?;
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| BadTls(format!("the CA file {at}: a certificate in it: {e}")))?;
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, text: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("cortex-tls-{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_ca_file_that_is_missing_or_holds_no_certificate_is_refused_naming_it() {
        let missing = std::env::temp_dir().join("cortex-tls-no-such-ca.pem");
        let err = Tls::load(Some(&missing)).unwrap_err().to_string();
        assert!(err.contains("no-such-ca.pem"), "{err}");

        let not_pem = file("not.pem", "hello\n");
        let err = Tls::load(Some(&not_pem)).unwrap_err().to_string();
        assert!(err.contains("no PEM certificate in it"), "{err}");

        let key_only = file(
            "key.pem",
            "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n",
        );
        let err = Tls::load(Some(&key_only)).unwrap_err().to_string();
        assert!(err.contains("no PEM certificate in it"), "{err}");

        let garbage = file(
            "garbage.pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        );
        let err = Tls::load(Some(&garbage)).unwrap_err().to_string();
        assert!(err.contains("garbage.pem"), "{err}");
        for p in [not_pem, key_only, garbage] {
            let _ = std::fs::remove_file(p);
        }
    }
}
