//! `serve`: the production server, and its settings' layering (flag, `CORTEX_*` environment,
//! TOML file given by `--config`, default) onto a [`Config`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use cortex_realtime::{Config, KeySource, Server, shutdown_signal};
use serde::Deserialize;

/// Every flag also reads from `CORTEX_<FLAG>` and from the TOML file given by `--config`
/// (keys are the flag names in snake case). Precedence: flag, environment, file, default.
#[derive(Args, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port) [default: 0.0.0.0:8080].
    #[arg(long, env = "CORTEX_LISTEN")]
    listen: Option<SocketAddr>,
    /// HS256 secret (its UTF-8 bytes are the key).
    #[arg(long, env = "CORTEX_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// PEM file with an RSA, EC P-256 or Ed25519 public key.
    #[arg(long, env = "CORTEX_JWT_PUBLIC_KEY", value_delimiter = ',')]
    jwt_public_key: Vec<PathBuf>,
    /// JWKS file with public keys.
    #[arg(long, env = "CORTEX_JWKS_FILE")]
    jwks_file: Option<PathBuf>,
    /// Required `iss` claim.
    #[arg(long, env = "CORTEX_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// Required `aud` claim.
    #[arg(long, env = "CORTEX_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
    /// Clock leeway for exp/nbf/iat, seconds [default: 30].
    #[arg(long, env = "CORTEX_JWT_LEEWAY")]
    jwt_leeway: Option<u64>,
    /// Publish API key (repeat, or comma-separate in the environment, for several).
    #[arg(
        long,
        env = "CORTEX_PUBLISH_KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    publish_key: Vec<String>,
    /// Browser Origin allowed to connect (repeat for several); others get 403.
    #[arg(long, env = "CORTEX_ALLOWED_ORIGIN", value_delimiter = ',')]
    allowed_origin: Vec<String>,
    /// TOML config file.
    #[arg(long, env = "CORTEX_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Largest client frame, bytes [default: 65536].
    #[arg(long, env = "CORTEX_MAX_FRAME_BYTES")]
    max_frame_bytes: Option<usize>,
    /// Subscriptions per connection [default: 128].
    #[arg(long, env = "CORTEX_MAX_SUBSCRIPTIONS")]
    max_subscriptions: Option<usize>,
    /// Outbound queue per connection, bytes [default: 1048576].
    #[arg(long, env = "CORTEX_OUTBOX_BYTES")]
    outbox_bytes: Option<usize>,
    /// Outbound queue per connection, events [default: 1000].
    #[arg(long, env = "CORTEX_OUTBOX_EVENTS")]
    outbox_events: Option<usize>,
    /// Commands per second per connection [default: 100].
    #[arg(long, env = "CORTEX_COMMANDS_PER_SEC")]
    commands_per_sec: Option<u32>,
    /// Connections per user [default: 100].
    #[arg(long, env = "CORTEX_CONNECTIONS_PER_USER")]
    connections_per_user: Option<usize>,
    /// Connections per node [default: 100000].
    #[arg(long, env = "CORTEX_CONNECTIONS_PER_NODE")]
    connections_per_node: Option<usize>,
    /// Largest publish body per event, bytes [default: 65536].
    #[arg(long, env = "CORTEX_MAX_EVENT_BYTES")]
    max_event_bytes: Option<usize>,
    /// Time allowed for the auth frame [default: 5s].
    #[arg(long, env = "CORTEX_AUTH_TIMEOUT")]
    auth_timeout: Option<String>,
    /// Interval of server pings [default: 25s].
    #[arg(long, env = "CORTEX_PING_INTERVAL")]
    ping_interval: Option<String>,
    /// Close a connection silent this long [default: 60s].
    #[arg(long, env = "CORTEX_IDLE_TIMEOUT")]
    idle_timeout: Option<String>,
    /// Time allowed for a drain on SIGTERM [default: 10s].
    #[arg(long, env = "CORTEX_DRAIN_TIMEOUT")]
    drain_timeout: Option<String>,
    /// Events of history kept per channel, for resuming clients [default: 100].
    #[arg(long, env = "CORTEX_HISTORY_EVENTS")]
    history_events: Option<usize>,
    /// How long history is kept [default: 300s].
    #[arg(long, env = "CORTEX_HISTORY_MAX_AGE")]
    history_max_age: Option<String>,
    /// Bytes of history kept across all channels [default: 67108864].
    #[arg(long, env = "CORTEX_HISTORY_MAX_BYTES")]
    history_max_bytes: Option<usize>,
}

