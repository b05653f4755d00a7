//! The servers under test: trackline itself, the project's bare relay, and NATS, Mosquitto and
//! Redis from Debian's packages. Each is started fresh on loopback and stopped after its run.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;

/// Every peer the load generator speaks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Peer {
    /// trackline: validation, GPS filter, durable history (sled), R-tree, ETA, watcher fan-out.
    Trackline,
    /// The project's bare WebSocket relay: courier -> watcher, nothing stored.
    Relay,
    /// The same relay made durable: each frame appended to a log and synced in a group commit,
    /// acked, then forwarded (the floor of a server that acks what is durable).
    DurableRelay,
    /// nats-server with its WebSocket listener.
    Nats,
    /// Mosquitto with its WebSocket listener (MQTT over WS).
    Mosquitto,
    /// redis-server: GEOADD + XADD + PUBLISH per fix, one round trip each.
    Redis,
    /// redis-server: the same three commands pipelined.
    RedisPipelined,
}

impl Peer {
    pub const ALL: [Peer; 7] = [
        Peer::Trackline,
        Peer::Relay,
        Peer::DurableRelay,
        Peer::Nats,
        Peer::Mosquitto,
        Peer::Redis,
        Peer::RedisPipelined,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Peer::Trackline => "trackline",
            Peer::Relay => "relay",
            Peer::DurableRelay => "durable_relay",
            Peer::Nats => "nats",
            Peer::Mosquitto => "mosquitto",
            Peer::Redis => "redis",
            Peer::RedisPipelined => "redis_pipelined",
        }
    }

    pub fn parse(s: &str) -> Option<Peer> {
        Peer::ALL.into_iter().find(|p| p.name() == s)
    }

    /// Whether its couriers get an ack per durable frame (the generator times them).
    pub fn acks(self) -> bool {
        matches!(self, Peer::Trackline | Peer::DurableRelay)
    }

    /// The program a peer needs, for the availability check.
    pub fn program(self) -> Option<&'static str> {
        match self {
            Peer::Nats => Some("nats-server"),
            Peer::Mosquitto => Some("mosquitto"),
            Peer::Redis | Peer::RedisPipelined => Some("redis-server"),
            _ => None,
        }
    }

    /// Why this peer cannot run here (its program is not installed), or `None` when it can.
    pub fn missing(self) -> Option<String> {
        let prog = self.program()?;
        which(prog)
            .is_none()
            .then(|| format!("{prog} is not installed"))
    }
}

pub const SECRET: &str = "bench-secret-not-for-production";

/// Ports used by the bench (all on 127.0.0.1).
pub const TRACKLINE_PORT: u16 = 18180;
pub const RELAY_PORT: u16 = 18181;
pub const NATS_PORT: u16 = 18182;
pub const NATS_WS_PORT: u16 = 18183;
pub const MQTT_PORT: u16 = 18184;
pub const MQTT_WS_PORT: u16 = 18185;
pub const REDIS_PORT: u16 = 18186;
pub const DURABLE_RELAY_PORT: u16 = 18189;
/// The broker scenario: its NATS server (plain, no WebSocket) and its second trackline node.
pub const BROKER_PORT: u16 = 18187;
pub const SECOND_NODE_PORT: u16 = 18188;

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

