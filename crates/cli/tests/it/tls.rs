//! TLS on the listener (CONTRACT.md section 10, `--tls-cert`/`--tls-key`): `wss://` and
//! `https://` through real rustls clients that trust the test's own CA (made by `openssl`),
//! TLS 1.3 and 1.2, ALPN `http/1.1`, plain HTTP on the TLS port refused while TLS clients keep
//! working, a rewritten certificate served to new connections within 10 s while an open one
//! stays, and `serve` refusing to start on a certificate or key it cannot serve.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cortex_realtime::TlsConfig;
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ProtocolVersion, RootCertStore, SupportedProtocolVersion};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use crate::util::*;

/// A CA of the test's own (made by `openssl` in a directory of its own, removed when dropped)
/// and the server certificates it issues for 127.0.0.1.
pub struct Ca {
    dir: PathBuf,
}

/// A certificate issued by a [`Ca`]: its chain and key files.
#[derive(Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Ca {
    pub fn new() -> Ca {
        let dir = temp_path("tls");
        std::fs::create_dir_all(&dir).unwrap();
        let ca = Ca { dir };
        ca.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-subj",
            "/CN=cortex-realtime TLS test CA",
            "-days",
            "2",
        ]);
        std::fs::write(
            ca.dir.join("ext.cnf"),
            "subjectAltName = IP:127.0.0.1, DNS:localhost\nbasicConstraints = CA:FALSE\n\
             keyUsage = critical, digitalSignature\nextendedKeyUsage = serverAuth\n",
        )
        .unwrap();
        ca
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .current_dir(&self.dir)
            .args(args)
            .output()
            .expect("openssl runs");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    }

    /// The CA's certificate (PEM).
    pub fn pem(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A fresh key and a certificate for 127.0.0.1 signed by this CA, named `name`.
    pub fn issue(&self, name: &str) -> Issued {
        let (key, csr, cert) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN=127.0.0.1 {name}"),
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            &cert,
        ]);
        Issued {
            cert: self.dir.join(cert),
            key: self.dir.join(key),
        }
    }

    /// A path in this CA's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A client that trusts this CA, speaking `versions`, offering `alpn`.
    pub fn client(
        &self,
        versions: &[&'static SupportedProtocolVersion],
        alpn: &[&str],
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(self.pem()).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Arc::new(config)
    }

    /// A client of TLS 1.3 and 1.2 offering `http/1.1`, as browsers do.
    pub fn usual_client(&self) -> Arc<ClientConfig> {
        self.client(rustls::ALL_VERSIONS, &["http/1.1"])
    }
}

