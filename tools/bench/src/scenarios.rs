//! The scenarios besides throughput and latency: idle connections, nearby queries, restart to
//! ready, and the export of a one-hour trip.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use trackline_core::auth::Role;
use trackline_core::spatial::SpatialIndex;
use trackline_core::{CourierId, LatLon};
use trackline_proto::v1::{server_frame, CourierFrame, Fix, ServerFrame};

use crate::load::{self, courier_token, keys};
use crate::peers::{self, Peer};
use crate::stats::{new_histogram, sample_proc, LatencySummary};
use crate::wire;

// ---------------------------------------------------------------------------------------------
// Idle connections

#[derive(Debug, Clone, Default, Serialize)]
pub struct IdleResult {
    pub connections: usize,
    pub failed: usize,
    pub rss_before_mib: f64,
    pub rss_after_mib: f64,
    pub kib_per_connection: f64,
    pub connect_s: f64,
}

/// Opens `n` idle courier connections to a started server and reports its memory per connection.
pub async fn idle(peer: Peer, server: &peers::Server, n: usize) -> Result<IdleResult> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = sample_proc(server.pid()).context("server /proc")?.rss_kib;
    let keys = Arc::new(keys());
    let gate = Arc::new(Semaphore::new(128));
    let mut set = JoinSet::new();
    let started = Instant::now();
    for i in 0..n {
        let (gate, keys, addr) = (gate.clone(), keys.clone(), server.addr);
        set.spawn(async move {
            let _permit = gate.acquire_owned().await.ok()?;
            let token = courier_token(&keys, &format!("c-{i}"));
            let conn = idle_open(peer, addr, i, &token).await.ok()?;
            Some(conn)
        });
    }
    let mut held = Vec::with_capacity(n);
    let mut failed = 0;
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Some(c)) => held.push(c),
            _ => failed += 1,
        }
    }
    let connect_s = started.elapsed().as_secs_f64();
    // Let the server settle (lazy allocations, deferred frees).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = sample_proc(server.pid()).context("server /proc")?.rss_kib;
    let connections = held.len();
    drop(held);
    Ok(IdleResult {
        connections,
        failed,
        rss_before_mib: before as f64 / 1024.0,
        rss_after_mib: after as f64 / 1024.0,
        kib_per_connection: after.saturating_sub(before) as f64 / connections.max(1) as f64,
        connect_s,
    })
}

enum Idle {
    #[allow(dead_code)]
    Ws(Box<wire::Ws>),
    #[allow(dead_code)]
    Tcp(tokio::net::TcpStream),
}