/// A running server process.
pub struct Server {
    pub child: Child,
    /// The address the load generator connects to.
    pub addr: SocketAddr,
    pub dir: PathBuf,
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// SIGTERM, then SIGKILL after `grace`. Returns how long the process took to exit.
    pub async fn stop(mut self, grace: Duration) -> Duration {
        let started = Instant::now();
        if let Some(pid) = self.child.id() {
            // SAFETY: signalling our own child by its pid.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        started.elapsed()
    }
}

/// Polls until `addr` accepts TCP connections.
pub async fn wait_for_port(addr: SocketAddr, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("nothing listens on {addr} after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls GET /readyz until it answers 200; returns when it did.
pub async fn wait_ready(addr: SocketAddr, within: Duration) -> Result<Instant> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()?;
    let url = format!("http://{addr}/readyz");
    let deadline = Instant::now() + within;
    loop {
        if let Ok(r) = client.get(&url).send().await {
            if r.status().is_success() {
                return Ok(Instant::now());
            }
        }
        if Instant::now() > deadline {
            bail!("{url} not ready after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Where the trackline binary is: next to this one (same target dir), or TRACKLINE_BIN.
pub fn trackline_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TRACKLINE_BIN") {
        return PathBuf::from(p);
    }
    let me = std::env::current_exe().unwrap_or_default();
    me.with_file_name("trackline")
}

/// Starts trackline on `data_dir` (kept when it exists) without waiting for readiness.
pub fn spawn_trackline(data_dir: &Path) -> Result<Server> {
    spawn_trackline_on(data_dir, TRACKLINE_PORT, &[])
}

/// Starts trackline on `port` with `extra` flags, without waiting for readiness.
pub fn spawn_trackline_on(data_dir: &Path, port: u16, extra: &[String]) -> Result<Server> {
    let child = Command::new(trackline_bin())
        .args(["--listen", &addr(port).to_string()])
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--secret", SECRET])
        .args(["--max-frames-per-s", "1000000"])
        .args(["--max-connections", "1000000"])
        .args(["--shutdown-grace-s", "20"])
        // Room for a whole batched frame of updates per watcher, so that the closed loop
        // measures throughput rather than conflation.
        .args(["--watcher-queue", "1024"])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", trackline_bin().display()))?;
    Ok(Server {
        child,
        addr: addr(port),
        dir: data_dir.to_path_buf(),
    })
}

/// Two trackline nodes in broker mode and their NATS server.
pub struct TwoNodes {
    pub broker: Server,
    /// Node `a` (where the couriers connect) and node `b` (where the watchers connect).
    pub nodes: [Server; 2],
}

impl TwoNodes {
    /// Starts a NATS server and two nodes (`a`, `b`) on it, each over its own fresh data dir
    /// under `work`, and waits until both are ready.
    pub async fn start(work: &Path) -> Result<TwoNodes> {
        let dir = work.join(format!("broker-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let nats = which("nats-server").context("nats-server not installed")?;
        let child = Command::new(nats)
            .args(["-a", "127.0.0.1", "-p", &BROKER_PORT.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting nats-server")?;
        let broker = Server {
            child,
            addr: addr(BROKER_PORT),
            dir: dir.clone(),
        };
        wait_for_port(broker.addr, Duration::from_secs(10)).await?;
        let node = |name: &str, port: u16| {
            let extra = [
                "--broker".to_string(),
                format!("nats://{}", addr(BROKER_PORT)),
                "--node-id".into(),
                name.into(),
                "--cluster-nodes".into(),
                "a,b".into(),
            ];
            spawn_trackline_on(&dir.join(name), port, &extra)
        };
        let nodes = [node("a", TRACKLINE_PORT)?, node("b", SECOND_NODE_PORT)?];
        for n in &nodes {
            wait_ready(n.addr, Duration::from_secs(30)).await?;
        }
        Ok(TwoNodes { broker, nodes })
    }

    pub async fn stop(self) {
        let [a, b] = self.nodes;
        a.stop(Duration::from_secs(20)).await;
        b.stop(Duration::from_secs(20)).await;
        self.broker.stop(Duration::from_secs(5)).await;
    }
}

/// Starts `peer` in a fresh directory under `work` and waits until it listens.
pub async fn start(peer: Peer, work: &Path) -> Result<Server> {
    let dir = work.join(format!("{}-{}", peer.name(), std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let quiet = |c: &mut Command| {
        c.stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
    };
    let (child, target) = match peer {
        Peer::Trackline => {
            let server = spawn_trackline(&dir.join("data"))?;
            wait_ready(server.addr, Duration::from_secs(60)).await?;
            return Ok(server);
        }
        Peer::Relay | Peer::DurableRelay => {
            let port = if peer == Peer::Relay {
                RELAY_PORT
            } else {
                DURABLE_RELAY_PORT
            };
            let mut c = Command::new(std::env::current_exe()?);
            c.args(["relay", "--listen", &addr(port).to_string()]);
            if peer == Peer::DurableRelay {
                c.arg("--durable-log").arg(dir.join("relay.log"));
            }
            quiet(&mut c);
            (c.spawn()?, addr(port))
        }
        Peer::Nats => {
            let conf = dir.join("nats.conf");
            std::fs::write(
                &conf,
                format!(
                    "listen: 127.0.0.1:{NATS_PORT}\nmax_connections: 1000000\n\
                     websocket {{\n  host: 127.0.0.1\n  port: {NATS_WS_PORT}\n  no_tls: true\n  compression: false\n}}\n"
                ),
            )?;
            let mut c = Command::new(which("nats-server").context("nats-server not installed")?);
            c.arg("-c").arg(&conf);
            quiet(&mut c);
            (c.spawn()?, addr(NATS_WS_PORT))
        }
        Peer::Mosquitto => {
            // Mosquitto 2.0.11 exits with "Unable to start any listening sockets" when its only
            // listener is a WebSocket one, so a plain MQTT listener comes first.
            let conf = dir.join("mosquitto.conf");
            std::fs::write(
                &conf,
                format!(
                    "persistence false\nlog_dest none\nallow_anonymous true\n\
                     listener {MQTT_PORT} 127.0.0.1\n\
                     listener {MQTT_WS_PORT} 127.0.0.1\nprotocol websockets\n"
                ),
            )?;
            let mut c = Command::new(which("mosquitto").context("mosquitto not installed")?);
            c.arg("-c").arg(&conf);
            quiet(&mut c);
            (c.spawn()?, addr(MQTT_WS_PORT))
        }
        Peer::Redis | Peer::RedisPipelined => {
            // History in an append-only file synced every second (Redis' usual durable setting).
            let mut c = Command::new(which("redis-server").context("redis-server not installed")?);
            c.args(["--port", &REDIS_PORT.to_string(), "--bind", "127.0.0.1"])
                .args([
                    "--save",
                    "",
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "everysec",
                ])
                .args(["--maxclients", "1000000", "--protected-mode", "no"])
                .arg("--dir")
                .arg(&dir);
            quiet(&mut c);
            (c.spawn()?, addr(REDIS_PORT))
        }
    };
    wait_for_port(target, Duration::from_secs(20)).await?;
    Ok(Server {
        child,
        addr: target,
        dir,
    })
}

// ---------------------------------------------------------------------------------------------
// The bare relay, and the durable relay

type Topics = Arc<Mutex<HashMap<String, broadcast::Sender<bytes::Bytes>>>>;

/// What the durable relay's log writer is handed per courier frame: the frame, where its ack
/// goes and the topic its watchers read.
struct Durable {
    frame: bytes::Bytes,
    /// The seq its ack names, `None` for a frame without fixes (forwarded, never acked).
    seq: Option<u64>,
    ack: tokio::sync::mpsc::UnboundedSender<bytes::Bytes>,
    topic: broadcast::Sender<bytes::Bytes>,
}

/// The ceiling on this machine: a minimal tokio-tungstenite forwarder. A courier connects to
/// `/pub/{id}` and sends binary frames; every watcher on `/sub/{id}` gets each frame as it is.
/// Nothing is parsed, validated or stored, unless `durable` names a log file: then it is the
/// floor of any server that acks what is durable (the durable relay): each frame is appended
/// to the log, synced in a group commit (one `fdatasync` per `window` at most, at once when
/// idle, as trackline's history writer does), then acked to its courier with the seq of its
/// last fix and only then forwarded to its watchers. No filter, index, ETA or history reads.
pub async fn run_relay(listen: SocketAddr, durable: Option<(PathBuf, Duration)>) -> Result<()> {
    let listener = TcpListener::bind(listen).await?;
    let topics: Topics = Arc::default();
    let log = match durable {
        Some((path, window)) => Some(start_log_writer(&path, window)?),
        None => None,
    };
    loop {
        let (stream, _) = listener.accept().await?;
        let (topics, log) = (topics.clone(), log.clone());
        tokio::spawn(async move {
            let _ = relay_conn(stream, topics, log).await;
        });
    }
}

/// The durable relay's writer thread: appends each group of frames with one write, syncs it,
/// then acks and forwards every frame of the group.
fn start_log_writer(
    path: &Path,
    window: Duration,
) -> Result<tokio::sync::mpsc::UnboundedSender<Durable>> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Durable>();
    std::thread::Builder::new()
        .name("relay-log".into())
        .spawn(move || {
            let mut last_sync: Option<Instant> = None;
            let mut group = Vec::new();
            let mut bytes = Vec::new();
            while let Some(first) = rx.blocking_recv() {
                // Under load one sync per window; a frame that finds the writer idle goes now.
                if let Some(wait) = last_sync.and_then(|t| window.checked_sub(t.elapsed())) {
                    std::thread::sleep(wait);
                }
                group.push(first);
                while let Ok(more) = rx.try_recv() {
                    group.push(more);
                }
                bytes.clear();
                for job in &group {
                    bytes.extend_from_slice(&(job.frame.len() as u32).to_le_bytes());
                    bytes.extend_from_slice(&job.frame);
                }
                last_sync = Some(Instant::now());
                if file
                    .write_all(&bytes)
                    .and_then(|()| file.sync_data())
                    .is_err()
                {
                    // Nothing acked that is not durable: the couriers' frames stay unacked.
                    group.clear();
                    continue;
                }
                for job in group.drain(..) {
                    if let Some(seq) = job.seq {
                        let ack = trackline_proto::v1::ServerFrame {
                            kind: Some(trackline_proto::v1::server_frame::Kind::Ack(
                                trackline_proto::v1::Ack { seq },
                            )),
                        };
                        let _ = job.ack.send(prost::Message::encode_to_vec(&ack).into());
                    }
                    let _ = job.topic.send(job.frame);
                }
            }
        })?;
    Ok(tx)
}

// The handshake callback's Result type is tungstenite's own.
#[allow(clippy::result_large_err)]
async fn relay_conn(
    stream: TcpStream,
    topics: Topics,
    log: Option<tokio::sync::mpsc::UnboundedSender<Durable>>,
) -> Result<()> {
    stream.set_nodelay(true)?;
    let mut path = String::new();
    // Small buffers, as a relay meant to hold many connections would configure them.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let ws = tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        |req: &tokio_tungstenite::tungstenite::handshake::server::Request, resp| {
            path = req.uri().path().to_string();
            Ok(resp)
        },
        Some(config),
    )
    .await?;
    let (mut sink, mut stream) = ws.split();
    let topic_of = |id: &str| {
        topics
            .lock()
            .unwrap()
            .entry(id.to_string())
            .or_insert_with(|| broadcast::channel(128).0)
            .clone()
    };
    if let Some(id) = path.strip_prefix("/pub/") {
        let tx = topic_of(id);
        let Some(log) = log else {
            while let Some(msg) = stream.next().await {
                match msg? {
                    Message::Binary(data) => {
                        let _ = tx.send(data);
                    }
                    Message::Close(_) => break,
                    _ => {}
                }
            }
            return Ok(());
        };
        let (ack_tx, mut acks) = tokio::sync::mpsc::unbounded_channel();
        loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(Ok(Message::Binary(frame))) => {
                        // The frame's last fix is what its ack names (a frame that does not
                        // parse is forwarded unacked, as the bare relay would forward it).
                        let seq = <trackline_proto::v1::CourierFrame as prost::Message>::decode(
                            frame.as_ref(),
                        )
                            .ok()
                            .and_then(|f| f.fixes.last().map(|x| x.seq));
                        let job = Durable { frame, seq, ack: ack_tx.clone(), topic: tx.clone() };
                        if log.send(job).is_err() {
                            break;
                        }
                    }
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                    Some(Ok(_)) => {}
                },
                Some(ack) = acks.recv() => sink.send(Message::Binary(ack)).await?,
            }
        }
    } else if let Some(id) = path.strip_prefix("/sub/") {
        let mut rx = topic_of(id).subscribe();
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Ok(data) => sink.send(Message::Binary(data)).await?,
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                incoming = stream.next() => match incoming {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                    _ => {}
                },
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;
    use trackline_proto::v1::{server_frame, CourierFrame, Fix, ServerFrame};

    #[tokio::test]
    async fn the_durable_relay_acks_a_frame_once_it_is_in_its_log_and_forwards_it() {
        let dir = std::env::temp_dir().join(format!("durable-relay-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("relay.log");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let at = listener.local_addr().unwrap();
        drop(listener);
        let window = Duration::from_millis(3);
        tokio::spawn(run_relay(at, Some((log.clone(), window))));
        wait_for_port(at, Duration::from_secs(5)).await.unwrap();

        let mut watcher = crate::wire::ws_connect(at, "/sub/o-1", None).await.unwrap();
        let mut courier = crate::wire::ws_connect(at, "/pub/o-1", None).await.unwrap();
        let fix = |seq| Fix {
            seq,
            time_ms: 1_700_000_000_000 + seq as i64,
            lat_e7: 525_000_000,
            lon_e7: 134_000_000,
            ..Default::default()
        };
        let frame = CourierFrame {
            fixes: vec![fix(7), fix(8)],
        }
        .encode_to_vec();
        // A frame without fixes is forwarded but never acked.
        let empty = CourierFrame { fixes: vec![] }.encode_to_vec();
        for f in [frame.clone(), empty.clone()] {
            courier.send(Message::Binary(f.into())).await.unwrap();
        }

        let ack = next_binary(&mut courier).await.expect("an ack");
        assert_eq!(
            ServerFrame::decode(ack.as_ref()).unwrap().kind,
            Some(server_frame::Kind::Ack(trackline_proto::v1::Ack { seq: 8 }))
        );
        // The frame was on disk (length-prefixed) before its ack was sent.
        let logged = std::fs::read(&log).unwrap();
        assert_eq!(&logged[..4], &(frame.len() as u32).to_le_bytes());
        assert_eq!(&logged[4..4 + frame.len()], &frame[..]);
        assert_eq!(next_binary(&mut watcher).await.as_deref(), Some(&frame[..]));
        assert_eq!(next_binary(&mut watcher).await.as_deref(), Some(&empty[..]));
        let no_second_ack = tokio::time::timeout(Duration::from_millis(200), courier.next());
        assert!(no_second_ack.await.is_err(), "the empty frame was acked");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The next binary frame on `ws`, or `None` after five seconds or at its end.
    async fn next_binary(ws: &mut crate::wire::Ws) -> Option<bytes::Bytes> {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => Some(b),
            _ => None,
        }
    }
}