impl Drop for Ca {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The DER of the first certificate of the PEM file `path`.
fn der(path: &Path) -> Vec<u8> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

/// A TLS connection to `addr` checked against the client's roots for the name 127.0.0.1.
pub async fn tls(
    addr: SocketAddr,
    client: &Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let connect = tokio_rustls::TlsConnector::from(client.clone()).connect(name, tcp);
    tokio::time::timeout(WAIT, connect)
        .await
        .map_err(|_| std::io::Error::other("TLS handshake timed out"))?
}

/// The first certificate the server presented.
fn served(tls: &TlsStream<TcpStream>) -> Vec<u8> {
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// A `wss://` WebSocket at `path` (`/api/ws?token=...` or `/api/ws`), over a fresh TLS
/// connection; the certificate it was served too.
pub async fn wss(
    addr: SocketAddr,
    client: &Arc<ClientConfig>,
    path: &str,
) -> (WebSocketStream<TlsStream<TcpStream>>, Vec<u8>) {
    let tls = tls(addr, client).await.expect("TLS handshake");
    let cert = served(&tls);
    let url = format!("wss://127.0.0.1:{}{path}", addr.port());
    let (ws, resp) = tokio_tungstenite::client_async(url, tls)
        .await
        .expect("WebSocket over TLS");
    assert_eq!(resp.status(), 101);
    (ws, cert)
}

/// The next text message as JSON, within [`WAIT`].
pub async fn recv<S>(ws: &mut WebSocketStream<S>) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message in time")
            .expect("open")
            .expect("a frame");
        if let Message::Text(t) = m {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

pub async fn send<S>(ws: &mut WebSocketStream<S>, v: Value)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// One HTTP/1.1 request over a fresh TLS connection (`https://`); (status, body).
pub async fn https(
    addr: SocketAddr,
    client: &Arc<ClientConfig>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut tls = tls(addr, client).await.expect("TLS handshake");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\nContent-Length: {}\r\n",
        addr.port(),
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, tls.read_to_end(&mut answer))
        .await
        .expect("an answer in time");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    (parse_head(head).0, body.to_owned())
}

/// Publishes `body` with the test publish key over `https://`.
pub async fn https_publish(
    addr: SocketAddr,
    client: &Arc<ClientConfig>,
    body: &Value,
) -> (u16, Value) {
    https_publish_with(addr, client, PUBLISH_KEY, body).await
}

/// Publishes `body` with `key` over `https://`.
pub async fn https_publish_with(
    addr: SocketAddr,
    client: &Arc<ClientConfig>,
    key: &str,
    body: &Value,
) -> (u16, Value) {
    let auth = format!("Bearer {key}");
    let (status, text) = https(
        addr,
        client,
        "POST",
        "/api/events",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        &body.to_string(),
    )
    .await;
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A server on `issued`, reloading at the default interval.
async fn server(issued: &Issued) -> TestServer {
    let mut c = config();
    c.tls = Some(TlsConfig::new(&issued.cert, &issued.key));
    TestServer::with(c).await
}

/// A connection subscribed to `task:t_1` of `o_1`, its token in the first frame (transport 3).
async fn subscribed(
    addr: SocketAddr,
    client: &Arc<ClientConfig>,
) -> (WebSocketStream<TlsStream<TcpStream>>, Vec<u8>) {
    let (mut ws, cert) = wss(addr, client, "/api/ws").await;
    send(&mut ws, json!({"type":"auth","token":token("u_1","o_1")})).await;
    assert_eq!(recv(&mut ws).await["type"], "connected");
    send(&mut ws, json!({"type":"subscribe","channelId":"task:t_1"})).await;
    assert_eq!(recv(&mut ws).await["type"], "subscribed");
    (ws, cert)
}

#[tokio::test]
async fn wss_and_https_carry_the_protocol_over_tls_1_3_and_1_2_with_alpn_http_1_1() {
    let ca = Ca::new();
    let issued = ca.issue("server");
    let s = server(&issued).await;
    for (version, want) in [
        (&rustls::version::TLS13, ProtocolVersion::TLSv1_3),
        (&rustls::version::TLS12, ProtocolVersion::TLSv1_2),
    ] {
        let client = ca.client(&[version], &["h2", "http/1.1"]);
        let conn = tls(s.addr, &client).await.expect("handshake");
        let (_, session) = conn.get_ref();
        assert_eq!(session.protocol_version(), Some(want));
        assert_eq!(session.alpn_protocol(), Some(&b"http/1.1"[..]), "{want:?}");
        drop(conn);

        // Transport 1 (token in the query) and 3 (the first frame), both over TLS.
        let url = format!("/api/ws?token={}", token("u_2", "o_1"));
        let (mut by_query, cert) = wss(s.addr, &client, &url).await;
        assert_eq!(cert, der(&issued.cert));
        assert_eq!(recv(&mut by_query).await["type"], "connected");
        send(
            &mut by_query,
            json!({"type":"subscribe","channelId":"task:t_1"}),
        )
        .await;
        assert_eq!(recv(&mut by_query).await["type"], "subscribed");
        let (mut by_frame, _) = subscribed(s.addr, &client).await;

        // Deliveries to a few subscribers go through each session's task (no direct writes on
        // TLS): in order, whole.
        for n in 0..20 {
            let (status, answer) =
                https_publish(s.addr, &client, &event("o_1", &["task:t_1"], n)).await;
            assert_eq!(status, 202, "{answer}");
        }
        for ws in [&mut by_query, &mut by_frame] {
            for n in 0..20 {
                let e = recv(ws).await;
                assert_eq!(e["type"], "task.status_changed", "{e}");
                assert_eq!(e["payload"]["n"], n, "{e}");
            }
        }
        let (status, body) = https(s.addr, &client, "GET", "/healthz", &[], "").await;
        assert_eq!((status, body.as_str()), (200, "ok"));
        // A wrong token over `https://` upgrade is refused as over plain TCP.
        let (status, _) = https(
            s.addr,
            &client,
            "GET",
            "/api/ws",
            &[
                ("Authorization", "Bearer nope"),
                ("Connection", "Upgrade"),
                ("Upgrade", "websocket"),
                ("Sec-WebSocket-Version", "13"),
                ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ],
            "",
        )
        .await;
        assert_eq!(status, 401);
    }
    s.shutdown().await;
}

#[tokio::test]
async fn a_client_without_http_1_1_among_its_alpn_protocols_is_refused_in_the_handshake() {
    let ca = Ca::new();
    let s = server(&ca.issue("server")).await;
    let err = tls(s.addr, &ca.client(rustls::ALL_VERSIONS, &["h2"]))
        .await
        .err();
    assert!(err.is_some(), "an h2-only client must not get a connection");
    // Without ALPN at all (curl --no-alpn, older clients): served.
    let client = ca.client(rustls::ALL_VERSIONS, &[]);
    let (status, _) = https(s.addr, &client, "GET", "/healthz", &[], "").await;
    assert_eq!(status, 200);
    s.shutdown().await;
}

#[tokio::test]
async fn plain_http_and_garbage_on_the_tls_port_are_refused_while_tls_clients_keep_working() {
    let ca = Ca::new();
    let s = server(&ca.issue("server")).await;
    let client = ca.usual_client();
    let (mut open, _) = subscribed(s.addr, &client).await;

    // Plain HTTP: a 400 in plain text naming the scheme to use, then the close.
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(WAIT, tcp.read_to_string(&mut answer))
        .await
        .expect("answered and closed in time")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(answer.contains("https://"), "{answer}");
    // A plain WebSocket client (ws:// on a wss:// port) fails; it does not hang.
    let plain = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async(format!("ws://{}/api/ws", s.addr)),
    )
    .await
    .expect("refused in time");
    assert!(plain.is_err());
    // A TLS record header followed by garbage: the handshake fails, the connection closes.
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5])
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut rest))
        .await
        .expect("closed in time");

    // The open connection and new ones are served all along.
    let (status, _) = https_publish(s.addr, &client, &event("o_1", &["task:t_1"], 7)).await;
    assert_eq!(status, 202);
    assert_eq!(recv(&mut open).await["payload"]["n"], 7);
    let (mut fresh, _) = subscribed(s.addr, &client).await;
    https_publish(s.addr, &client, &event("o_1", &["task:t_1"], 8)).await;
    assert_eq!(recv(&mut fresh).await["payload"]["n"], 8);
    assert_eq!(recv(&mut open).await["payload"]["n"], 8);
    s.shutdown().await;
}

