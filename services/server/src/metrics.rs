//! Prometheus metrics: one process-wide recorder (metrics-exporter-prometheus) and `/metrics`.

use std::sync::OnceLock;
use std::time::Duration;

use actix_web::HttpResponse;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use trackline_core::history::{observe_commits, CommitStats};

use crate::http::extract::App;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// How often histogram samples are folded into their summaries. Until then each sample is kept
/// (8 bytes); `install_recorder` leaves this upkeep to us, and without it every sample since the
/// last scrape stays in memory, without bound when nobody scrapes. One wake-up a second costs
/// nothing next to the fixes, and holds memory to one second of samples.
const UPKEEP_EVERY: Duration = Duration::from_secs(1);

/// Installs the recorder once per process (tests start several servers in one process), with
/// a thread that runs its upkeep.
pub fn install() {
    HANDLE.get_or_init(|| match PrometheusBuilder::new().install_recorder() {
        Ok(handle) => {
            run_upkeep(handle.clone());
            Some(handle)
        }
        Err(error) => {
            tracing::warn!(%error, "metrics recorder not installed; /metrics will be empty");
            None
        }
    });
    observe_commits(record_commit);
}

/// Runs the recorder's upkeep every [`UPKEEP_EVERY`] on a thread of its own, for the life of
/// the process (the recorder is process-wide too). A plain thread, not a task: the upkeep must
/// go on whichever runtimes come and go (tests start and stop servers).
fn run_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_EVERY);
            handle.run_upkeep();
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "metrics upkeep not started; histograms grow until scraped");
    }
}

fn record_commit(stats: CommitStats) {
    metrics::histogram!("trackline_group_commit_seconds").record(stats.flush.as_secs_f64());
    metrics::histogram!("trackline_group_commit_jobs").record(stats.jobs as f64);
    metrics::counter!("trackline_group_commits_total").increment(1);
}

/// `GET /metrics`: the Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "every metric", body = String,
               content_type = "text/plain")),
)]
pub async fn render(app: App) -> HttpResponse {
    // Read at every scrape rather than set by the writer: the core knows nothing of metrics, and
    // the state matters exactly when someone looks.
    let failing = app.store.write_failure().is_some();
    metrics::gauge!("trackline_store_write_failing").set(if failing { 1.0 } else { 0.0 });
    if let Some(connected) = app.topology.broker_connected() {
        metrics::gauge!("trackline_broker_connected").set(if connected { 1.0 } else { 0.0 });
    }
    let body = HANDLE
        .get()
        .and_then(|h| h.as_ref())
        .map(|h| h.render())
        .unwrap_or_default();
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(body)
}

/// A counting allocator for the tests of this crate that measure memory: bytes allocated and not
/// yet freed, process-wide (the unit-test binary only).
#[cfg(test)]
pub(crate) mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicIsize, Ordering};
    use std::sync::{Mutex, MutexGuard};

    struct Counting;

    static LIVE: AtomicIsize = AtomicIsize::new(0);
    static MEASURING: Mutex<()> = Mutex::new(());

    // SAFETY: every call goes to `System` with the caller's layout; only a counter is added.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
            unsafe { System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static ALLOCATOR: Counting = Counting;

    /// Bytes allocated and not freed.
    pub fn live_bytes() -> isize {
        LIVE.load(Ordering::Relaxed)
    }

    /// Held while measuring, so that two measuring tests do not count each other.
    pub fn measuring() -> MutexGuard<'static, ()> {
        MEASURING
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::counting::{live_bytes, measuring};
    use super::*;

    #[test]
    fn unscraped_histogram_samples_do_not_accumulate() {
        let _alone = measuring();
        install();
        // A second server in the process: still one recorder, one upkeep thread.
        install();
        // 4 MB of samples if they were kept.
        const SAMPLES: usize = 500_000;
        // Not a trackline_ name: k8s/validate.py holds every trackline_ metric to a dashboard panel.
        let record = || metrics::histogram!("test_upkeep_seconds").record(0.001);
        record();
        std::thread::sleep(UPKEEP_EVERY * 2);
        let before = live_bytes();
        for _ in 0..SAMPLES {
            record();
        }
        let grown = live_bytes() - before;
        assert!(grown > 2_000_000, "the samples were kept: {grown} bytes");
        // Nobody scrapes; the upkeep folds them into the summary. A sample now and then, as a
        // server records, lets the freed blocks' memory be reclaimed.
        let deadline = Instant::now() + UPKEEP_EVERY * 10;
        let mut left = grown;
        while Instant::now() < deadline {
            record();
            std::thread::sleep(Duration::from_millis(20));
            left = live_bytes() - before;
            if left < 500_000 {
                return;
            }
        }
        panic!("{left} bytes of {SAMPLES} unscraped samples still held after the upkeep");
    }
}
