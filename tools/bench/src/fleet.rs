//! The fleet scenario: many couriers, each sending one fix every 1-5 s on a connection that was
//! idle a moment ago, one watcher per order, open loop, against every peer in one run. Besides
//! latency it measures what a fix costs the server (CPU time per delivered fix), how its memory
//! and (for trackline) its data dir grow over time, and the highest rate each peer sustains with
//! a bounded p99.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;

use crate::course::{Periods, Schedule};
use crate::load::{self, LoadResult, LoadSpec, Pace, Window};
use crate::peers::{self, Peer};
use crate::stats::{disk_usage, load_average, prometheus_counter, sample_proc, slope, DiskUsage};

/// One fix per second per courier: the period of `--mode 1s`.
const ONE_SECOND_MS: u32 = 1000;
/// `--mode mixed`: each courier's period is drawn from this range (ms).
const MIXED_PERIODS_MS: (u32, u32) = (1000, 5000);
/// Descriptors each process keeps for itself besides the load's sockets (files, sled, listeners,
/// the HTTP client).
const DESCRIPTOR_HEADROOM: u64 = 1000;
/// Sockets per courier on each side: the courier's own and its watcher's.
const SOCKETS_PER_COURIER: u64 = 2;
/// Bytes per fix counts as flat when the line fitted over the last half of a run moves it by at
/// most this fraction of its mean there.
const FLAT_WITHIN: f64 = 0.10;
/// A search step is the generator's fault rather than the peer's success when it offered less
/// than this share of its target (it shares the cores with the server).
const GENERATOR_SHARE: f64 = 0.97;
/// The rate search bisects to this grain (fixes/s).
const BISECT_GRAIN: f64 = 100.0;
/// The metric trackline counts stored fixes in.
const STORED_METRIC: &str = "trackline_fixes_stored_total";
/// A sample's HTTP call to /metrics may take this long before the sample goes without it.
const METRICS_TIMEOUT: Duration = Duration::from_secs(2);

/// How often each courier sends.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// One fix per second each.
    #[value(name = "1s")]
    OneSecond,
    /// Each courier its own period, drawn from 1-5 s.
    Mixed,
}

/// A yes/no flag that reads `on` or `off`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Switch {
    On,
    Off,
}

