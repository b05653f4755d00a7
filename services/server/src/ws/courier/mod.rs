//! The courier stream: one session actor per connected courier app.
//!
//! Each binary frame is decoded, every fix validated, the courier's live position updated, and
//! the good fixes routed to the courier's active orders. The session keeps reading while earlier
//! frames are being committed (up to [`MAX_FRAMES_IN_FLIGHT`], so that one connection's frames
//! share group commits instead of each waiting for a flush of its own), and answers frames
//! strictly in the order they came: a frame's `Rejected`s and its `Ack` go out only after every
//! earlier frame has been answered, and an `Ack` only once the frame is durable. At the bound it
//! stops reading, so a fast app is held back by TCP rather than by an unbounded queue here.
//!
//! On one node the session sends each frame straight to its courier's order actors, from a copy
//! of the registry's routes that it renews whenever its courier's routes changed; in
//! broker mode every frame goes through the registry, which knows the orders on other nodes.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use actix::prelude::*;
use actix_http::ws::Item;
use actix_web_actors::ws;
use bytes::{Bytes, BytesMut};
use futures_util::stream::{FuturesOrdered, StreamExt};
use prost::Message;
use trackline_core::filter::{GpsFilter, Verdict};
use trackline_core::fix::{validate, Fix, RejectCode, Rejection};
use trackline_core::{now_ms, CourierId};
use trackline_proto::v1::{server_frame::Kind, Ack, CourierFrame, Rejected, ServerFrame};

use crate::orders::messages::{Ingest, IngestReport};
use crate::orders::registry::courier_routes::{CourierJoined, CourierLeft, Lookup, Route, Routes};
use crate::orders::registry::{Near, Supersede};
use crate::state::AppState;
use crate::ws::session::{
    close, close_on_protocol_error, keep_alive, ConnectionSlot, Heartbeat, RateLimit,
};

/// The most frames of one connection that may be read and not yet answered. Enough for an app
/// that streams faster than one group commit (a commit takes milliseconds, an app sends a fix
/// every second or flushes its buffer in one frame), small enough that what a connection can
/// hold in the server stays bounded (this many decoded frames).
pub const MAX_FRAMES_IN_FLIGHT: usize = 16;

/// Where a frame's fixes went: one report per order, known once durable.
type Routed = Pin<Box<dyn Future<Output = Result<Vec<IngestReport>, MailboxError>>>>;

/// A frame read but not yet answered.
struct Unanswered {
    /// Fixes refused by validation, in frame order, held back until earlier frames are answered.
    rejected: Vec<(u64, Rejection)>,
    /// The seq to ack once the frame is durable (0: none).
    ack: u64,
}

static NEXT_SESSION_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

pub struct CourierSession {
    id: u64,
    courier: CourierId,
    expires_s: i64,
    app: Arc<AppState>,
    /// The highest seq seen on this connection: seqs must increase within it.
    last_seq: u64,
    /// Decides the courier's position in the live index (orders run their own filter).
    filter: GpsFilter,
    last_heard: Instant,
    /// A fragmented binary message being reassembled.
    partial: Option<BytesMut>,
    rate: RateLimit,
    /// Frames read and not yet answered, oldest first; `routed` holds their routings in the
    /// same order and yields them in that order (made at the first frame: an idle connection
    /// does not pay for its allocations).
    unanswered: VecDeque<Unanswered>,
    routed: Option<FuturesOrdered<Routed>>,
    /// An [`AnswerInOrder`] is spawned and will answer what `routed` yields.
    answering: bool,
    /// One node only: the courier's order actors as the registry last named them (`None` in
    /// broker mode, and until the first frame).
    routes: Option<Routes>,
    /// Closed (or closing after the unanswered frames): nothing more is answered.
    closing: bool,
    _slot: ConnectionSlot,
}

