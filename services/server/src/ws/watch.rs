//! The watch stream: one session actor per customer (or ops) connection to one order.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use actix_web_actors::ws;

use crate::orders::fanout::{Queued, Resume, Sink, Subscribe, Unsubscribe, Wake, WatchQueue};
use crate::orders::frames::{Frame, WatchFormat};
use crate::state::AppState;
use crate::ws::session::{close, close_on_protocol_error, keep_alive, ConnectionSlot, Heartbeat};

static NEXT_WATCHER_ID: AtomicU64 = AtomicU64::new(1);

/// An active order's stream: its own actor, or in broker mode the mirror of an order that another
/// node owns.
#[derive(Clone)]
pub struct StreamAddr {
    pub subscribe: Recipient<Subscribe>,
    pub unsubscribe: Recipient<Unsubscribe>,
}

impl<A> From<Addr<A>> for StreamAddr
where
    A: Actor + Handler<Subscribe> + Handler<Unsubscribe>,
    A::Context: actix::dev::ToEnvelope<A, Subscribe> + actix::dev::ToEnvelope<A, Unsubscribe>,
{
    fn from(addr: Addr<A>) -> Self {
        Self {
            subscribe: addr.clone().recipient(),
            unsubscribe: addr.recipient(),
        }
    }
}

/// Where the session's frames come from.
pub enum Source {
    /// An active order: subscribe to its stream.
    Live(StreamAddr, Option<Resume>),
    /// An order that has ended: send its final state and close.
    Ended(Arc<Frame>),
}

pub struct WatchSession {
    id: u64,
    format: WatchFormat,
    expires_s: i64,
    app: Arc<AppState>,
    source: Option<Source>,
    order: Option<StreamAddr>,
    /// What the order has for this session (made when it subscribes).
    queue: Option<Arc<WatchQueue>>,
    /// The epoch and offset of the last frame written: a frame at or below it is not written
    /// again (in broker mode a frame can reach a node both in a replay and live).
    written: Option<(String, u64)>,
    last_heard: Instant,
    /// Bytes written since the session last paused. A session writes `--write-buffer-bytes`
    /// (and one frame) before it lets the HTTP writer take them. The session runs only when the
    /// writer polls it: a watcher whose socket stalled and then took a few bytes would get its
    /// whole queue (`--watcher-queue` frames) copied into the writer's buffer at once, which then
    /// keeps that size. Pausing after a burst hands the writer one small chunk; it polls again
    /// only while its buffer has room, and the rest waits in the [`WatchQueue`] as shared frames,
    /// where the order conflates it.
    burst_bytes: usize,
    _slot: ConnectionSlot,
}

impl WatchSession {
    pub fn new(
        format: WatchFormat,
        expires_s: i64,
        app: Arc<AppState>,
        source: Source,
        slot: ConnectionSlot,
    ) -> Self {
        Self {
            id: NEXT_WATCHER_ID.fetch_add(1, Ordering::Relaxed),
            format,
            expires_s,
            app,
            source: Some(source),
            order: None,
            queue: None,
            written: None,
            last_heard: Instant::now(),
            burst_bytes: 0,
            _slot: slot,
        }
    }

    /// Writes what the queue holds, up to a burst; after a burst it goes on once the writer has
    /// taken it.
    fn drain(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        let Some(queue) = self.queue.clone() else {
            return;
        };
        while ctx.state() == ActorState::Running {
            match queue.next() {
                Some(Queued::Frame(frame)) => {
                    if self.write(&frame, ctx) {
                        // One wait that goes on draining: actix polls the newest wait first, so
                        // a second one would run before the pause.
                        ctx.wait(
                            actix::fut::wrap_future(tokio::task::yield_now())
                                .map(|(), act: &mut Self, ctx| act.drain(ctx)),
                        );
                        return;
                    }
                }
                Some(Queued::Evict(code, reason)) => {
                    close(ctx, ws::CloseCode::Other(code), &reason);
                }
                None => return,
            }
        }
    }

    /// Writes `frame` unless it was written already; true when the burst is full, and the caller
    /// must then let the writer take it before writing more (see [`WatchSession::burst_bytes`]).
    fn write(&mut self, frame: &Frame, ctx: &mut ws::WebsocketContext<Self>) -> bool {
        let view = &frame.view;
        if let Some((epoch, offset)) = &self.written {
            if *epoch == view.epoch && view.offset <= *offset {
                return false;
            }
        }
        self.written = Some((view.epoch.clone(), view.offset));
        self.burst_bytes += match self.format {
            WatchFormat::Json => {
                let text = frame.json_text().clone();
                let len = text.len();
                ctx.text(text);
                len
            }
            WatchFormat::Proto => {
                let bytes = frame.proto();
                let len = bytes.len();
                ctx.binary(bytes);
                len
            }
        };
        let full = self.burst_bytes >= self.app.config.write_buffer();
        if full {
            self.burst_bytes = 0;
        }
        metrics::counter!("trackline_watch_frames_sent_total").increment(1);
        if frame.is_final {
            close(
                ctx,
                ws::CloseCode::Normal,
                &format!("order {}", frame.view.status),
            );
        }
        full
    }
}

impl Heartbeat for WatchSession {
    fn last_heard(&self) -> Instant {
        self.last_heard
    }
}

impl Actor for WatchSession {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        metrics::gauge!("trackline_watch_connections").increment(1.0);
        keep_alive(ctx, &self.app, self.expires_s);
        match self.source.take() {
            Some(Source::Ended(frame)) => {
                self.write(&frame, ctx);
            }
            Some(Source::Live(order, resume)) => {
                // The bound that tells the order this watcher is slow (see fanout::Watcher).
                let queue =
                    WatchQueue::new(self.app.config.watcher_queue, ctx.address().recipient());
                self.queue = Some(queue.clone());
                let subscribe = Subscribe {
                    watcher_id: self.id,
                    watcher: Sink::Queue(queue),
                    resume,
                };
                self.order = Some(order.clone());
                // wait(): live pushes must not overtake the snapshot or the replay.
                ctx.wait(order.subscribe.send(subscribe).into_actor(self).map(
                    |first, act, ctx| match first {
                        Ok(frames) => {
                            let mut full = false;
                            for frame in &frames {
                                full |= act.write(frame, ctx);
                            }
                            if full {
                                // wait() holds the mailbox (the wake-ups of the queue) until
                                // the next poll, so what was written goes out first.
                                ctx.wait(actix::fut::wrap_future(tokio::task::yield_now()));
                            }
                        }
                        Err(_) => close(
                            ctx,
                            ws::CloseCode::Away,
                            "order is no longer served here; reconnect",
                        ),
                    },
                ));
            }
            None => {}
        }
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        metrics::gauge!("trackline_watch_connections").decrement(1.0);
        if let Some(queue) = &self.queue {
            queue.close();
        }
        if let Some(order) = &self.order {
            order.unsubscribe.do_send(Unsubscribe {
                watcher_id: self.id,
            });
        }
    }
}

impl Handler<Wake> for WatchSession {
    type Result = ();

    fn handle(&mut self, _: Wake, ctx: &mut Self::Context) {
        self.drain(ctx);
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for WatchSession {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        self.last_heard = Instant::now();
        match msg {
            Ok(ws::Message::Ping(payload)) => ctx.pong(&payload),
            Ok(ws::Message::Close(reason)) => {
                ctx.close(reason);
                ctx.stop();
            }
            // The watch stream is one-way; anything the client says besides pings is ignored.
            Ok(_) => {}
            Err(e) => close_on_protocol_error(ctx, e, self.app.config.max_frame_bytes),
        }
    }
}
