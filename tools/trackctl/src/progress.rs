//! Progress on stderr: a live bar on a terminal, nothing at all when piped. One for simulations
//! (fed by the couriers' counters) and one for replays (fed line by line).

use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;

use crate::courier::Stats;

/// How often the bar reads the counters.
const REFRESH: Duration = Duration::from_millis(250);
const BAR_TEMPLATE: &str = "{elapsed_precise} [{bar:30.cyan/blue}] {pos}/{len} fixes  {msg}";
const SPINNER_TEMPLATE: &str = "{spinner} {elapsed_precise} {pos} fixes  {msg}";
const TIMELINE_TEMPLATE: &str = "{elapsed_precise} [{bar:30.cyan/blue}] {pos}/{len} lines  {msg}";

/// A bar over the `lines` of a replay, or `None` when stderr is not a terminal. Print data
/// through [`ProgressBar::suspend`] so the bar does not tear it.
pub fn timeline_bar(lines: u64) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    Some(
        ProgressBar::with_draw_target(Some(lines), ProgressDrawTarget::stderr()).with_style(
            ProgressStyle::with_template(TIMELINE_TEMPLATE)
                // unwrap: the template is a constant, checked by the tests
                .unwrap()
                .progress_chars("=> "),
        ),
    )
}

/// A running progress display; [`Progress::finish`] removes it.
pub struct Progress {
    bar: ProgressBar,
    ticker: JoinHandle<()>,
}

impl Progress {
    /// Starts a bar over `total` fixes (a spinner when the run loops forever), or returns `None`
    /// when stderr is not a terminal: logs and CI output stay clean.
    pub fn start(stats: Arc<Stats>, total: Option<u64>, couriers: usize) -> Option<Progress> {
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let bar = match total {
            Some(total) => ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
                .with_style(
                    ProgressStyle::with_template(BAR_TEMPLATE)
                        // unwrap: the template is a constant, checked by the tests
                        .unwrap()
                        .progress_chars("=> "),
                ),
            None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_style(
                ProgressStyle::with_template(SPINNER_TEMPLATE)
                    // unwrap: the template is a constant, checked by the tests
                    .unwrap(),
            ),
        };
        let shown = bar.clone();
        let ticker = tokio::spawn(async move {
            let mut interval = tokio::time::interval(REFRESH);
            loop {
                interval.tick().await;
                shown.set_position(stats.generated.load(Ordering::Relaxed));
                shown.set_message(status_line(&stats, couriers));
            }
        });
        Some(Progress { bar, ticker })
    }

    /// Prints a line above the bar without tearing it.
    pub fn println(&self, line: &str) {
        self.bar.println(line);
    }

    /// Removes the bar.
    pub fn finish(self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}

fn status_line(stats: &Stats, couriers: usize) -> String {
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    format!(
        "acked {} · rejected {} · online {}/{} · reconnects {}",
        load(&stats.acked),
        load(&stats.rejected),
        load(&stats.connected),
        couriers,
        load(&stats.reconnects)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse() {
        assert!(ProgressStyle::with_template(BAR_TEMPLATE).is_ok());
        assert!(ProgressStyle::with_template(SPINNER_TEMPLATE).is_ok());
        assert!(ProgressStyle::with_template(TIMELINE_TEMPLATE).is_ok());
    }

    #[test]
    fn status_line_reads_the_counters() {
        let stats = Stats::default();
        stats.acked.store(5, Ordering::Relaxed);
        stats.connected.store(2, Ordering::Relaxed);
        assert_eq!(
            status_line(&stats, 3),
            "acked 5 · rejected 0 · online 2/3 · reconnects 0"
        );
    }
}
