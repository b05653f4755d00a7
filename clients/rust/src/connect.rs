//! Opening a stream: the upgrade request with its token and subprotocol, a bounded wait for the
//! answer, which refusals are final, and the delays between attempts.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::{
    HeaderValue, AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL,
};
use tokio_tungstenite::tungstenite::{self, handshake::client::Request};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A client WebSocket of either stream.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Where the upgrade request carries the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenIn {
    /// `Authorization: Bearer <token>` (what apps do).
    #[default]
    Header,
    /// `?token=<token>` (what a browser must do; also fine for apps).
    Query,
}

/// Why an attempt to open a stream failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectError {
    /// The server answered the upgrade with a client error (401 bad token, 403 wrong token, 400,
    /// 404): the same request will fail again.
    #[error("the server refused the upgrade with {status}: {body}")]
    Refused { status: u16, body: String },
    /// Anything else (connection refused, timeout, 5xx): worth retrying.
    #[error("{0}")]
    Failed(String),
}

impl ConnectError {
    pub(crate) fn is_final(&self) -> bool {
        matches!(self, ConnectError::Refused { .. })
    }
}

/// The upgrade request of `url` with `token` (placed as `token_in` says; empty: none) and an
/// optional subprotocol.
///
/// # Errors
/// When the URL or the token cannot go into a request.
pub fn upgrade_request(
    url: &str,
    token: &str,
    token_in: TokenIn,
    subprotocol: Option<&str>,
) -> Result<Request, ConnectError> {
    let url = match token_in {
        TokenIn::Query if !token.is_empty() => {
            let joint = if url.contains('?') { '&' } else { '?' };
            format!("{url}{joint}token={token}")
        }
        _ => url.to_string(),
    };
    let bad = |what: &str| ConnectError::Refused {
        status: 0,
        body: format!("{what} cannot go into an upgrade request"),
    };
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| ConnectError::Refused {
            status: 0,
            body: format!("bad URL {url}: {e}"),
        })?;
    if token_in == TokenIn::Header && !token.is_empty() {
        let bearer =
            HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| bad("the token"))?;
        request.headers_mut().insert(AUTHORIZATION, bearer);
    }
    if let Some(protocol) = subprotocol {
        let value = HeaderValue::from_str(protocol).map_err(|_| bad("the subprotocol"))?;
        request.headers_mut().insert(SEC_WEBSOCKET_PROTOCOL, value);
    }
    Ok(request)
}

/// Sends `request` and waits at most `within` for the upgrade.
///
/// # Errors
/// [`ConnectError::Refused`] for a 4xx answer, [`ConnectError::Failed`] for anything else.
pub async fn open(request: Request, within: Duration) -> Result<Ws, ConnectError> {
    let url = request.uri().to_string();
    // Nagle would hold small frames back for tens of milliseconds: fixes are latency-sensitive
    let connecting = tokio_tungstenite::connect_async_with_config(request, None, true);
    match tokio::time::timeout(within, connecting).await {
        Err(_) => Err(ConnectError::Failed(format!(
            "no upgrade answer from {url} within {within:?}"
        ))),
        Ok(Ok((ws, _response))) => Ok(ws),
        Ok(Err(tungstenite::Error::Http(response))) => {
            let status = response.status().as_u16();
            let body = response
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default()
                .trim()
                .to_string();
            if (400..500).contains(&status) {
                Err(ConnectError::Refused { status, body })
            } else {
                Err(ConnectError::Failed(format!(
                    "upgrade answered {status} {body}"
                )))
            }
        }
        Ok(Err(err)) => Err(ConnectError::Failed(format!("{url}: {err}"))),
    }
}

/// Exponential reconnect delays with jitter, from `first` doubling up to `max`.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    first: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            attempt: 0,
        }
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let base = self
            .first
            .saturating_mul(1 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        // +-25% so a fleet that lost the server together does not come back together
        base.mul_f64(rand::random_range(0.75..1.25))
    }

    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_a_cap_with_jitter_and_resets() {
        let (first, max) = (Duration::from_millis(200), Duration::from_secs(5));
        let mut backoff = Backoff::new(first, max);
        let delay = backoff.next_delay();
        assert!(delay >= first.mul_f64(0.75) && delay <= first.mul_f64(1.25));
        let later: Vec<Duration> = (0..20).map(|_| backoff.next_delay()).collect();
        assert!(later.iter().all(|d| *d <= max.mul_f64(1.25)));
        assert!(later.last().unwrap() >= &max.mul_f64(0.75));
        backoff.reset();
        assert!(backoff.next_delay() <= first.mul_f64(1.25));
    }

    #[test]
    fn the_token_goes_where_asked() {
        let header = upgrade_request("ws://h/v1/courier/ws", "t0k", TokenIn::Header, None).unwrap();
        assert_eq!(header.headers()[AUTHORIZATION], "Bearer t0k");
        let query = upgrade_request(
            "ws://h/v1/orders/o/watch?since=3",
            "t0k",
            TokenIn::Query,
            Some("trackline.v1.proto"),
        )
        .unwrap();
        assert_eq!(query.uri().query(), Some("since=3&token=t0k"));
        assert!(query.headers().get(AUTHORIZATION).is_none());
        assert_eq!(
            query.headers()[SEC_WEBSOCKET_PROTOCOL],
            "trackline.v1.proto"
        );
    }
}
