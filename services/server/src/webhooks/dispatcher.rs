//! The dispatcher: reads the next pending delivery of each order for each endpoint from sled,
//! sends it signed (Standard Webhooks), and retries with exponential backoff and jitter.
//!
//! It runs on its own thread with its own runtime, so a slow or dead receiver costs the courier
//! and watcher paths nothing: they only append events to the store. Memory is bounded by the
//! deliveries in flight (`--webhook-concurrency` per endpoint); what waits stays on disk.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use trackline_core::now_ms;
use trackline_core::webhooks::signature::{decode_secret, sign};
use trackline_core::webhooks::{Endpoint, PendingHead, WebhookResult, WebhookStore};
use trackline_core::OrderId;

/// A receiver that does not answer within this is tried again later.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The most orders looked at per endpoint and pass: beyond them, the next pass.
const HEADS_PER_PASS: usize = 10_000;

/// The longest sleep between passes when nothing is due (new events wake it earlier).
const IDLE_PASS: Duration = Duration::from_secs(5);

/// After a wake-up for new events, how long more may come before the next pass: one pass (a
/// seek per pending order) serves a burst, not each event of it.
const GATHER_EVENTS: Duration = Duration::from_millis(20);

/// How often failed deliveries past their keeping are purged.
const PURGE_FAILED_EVERY: Duration = Duration::from_secs(600);

/// How deliveries are made and retried.
#[derive(Debug, Clone, Copy)]
pub struct DispatchSettings {
    /// An event not delivered this long after it happened is kept as failed.
    pub max_age: Duration,
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// Deliveries in flight at once per endpoint.
    pub concurrency: usize,
}

impl DispatchSettings {
    pub fn from_config(config: &crate::config::Config) -> Self {
        Self {
            max_age: config.webhook_max_age,
            retry_min: Duration::from_millis(config.webhook_retry_min_ms.max(1)),
            retry_max: Duration::from_millis(config.webhook_retry_max_ms.max(1)),
            concurrency: usize::try_from(config.webhook_concurrency).unwrap_or(8),
        }
    }

    /// The wait after the `attempts`-th failed attempt: doubling from `retry_min` up to
    /// `retry_max`, then a random share of it between half and all (so that the deliveries
    /// of a receiver that came back do not all retry at the same instant).
    fn backoff(&self, attempts: u32) -> Duration {
        let doubled = self
            .retry_min
            .saturating_mul(2u32.saturating_pow(attempts.saturating_sub(1).min(30)));
        let full = doubled.min(self.retry_max);
        full.mul_f64(rand::random_range(0.5..=1.0))
    }
}

