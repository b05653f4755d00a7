//! Broker mode under test: a real `nats-server` on 127.0.0.1 ([`Broker`]) and several real
//! `trackline` binaries joined through it ([`Cluster`]), plus the clients that must outlive a
//! node or the broker: a courier app that resends what was not acked ([`CourierApp`]) and a
//! watcher read in the background ([`WatchFeed`]).
//!
//! Placement is computed here with the core's own function (`trackline_core::cluster::owner`),
//! so a test can pick an order owned by a given node and a courier homed on another one.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use trackline_proto::v1::{self, server_frame::Kind};
use trackline_proto::Message as _;

use crate::server::{binary_data_dir, log_path, spawn_binary, temp_data_dir};
use crate::{
    CourierClient, Reply, TestServer, TokenIn, Update, WatchError, WatchEvent, WatchProtocol,
    Watcher, LIFECYCLE_TIMEOUT, TIMEOUT,
};

/// The node names of every test cluster, in `--cluster-nodes` order (index = node number).
pub const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];

/// The header naming the node that produced an HTTP answer.
pub const NODE_HEADER: &str = "x-trackline-node";

/// How long a node waits for another over the broker in test clusters (`--broker-timeout-ms`):
/// short, so that a request to a dead node gives up quickly, long enough for a loaded CI machine.
pub const BROKER_TIMEOUT_MS: u64 = 1000;

/// How long a client that must reconnect (a node or the broker came back) keeps trying.
pub const RECOVERY_TIMEOUT: Duration = Duration::from_secs(45);

/// A `nats-server` on a fixed port of 127.0.0.1; killed when dropped.
pub struct Broker {
    port: u16,
    child: Option<Child>,
    // Holds the broker's log.
    dir: TempDir,
}

impl Broker {
    /// Starts `nats-server` on a free port and returns once it accepts TCP connections.
    pub fn start() -> Self {
        let mut broker = Self {
            port: 0,
            child: None,
            dir: tempfile::Builder::new()
                .prefix("trackline-nats-")
                .tempdir()
                .expect("creating the broker's temporary dir"),
        };
        // The port is chosen before the server binds it, so another process may take it first:
        // then the server exits at once and another port is tried.
        let mut failures = Vec::new();
        for _ in 0..5 {
            broker.port = broker_port();
            match broker.spawn_and_wait() {
                Ok(()) => return broker,
                Err(why) => failures.push(format!("port {}: {why}", broker.port)),
            }
        }
        panic!("nats-server did not start: {failures:#?}")
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// A broker URL on a free port where nothing listens (for a node that must fail to start).
    pub fn unreachable_url() -> String {
        format!("nats://127.0.0.1:{}", broker_port())
    }

    /// Kills the broker with SIGKILL and waits for it: every node loses it at once.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("kill: the broker is not running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts the broker again on the same port after [`Broker::kill`] (nodes reconnect to the
    /// address they were given) and returns once it accepts connections.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "start_again: the broker is running");
        // The port was free a moment ago, but a listener's port can stay busy for a moment
        // after its process died, so a failed start is retried for a while.
        let deadline = Instant::now() + LIFECYCLE_TIMEOUT;
        loop {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(why) if Instant::now() > deadline => {
                    panic!("nats-server did not restart on port {}: {why}", self.port)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// The last lines of the broker's log (for failure messages).
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.dir.path().join("nats.log"), lines)
    }

    /// Spawns `nats-server` on `self.port`; `Err` (with its log) when it exits before accepting
    /// connections.
    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("nats.log"))
            .expect("opening the broker log");
        let err = log.try_clone().expect("cloning the log handle");
        let mut child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "starting nats-server: {e}; install it with `apt-get install nats-server` \
                     (tests/run.sh does)"
                )
            });
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + LIFECYCLE_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("polling nats-server") {
                return Err(format!("exited with {status}: {}", self.log_tail(20)));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "nats-server on {addr} did not accept connections within {LIFECYCLE_TIMEOUT:?}"
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("broker log (last 20 lines):\n{}", self.log_tail(20));
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A free port for the broker, below the kernel's ephemeral range: the broker must get the same
/// port back after a restart, and ports in the ephemeral range are handed out all the time (to
/// `127.0.0.1:0` listeners of other tests, to outgoing connections), so one could be taken while
/// the broker is down.
fn broker_port() -> u16 {
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = 10_000.min(ephemeral_start / 2);
    for _ in 0..200 {
        let port = rand::random_range(low..ephemeral_start);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {low}..{ephemeral_start} for the broker")
}

/// The last `lines` lines of a log file (empty when it cannot be read).
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A prefix of broker subjects no other test cluster uses (subjects may hold no `.`, so none here).
fn unique_prefix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "tl_{}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        rand::random::<u32>()
    )
}

