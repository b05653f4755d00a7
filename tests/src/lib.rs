//! The end-to-end harness: a real trackline server on 127.0.0.1:0 over a temporary data dir,
//! spoken to over real sockets (HTTP with reqwest, WebSockets with tokio-tungstenite).
//!
//! Every helper that waits does so with a timeout, so a broken server fails a test instead of
//! hanging it. Helpers panic with a message naming the request on anything unexpected: they are
//! for tests, where a panic is the failure report.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::{
    HeaderValue, AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL,
};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use trackline_core::auth::{Role, TokenKeys};
use trackline_core::{CourierId, LatLon, OrderId};
use trackline_proto::v1::{self, server_frame::Kind};
use trackline_proto::{from_e7, to_e7, Message as _};
use trackline_server::{Config, ServerHandle};

pub mod cluster;
pub mod raw;

/// The token secret every test server is started with.
pub const SECRET: &str = "test-secret";
/// How long any single wait (a reply, an ack, an update) may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// How long starting or stopping the server may take.
pub(crate) const LIFECYCLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A client WebSocket of the harness.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A running server over its own temporary data dir; stopped (gracefully) when dropped.
///
/// The server runs in this process ([`TestServer::start`], [`TestServer::start_with`]) or as the
/// real `trackline` binary in a child process ([`TestServer::start_binary`]); every HTTP and
/// WebSocket helper works with both.
pub struct TestServer {
    handle: Option<Backend>,
    /// The configuration an in-process server is (re)started with.
    config: Config,
    /// The flags a binary server is (re)started with, besides listen, data dir and secret;
    /// `None` for an in-process server.
    binary_args: Option<Vec<String>>,
    addr: SocketAddr,
    keys: TokenKeys,
    http: reqwest::Client,
    /// The store: the temporary dir itself in process, a directory inside it for the binary.
    data: PathBuf,
    // Last field: removed only after the server has been stopped in `drop`.
    dir: TempDir,
}

impl TestServer {
    /// Starts a server on 127.0.0.1:0 with `Config::for_tests` over a fresh temporary dir.
    pub fn start() -> Self {
        Self::start_with(|_| {})
    }

    /// Starts an in-process server with `Config::for_tests` changed by `configure` (kept for
    /// restarts; the listen address and data dir are the harness's).
    pub fn start_with(configure: impl FnOnce(&mut Config)) -> Self {
        let dir = temp_data_dir();
        let mut config = Config::for_tests(dir.path(), SECRET);
        configure(&mut config);
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.data_dir = dir.path().to_path_buf();
        let handle = spawn_server(config.clone());
        let addr = handle.addr;
        Self::new(Backend::InProcess(handle), config, None, addr, dir)
    }

    /// Starts the real `trackline` binary (next to the test executable in the target dir) as a
    /// child process, on a free port of 127.0.0.1 over a fresh temporary dir, with the test secret
    /// and `args` (more flags, e.g. `["--shutdown-grace-s", "5"]`). Its log goes to `server.log`
    /// next to the data dir (see [`TestServer::log_tail`]). Returns once `/readyz` answers 200.
    pub fn start_binary(args: &[&str]) -> Self {
        let dir = temp_data_dir();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let child = ServerProcess::spawn(&binary_data_dir(dir.path()), &args);
        let addr = child.addr;
        let config = Config::for_tests(dir.path(), SECRET);
        Self::new(Backend::Process(child), config, Some(args), addr, dir)
    }

    fn new(
        backend: Backend,
        config: Config,
        binary_args: Option<Vec<String>>,
        addr: SocketAddr,
        dir: TempDir,
    ) -> Self {
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .expect("building the HTTP client");
        let data = match &binary_args {
            None => dir.path().to_path_buf(),
            Some(_) => binary_data_dir(dir.path()),
        };
        Self {
            handle: Some(backend),
            config,
            binary_args,
            data,
            addr,
            keys: TokenKeys::new(SECRET.as_bytes()),
            http,
            dir,
        }
    }

    /// Stops the server gracefully and starts a new one on the same data dir (on a new port).
    /// A binary server is stopped with SIGTERM.
    pub fn restart(&mut self) {
        match self.handle.take() {
            Some(Backend::InProcess(handle)) => stop_server(handle),
            Some(Backend::Process(mut child)) => {
                child.terminate(LIFECYCLE_TIMEOUT);
            }
            None => {}
        }
        self.start_again();
    }

    /// Starts the server again on the same data dir (on a new port) after [`TestServer::kill`] or
    /// [`TestServer::terminate`]; panics if it is running.
    pub fn start_again(&mut self) {
        assert!(self.handle.is_none(), "start_again: the server is running");
        let backend = match &self.binary_args {
            None => {
                let handle = spawn_server(self.config.clone());
                self.addr = handle.addr;
                Backend::InProcess(handle)
            }
            Some(args) => {
                let child = ServerProcess::spawn(&self.data, args);
                self.addr = child.addr;
                Backend::Process(child)
            }
        };
        self.handle = Some(backend);
    }

    /// Kills the binary server with SIGKILL (no chance to flush anything) and waits for it.
    pub fn kill(&mut self) {
        match self.handle.take() {
            Some(Backend::Process(mut child)) => child.kill(),
            Some(other) => {
                self.handle = Some(other);
                panic!("kill: only a binary server can be killed")
            }
            None => panic!("kill: the server is not running"),
        }
    }

