//! Prometheus metrics: one process-wide recorder (metrics-exporter-prometheus) and `/metrics`.

use std::sync::OnceLock;

use actix_web::HttpResponse;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use trackline_core::history::{observe_commits, CommitStats};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the recorder once per process (tests start several servers in one process).
pub fn install() {
    HANDLE.get_or_init(|| match PrometheusBuilder::new().install_recorder() {
        Ok(handle) => Some(handle),
        Err(error) => {
            tracing::warn!(%error, "metrics recorder not installed; /metrics will be empty");
            None
        }
    });
    observe_commits(record_commit);
}

fn record_commit(stats: CommitStats) {
    metrics::histogram!("trackline_group_commit_seconds").record(stats.flush.as_secs_f64());
    metrics::histogram!("trackline_group_commit_jobs").record(stats.jobs as f64);
    metrics::counter!("trackline_group_commits_total").increment(1);
}

/// `GET /metrics`: the Prometheus text format.
pub async fn render() -> HttpResponse {
    let body = HANDLE
        .get()
        .and_then(|h| h.as_ref())
        .map(|h| h.render())
        .unwrap_or_default();
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(body)
}