/// The fleet scenario's flags. As `trackline-bench fleet` they read as written here; inside
/// `trackline-bench all` each one gets a `fleet-` prefix (`--fleet-couriers`); the ids carry the
/// prefix already so that they never clash with the suite's own.
#[derive(clap::Args, Clone, Debug, Serialize)]
pub struct FleetArgs {
    /// Couriers in the side-by-side runs and trackline's long run (each with one order and one
    /// watcher; capped by the descriptor limit).
    #[arg(id = "fleet_couriers", long = "couriers", default_value_t = 2000)]
    pub couriers: usize,
    /// 1s: one fix per second per courier; mixed: each courier its own period from 1-5 s.
    #[arg(id = "fleet_mode", long = "mode", value_enum, default_value_t = Mode::OneSecond)]
    pub mode: Mode,
    /// Total fixes/s over all couriers, at one period for all (instead of a mode).
    #[arg(id = "fleet_rate", long = "rate", conflicts_with = "fleet_mode")]
    pub rate: Option<f64>,
    /// Seconds measured per peer side by side (after the warm-up).
    #[arg(id = "fleet_seconds", long = "seconds", default_value_t = 120.0)]
    pub seconds: f64,
    /// Seconds of warm-up before each measured run.
    #[arg(id = "fleet_warmup", long = "warmup", default_value_t = 10.0)]
    pub warmup: f64,
    /// Seconds of trackline's long run, the source of the memory and disk over time; 0: none
    /// (its side-by-side run's samples serve).
    #[arg(
        id = "fleet_long_seconds",
        long = "long-seconds",
        default_value_t = 600.0
    )]
    pub long_seconds: f64,
    /// Peers to run (comma-separated).
    #[arg(
        id = "fleet_peers",
        long = "peers",
        value_delimiter = ',',
        default_value = "trackline,relay,durable_relay,nats,mosquitto"
    )]
    pub peers: Vec<String>,
    /// Seconds between samples of the server's RSS and data dir.
    #[arg(
        id = "fleet_sample_every_s",
        long = "sample-every-s",
        default_value_t = 10.0
    )]
    pub sample_every_s: f64,
    /// Search each peer's highest rate with p99 within the bar.
    #[arg(
        id = "fleet_max_rate_search",
        long = "max-rate-search",
        value_enum,
        default_value_t = Switch::On
    )]
    pub max_rate_search: Switch,
    /// The search's offered rates (fixes/s), tried upwards: couriers at 1 fix/s up to the
    /// descriptor limit, then those couriers faster.
    #[arg(
        id = "fleet_search_rates",
        long = "search-rates",
        value_delimiter = ',',
        default_value = "2000,4000,6000,9000,12000,16000"
    )]
    pub search_rates: Vec<f64>,
    /// Seconds measured per search step (after its warm-up).
    #[arg(
        id = "fleet_search_seconds",
        long = "search-seconds",
        default_value_t = 20.0
    )]
    pub search_seconds: f64,
    /// Seconds of warm-up per search step.
    #[arg(
        id = "fleet_search_warmup",
        long = "search-warmup",
        default_value_t = 5.0
    )]
    pub search_warmup: f64,
    /// Steps that bisect between the last passing and the first failing rate.
    #[arg(
        id = "fleet_search_bisect",
        long = "search-bisect",
        default_value_t = 1
    )]
    pub search_bisect: usize,
    /// The search's bar: end-to-end p99 at most this, in ms.
    #[arg(id = "fleet_p99_ms", long = "p99-ms", default_value_t = 20.0)]
    pub p99_ms: f64,
    /// The search's bar: at least this share of the sent fixes delivered.
    #[arg(
        id = "fleet_min_delivered",
        long = "min-delivered",
        default_value_t = 0.99
    )]
    pub min_delivered: f64,
    /// Seed of the couriers' periods, phases and courses.
    #[arg(id = "fleet_seed", long = "seed", default_value_t = 1)]
    pub seed: u64,
}

impl FleetArgs {
    /// When the couriers send.
    pub fn schedule(&self) -> Schedule {
        let periods = match (self.rate, self.mode) {
            (Some(rate), _) => Periods::Fixed(period_for(self.couriers, rate)),
            (None, Mode::OneSecond) => Periods::Fixed(ONE_SECOND_MS),
            (None, Mode::Mixed) => Periods::Between(MIXED_PERIODS_MS.0, MIXED_PERIODS_MS.1),
        };
        Schedule {
            periods,
            seed: self.seed,
        }
    }

    /// The peers asked for, in the report's order; unknown names are an error.
    pub fn peer_list(&self) -> Result<Vec<Peer>> {
        for name in &self.peers {
            if Peer::parse(name).is_none() {
                anyhow::bail!("unknown peer {name}");
            }
        }
        Ok(Peer::ALL
            .into_iter()
            .filter(|p| self.peers.iter().any(|x| x == p.name()))
            .collect())
    }
}

/// The period (ms) at which `couriers` couriers offer `rate` fixes/s together.
fn period_for(couriers: usize, rate: f64) -> u32 {
    (1000.0 * couriers as f64 / rate.max(1e-3)).round().max(1.0) as u32
}

/// The most couriers a load may have: each side is one process under `nofile` descriptors.
pub fn courier_cap(nofile: u64) -> usize {
    (nofile.saturating_sub(DESCRIPTOR_HEADROOM) / SOCKETS_PER_COURIER).max(1) as usize
}

// ---------------------------------------------------------------------------------------------
// The report

/// One sample of the server while a load runs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    /// Seconds since the first fix.
    pub t_s: f64,
    pub rss_mib: f64,
    /// trackline: its whole data dir, recursively.
    pub disk: Option<DiskUsage>,
    /// trackline: `trackline_fixes_stored_total`.
    pub fixes_stored: Option<u64>,
    /// Allocated bytes of the data dir per stored fix.
    pub disk_bytes_per_fix: Option<f64>,
}

