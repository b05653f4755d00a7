//! Client-side wire code shared by every peer: loopback sockets from several source addresses,
//! WebSocket upgrades, and hand-written codecs for the NATS text protocol, MQTT 3.1.1 and RESP.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<TcpStream>;

/// Source addresses 127.0.0.2 ..= 127.0.0.(1 + SOURCES): each has its own ephemeral port range,
/// so tens of thousands of connections (and their TIME_WAITs) fit.
const SOURCES: usize = 16;
static NEXT_SOURCE: AtomicUsize = AtomicUsize::new(0);

fn next_source() -> IpAddr {
    let i = NEXT_SOURCE.fetch_add(1, Ordering::Relaxed) % SOURCES;
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8))
}

/// A TCP connection to a loopback address from the next 127.0.0.x source address.
pub async fn tcp_connect(dst: SocketAddr) -> Result<TcpStream> {
    if !dst.ip().is_loopback() {
        bail!("refusing a non-loopback target {dst}");
    }
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(next_source(), 0))?;
    let stream = sock
        .connect(dst)
        .await
        .with_context(|| format!("connect {dst}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A WebSocket to `ws://{dst}{path}`, optionally asking for a subprotocol.
pub async fn ws_connect(dst: SocketAddr, path: &str, subprotocol: Option<&str>) -> Result<Ws> {
    let stream = tcp_connect(dst).await?;
    let mut req = format!("ws://{dst}{path}").into_client_request()?;
    if let Some(p) = subprotocol {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_str(p)?);
    }
    // Small buffers: a benchmark client holds tens of thousands of these.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (ws, _) = tokio_tungstenite::client_async_with_config(req, stream, Some(config))
        .await
        .with_context(|| format!("websocket upgrade ws://{dst}{path}"))?;
    Ok(ws)
}

// ---------------------------------------------------------------------------------------------
// NATS text protocol

/// One message of the NATS server-to-client protocol that the benchmark cares about.
#[derive(Debug, PartialEq, Eq)]
pub enum NatsIn {
    Msg(Vec<u8>),
    Ping,
    Pong,
    Other,
    Err(String),
}

/// Incremental parser of the NATS server-to-client protocol (frames may split or join messages).
#[derive(Default)]
pub struct NatsParser {
    buf: Vec<u8>,
}

impl NatsParser {
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete message, if one is buffered.
    pub fn next_message(&mut self) -> Option<NatsIn> {
        let eol = self.buf.windows(2).position(|w| w == b"\r\n")?;
        let line = String::from_utf8_lossy(&self.buf[..eol]).into_owned();
        if let Some(rest) = line.strip_prefix("MSG ") {
            // MSG <subject> <sid> [reply-to] <#bytes>
            let len: usize = rest.split_whitespace().last()?.parse().ok()?;
            let start = eol + 2;
            if self.buf.len() < start + len + 2 {
                return None;
            }
            let payload = self.buf[start..start + len].to_vec();
            self.buf.drain(..start + len + 2);
            return Some(NatsIn::Msg(payload));
        }
        self.buf.drain(..eol + 2);
        Some(if line == "PING" {
            NatsIn::Ping
        } else if line == "PONG" {
            NatsIn::Pong
        } else if let Some(e) = line.strip_prefix("-ERR") {
            NatsIn::Err(e.trim().to_string())
        } else {
            NatsIn::Other
        })
    }
}

pub fn nats_connect() -> Vec<u8> {
    b"CONNECT {\"verbose\":false,\"pedantic\":false,\"lang\":\"rust\",\"version\":\"bench\",\"protocol\":1}\r\nPING\r\n".to_vec()
}

pub fn nats_pub(subject: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!("PUB {subject} {}\r\n", payload.len()).into_bytes();
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
    out
}

// ---------------------------------------------------------------------------------------------
// MQTT 3.1.1

fn mqtt_remaining_length(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            break;
        }
    }
}

fn mqtt_packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    mqtt_remaining_length(body.len(), &mut out);
    out.extend_from_slice(body);
    out
}

