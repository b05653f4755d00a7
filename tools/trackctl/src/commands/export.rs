//! `trackctl export`: an order's route history as GPX, GeoJSON or CSV, to stdout or a file.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context};

use crate::cli::{ExportArgs, GlobalArgs};
use crate::exit::nothing_found;
use crate::export::{self, Format};
use crate::history::Source;

pub fn run(global: &GlobalArgs, args: &ExportArgs) -> anyhow::Result<ExitCode> {
    let format = match (args.format, args.output.as_deref()) {
        (Some(format), _) => format,
        (None, Some(path)) => format_of(path)?,
        (None, None) => bail!(
            "which format? pass --format gpx, geojson or csv (or -o FILE with one of those extensions)"
        ),
    };
    let runtime = super::runtime()?;
    let source = Source::open(global, args.data_dir.data_dir.as_deref())?;
    let where_from = source.describe();
    let loaded = runtime.block_on(async {
        let Some(detail) = source.order(&args.order).await? else {
            return Ok(None);
        };
        let fixes = source
            .fixes(&args.order, args.range.from, args.range.to)
            .await?
            .unwrap_or_default();
        Ok::<_, anyhow::Error>(Some((detail, fixes)))
    });
    source.close();
    let Some((detail, fixes)) = loaded? else {
        return Err(nothing_found(format!(
            "order {} does not exist on {where_from}",
            args.order
        )));
    };
    if fixes.is_empty() {
        return Err(nothing_found(format!(
            "order {} has no stored fixes{}; nothing exported",
            args.order,
            super::describe_range(args.range.from, args.range.to)
        )));
    }
    let route = detail.route_points();
    let destination = Some(detail.state.destination);
    match &args.output {
        None => {
            let stdout = std::io::stdout().lock();
            export::write(
                format,
                &args.order,
                &fixes,
                destination,
                route.as_deref(),
                stdout,
            )?;
        }
        Some(path) => {
            let file =
                File::create(path).with_context(|| format!("creating {}", path.display()))?;
            let mut out = BufWriter::new(file);
            let written = export::write(
                format,
                &args.order,
                &fixes,
                destination,
                route.as_deref(),
                &mut out,
            )
            .and_then(|()| out.flush().context("writing the export"));
            if let Err(err) = written {
                // no half-written export left behind to be mistaken for a whole one
                drop(out);
                let _ = std::fs::remove_file(path);
                return Err(err.context(format!("writing {}", path.display())));
            }
            eprintln!(
                "wrote {} fixes of order {} to {}",
                fixes.len(),
                args.order,
                path.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The format a file name asks for.
fn format_of(path: &Path) -> anyhow::Result<Format> {
    let extension = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    match extension.as_deref() {
        Some("gpx") => Ok(Format::Gpx),
        Some("geojson" | "json") => Ok(Format::Geojson),
        Some("csv") => Ok(Format::Csv),
        _ => bail!(
            "cannot tell the format from {}: pass --format gpx, geojson or csv",
            path.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_extension_picks_the_format() {
        assert_eq!(format_of(Path::new("a/o-1.GPX")).unwrap(), Format::Gpx);
        assert_eq!(format_of(Path::new("o.geojson")).unwrap(), Format::Geojson);
        assert_eq!(format_of(Path::new("o.csv")).unwrap(), Format::Csv);
        assert!(format_of(Path::new("o.kml")).is_err());
        assert!(format_of(Path::new("o")).is_err());
    }
}
