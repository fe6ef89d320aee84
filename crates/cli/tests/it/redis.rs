//! Real `redis-server`s of the tests' own, on free ports (never the machine's Redis on 6379):
//! one server, or a Redis Cluster made with `redis-cli --cluster create`, which a test can
//! kill, pause, flush and start again, in plain TCP or over TLS only ([`Certs`]); and nodes on
//! them.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cortex_realtime::RedisConfig;

use crate::util::*;

/// A CA and a certificate it signed for 127.0.0.1 and localhost (server and client use, as a
/// Cluster's nodes are each other's clients), made with the `openssl` command in a directory of
/// the test's own; removed when dropped.
pub struct Certs {
    dir: PathBuf,
}

impl Certs {
    pub fn make() -> Certs {
        let dir = temp_path("certs");
        std::fs::create_dir_all(&dir).unwrap();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .current_dir(&dir)
                .args(args)
                .output()
                .expect("openssl runs");
            assert!(out.status.success(), "openssl {args:?}: {out:?}");
        };
        let p256 = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        openssl(
            &[
                &["req", "-x509"][..],
                &p256,
                &["-keyout", "ca.key", "-out", "ca.pem"],
                &["-subj", "/CN=cortex-realtime test CA", "-days", "2"],
            ]
            .concat(),
        );
        openssl(
            &[
                &["req"][..],
                &p256,
                &["-keyout", "server.key", "-out", "server.csr"],
                &["-subj", "/CN=127.0.0.1"],
            ]
            .concat(),
        );
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName = IP:127.0.0.1, DNS:localhost\nbasicConstraints = CA:FALSE\n\
             keyUsage = critical, digitalSignature\nextendedKeyUsage = serverAuth, clientAuth\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
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
            "server.pem",
        ]);
        Certs { dir }
    }

    /// The CA's certificate (PEM).
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn file(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_owned()
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `redis-server` of the test's own, on `port`; killed when dropped.
pub struct Redis {
    child: Child,
    pub port: u16,
    /// Over TLS only (no plain port): the CA that signed its certificate.
    ca: Option<PathBuf>,
}

impl Redis {
    pub fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// Starts one on `port` and waits until it answers.
    pub fn start_on(port: u16) -> Redis {
        Redis::start_with(port, None, &[])
    }

    /// Starts one that speaks TLS only, on a free port, with the certificate of `certs` (and no
    /// client certificate asked for).
    pub fn start_tls(certs: &Certs) -> Redis {
        Redis::start_with(Redis::free_port(), Some(certs), &[])
    }

    /// On `port`, in plain TCP, or with `tls` over TLS only (`--port 0`).
    fn start_with(port: u16, tls: Option<&Certs>, extra: &[&str]) -> Redis {
        let port_arg = port.to_string();
        let (cert, key, ca) = match tls {
            Some(c) => (c.file("server.pem"), c.file("server.key"), c.file("ca.pem")),
            None => Default::default(),
        };
        let listen: Vec<&str> = match tls {
            None => vec!["--port", &port_arg],
            Some(_) => vec![
                "--port",
                "0",
                "--tls-port",
                &port_arg,
                "--tls-cert-file",
                &cert,
                "--tls-key-file",
                &key,
                "--tls-ca-cert-file",
                &ca,
                "--tls-auth-clients",
                "no",
            ],
        };
        let child = Command::new("redis-server")
            .args(listen)
            .args(["--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--protected-mode", "no"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian's redis-server package) is installed");
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis {
            child,
            port,
            ca: tls.map(Certs::ca),
        }
    }

    pub fn start() -> Redis {
        Redis::start_on(Redis::free_port())
    }

    /// `redis://`, or `rediss://` when it speaks TLS.
    pub fn url(&self) -> String {
        let scheme = if self.ca.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// `redis-cli`'s arguments for TLS with its CA, when it speaks TLS.
    fn tls_args(&self) -> Vec<String> {
        match &self.ca {
            Some(ca) => vec!["--tls".into(), "--cacert".into(), ca.display().to_string()],
            None => Vec::new(),
        }
    }

    /// Runs `redis-cli` against it; what it printed.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(self.tls_args())
            .args(args)
            .output()
            .expect("redis-cli runs");
        assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Sends `sig` (`-STOP`, `-CONT`) to it.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }

    /// SIGKILL, and wait for it to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A node on the Redis at `url`.
pub async fn node(url: &str) -> TestServer {
    let mut c = config();
    c.redis = Some(RedisConfig::new(url));
    TestServer::with(c).await
}

/// Waits until `/readyz` answers `want`.
pub async fn ready_is(s: &TestServer, want: u16, within: Duration) {
    ready_at(s.addr, want, within).await;
}

/// Waits until `/readyz` of the node listening on `addr` answers `want`.
pub async fn ready_at(addr: SocketAddr, want: u16, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let (status, _) = get(&format!("http://{addr}/readyz")).await;
        if status == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz stayed {status}, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A three-master Redis Cluster of the test's own (no replicas; a master's loss leaves the
/// other shards serving: `cluster-require-full-coverage no`); killed when dropped.
pub struct Cluster {
    pub masters: Vec<Redis>,
    dir: std::path::PathBuf,
    /// Over TLS only (bus and clients): its certificates.
    tls: Option<Certs>,
}

impl Cluster {
    /// A port free with its cluster bus port (+10000).
    fn free_pair() -> u16 {
        loop {
            let port = Redis::free_port();
            if port < 55000
                && TcpListener::bind(("127.0.0.1", port + 10000)).is_ok()
                && TcpListener::bind(("127.0.0.1", port)).is_ok()
            {
                return port;
            }
        }
    }

    fn start_node(dir: &Path, port: u16, tls: Option<&Certs>) -> Redis {
        let conf = dir.join(format!("nodes-{port}.conf"));
        let tls_bus: &[&str] = match tls {
            Some(_) => &["--tls-cluster", "yes", "--tls-replication", "yes"],
            None => &[],
        };
        Redis::start_with(
            port,
            tls,
            &[
                tls_bus,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    conf.to_str().unwrap(),
                    "--cluster-node-timeout",
                    "1000",
                    "--cluster-require-full-coverage",
                    "no",
                    "--dir",
                    dir.to_str().unwrap(),
                ],
            ]
            .concat(),
        )
    }

    /// Starts three masters and joins them with `redis-cli --cluster create`.
    pub fn start() -> Cluster {
        Cluster::start_with(None)
    }

    /// Starts three masters that speak TLS only, to clients and to each other (`tls-cluster`,
    /// so `CLUSTER SLOTS` names their TLS ports), with the certificate of `certs`.
    pub fn start_tls(certs: Certs) -> Cluster {
        Cluster::start_with(Some(certs))
    }

    /// Three masters, each with a replica (`--cluster-replicas 1`): `masters[0..3]` are the
    /// masters, `masters[3..6]` their replicas.
    pub fn start_replicated() -> Cluster {
        Cluster::start_n(None, 1)
    }

    fn start_with(tls: Option<Certs>) -> Cluster {
        Cluster::start_n(tls, 0)
    }

    fn start_n(tls: Option<Certs>, replicas: usize) -> Cluster {
        let dir = temp_path("redis-cluster");
        std::fs::create_dir_all(&dir).unwrap();
        let masters: Vec<Redis> = (0..3 * (1 + replicas))
            .map(|_| Cluster::start_node(&dir, Cluster::free_pair(), tls.as_ref()))
            .collect();
        let addrs: Vec<String> = masters
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(masters[0].tls_args())
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(out.status.success(), "redis-cli --cluster create: {out:?}");
        let cluster = Cluster { masters, dir, tls };
        cluster.wait_ok();
        // A replica that has not synced with its master yet would not take over from it.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cluster.masters.iter().all(|m| {
            let info = m.cli(&["INFO", "replication"]);
            info.contains("role:master") || info.contains("master_link_status:up")
        }) {
            assert!(Instant::now() < deadline, "the replicas did not sync");
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster
    }

    /// Waits until every live master says the cluster is ok.
    pub fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.masters.iter().all(|m| {
            m.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok")
                && m.cli(&["CLUSTER", "SLOTS"]).lines().count() > 3
        }) {
            assert!(Instant::now() < deadline, "the cluster did not become ok");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The seed URLs (every master).
    pub fn urls(&self) -> Vec<String> {
        self.masters.iter().map(Redis::url).collect()
    }

    /// The index of the master that owns `org`'s slot (as `redis-cli --cluster create` split
    /// them: three equal ranges in master order).
    pub fn shard_of(&self, org: &str) -> usize {
        let slot: u16 = self.masters[0]
            .cli(&["CLUSTER", "KEYSLOT", &format!("{{{org}}}")])
            .trim()
            .parse()
            .unwrap();
        match slot {
            0..=5460 => 0,
            5461..=10922 => 1,
            _ => 2,
        }
    }

    /// One org on each shard, in master order.
    pub fn org_per_shard(&self) -> Vec<String> {
        let mut found: Vec<Option<String>> = vec![None; 3];
        for n in 0.. {
            let org = format!("o_{n}");
            let shard = self.shard_of(&org);
            if found[shard].is_none() {
                found[shard] = Some(org);
            }
            if found.iter().all(Option::is_some) {
                return found.into_iter().map(Option::unwrap).collect();
            }
        }
        unreachable!()
    }

    /// SIGKILLs master `i`.
    pub fn kill(&mut self, i: usize) {
        self.masters[i].kill();
    }

    /// Starts master `i` again on its port, with its cluster config (it rejoins, empty).
    pub fn restart(&mut self, i: usize) {
        let port = self.masters[i].port;
        self.masters[i] = Cluster::start_node(&self.dir, port, self.tls.as_ref());
        self.wait_ok();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.masters {
            m.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A node on the Cluster with seed nodes `urls`.
pub async fn cluster_node(urls: Vec<String>) -> TestServer {
    let mut c = config();
    c.redis = Some(RedisConfig::cluster(urls));
    TestServer::with(c).await
}

/// A TCP proxy in front of a Redis whose [`Muffler::muffle`] makes every connection open now
/// keep going but bring nothing back (what Redis sends is read and dropped): a connection up
/// and silent. Later connections pass.
pub struct Muffler {
    pub port: u16,
    muffle: std::sync::Arc<std::sync::Mutex<tokio_util::sync::CancellationToken>>,
    task: tokio::task::JoinHandle<()>,
}

impl Muffler {
    pub async fn start(backend: u16) -> Muffler {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let muffle = std::sync::Arc::new(std::sync::Mutex::new(
            tokio_util::sync::CancellationToken::new(),
        ));
        let current = muffle.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                let muffled = current.lock().unwrap().clone();
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", backend)).await
                    else {
                        return;
                    };
                    let (mut ci, mut co) = inbound.into_split();
                    let (mut si, mut so) = outbound.into_split();
                    let up = tokio::io::copy(&mut ci, &mut so);
                    let down = async {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = match si.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if !muffled.is_cancelled() && co.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                    }
                });
            }
        });
        Muffler { port, muffle, task }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Every connection open now brings nothing back from here on.
    pub fn muffle(&self) {
        let mut m = self.muffle.lock().unwrap();
        m.cancel();
        *m = tokio_util::sync::CancellationToken::new();
    }
}

impl Drop for Muffler {
    fn drop(&mut self) {
        self.task.abort();
    }
}