impl CourierSession {
    pub fn new(
        courier: CourierId,
        expires_s: i64,
        app: Arc<AppState>,
        slot: ConnectionSlot,
    ) -> Self {
        let filter = GpsFilter::new(app.order_settings.filter.clone());
        let rate = RateLimit::new(
            app.config.max_frames_per_s,
            2.0 * app.config.max_frames_per_s,
        );
        Self {
            id: NEXT_SESSION_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            courier,
            expires_s,
            app,
            last_seq: 0,
            filter,
            last_heard: Instant::now(),
            partial: None,
            rate,
            unanswered: VecDeque::new(),
            routed: None,
            answering: false,
            routes: None,
            closing: false,
            _slot: slot,
        }
    }

    fn send(ctx: &mut ws::WebsocketContext<Self>, kind: Kind) {
        ctx.binary(ServerFrame { kind: Some(kind) }.encode_to_vec());
    }

    fn reject(ctx: &mut ws::WebsocketContext<Self>, seq: u64, rejection: &Rejection) {
        metrics::counter!("trackline_fixes_rejected_total", "code" => rejection.code.as_str())
            .increment(1);
        Self::send(
            ctx,
            Kind::Rejected(Rejected {
                seq,
                code: rejection.code.as_str().into(),
                reason: rejection.reason.clone(),
            }),
        );
    }

    fn on_frame(&mut self, bytes: Bytes, ctx: &mut ws::WebsocketContext<Self>) {
        if !self.rate.allow() {
            metrics::counter!("trackline_rate_limited_total").increment(1);
            let reason = format!(
                "rate limit: more than {} frames per second",
                self.app.config.max_frames_per_s
            );
            return self.close_in_order(ctx, ws::CloseCode::Policy, reason);
        }
        let frame = match CourierFrame::decode(bytes) {
            Ok(frame) => frame,
            Err(e) => {
                let reason = format!("malformed CourierFrame: {e}");
                return self.close_in_order(ctx, ws::CloseCode::Protocol, reason);
            }
        };
        if frame.fixes.len() > self.app.config.max_fixes_per_frame {
            let reason = format!(
                "{} fixes in one frame, at most {}",
                frame.fixes.len(),
                self.app.config.max_fixes_per_frame
            );
            return self.close_in_order(ctx, ws::CloseCode::Size, reason);
        }
        metrics::counter!("trackline_fixes_received_total").increment(frame.fixes.len() as u64);
        let now = now_ms();
        let bounds = self.app.config.time_bounds();
        let mut valid: Vec<Fix> = Vec::with_capacity(frame.fixes.len());
        let mut invalid: Vec<RejectCode> = Vec::new();
        let mut rejected: Vec<(u64, Rejection)> = Vec::new();
        let mut ack = 0;
        for raw in &frame.fixes {
            ack = ack.max(raw.seq);
            if raw.seq <= self.last_seq {
                let why = format!(
                    "seq {} is not above {} sent before on this connection",
                    raw.seq, self.last_seq
                );
                rejected.push((raw.seq, Rejection::new(RejectCode::SeqNotIncreasing, why)));
                invalid.push(RejectCode::SeqNotIncreasing);
                continue;
            }
            self.last_seq = raw.seq;
            match validate(raw, now, bounds) {
                Ok(fix) => valid.push(fix),
                Err(rejection) => {
                    invalid.push(rejection.code);
                    rejected.push((raw.seq, rejection));
                }
            }
        }
        if self.unanswered.is_empty() {
            // Every earlier frame is answered: the refusals can go out now, in order.
            for (seq, rejection) in rejected.drain(..) {
                Self::reject(ctx, seq, &rejection);
            }
        }
        self.update_live_position(&valid);
        let frame = Unanswered { rejected, ack };
        if valid.is_empty() && invalid.is_empty() {
            // An empty frame: nothing to store, answered in its turn like any other.
            let nothing: Routed = Box::pin(futures_util::future::ready(Ok(Vec::new())));
            return self.queue(frame, nothing, ctx);
        }
        let (fixes, invalid): (Arc<[Fix]>, Arc<[RejectCode]>) = (valid.into(), invalid.into());
        if self.app.cluster.is_none() && !self.routes_current() {
            // Renewed before this frame goes anywhere, and no later frame is read meanwhile:
            // each order actor must get the courier's frames in the order they came.
            let lookup = self.app.registry.send(Lookup {
                courier: self.courier.clone(),
                session_id: self.id,
                near: Near::here(),
            });
            ctx.wait(
                fut::wrap_future(lookup).map(move |routes, act: &mut Self, ctx| {
                    act.routes = routes.ok();
                    act.dispatch(frame, fixes, invalid, ctx);
                }),
            );
            return;
        }
        self.dispatch(frame, fixes, invalid, ctx);
    }

