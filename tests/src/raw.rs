//! Raw clients for hostile tests: a WebSocket spoken byte by byte over TCP (any opcode, flag,
//! length, mask or fragmentation, valid or not) and plain HTTP/1.1 written by hand. Everything
//! waits with a timeout and reports what happened instead of panicking, so a test can assert on
//! the exact outcome (status, close code, dropped connection).

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use trackline_proto::v1::{self, server_frame::Kind};
use trackline_proto::Message as _;

use crate::TestServer;

/// WebSocket opcodes (RFC 6455 §5.2).
pub mod op {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// An HTTP answer read off a raw socket.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    /// The head, lower-cased header names, as sent.
    pub head: String,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The body as JSON (`Null` when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// How a raw exchange ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The server sent a close frame with this code (`None`: an empty close frame).
    Closed(Option<u16>),
    /// The connection ended (EOF or reset) without a close frame.
    Dropped,
    /// Still open when the wait ended.
    Open,
}

/// One frame the server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFrame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// A WebSocket client that writes frames exactly as told.
pub struct RawWs {
    pub tcp: TcpStream,
    read: Vec<u8>,
}

/// Encodes one frame; `mask` is the client's masking key (`None`: an unmasked frame, which a
/// server must refuse). `rsv` is the three reserved bits (0 for a well-formed frame).
pub fn frame(fin: bool, rsv: u8, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push((u8::from(fin) << 7) | ((rsv & 0x7) << 4) | (opcode & 0x0f));
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A frame header alone that announces `len` payload bytes (masked, no payload follows).
pub fn header_claiming(opcode: u8, len: u64) -> Vec<u8> {
    let mut out = vec![0x80 | opcode, 0x80 | 127];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&[1, 2, 3, 4]);
    out
}

/// A close payload: the code and a reason.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut out = code.to_be_bytes().to_vec();
    out.extend_from_slice(reason.as_bytes());
    out
}

const SEND_MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// Reads one HTTP response head (and its body, by Content-Length) from a socket.
async fn read_response(
    tcp: &mut TcpStream,
    within: Duration,
) -> Result<(RawResponse, Vec<u8>), String> {
    read_response_from(tcp, within).await
}

/// Reads one HTTP response head (and its body, by Content-Length) from `tcp`; the bytes read
/// past it.
async fn read_response_from<R: AsyncReadExt + Unpin>(
    tcp: &mut R,
    within: Duration,
) -> Result<(RawResponse, Vec<u8>), String> {
    let deadline = Instant::now() + within;
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, tcp.read(&mut chunk)).await {
            Err(_) => return Err(format!("no complete response head within {within:?}")),
            Ok(Ok(0)) => {
                return Err(format!(
                    "connection closed after {} bytes of response",
                    buf.len()
                ))
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(format!("reading the response: {e}")),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    let lower = head.to_ascii_lowercase();
    let length: usize = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut rest = buf[head_end..].to_vec();
    if status != 101 {
        while rest.len() < length {
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, tcp.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => rest.extend_from_slice(&chunk[..n]),
                _ => break,
            }
        }
    }
    let (body, leftover) = if status == 101 {
        (Vec::new(), rest)
    } else {
        let cut = length.min(rest.len());
        (rest[..cut].to_vec(), rest[cut..].to_vec())
    };
    Ok((
        RawResponse {
            status,
            head: lower,
            body,
        },
        leftover,
    ))
}

/// Reads one HTTP response from `tcp` (an exchange written by hand).
///
/// # Errors
/// When no complete response head arrives within `within`.
pub async fn read_http_response(
    tcp: &mut TcpStream,
    within: Duration,
) -> Result<RawResponse, String> {
    read_response(tcp, within)
        .await
        .map(|(response, _)| response)
}