macro_rules! take_file {
    ($cli:ident, $file:ident; $($opt:ident),*; $($vec:ident),*) => {
        $( if $cli.$opt.is_none() { $cli.$opt = $file.$opt.take(); } )*
        $( if $cli.$vec.is_empty() { $cli.$vec = std::mem::take(&mut $file.$vec); } )*
    };
}

impl ServeArgs {
    /// Fills what the flags and environment left unset from the TOML file.
    fn merge_file(mut self) -> Result<ServeArgs> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let mut file: ServeArgs =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let cli = &mut self;
        take_file!(cli, file;
            listen, jwt_secret, jwks_file, jwt_issuer, jwt_audience, jwt_leeway, max_frame_bytes,
            max_subscriptions, outbox_bytes, outbox_events, commands_per_sec, connections_per_user,
            connections_per_node, max_event_bytes, auth_timeout, ping_interval, idle_timeout,
            drain_timeout, history_events, history_max_age, history_max_bytes;
            jwt_public_key, publish_key, allowed_origin);
        Ok(self)
    }

    fn into_config(self) -> Result<Config> {
        let mut c = Config {
            listen: self
                .listen
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 8080))),
            ..Config::default()
        };
        if let Some(s) = self.jwt_secret.filter(|s| !s.is_empty()) {
            c.auth.keys.push(KeySource::Secret(s));
        }
        c.auth
            .keys
            .extend(self.jwt_public_key.into_iter().map(KeySource::PublicKeyPem));
        c.auth.keys.extend(self.jwks_file.map(KeySource::JwksFile));
        c.auth.issuer = self.jwt_issuer;
        c.auth.audience = self.jwt_audience;
        if let Some(l) = self.jwt_leeway {
            c.auth.leeway_secs = l;
        }
        c.publish_keys = self
            .publish_key
            .into_iter()
            .filter(|k| !k.is_empty())
            .collect();
        c.allowed_origins = self.allowed_origin;
        let l = &mut c.limits;
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { l.$f = v; } )* };
        }
        set!(
            max_frame_bytes,
            max_subscriptions,
            outbox_bytes,
            outbox_events,
            commands_per_sec,
            connections_per_user,
            connections_per_node,
            max_event_bytes
        );
        let dur = |name: &str, v: Option<String>| -> Result<Option<Duration>> {
            v.map(|s| {
                humantime::parse_duration(&s)
                    .with_context(|| format!("--{name}: not a duration: {s}"))
            })
            .transpose()
        };
        if let Some(d) = dur("auth-timeout", self.auth_timeout)? {
            l.auth_timeout = d;
        }
        if let Some(d) = dur("ping-interval", self.ping_interval)? {
            l.ping_interval = d;
        }
        if let Some(d) = dur("idle-timeout", self.idle_timeout)? {
            l.idle_timeout = d;
        }
        if let Some(d) = dur("drain-timeout", self.drain_timeout)? {
            c.drain_timeout = d;
        }
        if let Some(n) = self.history_events {
            c.history.per_channel = n;
        }
        if let Some(d) = dur("history-max-age", self.history_max_age)? {
            c.history.max_age = d;
        }
        if let Some(n) = self.history_max_bytes {
            c.history.max_bytes = n;
        }
        Ok(c)
    }
}

pub async fn run(args: ServeArgs) -> Result<ExitCode> {
    let config = args.merge_file()?.into_config()?;
    let server = Server::bind(config).await?;
    let signal = shutdown_signal();
    println!("listening on {}", server.local_addr());
    tracing::info!(addr = %server.local_addr(), "serving");
    server.run(signal).await?;
    tracing::info!("drained; bye");
    Ok(ExitCode::SUCCESS)
}