    /// Sends SIGTERM to the binary server and waits at most `within` for it to exit; the exit
    /// status and how long the exit took (a timeout fails the test).
    pub fn terminate(&mut self, within: Duration) -> (std::process::ExitStatus, Duration) {
        match self.handle.take() {
            Some(Backend::Process(mut child)) => child.terminate(within),
            Some(other) => {
                self.handle = Some(other);
                panic!("terminate: only a binary server can be signalled")
            }
            None => panic!("terminate: the server is not running"),
        }
    }

    /// The process id of the binary server.
    pub fn pid(&self) -> u32 {
        match &self.handle {
            Some(Backend::Process(child)) => child.child.id(),
            _ => panic!("pid: only a binary server has a process of its own"),
        }
    }

    /// The binary server's resident set size (`VmRSS`) and its peak (`VmHWM`), in KiB.
    pub fn rss_kib(&self) -> (u64, u64) {
        let path = format!("/proc/{}/status", self.pid());
        let status =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kib| kib.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {path}"))
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// The last lines of the binary server's log (for failure messages); empty in process.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.path().join(LOG_FILE)).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's data dir (its store).
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `ws://127.0.0.1:PORT` + `path`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    pub fn ops_token(&self) -> String {
        self.keys.mint(&Role::Ops, 3600)
    }

    pub fn courier_token(&self, courier: &str) -> String {
        let id = CourierId::new(courier).expect("test courier ids are valid");
        self.keys.mint(&Role::Courier(id), 3600)
    }

    pub fn watch_token(&self, order: &str) -> String {
        let id = OrderId::new(order).expect("test order ids are valid");
        self.keys.mint(&Role::Watch(id), 3600)
    }

    /// `GET path` with an optional bearer token.
    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        let request = self.http.get(self.http_url(path));
        send(request, token, format!("GET {path}")).await
    }

    /// `POST path` with a JSON body and an optional bearer token.
    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Reply {
        let request = self.http.post(self.http_url(path)).json(body);
        send(request, token, format!("POST {path} {body}")).await
    }

    /// `GET path` as ops, expecting 200; the JSON body.
    pub async fn ops_get(&self, path: &str) -> Value {
        self.get(path, Some(&self.ops_token()))
            .await
            .expect_status(200)
    }

    /// `POST path` as ops, expecting `status`; the JSON body.
    pub async fn ops_post(&self, path: &str, body: &Value, status: u16) -> Value {
        self.post(path, Some(&self.ops_token()), body)
            .await
            .expect_status(status)
    }

    /// Creates an order as ops and expects 201; the reply (`order_id`, `watch_token`, `watch_url`).
    pub async fn create_order(&self, order: &NewOrder) -> Value {
        self.ops_post("/v1/orders", &order.to_json(), 201).await
    }

    /// `GET /v1/orders/{id}` as ops.
    /// The order's current (durable) offset and epoch, as `GET /v1/orders/{id}` reports them.
    pub async fn offset_and_epoch(&self, order: &str) -> (u64, String) {
        let state = self.order_state(order).await;
        let offset = state["offset"]
            .as_u64()
            .unwrap_or_else(|| panic!("no offset in {state}"));
        let epoch = state["epoch"]
            .as_str()
            .unwrap_or_else(|| panic!("no epoch in {state}"))
            .to_string();
        (offset, epoch)
    }

    pub async fn order_state(&self, order: &str) -> Value {
        self.ops_get(&format!("/v1/orders/{order}")).await
    }

    /// `GET /v1/orders/{id}/history` as ops: the stored fixes, oldest first.
    pub async fn history(&self, order: &str) -> Vec<HistoryFix> {
        let body = self.ops_get(&format!("/v1/orders/{order}/history")).await;
        assert_eq!(body["order_id"], order, "history names its order: {body}");
        serde_json::from_value(body["fixes"].clone())
            .unwrap_or_else(|e| panic!("history fixes do not parse ({e}): {body}"))
    }

    /// `GET /v1/couriers/nearby` as ops.
    pub async fn nearby(&self, center: LatLon, radius_m: f64, limit: usize) -> Vec<NearbyCourier> {
        let path = format!(
            "/v1/couriers/nearby?lat={}&lon={}&radius_m={radius_m}&limit={limit}",
            center.lat, center.lon
        );
        let body = self.ops_get(&path).await;
        serde_json::from_value(body["couriers"].clone())
            .unwrap_or_else(|e| panic!("nearby couriers do not parse ({e}): {body}"))
    }

    /// Opens the courier stream as `courier`, with its token in the `Authorization` header.
    pub async fn courier(&self, courier: &str) -> CourierClient {
        let token = self.courier_token(courier);
        let ws = ws_connect(
            &self.ws_url("/v1/courier/ws"),
            TokenIn::Header(&token),
            None,
        )
        .await
        .unwrap_or_else(|e| panic!("opening the courier stream as {courier}: {e:#}"));
        CourierClient {
            ws,
            acked: 0,
            acks: Vec::new(),
            rejected: Vec::new(),
        }
    }