/// The flags of node `node` of a cluster (besides the harness's listen address, data dir, secret).
fn node_args(broker: &Broker, prefix: &str, node: usize) -> Vec<String> {
    [
        "--broker",
        &broker.url(),
        "--node-id",
        NODES[node],
        "--cluster-nodes",
        &NODES.join(","),
        "--broker-prefix",
        prefix,
        "--broker-timeout-ms",
        &BROKER_TIMEOUT_MS.to_string(),
        // Tests stream recorded trips as fast as acks come back.
        "--max-frames-per-s",
        "1000",
        "--workers",
        "2",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect()
}

/// The nodes [`NODES`] as real `trackline` binaries, each over its own data dir, joined through
/// one broker under a subject prefix of their own. Killed when dropped; when a test panics, every
/// node's log tail is printed first.
pub struct Cluster {
    nodes: Vec<TestServer>,
    /// Its own client: the harness's replies carry no headers, and these must.
    http: reqwest::Client,
}

impl Cluster {
    /// Starts every node of [`NODES`] against `broker`, in parallel; returns once every node's
    /// `/readyz` answers 200.
    pub fn start(broker: &Broker) -> Self {
        Self::start_with(broker, &[])
    }

    /// [`Cluster::start`], every node also given the flags `extra`.
    pub fn start_with(broker: &Broker, extra: &[&str]) -> Self {
        let prefix = unique_prefix();
        let nodes = std::thread::scope(|scope| {
            let starting: Vec<_> = (0..NODES.len())
                .map(|i| {
                    let mut args = node_args(broker, &prefix, i);
                    args.extend(extra.iter().map(|a| a.to_string()));
                    scope.spawn(move || {
                        let args: Vec<&str> = args.iter().map(String::as_str).collect();
                        TestServer::start_binary(&args)
                    })
                })
                .collect();
            starting
                .into_iter()
                .map(|t| t.join().expect("a node failed to start"))
                .collect()
        });
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .expect("building the HTTP client");
        Self { nodes, http }
    }

    /// Node `i` (of [`NODES`]).
    pub fn node(&self, i: usize) -> &TestServer {
        &self.nodes[i]
    }

    /// Node `i`, to kill or restart it (it keeps its data dir, node id and flags).
    pub fn node_mut(&mut self, i: usize) -> &mut TestServer {
        &mut self.nodes[i]
    }

    /// The node that owns an order or is a courier's home.
    pub fn owner(key: &str) -> usize {
        trackline_core::cluster::owner(key, &NODES)
    }

    /// The first id `{stem}-{n}` whose owner (order) or home (courier) is node `node`.
    pub fn id_on(node: usize, stem: &str) -> String {
        (0..10_000)
            .map(|n| format!("{stem}-{n}"))
            .find(|id| Self::owner(id) == node)
            .unwrap_or_else(|| panic!("no id {stem}-N within 10,000 lands on {}", NODES[node]))
    }

    /// An HTTP request to node `node` (`body` as JSON when given): the answer and the node that
    /// produced it, from the `x-trackline-node` header (a missing header fails the test).
    pub async fn request(
        &self,
        node: usize,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (Reply, String) {
        let what = format!(
            "{method} {path} on {}{}",
            NODES[node],
            body.map(|b| format!(" {b}")).unwrap_or_default()
        );
        let mut request = self.http.request(method, self.nodes[node].http_url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let status = response.status().as_u16();
        let producer = response
            .headers()
            .get(NODE_HEADER)
            .unwrap_or_else(|| panic!("{what}: the answer ({status}) has no {NODE_HEADER} header"))
            .to_str()
            .unwrap_or_else(|e| panic!("{what}: {NODE_HEADER} is not text: {e}"))
            .to_string();
        let text = response
            .text()
            .await
            .unwrap_or_else(|e| panic!("{what}: reading the body: {e}"));
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        let reply = Reply {
            what,
            status,
            body,
            text,
        };
        (reply, producer)
    }

    /// `GET path` on node `node`; see [`Cluster::request`].
    pub async fn get(&self, node: usize, path: &str, token: Option<&str>) -> (Reply, String) {
        self.request(node, reqwest::Method::GET, path, token, None)
            .await
    }

    /// `POST path` with a JSON body on node `node`; see [`Cluster::request`].
    pub async fn post(
        &self,
        node: usize,
        path: &str,
        token: Option<&str>,
        body: &Value,
    ) -> (Reply, String) {
        self.request(node, reqwest::Method::POST, path, token, Some(body))
            .await
    }

    /// The order's state as its owner reports it: `(offset, epoch)` (asked of node `via`).
    pub async fn offset_and_epoch(&self, via: usize, order: &str) -> (u64, String) {
        self.nodes[via].offset_and_epoch(order).await
    }

    /// The last lines of every running node's log, each under its name (for failure messages).
    pub fn log_tails(&self, lines: usize) -> String {
        NODES
            .iter()
            .zip(&self.nodes)
            .map(|(name, node)| format!("--- {name} ---\n{}", node.log_tail(lines)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // A failed test's report is useless without what the nodes said; the logs are removed
        // with their temporary dirs right after this.
        if std::thread::panicking() {
            eprintln!(
                "cluster logs (last 40 lines per node):\n{}",
                self.log_tails(40)
            );
        }
    }
}

/// Runs the binary with `args` over a fresh data dir on a free port, for a start that must fail:
/// waits (at most [`LIFECYCLE_TIMEOUT`]) for it to exit and returns its exit status and output.
/// A process still running then is killed and fails the test.
pub fn failed_start(args: &[&str]) -> (ExitStatus, String) {
    let dir = temp_data_dir();
    let data = binary_data_dir(dir.path());
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let addr = SocketAddr::from(([127, 0, 0, 1], crate::free_port()));
    let mut child = spawn_binary(&data, addr, &args);
    let deadline = Instant::now() + LIFECYCLE_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("polling the server process") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "trackline {args:?} was still running after {LIFECYCLE_TIMEOUT:?}; its log:\n{}",
                tail(&log_path(&data), 40)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = std::fs::read_to_string(log_path(&data)).unwrap_or_default();
    (status, output)
}

/// A courier app across connections and nodes: it keeps every fix it made until the server acks
/// it and, after a reconnect, resends the unacked ones with the same seqs, as the real app does.
pub struct CourierApp {
    pub name: String,
    /// Every fix made, in seq order.
    pub made: Vec<v1::Fix>,
    /// The highest acked seq, over every connection.
    pub acked: u64,
    /// The seqs the server rejected.
    pub rejected: Vec<u64>,
    client: Option<CourierClient>,
}

impl CourierApp {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            made: Vec::new(),
            acked: 0,
            rejected: Vec::new(),
            client: None,
        }
    }

    /// Closes the current connection, if any.
    pub async fn disconnect(&mut self) {
        if let Some(client) = self.client.take() {
            client.close().await;
        }
    }

    /// Makes `fixes` (the app's next ones) and sends them in one frame on the current connection
    /// without waiting for the ack; the error when sending failed (they stay unacked).
    pub async fn send(&mut self, fixes: &[v1::Fix]) -> Result<(), String> {
        self.make(fixes);
        self.resend(fixes).await
    }

    /// Sends fixes made before in one frame on the current connection.
    async fn resend(&mut self, fixes: &[v1::Fix]) -> Result<(), String> {
        match &mut self.client {
            Some(client) => client.try_send(fixes).await,
            None => Err("not connected".into()),
        }
    }

    fn make(&mut self, fixes: &[v1::Fix]) {
        for fix in fixes {
            let last = self.made.last().map_or(0, |f| f.seq);
            assert!(
                fix.seq > last,
                "{}: seqs strictly increase: {} after {last}",
                self.name,
                fix.seq
            );
            self.made.push(*fix);
        }
    }

    /// The fixes made and not acked, oldest first.
    pub fn unacked(&self) -> Vec<v1::Fix> {
        self.made
            .iter()
            .filter(|f| f.seq > self.acked)
            .copied()
            .collect()
    }

    /// Reads server frames until an ack covers `seq`, recording acks and rejections; the reason
    /// when the stream closed or failed first, or stayed silent for `within`.
    pub async fn wait_ack(&mut self, seq: u64, within: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + within;
        while self.acked < seq {
            let client = self.client.as_mut().ok_or("not connected")?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let message = match client.next_message(left).await {
                None => return Err("the stream ended".into()),
                Some(Err(e)) => return Err(e),
                Some(Ok(message)) => message,
            };
            match message {
                Message::Binary(bytes) => {
                    let frame = v1::ServerFrame::decode(bytes.as_ref())
                        .expect("server frames decode as ServerFrame");
                    match frame.kind {
                        Some(Kind::Ack(ack)) => self.on_ack(ack.seq),
                        Some(Kind::Rejected(rejected)) => self.rejected.push(rejected.seq),
                        None => panic!("{}: server frame without a kind", self.name),
                    }
                }
                Message::Close(frame) => return Err(format!("closed by the server: {frame:?}")),
                Message::Text(text) => {
                    panic!("{}: text frame on the courier stream: {text}", self.name)
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
        Ok(())
    }

    fn on_ack(&mut self, seq: u64) {
        assert!(
            seq >= self.acked,
            "{}: acks go backwards: {seq} after {}",
            self.name,
            self.acked
        );
        assert!(
            self.made.iter().any(|f| f.seq == seq),
            "{}: ack of seq {seq}, which was never sent",
            self.name
        );
        self.acked = seq;
    }

    /// Makes `fixes`, then delivers everything unacked to `node` one fix per frame, each frame's
    /// ack awaited; after a close, a failure or [`TIMEOUT`] without an ack it reconnects (to
    /// `node`) and resends. Panics when not everything is acked within `within`.
    pub async fn deliver(&mut self, node: &TestServer, fixes: &[v1::Fix], within: Duration) {
        // Fixes left unacked were sent on the current connection, which the server may still
        // ack late: resending them there could draw a second, lower ack after a higher one. The
        // app resends only after a reconnect.
        if !self.unacked().is_empty() {
            self.disconnect().await;
        }
        self.make(fixes);
        let deadline = Instant::now() + within;
        let mut attempts = 0;
        loop {
            let unacked = self.unacked();
            let Some(last) = unacked.last().map(|f| f.seq) else {
                return;
            };
            let why = match self.send_each(&unacked, node).await {
                Ok(()) => continue,
                Err(why) => why,
            };
            attempts += 1;
            assert!(
                Instant::now() < deadline,
                "{}: fixes up to {last} still unacked after {within:?} and {attempts} attempts \
                 (acked through {}); last attempt: {why}",
                self.name,
                self.acked
            );
            self.disconnect().await;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Sends `fixes` one per frame, each ack awaited, on the current connection (opened on `node`
    /// when there is none).
    async fn send_each(&mut self, fixes: &[v1::Fix], node: &TestServer) -> Result<(), String> {
        if self.client.is_none() {
            self.client = Some(node.courier(&self.name).await);
        }
        for fix in fixes {
            self.resend(std::slice::from_ref(fix)).await?;
            self.wait_ack(fix.seq, TIMEOUT).await?;
        }
        Ok(())
    }
}

/// A watcher read by a task of its own, so it answers the server's pings however long the test
/// looks elsewhere (a node restart, a broker outage). What it reads is kept in order across
/// connections: [`WatchFeed::resume_on`] reconnects after the last frame seen, to any node.
pub struct WatchFeed {
    order: String,
    /// Every update read so far, over every connection, in the order received.
    pub seen: Vec<Update>,
    /// How the current connection ended, once it has.
    pub ended: Option<String>,
    events: mpsc::UnboundedReceiver<Result<Update, String>>,
    task: tokio::task::JoinHandle<()>,
}

impl WatchFeed {
    /// Opens the watch stream of `order` on `node` (JSON) and reads it in the background.
    pub async fn open(node: &TestServer, order: &str) -> Self {
        let token = node.watch_token(order);
        let watcher = node
            .watch(order, TokenIn::Query(&token), WatchProtocol::Json)
            .await;
        let (events, task) = read_in_background(watcher);
        Self {
            order: order.to_string(),
            seen: Vec::new(),
            ended: None,
            events,
            task,
        }
    }

    /// The first frame of the stream (the snapshot of a fresh watch), waiting for it.
    pub async fn first(&mut self) -> Result<Update, String> {
        if self.seen.is_empty() {
            self.read_one(tokio::time::Instant::now() + TIMEOUT).await?;
        }
        Ok(self.seen[0].clone())
    }

    /// Waits until an update at `offset` or beyond was read; `Err` with how the connection ended
    /// when it ended first, or when no such update came within `within`.
    pub async fn through(&mut self, offset: u64, within: Duration) -> Result<&[Update], String> {
        let deadline = tokio::time::Instant::now() + within;
        while self.seen.last().is_none_or(|u| u.offset < offset) {
            self.read_one(deadline).await.map_err(|why| {
                format!(
                    "no update at offset {offset} (last {:?}): {why}",
                    self.seen.last().map(|u| u.offset)
                )
            })?;
        }
        Ok(&self.seen)
    }

    /// Drops the connection, as a phone losing its network does.
    pub fn disconnect(&mut self) {
        self.task.abort();
        self.ended = Some("disconnected by the test".into());
    }

    /// Reconnects on `node` with `?since=&epoch=` of the last frame seen and waits for the first
    /// frame of the new connection; a refused upgrade, or a connection that ends before its first
    /// frame, is retried until `within` has passed (a node or the broker may be coming back).
    /// The index in [`WatchFeed::seen`] of that first frame.
    pub async fn resume_on(&mut self, node: &TestServer, within: Duration) -> usize {
        let last = self
            .seen
            .last()
            .cloned()
            .expect("a resume starts after a frame seen");
        let path = format!(
            "/v1/orders/{}/watch?since={}&epoch={}",
            self.order, last.offset, last.epoch
        );
        let token = node.watch_token(&self.order);
        let deadline = Instant::now() + within;
        let mut failures = Vec::new();
        loop {
            self.disconnect();
            match Watcher::connect(
                &node.ws_url(&path),
                TokenIn::Query(&token),
                WatchProtocol::Json,
            )
            .await
            {
                Ok(watcher) => {
                    (self.events, self.task) = read_in_background(watcher);
                    self.ended = None;
                    let from = self.seen.len();
                    match self.read_one(tokio::time::Instant::now() + TIMEOUT).await {
                        Ok(()) => return from,
                        Err(why) => failures.push(why),
                    }
                }
                Err(e) => failures.push(format!("{e:#}")),
            }
            assert!(
                Instant::now() < deadline,
                "resuming the watch of {} at {} failed for {within:?}; last failures: {:?}",
                self.order,
                last.offset,
                &failures[failures.len().saturating_sub(3)..]
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Appends the next update of the current connection to `seen`; `Err` when the connection
    /// ended (also recorded in `ended`) or `deadline` passed.
    async fn read_one(&mut self, deadline: tokio::time::Instant) -> Result<(), String> {
        if let Some(ended) = &self.ended {
            return Err(ended.clone());
        }
        let event = tokio::time::timeout_at(deadline, self.events.recv())
            .await
            .map_err(|_| "nothing more arrived in time".to_string())?;
        match event {
            Some(Ok(update)) => {
                self.seen.push(update);
                Ok(())
            }
            Some(Err(ended)) => {
                self.ended = Some(ended.clone());
                Err(ended)
            }
            None => {
                self.ended = Some("the reading task stopped".into());
                Err("the reading task stopped".into())
            }
        }
    }
}

impl Drop for WatchFeed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads `watcher` on a task of its own until its connection ends, forwarding every update and
/// then how it ended.
fn read_in_background(
    mut watcher: Watcher,
) -> (
    mpsc::UnboundedReceiver<Result<Update, String>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, events) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            let event = match watcher.try_next_event(Duration::from_secs(3600)).await {
                Ok(WatchEvent::Update(update)) => Ok(update),
                Ok(WatchEvent::Closed(frame)) => Err(format!("closed by the server: {frame:?}")),
                Err(WatchError::Failed(e)) => Err(format!("connection failed: {e}")),
                Err(WatchError::Timeout) => continue,
            };
            let end = event.is_err();
            if tx.send(event).is_err() || end {
                return;
            }
        }
    });
    (events, task)
}
