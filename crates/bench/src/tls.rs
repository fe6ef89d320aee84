//! `wss://` targets: an address written `wss://HOST:PORT` (or `https://HOST:PORT`) is reached
//! over TLS, its certificate checked against the CA file given with `--ca` (rustls with the ring
//! provider, no system roots). The subscribers' WebSockets speak TLS themselves
//! ([`connector`]); the coordinator's publisher (reqwest, built here without TLS) posts through
//! a [`relay`] of this process that opens one TLS connection to the server per HTTP connection,
//! so that the server sees HTTPS keep-alive connections as from any backend while the relay's
//! cost lands on the load side.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::{TcpListener, TcpStream};

/// `addr` without its `wss://` or `https://` scheme, and whether it had one (plain `HOST:PORT`
/// and `ws://`, `http://` are plain TCP).
pub fn split(addr: &str) -> (bool, &str) {
    for (scheme, tls) in [
        ("wss://", true),
        ("https://", true),
        ("ws://", false),
        ("http://", false),
    ] {
        if let Some(rest) = addr.strip_prefix(scheme) {
            return (tls, rest.trim_end_matches('/'));
        }
    }
    (false, addr)
}

/// A client configuration that trusts the certificates of the PEM file `ca` only, offering
/// ALPN `http/1.1`.
pub fn client_config(ca: &Path) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    let certs =
        CertificateDer::pem_file_iter(ca).with_context(|| format!("--ca {}", ca.display()))?;
    for cert in certs {
        roots
            .add(cert.with_context(|| format!("--ca {}: not PEM", ca.display()))?)
            .with_context(|| format!("--ca {}", ca.display()))?;
    }
    if roots.is_empty() {
        return Err(anyhow!("--ca {}: no certificate in it", ca.display()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What a WebSocket handshake over TLS is given.
pub fn connector(config: &Arc<ClientConfig>) -> tokio_tungstenite::Connector {
    tokio_tungstenite::Connector::Rustls(config.clone())
}

/// Listens on a free loopback port and relays each connection made to it over a new TLS
/// connection to `server` (named `host` in the handshake); returns the port's address. Runs
/// until the process ends.
pub async fn relay(
    server: SocketAddr,
    host: &str,
    config: Arc<ClientConfig>,
) -> Result<SocketAddr> {
    let name = ServerName::try_from(host.to_owned()).map_err(|e| anyhow!("{host}: {e}"))?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let connector = tokio_rustls::TlsConnector::from(config);
    tokio::spawn(async move {
        while let Ok((mut plain, _)) = listener.accept().await {
            let (connector, name) = (connector.clone(), name.clone());
            tokio::spawn(async move {
                let _ = plain.set_nodelay(true);
                let Ok(tcp) = TcpStream::connect(server).await else {
                    return;
                };
                let _ = tcp.set_nodelay(true);
                match connector.connect(name, tcp).await {
                    Ok(mut tls) => {
                        let _ = tokio::io::copy_bidirectional(&mut plain, &mut tls).await;
                    }
                    Err(e) => eprintln!("bench: TLS to {server}: {e}"),
                }
            });
        }
    });
    Ok(addr)
}

/// Where the publisher posts for the publish address `addr`: itself when plain, else a
/// [`relay`] to it over TLS (checked against `ca`).
pub async fn publish_addr(addr: &str, ca: Option<&Path>) -> Result<String> {
    let (tls, host_port) = split(addr);
    if !tls {
        return Ok(host_port.to_owned());
    }
    let ca = ca.ok_or_else(|| anyhow!("{addr}: a wss:// address needs --ca FILE"))?;
    let server = tokio::net::lookup_host(host_port)
        .await?
        .next()
        .ok_or_else(|| anyhow!("{addr} resolves to nothing"))?;
    let host = host_port
        .rsplit_once(':')
        .map_or(host_port, |(h, _)| h)
        .trim_matches(['[', ']']);
    Ok(relay(server, host, client_config(ca)?).await?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_say_tls_or_not() {
        assert_eq!(split("wss://127.0.0.1:8443"), (true, "127.0.0.1:8443"));
        assert_eq!(split("https://127.0.0.1:8443/"), (true, "127.0.0.1:8443"));
        assert_eq!(split("ws://127.0.0.1:80"), (false, "127.0.0.1:80"));
        assert_eq!(split("127.0.0.1:80"), (false, "127.0.0.1:80"));
    }
}