/// The running dispatcher; [`Dispatcher::stop`] ends it and waits.
pub struct Dispatcher {
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Dispatcher {
    /// Stops sending (deliveries in flight are tried again at the next start) and waits.
    pub fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts the dispatcher on a thread of its own.
///
/// # Errors
/// When the thread, its runtime or the HTTP client cannot be made.
pub fn start(store: WebhookStore, settings: DispatchSettings) -> anyhow::Result<Dispatcher> {
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        // A receiver's redirect is its answer, not an address to send the event to.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("trackline-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (stop, stopped) = watch::channel(false);
    let thread = std::thread::Builder::new()
        .name("webhooks".into())
        .spawn(move || runtime.block_on(run(store, client, settings, stopped)))?;
    Ok(Dispatcher {
        stop,
        thread: Some(thread),
    })
}

/// A delivery that finished, so its order may send the next.
type Done = (String, OrderId);

/// Per endpoint, the deliveries the last pass found due but had no room for, oldest order key
/// first: each delivery that finishes makes room for the next of them, without another pass.
type Waiting = HashMap<String, VecDeque<PendingHead>>;

/// What the loop keeps between passes.
struct Dispatch {
    store: WebhookStore,
    client: reqwest::Client,
    settings: DispatchSettings,
    in_flight: HashSet<Done>,
    waiting: Waiting,
    done: mpsc::UnboundedSender<Done>,
}

async fn run(
    store: WebhookStore,
    client: reqwest::Client,
    settings: DispatchSettings,
    mut stopped: watch::Receiver<bool>,
) {
    let wake = store.wake();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    let mut dispatch = Dispatch {
        store,
        client,
        settings,
        in_flight: HashSet::new(),
        waiting: Waiting::new(),
        done: done_tx,
    };
    let mut purged_at = std::time::Instant::now();
    // When the next pass over every endpoint's pending deliveries is due.
    let mut pass_at = tokio::time::Instant::now();
    loop {
        if purged_at.elapsed() >= PURGE_FAILED_EVERY {
            purged_at = std::time::Instant::now();
            // Given up after the maximum age, then kept for as long again for ops to redeliver.
            let cutoff = now_ms() - 2 * settings.max_age.as_millis() as i64;
            if let Err(error) = dispatch.store.purge_failed_before(cutoff) {
                tracing::error!(%error, "purging failed webhook deliveries failed");
            }
        }
        if tokio::time::Instant::now() >= pass_at {
            let next_pass = dispatch.pass().unwrap_or_else(|error| {
                tracing::error!(%error, "reading webhook deliveries failed");
                IDLE_PASS
            });
            pass_at = tokio::time::Instant::now() + next_pass;
        }
        tokio::select! {
            biased;
            _ = stopped.changed() => break,
            Some(done) = done_rx.recv() => {
                match dispatch.follow_up(done) {
                    Ok(Some(retry_in)) => {
                        pass_at = pass_at.min(tokio::time::Instant::now() + retry_in);
                    }
                    Ok(None) => {}
                    Err(error) => {
                        tracing::error!(%error, "reading webhook deliveries failed");
                    }
                }
            }
            // New events: one pass serves all that come within the gathering time, and
            // finished deliveries go on making room meanwhile.
            _ = wake.notified() => {
                pass_at = pass_at.min(tokio::time::Instant::now() + GATHER_EVENTS);
            }
            _ = tokio::time::sleep_until(pass_at) => {}
        }
    }
}

impl Dispatch {
    /// Starts every delivery that is due and has room, and keeps those without room waiting;
    /// returns how long until the next is due.
    fn pass(&mut self) -> WebhookResult<Duration> {
        let now = now_ms();
        let mut next_due = now + IDLE_PASS.as_millis() as i64;
        let mut oldest: Option<i64> = None;
        self.waiting.clear();
        for endpoint in self.store.endpoints().into_iter().filter(|e| !e.disabled) {
            let mut waiting = VecDeque::new();
            for head in self.store.heads(&endpoint.id, HEADS_PER_PASS)? {
                oldest = Some(oldest.map_or(head.state.since_ms, |o| o.min(head.state.since_ms)));
                if self
                    .in_flight
                    .contains(&(endpoint.id.clone(), head.order.clone()))
                {
                    continue; // its next is looked up when this one finishes
                }
                if head.state.next_attempt_ms > now {
                    next_due = next_due.min(head.state.next_attempt_ms);
                    continue;
                }
                waiting.push_back(head);
            }
            self.start_waiting(&endpoint, &mut waiting);
            if !waiting.is_empty() {
                self.waiting.insert(endpoint.id.clone(), waiting);
            }
        }
        let age_s = oldest.map_or(0.0, |o| (now - o).max(0) as f64 / 1e3);
        metrics::gauge!("trackline_webhook_oldest_pending_seconds").set(age_s);
        Ok(Duration::from_millis((next_due - now).max(1) as u64))
    }

    /// A delivery finished: its order's next one, if due, waits its turn behind those already
    /// waiting, and the room it left goes to the first of them. Returns how long until the
    /// order's next one is due, when it is not yet (a retry).
    fn follow_up(&mut self, done: Done) -> WebhookResult<Option<Duration>> {
        self.in_flight.remove(&done);
        let (endpoint_id, order) = done;
        let Some(endpoint) = self.store.endpoint(&endpoint_id).filter(|e| !e.disabled) else {
            self.waiting.remove(&endpoint_id); // removed or disabled: nothing more to send
            return Ok(None);
        };
        let mut waiting = self.waiting.remove(&endpoint_id).unwrap_or_default();
        let mut retry_in = None;
        if let Some(head) = self.store.head_of(&endpoint_id, &order)? {
            let now = now_ms();
            if head.state.next_attempt_ms > now {
                retry_in = Some(Duration::from_millis(
                    (head.state.next_attempt_ms - now) as u64,
                ));
            } else {
                waiting.push_back(head);
            }
        }
        self.start_waiting(&endpoint, &mut waiting);
        if !waiting.is_empty() {
            self.waiting.insert(endpoint_id, waiting);
        }
        Ok(retry_in)
    }

    /// Starts deliveries from the front of `waiting` while `endpoint` has room.
    fn start_waiting(&mut self, endpoint: &Endpoint, waiting: &mut VecDeque<PendingHead>) {
        let mut busy = (self.in_flight.iter())
            .filter(|(e, _)| *e == endpoint.id)
            .count();
        while busy < self.settings.concurrency {
            let Some(head) = waiting.pop_front() else {
                break;
            };
            let key = (endpoint.id.clone(), head.order.clone());
            if !self.in_flight.insert(key.clone()) {
                continue; // already on its way: its next is looked up when it finishes
            }
            busy += 1;
            let (store, client, endpoint, done, settings) = (
                self.store.clone(),
                self.client.clone(),
                endpoint.clone(),
                self.done.clone(),
                self.settings,
            );
            tokio::spawn(async move {
                deliver(&store, &client, &endpoint, head, settings).await;
                let _ = done.send(key);
            });
        }
    }
}

/// What one attempt came to.
enum Outcome {
    Delivered,
    Gone,
    Failed(String),
}

async fn attempt(
    client: &reqwest::Client,
    endpoint: &Endpoint,
    id: &str,
    body: Vec<u8>,
) -> Outcome {
    let key = match decode_secret(&endpoint.secret) {
        Ok(key) => key,
        Err(error) => return Outcome::Failed(format!("endpoint secret: {error}")),
    };
    let timestamp = now_ms().div_euclid(1000);
    let signature = sign(&key, id, timestamp, &body);
    let sent = client
        .post(&endpoint.url)
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await;
    match sent {
        Ok(answer) if answer.status().is_success() => Outcome::Delivered,
        Ok(answer) if answer.status() == reqwest::StatusCode::GONE => Outcome::Gone,
        Ok(answer) => Outcome::Failed(format!("HTTP {}", answer.status().as_u16())),
        Err(error) if error.is_timeout() => Outcome::Failed("no answer within 10 s".into()),
        Err(error) => Outcome::Failed(format!("{error:#}")),
    }
}

/// Makes one attempt of `head` and records its outcome.
async fn deliver(
    store: &WebhookStore,
    client: &reqwest::Client,
    endpoint: &Endpoint,
    head: PendingHead,
    settings: DispatchSettings,
) {
    let recorded = async {
        let Some(event) = store.event(&head.order, head.seq)? else {
            // Purged with its order's history: nothing left to send.
            return store.delivered(&head);
        };
        let outcome = attempt(client, endpoint, &event.id, event.body()).await;
        if store.endpoint(&endpoint.id).is_none() {
            return Ok(()); // removed meanwhile, with its deliveries
        }
        match outcome {
            Outcome::Delivered => {
                metrics::counter!("trackline_webhook_delivered_total").increment(1);
                store.delivered(&head)
            }
            Outcome::Gone => {
                tracing::warn!(
                    endpoint = endpoint.id,
                    url = endpoint.url,
                    "receiver answered 410 Gone: endpoint disabled"
                );
                let disabled = Endpoint {
                    disabled: true,
                    ..endpoint.clone()
                };
                store.put_endpoint(disabled).map(|_| ())
            }
            Outcome::Failed(error) => {
                let mut state = head.state.clone();
                state.attempts += 1;
                state.last_error = Some(error);
                let now = now_ms();
                let max_age_ms = settings.max_age.as_millis() as i64;
                if now - state.since_ms >= max_age_ms {
                    metrics::counter!("trackline_webhook_failed_total").increment(1);
                    tracing::warn!(
                        endpoint = endpoint.id,
                        event = state.event_id,
                        attempts = state.attempts,
                        "webhook delivery given up"
                    );
                    store.give_up(&head, &state)
                } else {
                    metrics::counter!("trackline_webhook_retried_total").increment(1);
                    state.next_attempt_ms =
                        now + settings.backoff(state.attempts).as_millis() as i64;
                    store.retry_later(&head, &state)
                }
            }
        }
    };
    if let Err(error) = recorded.await {
        tracing::error!(%error, endpoint = endpoint.id, "recording a webhook delivery failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let settings = DispatchSettings {
            max_age: Duration::from_secs(60),
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_millis(1000),
            concurrency: 1,
        };
        for _ in 0..100 {
            let first = settings.backoff(1);
            assert!(
                (50..=100).contains(&(first.as_millis() as u64)),
                "{first:?}"
            );
            let third = settings.backoff(3);
            assert!(
                (200..=400).contains(&(third.as_millis() as u64)),
                "{third:?}"
            );
            let late = settings.backoff(40);
            assert!(
                (500..=1000).contains(&(late.as_millis() as u64)),
                "{late:?}"
            );
        }
    }
}
