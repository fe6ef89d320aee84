//! WebSocket close codes (CONTRACT.md section 8) and the reconnect policy each one carries.

/// A close code the server sends, with what an official client does about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum CloseCode {
    /// 1000: normal close.
    Normal = 1000,
    /// 1001: the server is shutting down or draining.
    GoingAway = 1001,
    /// 1008: policy violation (repeated bad commands, forbidden Origin).
    Policy = 1008,
    /// 1009: a client frame over the size limit.
    TooBig = 1009,
    /// 4001: token missing or invalid.
    Unauthorized = 4001,
    /// 4002: token expired.
    TokenExpired = 4002,
    /// 4003: no `auth` frame within the auth timeout.
    AuthTimeout = 4003,
    /// 4008: rate limited.
    RateLimited = 4008,
    /// 4009: slow consumer, the outbound queue is full.
    SlowConsumer = 4009,
    /// 4029: too many connections for this user, org or node.
    TooManyConnections = 4029,
}

/// What a client should do after a close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconnect {
    /// Do not reconnect.
    Never,
    /// Reconnect with backoff and resume.
    WithBackoff,
    /// Ask the application for a new token first; give up if there is none.
    AfterNewToken,
    /// Stop: the token is bad. Only a new token from the application helps.
    StopAndAskForToken,
}

impl CloseCode {
    /// Every code, for tables and tests.
    pub const ALL: [CloseCode; 10] = [
        CloseCode::Normal,
        CloseCode::GoingAway,
        CloseCode::Policy,
        CloseCode::TooBig,
        CloseCode::Unauthorized,
        CloseCode::TokenExpired,
        CloseCode::AuthTimeout,
        CloseCode::RateLimited,
        CloseCode::SlowConsumer,
        CloseCode::TooManyConnections,
    ];

    /// The numeric code on the wire.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The code for a number, if it is one of ours.
    pub fn from_code(code: u16) -> Option<CloseCode> {
        CloseCode::ALL.into_iter().find(|c| c.code() == code)
    }

    /// A short reason sent in the close frame (no secrets, at most 123 bytes).
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal close",
            CloseCode::GoingAway => "server shutting down",
            CloseCode::Policy => "policy violation",
            CloseCode::TooBig => "frame too large",
            CloseCode::Unauthorized => "token missing or invalid",
            CloseCode::TokenExpired => "token expired",
            CloseCode::AuthTimeout => "no auth frame in time",
            CloseCode::RateLimited => "rate limited",
            CloseCode::SlowConsumer => "slow consumer",
            CloseCode::TooManyConnections => "too many connections",
        }
    }

    /// The reconnect policy of the official clients for this code.
    pub fn reconnect(self) -> Reconnect {
        match self {
            CloseCode::Normal => Reconnect::Never,
            CloseCode::Unauthorized => Reconnect::StopAndAskForToken,
            CloseCode::TokenExpired => Reconnect::AfterNewToken,
            CloseCode::GoingAway
            | CloseCode::Policy
            | CloseCode::TooBig
            | CloseCode::AuthTimeout
            | CloseCode::RateLimited
            | CloseCode::SlowConsumer
            | CloseCode::TooManyConnections => Reconnect::WithBackoff,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_reasons_fit_a_close_frame() {
        for c in CloseCode::ALL {
            assert_eq!(CloseCode::from_code(c.code()), Some(c));
            assert!(c.reason().len() <= 123);
        }
        assert_eq!(CloseCode::from_code(4000), None);
    }

    #[test]
    fn only_bad_tokens_stop_the_client() {
        assert_eq!(
            CloseCode::Unauthorized.reconnect(),
            Reconnect::StopAndAskForToken
        );
        assert_eq!(
            CloseCode::TokenExpired.reconnect(),
            Reconnect::AfterNewToken
        );
        assert_eq!(CloseCode::SlowConsumer.reconnect(), Reconnect::WithBackoff);
        assert_eq!(CloseCode::Normal.reconnect(), Reconnect::Never);
    }
}