async fn idle_open(peer: Peer, addr: SocketAddr, i: usize, token: &str) -> Result<Idle> {
    Ok(match peer {
        Peer::Trackline => Idle::Ws(Box::new(
            wire::ws_connect(addr, &format!("/v1/courier/ws?token={token}"), None).await?,
        )),
        Peer::Relay | Peer::DurableRelay => Idle::Ws(Box::new(
            wire::ws_connect(addr, &format!("/pub/o-{i}"), None).await?,
        )),
        Peer::Nats => {
            let mut ws = wire::ws_connect(addr, "/", None).await?;
            ws.send(Message::Binary(wire::nats_connect().into()))
                .await?;
            // INFO, then PONG: connected.
            let mut p = wire::NatsParser::default();
            'outer: while let Some(m) = ws.next().await {
                if let Message::Binary(b) = m? {
                    p.push(&b);
                    while let Some(m) = p.next_message() {
                        if m == wire::NatsIn::Pong {
                            break 'outer;
                        }
                    }
                }
            }
            Idle::Ws(Box::new(ws))
        }
        Peer::Mosquitto => {
            let mut ws = wire::ws_connect(addr, "/", Some("mqtt")).await?;
            ws.send(Message::Binary(wire::mqtt_connect(&format!("c{i}")).into()))
                .await?;
            // CONNACK
            match ws.next().await {
                Some(Ok(Message::Binary(_))) => {}
                other => bail!("no CONNACK: {other:?}"),
            }
            Idle::Ws(Box::new(ws))
        }
        Peer::Redis | Peer::RedisPipelined => {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = wire::tcp_connect(addr).await?;
            s.write_all(b"*1\r\n$4\r\nPING\r\n").await?;
            let mut buf = [0u8; 7];
            s.read_exact(&mut buf).await?;
            Idle::Tcp(s)
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Nearby

#[derive(Debug, Clone, Default, Serialize)]
pub struct NearbyResult {
    pub couriers: usize,
    pub populate_failed: usize,
    pub populate_s: f64,
    pub queries: usize,
    pub mean_results: f64,
    /// Client-side HTTP latency of GET /v1/couriers/nearby (keep-alive, one at a time).
    pub http: LatencySummary,
    /// SpatialIndex::nearest in this process over the same positions.
    pub in_process: LatencySummary,
}

fn random_point(rng: &mut impl Rng) -> (f64, f64) {
    // A 33 x 31 km city.
    (
        45.0 + rng.random::<f64>() * 0.3,
        13.0 + rng.random::<f64>() * 0.4,
    )
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

/// Streams one fix for each of `n` couriers (short-lived connections), so that they are live.
pub async fn populate_live(addr: SocketAddr, n: usize, seed: u64) -> Result<(usize, f64)> {
    let keys = Arc::new(keys());
    let gate = Arc::new(Semaphore::new(128));
    let mut set = JoinSet::new();
    let started = Instant::now();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let t = now_ms();
    for i in 0..n {
        let (lat, lon) = random_point(&mut rng);
        let (gate, keys) = (gate.clone(), keys.clone());
        set.spawn(async move {
            let _permit = gate.acquire_owned().await.ok()?;
            let token = courier_token(&keys, &format!("n-{i}"));
            let fix = Fix {
                seq: 1,
                time_ms: t,
                lat_e7: trackline_proto::to_e7(lat),
                lon_e7: trackline_proto::to_e7(lon),
                accuracy_m: Some(5.0),
                speed_mps: Some(5.0),
                heading_deg: Some(90.0),
            };
            send_fixes(addr, &token, vec![vec![fix]]).await.ok()
        });
    }
    let mut failed = 0;
    while let Some(r) = set.join_next().await {
        if !matches!(r, Ok(Some(()))) {
            failed += 1;
        }
    }
    Ok((failed, started.elapsed().as_secs_f64()))
}

/// Opens a courier stream, sends each frame and waits for its ack, then closes.
async fn send_fixes(addr: SocketAddr, token: &str, frames: Vec<Vec<Fix>>) -> Result<()> {
    let mut ws = wire::ws_connect(addr, &format!("/v1/courier/ws?token={token}"), None).await?;
    for fixes in frames {
        let last = fixes.last().map(|f| f.seq).unwrap_or(0);
        ws.send(Message::Binary(
            CourierFrame { fixes }.encode_to_vec().into(),
        ))
        .await?;
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
                .await
                .context("no ack within 30 s")?
                .context("closed before ack")??;
            if let Message::Binary(b) = msg {
                match ServerFrame::decode(b.as_ref())?.kind {
                    Some(server_frame::Kind::Ack(a)) if a.seq >= last => break,
                    Some(server_frame::Kind::Rejected(r)) => bail!("rejected: {}", r.code),
                    _ => {}
                }
            }
        }
    }
    let _ = ws.close(None).await;
    Ok(())
}

/// Times `queries` nearby calls over HTTP against a populated server.
pub async fn nearby_http(
    addr: SocketAddr,
    queries: usize,
    seed: u64,
) -> Result<(LatencySummary, f64)> {
    let http = reqwest::Client::new();
    let ops = keys().mint(&Role::Ops, 3600);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut h = new_histogram();
    let mut results = 0usize;
    for _ in 0..queries {
        let (lat, lon) = random_point(&mut rng);
        let url =
            format!("http://{addr}/v1/couriers/nearby?lat={lat}&lon={lon}&radius_m=1000&limit=10");
        let t = Instant::now();
        let r = http.get(&url).bearer_auth(&ops).send().await?;
        let status = r.status();
        let body = r.bytes().await?;
        let ns = t.elapsed().as_nanos() as u64;
        if !status.is_success() {
            bail!("nearby: {status}");
        }
        h.record(ns.max(1))?;
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        results += v["couriers"].as_array().map_or(0, Vec::len);
    }
    Ok((
        LatencySummary::of(&h),
        results as f64 / queries.max(1) as f64,
    ))
}

/// Times `SpatialIndex::nearest` in this process over `n` couriers placed as `populate_live` does.
pub fn nearby_in_process(n: usize, queries: usize, seed: u64) -> LatencySummary {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut index = SpatialIndex::new();
    let t = now_ms();
    for i in 0..n {
        let (lat, lon) = random_point(&mut rng);
        let id = CourierId::new(&format!("n-{i}")).expect("valid id");
        index.upsert(&id, LatLon::new(lat, lon), t);
    }
    let mut h = new_histogram();
    let mut found = 0usize;
    for _ in 0..queries {
        let (lat, lon) = random_point(&mut rng);
        let started = Instant::now();
        let r = index.nearest(LatLon::new(lat, lon), 1000.0, 10);
        let ns = started.elapsed().as_nanos() as u64;
        found += r.len();
        let _ = h.record(ns.max(1));
    }
    std::hint::black_box(found);
    LatencySummary::of(&h)
}

// ---------------------------------------------------------------------------------------------
// Restart to ready

#[derive(Debug, Clone, Default, Serialize)]
pub struct RestartRun {
    pub shutdown_s: f64,
    pub ready_s: f64,
    pub order_survived: bool,
    pub rss_after_ready_mib: f64,
}

/// Creates `n` active orders on a server, with `concurrency` requests at once.
pub async fn create_orders(addr: SocketAddr, n: usize, prefix: &str) -> Result<(usize, f64)> {
    let http = reqwest::Client::new();
    let ops = Arc::new(keys().mint(&Role::Ops, 3600));
    let gate = Arc::new(Semaphore::new(64));
    let mut set = JoinSet::new();
    let started = Instant::now();
    for i in 0..n {
        let (http, ops, gate) = (http.clone(), ops.clone(), gate.clone());
        let order = format!("{prefix}{i}");
        set.spawn(async move {
            let _permit = gate.acquire_owned().await.ok()?;
            let dest = (
                45.0 + (i % 1000) as f64 * 1e-4,
                13.0 + (i / 1000) as f64 * 1e-4,
            );
            load::create_order(&http, addr, &ops, &order, &format!("rc-{i}"), dest)
                .await
                .ok()
        });
    }
    let mut failed = 0;
    while let Some(r) = set.join_next().await {
        if !matches!(r, Ok(Some(_))) {
            failed += 1;
        }
    }
    Ok((failed, started.elapsed().as_secs_f64()))
}

/// SIGTERM, restart on the same data, time until /readyz answers 200.
pub async fn restart_once(
    server: peers::Server,
    data_dir: &Path,
    probe_order: &str,
) -> Result<(RestartRun, peers::Server)> {
    let shutdown = server.stop(Duration::from_secs(60)).await;
    let spawned = Instant::now();
    let server = peers::spawn_trackline(data_dir)?;
    let ready_at = peers::wait_ready(server.addr, Duration::from_secs(120)).await?;
    let ready_s = ready_at.duration_since(spawned).as_secs_f64();
    let rss = sample_proc(server.pid()).map_or(0, |s| s.rss_kib);
    let ops = keys().mint(&Role::Ops, 3600);
    let survived = reqwest::Client::new()
        .get(format!("http://{}/v1/orders/{probe_order}", server.addr))
        .bearer_auth(ops)
        .send()
        .await
        .map(|r| r.status().is_success())
        .unwrap_or(false);
    Ok((
        RestartRun {
            shutdown_s: shutdown.as_secs_f64(),
            ready_s,
            order_survived: survived,
            rss_after_ready_mib: rss as f64 / 1024.0,
        },
        server,
    ))
}

// ---------------------------------------------------------------------------------------------
// Export of a one-hour trip

#[derive(Debug, Clone, Default, Serialize)]
pub struct ExportRun {
    pub format: String,
    pub seconds: f64,
    pub bytes: usize,
    pub fixes: usize,
}

/// Records a one-hour trip (one fix per second, 10 m/s) for order `order`.
pub async fn record_trip(addr: SocketAddr, order: &str, courier: &str, fixes: usize) -> Result<()> {
    let http = reqwest::Client::new();
    let ops = keys().mint(&Role::Ops, 3600);
    load::create_order(&http, addr, &ops, order, courier, (45.5, 13.0)).await?;
    let start_ms = now_ms() - 2 * 3600 * 1000;
    let all: Vec<Fix> = (0..fixes)
        .map(|k| Fix {
            seq: k as u64 + 1,
            time_ms: start_ms + k as i64 * 1000,
            // 10 m/s north: 1e-7 deg is 1.11 cm, so 900 units per second.
            lat_e7: trackline_proto::to_e7(45.0) + k as i32 * 900,
            lon_e7: trackline_proto::to_e7(13.0),
            accuracy_m: Some(5.0),
            speed_mps: Some(10.0),
            heading_deg: Some(0.0),
        })
        .collect();
    let frames: Vec<Vec<Fix>> = all.chunks(100).map(<[Fix]>::to_vec).collect();
    send_fixes(addr, &courier_token(&keys(), courier), frames).await
}

pub async fn export_once(addr: SocketAddr, order: &str, format: &str) -> Result<ExportRun> {
    let http = reqwest::Client::new();
    let ops = keys().mint(&Role::Ops, 3600);
    let t = Instant::now();
    let r = http
        .get(format!(
            "http://{addr}/v1/orders/{order}/history?format={format}"
        ))
        .bearer_auth(ops)
        .send()
        .await?;
    let status = r.status();
    let body = r.bytes().await?;
    let seconds = t.elapsed().as_secs_f64();
    if !status.is_success() {
        bail!("history {format}: {status}");
    }
    let fixes = match format {
        "json" => serde_json::from_slice::<serde_json::Value>(&body)?["fixes"]
            .as_array()
            .map_or(0, Vec::len),
        "gpx" => body.windows(6).filter(|w| w == b"<trkpt").count(),
        _ => 0,
    };
    Ok(ExportRun {
        format: format.to_string(),
        seconds,
        bytes: body.len(),
        fixes,
    })
}