/// Replaces `to`'s files by `from`'s, as a renewal does (each written whole, then renamed over).
fn rewrite(from: &Issued, to: &Issued) {
    for (src, dst) in [(&from.cert, &to.cert), (&from.key, &to.key)] {
        let tmp = dst.with_extension("tmp");
        std::fs::copy(src, &tmp).unwrap();
        std::fs::rename(&tmp, dst).unwrap();
    }
}

#[tokio::test]
async fn a_rewritten_certificate_is_served_to_new_connections_within_10_s_while_open_ones_stay() {
    let ca = Ca::new();
    let first = ca.issue("first");
    let second = ca.issue("second");
    let live = Issued {
        cert: ca.path("live.pem"),
        key: ca.path("live.key"),
    };
    rewrite(&first, &live);
    let s = server(&live).await;
    let client = ca.usual_client();
    let (mut open, cert) = subscribed(s.addr, &client).await;
    assert_eq!(cert, der(&first.cert));

    rewrite(&second, &live);
    let rewritten = Instant::now();
    loop {
        let conn = tls(s.addr, &client).await.expect("handshake");
        if served(&conn) == der(&second.cert) {
            break;
        }
        assert_eq!(served(&conn), der(&first.cert));
        assert!(
            rewritten.elapsed() < Duration::from_secs(10),
            "the rewritten certificate is not served after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("served the new certificate after {:?}", rewritten.elapsed());
    let (mut fresh, cert) = subscribed(s.addr, &client).await;
    assert_eq!(cert, der(&second.cert));
    // The connection opened before the rewrite is still open and served.
    https_publish(s.addr, &client, &event("o_1", &["task:t_1"], 1)).await;
    assert_eq!(recv(&mut open).await["payload"]["n"], 1);
    assert_eq!(recv(&mut fresh).await["payload"]["n"], 1);

    // A rewrite that cannot be served (the first key beside the second certificate; then a
    // certificate file that is not PEM) is skipped: the last good pair is served on.
    std::fs::copy(&first.key, &live.key).unwrap();
    tokio::time::sleep(TlsConfig::DEFAULT_RELOAD_INTERVAL * 2).await;
    let conn = tls(s.addr, &client).await.expect("still served");
    assert_eq!(served(&conn), der(&second.cert));
    std::fs::write(&live.cert, "not a certificate\n").unwrap();
    tokio::time::sleep(TlsConfig::DEFAULT_RELOAD_INTERVAL * 2).await;
    let conn = tls(s.addr, &client).await.expect("still served");
    assert_eq!(served(&conn), der(&second.cert));
    // And a good pair after them is taken again.
    rewrite(&first, &live);
    let deadline = Instant::now() + Duration::from_secs(10);
    while served(&tls(s.addr, &client).await.unwrap()) != der(&first.cert) {
        assert!(
            Instant::now() < deadline,
            "the good pair is not served again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    https_publish(s.addr, &client, &event("o_1", &["task:t_1"], 2)).await;
    assert_eq!(recv(&mut open).await["payload"]["n"], 2);
    s.shutdown().await;
}

/// `serve` with the test keys and `args`; must exit non-zero within [`WAIT`]: its stderr.
async fn refused(args: &[&str]) -> String {
    let mut all = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--jwt-secret",
        SECRET,
        "--publish-key",
        PUBLISH_KEY,
    ];
    all.extend_from_slice(args);
    let p = run_bin(&all, &[]).await;
    assert!(!p.status().success(), "serve {args:?} started");
    assert!(p.stdout().is_empty(), "{}", p.stdout());
    let err = p.stderr();
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[tokio::test]
async fn serve_refuses_to_start_on_a_missing_bad_or_mismatched_certificate_or_key_and_says_why() {
    let ca = Ca::new();
    let a = ca.issue("a");
    let b = ca.issue("b");
    let (cert, key) = (a.cert.to_str().unwrap(), a.key.to_str().unwrap());
    let missing = ca.path("missing.pem");
    let missing = missing.to_str().unwrap();
    let garbage = ca.path("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let garbage = garbage.to_str().unwrap();

    let err = refused(&["--tls-cert", missing, "--tls-key", key]).await;
    assert!(
        err.contains("certificate file") && err.contains("missing.pem"),
        "{err}"
    );
    let err = refused(&["--tls-cert", cert, "--tls-key", missing]).await;
    assert!(
        err.contains("private key file") && err.contains("missing.pem"),
        "{err}"
    );
    // The key given as the certificate and the other way round.
    let err = refused(&["--tls-cert", key, "--tls-key", key]).await;
    assert!(err.contains("no PEM certificate in it"), "{err}");
    let err = refused(&["--tls-cert", cert, "--tls-key", cert]).await;
    assert!(err.contains("no PEM private key in it"), "{err}");
    let err = refused(&["--tls-cert", garbage, "--tls-key", key]).await;
    assert!(err.contains("garbage.pem"), "{err}");
    let err = refused(&["--tls-cert", cert, "--tls-key", b.key.to_str().unwrap()]).await;
    assert!(err.contains("does not match"), "{err}");
    let err = refused(&["--tls-cert", cert]).await;
    assert!(
        err.contains("--tls-cert was given without --tls-key"),
        "{err}"
    );
    let err = refused(&["--tls-key", key]).await;
    assert!(
        err.contains("--tls-key was given without --tls-cert"),
        "{err}"
    );
}

#[tokio::test]
async fn serve_takes_tls_from_the_environment_and_the_config_file() {
    let ca = Ca::new();
    let a = ca.issue("a");
    let client = ca.usual_client();
    let base = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--jwt-secret",
        SECRET,
        "--publish-key",
        PUBLISH_KEY,
    ];
    let env = [
        ("CORTEX_TLS_CERT", a.cert.to_str().unwrap()),
        ("CORTEX_TLS_KEY", a.key.to_str().unwrap()),
    ];
    let mut p = Proc::spawn(&base, &env);
    let addr = p.listening().await;
    let (status, body) = https(addr, &client, "GET", "/readyz", &[], "").await;
    assert_eq!((status, body.as_str()), (200, "ready"));
    p.kill();

    let file = ca.path("cortex.toml");
    std::fs::write(
        &file,
        format!("tls_cert = {:?}\ntls_key = {:?}\n", a.cert, a.key),
    )
    .unwrap();
    let mut args = base.to_vec();
    args.extend(["--config", file.to_str().unwrap()]);
    let mut p = Proc::spawn(&args, &[]);
    let addr = p.listening().await;
    let (status, _) = https_publish(addr, &client, &event("o_1", &["task:t_1"], 1)).await;
    assert_eq!(status, 202);
    p.kill();
}

#[tokio::test]
async fn a_client_that_stalls_in_the_handshake_is_dropped_after_the_handshake_timeout() {
    let ca = Ca::new();
    let issued = ca.issue("server");
    let mut c = config();
    c.tls = Some(TlsConfig::new(&issued.cert, &issued.key));
    c.limits.handshake_timeout = Duration::from_millis(500);
    let s = TestServer::with(c).await;
    // Nothing at all, then the first bytes of a record and no more (slowloris over TLS).
    for sent in [&[][..], &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01][..]] {
        let mut tcp = TcpStream::connect(s.addr).await.unwrap();
        tcp.write_all(sent).await.unwrap();
        let started = Instant::now();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut rest))
            .await
            .expect("dropped before the test's wait");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(400) && took < Duration::from_secs(3),
            "dropped after {took:?}"
        );
    }
    let client = ca.usual_client();
    let (status, _) = https(s.addr, &client, "GET", "/healthz", &[], "").await;
    assert_eq!(status, 200);
    s.shutdown().await;
}

