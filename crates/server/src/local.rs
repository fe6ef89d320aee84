//! The desktop mode: a zero-configuration node on loopback (CONTRACT.md section 10, `local`).
//!
//! The first start creates a state directory holding `local.json` (mode 0600): the WebSocket
//! and publish URLs, a fresh random JWT secret and publish key, and a ready user token. Later
//! starts reuse it, so a desktop app (or its sidecar) can read the file and connect. The node is
//! still secure against other sites in the user's browser: browser `Origin`s are refused unless
//! listed, `Host` must be a loopback name (DNS rebinding), and every connection needs a token.
//! It never binds a non-loopback address.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::auth::{KeySource, mint_hs256};
use crate::config::Config;
use crate::node::{StartError, unix_now};
use crate::server::{Server, ServerHandle};

/// The file's name inside the state directory.
pub const STATE_FILE: &str = "local.json";
/// The user token's lifetime.
pub const TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// A token with less than this left is renewed.
pub const TOKEN_RENEW_BEFORE: Duration = Duration::from_secs(7 * 24 * 3600);
/// The token's `sub`.
pub const LOCAL_USER: &str = "local-user";
/// The token's `org`.
pub const LOCAL_ORG: &str = "local";

/// What `local.json` holds.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalState {
    /// `ws://127.0.0.1:PORT/api/ws`.
    pub url: String,
    /// `http://127.0.0.1:PORT/api/events`.
    pub publish_url: String,
    /// The HS256 secret tokens are signed with.
    pub jwt_secret: String,
    /// The publish API key.
    pub publish_key: String,
    /// A ready user token (`sub` local-user, `org` local).
    pub token: String,
}

impl std::fmt::Debug for LocalState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalState")
            .field("url", &self.url)
            .field("publish_url", &self.publish_url)
            .finish_non_exhaustive()
    }
}

/// How to start a local node.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// The state directory.
    pub state_dir: PathBuf,
    /// The port: `None` reuses the saved one (or a free one the first time), `Some(0)` takes a
    /// free one, `Some(p)` requires `p`.
    pub port: Option<u16>,
    /// The loopback address to bind (127.0.0.1 by default); anything else is refused.
    pub bind: IpAddr,
    /// Browser `Origin`s allowed to connect; every other browser origin gets 403.
    pub allowed_origins: Vec<String>,
}

impl LocalOptions {
    /// Options for `state_dir` with every default.
    pub fn new(state_dir: PathBuf) -> LocalOptions {
        LocalOptions {
            state_dir,
            port: None,
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            allowed_origins: Vec::new(),
        }
    }
}

/// Why a local node could not start.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The address is not a loopback address.
    #[error("local mode binds loopback only; {0} is not a loopback address")]
    NotLoopback(IpAddr),
    /// No state directory was given and none could be found.
    #[error("no state directory: set --state-dir, XDG_CONFIG_HOME or HOME")]
    NoStateDir,
    /// The state file could not be read or written.
    #[error("state file {path}: {source}")]
    State {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The state file is not valid.
    #[error("state file {path} is not valid: {reason}; move it away to start afresh")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The server could not start.
    #[error(transparent)]
    Start(#[from] StartError),
}

/// `$XDG_CONFIG_HOME/cortex-realtime`, else `~/.config/cortex-realtime`.
pub fn default_state_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".config"))
        })?;
    Some(base.join("cortex-realtime"))
}

fn random_hex(bytes: usize) -> String {
    let mut rng = rand::rng();
    (0..bytes)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect()
}

fn port_of(url: &str) -> Option<u16> {
    let rest = url.strip_prefix("ws://")?;
    let authority = rest.split('/').next()?;
    authority.rsplit_once(':')?.1.parse().ok()
}

/// The token's expiry, read without verifying (the file is ours).
fn token_exp(token: &str) -> Option<i64> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()?
        .get("exp")?
        .as_i64()
}

fn fresh_token(secret: &str) -> String {
    mint_hs256(
        secret,
        LOCAL_USER,
        LOCAL_ORG,
        unix_now() + TOKEN_TTL.as_secs() as i64,
        None,
    )
}

