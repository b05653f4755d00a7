//! `trackctl stats`: the figures of an order's route (see [`crate::stats`]).

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;

use crate::cli::{GlobalArgs, StatsArgs};
use crate::exit::nothing_found;
use crate::history::Source;
use crate::stats::{measure, StopRule};

pub fn run(global: &GlobalArgs, args: &StatsArgs) -> anyhow::Result<ExitCode> {
    let runtime = super::runtime()?;
    let source = Source::open(global, args.data_dir.data_dir.as_deref())?;
    let (detail, fixes) = source.read_whole_order(&runtime, &args.order)?;
    if fixes.is_empty() {
        return Err(nothing_found(format!(
            "order {} has no stored fixes yet (status {})",
            args.order, detail.state.status
        )));
    }
    let rule = StopRule {
        below_mps: args.stop_below,
        min_duration_s: args.stop_for.as_secs_f64(),
    };
    let stats = measure(&detail, &fixes, rule);
    if args.json {
        super::print_json(&stats)?;
    } else {
        let mut stdout = std::io::stdout().lock();
        stats
            .write_human(&mut stdout)
            .and_then(|()| stdout.flush())
            .context("writing the figures")?;
    }
    Ok(ExitCode::SUCCESS)
}