/// Whether the data dir grows in step with the fixes stored.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DiskTrend {
    /// Bytes on disk per stored fix at the last sample.
    pub end_bytes_per_fix: f64,
    /// The line fitted to bytes per fix over the last half of the run: bytes per fix per minute.
    pub last_half_slope_per_min: f64,
    /// The same line's change across the last half, as a fraction of the mean there.
    pub last_half_change: f64,
    /// What the disk grew per fix stored during the last half.
    pub last_half_marginal_bytes_per_fix: f64,
    /// `flat`, `growing` or `falling`.
    pub verdict: String,
}

/// One peer's fleet run.
#[derive(Debug, Clone, Serialize)]
pub struct FleetRun {
    pub couriers: usize,
    pub seconds: f64,
    pub load_average: String,
    pub load: LoadResult,
    /// Server CPU time per delivered fix, microseconds.
    pub server_cpu_us_per_fix: f64,
    pub rss_at_1min_mib: Option<f64>,
    pub rss_end_mib: Option<f64>,
    pub samples: Vec<Sample>,
    pub disk_trend: Option<DiskTrend>,
    /// trackline: its data dir once the server stopped.
    pub disk_after_stop: Option<DiskUsage>,
}

/// Why a search step passed or not.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    /// End-to-end p99 above the bar.
    P99OverBar,
    /// Fewer fixes delivered than the bar's share of those sent.
    Undelivered,
    /// The load generator did not manage to offer the rate.
    GeneratorBehind,
    /// The run itself failed (a peer that did not start, connections refused).
    Failed(String),
}

impl Verdict {
    /// The verdict in words, for the report.
    pub fn text(&self) -> String {
        match self {
            Verdict::Pass => "passed".into(),
            Verdict::P99OverBar => "p99 over the bar".into(),
            Verdict::Undelivered => "fixes not delivered".into(),
            Verdict::GeneratorBehind => "the load generator fell behind".into(),
            Verdict::Failed(e) => format!("failed: {e}"),
        }
    }
}

/// One step of the rate search.
#[derive(Debug, Clone, Serialize)]
pub struct SearchStep {
    pub target_fixes_per_s: f64,
    pub couriers: usize,
    pub period_ms: u32,
    pub verdict: Verdict,
    pub load: Option<LoadResult>,
}

/// One peer's rate search.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SearchResult {
    pub steps: Vec<SearchStep>,
    /// The highest rate that passed; `None` when none did.
    pub max_sustained_fixes_per_s: Option<f64>,
    pub server_cpu_cores_at_max: Option<f64>,
    pub client_cpu_cores_at_max: Option<f64>,
    /// Every step passed: the peer's maximum is above the highest rate tried.
    pub passed_every_step: bool,
}

/// The whole scenario.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FleetReport {
    pub couriers: usize,
    pub schedule: Option<Schedule>,
    pub offered_fixes_per_s: f64,
    /// The most couriers one load may have under the descriptor limit.
    pub courier_cap: usize,
    pub p99_bar_ms: f64,
    pub min_delivered: f64,
    /// Bisecting steps after the first failing rate.
    pub search_bisect: usize,
    pub side_by_side: BTreeMap<String, FleetRun>,
    /// trackline's long run, for memory and disk over time.
    pub long: Option<FleetRun>,
    pub search: BTreeMap<String, SearchResult>,
    pub errors: Vec<String>,
}

impl FleetReport {
    /// The run whose samples show trackline over time: the long one if there was one.
    pub fn over_time(&self) -> Option<&FleetRun> {
        self.long
            .as_ref()
            .or_else(|| self.side_by_side.get(Peer::Trackline.name()))
    }
}

// ---------------------------------------------------------------------------------------------
// Pure parts