/// Reads the state file, if there is one.
pub fn read_state(path: &Path) -> Result<Option<LocalState>, LocalError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| LocalError::Corrupt {
                path: path.to_owned(),
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(LocalError::State {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes the state file atomically with mode 0600 (the directory 0700).
pub fn write_state(path: &Path, state: &LocalState) -> Result<(), LocalError> {
    let err = |source| LocalError::State {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(err)?;
    let tmp = path.with_extension("json.tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&tmp).map_err(err)?;
    #[cfg(unix)]
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(err)?;
    let text = serde_json::to_string_pretty(state).expect("state serializes");
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// A running local node.
pub struct Local {
    /// The server.
    pub server: ServerHandle,
    /// What `local.json` now holds.
    pub state: LocalState,
    /// Where `local.json` is.
    pub state_file: PathBuf,
}

/// Starts a local node: loads or creates the state, binds (the saved port when it is free,
/// else a free one), and rewrites the state file when anything changed. A background task
/// renews the token in the file before it expires.
pub async fn start(opts: LocalOptions) -> Result<Local, LocalError> {
    if !opts.bind.is_loopback() {
        return Err(LocalError::NotLoopback(opts.bind));
    }
    let state_file = opts.state_dir.join(STATE_FILE);
    let saved = read_state(&state_file)?;
    let secret = saved
        .as_ref()
        .map_or_else(|| random_hex(32), |s| s.jwt_secret.clone());
    let publish_key = saved
        .as_ref()
        .map_or_else(|| random_hex(24), |s| s.publish_key.clone());
    if secret.is_empty() || publish_key.is_empty() {
        return Err(LocalError::Corrupt {
            path: state_file,
            reason: "empty jwtSecret or publishKey".into(),
        });
    }

    let mut config = Config::default();
    config.auth.keys = vec![KeySource::Secret(secret.clone())];
    config.publish_keys = vec![publish_key.clone()];
    config.allowed_origins = opts.allowed_origins.clone();
    config.refuse_unlisted_origins = true;
    config.loopback_host_only = true;

    let saved_port = saved.as_ref().and_then(|s| port_of(&s.url));
    let wanted = opts.port.or(saved_port).unwrap_or(0);
    config.listen = SocketAddr::new(opts.bind, wanted);
    let server = match Server::bind(config.clone()).await {
        Ok(s) => s,
        // The saved port is taken (another app, another instance): take a free one.
        Err(StartError::Bind { .. }) if opts.port.is_none() && wanted != 0 => {
            config.listen = SocketAddr::new(opts.bind, 0);
            Server::bind(config).await?
        }
        Err(e) => return Err(e.into()),
    };
    let addr = server.local_addr();
    let host = match addr.ip() {
        IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    let token = saved
        .as_ref()
        .filter(|s| {
            token_exp(&s.token)
                .is_some_and(|exp| exp - unix_now() > TOKEN_RENEW_BEFORE.as_secs() as i64)
        })
        .map_or_else(|| fresh_token(&secret), |s| s.token.clone());
    let state = LocalState {
        url: format!("ws://{host}:{}/api/ws", addr.port()),
        publish_url: format!("http://{host}:{}/api/events", addr.port()),
        jwt_secret: secret,
        publish_key,
        token,
    };
    if saved.as_ref() != Some(&state) {
        write_state(&state_file, &state)?;
    }
    let server = server.start();
    spawn_renewal(
        server.node().shutdown.clone(),
        state_file.clone(),
        state.clone(),
    );
    Ok(Local {
        server,
        state,
        state_file,
    })
}

/// Renews the file's token while the node runs (checked hourly).
fn spawn_renewal(shutdown: crate::shutdown::Shutdown, path: PathBuf, mut state: LocalState) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let left = token_exp(&state.token).map_or(0, |exp| exp - unix_now());
            if left <= TOKEN_RENEW_BEFORE.as_secs() as i64 {
                state.token = fresh_token(&state.jwt_secret);
                if let Err(e) = write_state(&path, &state) {
                    tracing::warn!(error = %e, "could not renew the local token");
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_read_from_saved_urls() {
        assert_eq!(port_of("ws://127.0.0.1:8123/api/ws"), Some(8123));
        assert_eq!(port_of("ws://[::1]:9/api/ws"), Some(9));
        assert_eq!(port_of("http://x"), None);
    }

    #[test]
    fn token_expiry_is_read_back() {
        let t = mint_hs256("s", "u", "o", 12345, None);
        assert_eq!(token_exp(&t), Some(12345));
        assert_eq!(token_exp("garbage"), None);
    }

    #[test]
    fn debug_never_prints_secrets() {
        let s = LocalState {
            url: "u".into(),
            publish_url: "p".into(),
            jwt_secret: "SECRET".into(),
            publish_key: "KEY".into(),
            token: "TOKEN".into(),
        };
        let d = format!("{s:?}");
        assert!(
            !d.contains("SECRET") && !d.contains("KEY") && !d.contains("TOKEN"),
            "{d}"
        );
    }
}
