//! Broker mode: what a node does with the requests other nodes send it.
//!
//! Each request is served in a task of its own, so a slow one (a REST call, a commit) never
//! holds up the rest. Watches of orders owned here are served by an outlet per (order, node): an
//! ordinary watcher of the order's stream that publishes each frame to that node, until the node
//! says it is done or stops renewing its lease.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use actix::prelude::*;
use async_nats::{HeaderMap, Message as NatsMessage};
use bytes::Bytes;
use futures_util::StreamExt;
use trackline_core::history::HistoryStore;
use trackline_core::links::LinkStore;
use trackline_core::OrderId;
use trackline_rest::ErrorAnswer;

use crate::cluster::client::Cluster;
use crate::cluster::protocol::{
    headers, FollowPlanCall, IngestCall, Kind, LinkCall, PlanEntryCall, RemoteError, ReplanNote,
    RouteCall, SilentCall, UnwatchNote, UpdateNote, WatchAnswer, WatchCall,
};
use crate::cluster::remote_watch::{Arrived, RemoteWatches, RENEW_EVERY};
use crate::live::LiveIndex;
use crate::orders::fanout::{Push, Sink, Subscribe, Unsubscribe};
use crate::orders::messages::Replan;
use crate::orders::registry::courier_routes::{IngestHere, Route};
use crate::orders::registry::plans::{FollowHere, PlanEntryHere};
use crate::orders::registry::presence::SilentHere;
use crate::orders::registry::{Find, LinkChanged, Registry};

/// Outlets are watchers too; their ids count down from the top so they never meet a session's.
static NEXT_OUTLET_ID: AtomicU64 = AtomicU64::new(u64::MAX / 2);

/// What serving other nodes needs.
pub struct Serving {
    pub cluster: Arc<Cluster>,
    pub registry: Addr<Registry>,
    pub remote: Addr<RemoteWatches>,
    pub live_index: Addr<LiveIndex>,
    pub store: HistoryStore,
    pub links: LinkStore,
    /// This node's own HTTP address, where forwarded REST calls are replayed.
    pub base_url: String,
    pub http: reqwest::Client,
    outlets: Mutex<HashMap<(OrderId, String), Addr<Outlet>>>,
}

impl Serving {
    pub fn new(
        cluster: Arc<Cluster>,
        registry: Addr<Registry>,
        remote: Addr<RemoteWatches>,
        live_index: Addr<LiveIndex>,
        store: HistoryStore,
        links: LinkStore,
        base_url: String,
    ) -> Self {
        Self {
            cluster,
            registry,
            remote,
            live_index,
            store,
            links,
            base_url,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                // unwrap: a client without TLS or proxies has nothing to fail on
                .unwrap(),
            outlets: Mutex::default(),
        }
    }
}

/// Serves requests from other nodes until the broker subscription ends.
///
/// # Errors
/// When the subscription cannot be made.
pub async fn serve(serving: Arc<Serving>) -> anyhow::Result<()> {
    let mut positions = serving.cluster.peer_positions().await?;
    let live_index = serving.live_index.clone();
    actix_rt::spawn(async move {
        while let Some(shared) = positions.next().await {
            live_index.do_send(shared);
        }
    });
    let mut incoming = serving.cluster.incoming().await?;
    while let Some((kind, message)) = incoming.next().await {
        let serving = serving.clone();
        actix_rt::spawn(async move { answer(&serving, kind, message).await });
    }
    Ok(())
}

