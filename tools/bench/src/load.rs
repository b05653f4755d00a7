//! The load generator: N couriers streaming fixes, one watcher per courier's order, against any
//! peer. Latency is measured end to end, from the moment a fix is handed to the courier's socket
//! to the moment its watcher decodes it.
//!
//! Each fix is stamped with the wall clock at the moment it is sent, at least a millisecond after
//! the courier's previous fix (so its time always increases and a server that corrects wrong
//! device clocks leaves it alone), and moves 2.2 cm north (at most 22 m/s: plausible for the GPS
//! filter). The generator keeps the send instant and the stamp of each fix in rings per courier,
//! so the watcher finds the exact send time of whatever it receives, at nanosecond resolution,
//! with the same payload for every peer.
//!
//! The fleet pace ([`Pace::Fleet`]) stamps each fix with the moment it was due instead: `time_ms
//! = base + counter * period`, a courier's own period, so the counter follows from the time; its
//! positions run along a course ([`crate::course`]).
//!
//! The couriers and watchers here speak the streams directly instead of through
//! `trackline-client`: a measurement wants one frame per fix handed to the socket at a known
//! instant, on sockets from many source addresses, for every peer alike, and no outbox, batching
//! or pacing between the clock and the wire, which is exactly what the client adds for apps.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{stream, SinkExt, StreamExt, TryStreamExt};
use prost::Message as _;
use serde::Serialize;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use trackline_core::auth::{Role, TokenKeys};
use trackline_core::CourierId;
use trackline_proto::v1::{server_frame, CourierFrame, Fix, OrderUpdate, ServerFrame};
use trackline_rest::{CreateOrder, OrderCreated, Point};

use crate::course::{DeviceClock, Schedule};
use crate::peers::{Peer, SECRET};
use crate::stats::{CpuMeter, LatencySummary, SharedHistogram};
use crate::wire::{self, MqttParser, NatsIn, NatsParser, Resp, Ws};

/// Send instants kept per courier: the counters a late update may still carry. At one fix per
/// millisecond, 16 s.
const RING: usize = 1 << 14;
/// The same for the fleet pace: at one fix per second or slower, over four minutes.
const FLEET_RING: usize = 256;

/// The send instants kept per courier at `per_courier` fixes per second: 16 s of them, at least
/// [`FLEET_RING`]. A ring is 16 bytes per fix kept, and thousands of slow couriers each with
/// [`RING`] would allocate gigabytes while the load runs.
fn ring_for_rate(per_courier: f64) -> usize {
    ((per_courier * 16.0).ceil() as usize)
        .next_power_of_two()
        .clamp(FLEET_RING, RING)
}
/// Orders created and connections opened at once while a load is set up (not measured).
const SETUP_CONCURRENCY: usize = 32;