    /// Opens the watch stream of `order` with `token` (header or query) and a subprotocol.
    pub async fn watch(&self, order: &str, token: TokenIn<'_>, protocol: WatchProtocol) -> Watcher {
        let url = self.ws_url(&format!("/v1/orders/{order}/watch"));
        let ws = ws_connect(&url, token, protocol.name())
            .await
            .unwrap_or_else(|e| {
                panic!("opening the watch stream of {order} ({protocol:?}): {e:#}")
            });
        Watcher { ws, protocol }
    }

    /// The HTTP status of a WebSocket upgrade of `path` (101 when it was accepted).
    pub async fn upgrade_status(&self, path: &str, token: TokenIn<'_>) -> u16 {
        match ws_connect(&self.ws_url(path), token, None).await {
            Ok(mut ws) => {
                let _ = ws.close(None).await;
                101
            }
            Err(e) => match e.downcast_ref::<tungstenite::Error>() {
                Some(tungstenite::Error::Http(response)) => response.status().as_u16(),
                _ => panic!("upgrade of {path} failed without an HTTP status: {e:#}"),
            },
        }
    }

    /// Opens the watch stream of `order` resuming after `since` in `epoch`
    /// (`?since=<since>&epoch=<epoch>`).
    pub async fn watch_resume(
        &self,
        order: &str,
        since: u64,
        epoch: &str,
        token: TokenIn<'_>,
        protocol: WatchProtocol,
    ) -> Watcher {
        let path = format!("/v1/orders/{order}/watch?since={since}&epoch={epoch}");
        let ws = ws_connect(&self.ws_url(&path), token, protocol.name())
            .await
            .unwrap_or_else(|e| panic!("resuming the watch stream of {order} at {since}: {e:#}"));
        Watcher { ws, protocol }
    }

    /// Opens the watch stream of `order` from a socket like a phone's on a slow mobile link: a
    /// receive buffer of `recv_buffer` bytes and a maximum segment of `mss` bytes announced to
    /// the server. (Over loopback the segment is 64 KiB, and the server's send buffer, sized
    /// from it, grows to megabytes: a client that stops reading would never fill it, so the
    /// server would never see it stall. With a real segment size its send buffer stays tens of
    /// KiB, as on the internet.)
    pub async fn watch_on_slow_link(
        &self,
        order: &str,
        token: TokenIn<'_>,
        protocol: WatchProtocol,
        recv_buffer: u32,
        mss: u32,
    ) -> Watcher {
        let url = self.ws_url(&format!("/v1/orders/{order}/watch"));
        let connect = async {
            let request = ws_request(&url, token, protocol.name())?;
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.set_recv_buffer_size(recv_buffer)?;
            set_max_segment(&socket, mss)?;
            let tcp = socket.connect(self.addr).await?;
            let (ws, _response) =
                tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(tcp)).await?;
            anyhow::Ok(ws)
        };
        let ws = tokio::time::timeout(TIMEOUT, connect)
            .await
            .unwrap_or_else(|_| panic!("no upgrade answer from {url} within {TIMEOUT:?}"))
            .unwrap_or_else(|e| panic!("opening the watch stream of {order}: {e:#}"));
        Watcher { ws, protocol }
    }
}

/// Sets `TCP_MAXSEG` on a socket before it connects (so it is announced in the SYN).
fn set_max_segment(socket: &tokio::net::TcpSocket, mss: u32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let value = libc::c_int::try_from(mss).map_err(std::io::Error::other)?;
    // SAFETY: setsockopt on a socket we own, with a pointer to a c_int and its size.
    let done = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MAXSEG,
            std::ptr::addr_of!(value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if done == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The TCP socket under a WebSocket of the harness (always plain TCP): to read what the server
/// sent without the WebSocket layer answering pings, or to see the connection end.
pub fn tcp_of(ws: &mut Ws) -> &mut TcpStream {
    match ws.get_mut() {
        MaybeTlsStream::Plain(tcp) => tcp,
        _ => unreachable!("the harness speaks plain ws://"),
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        match self.handle.take() {
            Some(Backend::InProcess(handle)) => stop_server(handle),
            Some(Backend::Process(mut child)) => child.kill(),
            None => {}
        }
    }
}

/// How a [`TestServer`] runs.
enum Backend {
    InProcess(ServerHandle),
    Process(ServerProcess),
}

pub(crate) fn temp_data_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("trackline-e2e-")
        .tempdir()
        .expect("creating a temporary data dir")
}

/// The store of a binary server whose temporary dir is `root`.
pub(crate) fn binary_data_dir(root: &Path) -> PathBuf {
    root.join("data")
}

/// The log of a binary server, next to its store in the temporary dir (removed with it).
const LOG_FILE: &str = "server.log";

/// Where a binary server over `data_dir` writes its log.
pub(crate) fn log_path(data_dir: &Path) -> PathBuf {
    data_dir.with_file_name(LOG_FILE)
}

/// The `trackline` binary of the target dir this test executable was built into.
pub fn server_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("locating the test executable");
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/trackline
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable lives in target/<profile>/deps");
    let binary = dir.join(format!("trackline{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.is_file(),
        "{} is missing: run `cargo build -p trackline-server` first (tests/run.sh builds every \
         binary before testing)",
        binary.display()
    );
    binary
}

/// A free port on 127.0.0.1 (bound and released; good enough for a test).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("finding a free port")
        .port()
}