async fn answer(serving: &Serving, kind: Kind, message: NatsMessage) {
    let cluster = &serving.cluster;
    match kind {
        Kind::Http => {
            let (headers, body) = replay_http(serving, &message).await;
            cluster.reply(&message, headers, body).await;
        }
        Kind::Route => {
            let Some(call) = parse::<RouteCall>(&message) else {
                return;
            };
            // A fresh clone of the address: see `in_order`.
            let reports = in_order(&serving.registry)
                .send(Route {
                    courier: call.courier,
                    fixes: call.fixes.into(),
                    invalid: call.invalid.into(),
                    clock_offset_ms: call.clock_offset_ms,
                })
                .await
                .unwrap_or_default();
            cluster.reply_json(&message, &reports).await;
        }
        Kind::Ingest => {
            let Some(call) = parse::<IngestCall>(&message) else {
                return;
            };
            let here = IngestHere {
                order: call.order,
                courier: call.courier,
                fixes: call.fixes.into(),
                invalid: call.invalid.into(),
                clock_offset_ms: call.clock_offset_ms,
            };
            let order = here.order.clone();
            // A mailbox error means the registry is gone (shutting down): no reply, the caller
            // times out and does not ack.
            let Ok(report) = in_order(&serving.registry).send(here).await else {
                return;
            };
            let report = match report {
                Some(report) => Some(report),
                // Not active here. Only an order that has ended tells the home node to drop the
                // link: one being created right now is not active yet, and its link must stay.
                None if has_ended(serving, order).await => None,
                None => Some(Default::default()),
            };
            cluster.reply_json(&message, &report).await;
        }
        Kind::Link => {
            let Some(call) = parse::<LinkCall>(&message) else {
                return;
            };
            let outcome = store_link(serving, call).await;
            cluster.reply_json(&message, &outcome).await;
        }
        Kind::Silent => {
            let Some(call) = parse::<SilentCall>(&message) else {
                return;
            };
            let told = in_order(&serving.registry)
                .send(SilentHere {
                    order: call.order,
                    silent: call.silent,
                })
                .await
                .unwrap_or_else(|e| Err(e.to_string()))
                .map_err(RemoteError::Store);
            cluster.reply_json(&message, &told).await;
        }
        Kind::PlanEntry => {
            let Some(call) = parse::<PlanEntryCall>(&message) else {
                return;
            };
            let here = PlanEntryHere {
                order: call.order,
                courier: call.courier,
            };
            let entry = serving.registry.send(here).await.unwrap_or(None);
            cluster.reply_json(&message, &entry).await;
        }
        Kind::FollowPlan => {
            let Some(call) = parse::<FollowPlanCall>(&message) else {
                return;
            };
            let here = FollowHere {
                order: call.order,
                through: call.through,
            };
            // Answered once queued at the order: a fix sent after the plan's answer comes after.
            let _ = serving.registry.send(here).await;
            cluster.reply_json(&message, &()).await;
        }
        Kind::Replan => {
            if let Some(note) = parse::<ReplanNote>(&message) {
                serving.registry.do_send(Replan {
                    courier: note.courier,
                });
            }
        }
        Kind::Watch => {
            let Some(call) = parse::<WatchCall>(&message) else {
                return;
            };
            if let Some(answer) = watch(serving, call).await {
                cluster.reply_json(&message, &answer).await;
            }
        }
        Kind::Unwatch => {
            if let Some(note) = parse::<UnwatchNote>(&message) {
                let outlet = lock(&serving.outlets).remove(&(note.order, note.node));
                if let Some(outlet) = outlet {
                    outlet.do_send(Close);
                }
            }
        }
        Kind::Update => {
            if let Some(note) = parse::<UpdateNote>(&message) {
                serving.remote.do_send(Arrived {
                    order: note.order,
                    frame: note.frame,
                });
            }
        }
    }
}

/// Whether `order` is stored here and delivered or cancelled.
async fn has_ended(serving: &Serving, order: OrderId) -> bool {
    let store = serving.store.clone();
    let record = actix_web::rt::task::spawn_blocking(move || store.order(&order)).await;
    matches!(record, Ok(Ok(Some(record))) if record.status.is_final())
}