/// Whether bytes per stored fix stayed flat over the last half of the samples; `None` with fewer
/// than three usable samples there.
pub fn disk_trend(samples: &[Sample]) -> Option<DiskTrend> {
    let usable: Vec<(f64, f64, f64)> = samples
        .iter()
        .filter_map(|s| {
            let stored = s.fixes_stored.filter(|&n| n > 0)? as f64;
            Some((s.t_s, s.disk?.allocated_bytes as f64, stored))
        })
        .collect();
    let &(t_end, disk_end, stored_end) = usable.last()?;
    let half: Vec<&(f64, f64, f64)> = usable.iter().filter(|p| p.0 >= t_end / 2.0).collect();
    if half.len() < 3 {
        return None;
    }
    let points: Vec<(f64, f64)> = half.iter().map(|p| (p.0, p.1 / p.2)).collect();
    let per_s = slope(&points)?;
    let mean = points.iter().map(|p| p.1).sum::<f64>() / points.len() as f64;
    let span = t_end - half[0].0;
    let change = if mean > 0.0 { per_s * span / mean } else { 0.0 };
    let (_, disk_mid, stored_mid) = *half[0];
    let verdict = if change.abs() <= FLAT_WITHIN {
        "flat"
    } else if change > 0.0 {
        "growing"
    } else {
        "falling"
    };
    Some(DiskTrend {
        end_bytes_per_fix: disk_end / stored_end,
        last_half_slope_per_min: per_s * 60.0,
        last_half_change: change,
        last_half_marginal_bytes_per_fix: (disk_end - disk_mid)
            / (stored_end - stored_mid).max(1.0),
        verdict: verdict.into(),
    })
}

/// RSS at the first sample at or after `t_s` (within half a sampling interval before it).
pub fn rss_at(samples: &[Sample], t_s: f64, every_s: f64) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.t_s >= t_s - every_s / 2.0)
        .map(|s| s.rss_mib)
}

/// Server CPU time per delivered fix, in microseconds (NaN when nothing was delivered).
pub fn cpu_us_per_fix(r: &LoadResult) -> f64 {
    if r.delivered_fixes_per_s > 0.0 {
        r.server_cpu_cores * 1e6 / r.delivered_fixes_per_s
    } else {
        f64::NAN
    }
}

/// A search step's load for `target` fixes/s: couriers at one fix per second up to `cap`, and past
/// it the cap's couriers faster. Returns (couriers, period in ms).
pub fn plan_step(target: f64, cap: usize) -> (usize, u32) {
    let couriers = ((target * f64::from(ONE_SECOND_MS) / 1000.0).round() as usize).clamp(1, cap);
    (couriers, period_for(couriers, target))
}

/// The bar a search step must pass.
#[derive(Debug, Clone, Copy)]
pub struct Bar {
    pub p99_us: f64,
    pub min_delivered: f64,
}

/// Whether a step's load passed the bar at `target` fixes/s.
pub fn judge(target: f64, r: &LoadResult, bar: Bar) -> Verdict {
    if r.offered_fixes_per_s < target * GENERATOR_SHARE {
        Verdict::GeneratorBehind
    } else if (r.delivered as f64) < r.sent as f64 * bar.min_delivered {
        Verdict::Undelivered
    } else if r.e2e.p99_us > bar.p99_us {
        Verdict::P99OverBar
    } else {
        Verdict::Pass
    }
}

/// The rate search: the given rates upwards until one fails, then a few bisecting steps between
/// the last pass (or nothing) and the first failure.
#[derive(Debug, Clone)]
pub struct RateSearch {
    rates: Vec<f64>,
    next: usize,
    bisect_left: usize,
    pass: Option<f64>,
    fail: Option<f64>,
}

impl RateSearch {
    pub fn new(mut rates: Vec<f64>, bisect: usize) -> Self {
        rates.retain(|r| r.is_finite() && *r > 0.0);
        rates.sort_by(f64::total_cmp);
        rates.dedup();
        Self {
            rates,
            next: 0,
            bisect_left: bisect,
            pass: None,
            fail: None,
        }
    }