/// Starts the `trackline` binary on `addr` over `data_dir` with the test secret and `args`, its
/// output appended to the log next to `data_dir` (see [`log_path`]); does not wait for anything.
pub(crate) fn spawn_binary(
    data_dir: &Path,
    addr: SocketAddr,
    args: &[String],
) -> std::process::Child {
    let binary = server_binary();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(data_dir))
        .expect("opening the server log");
    let err = log.try_clone().expect("cloning the log handle");
    let mut command = std::process::Command::new(&binary);
    // Flags win over the environment, but a stray TRACKLINE_* of the caller must not change
    // the flags the test does not set.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TRACKLINE_") {
            command.env_remove(name);
        }
    }
    command
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--secret")
        .arg(SECRET)
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(err);
    command
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()))
}

/// The real `trackline` binary in a child process.
struct ServerProcess {
    child: std::process::Child,
    addr: SocketAddr,
}

impl ServerProcess {
    /// Starts the binary and waits until `/readyz` answers 200.
    fn spawn(data_dir: &Path, args: &[String]) -> Self {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = spawn_binary(data_dir, addr, args);
        let mut process = Self { child, addr };
        process.wait_ready(data_dir);
        process
    }

    fn wait_ready(&mut self, data_dir: &Path) {
        let deadline = std::time::Instant::now() + LIFECYCLE_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("polling the server process") {
                let log = std::fs::read_to_string(log_path(data_dir)).unwrap_or_default();
                panic!("the server exited with {status} before it was ready; its log:\n{log}");
            }
            if http_status(self.addr, "/readyz") == Some(200) {
                return;
            }
            if std::time::Instant::now() > deadline {
                self.kill();
                panic!(
                    "the server at {} was not ready within {LIFECYCLE_TIMEOUT:?}",
                    self.addr
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn terminate(&mut self, within: Duration) -> (std::process::ExitStatus, Duration) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid fits pid_t");
        let started = std::time::Instant::now();
        // SAFETY: kill(2) with a valid signal number on our own child; no memory is involved.
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(
            sent,
            0,
            "sending SIGTERM to {pid}: {}",
            std::io::Error::last_os_error()
        );
        loop {
            if let Some(status) = self.child.try_wait().expect("polling the server process") {
                return (status, started.elapsed());
            }
            if started.elapsed() > within {
                self.kill();
                panic!("the server did not exit within {within:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A blocking `GET path` over a fresh connection: the status, or `None` when there is no answer.
fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// Starts the server on a thread of its own (outside any async runtime), with a timeout.
fn spawn_server(config: Config) -> ServerHandle {
    run_with_timeout("starting the server", move || {
        trackline_server::spawn(config)
    })
    .unwrap_or_else(|e| panic!("server did not start: {e:#}"))
}

/// Stops the server gracefully, with a timeout.
fn stop_server(handle: ServerHandle) {
    run_with_timeout("stopping the server", move || handle.stop());
}

/// Runs blocking `work` on a fresh thread and waits at most [`LIFECYCLE_TIMEOUT`] for it.
fn run_with_timeout<T: Send + 'static>(what: &str, work: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(work());
    });
    match rx.recv_timeout(LIFECYCLE_TIMEOUT) {
        Ok(value) => value,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what} took longer than {LIFECYCLE_TIMEOUT:?}")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what} panicked"),
    }
}

async fn send(request: reqwest::RequestBuilder, token: Option<&str>, what: String) -> Reply {
    let request = match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    };
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let status = response.status().as_u16();
    let text = response
        .text()
        .await
        .unwrap_or_else(|e| panic!("{what}: reading the body: {e}"));
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply {
        what,
        status,
        body,
        text,
    }
}

/// One HTTP answer.
#[derive(Debug)]
pub struct Reply {
    /// The request, for failure messages.
    pub what: String,
    pub status: u16,
    /// The body as JSON (`Null` when it is not JSON).
    pub body: Value,
    pub text: String,
}

impl Reply {
    /// Asserts the status and returns the JSON body.
    pub fn expect_status(self, status: u16) -> Value {
        assert_eq!(
            self.status, status,
            "{}: expected {status}, got {} with body {}",
            self.what, self.status, self.text
        );
        self.body
    }

    /// Asserts the status and that the body is the protocol's error shape; returns the error code.
    pub fn expect_error(self, status: u16) -> String {
        let what = self.what.clone();
        let body = self.expect_status(status);
        let code = body["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no error.code in {body}"));
        let message = body["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no error.message in {body}"));
        assert!(
            !code.is_empty() && !message.is_empty(),
            "{what}: empty error code or message in {body}"
        );
        code.to_string()
    }
}

/// The body of `POST /v1/orders`.
#[derive(Debug, Clone)]
pub struct NewOrder {
    pub order_id: String,
    pub destination: LatLon,
    pub courier_id: Option<String>,
    pub route: Option<Vec<LatLon>>,
}

impl NewOrder {
    pub fn new(order_id: &str, destination: LatLon) -> Self {
        Self {
            order_id: order_id.to_string(),
            destination,
            courier_id: None,
            route: None,
        }
    }

    pub fn courier(mut self, courier: &str) -> Self {
        self.courier_id = Some(courier.to_string());
        self
    }

