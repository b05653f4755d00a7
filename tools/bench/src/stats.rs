//! Measurement helpers: latency histograms and their summary, process CPU and memory from /proc,
//! the descriptor limit, and medians over runs.

use std::sync::Mutex;
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

/// A latency histogram in nanoseconds, 1 ns to 60 s, three significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// A latency histogram that every courier or watcher task records into, split into a few
/// shards so that tasks on different threads seldom wait for each other. A histogram is ~220
/// KiB: one per task would be gigabytes at fleet sizes, zeroed page by page while the load
/// runs (which once took the generator's two cores for seconds of the measured window).
pub struct SharedHistogram {
    shards: Box<[Mutex<Histogram<u64>>]>,
}

impl SharedHistogram {
    const SHARDS: usize = 16;

    pub fn new() -> Self {
        Self {
            shards: (0..Self::SHARDS)
                .map(|_| Mutex::new(new_histogram()))
                .collect(),
        }
    }

    /// Records `ns` for the task `key` (a courier's index: its shard).
    pub fn record(&self, key: usize, ns: u64) {
        let mut shard = self.shards[key % self.shards.len()]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Out of bounds (over 60 s) is dropped, as a per-task histogram dropped it.
        let _ = shard.record(ns);
    }

    /// Every shard's samples in one histogram.
    pub fn merged(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for shard in &self.shards {
            let shard = shard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Same bounds on both sides: adding cannot fail.
            let _ = all.add(&*shard);
        }
        all
    }
}

impl Default for SharedHistogram {
    fn default() -> Self {
        Self::new()
    }
}

/// Percentiles of a latency histogram, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl LatencySummary {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Self {
            count: h.len(),
            p50_us: us(h.value_at_quantile(0.50)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

/// CPU time and resident memory of one process, read from /proc.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcSample {
    /// user + system time, in clock ticks.
    pub cpu_ticks: u64,
    /// Resident set size, KiB.
    pub rss_kib: u64,
}

/// utime + stime (fields 14 and 15) from the text of /proc/<pid>/stat. The command name (field 2)
/// is in parentheses and may itself hold spaces or parentheses, so fields are counted from the
/// last ')'.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, so index 11; stime index 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// VmRSS in KiB from the text of /proc/<pid>/status.
pub fn parse_status_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

pub fn sample_proc(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(ProcSample {
        cpu_ticks: parse_stat_cpu_ticks(&stat)?,
        rss_kib: parse_status_rss_kib(&status)?,
    })
}

pub fn clock_ticks_per_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU use of a process between two samples, in cores (1.0 = one core busy).
pub struct CpuMeter {
    pid: u32,
    start: ProcSample,
    at: Instant,
}

impl CpuMeter {
    pub fn start(pid: u32) -> Self {
        Self {
            pid,
            start: sample_proc(pid).unwrap_or_default(),
            at: Instant::now(),
        }
    }

    /// (cores used since start, RSS now in KiB).
    pub fn stop(&self) -> (f64, u64) {
        let end = sample_proc(self.pid).unwrap_or_default();
        let secs = self.at.elapsed().as_secs_f64().max(1e-9);
        let cores =
            end.cpu_ticks.saturating_sub(self.start.cpu_ticks) as f64 / clock_ticks_per_s() / secs;
        (cores, end.rss_kib)
    }
}

/// Raises the soft descriptor limit to the hard one and returns it.
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a valid, owned struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        let wanted = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
            return lim.rlim_max;
        }
    }
    lim.rlim_cur
}

/// The median of a list (the mean of the middle two for an even count); NaN when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// What a directory holds on disk, recursively: allocated bytes as `du` counts them (blocks of
/// 512 bytes) and apparent bytes (file lengths). A file that vanishes meanwhile (a compacted log
/// segment) is simply not counted.
pub fn disk_usage(dir: &std::path::Path) -> DiskUsage {
    use std::os::unix::fs::MetadataExt;
    let mut usage = DiskUsage::default();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.is_dir() {
                todo.push(entry.path());
            } else {
                usage.allocated_bytes += meta.blocks() * 512;
                usage.apparent_bytes += meta.len();
                usage.files += 1;
            }
        }
    }
    usage
}

/// The size of a directory tree; see [`disk_usage`].
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct DiskUsage {
    pub allocated_bytes: u64,
    pub apparent_bytes: u64,
    pub files: u64,
}

