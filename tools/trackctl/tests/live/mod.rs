//! A real trackline server, in-process on 127.0.0.1:0 with its data dir in a TempDir, populated
//! by streaming recorded trips over the real courier stream; and the trackctl binary to run
//! against it (over HTTP, or on the data dir once the server is stopped).

#![allow(dead_code)] // each test binary uses a different part

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tempfile::TempDir;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use trackctl::api::{Api, NewOrder};
use trackctl::trip::Trip;
use trackline_core::auth::{Role, TokenKeys};
use trackline_core::fix::Fix;
use trackline_core::{CourierId, LatLon};
use trackline_proto::v1::{self, server_frame::Kind};
use trackline_proto::Message as _;
use trackline_server::ServerHandle;

pub const SECRET: &str = "history-test-secret";

/// Fixes per courier frame when populating.
const FRAME: usize = 25;

/// A running server and its data dir.
pub struct Live {
    server: Option<ServerHandle>,
    dir: TempDir,
    pub url: String,
    runtime: tokio::runtime::Runtime,
}

/// What populating an order sent and how the server answered.
#[derive(Debug, Clone)]
pub struct Streamed {
    /// Device time (unix ms) and position of each fix, as sent.
    pub sent: Vec<(i64, LatLon)>,
    pub acked_through: u64,
    pub rejected: Vec<String>,
}