    pub fn route(mut self, route: Vec<LatLon>) -> Self {
        self.route = Some(route);
        self
    }

    pub fn to_json(&self) -> Value {
        let mut body = json!({
            "order_id": self.order_id,
            "destination": {"lat": self.destination.lat, "lon": self.destination.lon},
        });
        if let Some(courier) = &self.courier_id {
            body["courier_id"] = json!(courier);
        }
        if let Some(route) = &self.route {
            body["route"] = route.iter().map(|p| json!([p.lat, p.lon])).collect();
        }
        body
    }
}

/// One fix of `GET /v1/orders/{id}/history`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct HistoryFix {
    pub seq: u64,
    pub time_ms: i64,
    pub lat: f64,
    pub lon: f64,
    pub accuracy_m: Option<f32>,
    pub speed_mps: Option<f32>,
    pub heading_deg: Option<f32>,
}

/// One courier of `GET /v1/couriers/nearby`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct NearbyCourier {
    pub courier_id: String,
    pub lat: f64,
    pub lon: f64,
    pub distance_m: f64,
    pub time_ms: i64,
}

/// Where a WebSocket upgrade carries its token.
#[derive(Debug, Clone, Copy)]
pub enum TokenIn<'a> {
    None,
    /// `Authorization: Bearer <token>`.
    Header(&'a str),
    /// `?token=<token>` (what a browser does).
    Query(&'a str),
}

/// Opens a WebSocket on `url` (which may carry a query) and hands back the stream, or the error:
/// for clients that must outlive a server (no panics).
pub async fn ws_connect(
    url: &str,
    token: TokenIn<'_>,
    subprotocol: Option<&str>,
) -> anyhow::Result<Ws> {
    let request = ws_request(url, token, subprotocol)?;
    let (ws, _response) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(request))
        .await
        .map_err(|_| anyhow::anyhow!("no upgrade answer from {url} within {TIMEOUT:?}"))??;
    Ok(ws)
}

/// The upgrade request of `url`, with the token and subprotocol where asked.
fn ws_request(
    url: &str,
    token: TokenIn<'_>,
    subprotocol: Option<&str>,
) -> anyhow::Result<tungstenite::handshake::client::Request> {
    let url = match token {
        TokenIn::Query(token) if url.contains('?') => format!("{url}&token={token}"),
        TokenIn::Query(token) => format!("{url}?token={token}"),
        _ => url.to_string(),
    };
    let mut request = url.as_str().into_client_request()?;
    if let TokenIn::Header(token) = token {
        request.headers_mut().insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}"))?,
        );
    }
    if let Some(protocol) = subprotocol {
        request
            .headers_mut()
            .insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_str(protocol)?);
    }
    Ok(request)
}

/// A courier app: sends `CourierFrame`s, reads `ServerFrame`s.
pub struct CourierClient {
    ws: Ws,
    /// The highest acked seq so far.
    pub acked: u64,
    /// Every ack received, in order.
    pub acks: Vec<u64>,
    /// Every rejection received, in order.
    pub rejected: Vec<v1::Rejected>,
}

impl CourierClient {
    /// Sends one frame holding `fixes`.
    pub async fn send(&mut self, fixes: &[v1::Fix]) {
        let frame = v1::CourierFrame {
            fixes: fixes.to_vec(),
        };
        tokio::time::timeout(
            TIMEOUT,
            self.ws.send(Message::binary(frame.encode_to_vec())),
        )
        .await
        .expect("sending a courier frame timed out")
        .expect("sending a courier frame");
    }

    /// Sends one frame holding `fixes`; the error instead of a panic (the server may be going away).
    pub async fn try_send(&mut self, fixes: &[v1::Fix]) -> Result<(), String> {
        let frame = v1::CourierFrame {
            fixes: fixes.to_vec(),
        };
        match tokio::time::timeout(
            TIMEOUT,
            self.ws.send(Message::binary(frame.encode_to_vec())),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("sending a frame took longer than {TIMEOUT:?}")),
        }
    }

    /// Reads server frames until an ack covers `seq`, collecting rejections on the way.
    pub async fn wait_ack(&mut self, seq: u64) {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while self.acked < seq {
            let message = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "no ack for seq {seq} within {TIMEOUT:?} (last ack {})",
                        self.acked
                    )
                })
                .unwrap_or_else(|| {
                    panic!("courier stream ended while waiting for the ack of seq {seq}")
                })
                .unwrap_or_else(|e| {
                    panic!("courier stream failed while waiting for the ack of seq {seq}: {e}")
                });
            match message {
                Message::Binary(bytes) => {
                    let frame = v1::ServerFrame::decode(bytes.as_ref())
                        .expect("server frames decode as ServerFrame");
                    match frame.kind {
                        Some(Kind::Ack(ack)) => {
                            assert!(
                                ack.seq >= self.acked,
                                "acks go backwards: {} after {}",
                                ack.seq,
                                self.acked
                            );
                            self.acked = ack.seq;
                            self.acks.push(ack.seq);
                        }
                        Some(Kind::Rejected(rejected)) => {
                            assert!(
                                rejected.seq > self.acked,
                                "rejection of seq {} came after the ack {} covering it",
                                rejected.seq,
                                self.acked
                            );
                            self.rejected.push(rejected);
                        }
                        None => panic!("server frame without a kind"),
                    }
                }
                Message::Close(frame) => {
                    panic!("courier stream closed while waiting for seq {seq}: {frame:?}")
                }
                Message::Text(text) => panic!("text frame on the courier stream: {text}"),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    /// Sends `fixes` in frames of `batch`, waiting for each frame's ack before the next (as an app
    /// flushing its buffer does), and returns the seqs that were rejected.
    pub async fn stream(&mut self, fixes: &[v1::Fix], batch: usize) -> Vec<u64> {
        let rejected_before = self.rejected.len();
        for chunk in fixes.chunks(batch) {
            self.send(chunk).await;
            // unwrap: chunks are never empty
            self.wait_ack(chunk.last().unwrap().seq).await;
        }
        self.rejected[rejected_before..]
            .iter()
            .map(|r| r.seq)
            .collect()
    }

    /// Closes the stream politely.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(TIMEOUT, self.ws.close(None)).await;
    }

    /// The TCP socket under the stream (see [`tcp_of`]).
    pub fn tcp(&mut self) -> &mut TcpStream {
        tcp_of(&mut self.ws)
    }

    /// The next server frame or close, without panicking on a failed connection: for checking
    /// that a stream is still up (acks and pings answered) or has ended.
    pub async fn next_message(&mut self, within: Duration) -> Option<Result<Message, String>> {
        match tokio::time::timeout(within, self.ws.next()).await {
            Err(_) => Some(Err(format!("nothing within {within:?}"))),
            Ok(None) => None,
            Ok(Some(result)) => Some(result.map_err(|e| e.to_string())),
        }
    }
}