    /// The next rate to try, or `None` when the search is over.
    pub fn next_rate(&self) -> Option<f64> {
        let Some(fail) = self.fail else {
            return self.rates.get(self.next).copied();
        };
        if self.bisect_left == 0 {
            return None;
        }
        let low = self.pass.unwrap_or(0.0);
        let mid = ((low + fail) / 2.0 / BISECT_GRAIN).round() * BISECT_GRAIN;
        (mid > low && mid < fail).then_some(mid)
    }

    /// Records how `rate` went.
    pub fn record(&mut self, rate: f64, passed: bool) {
        if self.fail.is_some() {
            self.bisect_left = self.bisect_left.saturating_sub(1);
        } else {
            self.next += 1;
        }
        if passed {
            self.pass = Some(self.pass.map_or(rate, |p| p.max(rate)));
        } else {
            self.fail = Some(self.fail.map_or(rate, |f| f.min(rate)));
        }
    }

    /// The highest rate that passed.
    pub fn best(&self) -> Option<f64> {
        self.pass
    }

    /// True when nothing failed.
    pub fn passed_every_step(&self) -> bool {
        self.fail.is_none() && self.pass.is_some()
    }
}

// ---------------------------------------------------------------------------------------------
// Running it

fn fleet_spec(couriers: usize, schedule: Schedule, warmup: f64, seconds: f64) -> LoadSpec {
    LoadSpec {
        couriers,
        pace: Pace::Fleet(schedule),
        batch: 1,
        watchers: 1,
        warmup: Duration::from_secs_f64(warmup),
        duration: Duration::from_secs_f64(seconds),
        extra_orders: 0,
    }
}

/// Samples the server every `every` from the first fix until the couriers stop.
async fn sample_until(
    w: Window,
    pid: u32,
    metrics_url: Option<String>,
    data_dir: Option<PathBuf>,
    every: Duration,
) -> Vec<Sample> {
    let http = reqwest::Client::builder()
        .timeout(METRICS_TIMEOUT)
        .build()
        .ok();
    let mut out = Vec::new();
    for k in 0u32.. {
        let at = (w.start + every * k).min(w.t1);
        tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
        let mut s = Sample {
            t_s: Instant::now()
                .saturating_duration_since(w.start)
                .as_secs_f64(),
            rss_mib: sample_proc(pid).map_or(f64::NAN, |p| p.rss_kib as f64 / 1024.0),
            ..Default::default()
        };
        if let (Some(url), Some(http)) = (&metrics_url, &http) {
            // Read the counter before the dir, so the dir holds at least the fixes counted.
            if let Ok(r) = http.get(url).send().await {
                if let Ok(text) = r.text().await {
                    s.fixes_stored = prometheus_counter(&text, STORED_METRIC).map(|v| v as u64);
                }
            }
        }
        if let Some(dir) = data_dir.clone() {
            s.disk = tokio::task::spawn_blocking(move || disk_usage(&dir))
                .await
                .ok();
        }
        if let (Some(d), Some(n)) = (s.disk, s.fixes_stored.filter(|&n| n > 0)) {
            s.disk_bytes_per_fix = Some(d.allocated_bytes as f64 / n as f64);
        }
        out.push(s);
        if at >= w.t1 {
            break;
        }
    }
    out
}

/// One fleet load against a fresh `peer`, sampling it meanwhile.
async fn measured_run(
    peer: Peer,
    work: &Path,
    spec: &LoadSpec,
    every: Duration,
) -> Result<FleetRun> {
    let load_average = load_average();
    let server = peers::start(peer, work).await?;
    let (metrics_url, data_dir) = if peer == Peer::Trackline {
        (
            Some(format!("http://{}/metrics", server.addr)),
            Some(server.dir.clone()),
        )
    } else {
        (None, None)
    };
    let pid = server.pid();
    let r = load::run_observed(peer, server.addr, server.addr, pid, spec, |w| {
        sample_until(w, pid, metrics_url, data_dir.clone(), every)
    })
    .await;
    server.stop(Duration::from_secs(20)).await;
    let (load, samples) = r?;
    let every_s = every.as_secs_f64();
    Ok(FleetRun {
        couriers: spec.couriers,
        seconds: spec.duration.as_secs_f64(),
        load_average,
        server_cpu_us_per_fix: cpu_us_per_fix(&load),
        load,
        rss_at_1min_mib: rss_at(&samples, 60.0, every_s),
        rss_end_mib: samples.last().map(|s| s.rss_mib),
        disk_trend: disk_trend(&samples),
        disk_after_stop: data_dir.map(|d| disk_usage(&d)),
        samples,
    })
}