/// Sends `request` (bytes as given) on a new connection and reads the answer.
///
/// # Errors
/// When the connection fails or no complete answer arrives within `within`.
pub async fn http(
    addr: SocketAddr,
    request: &[u8],
    within: Duration,
) -> Result<RawResponse, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    // Written while the answer is read: a server may answer (413, 400) and close before it has
    // read everything, and a refused write must not hide that answer.
    let (mut reader, mut writer) = tcp.into_split();
    let request = request.to_vec();
    let writing = tokio::spawn(async move {
        let _ = writer.write_all(&request).await;
        writer
    });
    let answer = read_response_from(&mut reader, within)
        .await
        .map(|(response, _)| response);
    writing.abort();
    answer
}

/// A GET upgrade request head for `path` with an optional bearer token and extra header lines.
pub fn upgrade_request(path: &str, token: Option<&str>, extra: &str) -> String {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{auth}{extra}\r\n"
    )
}

impl RawWs {
    /// Opens a WebSocket on `path` with a bearer token; the HTTP answer when it is not 101.
    ///
    /// # Errors
    /// The refusal (status and body), or a connection failure as status 0.
    pub async fn connect(
        addr: SocketAddr,
        path: &str,
        token: Option<&str>,
    ) -> Result<RawWs, RawResponse> {
        Self::connect_with(addr, &upgrade_request(path, token, "")).await
    }