/// The subprotocol a watcher asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchProtocol {
    /// `trackline.v1.json`.
    Json,
    /// `trackline.v1.proto`.
    Proto,
    /// None asked: the server defaults to JSON.
    Unspecified,
}

impl WatchProtocol {
    fn name(self) -> Option<&'static str> {
        match self {
            WatchProtocol::Json => Some("trackline.v1.json"),
            WatchProtocol::Proto => Some("trackline.v1.proto"),
            WatchProtocol::Unspecified => None,
        }
    }
}

/// Whether two frames show the same state of the stream (everything but type and recovered).
pub fn same_state(a: &Update, b: &Update) -> bool {
    (a.order_id == b.order_id)
        & (a.offset == b.offset)
        & (a.epoch == b.epoch)
        & (a.status == b.status)
        & (a.position == b.position)
        & (a.eta == b.eta)
}

/// The frame of `reference` (a watcher that saw every update) at `offset`.
pub fn update_at(reference: &[Update], offset: u64) -> &Update {
    reference
        .iter()
        .find(|u| u.offset == offset)
        .unwrap_or_else(|| panic!("the reference watcher never saw offset {offset}"))
}

/// One watch-stream message, decoded from JSON or protobuf into one shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    /// The JSON `type` ("snapshot" or "update"); `None` on the protobuf stream.
    pub kind: Option<String>,
    pub order_id: String,
    pub offset: u64,
    pub epoch: String,
    /// The lower-case status word.
    pub status: String,
    pub position: Option<Position>,
    pub eta: Option<Eta>,
    pub recovered: bool,
}

/// The watch stream's position and ETA are the core's own types (they derive the JSON shape).
pub use trackline_core::order::{Eta, Position};

/// What the next read of a watch stream brought.
#[derive(Debug)]
pub enum WatchEvent {
    Update(Update),
    Closed(Option<CloseFrame>),
}

/// A customer's page or app on the watch stream.
pub struct Watcher {
    ws: Ws,
    protocol: WatchProtocol,
}

impl Watcher {
    /// Opens the watch stream at `url` (e.g. `TestServer::ws_url` of a watch path, with or without
    /// `?since=&epoch=`); the error instead of a panic, for watchers that outlive a server.
    pub async fn connect(
        url: &str,
        token: TokenIn<'_>,
        protocol: WatchProtocol,
    ) -> anyhow::Result<Watcher> {
        let ws = ws_connect(url, token, protocol.name()).await?;
        Ok(Watcher { ws, protocol })
    }
}

/// Why [`Watcher::try_next_event`] got nothing.
#[derive(Debug)]
pub enum WatchError {
    /// Nothing arrived in time.
    Timeout,
    /// The connection failed (reset, protocol error).
    Failed(tungstenite::Error),
}

impl Watcher {
    /// The next update, or a close; panics on a timeout or a frame of the wrong kind.
    pub async fn next_event(&mut self, within: Duration) -> WatchEvent {
        match self.try_next_event(within).await {
            Ok(event) => event,
            Err(WatchError::Timeout) => panic!("no watch update within {within:?}"),
            Err(WatchError::Failed(e)) => panic!("watch stream failed: {e}"),
        }
    }