/// The registry's address for one message that must keep its place among a courier's frames.
///
/// Requests are served in tasks started in arrival order, and each queues its message at once,
/// but only on an address that is not parked: a shared one parks when the registry's mailbox is
/// full, and then lets its messages through in whatever order their futures are polled. Frame
/// N+1 of a courier reaching its order before frame N would have N's fixes skipped as resends.
fn in_order(registry: &Addr<Registry>) -> Addr<Registry> {
    registry.clone()
}

fn parse<T: serde::de::DeserializeOwned>(message: &NatsMessage) -> Option<T> {
    serde_json::from_slice(&message.payload)
        .map_err(
            |error| tracing::warn!(subject = %message.subject, %error, "unreadable broker message"),
        )
        .ok()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the map leaves it consistent (single inserts/removes): keep going.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Stores a courier link durably, then routes by it.
async fn store_link(serving: &Serving, call: LinkCall) -> Result<(), RemoteError> {
    let links = serving.links.clone();
    let (courier, order, linked) = (call.courier.clone(), call.order.clone(), call.linked);
    let stored = actix_web::rt::task::spawn_blocking(move || links.set(&courier, &order, linked))
        .await
        .map_err(|e| RemoteError::Store(e.to_string()))?;
    stored.map_err(|e| RemoteError::Store(e.to_string()))?;
    serving.registry.do_send(LinkChanged {
        courier: call.courier,
        order: call.order,
        linked: call.linked,
    });
    Ok(())
}

/// Starts (or renews) sending an order's updates to a node; answers with what to show first.
/// `None` when this node cannot answer now (shutting down): the asking node retries.
async fn watch(serving: &Serving, call: WatchCall) -> Option<WatchAnswer> {
    // Not started on this task's thread (the system arbiter's, the registry's own): anywhere.
    let Ok(found) = serving.registry.send(Find(call.order.clone(), None)).await else {
        return None;
    };
    let Some(actor) = found else {
        let store = serving.store.clone();
        let order = call.order.clone();
        let record = actix_web::rt::task::spawn_blocking(move || store.order(&order))
            .await
            .ok()?
            .ok()?;
        return Some(match record {
            Some(record) => WatchAnswer::Ended(record.view()),
            None => WatchAnswer::NotFound,
        });
    };
    let key = (call.order.clone(), call.node.clone());
    let outlet = {
        let mut outlets = lock(&serving.outlets);
        match outlets.get(&key) {
            Some(outlet) if outlet.connected() => outlet.clone(),
            _ => {
                let outlet = Outlet {
                    id: NEXT_OUTLET_ID.fetch_sub(1, Ordering::Relaxed),
                    cluster: serving.cluster.clone(),
                    order: call.order.clone(),
                    node: call.node.clone(),
                    renewed: Instant::now(),
                    stream: None,
                }
                .start();
                outlets.insert(key, outlet.clone());
                outlet
            }
        }
    };
    let id = outlet.send(Renew(actor.clone().recipient())).await.ok()?;
    let first = actor
        .send(Subscribe {
            watcher_id: id,
            watcher: Sink::Mailbox(outlet.recipient()),
            resume: call.resume,
        })
        .await
        .ok()?;
    Some(WatchAnswer::Live(first.iter().map(|f| f.wire()).collect()))
}

/// Replays a forwarded REST call against this node's own HTTP listener.
async fn replay_http(serving: &Serving, message: &NatsMessage) -> (HeaderMap, Bytes) {
    let header = |name: &str| {
        message
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_string())
    };
    let mut answer = HeaderMap::new();
    answer.insert(headers::NODE, serving.cluster.node());
    let method = header(headers::METHOD)
        .and_then(|m| reqwest::Method::from_bytes(m.as_bytes()).ok())
        .unwrap_or(reqwest::Method::GET);
    let path = header(headers::PATH).unwrap_or_else(|| "/".into());
    let mut request = serving
        .http
        .request(method, format!("{}{path}", serving.base_url))
        .header(headers::FORWARDED, serving.cluster.node())
        .body(message.payload.clone());
    for name in [headers::AUTHORIZATION, headers::CONTENT_TYPE] {
        if let Some(value) = header(name) {
            request = request.header(name, value);
        }
    }
    let replayed = async {
        let response = request.send().await?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Ok::<_, reqwest::Error>((status, content_type, response.bytes().await?))
    };
    match replayed.await {
        Ok((_, _, body)) if body.len() > serving.cluster.max_body() => {
            // Better a clear error than a reply the broker drops (the caller would wait, then
            // blame the owner).
            let message = format!(
                "the answer ({} bytes) is more than the broker carries between nodes ({}); ask for less (from_ms/to_ms) or ask node {}",
                body.len(),
                serving.cluster.max_body(),
                serving.cluster.node()
            );
            error_answer(answer, 502, "too_large_to_forward", &message)
        }
        Ok((status, content_type, body)) => {
            answer.insert(headers::STATUS, status.to_string().as_str());
            if let Some(content_type) = content_type {
                answer.insert(headers::CONTENT_TYPE, content_type.as_str());
            }
            (answer, body)
        }
        Err(error) => {
            tracing::warn!(%error, "replaying a forwarded request failed");
            let message = format!(
                "owner {} could not serve the request",
                serving.cluster.node()
            );
            error_answer(answer, 503, "owner_unavailable", &message)
        }
    }
}

