//! `trackctl eta-eval`: runs `crate::eta_eval` (the server's own filter and estimator)
//! over recorded trips and prints its table, or its JSON.

use std::io::Write;
use std::process::ExitCode;

use crate::eta_eval::{
    evaluate, read_trip_file, trace_trip, EvalConfig, EvalReport, TraceRow, Trip,
};
use anyhow::Context;
use serde::Serialize;

use crate::cli::EtaEvalArgs;

#[derive(Serialize)]
struct Traced<'a> {
    #[serde(flatten)]
    report: &'a EvalReport,
    traces: Vec<TripTrace>,
}

/// The JSON of a run with `--pickup-at`: both protocols and how they compare.
#[derive(Serialize)]
struct BothProtocols<'a> {
    single_leg: &'a EvalReport,
    two_leg: &'a EvalReport,
    /// Two-leg pooled MAE / single-leg pooled MAE.
    two_leg_mae_ratio: f64,
}

#[derive(Serialize)]
struct TripTrace {
    name: String,
    instants: Vec<TraceRow>,
}

pub fn run(args: &EtaEvalArgs) -> anyhow::Result<ExitCode> {
    let mut trips: Vec<(String, Trip)> = Vec::with_capacity(args.trips.len());
    for path in &args.trips {
        let trip = read_trip_file(path).with_context(|| {
            format!(
                "reading trip {}; trips are CSV with a `t_unix,lat,lon` header (trackctl export --format csv writes one)",
                path.display()
            )
        })?;
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        trips.push((name, trip));
    }
    let config = EvalConfig::default();
    let report = evaluate(&trips, &config).context("evaluating the ETA")?;
    if let Some(pickup_at) = args.pickup_at {
        let two_leg_config = EvalConfig {
            pickup_at: Some(pickup_at),
            ..config
        };
        let two_leg = evaluate(&trips, &two_leg_config).context("evaluating the two-leg ETA")?;
        let ratio = two_leg.pooled.trackline.mae_s / report.pooled.trackline.mae_s;
        if args.json {
            super::print_json(&BothProtocols {
                single_leg: &report,
                two_leg: &two_leg,
                two_leg_mae_ratio: ratio,
            })?;
        } else {
            let mut stdout = std::io::stdout().lock();
            writeln!(
                stdout,
                "single leg\n{report}\n\ntwo legs, pickup at {:.0} % of each trip\n{two_leg}\ntwo-leg MAE / single-leg MAE = {ratio:.2}",
                100.0 * pickup_at
            )
            .context("writing the report")?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let traces = if args.trace {
        trips
            .iter()
            .map(|(name, trip)| {
                Ok(TripTrace {
                    name: name.clone(),
                    instants: trace_trip(name, trip, &config)?,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?
    } else {
        Vec::new()
    };

    if args.json {
        if args.trace {
            super::print_json(&Traced {
                report: &report,
                traces,
            })?;
        } else {
            super::print_json(&report)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{report}").context("writing the report")?;
    for trace in &traces {
        write_trace(&mut stdout, trace).context("writing the trace")?;
    }
    stdout.flush().context("writing the report")?;
    Ok(ExitCode::SUCCESS)
}

fn write_trace(mut out: impl Write, trace: &TripTrace) -> std::io::Result<()> {
    writeln!(out)?;
    writeln!(out, "{}: seconds left at each instant", trace.name)?;
    writeln!(
        out,
        "{:>7} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>6}",
        "t_s", "truth", "trackline", "(a)", "(b)", "true_m", "matched_m", "on_route", "m/s"
    )?;
    for r in &trace.instants {
        writeln!(
            out,
            "{:>7.0} {:>7.0} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>9} {:>8} {:>6.2}",
            r.t_s,
            r.truth_s,
            r.trackline_s,
            r.straight_line_s,
            r.route_true_progress_s,
            r.true_progress_m,
            r.matched_progress_m
                .map_or_else(|| "-".to_string(), |m| format!("{m:.0}")),
            if r.on_route { "yes" } else { "no" },
            r.speed_mps
        )?;
    }
    Ok(())
}
