//! The `cortex-realtime` command: `serve`, `local`, `token`, `publish`, `tail`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use cortex_realtime::{Config, KeySource, Server, local, mint_hs256, shutdown_signal};
use serde::Deserialize;

#[derive(Parser)]
#[command(
    name = "cortex-realtime",
    version,
    about = "Cortex Realtime: a real-time event gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the production server.
    Serve(Box<ServeArgs>),
    /// Run a zero-configuration node on loopback for the desktop.
    Local(LocalArgs),
    /// Mint an HS256 token (for development and tests).
    Token(TokenArgs),
    /// Publish one event through the HTTP API and print the answer.
    Publish(PublishArgs),
    /// Print the events of channels as JSON lines, reconnecting and resuming across restarts.
    Tail(TailArgs),
}

/// Every flag also reads from `CORTEX_<FLAG>` and from the TOML file given by `--config`
/// (keys are the flag names in snake case). Precedence: flag, environment, file, default.
#[derive(Args, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ServeArgs {
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

#[derive(Args)]
struct LocalArgs {
    /// Port to listen on; 0 takes a free one [default: the saved port, else a free one].
    #[arg(long)]
    port: Option<u16>,
    /// State directory [default: $XDG_CONFIG_HOME/cortex-realtime, else ~/.config/cortex-realtime].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Loopback address to bind; any other address is refused.
    #[arg(long, default_value = "127.0.0.1")]
    bind: std::net::IpAddr,
    /// Browser Origin allowed to connect (repeat for several); every other origin gets 403.
    #[arg(long)]
    allowed_origin: Vec<String>,
}

#[derive(Args)]
struct TokenArgs {
    /// HS256 secret to sign with.
    #[arg(long, env = "CORTEX_JWT_SECRET", hide_env_values = true)]
    jwt_secret: String,
    /// The user id (`sub`).
    #[arg(long)]
    sub: String,
    /// The organisation (`org`).
    #[arg(long)]
    org: String,
    /// Lifetime, e.g. 1h, 30m [default: 1h].
    #[arg(long, default_value = "1h")]
    ttl: String,
    /// Channel pattern to allow (repeat); none means every channel of the org.
    #[arg(long = "channel")]
    channels: Vec<String>,
}

#[derive(Args)]
struct PublishArgs {
    /// Base URL of the server.
    #[arg(long, env = "CORTEX_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Publish API key.
    #[arg(long, env = "CORTEX_PUBLISH_KEY", hide_env_values = true)]
    publish_key: String,
    /// The event's org.
    #[arg(long)]
    org: String,
    /// The event type, e.g. agent.spawned.
    #[arg(long = "type")]
    event_type: String,
    /// The payload, a JSON object.
    #[arg(long)]
    payload: String,
    /// Channels (repeat); derived from the payload when absent.
    #[arg(long = "channel")]
    channels: Vec<String>,
    /// Idempotency key.
    #[arg(long)]
    idempotency_key: Option<String>,
}