    /// Opens a WebSocket with the given request head.
    ///
    /// # Errors
    /// The refusal (status and body), or a connection failure as status 0.
    pub async fn connect_with(addr: SocketAddr, request: &str) -> Result<RawWs, RawResponse> {
        let failed = |e: String| RawResponse {
            status: 0,
            head: e,
            body: Vec::new(),
        };
        let mut tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| failed(e.to_string()))?;
        tcp.set_nodelay(true).map_err(|e| failed(e.to_string()))?;
        tcp.write_all(request.as_bytes())
            .await
            .map_err(|e| failed(e.to_string()))?;
        let (response, leftover) = read_response(&mut tcp, crate::TIMEOUT)
            .await
            .map_err(failed)?;
        if response.status != 101 {
            return Err(response);
        }
        Ok(RawWs {
            tcp,
            read: leftover,
        })
    }

    /// Writes bytes as they are; false when the connection refused them (closed or reset).
    pub async fn write(&mut self, bytes: &[u8]) -> bool {
        matches!(
            tokio::time::timeout(crate::TIMEOUT, self.tcp.write_all(bytes)).await,
            Ok(Ok(()))
        )
    }

    /// Sends one masked frame.
    pub async fn send(&mut self, fin: bool, opcode: u8, payload: &[u8]) -> bool {
        self.write(&frame(fin, 0, opcode, payload, Some(SEND_MASK)))
            .await
    }

    /// Sends one masked, unfragmented binary message.
    pub async fn binary(&mut self, payload: &[u8]) -> bool {
        self.send(true, op::BINARY, payload).await
    }

    /// The next frame from the server, or why there is none (closed, dropped, nothing in time).
    pub async fn next_frame(&mut self, within: Duration) -> Result<ServerFrame, Ending> {
        let deadline = Instant::now() + within;
        loop {
            if let Some((frame, used)) = parse_server_frame(&self.read) {
                self.read.drain(..used);
                return Ok(frame);
            }
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout_at(deadline, self.tcp.read(&mut chunk)).await {
                Err(_) => return Err(Ending::Open),
                Ok(Ok(0)) | Ok(Err(_)) => return Err(Ending::Dropped),
                Ok(Ok(n)) => self.read.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads (and drops) frames until the server closes or drops the connection, or `within`
    /// passes; pings are not answered.
    pub async fn ending(&mut self, within: Duration) -> Ending {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_frame(left).await {
                Ok(f) if f.opcode == op::CLOSE => {
                    let code = (f.payload.len() >= 2)
                        .then(|| u16::from_be_bytes([f.payload[0], f.payload[1]]));
                    return Ending::Closed(code);
                }
                Ok(_) => {}
                Err(ending) => return ending,
            }
        }
    }

    /// Reads frames until a binary one arrives (answering nothing); `None` if the connection
    /// ends or nothing comes within `within`.
    pub async fn next_binary(&mut self, within: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_frame(left).await {
                Ok(f) if f.opcode == op::BINARY => return Some(f.payload),
                Ok(f) if f.opcode == op::CLOSE => return None,
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }
}

/// Parses one unmasked server frame from the front of `buf`: the frame and the bytes it used.
fn parse_server_frame(buf: &[u8]) -> Option<(ServerFrame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let fin = buf[0] & 0x80 != 0;
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut at) = match buf[1] & 0x7f {
        126 => (
            usize::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
            4,
        ),
        127 => {
            let bytes: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            (usize::try_from(u64::from_be_bytes(bytes)).ok()?, 10)
        }
        n => (usize::from(n), 2),
    };
    let key = if masked {
        let key: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        Some(key)
    } else {
        None
    };
    let data = buf.get(at..at + len)?;
    let payload = match key {
        Some(k) => data.iter().enumerate().map(|(i, b)| b ^ k[i % 4]).collect(),
        None => data.to_vec(),
    };
    Some((
        ServerFrame {
            fin,
            opcode,
            payload,
        },
        at + len,
    ))
}

/// The mask every hand-written client frame carries (clients must mask; the value is arbitrary).
pub const MASK: Option<[u8; 4]> = Some([9, 8, 7, 6]);

impl RawWs {
    /// Opens the courier stream of `server` as `courier`; panics on a refusal.
    pub async fn courier(server: &TestServer, courier: &str) -> RawWs {
        RawWs::connect(
            server.addr(),
            "/v1/courier/ws",
            Some(&server.courier_token(courier)),
        )
        .await
        .unwrap_or_else(|r| panic!("courier upgrade of {courier} refused: {r:?}"))
    }

    /// Opens the watch stream of `order` on `server` with its watch token; panics on a refusal.
    pub async fn watcher(server: &TestServer, order: &str) -> RawWs {
        RawWs::connect(
            server.addr(),
            &format!("/v1/orders/{order}/watch"),
            Some(&server.watch_token(order)),
        )
        .await
        .unwrap_or_else(|r| panic!("watch upgrade of {order} refused: {r:?}"))
    }

    /// Reads server frames until an ack covering `seq`; the rejections on the way. Panics if the
    /// stream ends first.
    pub async fn wait_ack(&mut self, seq: u64, what: &str) -> Vec<v1::Rejected> {
        let deadline = Instant::now() + crate::TIMEOUT;
        let mut rejected = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = self
                .next_frame(left)
                .await
                .unwrap_or_else(|e| panic!("{what}: no ack of {seq}: {e:?}"));
            match frame.opcode {
                op::BINARY => match v1::ServerFrame::decode(frame.payload.as_slice())
                    .unwrap_or_else(|e| panic!("{what}: server frame does not decode: {e}"))
                    .kind
                {
                    Some(Kind::Ack(ack)) if ack.seq >= seq => return rejected,
                    Some(Kind::Ack(_)) => {}
                    Some(Kind::Rejected(r)) => rejected.push(r),
                    None => panic!("{what}: server frame without a kind"),
                },
                op::CLOSE => panic!("{what}: closed while waiting for the ack of {seq}: {frame:?}"),
                _ => {}
            }
        }
    }

    /// Asserts that the server closes the connection with `code` within [`crate::TIMEOUT`].
    pub async fn expect_close(&mut self, code: u16, what: &str) {
        let ending = self.ending(crate::TIMEOUT).await;
        assert_eq!(ending, Ending::Closed(Some(code)), "{what}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_through_the_parser() {
        for len in [0, 1, 125, 126, 65535, 65536] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let bytes = frame(true, 0, op::BINARY, &payload, None);
            let (parsed, used) = parse_server_frame(&bytes).unwrap();
            assert_eq!(used, bytes.len());
            assert_eq!(parsed.payload, payload);
            let masked = frame(false, 0, op::TEXT, &payload, Some(SEND_MASK));
            let (parsed, _) = parse_server_frame(&masked).unwrap();
            assert_eq!((parsed.fin, parsed.opcode), (false, op::TEXT));
            assert_eq!(parsed.payload, payload);
            assert!(parse_server_frame(&bytes[..bytes.len() - 1]).is_none() || len == 0);
        }
    }
}
