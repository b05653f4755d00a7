//! The courier stream: one session actor per connected courier app.
//!
//! Each binary frame is decoded, every fix validated, the courier's live position updated, and
//! the good fixes routed to the courier's active orders. The session waits for that to be
//! durable before it reads the next frame, so acks go out in order and a fast app is held back
//! by TCP rather than by an unbounded queue here.

use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use actix_http::ws::Item;
use actix_web_actors::ws;
use bytes::{Bytes, BytesMut};
use prost::Message;
use trackline_core::filter::{GpsFilter, Verdict};
use trackline_core::fix::{validate, Fix, RejectCode, Rejection};
use trackline_core::{now_ms, CourierId};
use trackline_proto::v1::{server_frame::Kind, Ack, CourierFrame, Rejected, ServerFrame};

use crate::live_index::Upsert;
use crate::registry::{CourierJoined, CourierLeft, Route, Supersede};
use crate::session::{
    close, close_on_protocol_error, keep_alive, ConnectionSlot, Heartbeat, RateLimit,
};
use crate::AppState;

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
            return close(ctx, ws::CloseCode::Policy, &reason);
        }
        let frame = match CourierFrame::decode(bytes) {
            Ok(frame) => frame,
            Err(e) => {
                return close(
                    ctx,
                    ws::CloseCode::Protocol,
                    &format!("malformed CourierFrame: {e}"),
                )
            }
        };
        if frame.fixes.len() > self.app.config.max_fixes_per_frame {
            let reason = format!(
                "{} fixes in one frame, at most {}",
                frame.fixes.len(),
                self.app.config.max_fixes_per_frame
            );
            return close(ctx, ws::CloseCode::Size, &reason);
        }
        metrics::counter!("trackline_fixes_received_total").increment(frame.fixes.len() as u64);
        let now = now_ms();
        let bounds = self.app.config.time_bounds();
        let mut valid: Vec<Fix> = Vec::with_capacity(frame.fixes.len());
        let mut invalid: Vec<RejectCode> = Vec::new();
        let mut ack = 0;
        for raw in &frame.fixes {
            ack = ack.max(raw.seq);
            if raw.seq <= self.last_seq {
                let why = format!(
                    "seq {} is not above {} sent before on this connection",
                    raw.seq, self.last_seq
                );
                Self::reject(
                    ctx,
                    raw.seq,
                    &Rejection::new(RejectCode::SeqNotIncreasing, why),
                );
                invalid.push(RejectCode::SeqNotIncreasing);
                continue;
            }
            self.last_seq = raw.seq;
            match validate(raw, now, bounds) {
                Ok(fix) => valid.push(fix),
                Err(rejection) => {
                    Self::reject(ctx, raw.seq, &rejection);
                    invalid.push(rejection.code);
                }
            }
        }
        self.update_live_position(&valid);
        if valid.is_empty() && invalid.is_empty() {
            if ack > 0 {
                Self::send(ctx, Kind::Ack(Ack { seq: ack }));
            }
            return;
        }
        // Routed even when every fix was refused: the orders count what their courier sent wrong.
        let route = self.app.registry.send(Route {
            courier: self.courier.clone(),
            fixes: Arc::from(valid),
            invalid: Arc::from(invalid),
        });
        // wait(): the next frame is read only after this one is durable and acked.
        ctx.wait(route.into_actor(self).map(move |reports, act, ctx| {
            let reports = match reports {
                Ok(reports) => reports,
                Err(e) => return close(ctx, ws::CloseCode::Error, &format!("order routing failed: {e}")),
            };
            if let Some(failure) = reports.iter().find_map(|r| r.failed.as_ref()) {
                tracing::error!(courier_id = %act.courier, failure, "fixes not stored, closing so the app resends");
                return close(ctx, ws::CloseCode::Error, "history store failed; resend unacked fixes");
            }
            let mut rejected: Vec<&(u64, Rejection)> = reports.iter().flat_map(|r| &r.rejected).collect();
            rejected.sort_by_key(|(seq, _)| *seq);
            rejected.dedup_by_key(|(seq, _)| *seq);
            for (seq, rejection) in rejected {
                Self::reject(ctx, *seq, rejection);
            }
            metrics::counter!("trackline_fixes_stored_total").increment(reports.iter().map(|r| r.stored as u64).sum());
            Self::send(ctx, Kind::Ack(Ack { seq: ack }));
        }));
    }

    /// Appends one fragment of a fragmented binary message; decodes the whole at the last one.
    fn on_fragment(&mut self, bytes: Bytes, last: bool, ctx: &mut ws::WebsocketContext<Self>) {
        let max = self.app.config.max_frame_bytes;
        let Some(partial) = self.partial.as_mut() else {
            return close(
                ctx,
                ws::CloseCode::Protocol,
                "continuation without a first fragment",
            );
        };
        if partial.len() + bytes.len() > max {
            return close(
                ctx,
                ws::CloseCode::Size,
                &format!("message larger than {max} bytes"),
            );
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
            self.app.live_index.do_send(Upsert {
                courier: self.courier.clone(),
                pos,
                time_ms,
            });
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
                Item::FirstText(_) => close(
                    ctx,
                    ws::CloseCode::Unsupported,
                    "text frames are not accepted; send binary protobuf",
                ),
            },
            Ok(ws::Message::Text(_)) => close(
                ctx,
                ws::CloseCode::Unsupported,
                "text frames are not accepted; send binary protobuf",
            ),
            Ok(ws::Message::Ping(payload)) => ctx.pong(&payload),
            Ok(ws::Message::Pong(_)) | Ok(ws::Message::Nop) => {}
            Ok(ws::Message::Close(reason)) => {
                ctx.close(reason);
                ctx.stop();
            }
            Err(e) => close_on_protocol_error(ctx, e, max),
        }
    }
}
