//! trackctl against a real trackline server: the end-to-end harness's server (in-process on
//! 127.0.0.1:0 over a temporary data dir), populated by streaming recorded trips over the real
//! courier stream, and the trackctl binary to run against it (over HTTP, or on the data dir once
//! the server is stopped). The orders and history are read back with trackctl's own API client.

use std::path::Path;
use std::process::Command;

use trackctl::api::Api;
use trackctl::trip::Trip;
use trackline_core::fix::Fix;
use trackline_core::order::OrderStatus;
use trackline_core::LatLon;
use trackline_proto::v1;
use trackline_rest::{CreateOrder, OrderDetail};
use trackline_tests::TestServer;

use crate::common::{testdata_trip, trackctl};

pub use trackline_tests::SECRET;

/// Fixes per courier frame when populating.
const FRAME: usize = 25;

/// A running server and its data dir.
pub struct Live {
    server: TestServer,
    pub url: String,
    runtime: tokio::runtime::Runtime,
}

/// What populating an order sent and how the server answered.
#[derive(Debug, Clone)]
pub struct Streamed {
    /// Device time (unix ms) and position of each fix, as sent.
    pub sent: Vec<(i64, LatLon)>,
    pub rejected: Vec<String>,
}

impl Live {
    pub fn start() -> Live {
        let server = TestServer::start();
        let url = server.http_url("");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Live {
            server,
            url,
            runtime,
        }
    }

    pub fn data_dir(&self) -> &Path {
        self.server.data_dir()
    }

    pub fn ops_token(&self) -> String {
        self.server.ops_token()
    }

    fn api(&self) -> Api {
        Api::new(&self.url).unwrap()
    }

    /// Creates `order` for `courier` (none: unassigned), as [`order_request`] describes it.
    pub fn create_order(&self, order: &str, courier: Option<&str>, trip: &Trip) {
        self.create(&order_request(order, courier, trip));
    }

    /// `POST /v1/orders` as ops.
    pub fn create(&self, new: &CreateOrder) {
        self.runtime
            .block_on(self.api().create_order(&self.ops_token(), new))
            .expect("creating the order");
    }

    pub fn set_status(&self, order: &str, status: OrderStatus) {
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
        self.set_status(order, OrderStatus::PickedUp);
        let streamed = self.stream(courier, &trip);
        if deliver {
            self.set_status(order, OrderStatus::Delivered);
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
        // No accuracy, speed or heading: only what the recorded trip holds.
        let fixes: Vec<v1::Fix> = sent
            .iter()
            .zip(1..)
            .map(|((time_ms, pos), seq)| v1::Fix {
                seq,
                time_ms: *time_ms,
                lat_e7: trackline_proto::to_e7(pos.lat),
                lon_e7: trackline_proto::to_e7(pos.lon),
                accuracy_m: None,
                speed_mps: None,
                heading_deg: None,
            })
            .collect();
        let rejected = self.runtime.block_on(async {
            let mut client = self.server.courier(courier).await;
            client.stream(&fixes, FRAME).await;
            assert_eq!(
                client.acked,
                fixes.len() as u64,
                "the last ack covers the last fix"
            );
            let rejected = client.rejected.iter().map(|r| r.code.clone()).collect();
            client.close().await;
            rejected
        });
        Streamed { sent, rejected }
    }

    /// The stored history of `order`, as the server answers it.
    pub fn history(&self, order: &str) -> Vec<Fix> {
        self.runtime
            .block_on(self.api().history(&self.ops_token(), order, None, None))
            .unwrap()
            .expect("the order exists")
    }

    /// `GET /v1/orders/{id}` as ops.
    pub fn order(&self, order: &str) -> OrderDetail {
        self.runtime
            .block_on(self.api().order(&self.ops_token(), order))
            .unwrap()
            .expect("the order exists")
    }

    /// Stops the server; returns once its data dir can be opened.
    pub fn stop(&mut self) {
        self.server.stop();
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

/// The order `create_order` makes: destination = the trip's end, route = its path thinned to
/// ~50 m (as simulate plans one), no pickup.
pub fn order_request(order: &str, courier: Option<&str>, trip: &Trip) -> CreateOrder {
    CreateOrder {
        order_id: order.into(),
        destination: trip.destination().into(),
        courier_id: courier.map(String::from),
        route: Some(
            trip.simplified_route(50.0)
                .iter()
                .map(|p| [p.lat, p.lon])
                .collect(),
        ),
        promised_at_ms: None,
        pickup: None,
    }
}
