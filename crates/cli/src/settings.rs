//! The settings of `serve`, one row each: its flag (and `CORTEX_<FLAG>` variable, and key of the
//! `--config` file), its type, how it lands on the library's [`Config`], and its help sentence.
//! Defaults are the library's ([`Config::default`]), but for [`DEFAULT_LISTEN`].

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;

use cortex_realtime::{Config, KeySource, RedisConfig, TlsConfig};

use crate::layers::{DURATION, checked, duration, outside, set, settings, with, written_as};
use crate::logging::LogFormat;

/// Where `serve` listens unless told otherwise (the library's default is loopback, port 0).
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 8080));

/// What the settings are applied onto: the library's defaults, listening on [`DEFAULT_LISTEN`].
fn defaults() -> Config {
    Config {
        listen: DEFAULT_LISTEN,
        ..Config::default()
    }
}

/// The TLS settings of `c`, made empty when not there yet (`--tls-cert` and `--tls-key` each
/// fill their half; [`check`] refuses one without the other).
fn tls(c: &mut Config) -> &mut TlsConfig {
    c.tls.get_or_insert_with(|| TlsConfig::new("", ""))
}

/// What no single row can check: the settings that go together.
pub fn check(config: &Config) -> anyhow::Result<()> {
    if let Some(tls) = &config.tls {
        if tls.cert.as_os_str().is_empty() {
            anyhow::bail!("--tls-key was given without --tls-cert: TLS needs both files");
        }
        if tls.key.as_os_str().is_empty() {
            anyhow::bail!("--tls-cert was given without --tls-key: TLS needs both files");
        }
    }
    Ok(())
}

