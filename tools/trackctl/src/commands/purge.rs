//! `trackctl purge`: deletes old route history over HTTP or in a data dir, and says how much.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;

use crate::cli::{GlobalArgs, PurgeArgs};
use crate::history::Source;
use crate::when::format_utc;

pub fn run(global: &GlobalArgs, args: &PurgeArgs) -> anyhow::Result<ExitCode> {
    let before_ms = match (args.before, args.older_than) {
        (Some(before), _) => Some(before),
        (None, Some(age_s)) => Some(trackline_core::now_ms() - age_s.saturating_mul(1000)),
        (None, None) => None,
    };
    let runtime = super::runtime()?;
    let source = Source::open(global, args.data_dir.data_dir.as_deref())?;
    let where_from = source.describe();
    let by_retention = before_ms.is_none() && !source.is_offline();
    let purged = runtime.block_on(source.purge(before_ms));
    source.close();
    let purged = purged.map_err(|err| {
        if by_retention {
            err.context("without --before or --older-than the server purges by its own retention period (--retention-days)")
        } else {
            err
        }
    })?;
    if args.json {
        super::print_json(&purged)?;
    } else {
        let mut stdout = std::io::stdout().lock();
        let plural = |n: usize| if n == 1 { "" } else { "s" };
        writeln!(
            stdout,
            "purged {} fix{} and {} ended order{} from before {} on {where_from}",
            purged.fixes,
            if purged.fixes == 1 { "" } else { "es" },
            purged.orders,
            plural(purged.orders),
            format_utc(purged.before_ms)
        )
        .and_then(|()| stdout.flush())
        .context("writing the purge counts")?;
    }
    Ok(ExitCode::SUCCESS)
}
