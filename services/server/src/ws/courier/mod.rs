//! The courier stream: one session actor per connected courier app.
//!
//! Each binary frame goes through the connection's [`intake`] (rate limit, size, seqs,
//! validation), the courier's live position is updated, and the good fixes are routed
//! ([`routing`]) to the courier's active orders. The session keeps reading while earlier frames
//! are being committed (up to [`MAX_FRAMES_IN_FLIGHT`], so that one connection's frames share
//! group commits instead of each waiting for a flush of its own), and answers frames strictly in
//! the order they came ([`answers`]): a frame's `Rejected`s and its `Ack` go out only after every
//! earlier frame has been answered, and an `Ack` only once the frame is durable. At the bound it
//! stops reading, so a fast app is held back by TCP rather than by an unbounded queue here.

pub mod answers;
pub mod clock;
pub mod intake;
pub mod routing;

use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use actix::prelude::*;
use actix_http::ws::Item;
use actix_web_actors::ws;
use bytes::{Bytes, BytesMut};
use prost::Message;
use trackline_core::filter::{GpsFilter, Verdict};
use trackline_core::fix::{Fix, RejectCode, Rejection};
use trackline_core::{now_ms, CourierId};
use trackline_proto::v1::{server_frame::Kind, Ack, CourierFrame, Rejected, ServerFrame};

use crate::orders::messages::IngestReport;
use crate::orders::registry::courier_routes::{CourierJoined, CourierLeft, Lookup};
use crate::orders::registry::{Near, Supersede};
use crate::state::AppState;
use crate::ws::courier::answers::{InOrder, Routed, Unanswered};
use crate::ws::courier::intake::{FrameIntake, Intake, IntakeLimits, Refusal};
use crate::ws::courier::routing::Routing;
use crate::ws::session::{close, close_on_protocol_error, keep_alive, ConnectionSlot, Heartbeat};

/// The most frames of one connection that may be read and not yet answered. Enough for an app
/// that streams faster than one group commit (a commit takes milliseconds, an app sends a fix
/// every second or flushes its buffer in one frame), small enough that what a connection can
/// hold in the server stays bounded (this many decoded frames).
pub const MAX_FRAMES_IN_FLIGHT: usize = 16;

static NEXT_SESSION_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

pub struct CourierSession {
    id: u64,
    courier: CourierId,
    expires_s: i64,
    app: Arc<AppState>,
    /// The rate budget, the seqs seen on this connection, the limits of a frame.
    intake: FrameIntake,
    /// Decides the courier's position in the live index (orders run their own filter).
    filter: GpsFilter,
    last_heard: Instant,
    /// A fragmented binary message being reassembled.
    partial: Option<BytesMut>,
    /// Frames read and not yet answered, with their routings.
    in_flight: InOrder,
    /// An [`AnswerInOrder`] is spawned and will answer what `in_flight` yields.
    answering: bool,
    routing: Routing,
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
        let limits = IntakeLimits {
            max_frames_per_s: app.config.max_frames_per_s,
            max_fixes_per_frame: app.config.max_fixes_per_frame,
            time_bounds: app.config.time_bounds(),
        };
        let routing = Routing::for_topology(&app.topology);
        Self {
            id: NEXT_SESSION_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            courier,
            expires_s,
            intake: FrameIntake::new(limits, Instant::now()),
            app,
            filter,
            last_heard: Instant::now(),
            partial: None,
            in_flight: InOrder::default(),
            answering: false,
            routing,
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
        let taken = self
            .intake
            .admit(Instant::now())
            .and_then(|()| self.intake.take(CourierFrame::decode(bytes), now_ms()));
        let intake = match taken {
            Ok(intake) => {
                metrics::counter!("trackline_fixes_received_total")
                    .increment(intake.received() as u64);
                intake
            }
            Err(refusal) => {
                if matches!(refusal, Refusal::RateLimited { .. }) {
                    metrics::counter!("trackline_rate_limited_total").increment(1);
                }
                let code = ws::CloseCode::from(refusal.close_code());
                return self.close_in_order(ctx, code, refusal.reason());
            }
        };
        let nothing_to_route = intake.is_empty();
        let Intake {
            valid,
            invalid,
            mut rejected,
            ack,
            clock_offset_ms,
        } = intake;
        if clock_offset_ms != 0 {
            metrics::counter!("trackline_fix_clock_adjusted_total").increment(valid.len() as u64);
        }
        if self.in_flight.is_empty() {
            // Every earlier frame is answered: the refusals can go out now, in order.
            for (seq, rejection) in rejected.drain(..) {
                Self::reject(ctx, seq, &rejection);
            }
        }
        self.update_live_position(&valid);
        let frame = Unanswered { rejected, ack };
        if nothing_to_route {
            // An empty frame: nothing to store, answered in its turn like any other.
            let nothing: Routed = Box::pin(futures_util::future::ready(Ok(Vec::new())));
            return self.queue(frame, nothing, ctx);
        }
        let (fixes, invalid): (Arc<[Fix]>, Arc<[RejectCode]>) = (valid.into(), invalid.into());
        if self.routing.is_stale() {
            // Renewed before this frame goes anywhere, and no later frame is read meanwhile:
            // each order actor must get the courier's frames in the order they came.
            let lookup = self.app.registry.send(Lookup {
                courier: self.courier.clone(),
                session_id: self.id,
                near: Near::here(),
            });
            ctx.wait(
                fut::wrap_future(lookup).map(move |routes, act: &mut Self, ctx| {
                    act.routing.renew(routes.ok());
                    act.dispatch(frame, fixes, invalid, clock_offset_ms, ctx);
                }),
            );
            return;
        }
        self.dispatch(frame, fixes, invalid, clock_offset_ms, ctx);
    }

    /// Sends a read frame's fixes on their way and queues the frame to be answered in its turn.
    fn dispatch(
        &mut self,
        frame: Unanswered,
        fixes: Arc<[Fix]>,
        invalid: Arc<[RejectCode]>,
        clock_offset_ms: i64,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        let routed = self.routing.send(
            &self.app.registry,
            &self.courier,
            fixes,
            invalid,
            clock_offset_ms,
        );
        self.queue(frame, routed, ctx);
    }

    /// Queues a frame to be answered once `routed` is done, after every frame read before it.
    fn queue(&mut self, frame: Unanswered, routed: Routed, ctx: &mut ws::WebsocketContext<Self>) {
        self.in_flight.push(frame, routed);
        if !self.answering {
            self.answering = true;
            ctx.spawn(AnswerInOrder {
                until_fewer_than: 1,
                background: true,
            });
        }
        if self.in_flight.len() >= MAX_FRAMES_IN_FLIGHT {
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
            let Some((frame, reports)) = self.in_flight.next_ready(task) else {
                return;
            };
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
            tracing::error!(courier_id = %self.courier, failure = %failure, "fixes not stored, closing so the app resends");
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
        if self.in_flight.is_empty() {
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
        if act.closing || act.in_flight.len() < self.until_fewer_than {
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
        self.routing.release();
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