fn mqtt_str(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// CONNECT with a clean session and keep-alive off.
pub fn mqtt_connect(client_id: &str) -> Vec<u8> {
    let mut body = Vec::new();
    mqtt_str("MQTT", &mut body);
    body.push(4); // protocol level 3.1.1
    body.push(0x02); // clean session
    body.extend_from_slice(&0u16.to_be_bytes()); // keep-alive off
    mqtt_str(client_id, &mut body);
    mqtt_packet(0x10, &body)
}

/// PUBLISH at QoS 0.
pub fn mqtt_publish(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(topic.len() + payload.len() + 2);
    mqtt_str(topic, &mut body);
    body.extend_from_slice(payload);
    mqtt_packet(0x30, &body)
}

/// SUBSCRIBE to one topic at QoS 0.
pub fn mqtt_subscribe(topic: &str) -> Vec<u8> {
    let mut body = 1u16.to_be_bytes().to_vec();
    mqtt_str(topic, &mut body);
    body.push(0);
    mqtt_packet(0x82, &body)
}

/// One MQTT packet from the server: (packet type, payload of a PUBLISH or the raw body).
#[derive(Debug, PartialEq, Eq)]
pub struct MqttIn {
    pub kind: u8,
    pub payload: Vec<u8>,
}

#[derive(Default)]
pub struct MqttParser {
    buf: Vec<u8>,
}

impl MqttParser {
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    pub fn next_packet(&mut self) -> Option<MqttIn> {
        let first = *self.buf.first()?;
        let (mut len, mut mult, mut i) = (0usize, 1usize, 1usize);
        loop {
            let b = *self.buf.get(i)?;
            len += usize::from(b & 0x7f) * mult;
            mult *= 128;
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        if self.buf.len() < i + len {
            return None;
        }
        let body: Vec<u8> = self.buf[i..i + len].to_vec();
        self.buf.drain(..i + len);
        let kind = first >> 4;
        let payload = if kind == 3 && body.len() >= 2 {
            let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
            let mut start = 2 + topic_len;
            if (first >> 1) & 0x03 > 0 {
                start += 2; // packet id at QoS > 0
            }
            body.get(start..).unwrap_or_default().to_vec()
        } else {
            body
        };
        Some(MqttIn { kind, payload })
    }
}

// ---------------------------------------------------------------------------------------------
// RESP (Redis)

/// A command in RESP: an array of bulk strings.
pub fn resp_command(args: &[&[u8]], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Resp>),
}

/// Reads one RESP value.
pub async fn resp_read<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<Resp> {
    let mut stack: Vec<(usize, Vec<Resp>)> = Vec::new();
    loop {
        let mut line = Vec::new();
        if r.read_until(b'\n', &mut line).await? == 0 {
            bail!("redis closed the connection");
        }
        if line.len() < 3 {
            bail!("short RESP line");
        }
        let text = String::from_utf8_lossy(&line[1..line.len() - 2]).into_owned();
        let value = match line[0] {
            b'+' => Resp::Simple(text),
            b'-' => Resp::Error(text),
            b':' => Resp::Int(text.parse()?),
            b'$' => {
                let n: i64 = text.parse()?;
                if n < 0 {
                    Resp::Bulk(None)
                } else {
                    let mut data = vec![0; n as usize + 2];
                    r.read_exact(&mut data).await?;
                    data.truncate(n as usize);
                    Resp::Bulk(Some(data))
                }
            }
            b'*' => {
                let n: i64 = text.parse()?;
                if n <= 0 {
                    Resp::Array(Vec::new())
                } else {
                    stack.push((n as usize, Vec::new()));
                    continue;
                }
            }
            other => bail!("unexpected RESP type {:?}", other as char),
        };
        let mut value = value;
        loop {
            match stack.last_mut() {
                None => return Ok(value),
                Some((n, items)) => {
                    items.push(value);
                    if items.len() < *n {
                        break;
                    }
                    let (_, items) = stack.pop().unwrap();
                    value = Resp::Array(items);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_parser_handles_split_and_joined_messages() {
        let mut p = NatsParser::default();
        p.push(b"INFO {}\r\nMSG o.1 1 5\r\nhel");
        assert_eq!(p.next_message(), Some(NatsIn::Other));
        assert_eq!(p.next_message(), None);
        p.push(b"lo\r\nPING\r\nMSG o.1 1 2\r\n\r\n\r\n");
        assert_eq!(p.next_message(), Some(NatsIn::Msg(b"hello".to_vec())));
        assert_eq!(p.next_message(), Some(NatsIn::Ping));
        // a payload may itself hold CRLF
        assert_eq!(p.next_message(), Some(NatsIn::Msg(b"\r\n".to_vec())));
        assert_eq!(p.next_message(), None);
    }

    #[test]
    fn mqtt_publish_round_trips_through_the_parser() {
        let mut p = MqttParser::default();
        let payload = vec![7u8; 300]; // remaining length needs two bytes
        let packet = mqtt_publish("o/abc", &payload);
        p.push(&packet[..10]);
        assert_eq!(p.next_packet(), None);
        p.push(&packet[10..]);
        p.push(&[0x20, 2, 0, 0]); // CONNACK
        assert_eq!(p.next_packet(), Some(MqttIn { kind: 3, payload }));
        assert_eq!(p.next_packet().map(|m| m.kind), Some(2));
    }

    #[tokio::test]
    async fn resp_reads_nested_replies() {
        let data = b"*3\r\n$7\r\nmessage\r\n$3\r\no.1\r\n$2\r\nhi\r\n:5\r\n-ERR no\r\n".to_vec();
        let mut r = tokio::io::BufReader::new(data.as_slice());
        assert_eq!(
            resp_read(&mut r).await.unwrap(),
            Resp::Array(vec![
                Resp::Bulk(Some(b"message".to_vec())),
                Resp::Bulk(Some(b"o.1".to_vec())),
                Resp::Bulk(Some(b"hi".to_vec())),
            ])
        );
        assert_eq!(resp_read(&mut r).await.unwrap(), Resp::Int(5));
        assert_eq!(
            resp_read(&mut r).await.unwrap(),
            Resp::Error("ERR no".into())
        );
    }
}
