//! Where the token comes from and how it reaches the server (CONTRACT.md sections 2 and 3).

use std::future::Future;

use futures_util::future::BoxFuture;

/// How the token travels with a connection (CONTRACT.md section 2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TokenTransport {
    /// The first frame, `{"type":"auth","token":"..."}`: the token stays out of URLs and proxy
    /// logs. The default, as for every official client.
    #[default]
    AuthFrame,
    /// The query parameter `token` (`/api/ws?token=...`), as the Cortex docs show.
    Query,
    /// The header `Authorization: Bearer ...` (servers and CLIs).
    Header,
}

/// Why the token provider gave no token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The application has no token for this user any more (signed out, access revoked): the
    /// client stops with [`Stop::NoToken`](crate::Stop::NoToken).
    #[error("no token: {0}")]
    Denied(String),
    /// No token for now (the auth service is unreachable): the client tries again after a
    /// backoff delay.
    #[error("token unavailable: {0}")]
    Failed(String),
}

/// The future a [`TokenProvider`] returns.
pub type TokenFuture = BoxFuture<'static, Result<String, TokenError>>;

/// Gives the client a token: before each connection attempt, ahead of the current token's
/// expiry (for a `refresh` on the live connection), and after the server closed with 4002.
///
/// Any `Fn() -> impl Future<Output = Result<String, TokenError>>` closure is a provider. The
/// client never logs a token, nor puts one in an error or event.
pub trait TokenProvider: Send + Sync + 'static {
    /// A token, fresh enough to connect with.
    fn token(&self) -> TokenFuture;
}

impl<F, Fut> TokenProvider for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String, TokenError>> + Send + 'static,
{
    fn token(&self) -> TokenFuture {
        Box::pin(self())
    }
}
