//! A WebSocket echo endpoint for conformance testing (the Autobahn fuzzingclient cases), built
//! only with the `conformance-echo` feature and served at `/test/echo`.
//!
//! It runs on the same stack as the courier and watch streams: an actix-web-actors session with
//! the server's codec and frame-size limit (`--max-frame-bytes`), the shared heartbeat and
//! timeout (`session::keep_alive`), the shared connection count (`--max-connections`) and the
//! shared `session::close`. What it adds is what an echo needs: it sends back every text and
//! binary message, reassembling fragmented ones up to `--max-frame-bytes`, and it checks that
//! text is UTF-8 as it arrives (fail fast, close 1007). It takes no token: it exists only in test
//! builds and touches no order.

use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use actix_http::ws::Item;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws;
use bytes::BytesMut;

use crate::http::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::ws::session::{close, keep_alive, ConnectionSlot, Heartbeat};

/// A fragmented message being reassembled.
struct Partial {
    text: bool,
    bytes: BytesMut,
    /// For text: the prefix already known to be valid UTF-8.
    valid_up_to: usize,
}

pub struct EchoSession {
    app: Arc<AppState>,
    last_heard: Instant,
    partial: Option<Partial>,
    _slot: ConnectionSlot,
}

/// What the UTF-8 check of a (partial) text message found.
enum Utf8 {
    Valid,
    /// Valid so far, but ends inside a character (more fragments may complete it).
    Incomplete(usize),
    Invalid,
}

fn check_utf8(bytes: &[u8], from: usize) -> Utf8 {
    match std::str::from_utf8(&bytes[from..]) {
        Ok(_) => Utf8::Valid,
        Err(e) if e.error_len().is_none() => Utf8::Incomplete(from + e.valid_up_to()),
        Err(_) => Utf8::Invalid,
    }
}

impl EchoSession {
    fn invalid_utf8(ctx: &mut ws::WebsocketContext<Self>) {
        close(
            ctx,
            ws::CloseCode::Invalid,
            "text message is not valid UTF-8",
        );
    }

    fn start_fragmented(&mut self, text: bool, bytes: &[u8], ctx: &mut ws::WebsocketContext<Self>) {
        self.partial = Some(Partial {
            text,
            bytes: BytesMut::new(),
            valid_up_to: 0,
        });
        self.on_fragment(bytes, false, ctx);
    }

    fn on_fragment(&mut self, bytes: &[u8], last: bool, ctx: &mut ws::WebsocketContext<Self>) {
        let max = self.app.config.max_frame_bytes;
        let Some(partial) = self.partial.as_mut() else {
            return close(
                ctx,
                ws::CloseCode::Protocol,
                "continuation without a first fragment",
            );
        };
        if partial.bytes.len() + bytes.len() > max {
            return close(
                ctx,
                ws::CloseCode::Size,
                &format!("message larger than {max} bytes"),
            );
        }
        partial.bytes.extend_from_slice(bytes);
        if partial.text {
            match check_utf8(&partial.bytes, partial.valid_up_to) {
                Utf8::Valid => partial.valid_up_to = partial.bytes.len(),
                Utf8::Incomplete(upto) if !last => partial.valid_up_to = upto,
                Utf8::Incomplete(_) | Utf8::Invalid => return Self::invalid_utf8(ctx),
            }
        }
        if last {
            // unwrap: checked to be Some at the top
            let whole = self.partial.take().unwrap();
            if whole.text {
                match String::from_utf8(Vec::from(whole.bytes)) {
                    Ok(text) => ctx.text(text),
                    Err(_) => Self::invalid_utf8(ctx),
                }
            } else {
                ctx.binary(whole.bytes.freeze());
            }
        }
    }
}

impl Heartbeat for EchoSession {
    fn last_heard(&self) -> Instant {
        self.last_heard
    }
}

impl Actor for EchoSession {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // No token, so no expiry: a year from now.
        let expires_s = trackline_core::now_ms() / 1000 + 365 * 24 * 3600;
        keep_alive(ctx, &self.app, expires_s);
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for EchoSession {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        self.last_heard = Instant::now();
        let max = self.app.config.max_frame_bytes;
        match msg {
            Ok(ws::Message::Text(text)) => ctx.text(text),
            Ok(ws::Message::Binary(bytes)) => ctx.binary(bytes),
            Ok(ws::Message::Continuation(item)) => match item {
                Item::FirstText(bytes) => self.start_fragmented(true, &bytes, ctx),
                Item::FirstBinary(bytes) => self.start_fragmented(false, &bytes, ctx),
                Item::Continue(bytes) => self.on_fragment(&bytes, false, ctx),
                Item::Last(bytes) => self.on_fragment(&bytes, true, ctx),
            },
            Ok(ws::Message::Ping(payload)) => ctx.pong(&payload),
            Ok(ws::Message::Pong(_)) | Ok(ws::Message::Nop) => {}
            Ok(ws::Message::Close(reason)) => {
                ctx.close(reason);
                ctx.stop();
            }
            Err(ws::ProtocolError::Overflow) => close(
                ctx,
                ws::CloseCode::Size,
                &format!("frame larger than {max} bytes"),
            ),
            // actix-web-actors reports a text frame that is not UTF-8 as an I/O error of kind
            // Other (the socket's own failures end the stream instead).
            Err(ws::ProtocolError::Io(e)) if e.kind() == std::io::ErrorKind::Other => {
                Self::invalid_utf8(ctx)
            }
            Err(e) => close(
                ctx,
                ws::CloseCode::Protocol,
                &format!("websocket protocol error: {e}"),
            ),
        }
    }
}

/// `GET /test/echo`: upgrades to the echo session.
pub async fn echo(
    req: HttpRequest,
    app: web::Data<Arc<AppState>>,
    stream: web::Payload,
) -> ApiResult<HttpResponse> {
    let slot = ConnectionSlot::take(&app.connections, app.config.max_connections)?;
    let session = EchoSession {
        app: app.get_ref().clone(),
        last_heard: Instant::now(),
        partial: None,
        _slot: slot,
    };
    ws::WsResponseBuilder::new(session, &req, stream)
        .frame_size(app.config.max_frame_bytes)
        .start()
        .map_err(|e| ApiError::BadRequest("bad_upgrade", e.to_string()))
}
