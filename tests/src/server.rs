//! Starting and stopping the server under test: in this process over `Config::for_tests`, or as
//! the real `trackline` binary in a child process (SIGTERM, SIGKILL and `/proc` need a process).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use trackline_core::auth::{Role, TokenKeys};
use trackline_core::{CourierId, OrderId};
use trackline_server::{Config, ServerHandle};

use crate::{LIFECYCLE_TIMEOUT, SECRET, TIMEOUT};

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
    pub(crate) addr: SocketAddr,
    keys: TokenKeys,
    pub(crate) http: reqwest::Client,
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
        Self::start_on(temp_data_dir(), configure)
    }

    fn start_on(dir: TempDir, configure: impl FnOnce(&mut Config)) -> Self {
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
        Self::start_binary_on(temp_data_dir(), args)
    }

    /// As [`TestServer::start_binary`], with the temporary dir (store and log) in `parent` (e.g.
    /// a small filesystem a test fills up).
    pub fn start_binary_in(parent: &Path, args: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("trackline-e2e-")
            .tempdir_in(parent)
            .expect("creating a temporary data dir");
        Self::start_binary_on(dir, args)
    }

    fn start_binary_on(dir: TempDir, args: &[&str]) -> Self {
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
        self.stop();
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

    /// Stops the server gracefully (a binary server with SIGTERM) and leaves its data dir for
    /// whatever reads it next; [`TestServer::start_again`] starts it again.
    pub fn stop(&mut self) {
        match self.handle.take() {
            Some(Backend::InProcess(handle)) => stop_server(handle),
            Some(Backend::Process(mut child)) => {
                child.terminate(LIFECYCLE_TIMEOUT);
            }
            None => {}
        }
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
        let pid = self.pid();
        let field = |name: &str| {
            proc_status_kib(pid, name).unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
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

    /// The HTTP client the helpers use (for requests they do not cover, e.g. DELETE).
    pub fn http_client(&self) -> &reqwest::Client {
        &self.http
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

/// A size field of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`), in KiB; `None` when the process is
/// gone (a sampler may outlive the server) or the field is missing.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
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
    pub(crate) addr: SocketAddr,
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

impl TestServer {
    /// `/readyz`: its status code and its answer.
    pub async fn readiness(&self) -> (u16, trackline_rest::Health) {
        let reply = self.get("/readyz", None).await;
        let health = serde_json::from_value(reply.body.clone())
            .unwrap_or_else(|e| panic!("/readyz answers a Health ({e}): {}", reply.body));
        (reply.status, health)
    }

    /// Polls `/readyz` until `wanted` (or panics after `within`), returning the answer and how
    /// long it took.
    pub async fn wait_readiness(
        &self,
        wanted: trackline_rest::HealthStatus,
        within: Duration,
    ) -> (u16, trackline_rest::Health, Duration) {
        let start = Instant::now();
        loop {
            let (status, health) = self.readiness().await;
            if health.status == wanted {
                return (status, health, start.elapsed());
            }
            assert!(
                start.elapsed() < within,
                "/readyz still {status} {health:?} after {within:?}, waiting for {wanted:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