/// How the couriers pace themselves.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pace {
    /// Closed loop: at most this many fixes per courier between send and watcher receipt. The
    /// delivered rate is the most the system sustains with bounded queues.
    Window(usize),
    /// Open loop: this many fixes per second per courier, whatever happens.
    Rate(f64),
    /// Open loop as a fleet sends: one fix per frame, each courier at its own period and phase,
    /// device times that follow wall time, positions along a plausible course.
    Fleet(Schedule),
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadSpec {
    pub couriers: usize,
    pub pace: Pace,
    /// Fixes per frame.
    pub batch: usize,
    /// Watchers per order (the first paces the closed loop; all count as deliveries).
    pub watchers: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// trackline: orders each courier carries besides the watched one (unwatched, their doors
    /// after its): a courier with several drops, whose every fix each of its orders applies.
    pub extra_orders: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadResult {
    pub offered_fixes_per_s: f64,
    pub delivered_fixes_per_s: f64,
    pub sent: u64,
    pub delivered: u64,
    pub e2e: LatencySummary,
    /// trackline only: fix sent -> Ack (durable).
    pub ack: LatencySummary,
    pub errors: u64,
    /// Closed loop: times a courier waited over a second for its window (a lost update).
    pub stalls: u64,
    pub server_cpu_cores: f64,
    pub server_rss_mib: f64,
    pub client_cpu_cores: f64,
    /// The e2e latencies of each second measured (added after the fields above).
    pub e2e_by_second: Vec<LatencySecond>,
}

/// What a courier and its watcher share.
struct Lane {
    sent_ns: Vec<AtomicU64>,
    /// The device time of each fix, by counter like `sent_ns` (empty when `device` says it).
    stamps: Vec<AtomicI64>,
    /// The counter of the newest fix recorded.
    last_sent: AtomicU64,
    window: Semaphore,
    /// The highest counter a watcher received: everything up to it has left the window, even
    /// updates a server conflated away.
    received: AtomicU64,
    /// How the courier stamps its fixes when the counter follows from the time; `None`: stamped
    /// with the wall clock, looked up in `stamps`.
    device: Option<DeviceClock>,
}

impl Lane {
    fn new(ring: usize, window: usize, device: Option<DeviceClock>) -> Self {
        let stamps = if device.is_some() { 0 } else { ring };
        Self {
            sent_ns: (0..ring).map(|_| AtomicU64::new(0)).collect(),
            stamps: (0..stamps).map(|_| AtomicI64::new(i64::MIN)).collect(),
            last_sent: AtomicU64::new(0),
            window: Semaphore::new(window),
            received: AtomicU64::new(0),
            device,
        }
    }

    /// Where the send instant of fix `counter` is kept.
    fn sent(&self, counter: u64) -> &AtomicU64 {
        &self.sent_ns[counter as usize % self.sent_ns.len()]
    }

    /// Notes that fix `counter`, stamped `time_ms`, leaves now (`now_ns`).
    fn record(&self, counter: u64, time_ms: i64, now_ns: u64) {
        self.sent(counter).store(now_ns, Ordering::Relaxed);
        if !self.stamps.is_empty() {
            self.stamps[counter as usize % self.stamps.len()].store(time_ms, Ordering::Relaxed);
        }
        self.last_sent.store(counter, Ordering::Release);
    }

    /// The counter of the fix stamped `time_ms`. A watcher receives an order's updates in order,
    /// so the search runs forward from the counter it matched last (`cursor`) and stops at the
    /// first later stamp: linear in the fixes sent, however many a server conflates away.
    fn counter_of(&self, time_ms: i64, cursor: &mut u64) -> Option<u64> {
        if let Some(device) = &self.device {
            return device.counter_of(time_ms);
        }
        let len = self.stamps.len() as u64;
        let last = self.last_sent.load(Ordering::Acquire);
        let from = (*cursor + 1).max(last.saturating_sub(len - 1));
        for c in from..=last {
            let stamp = self.stamps[(c % len) as usize].load(Ordering::Relaxed);
            if stamp == time_ms {
                *cursor = c;
                return Some(c);
            }
            if stamp > time_ms {
                break;
            }
        }
        None
    }
}

struct Clock {
    origin: Instant,
    /// The first fix may go out now; `start_wall_ms` is the same moment in wall time.
    start: Instant,
    start_wall_ms: i64,
    t0: Instant,
    t1: Instant,
}

impl Clock {
    fn ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }
    fn in_window(&self, at: Instant) -> bool {
        at >= self.t0 && at < self.t1
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

/// Where courier `i` starts, in degrees: a grid 1.1 km apart.
fn start_deg(i: usize) -> (f64, f64) {
    (
        45.0 + (i % 200) as f64 * 0.01,
        13.0 + (i / 200) as f64 * 0.01,
    )
}

fn start_e7(i: usize) -> (i32, i32) {
    let (lat, lon) = start_deg(i);
    (trackline_proto::to_e7(lat), trackline_proto::to_e7(lon))
}

fn fix_for(i: usize, counter: u64, time_ms: i64) -> Fix {
    let (lat, lon) = start_e7(i);
    Fix {
        seq: counter,
        time_ms,
        lat_e7: lat + (counter as i32).wrapping_mul(2),
        lon_e7: lon,
        accuracy_m: Some(5.0),
        speed_mps: Some(22.0),
        heading_deg: Some(0.0),
    }
}

/// Creates order `o-{i}` for courier `c-{i}` on trackline; returns the order's watch token.
pub async fn create_order(
    http: &reqwest::Client,
    addr: SocketAddr,
    ops: &str,
    order: &str,
    courier: &str,
    dest: (f64, f64),
) -> Result<String> {
    let r = http
        .post(format!("http://{addr}/v1/orders"))
        .bearer_auth(ops)
        .json(&CreateOrder {
            order_id: order.to_string(),
            destination: Point {
                lat: dest.0,
                lon: dest.1,
            }
            .into(),
            courier_id: Some(courier.to_string()),
            route: None,
            promised_at_ms: None,
            pickup: None,
        })
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("POST /v1/orders {order}: {}", r.status());
    }
    let created: OrderCreated = r.json().await?;
    Ok(created.watch_token)
}

pub fn keys() -> TokenKeys {
    TokenKeys::new(SECRET.as_bytes())
}

pub fn courier_token(keys: &TokenKeys, courier: &str) -> String {
    keys.mint(
        &Role::Courier(CourierId::new(courier).expect("valid id")),
        24 * 3600,
    )
}

// ---------------------------------------------------------------------------------------------
// Watchers

enum WatchConn {
    Ws(Box<Ws>, Peer),
    Redis(BufReader<TcpStream>),
}

async fn open_watcher(
    peer: Peer,
    addr: SocketAddr,
    i: usize,
    j: usize,
    token: &str,
) -> Result<WatchConn> {
    match peer {
        Peer::Trackline => {
            let path = format!("/v1/orders/o-{i}/watch?token={token}");
            let mut ws = wire::ws_connect(addr, &path, Some("trackline.v1.proto")).await?;
            // The snapshot arrives once the watcher is subscribed.
            loop {
                match ws
                    .next()
                    .await
                    .context("watch closed before its snapshot")??
                {
                    Message::Binary(_) => break,
                    Message::Text(t) => bail!("unexpected text frame {t}"),
                    _ => {}
                }
            }
            Ok(WatchConn::Ws(Box::new(ws), peer))
        }
        Peer::Relay | Peer::DurableRelay => Ok(WatchConn::Ws(
            Box::new(wire::ws_connect(addr, &format!("/sub/o-{i}"), None).await?),
            peer,
        )),
        Peer::Nats => {
            let mut ws = wire::ws_connect(addr, "/", None).await?;
            let mut cmd = wire::nats_connect();
            cmd.extend_from_slice(format!("SUB o.{i} 1\r\nPING\r\n").as_bytes());
            ws.send(Message::Binary(cmd.into())).await?;
            wait_nats_pong(&mut ws).await?;
            Ok(WatchConn::Ws(Box::new(ws), peer))
        }
        Peer::Mosquitto => {
            let mut ws = wire::ws_connect(addr, "/", Some("mqtt")).await?;
            ws.send(Message::Binary(
                wire::mqtt_connect(&format!("w{i}-{j}")).into(),
            ))
            .await?;
            ws.send(Message::Binary(
                wire::mqtt_subscribe(&format!("o/{i}")).into(),
            ))
            .await?;
            let mut p = MqttParser::default();
            'outer: loop {
                match ws.next().await.context("mqtt closed during subscribe")?? {
                    Message::Binary(b) => {
                        p.push(&b);
                        while let Some(pkt) = p.next_packet() {
                            if pkt.kind == 9 {
                                break 'outer; // SUBACK
                            }
                        }
                    }
                    Message::Close(_) => bail!("mqtt closed during subscribe"),
                    _ => {}
                }
            }
            Ok(WatchConn::Ws(Box::new(ws), peer))
        }
        Peer::Redis | Peer::RedisPipelined => {
            let mut s = BufReader::new(wire::tcp_connect(addr).await?);
            let mut cmd = Vec::new();
            let channel = format!("o.{i}");
            wire::resp_command(&[b"SUBSCRIBE", channel.as_bytes()], &mut cmd);
            s.get_mut().write_all(&cmd).await?;
            wire::resp_read(&mut s).await?;
            Ok(WatchConn::Redis(s))
        }
    }
}

