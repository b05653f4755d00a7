//! What the courier and watch sessions share: heartbeats, token expiry, shutdown, close codes.
//!
//! The WebSocket sessions are actix-web-actors actors (deprecated upstream in favour of
//! actix-ws); everything that names that crate stays in this file and the session modules (the
//! courier session's intake, answers and routing do not), so that moving to another WebSocket
//! stack is a local change.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web_actors::ws;

/// A WebSocket session actor that keeps a heartbeat.
pub trait Heartbeat: Actor<Context = ws::WebsocketContext<Self>> {
    fn last_heard(&self) -> Instant;
}

/// Pings every `--heartbeat-s` a peer that sent nothing for half of that (a courier streaming
/// fixes proves it is there with every frame; a ping each would cost a send, a pong and a wake-up
/// per interval and connection) and drops the peer when it has been silent for
/// `--client-timeout-s`; closes with 1008 when the token expires (`expires_s`, unix seconds) and
/// with 1001 on server shutdown.
pub fn keep_alive<A: Heartbeat>(
    ctx: &mut ws::WebsocketContext<A>,
    app: &crate::state::AppState,
    expires_s: i64,
) {
    let (interval, timeout) = (app.config.heartbeat(), app.config.client_timeout());
    let mut shutdown = app.shutdown.clone();
    ctx.run_interval(interval, move |act, ctx| {
        let silent = act.last_heard().elapsed();
        if silent > timeout {
            tracing::debug!("peer silent past the timeout, dropping it");
            metrics::counter!("trackline_ws_timeouts_total").increment(1);
            ctx.stop();
        } else if silent >= interval / 2 {
            // Half the interval: a peer that only answers pings is pinged at every tick, so its
            // silence never nears the timeout by more than one interval.
            ctx.ping(b"");
        }
    });
    let left_s = expires_s - trackline_core::now_ms() / 1000;
    ctx.run_later(Duration::from_secs(left_s.max(0) as u64), |_, ctx| {
        close(ctx, ws::CloseCode::Policy, "token expired");
    });
    let going_away = async move {
        // A closed channel means the server is gone: go away as well.
        while !*shutdown.borrow_and_update() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
    };
    ctx.spawn(
        actix::fut::wrap_future::<_, A>(going_away).map(|(), _, ctx| {
            close(ctx, ws::CloseCode::Away, "server shutting down");
        }),
    );
}

/// Closes the connection with `code` and `reason`, and stops the session.
pub fn close<A>(ctx: &mut ws::WebsocketContext<A>, code: ws::CloseCode, reason: &str)
where
    A: Actor<Context = ws::WebsocketContext<A>>,
{
    ctx.close(Some(ws::CloseReason {
        code,
        description: Some(reason.to_string()),
    }));
    ctx.stop();
}

/// Closes the connection with the code RFC 6455 has for a protocol error of the peer's: 1009 for
/// a frame over `max_frame_bytes`, 1007 for a text frame that is not UTF-8 (which
/// actix-web-actors reports as an I/O error of kind Other; the socket's own failures end the
/// stream instead), 1002 for the rest.
pub fn close_on_protocol_error<A>(
    ctx: &mut ws::WebsocketContext<A>,
    error: ws::ProtocolError,
    max_frame_bytes: usize,
) where
    A: Actor<Context = ws::WebsocketContext<A>>,
{
    match error {
        ws::ProtocolError::Overflow => close(
            ctx,
            ws::CloseCode::Size,
            &format!("frame larger than {max_frame_bytes} bytes"),
        ),
        ws::ProtocolError::Io(e) if e.kind() == std::io::ErrorKind::Other => {
            close(ctx, ws::CloseCode::Invalid, "text frame is not UTF-8")
        }
        other => close(
            ctx,
            ws::CloseCode::Protocol,
            &format!("websocket protocol error: {other}"),
        ),
    }
}

/// One of the server's WebSocket connections, counted while it lives.
pub struct ConnectionSlot(Arc<AtomicUsize>);

impl ConnectionSlot {
    /// Takes a slot unless `max` are taken.
    ///
    /// # Errors
    /// 503 when the server holds `max` connections already.
    pub fn take(
        count: &Arc<AtomicUsize>,
        max: usize,
    ) -> Result<Self, crate::http::error::ApiError> {
        if count.fetch_add(1, Ordering::AcqRel) >= max {
            count.fetch_sub(1, Ordering::AcqRel);
            metrics::counter!("trackline_connections_refused_total").increment(1);
            return Err(crate::http::error::ApiError::Unavailable(format!(
                "server holds {max} connections already; retry later"
            )));
        }
        Ok(Self(count.clone()))
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A token bucket: `rate` per second on average, bursts up to `burst`.
#[derive(Debug)]
pub struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
}

impl RateLimit {
    /// A full bucket at `now`.
    pub fn new_at(rate: f64, burst: f64, now: Instant) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
            refilled: now,
        }
    }

    /// Takes one token at `now`; false when the bucket is empty.
    pub fn allow_at(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut limit = RateLimit::new_at(10.0, 20.0, start);
        assert_eq!((0..25).filter(|_| limit.allow_at(start)).count(), 20);
        assert!(!limit.allow_at(start + Duration::from_millis(50)));
        assert!(limit.allow_at(start + Duration::from_millis(100)));
        assert_eq!(
            (0..30)
                .filter(|_| limit.allow_at(start + Duration::from_secs(1)))
                .count(),
            9
        );
    }

    #[test]
    fn connection_slots_are_bounded_and_given_back() {
        let count = Arc::new(AtomicUsize::new(0));
        let first = ConnectionSlot::take(&count, 2).unwrap();
        let _second = ConnectionSlot::take(&count, 2).unwrap();
        assert!(ConnectionSlot::take(&count, 2).is_err());
        drop(first);
        assert!(ConnectionSlot::take(&count, 2).is_ok());
    }
}
