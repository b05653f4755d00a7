//! The suite: every scenario against every peer, repeated, and the report (JSON and Markdown).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use crate::fleet::{self, FleetArgs, FleetReport};
use crate::load::{self, LoadResult, LoadSpec, Pace};
use crate::peers::{self, Peer};
use crate::scenarios::{self, ExportRun, IdleResult, NearbyResult, RestartRun};
use crate::stats::{load_average, median};

#[derive(clap::Args, Clone, Debug, Serialize)]
pub struct SuiteArgs {
    /// Repetitions of each measurement; the report shows the median.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Peers to run (comma-separated); default all.
    #[arg(long, value_delimiter = ',')]
    pub peers: Vec<String>,
    /// Scenarios to run (comma-separated: throughput,batched,latency,broker,fleet,idle,nearby,
    /// restart,export); default all.
    #[arg(long, value_delimiter = ',')]
    pub scenarios: Vec<String>,
    /// Couriers (each with one order and one watcher) in the throughput and latency scenarios.
    #[arg(long, default_value_t = 100)]
    pub couriers: usize,
    /// Closed loop: fixes in flight per courier in the throughput scenario.
    #[arg(long, default_value_t = 8)]
    pub window: usize,
    /// Closed loop with app-like batching: up to this many fixes in flight per courier, and
    /// every fix the window allows goes into the next frame.
    #[arg(long, default_value_t = 32)]
    pub batched_window: usize,
    /// Seconds measured per throughput or latency run (after the warm-up).
    #[arg(long, default_value_t = 8.0)]
    pub seconds: f64,
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Idle courier connections (capped by the descriptor limit).
    #[arg(long, default_value_t = 50_000)]
    pub idle: usize,
    /// Live couriers for the nearby scenario.
    #[arg(long, default_value_t = 100_000)]
    pub nearby_couriers: usize,
    #[arg(long, default_value_t = 2_000)]
    pub nearby_queries: usize,
    /// Active orders for the restart scenario.
    #[arg(long, default_value_t = 100_000)]
    pub restart_orders: usize,
    /// Fixes of the exported trip (one per second).
    #[arg(long, default_value_t = 3600)]
    pub trip_fixes: usize,
    #[arg(long, default_value = "tools/bench/report.json")]
    pub out: PathBuf,
    #[arg(long, default_value = "BENCHMARKS.md")]
    pub md: PathBuf,
    /// Appended verbatim to BENCHMARKS.md (findings written by people).
    #[arg(long, default_value = "tools/bench/NOTES.md")]
    pub notes: PathBuf,
    /// The command line to print in the report.
    #[arg(long, default_value = "tools/bench/run.sh")]
    pub command: String,
    #[arg(long)]
    pub work: Option<PathBuf>,
    /// The fleet scenario (flags prefixed `fleet-`; its peers are also limited by --peers).
    #[command(flatten)]
    pub fleet: FleetArgs,
}

#[derive(Debug, Default, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub ram_gib: f64,
    pub kernel: String,
    pub nofile_limit: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct PeerLoad {
    pub runs: Vec<LoadResult>,
    pub median_delivered_fixes_per_s: f64,
    pub median_p50_us: f64,
    pub median_p99_us: f64,
    pub median_p999_us: f64,
    pub median_ack_p50_us: f64,
    pub median_ack_p99_us: f64,
    pub median_server_cpu_cores: f64,
    pub median_server_rss_mib: f64,
    pub errors: u64,
}

impl PeerLoad {
    fn finish(&mut self) {
        let m =
            |f: &dyn Fn(&LoadResult) -> f64| median(&self.runs.iter().map(f).collect::<Vec<_>>());
        self.median_delivered_fixes_per_s = m(&|r| r.delivered_fixes_per_s);
        self.median_p50_us = m(&|r| r.e2e.p50_us);
        self.median_p99_us = m(&|r| r.e2e.p99_us);
        self.median_p999_us = m(&|r| r.e2e.p999_us);
        self.median_ack_p50_us = m(&|r| r.ack.p50_us);
        self.median_ack_p99_us = m(&|r| r.ack.p99_us);
        self.median_server_cpu_cores = m(&|r| r.server_cpu_cores);
        self.median_server_rss_mib = m(&|r| r.server_rss_mib);
        self.errors = self.runs.iter().map(|r| r.errors + r.stalls).sum();
    }
}

#[derive(Debug, Default, Serialize)]
pub struct PeerIdle {
    pub runs: Vec<IdleResult>,
    pub median_kib_per_connection: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct Target {
    pub what: String,
    pub target: String,
    pub measured: String,
    pub met: Option<bool>,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub date_utc: String,
    pub machine: Machine,
    pub command: String,
    pub args: Option<SuiteArgs>,
    /// Load average (1, 5, 15 min) when each scenario started.
    pub load_average: BTreeMap<String, String>,
    /// Peers that could not run, and why.
    pub unavailable: BTreeMap<String, String>,
    pub throughput: BTreeMap<String, PeerLoad>,
    pub throughput_batched: BTreeMap<String, PeerLoad>,
    pub half_load_fixes_per_s: f64,
    pub latency: BTreeMap<String, PeerLoad>,
    /// The same load on one node, and split over two nodes in broker mode (couriers on one,
    /// watchers on the other): what the broker adds.
    pub broker_fixes_per_s: f64,
    pub broker: BTreeMap<String, PeerLoad>,
    /// Many couriers at one fix per 1-5 s, open loop: CPU per fix, memory and disk over time, the
    /// highest rate within the p99 bar.
    pub fleet: Option<FleetReport>,
    pub idle: BTreeMap<String, PeerIdle>,
    pub nearby: Vec<NearbyResult>,
    pub nearby_median_http_p50_us: f64,
    pub nearby_median_http_p99_us: f64,
    pub nearby_median_in_process_p50_us: f64,
    pub nearby_median_in_process_p99_us: f64,
    pub restart_orders: usize,
    pub restart_orders_failed: usize,
    pub restart_create_s: f64,
    pub restart: Vec<RestartRun>,
    pub restart_median_ready_s: f64,
    pub export: Vec<ExportRun>,
    pub targets: Vec<Target>,
    pub errors: Vec<String>,
}

fn machine(nofile: u64) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    Machine {
        nproc: std::thread::available_parallelism().map_or(0, usize::from),
        cpu_model: cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            .unwrap_or_default(),
        ram_gib: kib / 1024.0 / 1024.0,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        nofile_limit: nofile,
    }
}

