//! `trackctl orders`: a table of orders (or the server's JSON), most recently updated first.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use trackline_core::order::OrderView;
use trackline_rest::OrderList;

use crate::cli::{GlobalArgs, OrdersArgs};
use crate::exit::nothing_found;
use crate::history::Source;
use crate::when::{format_clock, format_span};

pub fn run(global: &GlobalArgs, args: &OrdersArgs) -> anyhow::Result<ExitCode> {
    let runtime = super::runtime()?;
    let source = Source::open(global, args.data_dir.data_dir.as_deref())?;
    let where_from = source.describe();
    let listed = runtime.block_on(source.orders(args.status, args.limit as usize));
    source.close();
    let listing = OrderList { orders: listed? };
    let orders = &listing.orders;
    if args.json {
        super::print_json(&listing)?;
    } else if !orders.is_empty() {
        let mut stdout = std::io::stdout().lock();
        write_table(&mut stdout, orders, trackline_core::now_ms())
            .and_then(|()| stdout.flush())
            .context("writing the order list")?;
    }
    if orders.is_empty() {
        return Err(nothing_found(format!(
            "no {} orders on {where_from}{}",
            args.status.as_str(),
            if args.status == crate::cli::StatusFilter::All {
                ""
            } else {
                " (--status all shows every order)"
            }
        )));
    }
    Ok(ExitCode::SUCCESS)
}

/// One line per order, columns aligned; times relative to `now_ms`.
fn write_table(mut out: impl Write, orders: &[OrderView], now_ms: i64) -> std::io::Result<()> {
    let ago = |ms: i64| {
        format!(
            "{} ago",
            format_span(((now_ms - ms) as f64 / 1000.0).max(0.0))
        )
    };
    let rows: Vec<[String; 6]> = orders
        .iter()
        .map(|o| {
            let position = o.position.map_or_else(
                || "-".to_string(),
                |p| format!("{:.5},{:.5} ({})", p.lat, p.lon, ago(p.time_ms)),
            );
            let eta = match o.eta {
                Some(eta) if !o.status.is_final() => {
                    let left_s = (eta.arrive_at_ms - now_ms) as f64 / 1000.0;
                    if left_s > -0.5 {
                        format!(
                            "{} (in {})",
                            format_clock(eta.arrive_at_ms),
                            format_span(left_s)
                        )
                    } else {
                        format!(
                            "{} (overdue {})",
                            format_clock(eta.arrive_at_ms),
                            format_span(-left_s)
                        )
                    }
                }
                _ => "-".to_string(),
            };
            [
                o.order_id.to_string(),
                o.status.to_string(),
                o.courier_id
                    .as_ref()
                    .map_or_else(|| "-".to_string(), ToString::to_string),
                ago(o.updated_at_ms),
                position,
                eta,
            ]
        })
        .collect();
    let heads = [
        "ORDER",
        "STATUS",
        "COURIER",
        "UPDATED",
        "POSITION",
        "ETA (UTC)",
    ];
    let mut widths = heads.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    writeln!(out, "{}", line(&heads))?;
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        writeln!(out, "{}", line(&cells))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use trackline_core::order::{Eta, OrderStatus, Position};
    use trackline_core::{CourierId, LatLon, OrderId};

    #[test]
    fn the_table_aligns_and_reads_relative_times() {
        let now = 1_714_557_600_000;
        let order = |id: &str, status, eta: Option<i64>| OrderView {
            order_id: OrderId::new(id).unwrap(),
            status,
            courier_id: Some(CourierId::new("bike-7").unwrap()),
            destination: LatLon::new(45.0, 13.0),
            position: Some(Position {
                lat: 45.1,
                lon: 13.1,
                time_ms: now - 5000,
                speed_mps: None,
                heading_deg: None,
                accuracy_m: None,
            }),
            eta: eta.map(|at| Eta {
                seconds: 0,
                arrive_at_ms: at,
                window: None,
            }),
            offset: 1,
            epoch: "e".into(),
            updated_at_ms: now - 65_000,
            promised_at_ms: None,
            stops: Vec::new(),
        };
        let orders = [
            order("o-1", OrderStatus::PickedUp, Some(now + 245_000)),
            order("order-22", OrderStatus::Delivered, Some(now)),
        ];
        let mut out = Vec::new();
        write_table(&mut out, &orders, now).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[0].starts_with("ORDER     STATUS     COURIER"),
            "{text}"
        );
        assert!(
            lines[1].contains(
                "picked_up  bike-7   1m05s ago  45.10000,13.10000 (5s ago)  10:04:05 (in 4m05s)"
            ),
            "{text}"
        );
        assert!(lines[2].ends_with("(5s ago)  -"), "{text}");
    }
}