#[derive(Args)]
struct TailArgs {
    /// WebSocket URL of the server.
    #[arg(
        long,
        env = "CORTEX_WS_URL",
        default_value = "ws://127.0.0.1:8080/api/ws"
    )]
    url: String,
    /// The token (a JWT), sent in the `auth` frame, never in the URL.
    #[arg(long, env = "CORTEX_TOKEN", hide_env_values = true)]
    token: String,
    /// Channels to subscribe to, e.g. task:t_9 project:p_4.
    #[arg(required = true, value_name = "CHANNEL")]
    channels: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(*args).await,
            Command::Local(args) => local(args).await,
            Command::Token(args) => token(args),
            Command::Publish(args) => publish(args).await,
            Command::Tail(args) => tail(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // The WebSocket library logs every frame at debug and trace, and frames carry tokens (the
    // `auth` and `refresh` commands): never let those through, whatever RUST_LOG says.
    let filter = ["tungstenite=info", "tokio_tungstenite=info"]
        .iter()
        .fold(filter, |f, d| {
            f.add_directive(d.parse().expect("valid directive"))
        });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn serve(args: ServeArgs) -> Result<ExitCode> {
    let config = args.merge_file()?.into_config()?;
    let server = Server::bind(config).await?;
    let signal = shutdown_signal();
    println!("listening on {}", server.local_addr());
    tracing::info!(addr = %server.local_addr(), "serving");
    server.run(signal).await?;
    tracing::info!("drained; bye");
    Ok(ExitCode::SUCCESS)
}

async fn local(args: LocalArgs) -> Result<ExitCode> {
    let state_dir = match args.state_dir {
        Some(d) => d,
        None => local::default_state_dir()
            .context("no state directory: set --state-dir, XDG_CONFIG_HOME or HOME")?,
    };
    let opts = local::LocalOptions {
        port: args.port,
        bind: args.bind,
        allowed_origins: args.allowed_origin,
        ..local::LocalOptions::new(state_dir)
    };
    let signal = shutdown_signal();
    let node = local::start(opts).await?;
    println!("listening on {}", node.server.local_addr());
    println!("url {}", node.state.url);
    println!("state {}", node.state_file.display());
    tracing::info!(url = %node.state.url, state = %node.state_file.display(), "local node ready");
    signal.await;
    node.server.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

fn token(args: TokenArgs) -> Result<ExitCode> {
    let ttl = humantime::parse_duration(&args.ttl)
        .with_context(|| format!("--ttl: not a duration: {}", args.ttl))?;
    for c in &args.channels {
        if cortex_realtime::protocol::ChannelPattern::parse(c).is_err() {
            bail!("--channel {c}: not a channel id or kind:* pattern");
        }
    }
    let channels = (!args.channels.is_empty()).then_some(args.channels.as_slice());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let exp = now + ttl.as_secs() as i64;
    println!(
        "{}",
        mint_hs256(&args.jwt_secret, &args.sub, &args.org, exp, channels)
    );
    Ok(ExitCode::SUCCESS)
}

async fn publish(args: PublishArgs) -> Result<ExitCode> {
    let payload: serde_json::Value =
        serde_json::from_str(&args.payload).context("--payload is not JSON")?;
    let mut body =
        serde_json::json!({ "orgId": args.org, "type": args.event_type, "payload": payload });
    if !args.channels.is_empty() {
        body["channels"] = serde_json::json!(args.channels);
    }
    if let Some(k) = args.idempotency_key {
        body["idempotencyKey"] = serde_json::json!(k);
    }
    let url = format!("{}/api/events", args.url.trim_end_matches('/'));
    let resp = reqwest::Client::new()
        .post(&url)
        .bearer_auth(&args.publish_key)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    println!("{text}");
    if status.is_success() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("refused: HTTP {status}");
        Ok(ExitCode::FAILURE)
    }
}

/// Prints each event as the server sent it, one JSON line on stdout; says on stderr when it
/// (re)connects and whether each channel recovered. Exits 1 when the token is refused or
/// expires, 0 on Ctrl-C, SIGTERM or a closed stdout.
async fn tail(args: TailArgs) -> Result<ExitCode> {
    use cortex_client::{Client, ClientEvent, Stop};
    use std::io::Write;

    let mut builder = Client::builder(args.url).token(args.token);
    for c in &args.channels {
        let channel = cortex_realtime::protocol::ChannelId::parse(c)
            .map_err(|e| anyhow::anyhow!("{c}: {e}"))?;
        builder = builder.subscribe(channel);
    }
    let signal = shutdown_signal();
    tokio::pin!(signal);
    let (client, mut events) = builder.start().context("--url")?;
    let mut stdout = std::io::stdout();
    let mut connected_before = false;
    loop {
        let ev = tokio::select! {
            ev = events.recv() => ev,
            _ = &mut signal => {
                client.close().await;
                return Ok(ExitCode::SUCCESS);
            }
        };
        let Some(ev) = ev else {
            return Ok(ExitCode::SUCCESS);
        };
        match ev {
            // A closed stdout (`tail | head`) ends the tail quietly.
            ClientEvent::Event(e) if writeln!(stdout, "{}", e.as_json()).is_err() => {
                client.close().await;
                return Ok(ExitCode::SUCCESS);
            }
            ClientEvent::Event(_) => {}
            ClientEvent::Connected(c) => {
                let what = if connected_before {
                    "reconnected"
                } else {
                    "connected"
                };
                eprintln!("{what} (connection {})", c.connection_id);
                connected_before = true;
            }
            ClientEvent::Subscribed {
                channel, offset, ..
            } => {
                eprintln!("subscribed; {channel} at offset {offset}");
            }
            ClientEvent::Resubscribed {
                channel,
                recovered: true,
                ..
            } => {
                eprintln!("reconnected; {channel} recovered");
            }
            ClientEvent::Resubscribed {
                channel,
                recovered: false,
                ..
            } => {
                eprintln!("reconnected; {channel} not recovered (reload state)");
            }
            ClientEvent::SubscribeFailed {
                channel,
                code,
                message,
            } => {
                eprintln!("{channel}: subscribe refused ({code:?}): {message}");
                if client.subscriptions().is_empty() {
                    eprintln!("error: no channel left to tail");
                    client.close().await;
                    return Ok(ExitCode::FAILURE);
                }
            }
            ClientEvent::Unsubscribed { channel } => {
                eprintln!("{channel}: unsubscribed by the server")
            }
            ClientEvent::Refreshed { .. } => {}
            ClientEvent::ServerError { code, message } => {
                eprintln!("server error ({code:?}): {message}")
            }
            ClientEvent::Reconnecting { cause, delay, .. } => {
                eprintln!(
                    "disconnected ({cause}); reconnecting in {:.1}s",
                    delay.as_secs_f64()
                );
            }
            ClientEvent::Stopped(stop) => {
                return Ok(match stop {
                    Stop::Closed | Stop::ServerClosed => {
                        eprintln!("{stop}");
                        ExitCode::SUCCESS
                    }
                    _ => {
                        eprintln!("error: {stop}");
                        ExitCode::FAILURE
                    }
                });
            }
            _ => {}
        }
    }
}