/// Steps `peer` up the rates until one fails the bar.
async fn search_peer(peer: Peer, args: &FleetArgs, work: &Path, cap: usize) -> SearchResult {
    let bar = Bar {
        p99_us: args.p99_ms * 1000.0,
        min_delivered: args.min_delivered,
    };
    let mut search = RateSearch::new(args.search_rates.clone(), args.search_bisect);
    let mut out = SearchResult::default();
    while let Some(target) = search.next_rate() {
        let (couriers, period_ms) = plan_step(target, cap);
        let schedule = Schedule {
            periods: Periods::Fixed(period_ms),
            seed: args.seed,
        };
        eprintln!(
            "fleet search: {} at {target:.0} fixes/s ({couriers} couriers every {period_ms} ms)",
            peer.name()
        );
        let spec = fleet_spec(couriers, schedule, args.search_warmup, args.search_seconds);
        let (verdict, load) = match load::run_fresh(peer, work, &spec).await {
            Ok(r) => (judge(target, &r, bar), Some(r)),
            Err(e) => (Verdict::Failed(format!("{e:#}")), None),
        };
        if let Some(r) = &load {
            eprintln!(
                "  {}: delivered {:.0}/s, p99 {:.1} ms, server {:.2} cores",
                verdict.text(),
                r.delivered_fixes_per_s,
                r.e2e.p99_us / 1000.0,
                r.server_cpu_cores
            );
        }
        let passed = verdict == Verdict::Pass;
        search.record(target, passed);
        if passed && search.best() == Some(target) {
            out.max_sustained_fixes_per_s = Some(target);
            out.server_cpu_cores_at_max = load.as_ref().map(|r| r.server_cpu_cores);
            out.client_cpu_cores_at_max = load.as_ref().map(|r| r.client_cpu_cores);
        }
        out.steps.push(SearchStep {
            target_fixes_per_s: target,
            couriers,
            period_ms,
            verdict,
            load,
        });
    }
    out.passed_every_step = search.passed_every_step();
    out
}