async fn wait_nats_pong(ws: &mut Ws) -> Result<()> {
    let mut p = NatsParser::default();
    loop {
        match ws.next().await.context("nats closed during connect")?? {
            Message::Binary(b) => p.push(&b),
            Message::Text(t) => p.push(t.as_bytes()),
            Message::Close(_) => bail!("nats closed during connect"),
            _ => continue,
        }
        while let Some(m) = p.next_message() {
            match m {
                NatsIn::Pong => return Ok(()),
                NatsIn::Err(e) => bail!("nats: {e}"),
                _ => {}
            }
        }
    }
}

/// Device times of the fixes a watcher received in one message.
fn times_of(peer: Peer, payload: &[u8], out: &mut Vec<i64>) {
    if peer == Peer::Trackline {
        if let Ok(u) = OrderUpdate::decode(payload) {
            if let Some(p) = u.position {
                out.push(p.time_ms);
            }
        }
    } else if let Ok(f) = CourierFrame::decode(payload) {
        out.extend(f.fixes.iter().map(|x| x.time_ms));
    }
}

/// The latencies of one load, as every courier and watcher task records them.
struct Latencies {
    /// Fix sent -> a watcher received it.
    e2e: SharedHistogram,
    /// trackline: fix sent -> its ack.
    ack: SharedHistogram,
    /// The e2e latencies of each second of the measured window: where a bad p99 comes from.
    seconds: Vec<SecondCounters>,
}

/// What the watchers received in one second of the measured window.
#[derive(Default)]
struct SecondCounters {
    count: AtomicU64,
    over_20ms: AtomicU64,
    max_ns: AtomicU64,
}

/// The e2e latencies of one second of the measured window.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct LatencySecond {
    /// Seconds since the window opened.
    pub second: u64,
    pub count: u64,
    pub over_20ms: u64,
    pub max_us: f64,
}

impl Latencies {
    fn new(window: Duration) -> Self {
        Self {
            e2e: SharedHistogram::new(),
            ack: SharedHistogram::new(),
            seconds: (0..=window.as_secs())
                .map(|_| SecondCounters::default())
                .collect(),
        }
    }

    /// Records one delivery `ns` after its fix was sent, `since_t0` into the measured window.
    fn delivered(&self, key: usize, ns: u64, since_t0: Duration) {
        self.e2e.record(key, ns);
        let at = (since_t0.as_secs() as usize).min(self.seconds.len() - 1);
        let second = &self.seconds[at];
        second.count.fetch_add(1, Ordering::Relaxed);
        if ns > 20_000_000 {
            second.over_20ms.fetch_add(1, Ordering::Relaxed);
        }
        second.max_ns.fetch_max(ns, Ordering::Relaxed);
    }

    fn by_second(&self) -> Vec<LatencySecond> {
        self.seconds
            .iter()
            .enumerate()
            .map(|(at, s)| LatencySecond {
                second: at as u64,
                count: s.count.load(Ordering::Relaxed),
                over_20ms: s.over_20ms.load(Ordering::Relaxed),
                max_us: s.max_ns.load(Ordering::Relaxed) as f64 / 1000.0,
            })
            .collect()
    }
}

struct WatchOutcome {
    delivered: u64,
    errors: u64,
}