    /// Whether the copy of the routes is as new as the registry's routes of the courier.
    fn routes_current(&self) -> bool {
        self.routes.as_ref().is_some_and(Routes::current)
    }

    /// Sends a read frame's fixes (some, or refusals to count) on their way: to the order actors,
    /// or in broker mode to the registry; and queues the frame to be answered in its turn.
    fn dispatch(
        &mut self,
        frame: Unanswered,
        fixes: Arc<[Fix]>,
        invalid: Arc<[RejectCode]>,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        let routed: Routed = if self.app.cluster.is_none() {
            // Routed even when every fix was refused: the orders count what their courier sent
            // wrong. Each send goes on a fresh clone of the actor's address: actix queues a
            // message at once only on a sender that is not parked, and a parked shared one
            // would hold this frame back while a later frame overtakes it (the order would then
            // skip this frame's fixes as resends, and they would be acked unstored).
            // A lookup that failed (the registry is gone: shutting down) routes nowhere, and the
            // frame is not acked.
            let Some(routes) = self.routes.as_ref() else {
                let gone: Routed = Box::pin(futures_util::future::ready(Err(MailboxError::Closed)));
                return self.queue(frame, gone, ctx);
            };
            let sent: Vec<_> = routes
                .actors
                .iter()
                .map(|actor| {
                    actor.clone().send(Ingest {
                        courier: self.courier.clone(),
                        fixes: fixes.clone(),
                        invalid: invalid.clone(),
                    })
                })
                .collect();
            Box::pin(async move {
                let mut reports = Vec::with_capacity(sent.len());
                for report in sent {
                    match report.await {
                        Ok(report) => reports.push(report),
                        // The actor stopped: its order ended (and routes are renewed at the
                        // next frame), so none of these fixes belong to it any more.
                        Err(MailboxError::Closed) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(reports)
            })
        } else {
            // Broker mode: the registry knows the courier's orders on other nodes. Same fresh
            // address clone, for the same reason.
            let registry = self.app.registry.clone();
            Box::pin(registry.send(Route {
                courier: self.courier.clone(),
                fixes,
                invalid,
            }))
        };
        self.queue(frame, routed, ctx);
    }

    /// Queues a frame to be answered once `routed` is done, after every frame read before it.
    fn queue(&mut self, frame: Unanswered, routed: Routed, ctx: &mut ws::WebsocketContext<Self>) {
        self.unanswered.push_back(frame);
        self.routed
            .get_or_insert_with(FuturesOrdered::new)
            .push_back(routed);
        if !self.answering {
            self.answering = true;
            ctx.spawn(AnswerInOrder {
                until_fewer_than: 1,
                background: true,
            });
        }
        if self.unanswered.len() >= MAX_FRAMES_IN_FLIGHT {
            // wait(): no frame is read (TCP pushes back on the app) until the oldest is answered.
            ctx.wait(AnswerInOrder {
                until_fewer_than: MAX_FRAMES_IN_FLIGHT,
                background: false,
            });
        }
    }

    /// Answers, in order, every frame at the front whose routing is done; registers `task` to be
    /// woken when the next one is.
    fn answer_ready(
        &mut self,
        ctx: &mut ws::WebsocketContext<Self>,
        task: &mut std::task::Context<'_>,
    ) {
        while !self.closing {
            let Some(routed) = self.routed.as_mut() else {
                return;
            };
            let Poll::Ready(Some(reports)) = routed.poll_next_unpin(task) else {
                return;
            };
            // unwrap: one Unanswered is pushed with every routing, and popped with its result
            let frame = self.unanswered.pop_front().unwrap();
            self.answer(frame, reports, ctx);
        }
    }

    /// Sends one durable frame's refusals and its ack; closes with 1011 (and acks nothing more)
    /// when any of its fixes could not be stored.
    fn answer(
        &mut self,
        frame: Unanswered,
        reports: Result<Vec<IngestReport>, MailboxError>,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        let reports = match reports {
            Ok(reports) => reports,
            Err(e) => {
                self.closing = true;
                let reason = format!("order routing failed: {e}");
                return close(ctx, ws::CloseCode::Error, &reason);
            }
        };
        if let Some(failure) = reports.iter().find_map(|r| r.failed.as_ref()) {
            tracing::error!(courier_id = %self.courier, failure, "fixes not stored, closing so the app resends");
            self.closing = true;
            return close(
                ctx,
                ws::CloseCode::Error,
                "fixes not stored (the history store, or a node they go to, failed); resend unacked fixes",
            );
        }
        for (seq, rejection) in &frame.rejected {
            Self::reject(ctx, *seq, rejection);
        }
        let mut rejected: Vec<&(u64, Rejection)> =
            reports.iter().flat_map(|r| &r.rejected).collect();
        rejected.sort_by_key(|(seq, _)| *seq);
        rejected.dedup_by_key(|(seq, _)| *seq);
        for (seq, rejection) in rejected {
            Self::reject(ctx, *seq, rejection);
        }
        metrics::counter!("trackline_fixes_stored_total")
            .increment(reports.iter().map(|r| r.stored as u64).sum());
        if frame.ack > 0 {
            Self::send(ctx, Kind::Ack(Ack { seq: frame.ack }));
        }
    }

    /// Closes with `code` once every frame read before is answered (as when frames were read
    /// one at a time, the app gets the answers to what it sent before the offending frame).
    fn close_in_order(
        &mut self,
        ctx: &mut ws::WebsocketContext<Self>,
        code: ws::CloseCode,
        reason: String,
    ) {
        self.after_answers(ctx, move |ctx| close(ctx, code, &reason));
    }

    /// Runs `then` (which closes the connection) once every frame read before is answered;
    /// reads nothing more meanwhile. Every close that the stream itself causes goes through
    /// here, so the app hears what became of its frames first, as when it was read frame by
    /// frame.
    fn after_answers<F>(&mut self, ctx: &mut ws::WebsocketContext<Self>, then: F)
    where
        F: FnOnce(&mut ws::WebsocketContext<Self>) + 'static,
    {
        if self.closing {
            return;
        }
        if self.unanswered.is_empty() {
            self.closing = true;
            return then(ctx);
        }
        ctx.wait(
            AnswerInOrder {
                until_fewer_than: 1,
                background: false,
            }
            .map(move |(), act, ctx| {
                // A store failure meanwhile has closed with 1011 already.
                if !act.closing {
                    act.closing = true;
                    then(ctx);
                }
            }),
        );
    }

    /// Appends one fragment of a fragmented binary message; decodes the whole at the last one.
    fn on_fragment(&mut self, bytes: Bytes, last: bool, ctx: &mut ws::WebsocketContext<Self>) {
        let max = self.app.config.max_frame_bytes;
        let Some(partial) = self.partial.as_mut() else {
            let reason = "continuation without a first fragment".to_string();
            return self.close_in_order(ctx, ws::CloseCode::Protocol, reason);
        };
        if partial.len() + bytes.len() > max {
            let reason = format!("message larger than {max} bytes");
            return self.close_in_order(ctx, ws::CloseCode::Size, reason);
        }
        partial.extend_from_slice(&bytes);
        if last {
            // unwrap: checked to be Some just above
            let whole = self.partial.take().unwrap().freeze();
            self.on_frame(whole, ctx);
        }
    }

    /// Moves the courier in the live index to its newest fix that the filter calls live.
    fn update_live_position(&mut self, fixes: &[Fix]) {
        let newest_live = fixes
            .iter()
            .filter_map(|fix| match self.filter.assess(fix) {
                Verdict::Live(pos) => Some((fix.time_ms, pos)),
                _ => None,
            })
            .last();
        if let Some((time_ms, pos)) = newest_live {
            self.app.live_positions.upsert(&self.courier, pos, time_ms);
        }
    }
}

/// The close reason for text frames on the courier stream.
const TEXT: &str = "text frames are not accepted; send binary protobuf";

/// Answers the session's frames in order as their routings finish; done once fewer than
/// `until_fewer_than` frames are unanswered (or the session is closing).
///
/// Spawned, it answers in the background while the session keeps reading; passed to
/// `ctx.wait`, it also holds the session's reading back until then (a waiting context polls
/// nothing else, so this future must drive the routings itself, which it does).
struct AnswerInOrder {
    until_fewer_than: usize,
    /// The spawned one, which the session's `answering` flag stands for.
    background: bool,
}

impl ActorFuture<CourierSession> for AnswerInOrder {
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        act: &mut CourierSession,
        ctx: &mut ws::WebsocketContext<CourierSession>,
        task: &mut std::task::Context<'_>,
    ) -> Poll<()> {
        act.answer_ready(ctx, task);
        if act.closing || act.unanswered.len() < self.until_fewer_than {
            if self.background {
                act.answering = false;
            }
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Heartbeat for CourierSession {
    fn last_heard(&self) -> Instant {
        self.last_heard
    }
}

impl Actor for CourierSession {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        metrics::gauge!("trackline_courier_connections").increment(1.0);
        keep_alive(ctx, &self.app, self.expires_s);
        self.app.registry.do_send(CourierJoined {
            courier: self.courier.clone(),
            session_id: self.id,
            session: ctx.address().recipient(),
        });
        tracing::debug!(courier_id = %self.courier, "courier connected");
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        // Let go of the routes' count first: the registry forgets a count nobody holds.
        self.routes = None;
        metrics::gauge!("trackline_courier_connections").decrement(1.0);
        self.app.registry.do_send(CourierLeft {
            courier: self.courier.clone(),
            session_id: self.id,
        });
        tracing::debug!(courier_id = %self.courier, "courier disconnected");
    }
}

impl Handler<Supersede> for CourierSession {
    type Result = ();

    fn handle(&mut self, _: Supersede, ctx: &mut Self::Context) {
        close(
            ctx,
            ws::CloseCode::Policy,
            "superseded by a newer connection of this courier",
        );
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for CourierSession {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        self.last_heard = Instant::now();
        let max = self.app.config.max_frame_bytes;
        match msg {
            Ok(ws::Message::Binary(bytes)) => self.on_frame(bytes, ctx),
            Ok(ws::Message::Continuation(item)) => match item {
                Item::FirstBinary(bytes) => self.partial = Some(BytesMut::from(&bytes[..])),
                Item::Continue(bytes) => self.on_fragment(bytes, false, ctx),
                Item::Last(bytes) => self.on_fragment(bytes, true, ctx),
                Item::FirstText(_) => {
                    self.close_in_order(ctx, ws::CloseCode::Unsupported, TEXT.into())
                }
            },
            Ok(ws::Message::Text(_)) => {
                self.close_in_order(ctx, ws::CloseCode::Unsupported, TEXT.into())
            }
            Ok(ws::Message::Ping(payload)) => ctx.pong(&payload),
            Ok(ws::Message::Pong(_)) | Ok(ws::Message::Nop) => {}
            // The app's close is answered after the acks of what it sent before it.
            Ok(ws::Message::Close(reason)) => self.after_answers(ctx, move |ctx| {
                ctx.close(reason);
                ctx.stop();
            }),
            Err(e) => self.after_answers(ctx, move |ctx| close_on_protocol_error(ctx, e, max)),
        }
    }
}
