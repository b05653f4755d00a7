//! The watch stream as a customer's app reads it: updates in order, and after a dropped
//! connection a reconnect that resumes where it stopped (`?since=&epoch=`), so nothing is missed
//! and nothing is shown twice.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::connect::{open, upgrade_request, Backoff, ConnectError, TokenIn, Ws};
use crate::update::{DecodeError, Encoding, Update};

/// Where a watch resumes: after `since` in the stream named `epoch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    pub since: u64,
    pub epoch: String,
}

/// How a [`Watcher`] connects and reconnects.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    pub encoding: Encoding,
    pub token_in: TokenIn,
    /// Start after this point (an app that showed the order before and kept where it was);
    /// `Resume { since: 0, .. }` replays what the server still holds, to draw the trail so far.
    pub resume: Option<Resume>,
    /// Reconnect (and resume) when the connection drops; false ends the watch instead.
    pub reconnect: bool,
    pub connect_timeout: Duration,
    /// First reconnect delay; doubled per failed attempt up to `backoff_max`, with jitter.
    pub backoff_first: Duration,
    pub backoff_max: Duration,
    /// End with [`WatchError::Unreachable`] when reconnecting has failed for this long; `None`
    /// retries for ever.
    pub give_up_after: Option<Duration>,
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            encoding: Encoding::Json,
            token_in: TokenIn::Header,
            resume: None,
            reconnect: true,
            connect_timeout: Duration::from_secs(10),
            backoff_first: Duration::from_millis(200),
            backoff_max: Duration::from_secs(5),
            give_up_after: None,
        }
    }
}

/// Why a watch ended with an error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WatchError {
    /// The upgrade was refused (401 bad or expired token, 403 another order's token, 404...).
    #[error(transparent)]
    Refused(ConnectError),
    #[error(transparent)]
    Decode(DecodeError),
    /// The connection dropped and [`WatchOptions::reconnect`] is off.
    #[error("the watch stream dropped: {0}")]
    Dropped(String),
    #[error("could not reconnect for {0:?}; last problem: {1}")]
    Unreachable(Duration, String),
}

/// One order's watch stream (`ws://host/v1/orders/{id}/watch`).
pub struct Watcher {
    url: String,
    token: String,
    options: WatchOptions,
    ws: Option<Ws>,
    /// The last update handed out: where a reconnect resumes.
    last: Option<Resume>,
    backoff: Backoff,
    ended: bool,
}

impl Watcher {
    /// Opens the watch stream of `url` with a watch (or ops) `token`.
    ///
    /// # Errors
    /// When the server refuses the upgrade, or cannot be reached (no retry for the first
    /// connection: an app shows that at once).
    pub async fn connect(
        url: &str,
        token: &str,
        options: WatchOptions,
    ) -> Result<Watcher, WatchError> {
        let mut watcher = Watcher {
            url: url.to_string(),
            token: token.to_string(),
            backoff: Backoff::new(options.backoff_first, options.backoff_max),
            last: options.resume.clone(),
            options,
            ws: None,
            ended: false,
        };
        let ws = watcher.open().await.map_err(|err| match err {
            ConnectError::Failed(why) => WatchError::Dropped(why),
            refused => WatchError::Refused(refused),
        })?;
        watcher.ws = Some(ws);
        Ok(watcher)
    }

    /// Where a reconnect would resume: the offset and epoch of the last update handed out.
    pub fn resume_point(&self) -> Option<&Resume> {
        self.last.as_ref()
    }

    /// The next update; `None` once the stream has ended (the order was delivered or cancelled,
    /// its final state was the last update). Reconnects and resumes across dropped connections;
    /// updates seen before are skipped, so offsets within an epoch only grow.
    ///
    /// # Errors
    /// A refused reconnect, a frame that is not an update, or (see [`WatchOptions`]) a drop.
    pub async fn next(&mut self) -> Result<Option<Update>, WatchError> {
        loop {
            if self.ended {
                return Ok(None);
            }
            let Some(ws) = self.ws.as_mut() else {
                self.reconnect().await?;
                continue;
            };
            let dropped = match ws.next().await {
                None => "the connection ended".to_string(),
                Some(Err(err)) => format!("the connection broke: {err}"),
                Some(Ok(Message::Text(text))) => {
                    let update = Update::from_json(&text).map_err(WatchError::Decode)?;
                    if let Some(update) = self.accept(update) {
                        return Ok(Some(update));
                    }
                    continue;
                }
                Some(Ok(Message::Binary(bytes))) => {
                    let update = Update::from_proto(&bytes).map_err(WatchError::Decode)?;
                    if let Some(update) = self.accept(update) {
                        return Ok(Some(update));
                    }
                    continue;
                }
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.as_ref().map_or(CloseCode::Status, |f| f.code);
                    if code == CloseCode::Normal {
                        // the order ended: its final state was the last frame
                        self.ended = true;
                        self.ws = None;
                        continue;
                    }
                    // going away (a restart), too slow (4008), the server failing: resume
                    let reason = frame.map(|f| f.reason.to_string()).unwrap_or_default();
                    format!("closed with {}: {reason}", u16::from(code))
                }
                Some(Ok(_)) => continue,
            };
            tracing::debug!(%dropped, resume = ?self.last, "watch stream dropped");
            self.ws = None;
            if !self.options.reconnect {
                return Err(WatchError::Dropped(dropped));
            }
        }
    }

    /// Closes the stream politely.
    pub async fn close(mut self) {
        if let Some(ws) = self.ws.as_mut() {
            let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
        }
    }

    /// Keeps `update` unless it was handed out before (a replay overlapping what was shown),
    /// and remembers it as the resume point. Offsets are never reused within an epoch, so an
    /// offset not above the last one shown is a state already shown.
    fn accept(&mut self, update: Update) -> Option<Update> {
        // something arrived: the connection works, the next drop starts its backoff afresh
        self.backoff.reset();
        let seen_before = self
            .last
            .as_ref()
            .is_some_and(|last| last.epoch == update.epoch && update.offset <= last.since);
        if seen_before {
            return None;
        }
        self.last = Some(Resume {
            since: update.offset,
            epoch: update.epoch.clone(),
        });
        Some(update)
    }

    async fn reconnect(&mut self) -> Result<(), WatchError> {
        let since = Instant::now();
        loop {
            tokio::time::sleep(self.backoff.next_delay()).await;
            match self.open().await {
                Ok(ws) => {
                    self.ws = Some(ws);
                    return Ok(());
                }
                Err(err) if err.is_final() => return Err(WatchError::Refused(err)),
                Err(err) => {
                    if let Some(limit) = self.options.give_up_after {
                        if since.elapsed() >= limit {
                            return Err(WatchError::Unreachable(limit, err.to_string()));
                        }
                    }
                }
            }
        }
    }

    async fn open(&self) -> Result<Ws, ConnectError> {
        let url = match &self.last {
            Some(Resume { since, epoch }) => {
                let joint = if self.url.contains('?') { '&' } else { '?' };
                format!(
                    "{}{joint}since={since}&epoch={}",
                    self.url,
                    query_escape(epoch)
                )
            }
            None => self.url.clone(),
        };
        let subprotocol = Some(self.options.encoding.subprotocol());
        let request = upgrade_request(&url, &self.token, self.options.token_in, subprotocol)?;
        open(request, self.options.connect_timeout).await
    }
}

/// Percent-encodes everything but the unreserved characters of a URL.
fn query_escape(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}