/// The value of counter `name` in a Prometheus text exposition, summed over its label sets;
/// `None` when it is not there (a counter appears only once it was first incremented).
pub fn prometheus_counter(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        // `name 12` or `name{label="x"} 12`, not `name_other 12`.
        let value = if let Some(labelled) = rest.strip_prefix('{') {
            labelled.rsplit_once('}').map(|(_, v)| v)
        } else {
            rest.starts_with(' ').then_some(rest)
        };
        if let Some(v) = value.and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// The least-squares slope of `y` over `x`; `None` for fewer than two distinct `x`.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

/// The 1-minute load average.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_a_known_distribution() {
        let mut h = new_histogram();
        // 1..=1000 microseconds, once each.
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap();
        }
        let s = LatencySummary::of(&h);
        assert_eq!(s.count, 1000);
        // three significant digits: within 0.1 % of the exact rank.
        assert!((s.p50_us - 500.0).abs() <= 1.0, "{s:?}");
        assert!((s.p99_us - 990.0).abs() <= 1.0, "{s:?}");
        assert!((s.p999_us - 999.0).abs() <= 1.0, "{s:?}");
        assert!((s.max_us - 1000.0).abs() <= 1.0, "{s:?}");
    }

    #[test]
    fn a_shared_histogram_merges_what_every_shard_recorded() {
        let shared = SharedHistogram::new();
        for key in 0..100usize {
            shared.record(key, (key as u64 + 1) * 1000);
        }
        let s = LatencySummary::of(&shared.merged());
        assert_eq!(s.count, 100);
        assert!((s.p50_us - 50.0).abs() <= 0.1, "{s:?}");
        assert!((s.max_us - 100.0).abs() <= 0.1, "{s:?}");
    }

    #[test]
    fn summary_of_nothing_is_zero() {
        assert_eq!(
            LatencySummary::of(&new_histogram()),
            LatencySummary::default()
        );
    }

    #[test]
    fn stat_parsing_counts_fields_after_the_command_name() {
        // A command name with a space and a parenthesis must not shift the fields.
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                    250 50 0 0 20 0 3 0 12345 1000000 200 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(300));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn status_parsing_finds_vmrss() {
        let status = "Name:\ttrackline\nVmPeak:\t  900 kB\nVmRSS:\t   12345 kB\nThreads:\t4\n";
        assert_eq!(parse_status_rss_kib(status), Some(12345));
        assert_eq!(parse_status_rss_kib("Name:\tx\n"), None);
    }

    #[test]
    fn own_process_can_be_sampled() {
        let s = sample_proc(std::process::id()).expect("own /proc entry");
        assert!(s.rss_kib > 0);
    }

    #[test]
    fn disk_usage_counts_a_tree() {
        let dir = std::env::temp_dir().join(format!("bench-du-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("wal")).unwrap();
        std::fs::write(dir.join("a"), vec![1u8; 10_000]).unwrap();
        std::fs::write(dir.join("wal").join("b"), vec![2u8; 5]).unwrap();
        let u = disk_usage(&dir);
        assert_eq!(u.apparent_bytes, 10_005);
        assert_eq!(u.files, 2);
        assert!(u.allocated_bytes >= 10_005, "{u:?}");
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(disk_usage(&dir), DiskUsage::default());
    }

    #[test]
    fn prometheus_counter_sums_label_sets_and_skips_longer_names() {
        let text = "# TYPE trackline_fixes_stored_total counter\n\
                    trackline_fixes_stored_total 1200\n\
                    trackline_fixes_stored_total_other 5\n\
                    trackline_fixes_rejected_total{code=\"in_future\"} 3\n\
                    trackline_fixes_rejected_total{code=\"too_old\"} 4\n";
        assert_eq!(
            prometheus_counter(text, "trackline_fixes_stored_total"),
            Some(1200.0)
        );
        assert_eq!(
            prometheus_counter(text, "trackline_fixes_rejected_total"),
            Some(7.0)
        );
        assert_eq!(prometheus_counter(text, "trackline_nothing_total"), None);
    }

    #[test]
    fn slope_of_a_line_and_of_nothing() {
        let pts: Vec<(f64, f64)> = (0..10).map(|x| (x as f64, 3.0 * x as f64 + 1.0)).collect();
        assert!((slope(&pts).unwrap() - 3.0).abs() < 1e-12);
        assert_eq!(slope(&[(1.0, 2.0), (1.0, 5.0)]), None);
        assert_eq!(slope(&[]), None);
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }
}