/// The fleet scenario against `peers` (already checked to be installed).
pub async fn run(args: &FleetArgs, peers: &[Peer], work: &Path, nofile: u64) -> FleetReport {
    let cap = courier_cap(nofile);
    let couriers = args.couriers.min(cap);
    let schedule = args.schedule();
    let every = Duration::from_secs_f64(args.sample_every_s.max(0.1));
    let mut report = FleetReport {
        couriers,
        schedule: Some(schedule),
        offered_fixes_per_s: schedule.offered_per_s(couriers),
        courier_cap: cap,
        p99_bar_ms: args.p99_ms,
        min_delivered: args.min_delivered,
        search_bisect: args.search_bisect,
        ..Default::default()
    };
    if couriers < args.couriers {
        report.errors.push(format!(
            "{} couriers asked, {couriers} fit under the descriptor limit of {nofile}",
            args.couriers
        ));
    }
    let spec = fleet_spec(couriers, schedule, args.warmup, args.seconds);
    for &p in peers {
        eprintln!(
            "fleet side by side: {} x {couriers} couriers, {:.0} fixes/s for {:.0} s",
            p.name(),
            report.offered_fixes_per_s,
            args.seconds
        );
        match measured_run(p, work, &spec, every).await {
            Ok(r) => {
                eprintln!(
                    "  {:.0} us CPU per fix, p99 {:.1} ms",
                    r.server_cpu_us_per_fix,
                    r.load.e2e.p99_us / 1000.0
                );
                report.side_by_side.insert(p.name().into(), r);
            }
            Err(e) => report.errors.push(format!("fleet {}: {e:#}", p.name())),
        }
    }
    if args.long_seconds > 0.0 && peers.contains(&Peer::Trackline) {
        eprintln!("fleet long run: trackline for {:.0} s", args.long_seconds);
        let spec = fleet_spec(couriers, schedule, args.warmup, args.long_seconds);
        match measured_run(Peer::Trackline, work, &spec, every).await {
            Ok(r) => {
                if let Some(t) = &r.disk_trend {
                    eprintln!("  {:.1} bytes per fix, {}", t.end_bytes_per_fix, t.verdict);
                }
                report.long = Some(r);
            }
            Err(e) => report.errors.push(format!("fleet long run: {e:#}")),
        }
    }
    if args.max_rate_search == Switch::On {
        for &p in peers {
            let s = search_peer(p, args, work, cap).await;
            report.search.insert(p.name().into(), s);
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::LatencySummary;

    fn sample(t_s: f64, bytes: u64, stored: u64) -> Sample {
        Sample {
            t_s,
            rss_mib: 100.0 + t_s,
            disk: Some(DiskUsage {
                allocated_bytes: bytes,
                apparent_bytes: bytes,
                files: 3,
            }),
            fixes_stored: Some(stored),
            disk_bytes_per_fix: None,
        }
    }

    #[test]
    fn disk_that_grows_with_the_fixes_is_flat() {
        // 2,000 fixes/s, 20 bytes each plus a fixed 1 MiB: bytes per fix falls towards 20, and
        // over the last half it hardly moves.
        let s: Vec<Sample> = (0..=60)
            .map(|k| {
                let t = k as f64 * 10.0;
                let stored = (t * 2000.0) as u64;
                sample(t, (1 << 20) + stored * 20, stored)
            })
            .collect();
        let t = disk_trend(&s).unwrap();
        assert_eq!(t.verdict, "flat", "{t:?}");
        assert!((t.last_half_marginal_bytes_per_fix - 20.0).abs() < 1e-6);
        assert!((t.end_bytes_per_fix - 20.87).abs() < 0.01, "{t:?}");
    }

    #[test]
    fn disk_that_rewrites_per_fix_grows() {
        // Bytes growing with the square of the fixes (a record rewritten whole every fix).
        let s: Vec<Sample> = (1..=60)
            .map(|k| {
                let stored = k * 20_000;
                sample(k as f64 * 10.0, stored * (20 + k), stored)
            })
            .collect();
        let t = disk_trend(&s).unwrap();
        assert_eq!(t.verdict, "growing", "{t:?}");
        assert!(t.last_half_slope_per_min > 0.0);
    }

    #[test]
    fn disk_trend_needs_samples_with_stored_fixes() {
        assert_eq!(disk_trend(&[]), None);
        let few = [
            sample(0.0, 100, 0),
            sample(10.0, 200, 10),
            sample(20.0, 300, 20),
        ];
        assert_eq!(disk_trend(&few), None);
        let mut no_disk = sample(30.0, 1, 1);
        no_disk.disk = None;
        assert_eq!(disk_trend(&[no_disk]), None);
    }

    #[test]
    fn rss_at_one_minute_takes_the_nearest_later_sample() {
        let s: Vec<Sample> = (0..10).map(|k| sample(k as f64 * 10.02, 0, 0)).collect();
        assert_eq!(rss_at(&s, 60.0, 10.0), Some(100.0 + 6.0 * 10.02));
        assert_eq!(rss_at(&s, 600.0, 10.0), None);
    }

    #[test]
    fn steps_use_one_fix_per_second_until_the_descriptors_run_out() {
        assert_eq!(plan_step(2000.0, 9500), (2000, 1000));
        assert_eq!(plan_step(9000.0, 9500), (9000, 1000));
        // Past the cap the same couriers send faster.
        assert_eq!(plan_step(12_000.0, 9500), (9500, 792));
        assert_eq!(plan_step(0.5, 9500), (1, 2000));
        assert_eq!(courier_cap(20_000), 9500);
    }

    fn result(target: f64, delivered_share: f64, p99_ms: f64) -> LoadResult {
        let sent = (target * 20.0) as u64;
        LoadResult {
            offered_fixes_per_s: target,
            sent,
            delivered: (sent as f64 * delivered_share) as u64,
            e2e: LatencySummary {
                p99_us: p99_ms * 1000.0,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn a_step_passes_only_with_all_delivered_within_the_bar() {
        let bar = Bar {
            p99_us: 20_000.0,
            min_delivered: 0.99,
        };
        assert_eq!(judge(2000.0, &result(2000.0, 1.0, 5.0), bar), Verdict::Pass);
        assert_eq!(
            judge(2000.0, &result(2000.0, 1.0, 25.0), bar),
            Verdict::P99OverBar
        );
        assert_eq!(
            judge(2000.0, &result(2000.0, 0.9, 5.0), bar),
            Verdict::Undelivered
        );
        assert_eq!(
            judge(2000.0, &result(1500.0, 1.0, 5.0), bar),
            Verdict::GeneratorBehind
        );
    }

    /// Runs a search against a peer that sustains `limit` fixes/s; returns the rates tried.
    fn simulate(rates: &[f64], bisect: usize, limit: f64) -> (Vec<f64>, RateSearch) {
        let mut s = RateSearch::new(rates.to_vec(), bisect);
        let mut tried = Vec::new();
        while let Some(r) = s.next_rate() {
            tried.push(r);
            s.record(r, r <= limit);
            assert!(tried.len() < 100, "the search must end");
        }
        (tried, s)
    }

    #[test]
    fn the_search_steps_up_then_bisects_once() {
        let rates = [2000.0, 4000.0, 6000.0, 9000.0];
        let (tried, s) = simulate(&rates, 1, 5200.0);
        assert_eq!(tried, [2000.0, 4000.0, 6000.0, 5000.0]);
        assert_eq!(s.best(), Some(5000.0));
        assert!(!s.passed_every_step());
        let (tried, s) = simulate(&rates, 2, 4600.0);
        assert_eq!(tried, [2000.0, 4000.0, 6000.0, 5000.0, 4500.0]);
        assert_eq!(s.best(), Some(4500.0));
    }

    #[test]
    fn the_search_reports_a_peer_above_every_rate_and_one_below_all() {
        let (tried, s) = simulate(&[4000.0, 2000.0, 2000.0], 1, 1e9);
        assert_eq!(tried, [2000.0, 4000.0]);
        assert_eq!(s.best(), Some(4000.0));
        assert!(s.passed_every_step());
        let (tried, s) = simulate(&[2000.0, 4000.0], 1, 300.0);
        assert_eq!(tried, [2000.0, 1000.0]);
        assert_eq!(s.best(), None);
        let (tried, _) = simulate(&[2000.0, 4000.0], 0, 3000.0);
        assert_eq!(tried, [2000.0, 4000.0]);
    }

    #[test]
    fn modes_and_rates_give_their_periods() {
        let mut a = FleetArgs {
            couriers: 2000,
            mode: Mode::OneSecond,
            rate: None,
            seconds: 1.0,
            warmup: 1.0,
            long_seconds: 0.0,
            peers: vec!["relay".into(), "trackline".into()],
            sample_every_s: 10.0,
            max_rate_search: Switch::Off,
            search_rates: vec![],
            search_seconds: 1.0,
            search_warmup: 1.0,
            search_bisect: 0,
            p99_ms: 20.0,
            min_delivered: 0.99,
            seed: 1,
        };
        assert_eq!(a.schedule().periods, Periods::Fixed(1000));
        a.mode = Mode::Mixed;
        assert_eq!(a.schedule().periods, Periods::Between(1000, 5000));
        a.rate = Some(4000.0);
        assert_eq!(a.schedule().periods, Periods::Fixed(500));
        // The report's order, whatever the flag's.
        assert_eq!(a.peer_list().unwrap(), [Peer::Trackline, Peer::Relay]);
        a.peers.push("kafka".into());
        assert!(a.peer_list().is_err());
    }
}