    /// The next update, or a close; a timeout or a failed connection is an error (for watchers
    /// that outlive a server); panics on a frame of the wrong kind.
    pub async fn try_next_event(&mut self, within: Duration) -> Result<WatchEvent, WatchError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let message = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Err(WatchError::Timeout),
                Ok(None) => return Ok(WatchEvent::Closed(None)),
                Ok(Some(Err(
                    tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed,
                ))) => return Ok(WatchEvent::Closed(None)),
                Ok(Some(Err(e))) => return Err(WatchError::Failed(e)),
                Ok(Some(Ok(message))) => message,
            };
            match (message, self.protocol) {
                (Message::Text(text), WatchProtocol::Json | WatchProtocol::Unspecified) => {
                    return Ok(WatchEvent::Update(parse_json_update(&text)));
                }
                (Message::Binary(bytes), WatchProtocol::Proto) => {
                    let update = v1::OrderUpdate::decode(bytes.as_ref())
                        .expect("binary watch frames decode as OrderUpdate");
                    return Ok(WatchEvent::Update(from_proto_update(update)));
                }
                (Message::Close(frame), _) => return Ok(WatchEvent::Closed(frame)),
                (Message::Ping(_) | Message::Pong(_) | Message::Frame(_), _) => {}
                (other, protocol) => {
                    panic!("unexpected frame on a {protocol:?} watch stream: {other:?}")
                }
            }
        }
    }

    /// The next update; panics on a close or a timeout.
    pub async fn next_update(&mut self, within: Duration) -> Update {
        match self.next_event(within).await {
            WatchEvent::Update(update) => update,
            WatchEvent::Closed(frame) => {
                panic!("watch stream closed while an update was expected: {frame:?}")
            }
        }
    }

    /// Reads updates until one satisfies `last` (included) and returns them all.
    pub async fn updates_until(
        &mut self,
        within: Duration,
        last: impl Fn(&Update) -> bool,
    ) -> Vec<Update> {
        let deadline = tokio::time::Instant::now() + within;
        let mut updates = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let update = match self.next_event(left).await {
                WatchEvent::Update(update) => update,
                WatchEvent::Closed(frame) => panic!(
                    "watch stream closed after {} updates: {frame:?}",
                    updates.len()
                ),
            };
            let done = last(&update);
            updates.push(update);
            if done {
                return updates;
            }
        }
    }

    pub async fn close(mut self) {
        let _ = tokio::time::timeout(TIMEOUT, self.ws.close(None)).await;
    }

    /// The TCP socket under the stream (see [`tcp_of`]).
    pub fn tcp(&mut self) -> &mut TcpStream {
        tcp_of(&mut self.ws)
    }
}

fn parse_json_update(text: &str) -> Update {
    let value: Value = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("watch text frame is not JSON ({e}): {text}"));
    let field = |name: &str| {
        value
            .get(name)
            .unwrap_or_else(|| panic!("watch update has no {name:?}: {text}"))
    };
    Update {
        kind: Some(
            field("type")
                .as_str()
                .unwrap_or_else(|| panic!("type is not a string: {text}"))
                .to_string(),
        ),
        order_id: field("order_id")
            .as_str()
            .unwrap_or_else(|| panic!("order_id is not a string: {text}"))
            .to_string(),
        offset: field("offset")
            .as_u64()
            .unwrap_or_else(|| panic!("offset is not an unsigned integer: {text}")),
        epoch: field("epoch")
            .as_str()
            .unwrap_or_else(|| panic!("epoch is not a string: {text}"))
            .to_string(),
        status: field("status")
            .as_str()
            .unwrap_or_else(|| panic!("status is not a string: {text}"))
            .to_string(),
        position: serde_json::from_value(value.get("position").cloned().unwrap_or(Value::Null))
            .unwrap_or_else(|e| panic!("position does not parse ({e}): {text}")),
        eta: serde_json::from_value(value.get("eta").cloned().unwrap_or(Value::Null))
            .unwrap_or_else(|e| panic!("eta does not parse ({e}): {text}")),
        recovered: value
            .get("recovered")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    }
}

fn from_proto_update(update: v1::OrderUpdate) -> Update {
    let status = v1::OrderStatus::try_from(update.status)
        .unwrap_or_else(|_| panic!("unknown status {} in a proto update", update.status));
    let status = status
        .as_str_name()
        .strip_prefix("ORDER_STATUS_")
        .unwrap_or_else(|| panic!("status name {status:?} has no ORDER_STATUS_ prefix"))
        .to_lowercase();
    let known = |x: f32| (x >= 0.0).then_some(x);
    Update {
        kind: None,
        order_id: update.order_id,
        offset: update.offset,
        epoch: update.epoch,
        status,
        position: update.position.map(|p| Position {
            lat: from_e7(p.lat_e7),
            lon: from_e7(p.lon_e7),
            time_ms: p.time_ms,
            speed_mps: known(p.speed_mps),
            heading_deg: known(p.heading_deg),
            accuracy_m: (p.accuracy_m > 0.0).then_some(p.accuracy_m),
        }),
        eta: update.eta.map(|e| Eta {
            seconds: e.seconds,
            arrive_at_ms: e.arrive_at_ms,
        }),
        recovered: update.recovered,
    }
}

/// One point of a recorded trip.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TripPoint {
    pub time_ms: i64,
    pub pos: LatLon,
}

/// The directory of the trips copied from shared/trajectories (CSV `t_unix,lat,lon`).
pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data")
}