settings! {
    defaults: defaults;
    /// The settings of `serve` from one layer: the flags and the environment, or the file.
    pub struct Settings {
        listen: Option<SocketAddr> => set(|c| &mut c.listen),
            "Address to listen on (port 0 picks a free port)";
        #[arg(hide_env_values = true)]
        jwt_secret: Option<String> => with(|c, s: String| if !s.is_empty() {
                c.auth.keys.push(KeySource::Secret(s))
            }),
            "HS256 secret (its UTF-8 bytes are the key)";
        #[arg(value_delimiter = ',')]
        jwt_public_key: Vec<PathBuf> => with(|c, pems: Vec<PathBuf>| {
                c.auth.keys.extend(pems.into_iter().map(KeySource::PublicKeyPem))
            }),
            "PEM file with an RSA, EC P-256 or Ed25519 public key";
        jwks_file: Option<PathBuf> => with(|c, p| c.auth.keys.push(KeySource::JwksFile(p))),
            "JWKS file with public keys";
        jwt_issuer: Option<String> => with(|c, v| c.auth.issuer = Some(v)),
            "Required `iss` claim";
        jwt_audience: Option<String> => with(|c, v| c.auth.audience = Some(v)),
            "Required `aud` claim";
        jwt_leeway: Option<u64> => set(|c| &mut c.auth.leeway_secs),
            "Clock leeway for exp/nbf/iat, seconds";
        #[arg(value_delimiter = ',', hide_env_values = true)]
        publish_key: Vec<String> => with(|c, keys: Vec<String>| {
                c.publish_keys = keys.into_iter().filter(|k| !k.is_empty()).collect()
            }),
            "Publish API key (repeat, or comma-separate in the environment, for several)";
        #[arg(value_delimiter = ',')]
        allowed_origin: Vec<String> => with(|c, v| c.allowed_origins = v),
            "Browser Origin allowed to connect (repeat for several); others get 403";
        max_frame_bytes: Option<usize> => set(|c| &mut c.limits.max_frame_bytes),
            "Largest client frame, bytes";
        max_subscriptions: Option<usize> => set(|c| &mut c.limits.max_subscriptions),
            "Subscriptions per connection";
        outbox_bytes: Option<usize> => set(|c| &mut c.limits.outbox_bytes),
            "Outbound queue per connection, bytes";
        outbox_events: Option<usize> => set(|c| &mut c.limits.outbox_events),
            "Outbound queue per connection, events";
        commands_per_sec: Option<u32> => set(|c| &mut c.limits.commands_per_sec),
            "Commands per second per connection";
        connections_per_user: Option<usize> => set(|c| &mut c.limits.connections_per_user),
            "Connections per user";
        connections_per_node: Option<usize> => set(|c| &mut c.limits.connections_per_node),
            "Connections per node";
        max_event_bytes: Option<usize> => set(|c| &mut c.limits.max_event_bytes),
            "Largest publish body per event, bytes";
        auth_timeout: Option<String> => duration(|c| &mut c.limits.auth_timeout),
            "Time allowed for the auth frame";
        ping_interval: Option<String> => duration(|c| &mut c.limits.ping_interval),
            "Interval of server pings";
        idle_timeout: Option<String> => duration(|c| &mut c.limits.idle_timeout),
            "Close a connection silent this long";
        drain_timeout: Option<String> => duration(|c| &mut c.drain_timeout),
            "Time allowed for a drain on SIGTERM";
        history_events: Option<usize> => set(|c| &mut c.history.per_channel),
            "Events of history kept per channel, for resuming clients";
        history_max_age: Option<String> => duration(|c| &mut c.history.max_age),
            "How long history is kept";
        history_max_bytes: Option<usize> => set(|c| &mut c.history.max_bytes),
            "Bytes of history kept across all channels";
        #[arg(hide_env_values = true)]
        redis: Option<String> => with(|c, url: String| c.redis = Some(RedisConfig::new(url))),
            "Redis server shared by the nodes (redis://[:PASSWORD@]HOST:PORT, or rediss:// over \
             TLS); without it (and without --redis-cluster) the node is alone, in memory";
        #[arg(value_delimiter = ',', hide_env_values = true)]
        redis_cluster: Vec<String> => checked(|c, urls: Vec<String>| {
                if c.redis.is_some() {
                    anyhow::bail!(
                        "--redis and --redis-cluster exclude each other: give one Redis server \
                         (--redis) or the seed nodes of a Redis Cluster (--redis-cluster)"
                    );
                }
                c.redis = Some(RedisConfig::cluster(urls));
                Ok(())
            }),
            "Seed nodes of a Redis Cluster shared by the nodes (redis://HOST:PORT, or rediss:// \
             over TLS; repeat or comma-separate); the rest of the Cluster is found from them";
        redis_prefix: Option<String> => with(|c, prefix: String| if let Some(r) = &mut c.redis {
                r.prefix = prefix
            }),
            "Prefix of every Redis key and channel, so deployments can share a Redis \
             [default: cortex]";
        redis_lease_ttl: Option<String> => written_as(DURATION, checked(|c, v: String| {
                let ttl = humantime::parse_duration(&v)
                    .map_err(|e| anyhow::anyhow!("--redis-lease-ttl: not a duration: {v}: {e}"))?;
                if ttl < std::time::Duration::from_secs(1) {
                    anyhow::bail!("--redis-lease-ttl: at least 1s (the leases are renewed every third of it)");
                }
                if let Some(r) = &mut c.redis {
                    r.lease_ttl = ttl;
                }
                Ok(())
            })),
            "How long the connections of a node that stopped (it died, or lost Redis) still \
             count against their users' limit across nodes [default: 30s]";
        redis_tls_ca: Option<PathBuf> => with(|c, ca: PathBuf| if let Some(r) = &mut c.redis {
                r.tls_ca = Some(ca)
            }),
            "PEM file of the CA certificates that a rediss:// Redis's certificate is checked \
             against; without it, the system's trusted roots";
        admin_listen: Option<SocketAddr> => with(|c, a| c.admin_listen = Some(a)),
            "Address of the operators' listener: the web console, the admin API, health and \
             metrics (off unless given; needs --admin-key)";
        #[arg(hide_env_values = true)]
        admin_key: Option<String> => with(|c, k: String| c.admin_key = Some(k).filter(|k| !k.is_empty())),
            "Bearer key of the admin API (Authorization: Bearer KEY); it also signs the \
             console's tail tokens";
        tls_cert: Option<PathBuf> => with(|c, cert: PathBuf| tls(c).cert = cert),
            "PEM file of the certificate chain (the server's certificate first) to serve wss:// \
             and https:// with, on the listener and the admin listener (needs --tls-key); read \
             again every 2 s, a \
             rewritten pair is served to new connections";
        tls_key: Option<PathBuf> => with(|c, key: PathBuf| tls(c).key = key),
            "PEM file of the private key of --tls-cert (PKCS#8, PKCS#1 RSA or SEC1 EC)";
        log_format: Option<LogFormat> => outside::<LogFormat>("text"),
            "Log lines on stderr: text, or json (one object a line: timestamp, level, target, \
             message, fields)";
    }
}

impl Settings {
    /// The log format these settings ask for (read before there is a config: see [`outside`]).
    pub fn log_format(&self) -> LogFormat {
        self.log_format.unwrap_or_default()
    }
}