/// A forwarded call's answer that is an error of this node's own, in the API's error shape.
fn error_answer(
    mut answer: HeaderMap,
    status: u16,
    code: &str,
    message: &str,
) -> (HeaderMap, Bytes) {
    answer.insert(headers::STATUS, status.to_string().as_str());
    answer.insert(headers::CONTENT_TYPE, "application/json");
    let body = ErrorAnswer::new(code, message);
    // unwrap: two strings always serialise
    (answer, Bytes::from(serde_json::to_vec(&body).unwrap()))
}

/// Sends one order's frames to one other node.
struct Outlet {
    id: u64,
    cluster: Arc<Cluster>,
    order: OrderId,
    node: String,
    renewed: Instant,
    /// The stream it is subscribed to, to unsubscribe when it stops.
    stream: Option<Recipient<Unsubscribe>>,
}

impl Actor for Outlet {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Frames queue here only while the broker connection is slow; the order's fan-out treats
        // a full mailbox as a slow watcher (latest state only), and the node catches up by offset.
        ctx.set_mailbox_capacity(1024);
        ctx.run_interval(RENEW_EVERY, |act, ctx| {
            if act.renewed.elapsed() > RENEW_EVERY * 4 {
                tracing::debug!(order_id = %act.order, node = act.node, "watch lease lapsed");
                ctx.stop();
            }
        });
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        if let Some(stream) = &self.stream {
            stream.do_send(Unsubscribe {
                watcher_id: self.id,
            });
        }
    }
}

/// Renews the lease; the answer is the watcher id to subscribe with.
#[derive(Message)]
#[rtype(result = "u64")]
struct Renew(Recipient<Unsubscribe>);

impl Handler<Renew> for Outlet {
    type Result = u64;

    fn handle(&mut self, msg: Renew, _: &mut Context<Self>) -> u64 {
        self.renewed = Instant::now();
        self.stream = Some(msg.0);
        self.id
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Close;

impl Handler<Close> for Outlet {
    type Result = ();

    fn handle(&mut self, _: Close, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Handler<Push> for Outlet {
    type Result = ();

    fn handle(&mut self, msg: Push, ctx: &mut Context<Self>) {
        match msg {
            Push::Frame(frame) => {
                let note = UpdateNote {
                    order: self.order.clone(),
                    frame: frame.wire(),
                };
                let (cluster, node) = (self.cluster.clone(), self.node.clone());
                // wait(): frames leave in the order they were published.
                ctx.wait(
                    async move { cluster.notify(&node, Kind::Update, &note).await }
                        .into_actor(self),
                );
            }
            // The node is too far behind: it catches up by offset when it renews.
            Push::Evict => ctx.stop(),
        }
    }
}