fn date_utc() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M:%S UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn save(report: &Report, args: &SuiteArgs) -> Result<()> {
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir).ok();
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(report)?)?;
    let notes = std::fs::read_to_string(&args.notes).unwrap_or_default();
    std::fs::write(&args.md, markdown(report, &notes))?;
    Ok(())
}

/// The broker scenario's set-ups, as named in the report.
const ONE_NODE: &str = "one node";
const TWO_NODES: &str = "two nodes, broker between";
/// The broker scenario's load (or half load, if that is lower).
const BROKER_SCENARIO_FIXES_PER_S: f64 = 1000.0;

/// Couriers on node a, watchers on node b, orders placed by hash (half on each).
async fn two_node_load(work: &Path, spec: &LoadSpec) -> Result<LoadResult> {
    let cluster = peers::TwoNodes::start(work).await?;
    let [a, b] = &cluster.nodes;
    let r = load::run_split(Peer::Trackline, a.addr, b.addr, a.pid(), spec).await;
    cluster.stop().await;
    r
}

pub async fn run_suite(args: SuiteArgs, work: &Path, nofile: u64) -> Result<()> {
    std::fs::create_dir_all(work)?;
    let wanted = |s: &str| args.scenarios.is_empty() || args.scenarios.iter().any(|x| x == s);
    let mut report = Report {
        date_utc: date_utc(),
        machine: machine(nofile),
        command: args.command.clone(),
        args: Some(args.clone()),
        ..Default::default()
    };
    let mut peers_to_run = Vec::new();
    for p in Peer::ALL {
        if !args.peers.is_empty() && !args.peers.iter().any(|x| x == p.name()) {
            continue;
        }
        match p.missing() {
            Some(why) => {
                report.unavailable.insert(p.name().into(), why);
            }
            None => peers_to_run.push(p),
        }
    }
    let runs = args.runs.max(1);
    let spec = |pace| LoadSpec {
        couriers: args.couriers,
        pace,
        batch: match pace {
            Pace::Window(w) if w == args.batched_window && w != args.window => 0,
            _ => 1,
        },
        watchers: 1,
        warmup: Duration::from_secs_f64(args.warmup),
        duration: Duration::from_secs_f64(args.seconds),
        extra_orders: 0,
    };

    if wanted("throughput") {
        report
            .load_average
            .insert("throughput".into(), load_average());
        // Interleaved (run 1 of every peer, then run 2, ...) so that drift hits all alike.
        for run in 0..runs {
            for &p in &peers_to_run {
                eprintln!("throughput run {}/{runs}: {}", run + 1, p.name());
                match load::run_fresh(p, work, &spec(Pace::Window(args.window))).await {
                    Ok(r) => {
                        eprintln!("  {:.0} fixes/s", r.delivered_fixes_per_s);
                        report
                            .throughput
                            .entry(p.name().into())
                            .or_default()
                            .runs
                            .push(r);
                    }
                    Err(e) => report
                        .errors
                        .push(format!("throughput {}: {e:#}", p.name())),
                }
            }
        }
        report.throughput.values_mut().for_each(PeerLoad::finish);
        save(&report, &args)?;
    }

    if wanted("batched") {
        report.load_average.insert("batched".into(), load_average());
        for run in 0..runs {
            for &p in &peers_to_run {
                eprintln!("batched throughput run {}/{runs}: {}", run + 1, p.name());
                match load::run_fresh(p, work, &spec(Pace::Window(args.batched_window))).await {
                    Ok(r) => {
                        eprintln!("  {:.0} fixes/s", r.delivered_fixes_per_s);
                        report
                            .throughput_batched
                            .entry(p.name().into())
                            .or_default()
                            .runs
                            .push(r);
                    }
                    Err(e) => report.errors.push(format!("batched {}: {e:#}", p.name())),
                }
            }
        }
        report
            .throughput_batched
            .values_mut()
            .for_each(PeerLoad::finish);
        save(&report, &args)?;
    }

    if wanted("latency") {
        report.load_average.insert("latency".into(), load_average());
        let max = report
            .throughput
            .get("trackline")
            .map_or(f64::NAN, |t| t.median_delivered_fixes_per_s);
        let half = if max.is_finite() && max > 0.0 {
            max / 2.0
        } else {
            1000.0
        };
        report.half_load_fixes_per_s = half;
        for run in 0..runs {
            for &p in &peers_to_run {
                eprintln!(
                    "latency run {}/{runs}: {} at {half:.0} fixes/s",
                    run + 1,
                    p.name()
                );
                let pace = Pace::Rate(half / args.couriers as f64);
                match load::run_fresh(p, work, &spec(pace)).await {
                    Ok(r) => {
                        eprintln!("  p50 {:.0} us p99 {:.0} us", r.e2e.p50_us, r.e2e.p99_us);
                        report
                            .latency
                            .entry(p.name().into())
                            .or_default()
                            .runs
                            .push(r);
                    }
                    Err(e) => report.errors.push(format!("latency {}: {e:#}", p.name())),
                }
            }
        }
        report.latency.values_mut().for_each(PeerLoad::finish);
        save(&report, &args)?;
    }

    if wanted("broker") && peers_to_run.contains(&Peer::Trackline) {
        report.load_average.insert("broker".into(), load_average());
        // A moderate load, the same for both set-ups: the question is latency, not the maximum.
        let half = report.half_load_fixes_per_s;
        let rate = if half > 0.0 {
            BROKER_SCENARIO_FIXES_PER_S.min(half)
        } else {
            BROKER_SCENARIO_FIXES_PER_S
        };
        report.broker_fixes_per_s = rate;
        let spec = spec(Pace::Rate(rate / args.couriers as f64));
        for run in 0..runs {
            for setup in [ONE_NODE, TWO_NODES] {
                eprintln!(
                    "broker run {}/{runs}: {setup} at {rate:.0} fixes/s",
                    run + 1
                );
                let r = if setup == ONE_NODE {
                    load::run_fresh(Peer::Trackline, work, &spec).await
                } else {
                    two_node_load(work, &spec).await
                };
                match r {
                    Ok(r) => {
                        eprintln!("  p50 {:.0} us p99 {:.0} us", r.e2e.p50_us, r.e2e.p99_us);
                        report.broker.entry(setup.into()).or_default().runs.push(r);
                    }
                    Err(e) => report.errors.push(format!("broker {setup}: {e:#}")),
                }
            }
        }
        report.broker.values_mut().for_each(PeerLoad::finish);
        save(&report, &args)?;
    }

    if wanted("fleet") {
        report.load_average.insert("fleet".into(), load_average());
        match args.fleet.peer_list() {
            Ok(asked) => {
                let peers: Vec<Peer> = asked
                    .into_iter()
                    .filter(|p| peers_to_run.contains(p))
                    .collect();
                report.fleet = Some(fleet::run(&args.fleet, &peers, work, nofile).await);
            }
            Err(e) => report.errors.push(format!("fleet: {e:#}")),
        }
        save(&report, &args)?;
    }

    if wanted("idle") {
        report.load_average.insert("idle".into(), load_average());
        // Both ends are one process each, and neither may hold more descriptors than the limit.
        let n = args.idle.min(nofile.saturating_sub(1000) as usize);
        for run in 0..runs {
            for &p in &peers_to_run {
                if p == Peer::RedisPipelined {
                    continue; // the same server as redis
                }
                eprintln!("idle run {}/{runs}: {} x {n}", run + 1, p.name());
                let r = async {
                    let server = peers::start(p, work).await?;
                    let r = scenarios::idle(p, &server, n).await;
                    server.stop(Duration::from_secs(30)).await;
                    r
                }
                .await;
                match r {
                    Ok(r) => {
                        eprintln!(
                            "  {:.2} KiB/conn ({} failed)",
                            r.kib_per_connection, r.failed
                        );
                        report.idle.entry(p.name().into()).or_default().runs.push(r);
                    }
                    Err(e) => report.errors.push(format!("idle {}: {e:#}", p.name())),
                }
                // Let TIME_WAITs and the next server's memory settle.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        for v in report.idle.values_mut() {
            v.median_kib_per_connection = median(
                &v.runs
                    .iter()
                    .map(|r| r.kib_per_connection)
                    .collect::<Vec<_>>(),
            );
        }
        save(&report, &args)?;
    }

    let has_trackline = peers_to_run.contains(&Peer::Trackline);
    if wanted("nearby") && has_trackline {
        report.load_average.insert("nearby".into(), load_average());
        eprintln!("nearby: populating {} live couriers", args.nearby_couriers);
        let r = async {
            let server = peers::start(Peer::Trackline, work).await?;
            let (failed, secs) =
                scenarios::populate_live(server.addr, args.nearby_couriers, 7).await?;
            let mut out = Vec::new();
            for run in 0..runs {
                let (http, mean) =
                    scenarios::nearby_http(server.addr, args.nearby_queries, 100 + run as u64)
                        .await?;
                let in_process = scenarios::nearby_in_process(args.nearby_couriers, 20_000, 7);
                eprintln!(
                    "  http p99 {:.0} us, in-process p99 {:.1} us",
                    http.p99_us, in_process.p99_us
                );
                out.push(NearbyResult {
                    couriers: args.nearby_couriers,
                    populate_failed: failed,
                    populate_s: secs,
                    queries: args.nearby_queries,
                    mean_results: mean,
                    http,
                    in_process,
                });
            }
            server.stop(Duration::from_secs(30)).await;
            anyhow::Ok(out)
        }
        .await;
        match r {
            Ok(v) => report.nearby = v,
            Err(e) => report.errors.push(format!("nearby: {e:#}")),
        }
        let m = |f: &dyn Fn(&NearbyResult) -> f64| {
            median(&report.nearby.iter().map(f).collect::<Vec<_>>())
        };
        report.nearby_median_http_p50_us = m(&|r| r.http.p50_us);
        report.nearby_median_http_p99_us = m(&|r| r.http.p99_us);
        report.nearby_median_in_process_p50_us = m(&|r| r.in_process.p50_us);
        report.nearby_median_in_process_p99_us = m(&|r| r.in_process.p99_us);
        save(&report, &args)?;
    }

    if wanted("export") && has_trackline {
        report.load_average.insert("export".into(), load_average());
        eprintln!("export: recording a trip of {} fixes", args.trip_fixes);
        let r = async {
            let server = peers::start(Peer::Trackline, work).await?;
            scenarios::record_trip(server.addr, "trip-1", "trip-courier", args.trip_fixes).await?;
            let mut out = Vec::new();
            for _ in 0..runs {
                for format in ["gpx", "json"] {
                    out.push(scenarios::export_once(server.addr, "trip-1", format).await?);
                }
            }
            server.stop(Duration::from_secs(30)).await;
            anyhow::Ok(out)
        }
        .await;
        match r {
            Ok(v) => report.export = v,
            Err(e) => report.errors.push(format!("export: {e:#}")),
        }
        save(&report, &args)?;
    }

    if wanted("restart") && has_trackline {
        report.load_average.insert("restart".into(), load_average());
        eprintln!("restart: creating {} active orders", args.restart_orders);
        report.restart_orders = args.restart_orders;
        let r = async {
            let server = peers::start(Peer::Trackline, work).await?;
            let data = server.dir.clone();
            let (failed, secs) =
                scenarios::create_orders(server.addr, args.restart_orders, "r-").await?;
            let mut server = server;
            let mut out = Vec::new();
            for _ in 0..runs {
                let probe = format!("r-{}", args.restart_orders.saturating_sub(1));
                let (r, s) = scenarios::restart_once(server, &data, &probe).await?;
                eprintln!(
                    "  ready in {:.3} s (shutdown {:.3} s)",
                    r.ready_s, r.shutdown_s
                );
                out.push(r);
                server = s;
            }
            server.stop(Duration::from_secs(30)).await;
            anyhow::Ok((failed, secs, out))
        }
        .await;
        match r {
            Ok((failed, secs, runs)) => {
                report.restart_orders_failed = failed;
                report.restart_create_s = secs;
                report.restart_median_ready_s =
                    median(&runs.iter().map(|r| r.ready_s).collect::<Vec<_>>());
                report.restart = runs;
            }
            Err(e) => report.errors.push(format!("restart: {e:#}")),
        }
    }

    report.targets = targets(&report);
    report.load_average.insert("zz_end".into(), load_average());
    save(&report, &args)?;
    eprintln!("wrote {} and {}", args.out.display(), args.md.display());
    Ok(())
}

fn targets(r: &Report) -> Vec<Target> {
    let mut t = Vec::new();
    let ratio_target = |t: &mut Vec<Target>,
                        table: &BTreeMap<String, PeerLoad>,
                        peer: &str,
                        what: &str,
                        min: f64,
                        strict: bool| {
        let thr = |p: &str| table.get(p).map(|x| x.median_delivered_fixes_per_s);
        if let (Some(a), Some(b)) = (thr("trackline"), thr(peer)) {
            let ratio = a / b;
            t.push(Target {
                what: what.into(),
                target: if strict {
                    format!("> {min}x")
                } else {
                    format!(">= {min}x")
                },
                measured: format!("{ratio:.2}x ({a:.0} vs {b:.0} fixes/s)"),
                met: Some(if strict { ratio > min } else { ratio >= min }),
            });
        }
    };
    ratio_target(
        &mut t,
        &r.throughput,
        "relay",
        "throughput vs bare relay",
        0.5,
        false,
    );
    ratio_target(
        &mut t,
        &r.throughput,
        "nats",
        "throughput vs NATS",
        1.0,
        true,
    );
    ratio_target(
        &mut t,
        &r.throughput,
        "mosquitto",
        "throughput vs Mosquitto",
        1.0,
        true,
    );
    let b = &r.throughput_batched;
    ratio_target(
        &mut t,
        b,
        "relay",
        "batched throughput vs bare relay",
        0.5,
        false,
    );
    ratio_target(&mut t, b, "nats", "batched throughput vs NATS", 1.0, true);
    ratio_target(
        &mut t,
        b,
        "mosquitto",
        "batched throughput vs Mosquitto",
        1.0,
        true,
    );
    if let Some(l) = r.latency.get("trackline") {
        t.push(Target {
            what: "end-to-end p50 at half load".into(),
            target: "< 2 ms".into(),
            measured: format!("{:.3} ms", l.median_p50_us / 1000.0),
            met: Some(l.median_p50_us < 2000.0),
        });
        t.push(Target {
            what: "end-to-end p99 at half load".into(),
            target: "< 10 ms".into(),
            measured: format!("{:.3} ms", l.median_p99_us / 1000.0),
            met: Some(l.median_p99_us < 10_000.0),
        });
    }
    if let Some(i) = r.idle.get("trackline") {
        let n = i.runs.first().map_or(0, |x| x.connections);
        t.push(Target {
            what: format!("memory per idle connection ({n} connections)"),
            target: "<= 10 KiB".into(),
            measured: format!("{:.2} KiB", i.median_kib_per_connection),
            met: Some(i.median_kib_per_connection <= 10.0),
        });
    }
    if !r.nearby.is_empty() {
        t.push(Target {
            what: format!(
                "nearby p99 over {} live couriers (in-process query)",
                r.nearby[0].couriers
            ),
            target: "< 50 us".into(),
            measured: format!(
                "{:.1} us (HTTP round trip p99: {:.0} us)",
                r.nearby_median_in_process_p99_us, r.nearby_median_http_p99_us
            ),
            met: Some(r.nearby_median_in_process_p99_us < 50.0),
        });
    }
    if !r.restart.is_empty() {
        t.push(Target {
            what: format!("restart to ready with {} active orders", r.restart_orders),
            target: "< 3 s".into(),
            measured: format!("{:.3} s", r.restart_median_ready_s),
            met: Some(r.restart_median_ready_s < 3.0),
        });
    }
    t
}

fn fmt_rate(x: f64) -> String {
    if x.is_nan() {
        "-".into()
    } else {
        format!("{x:.0}")
    }
}

fn fmt_us(x: f64) -> String {
    if x.is_nan() || x == 0.0 {
        "-".into()
    } else if x >= 1000.0 {
        format!("{:.2} ms", x / 1000.0)
    } else {
        format!("{x:.0} us")
    }
}

fn runs_of(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn markdown(r: &Report, notes: &str) -> String {
    let mut s = String::new();
    let a = r.args.as_ref();
    let _ = writeln!(s, "# Benchmarks: trackline against its peers\n");
    let _ = writeln!(
        s,
        "Generated by `{}` (tools/bench) on {}. Every figure is the median of {} runs taken in one \
         session on one machine, peers interleaved run by run; the raw runs are in \
         `tools/bench/report.json`. Absolute numbers drift between machines and sessions: compare \
         the ratios.\n",
        r.command,
        r.date_utc,
        a.map_or(0, |a| a.runs)
    );
    let m = &r.machine;
    let _ = writeln!(
        s,
        "**Machine**: {} cores ({}), {:.1} GiB RAM, Linux {}, descriptor limit {} per process. \
         The load generator runs on the same cores as the server under test.\n",
        m.nproc, m.cpu_model, m.ram_gib, m.kernel, m.nofile_limit
    );
    if !r.load_average.is_empty() {
        let la: Vec<String> = r
            .load_average
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let _ = writeln!(
            s,
            "**Load average** (1/5/15 min) when each scenario began (zz_end: when the run ended): {}.\n",
            la.join("; ")
        );
    }
    if let Some(a) = a {
        let _ = writeln!(
            s,
            "**Scale**: {} couriers, each with one order and one watcher; throughput closed-loop with \
             {} fixes in flight per courier; {:.0} s measured after {:.0} s warm-up per run; one fix per \
             frame; {} idle connections requested; {} live couriers for nearby ({} HTTP queries per run); \
             {} active orders for restart; a trip of {} fixes for export.\n",
            a.couriers, a.window, a.seconds, a.warmup, a.idle, a.nearby_couriers, a.nearby_queries,
            a.restart_orders, a.trip_fixes
        );
    }
    for (p, why) in &r.unavailable {
        let _ = writeln!(s, "- **{p}** did not run: {why}.");
    }
    if !r.unavailable.is_empty() {
        s.push('\n');
    }

    let _ = writeln!(
        s,
        "## Targets\n\n| target | goal | measured | met |\n|---|---|---|---|"
    );
    for t in &r.targets {
        let met = match t.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "-",
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            t.what, t.target, t.measured, met
        );
    }
    s.push('\n');

    if !r.throughput.is_empty() {
        let _ = writeln!(
            s,
            "## Max sustained fixes/s, one fix per frame (one watcher per order)\n\n\
             Closed loop: each courier keeps at most {} fixes between sending and its watcher's \
             receipt, one fix per frame, so queues stay bounded and the delivered rate is the most \
             the system sustains. trackline validates, filters, stores every fix durably (sled, \
             group commit) before it acks and publishes, updates the R-tree and the ETA. The relay \
             stores nothing; NATS and Mosquitto relay in memory (QoS 0, no persistence); Redis does \
             GEOADD + XADD + PUBLISH per frame with its append-only file synced every second.\n",
            a.map_or(0, |a| a.window)
        );
        throughput_table(&mut s, &r.throughput);
    }
    if !r.throughput_batched.is_empty() {
        let _ = writeln!(
            s,
            "## Max sustained fixes/s, batched frames (as an app flushes its buffer)\n\n\
             Closed loop with up to {} fixes in flight per courier; whenever the window allows, \
             every allowed fix goes into the next frame (at least one). A peer relays a frame as one \
             message; trackline stores, filters and publishes each fix of it, one watcher update per \
             fix.\n",
            a.map_or(0, |a| a.batched_window)
        );
        throughput_table(&mut s, &r.throughput_batched);
    }

    if !r.latency.is_empty() {
        let tl = r.latency.get("trackline");
        let _ = writeln!(
            s,
            "## Latency at half load ({:.0} fixes/s offered to every peer)\n\n\
             End to end: from handing the fix to the courier's socket to the watcher decoding it.\n\n\
             | peer | delivered fixes/s | p50 | p99 | p99.9 | trackline p99 / peer p99 | server CPU (cores) | errors |\n\
             |---|---|---|---|---|---|---|---|",
            r.half_load_fixes_per_s
        );
        for p in Peer::ALL {
            let Some(x) = r.latency.get(p.name()) else {
                continue;
            };
            let ratio = tl.map_or("-".into(), |t| {
                format!("{:.2}x", t.median_p99_us / x.median_p99_us)
            });
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {:.2} | {} |",
                p.name(),
                fmt_rate(x.median_delivered_fixes_per_s),
                fmt_us(x.median_p50_us),
                fmt_us(x.median_p99_us),
                fmt_us(x.median_p999_us),
                ratio,
                x.median_server_cpu_cores,
                x.errors
            );
        }
        if let Some(t) = tl {
            let _ = writeln!(
                s,
                "\ntrackline ack latency at half load: p50 {}, p99 {}.",
                fmt_us(t.median_ack_p50_us),
                fmt_us(t.median_ack_p99_us)
            );
        }
        s.push('\n');
    }

    if !r.broker.is_empty() {
        let _ = writeln!(
            s,
            "## What the broker adds ({:.0} fixes/s, trackline only)\n\n\
             The same load on one node, and on two nodes in broker mode with a NATS server between \
             them: couriers connect to node a, watchers to node b, orders are placed by hash (about \
             half owned by each), so a fix crosses the broker once or twice before its ack and once \
             more to reach its watcher. CPU is node a's.\n\n\
             | set-up | delivered fixes/s | e2e p50 | e2e p99 | ack p50 | ack p99 | node a CPU (cores) | errors |\n\
             |---|---|---|---|---|---|---|---|",
            r.broker_fixes_per_s
        );
        for setup in [ONE_NODE, TWO_NODES] {
            let Some(x) = r.broker.get(setup) else {
                continue;
            };
            let _ = writeln!(
                s,
                "| {setup} | {} | {} | {} | {} | {} | {:.2} | {} |",
                fmt_rate(x.median_delivered_fixes_per_s),
                fmt_us(x.median_p50_us),
                fmt_us(x.median_p99_us),
                fmt_us(x.median_ack_p50_us),
                fmt_us(x.median_ack_p99_us),
                x.median_server_cpu_cores,
                x.errors
            );
        }
        if let (Some(one), Some(two)) = (r.broker.get(ONE_NODE), r.broker.get(TWO_NODES)) {
            let _ = writeln!(
                s,
                "\nAdded by the broker (median of runs): e2e p50 {}, p99 {}; ack p50 {}, p99 {}.",
                fmt_us(two.median_p50_us - one.median_p50_us),
                fmt_us(two.median_p99_us - one.median_p99_us),
                fmt_us(two.median_ack_p50_us - one.median_ack_p50_us),
                fmt_us(two.median_ack_p99_us - one.median_ack_p99_us)
            );
        }
        s.push('\n');
    }

    if let Some(f) = &r.fleet {
        fleet_section(&mut s, f);
    }

    if !r.idle.is_empty() {
        let tl = r.idle.get("trackline").map(|x| x.median_kib_per_connection);
        let _ = writeln!(
            s,
            "## Memory per idle connection\n\n\
             Courier connections opened and left idle; server RSS after minus before, divided by the \
             connections. For Redis a plain TCP client.\n\n\
             | peer | connections | KiB per connection | runs | trackline / peer | connect time |\n|---|---|---|---|---|---|"
        );
        for p in Peer::ALL {
            let Some(x) = r.idle.get(p.name()) else {
                continue;
            };
            let n = x.runs.first().map_or(0, |r| r.connections);
            let ratio = tl.map_or("-".into(), |t| {
                format!("{:.2}x", t / x.median_kib_per_connection)
            });
            let _ = writeln!(
                s,
                "| {} | {} | {:.2} | {} | {} | {:.1} s |",
                p.name(),
                n,
                x.median_kib_per_connection,
                x.runs
                    .iter()
                    .map(|r| format!("{:.2}", r.kib_per_connection))
                    .collect::<Vec<_>>()
                    .join(", "),
                ratio,
                median(&x.runs.iter().map(|r| r.connect_s).collect::<Vec<_>>())
            );
        }
        s.push('\n');
    }

    if !r.nearby.is_empty() {
        let n = &r.nearby[0];
        let _ = writeln!(
            s,
            "## Nearby over {} live couriers (trackline only)\n\n\
             Populated by one fix per courier over short-lived courier connections ({:.1} s, {} failed). \
             Queries: random points in the 33 x 31 km area, radius 1000 m, limit 10 ({:.1} results on \
             average).\n\n\
             | measure | p50 | p99 | runs (p99) |\n|---|---|---|---|\n\
             | GET /v1/couriers/nearby, client-side HTTP round trip | {} | {} | {} |\n\
             | `SpatialIndex::nearest` in process (same positions, 20,000 queries) | {} | {} | {} |\n",
            n.couriers,
            n.populate_s,
            n.populate_failed,
            n.mean_results,
            fmt_us(r.nearby_median_http_p50_us),
            fmt_us(r.nearby_median_http_p99_us),
            r.nearby.iter().map(|x| fmt_us(x.http.p99_us)).collect::<Vec<_>>().join(", "),
            fmt_us_fine(r.nearby_median_in_process_p50_us),
            fmt_us_fine(r.nearby_median_in_process_p99_us),
            r.nearby.iter().map(|x| fmt_us_fine(x.in_process.p99_us)).collect::<Vec<_>>().join(", "),
        );
    }

    if !r.restart.is_empty() {
        let _ = writeln!(
            s,
            "## Restart to ready with {} active orders (trackline only)\n\n\
             Orders created over HTTP in {:.1} s ({} failed); then SIGTERM, restart on the same data, \
             time from spawn until `/readyz` answers 200.\n\n\
             | run | shutdown | ready | an order survived | RSS when ready |\n|---|---|---|---|---|",
            r.restart_orders, r.restart_create_s, r.restart_orders_failed
        );
        for (i, x) in r.restart.iter().enumerate() {
            let _ = writeln!(
                s,
                "| {} | {:.3} s | {:.3} s | {} | {:.0} MiB |",
                i + 1,
                x.shutdown_s,
                x.ready_s,
                x.order_survived,
                x.rss_after_ready_mib
            );
        }
        let _ = writeln!(s, "\nMedian ready: {:.3} s.\n", r.restart_median_ready_s);
    }

    if !r.export.is_empty() {
        let _ = writeln!(
            s,
            "## Export of a one-hour trip (trackline only)\n\n\
             | format | fixes | bytes | median time | runs |\n|---|---|---|---|---|"
        );
        for f in ["gpx", "json"] {
            let runs: Vec<&ExportRun> = r.export.iter().filter(|e| e.format == f).collect();
            if runs.is_empty() {
                continue;
            }
            let secs: Vec<f64> = runs.iter().map(|e| e.seconds * 1000.0).collect();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.1} ms | {} |",
                f,
                runs[0].fixes,
                runs[0].bytes,
                median(&secs),
                secs.iter()
                    .map(|x| format!("{x:.1}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        s.push('\n');
    }

    if !r.errors.is_empty() {
        let _ = writeln!(s, "## Errors during the run\n");
        for e in &r.errors {
            let _ = writeln!(s, "- {e}");
        }
        s.push('\n');
    }
    if !notes.trim().is_empty() {
        s.push_str(notes.trim_end());
        s.push('\n');
    }
    s
}

fn fmt_us_fine(x: f64) -> String {
    if x.is_nan() {
        "-".into()
    } else {
        format!("{x:.1} us")
    }
}

fn throughput_table(s: &mut String, table: &BTreeMap<String, PeerLoad>) {
    let tl_thr = table
        .get("trackline")
        .map(|x| x.median_delivered_fixes_per_s);
    let _ = writeln!(
        s,
        "| peer | delivered fixes/s | runs | trackline / peer | server CPU (cores) | server RSS | e2e p50 | e2e p99 | errors |\n\
         |---|---|---|---|---|---|---|---|---|"
    );
    for p in Peer::ALL {
        let Some(x) = table.get(p.name()) else {
            continue;
        };
        let ratio = tl_thr.map_or("-".into(), |t| {
            format!("{:.2}x", t / x.median_delivered_fixes_per_s)
        });
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.2} | {:.0} MiB | {} | {} | {} |",
            p.name(),
            fmt_rate(x.median_delivered_fixes_per_s),
            runs_of(
                &x.runs
                    .iter()
                    .map(|r| r.delivered_fixes_per_s)
                    .collect::<Vec<_>>()
            ),
            ratio,
            x.median_server_cpu_cores,
            x.median_server_rss_mib,
            fmt_us(x.median_p50_us),
            fmt_us(x.median_p99_us),
            x.errors
        );
    }
    if let Some(t) = table.get("trackline") {
        let _ = writeln!(
            s,
            "\ntrackline ack latency (fix sent -> durable Ack) at this load: p50 {}, p99 {}.",
            fmt_us(t.median_ack_p50_us),
            fmt_us(t.median_ack_p99_us)
        );
    }
    s.push('\n');
}