async fn run_watcher(
    conn: WatchConn,
    (i, lane): (usize, Arc<Lane>),
    clock: Arc<Clock>,
    latencies: Arc<Latencies>,
    limit: usize,
) -> WatchOutcome {
    let mut out = WatchOutcome {
        delivered: 0,
        errors: 0,
    };
    let end = tokio::time::Instant::from_std(clock.t1 + Duration::from_millis(500));
    let mut times = Vec::new();
    let mut cursor = 0u64;
    let mut account = |times: &mut Vec<i64>, out: &mut WatchOutcome| {
        let now = Instant::now();
        let now_ns = clock.ns();
        for t in times.drain(..) {
            let Some(c) = lane.counter_of(t, &mut cursor) else {
                continue;
            };
            let sent = lane.sent(c).load(Ordering::Relaxed);
            // Only an order's first watcher paces its courier (limit 0 for the others).
            let prev = if limit > 0 {
                lane.received.fetch_max(c, Ordering::Relaxed)
            } else {
                u64::MAX
            };
            if c > prev {
                let room = limit.saturating_sub(lane.window.available_permits());
                lane.window
                    .add_permits((c - prev).min(room as u64) as usize);
            }
            if sent == 0 || !clock.in_window(now) {
                continue;
            }
            out.delivered += 1;
            latencies.delivered(
                i,
                now_ns.saturating_sub(sent).max(1),
                now.saturating_duration_since(clock.t0),
            );
        }
    };
    match conn {
        WatchConn::Ws(mut ws, peer) => {
            let mut nats = NatsParser::default();
            let mut mqtt = MqttParser::default();
            loop {
                let msg = tokio::select! {
                    m = ws.next() => m,
                    _ = tokio::time::sleep_until(end) => break,
                };
                let data = match msg {
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(Message::Text(t))) => bytes::Bytes::from(t.as_str().to_owned()),
                    Some(Ok(Message::Close(_))) | None => {
                        if Instant::now() < clock.t1 {
                            out.errors += 1;
                        }
                        break;
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(_)) => {
                        out.errors += 1;
                        break;
                    }
                };
                match peer {
                    Peer::Nats => {
                        nats.push(&data);
                        while let Some(m) = nats.next_message() {
                            match m {
                                NatsIn::Msg(p) => times_of(peer, &p, &mut times),
                                NatsIn::Ping => {
                                    let _ =
                                        ws.send(Message::Binary(b"PONG\r\n".to_vec().into())).await;
                                }
                                NatsIn::Err(_) => out.errors += 1,
                                _ => {}
                            }
                        }
                    }
                    Peer::Mosquitto => {
                        mqtt.push(&data);
                        while let Some(p) = mqtt.next_packet() {
                            if p.kind == 3 {
                                times_of(peer, &p.payload, &mut times);
                            }
                        }
                    }
                    _ => times_of(peer, &data, &mut times),
                }
                account(&mut times, &mut out);
            }
            let _ = ws.as_mut().close(None).await;
        }
        WatchConn::Redis(mut s) => loop {
            let msg = tokio::select! {
                m = wire::resp_read(&mut s) => m,
                _ = tokio::time::sleep_until(end) => break,
            };
            match msg {
                Ok(Resp::Array(items)) => {
                    if let Some(Resp::Bulk(Some(p))) = items.get(2) {
                        times_of(Peer::Redis, p, &mut times);
                        account(&mut times, &mut out);
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    out.errors += 1;
                    break;
                }
            }
        },
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Couriers

enum Sender {
    Ws(SplitSink<Ws, Message>, Peer, usize),
    RedisPipelined(OwnedWriteHalf, usize),
    Redis(BufReader<TcpStream>, usize),
}

struct CourierOutcome {
    sent: u64,
    errors: u64,
    stalls: u64,
}

enum Back {
    Ws(SplitStream<Ws>),
    Redis(OwnedReadHalf),
    None,
}

async fn open_courier(
    peer: Peer,
    addr: SocketAddr,
    i: usize,
    token: &str,
) -> Result<(Sender, Back)> {
    Ok(match peer {
        Peer::Trackline | Peer::Relay | Peer::DurableRelay => {
            let path = if peer == Peer::Trackline {
                format!("/v1/courier/ws?token={token}")
            } else {
                format!("/pub/o-{i}")
            };
            let (sink, stream) = wire::ws_connect(addr, &path, None).await?.split();
            (Sender::Ws(sink, peer, i), Back::Ws(stream))
        }
        Peer::Nats => {
            let mut ws = wire::ws_connect(addr, "/", None).await?;
            ws.send(Message::Binary(wire::nats_connect().into()))
                .await?;
            wait_nats_pong(&mut ws).await?;
            let (sink, stream) = ws.split();
            (Sender::Ws(sink, peer, i), Back::Ws(stream))
        }
        Peer::Mosquitto => {
            let mut ws = wire::ws_connect(addr, "/", Some("mqtt")).await?;
            ws.send(Message::Binary(wire::mqtt_connect(&format!("c{i}")).into()))
                .await?;
            let (sink, stream) = ws.split();
            (Sender::Ws(sink, peer, i), Back::Ws(stream))
        }
        Peer::RedisPipelined => {
            let (r, w) = wire::tcp_connect(addr).await?.into_split();
            (Sender::RedisPipelined(w, i), Back::Redis(r))
        }
        Peer::Redis => (
            Sender::Redis(BufReader::new(wire::tcp_connect(addr).await?), i),
            Back::None,
        ),
    })
}

/// Reads what comes back to courier `i` until its socket closes; the answer is its errors.
async fn drain_back(
    peer: Peer,
    back: Back,
    (i, lane): (usize, Arc<Lane>),
    clock: Arc<Clock>,
    latencies: Arc<Latencies>,
) -> u64 {
    match back {
        Back::Ws(stream) => {
            drain_courier_stream(peer, stream, (i, lane), clock, &latencies.ack).await
        }
        Back::Redis(r) => {
            let mut r = BufReader::new(r);
            let mut errors = 0;
            loop {
                match wire::resp_read(&mut r).await {
                    Ok(Resp::Error(_)) => errors += 1,
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            errors
        }
        Back::None => 0,
    }
}

/// Reads what comes back on a courier's socket: acks (trackline) or nothing of interest.
async fn drain_courier_stream(
    peer: Peer,
    mut stream: SplitStream<Ws>,
    (i, lane): (usize, Arc<Lane>),
    clock: Arc<Clock>,
    ack: &SharedHistogram,
) -> u64 {
    let mut errors = 0;
    while let Some(msg) = stream.next().await {
        let Ok(Message::Binary(b)) = msg else {
            if msg.is_err() && Instant::now() < clock.t1 {
                errors += 1;
            }
            continue;
        };
        if !peer.acks() {
            continue;
        }
        match ServerFrame::decode(b.as_ref()).ok().and_then(|f| f.kind) {
            Some(server_frame::Kind::Ack(a)) => {
                let now = Instant::now();
                let sent = lane.sent(a.seq).load(Ordering::Relaxed);
                if sent != 0 && clock.in_window(now) {
                    ack.record(i, clock.ns().saturating_sub(sent).max(1));
                }
            }
            Some(server_frame::Kind::Rejected(_)) => errors += 1,
            None => errors += 1,
        }
    }
    errors
}

fn resp_fix_commands(i: usize, fix: &Fix, payload: &[u8], out: &mut Vec<u8>) {
    let lon = format!("{:.7}", trackline_proto::from_e7(fix.lon_e7));
    let lat = format!("{:.7}", trackline_proto::from_e7(fix.lat_e7));
    let member = format!("c-{i}");
    let stream = format!("h:{i}");
    let channel = format!("o.{i}");
    wire::resp_command(
        &[
            b"GEOADD",
            b"couriers",
            lon.as_bytes(),
            lat.as_bytes(),
            member.as_bytes(),
        ],
        out,
    );
    wire::resp_command(&[b"XADD", stream.as_bytes(), b"*", b"f", payload], out);
    wire::resp_command(&[b"PUBLISH", channel.as_bytes(), payload], out);
}

impl Sender {
    async fn send(&mut self, fixes: Vec<Fix>) -> Result<()> {
        match self {
            Sender::Ws(sink, peer, i) => {
                let payload = CourierFrame { fixes }.encode_to_vec();
                let data = match peer {
                    Peer::Nats => wire::nats_pub(&format!("o.{i}"), &payload),
                    Peer::Mosquitto => wire::mqtt_publish(&format!("o/{i}"), &payload),
                    _ => payload,
                };
                sink.send(Message::Binary(data.into())).await?;
            }
            Sender::RedisPipelined(w, i) => {
                let payload = CourierFrame {
                    fixes: fixes.clone(),
                }
                .encode_to_vec();
                let mut out = Vec::with_capacity(256);
                resp_fix_commands(*i, fixes.last().expect("a fix"), &payload, &mut out);
                w.write_all(&out).await?;
            }
            Sender::Redis(s, i) => {
                let payload = CourierFrame {
                    fixes: fixes.clone(),
                }
                .encode_to_vec();
                let mut out = Vec::with_capacity(256);
                resp_fix_commands(*i, fixes.last().expect("a fix"), &payload, &mut out);
                // One command at a time: split the pipeline back into its three commands.
                let mut rest: &[u8] = &out;
                for _ in 0..3 {
                    let next = find_next_command(rest);
                    s.get_mut().write_all(&rest[..next]).await?;
                    if let Resp::Error(e) = wire::resp_read(s).await? {
                        bail!("redis: {e}");
                    }
                    rest = &rest[next..];
                }
            }
        }
        Ok(())
    }

    async fn close(self) {
        match self {
            Sender::Ws(mut sink, _, _) => {
                let _ = sink.close().await;
            }
            Sender::RedisPipelined(mut w, _) => {
                let _ = w.shutdown().await;
            }
            Sender::Redis(mut s, _) => {
                let _ = s.get_mut().shutdown().await;
            }
        }
    }
}

/// The end of the first RESP command in `buf` (commands of bulk strings only).
fn find_next_command(buf: &[u8]) -> usize {
    let line_end =
        |from: usize| from + buf[from..].windows(2).position(|w| w == b"\r\n").unwrap() + 2;
    let first = line_end(0);
    let n: usize = std::str::from_utf8(&buf[1..first - 2])
        .unwrap()
        .parse()
        .unwrap();
    let mut pos = first;
    for _ in 0..n {
        let hdr_end = line_end(pos);
        let len: usize = std::str::from_utf8(&buf[pos + 1..hdr_end - 2])
            .unwrap()
            .parse()
            .unwrap();
        pos = hdr_end + len + 2;
    }
    pos
}

async fn run_courier(
    mut sender: Sender,
    i: usize,
    spec: LoadSpec,
    lane: Arc<Lane>,
    clock: Arc<Clock>,
) -> CourierOutcome {
    let mut out = CourierOutcome {
        sent: 0,
        errors: 0,
        stalls: 0,
    };
    // batch 0: adaptive, as an app flushes its buffer: every fix the window allows goes in the
    // next frame (at least one).
    let adaptive = spec.batch == 0;
    let window = match spec.pace {
        Pace::Window(w) => w,
        Pace::Rate(_) | Pace::Fleet(_) => 1,
    };
    let mut counter = 0u64;
    let mut last_stamp_ms = i64::MIN;
    let end = tokio::time::Instant::from_std(clock.t1);
    let mut ticker = match spec.pace {
        Pace::Rate(r) => {
            let period = Duration::from_secs_f64(spec.batch.max(1) as f64 / r.max(1e-3));
            // Spread the couriers over the period so the load is smooth.
            let offset = period.mul_f64((i % 1000) as f64 / 1000.0);
            let mut t = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            Some(t)
        }
        Pace::Fleet(schedule) => {
            // Ticks at the moments the device clock stamps, so a fix is never ahead of its time;
            // a late tick sends its fix late, stamped when it was due, as a busy phone does.
            let (period, phase) = schedule.of(i);
            let ms = |ms: u32| Duration::from_millis(u64::from(ms));
            let first = tokio::time::Instant::from_std(clock.start) + ms(phase);
            let mut t = tokio::time::interval_at(first, ms(period));
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            Some(t)
        }
        Pace::Window(_) => None,
    };
    let mut course = match spec.pace {
        Pace::Fleet(schedule) => Some(schedule.course(i, start_deg(i))),
        _ => None,
    };
    loop {
        if let Some(t) = ticker.as_mut() {
            tokio::select! {
                _ = t.tick() => {},
                _ = tokio::time::sleep_until(end) => break,
            }
        } else {
            let first = if adaptive { 1 } else { spec.batch as u32 };
            let acquire = lane.window.acquire_many(first);
            tokio::select! {
                r = tokio::time::timeout(Duration::from_secs(1), acquire) => match r {
                    Ok(Ok(p)) => p.forget(),
                    _ => out.stalls += 1,
                },
                _ = tokio::time::sleep_until(end) => break,
            }
        }
        let mut batch = spec.batch.max(1);
        if adaptive && ticker.is_none() {
            let extra = lane
                .window
                .available_permits()
                .min(window.saturating_sub(1));
            if extra > 0 {
                if let Ok(p) = lane.window.try_acquire_many(extra as u32) {
                    p.forget();
                    batch += extra;
                }
            }
        }
        if Instant::now() >= clock.t1 {
            break;
        }
        let fixes: Vec<Fix> = (0..batch)
            .map(|_| {
                counter += 1;
                match (course.as_mut(), &lane.device) {
                    (Some(c), Some(device)) => c.next_fix(counter, device.time_of(counter)),
                    _ => {
                        last_stamp_ms = now_ms().max(last_stamp_ms + 1);
                        fix_for(i, counter, last_stamp_ms)
                    }
                }
            })
            .collect();
        let now_ns = clock.ns();
        for f in &fixes {
            lane.record(f.seq, f.time_ms, now_ns);
        }
        let in_window = clock.in_window(Instant::now());
        if let Err(_e) = sender.send(fixes).await {
            out.errors += 1;
            break;
        }
        if in_window {
            out.sent += batch as u64;
        }
    }
    sender.close().await;
    out
}

// ---------------------------------------------------------------------------------------------

/// Starts a fresh `peer` under `work`, runs one load against it and stops it.
pub async fn run_fresh(peer: Peer, work: &std::path::Path, spec: &LoadSpec) -> Result<LoadResult> {
    let server = crate::peers::start(peer, work).await?;
    let r = run(peer, server.addr, server.pid(), spec).await;
    server.stop(Duration::from_secs(20)).await;
    r
}

/// Runs one load against a started server.
pub async fn run(
    peer: Peer,
    server_addr: SocketAddr,
    server_pid: u32,
    spec: &LoadSpec,
) -> Result<LoadResult> {
    run_split(peer, server_addr, server_addr, server_pid, spec).await
}

/// Runs one load with the couriers (and the orders' creation) on `server_addr` and the watchers
/// on `watch_addr`: another node of the same service in broker mode. CPU and memory are those of
/// `server_pid`.
pub async fn run_split(
    peer: Peer,
    server_addr: SocketAddr,
    watch_addr: SocketAddr,
    server_pid: u32,
    spec: &LoadSpec,
) -> Result<LoadResult> {
    let (result, ()) = run_observed(peer, server_addr, watch_addr, server_pid, spec, |_| async {
    })
    .await?;
    Ok(result)
}

/// The moments of a load, for an observer that samples the server meanwhile.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// The first fix may go out.
    pub start: Instant,
    /// The couriers stop (the measurement began a warm-up after `start`).
    pub t1: Instant,
}

/// [`run_split`], with `observe` running from the first fix on beside the load; it should end by
/// the window's `t1`, and its output comes back with the load's result.
pub async fn run_observed<T, F, O>(
    peer: Peer,
    server_addr: SocketAddr,
    watch_addr: SocketAddr,
    server_pid: u32,
    spec: &LoadSpec,
    observe: O,
) -> Result<(LoadResult, T)>
where
    O: FnOnce(Window) -> F,
    F: Future<Output = T>,
{
    let n = spec.couriers;
    let limit = match spec.pace {
        Pace::Window(w) => w * spec.batch.max(1),
        // (adaptive batching: the window counts fixes)
        Pace::Rate(_) | Pace::Fleet(_) => 0,
    };

    // trackline: orders and tokens.
    let keys = keys();
    let mut watch_tokens = vec![String::new(); n];
    if peer == Peer::Trackline {
        let http = reqwest::Client::new();
        let ops = keys.mint(&Role::Ops, 3600);
        watch_tokens = stream::iter(0..n)
            .map(|i| {
                let (http, ops) = (&http, &ops);
                async move {
                    let (lat, lon) = start_deg(i);
                    let dest = (lat + 0.1, lon);
                    let (order, courier) = (format!("o-{i}"), format!("c-{i}"));
                    let token = create_order(http, server_addr, ops, &order, &courier, dest).await;
                    for k in 1..=spec.extra_orders {
                        let dest = (dest.0 + 0.01 * k as f64, dest.1);
                        let order = format!("o-{i}-{k}");
                        create_order(http, server_addr, ops, &order, &courier, dest).await?;
                    }
                    token
                }
            })
            .buffered(SETUP_CONCURRENCY)
            .try_collect()
            .await?;
    }

    // Watchers first, all subscribed before the first fix.
    let watch_tokens = &watch_tokens;
    let conns: Vec<(usize, usize, WatchConn)> =
        stream::iter((0..spec.watchers.max(1)).flat_map(|j| (0..n).map(move |i| (i, j))))
            .map(|(i, j)| async move {
                let conn = open_watcher(peer, watch_addr, i, j, &watch_tokens[i])
                    .await
                    .with_context(|| format!("watcher {i}/{j}"))?;
                anyhow::Ok((i, j, conn))
            })
            .buffered(SETUP_CONCURRENCY)
            .try_collect()
            .await?;
    let keys = &keys;
    let connect_order = match spec.pace {
        Pace::Fleet(schedule) => schedule.connect_order(n),
        _ => (0..n).collect(),
    };
    let mut pending: Vec<(usize, (Sender, Back))> = stream::iter(connect_order)
        .map(|i| async move {
            let token = courier_token(keys, &format!("c-{i}"));
            let conn = open_courier(peer, server_addr, i, &token)
                .await
                .with_context(|| format!("courier {i}"))?;
            anyhow::Ok((i, conn))
        })
        .buffered(SETUP_CONCURRENCY)
        .try_collect()
        .await?;
    pending.sort_unstable_by_key(|(i, _)| *i);
    let pending: Vec<(Sender, Back)> = pending.into_iter().map(|(_, conn)| conn).collect();
    let latencies = Arc::new(Latencies::new(spec.duration));
    let lead = Duration::from_millis(100);
    let (now, wall_ms) = (Instant::now(), now_ms());
    let start = now + lead;
    let clock = Arc::new(Clock {
        origin: now,
        start,
        start_wall_ms: wall_ms + lead.as_millis() as i64,
        t0: start + spec.warmup,
        t1: start + spec.warmup + spec.duration,
    });
    let lanes: Vec<Arc<Lane>> = (0..n)
        .map(|i| {
            Arc::new(match spec.pace {
                Pace::Fleet(schedule) => {
                    // Fix 1 is due at the courier's phase and stamped with that moment.
                    let (period, phase) = schedule.of(i);
                    let (period, phase) = (i64::from(period), i64::from(phase));
                    let device = DeviceClock {
                        base_ms: clock.start_wall_ms + phase - period,
                        period_ms: period,
                    };
                    Lane::new(FLEET_RING, limit, Some(device))
                }
                Pace::Rate(per_courier) => Lane::new(ring_for_rate(per_courier), limit, None),
                Pace::Window(_) => Lane::new(RING, limit, None),
            })
        })
        .collect();
    let mut readers = JoinSet::new();
    let mut senders = Vec::with_capacity(n);
    for (i, (sender, back)) in pending.into_iter().enumerate() {
        readers.spawn(drain_back(
            peer,
            back,
            (i, lanes[i].clone()),
            clock.clone(),
            latencies.clone(),
        ));
        senders.push(sender);
    }
    tokio::time::sleep_until(tokio::time::Instant::from_std(start)).await;

    let mut watchers = JoinSet::new();
    for (i, j, conn) in conns {
        let limit = if j == 0 { limit } else { 0 };
        watchers.spawn(run_watcher(
            conn,
            (i, lanes[i].clone()),
            clock.clone(),
            latencies.clone(),
            limit,
        ));
    }
    let mut couriers = JoinSet::new();
    for (i, s) in senders.into_iter().enumerate() {
        couriers.spawn(run_courier(
            s,
            i,
            spec.clone(),
            lanes[i].clone(),
            clock.clone(),
        ));
    }

    let measure = async {
        tokio::time::sleep_until(tokio::time::Instant::from_std(clock.t0)).await;
        let server_meter = CpuMeter::start(server_pid);
        let client_meter = CpuMeter::start(std::process::id());
        tokio::time::sleep_until(tokio::time::Instant::from_std(clock.t1)).await;
        (server_meter.stop(), client_meter.stop())
    };
    let window = Window {
        start,
        t1: clock.t1,
    };
    let (((server_cpu, server_rss), (client_cpu, _)), observed) =
        tokio::join!(measure, observe(window));

    let mut result = LoadResult {
        server_cpu_cores: server_cpu,
        server_rss_mib: server_rss as f64 / 1024.0,
        client_cpu_cores: client_cpu,
        ..Default::default()
    };
    while let Some(c) = couriers.join_next().await {
        let c = c?;
        result.sent += c.sent;
        result.errors += c.errors;
        result.stalls += c.stalls;
    }
    while let Some(w) = watchers.join_next().await {
        let w = w?;
        result.delivered += w.delivered;
        result.errors += w.errors;
    }
    // Courier readers end when the server closes the sockets; give them a moment.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(r) = readers.join_next().await {
            if let Ok(errors) = r {
                result.errors += errors;
            }
        }
    })
    .await;
    readers.abort_all();
    let secs = spec.duration.as_secs_f64();
    result.offered_fixes_per_s = result.sent as f64 / secs;
    result.delivered_fixes_per_s = result.delivered as f64 / secs;
    result.e2e = LatencySummary::of(&latencies.e2e.merged());
    result.ack = LatencySummary::of(&latencies.ack.merged());
    result.e2e_by_second = latencies.by_second();
    Ok((result, observed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_second_counts_its_deliveries_and_those_over_the_bar() {
        let latencies = Latencies::new(Duration::from_secs(2));
        latencies.delivered(0, 1_000_000, Duration::from_millis(10));
        latencies.delivered(1, 30_000_000, Duration::from_millis(1500));
        latencies.delivered(2, 5_000_000, Duration::from_millis(1900));
        // Late arrivals after the window count in its last second.
        latencies.delivered(3, 2_000_000, Duration::from_secs(9));
        let seconds = latencies.by_second();
        let of = |s: &LatencySecond| (s.second, s.count, s.over_20ms, s.max_us);
        assert_eq!(
            seconds.iter().map(of).collect::<Vec<_>>(),
            [(0, 1, 0, 1000.0), (1, 2, 1, 30000.0), (2, 1, 0, 2000.0)]
        );
        assert_eq!(LatencySummary::of(&latencies.e2e.merged()).count, 4);
    }

    #[test]
    fn fixes_move_plausibly_and_forward_in_time() {
        let base = 1_700_000_000_000;
        let a = fix_for(3, 10, base);
        let b = fix_for(3, 11, base + 1);
        assert!(b.time_ms > a.time_ms);
        let metres = f64::from(b.lat_e7 - a.lat_e7) * 1e-7 * trackline_core::plane::M_PER_DEG;
        let speed = metres / 0.001;
        assert!(speed > 1.0 && speed < 55.0, "{speed} m/s");
    }

    #[test]
    fn a_watcher_finds_each_stamped_fix_even_past_conflated_ones() {
        let lane = Lane::new(8, 1, None);
        for (c, t) in [(1, 100), (2, 101), (3, 150), (4, 151), (5, 400)] {
            lane.record(c, t, c * 10);
        }
        let mut cursor = 0;
        assert_eq!(lane.counter_of(101, &mut cursor), Some(2));
        // 3 and 4 were conflated away; 5 is still found, and what was never sent is not.
        assert_eq!(lane.counter_of(400, &mut cursor), Some(5));
        assert_eq!(lane.counter_of(150, &mut cursor), None);
        assert_eq!(lane.counter_of(401, &mut cursor), None);
        assert_eq!(lane.sent(5).load(Ordering::Relaxed), 50);
    }

    #[test]
    fn resp_pipeline_splits_into_its_commands() {
        let fix = fix_for(1, 1, 0);
        let mut out = Vec::new();
        resp_fix_commands(1, &fix, b"p\r\nq", &mut out);
        let first = find_next_command(&out);
        assert!(out[..first].starts_with(b"*5\r\n$6\r\nGEOADD"));
        let second = first + find_next_command(&out[first..]);
        assert!(out[first..second].starts_with(b"*5\r\n$4\r\nXADD"));
        assert_eq!(second + find_next_command(&out[second..]), out.len());
    }
}
