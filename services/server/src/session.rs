//! What the courier and watch sessions share: heartbeats, token expiry, shutdown, close codes.
//!
//! The WebSocket sessions are actix-web-actors actors (deprecated upstream in favour of
//! actix-ws); everything that names that crate stays in this file and the two session modules,
//! so that moving to another WebSocket stack is a local change.

use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web_actors::ws;
use tokio::sync::watch;

/// A WebSocket session actor that keeps a heartbeat.
pub trait Heartbeat: Actor<Context = ws::WebsocketContext<Self>> {
    fn last_heard(&self) -> Instant;
}

/// Pings every `interval` and drops the peer when it has been silent for `timeout`; closes with
/// 1008 when the token expires (`expires_s`, unix seconds) and with 1001 on server shutdown.
pub fn keep_alive<A: Heartbeat>(
    ctx: &mut ws::WebsocketContext<A>,
    interval: Duration,
    timeout: Duration,
    expires_s: i64,
    mut shutdown: watch::Receiver<bool>,
) {
    ctx.run_interval(interval, move |act, ctx| {
        if act.last_heard().elapsed() > timeout {
            tracing::debug!("peer silent past the timeout, dropping it");
            metrics::counter!("trackline_ws_timeouts_total").increment(1);
            ctx.stop();
        } else {
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