impl Live {
    pub fn start() -> Live {
        let dir = tempfile::tempdir().unwrap();
        let server =
            trackline_server::spawn(trackline_server::Config::for_tests(dir.path(), SECRET))
                .expect("starting the server");
        let url = format!("http://{}", server.addr);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Live {
            server: Some(server),
            dir,
            url,
            runtime,
        }
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn ops_token(&self) -> String {
        TokenKeys::new(SECRET.as_bytes()).mint(&Role::Ops, 3600)
    }

    fn api(&self) -> Api {
        Api::new(&self.url).unwrap()
    }

    /// Creates `order` for `courier` (none: unassigned): destination = the trip's end, route =
    /// its path thinned to ~50 m (as simulate plans one).
    pub fn create_order(&self, order: &str, courier: Option<&str>, trip: &Trip) {
        let new = NewOrder {
            order_id: order.into(),
            destination: trip.destination(),
            courier_id: courier.map(String::from),
            route: trip
                .simplified_route(50.0)
                .iter()
                .map(|p| [p.lat, p.lon])
                .collect(),
        };
        self.runtime
            .block_on(self.api().create_order(&self.ops_token(), &new))
            .expect("creating the order");
    }

    pub fn set_status(&self, order: &str, status: &str) {
        self.runtime
            .block_on(self.api().set_status(&self.ops_token(), order, status))
            .expect("setting the status");
    }

    /// An order whose courier rode `trip_file` from testdata: created, picked up, every fix
    /// streamed with its recorded spacing (moved so the last one is a second ago) and acked, then
    /// delivered when asked.
    pub fn ride(&self, order: &str, courier: &str, trip_file: &str, deliver: bool) -> Streamed {
        let trip = testdata_trip(trip_file);
        self.create_order(order, Some(courier), &trip);
        self.set_status(order, "picked_up");
        let streamed = self.stream(courier, &trip);
        if deliver {
            self.set_status(order, "delivered");
        }
        streamed
    }

    /// Streams `trip` as `courier` over the courier stream, as fast as acks come back.
    pub fn stream(&self, courier: &str, trip: &Trip) -> Streamed {
        let last_s = trip.points.last().unwrap().t_s;
        let shift_ms = trackline_core::now_ms() - 1000 - (last_s * 1000.0).round() as i64;
        let sent: Vec<(i64, LatLon)> = trip
            .points
            .iter()
            .map(|p| ((p.t_s * 1000.0).round() as i64 + shift_ms, p.pos))
            .collect();
        let token = TokenKeys::new(SECRET.as_bytes())
            .mint(&Role::Courier(CourierId::new(courier).unwrap()), 3600);
        let ws_url = self.api().ws_url("/v1/courier/ws");
        let (acked_through, rejected) = self.runtime.block_on(async {
            let mut request = ws_url.into_client_request().unwrap();
            request.headers_mut().insert(
                "authorization",
                HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
            );
            let (mut ws, _) = tokio_tungstenite::connect_async(request)
                .await
                .expect("opening the courier stream");
            let mut rejected = Vec::new();
            let mut acked = 0;
            for (frame_index, chunk) in sent.chunks(FRAME).enumerate() {
                let fixes: Vec<v1::Fix> = chunk
                    .iter()
                    .enumerate()
                    .map(|(i, (time_ms, pos))| v1::Fix {
                        seq: (frame_index * FRAME + i + 1) as u64,
                        time_ms: *time_ms,
                        lat_e7: trackline_proto::to_e7(pos.lat),
                        lon_e7: trackline_proto::to_e7(pos.lon),
                        accuracy_m: 0.0,
                        speed_mps: -1.0,
                        heading_deg: -1.0,
                    })
                    .collect();
                let last_seq = fixes.last().unwrap().seq;
                let frame = v1::CourierFrame { fixes }.encode_to_vec();
                ws.send(Message::Binary(frame.into())).await.unwrap();
                while acked < last_seq {
                    let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
                        .await
                        .expect("an answer within 10 s")
                        .expect("the stream stays open")
                        .unwrap();
                    let Message::Binary(bytes) = message else {
                        continue;
                    };
                    match v1::ServerFrame::decode(bytes.as_ref()).unwrap().kind {
                        Some(Kind::Ack(ack)) => acked = ack.seq,
                        Some(Kind::Rejected(r)) => rejected.push(r.code),
                        _ => {}
                    }
                }
            }
            let _ = ws.close(None).await;
            (acked, rejected)
        });
        Streamed {
            sent,
            acked_through,
            rejected,
        }
    }

    /// The stored history of `order`, as the server answers it.
    pub fn history(&self, order: &str) -> Vec<Fix> {
        self.runtime
            .block_on(self.api().history(&self.ops_token(), order, None, None))
            .unwrap()
            .expect("the order exists")
    }

    /// `GET /v1/orders/{id}` as ops.
    pub fn order(&self, order: &str) -> trackctl::history::OrderDetail {
        self.runtime
            .block_on(self.api().order(&self.ops_token(), order))
            .unwrap()
            .expect("the order exists")
    }

    /// Stops the server; returns once its data dir can be opened.
    pub fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop();
        }
    }

    /// `trackctl` with the server and an ops token (from the secret) in its arguments.
    pub fn trackctl(&self, args: &[&str]) -> Command {
        let mut command = trackctl(args);
        command.args(["--server", &self.url, "--secret", SECRET]);
        command
    }

    /// `trackctl` on the data dir, with no server to fall back on.
    pub fn trackctl_offline(&self, args: &[&str]) -> Command {
        let mut command = trackctl(args);
        command.arg("--data-dir").arg(self.data_dir());
        // an address nothing listens on: a command that asked the server would fail loudly
        command.args(["--server", "http://127.0.0.1:9"]);
        command
    }
}

/// The trackctl binary with no TRACKLINE_* variables from the environment.
pub fn trackctl(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_trackctl"));
    command.args(args);
    for var in [
        "TRACKLINE_SECRET",
        "TRACKLINE_TOKEN",
        "TRACKLINE_SERVER",
        "RUST_LOG",
    ] {
        command.env_remove(var);
    }
    command
}

pub fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name)
}

pub fn testdata_trip(name: &str) -> Trip {
    Trip::from_path(&testdata(name)).unwrap()
}

/// Runs the command, returning its output.
pub fn run(command: &mut Command) -> Output {
    command.output().expect("running trackctl")
}

/// Runs the command, expecting exit code 0, and returns its stdout.
pub fn stdout_of(command: &mut Command) -> String {
    let output = run(command);
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

pub fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}