#[tokio::test]
async fn a_drain_closes_tls_websockets_with_1001() {
    let ca = Ca::new();
    let s = server(&ca.issue("server")).await;
    let client = ca.usual_client();
    let (mut ws, _) = subscribed(s.addr, &client).await;
    let drained = tokio::spawn(s.shutdown());
    let code = loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("closed in time")
        {
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(code, Some(1001));
    // Answer the close, as clients do, so the drain ends at once.
    let _ = tokio::time::timeout(WAIT, async { while let Some(Ok(_)) = ws.next().await {} }).await;
    drained.await.unwrap();
}

#[tokio::test]
async fn the_admin_listener_serves_the_same_certificate_and_its_reloads() {
    let ca = Ca::new();
    let first = ca.issue("first");
    let second = ca.issue("second");
    let live = Issued {
        cert: ca.path("live.pem"),
        key: ca.path("live.key"),
    };
    rewrite(&first, &live);
    let mut c = config();
    c.tls = Some(TlsConfig::new(&live.cert, &live.key));
    c.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    c.admin_key = Some("admin-key".into());
    let server = cortex_realtime::Server::bind(c).await.unwrap();
    let admin = server.admin_addr().expect("an admin listener");
    let handle = server.start();
    let client = ca.usual_client();

    let conn = tls(admin, &client)
        .await
        .expect("TLS on the admin listener");
    assert_eq!(served(&conn), der(&first.cert));
    let auth = [("Authorization", "Bearer admin-key")];
    let (status, body) = https(admin, &client, "GET", "/admin/api/info", &auth, "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["connections"],
        0
    );
    let (status, _) = https(admin, &client, "GET", "/", &[], "").await;
    assert_eq!(status, 200, "the console over https://");

    // Plain HTTP there is refused as on the main listener.
    let mut tcp = TcpStream::connect(admin).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(WAIT, tcp.read_to_string(&mut answer))
        .await
        .expect("answered and closed in time")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");

    // A renewal reaches the admin listener too.
    rewrite(&second, &live);
    let deadline = Instant::now() + Duration::from_secs(10);
    while served(&tls(admin, &client).await.unwrap()) != der(&second.cert) {
        assert!(
            Instant::now() < deadline,
            "the admin listener does not serve the rewritten certificate after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    handle.shutdown().await;
}
