//! The webhook scenario: courier ack latency and server CPU with no webhook, with a receiver
//! that is dead for the whole run (it accepts connections and never answers), and with a live
//! one (how many events a second are delivered), every accepted fix making an `order.eta` event
//! (`--webhook-eta-step-s 0`: the most events a fleet can cause).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use trackline_core::auth::Role;

use crate::load::{self, keys, LoadResult, LoadSpec, Pace};
use crate::peers::{self, Peer};

/// The flags of `trackline-bench webhooks`.
#[derive(Debug, Clone, clap::Args)]
pub struct WebhookArgs {
    #[arg(long, default_value_t = 200)]
    pub couriers: usize,
    /// Fixes per second over all couriers (open loop).
    #[arg(long, default_value_t = 400.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
}

/// What receives the events of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Receiver {
    None,
    /// Accepts and never answers: every delivery waits out the 10 s timeout.
    Dead,
    /// Answers 204 at once.
    Live,
}

#[derive(Debug, Serialize)]
pub struct WebhookRun {
    pub receiver: Receiver,
    pub load: LoadResult,
    /// Events delivered per second over the run (live receiver).
    pub delivered_per_s: f64,
    /// Server CPU per accepted fix, microseconds.
    pub cpu_us_per_fix: f64,
}

/// Runs the three cases one after the other, each on a fresh server.
pub async fn run(args: &WebhookArgs, work: &Path) -> Result<Vec<WebhookRun>> {
    let mut runs = Vec::new();
    for receiver in [Receiver::None, Receiver::Dead, Receiver::Live] {
        runs.push(run_one(args, work, receiver).await?);
    }
    Ok(runs)
}

/// A receiver on 127.0.0.1 that answers as `receiver` says; its URL.
async fn start_receiver(receiver: Receiver) -> Result<Option<String>> {
    if receiver == Receiver::None {
        return Ok(None);
    }
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                if receiver == Receiver::Dead {
                    // Held open, unanswered, until the sender gives up.
                    let _ = tokio::time::timeout(Duration::from_secs(60), stream.read(&mut [0; 1]))
                        .await;
                    return;
                }
                // Kept alive, as a receiver behind a real HTTP server is: each request (head,
                // then a body of content-length bytes) answered 204 on the same connection.
                let mut buf = Vec::new();
                let mut chunk = vec![0u8; 16 * 1024];
                loop {
                    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    let end = head_end + 4 + length;
                    while buf.len() < end {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..end);
                    let answer = b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n";
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(Some(url))
}

async fn delivered_total(client: &reqwest::Client, base: &str) -> Result<f64> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("trackline_webhook_delivered_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0))
}

async fn run_one(args: &WebhookArgs, work: &Path, receiver: Receiver) -> Result<WebhookRun> {
    let dir = work.join(format!("webhooks-{receiver:?}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let extra = ["--webhook-eta-step-s", "0"].map(String::from);
    let server = peers::spawn_trackline_on(&dir.join("data"), peers::TRACKLINE_PORT, &extra)?;
    peers::wait_ready(server.addr, Duration::from_secs(60)).await?;
    let base = format!("http://{}", server.addr);
    let client = reqwest::Client::new();
    if let Some(url) = start_receiver(receiver).await? {
        let ops = keys().mint(&Role::Ops, 3600);
        client
            .post(format!("{base}/v1/webhooks"))
            .bearer_auth(ops)
            .json(&serde_json::json!({"url": url}))
            .send()
            .await?
            .error_for_status()
            .context("registering the webhook")?;
    }
    let spec = LoadSpec {
        couriers: args.couriers,
        pace: Pace::Rate(args.rate / args.couriers as f64),
        batch: 1,
        watchers: 1,
        warmup: Duration::from_secs_f64(args.warmup),
        duration: Duration::from_secs_f64(args.seconds),
        extra_orders: 0,
    };
    let before = delivered_total(&client, &base).await?;
    let started = Instant::now();
    let load = load::run(Peer::Trackline, server.addr, server.pid(), &spec).await;
    let elapsed = started.elapsed().as_secs_f64();
    let after = delivered_total(&client, &base).await?;
    server.stop(Duration::from_secs(20)).await;
    let _ = std::fs::remove_dir_all(&dir);
    let load = load?;
    let cpu_us_per_fix = if load.offered_fixes_per_s > 0.0 {
        load.server_cpu_cores * 1e6 / load.offered_fixes_per_s
    } else {
        0.0
    };
    Ok(WebhookRun {
        receiver,
        delivered_per_s: (after - before) / elapsed,
        cpu_us_per_fix,
        load,
    })
}