/// Rows of the disk table at most: a long run's samples are thinned to about this many.
const DISK_TABLE_ROWS: usize = 12;

fn fmt_mib(x: Option<f64>) -> String {
    x.filter(|v| v.is_finite())
        .map_or("-".into(), |v| format!("{v:.0} MiB"))
}

fn fmt_ratio(a: f64, b: Option<f64>) -> String {
    match b {
        Some(b) if a.is_finite() && b.is_finite() && b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    }
}

fn schedule_text(f: &FleetReport) -> String {
    use crate::course::Periods;
    match f.schedule.map(|s| s.periods) {
        Some(Periods::Fixed(ms)) => format!("one fix every {:.2} s", f64::from(ms) / 1000.0),
        Some(Periods::Between(lo, hi)) => format!(
            "each courier its own period of {:.0}-{:.0} s",
            f64::from(lo) / 1000.0,
            f64::from(hi) / 1000.0
        ),
        None => "-".into(),
    }
}

/// The "Fleet workload" section of BENCHMARKS.md.
fn fleet_section(s: &mut String, f: &FleetReport) {
    let relay = f.side_by_side.get(Peer::Relay.name());
    let seconds = f.side_by_side.values().next().map_or(0.0, |r| r.seconds);
    let _ = writeln!(
        s,
        "## Fleet workload: {} couriers, {}, open loop\n\n\
         What real fleets send: every courier one fix per frame, on a connection idle since its \
         last one, one watcher per order; {:.0} fixes/s offered. Device times follow wall time, \
         positions a course at 5-15 m/s with GPS noise. One run per peer ({seconds:.0} s \
         measured each, peers one after the other), not a median. Server CPU per fix is the \
         server's CPU time over the measured window divided by the fixes its watchers received.\n",
        f.couriers,
        schedule_text(f),
        f.offered_fixes_per_s,
    );
    let _ = writeln!(
        s,
        "| peer | delivered fixes/s | server CPU (cores) | server CPU per fix | / relay's | client CPU (cores) | errors |\n\
         |---|---|---|---|---|---|---|"
    );
    for p in Peer::ALL {
        let Some(x) = f.side_by_side.get(p.name()) else {
            continue;
        };
        let _ = writeln!(
            s,
            "| {} | {} | {:.2} | {} | {} | {:.2} | {} |",
            p.name(),
            fmt_rate(x.load.delivered_fixes_per_s),
            x.load.server_cpu_cores,
            fmt_us(x.server_cpu_us_per_fix),
            fmt_ratio(
                x.server_cpu_us_per_fix,
                relay.map(|r| r.server_cpu_us_per_fix)
            ),
            x.load.client_cpu_cores,
            x.load.errors + x.load.stalls
        );
    }
    let _ = writeln!(
        s,
        "\n| peer | e2e p50 | e2e p99 | e2e p99.9 | e2e max | ack p50 | ack p99 |\n|---|---|---|---|---|---|---|"
    );
    for p in Peer::ALL {
        let Some(x) = f.side_by_side.get(p.name()) else {
            continue;
        };
        let l = &x.load;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            p.name(),
            fmt_us(l.e2e.p50_us),
            fmt_us(l.e2e.p99_us),
            fmt_us(l.e2e.p999_us),
            fmt_us(l.e2e.max_us),
            fmt_us(l.ack.p50_us),
            fmt_us(l.ack.p99_us)
        );
    }

    let _ = writeln!(
        s,
        "\n**Server memory over time** (RSS sampled from /proc during the run):\n\n\
         | run | measured | RSS at 1 min | RSS at end |\n|---|---|---|---|"
    );
    let runs = Peer::ALL
        .into_iter()
        .filter_map(|p| {
            f.side_by_side
                .get(p.name())
                .map(|r| (p.name().to_string(), r))
        })
        .chain(
            f.long
                .iter()
                .map(|r| ("trackline, long run".to_string(), r)),
        );
    for (name, x) in runs {
        let _ = writeln!(
            s,
            "| {name} | {:.0} s | {} | {} |",
            x.seconds,
            fmt_mib(x.rss_at_1min_mib),
            fmt_mib(x.rss_end_mib)
        );
    }

    if let Some(x) = f.over_time() {
        let with_disk: Vec<&fleet::Sample> =
            x.samples.iter().filter(|smp| smp.disk.is_some()).collect();
        if !with_disk.is_empty() {
            let _ = writeln!(
                s,
                "\n**trackline's data dir over time** ({} couriers for {:.0} s; the whole dir, \
                 recursively, as `du` counts it, divided by `trackline_fixes_stored_total`):\n\n\
                 | time | data dir | apparent size | fixes stored | bytes per fix |\n|---|---|---|---|---|",
                x.couriers, x.seconds
            );
            let step = with_disk.len().div_ceil(DISK_TABLE_ROWS).max(1);
            let last = with_disk.len() - 1;
            for (k, smp) in with_disk.iter().enumerate() {
                if k % step != 0 && k != last {
                    continue;
                }
                let d = smp.disk.unwrap_or_default();
                let _ = writeln!(
                    s,
                    "| {:.0} s | {:.2} MiB | {:.2} MiB | {} | {} |",
                    smp.t_s,
                    d.allocated_bytes as f64 / 1048576.0,
                    d.apparent_bytes as f64 / 1048576.0,
                    smp.fixes_stored.map_or("-".into(), |n| n.to_string()),
                    smp.disk_bytes_per_fix
                        .map_or("-".into(), |b| format!("{b:.1}"))
                );
            }
            if let Some(t) = &x.disk_trend {
                let _ = writeln!(
                    s,
                    "\nOver the last half: **{}** ({:+.1} % by the fitted line, {:+.2} bytes per \
                     fix per minute); the disk grew {:.1} bytes per fix stored then.",
                    t.verdict,
                    t.last_half_change * 100.0,
                    t.last_half_slope_per_min,
                    t.last_half_marginal_bytes_per_fix
                );
            }
            if let Some(d) = x.disk_after_stop {
                let _ = writeln!(
                    s,
                    "After the server stopped: {:.2} MiB in {} files.",
                    d.allocated_bytes as f64 / 1048576.0,
                    d.files
                );
            }
        }
    }

    if !f.search.is_empty() {
        let best = |p: &str| f.search.get(p).and_then(|x| x.max_sustained_fixes_per_s);
        // A relay that passed every step has a higher maximum than shown: the ratio is a bound.
        let relay_open = f
            .search
            .get(Peer::Relay.name())
            .is_some_and(|x| x.passed_every_step);
        let _ = writeln!(
            s,
            "\n**Highest rate sustained** with e2e p99 <= {:.0} ms and at least {:.0} % of the \
             fixes delivered: offered rates stepped up (couriers at one fix per second up to {} \
             couriers, the descriptor limit, then those couriers faster), a fresh server per step, \
             stopped at the first step that fails{}. `>=`: every step passed, the peer's maximum \
             is higher.\n\n\
             | peer | max fixes/s | / relay's | couriers x period there | server CPU there (cores) | client CPU there | first failure |\n\
             |---|---|---|---|---|---|---|",
            f.p99_bar_ms,
            f.min_delivered * 100.0,
            f.courier_cap,
            match f.search_bisect {
                0 => String::new(),
                n => format!(", then {n} bisecting step(s) between the last pass and it"),
            }
        );
        for p in Peer::ALL {
            let Some(x) = f.search.get(p.name()) else {
                continue;
            };
            let at_max = x
                .steps
                .iter()
                .find(|st| Some(st.target_fixes_per_s) == x.max_sustained_fixes_per_s);
            let failure = x
                .steps
                .iter()
                .filter(|st| st.verdict != fleet::Verdict::Pass)
                .min_by(|a, b| a.target_fixes_per_s.total_cmp(&b.target_fixes_per_s))
                .map_or("none".into(), |st| {
                    let why = st.verdict.text();
                    match &st.load {
                        Some(l) => format!(
                            "{:.0}/s: {why} (p99 {}, {:.1} % delivered)",
                            st.target_fixes_per_s,
                            fmt_us(l.e2e.p99_us),
                            100.0 * l.delivered as f64 / l.sent.max(1) as f64
                        ),
                        None => format!("{:.0}/s: {why}", st.target_fixes_per_s),
                    }
                });
            let max = x.max_sustained_fixes_per_s.map_or("-".into(), |m| {
                if x.passed_every_step {
                    format!(">= {m:.0}")
                } else {
                    format!("{m:.0}")
                }
            });
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |",
                p.name(),
                max,
                x.max_sustained_fixes_per_s.map_or("-".into(), |m| {
                    let ratio = fmt_ratio(m, best(Peer::Relay.name()));
                    if relay_open && p != Peer::Relay {
                        format!("<= {ratio}")
                    } else {
                        ratio
                    }
                }),
                at_max.map_or("-".into(), |st| format!(
                    "{} x {} ms",
                    st.couriers, st.period_ms
                )),
                x.server_cpu_cores_at_max
                    .map_or("-".into(), |c| format!("{c:.2}")),
                x.client_cpu_cores_at_max
                    .map_or("-".into(), |c| format!("{c:.2}")),
                failure
            );
        }
    }
    for e in &f.errors {
        let _ = writeln!(s, "\n- {e}");
    }
    s.push('\n');
}