/// Loads a recorded trip from `tests/data/`.
pub fn load_trip(file: &str) -> Vec<TripPoint> {
    let path = data_dir().join(file);
    let mut reader =
        csv::Reader::from_path(&path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    reader
        .records()
        .map(|record| {
            let record = record.unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            let number = |i: usize| -> f64 {
                record
                    .get(i)
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or_else(|| {
                        panic!(
                            "{}: column {i} of {record:?} is not a number",
                            path.display()
                        )
                    })
            };
            TripPoint {
                time_ms: (number(0) * 1000.0).round() as i64,
                pos: LatLon::new(number(1), number(2)),
            }
        })
        .collect()
}

/// The horizontal accuracy every trip fix claims, in metres.
pub const TRIP_ACCURACY_M: f32 = 5.0;

/// Turns trip points into wire fixes with seqs from `first_seq`, shifted in time so that the last
/// one was recorded one second ago (as a phone streaming live would have sent them). Speed and
/// heading are derived from the previous point.
pub fn trip_fixes(points: &[TripPoint], first_seq: u64) -> Vec<v1::Fix> {
    let Some(last) = points.last() else {
        return Vec::new();
    };
    let shift = trackline_core::now_ms() - 1000 - last.time_ms;
    let mut fixes = Vec::with_capacity(points.len());
    for (i, point) in points.iter().enumerate() {
        let (speed, heading) = match i.checked_sub(1).map(|p| points[p]) {
            Some(prev) if point.time_ms > prev.time_ms => {
                let metres = prev.pos.distance_m(point.pos);
                let speed = metres / ((point.time_ms - prev.time_ms) as f64 / 1000.0);
                (speed as f32, bearing_deg(prev.pos, point.pos) as f32)
            }
            _ => (-1.0, -1.0),
        };
        fixes.push(v1::Fix {
            seq: first_seq + i as u64,
            time_ms: point.time_ms + shift,
            lat_e7: to_e7(point.pos.lat),
            lon_e7: to_e7(point.pos.lon),
            accuracy_m: TRIP_ACCURACY_M,
            speed_mps: speed,
            heading_deg: heading,
        });
    }
    fixes
}

/// The initial great-circle bearing from `a` to `b`, in degrees in [0, 360).
pub fn bearing_deg(a: LatLon, b: LatLon) -> f64 {
    let (la1, la2) = (a.lat.to_radians(), b.lat.to_radians());
    let dlon = (b.lon - a.lon).to_radians();
    let y = dlon.sin() * la2.cos();
    let x = la1.cos() * la2.sin() - la1.sin() * la2.cos() * dlon.cos();
    let deg = y.atan2(x).to_degrees().rem_euclid(360.0);
    // rem_euclid can round up to exactly 360.0 for tiny negative angles
    if deg >= 360.0 {
        0.0
    } else {
        deg
    }
}

/// The position of a wire fix, in degrees.
pub fn fix_pos(fix: &v1::Fix) -> LatLon {
    LatLon::new(from_e7(fix.lat_e7), from_e7(fix.lon_e7))
}

/// The fixes that were not rejected.
pub fn accepted(fixes: &[v1::Fix], rejected: &[u64]) -> Vec<v1::Fix> {
    fixes
        .iter()
        .filter(|f| !rejected.contains(&f.seq))
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trips_load_with_every_point() {
        let run = load_trip("run_vincennes_DC2_garmin.csv");
        assert_eq!(run.len(), 2643);
        assert_eq!(run[0].time_ms, 1_627_151_005_000);
        assert!(
            (run[0].pos.lat - 48.8293093).abs() < 1e-9 && (run[0].pos.lon - 2.4605997).abs() < 1e-9
        );
        assert_eq!(load_trip("car_visnjan_hr.csv").len(), 104);
    }

    #[test]
    fn trip_fixes_end_now_and_keep_the_recorded_spacing() {
        let points = load_trip("car_visnjan_hr.csv");
        let fixes = trip_fixes(&points, 7);
        let now = trackline_core::now_ms();
        let last = fixes.last().unwrap();
        assert!(
            (now - 5_000..now).contains(&last.time_ms),
            "{} vs now {now}",
            last.time_ms
        );
        for (i, (fix, point)) in fixes.iter().zip(&points).enumerate() {
            assert_eq!(fix.seq, 7 + i as u64);
            assert_eq!(
                last.time_ms - fix.time_ms,
                points.last().unwrap().time_ms - point.time_ms
            );
            assert!(fix_pos(fix).distance_m(point.pos) < 0.05);
            assert!(
                (0.0..85.0).contains(&fix.speed_mps) || i == 0,
                "speed {}",
                fix.speed_mps
            );
            assert!(
                (0.0..360.0).contains(&fix.heading_deg) || i == 0,
                "heading {}",
                fix.heading_deg
            );
        }
    }

    #[test]
    fn bearings_point_the_right_way() {
        let origin = LatLon::new(45.0, 13.0);
        assert!(bearing_deg(origin, LatLon::new(45.1, 13.0)).abs() < 1e-6);
        assert!((bearing_deg(origin, LatLon::new(45.0, 13.1)) - 90.0).abs() < 0.1);
        assert!((bearing_deg(origin, LatLon::new(44.9, 13.0)) - 180.0).abs() < 1e-6);
        assert!((bearing_deg(origin, LatLon::new(45.0, 12.9)) - 270.0).abs() < 0.1);
    }
}
