//! Broker mode: watchers of orders that another node owns.
//!
//! A node keeps one mirror per foreign order that has watchers here. The mirror asks the owner to
//! send it the order's updates, fans them out to its watchers exactly as the owner's own actor
//! does (`fanout`), and keeps the stream whole: it applies frames in offset order, and when one is
//! missing (a broker hiccup, the owner restarting) it asks the owner to replay from the last
//! offset it has. The same request, repeated every few seconds, renews the owner's lease on
//! sending updates here, so a node that died stops costing the owner anything.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use trackline_core::order::OrderView;
use trackline_core::OrderId;

use crate::cluster::client::Cluster;
use crate::cluster::protocol::{CallError, Kind, UnwatchNote, WatchAnswer, WatchCall};
use crate::orders::errors::OrderError;
use crate::orders::fanout::{Fanout, Resume, Streams, Subscribe, Unsubscribe};
use crate::orders::frames::{Frame, FrameKind, WireFrame};
use crate::orders::order_actor::{OrderSettings, LINGER_AFTER_FINAL};

/// How often a mirror renews its lease with the owner and checks for missed frames.
pub const RENEW_EVERY: Duration = Duration::from_secs(3);
/// A mirror without watchers for this long lets the owner know and stops.
const IDLE_LINGER: Duration = Duration::from_secs(30);

/// The mirrors of this node, by order.
pub struct RemoteWatches {
    cluster: Arc<Cluster>,
    settings: Arc<OrderSettings>,
    mirrors: HashMap<OrderId, Addr<RemoteOrder>>,
}

impl RemoteWatches {
    pub fn new(cluster: Arc<Cluster>, settings: Arc<OrderSettings>) -> Self {
        Self {
            cluster,
            settings,
            mirrors: HashMap::new(),
        }
    }
}

impl Actor for RemoteWatches {
    type Context = Context<Self>;
}

/// What a watch of a foreign order starts from.
pub enum Opened {
    Live(Addr<RemoteOrder>),
    Ended(OrderView),
}

/// Find (or start) the mirror of a foreign order, in step with its owner.
#[derive(Message)]
#[rtype(result = "Result<Opened, OrderError>")]
pub struct Open(pub OrderId);

impl Handler<Open> for RemoteWatches {
    type Result = ResponseFuture<Result<Opened, OrderError>>;

    fn handle(&mut self, msg: Open, _: &mut Context<Self>) -> Self::Result {
        let mirror = match self.mirrors.get(&msg.0) {
            Some(addr) if addr.connected() => addr.clone(),
            _ => {
                let mirror = RemoteOrder {
                    order: msg.0.clone(),
                    owner: self.cluster.owner_of(&msg.0).to_string(),
                    cluster: self.cluster.clone(),
                    settings: self.settings.clone(),
                    stream: None,
                };
                let addr = mirror.start();
                self.mirrors.insert(msg.0, addr.clone());
                metrics::gauge!("trackline_remote_watch_orders").set(self.mirrors.len() as f64);
                addr
            }
        };
        Box::pin(async move {
            match mirror.send(Sync).await {
                Ok(Ok(None)) => Ok(Opened::Live(mirror)),
                Ok(Ok(Some(ended))) => Ok(Opened::Ended(ended)),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(OrderError::Internal(format!("remote watch: {e}"))),
            }
        })
    }
}

/// The next frame of a foreign order, as published by its owner.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Arrived {
    pub order: OrderId,
    pub frame: WireFrame,
}

impl Handler<Arrived> for RemoteWatches {
    type Result = ();

    fn handle(&mut self, msg: Arrived, _: &mut Context<Self>) {
        match self.mirrors.get(&msg.order) {
            Some(mirror) if mirror.connected() => mirror.do_send(msg),
            _ => {
                // Nobody here watches it any more: tell the owner to stop sending.
                self.mirrors.remove(&msg.order);
                metrics::gauge!("trackline_remote_watch_orders").set(self.mirrors.len() as f64);
                let cluster = self.cluster.clone();
                let owner = cluster.owner_of(&msg.order).to_string();
                let note = UnwatchNote {
                    order: msg.order,
                    node: cluster.node().to_string(),
                };
                actix_rt::spawn(async move { cluster.notify(&owner, Kind::Unwatch, &note).await });
            }
        }
    }
}

/// The mirror of one foreign order on this node.
pub struct RemoteOrder {
    order: OrderId,
    owner: String,
    cluster: Arc<Cluster>,
    settings: Arc<OrderSettings>,
    /// `None` until the owner first answered.
    stream: Option<Fanout>,
}

impl Streams for RemoteOrder {
    fn fanout(&mut self) -> &mut Fanout {
        // unwrap: only frames published through `absorb` reach the fan-out, and absorb creates it
        self.stream.as_mut().unwrap()
    }
}

impl RemoteOrder {
    /// Asks the owner for the frames after `resume` (or a snapshot) and renews its lease.
    fn ask_owner(
        &self,
        resume: Option<Resume>,
    ) -> impl std::future::Future<Output = Result<WatchAnswer, CallError>> + 'static {
        let cluster = self.cluster.clone();
        let owner = self.owner.clone();
        let call = WatchCall {
            order: self.order.clone(),
            node: cluster.node().to_string(),
            resume,
        };
        async move { cluster.call(&owner, Kind::Watch, &call).await }
    }

    /// Where this mirror is: the resume point to ask the owner from.
    fn position(&self) -> Option<Resume> {
        self.stream.as_ref().map(|s| Resume {
            since: s.published().view.offset,
            epoch: s.published().view.epoch.clone(),
        })
    }

    /// Applies frames from the owner in order; returns false when one is missing (ask again).
    fn absorb(&mut self, frames: Vec<Arc<Frame>>, ctx: &mut Context<Self>) -> bool {
        for frame in frames {
            let Some(stream) = self.stream.as_mut() else {
                let stream = Fanout::new(
                    frame,
                    self.settings.resume,
                    self.settings.slow_watcher_timeout,
                );
                self.stream = Some(stream);
                continue;
            };
            let last = &stream.published().view;
            let next = &frame.view;
            let in_step = next.epoch != last.epoch
                || next.offset == last.offset + 1
                || (next.offset > last.offset && frame.kind() == FrameKind::Snapshot);
            if next.epoch == last.epoch && next.offset <= last.offset {
                continue; // already have it
            }
            if !in_step {
                return false;
            }
            stream.publish(frame, ctx);
            metrics::counter!("trackline_remote_updates_total").increment(1);
        }
        if self.stream.as_ref().is_some_and(|s| s.published().is_final) {
            ctx.run_later(LINGER_AFTER_FINAL, |_, ctx| ctx.stop());
        }
        true
    }

    /// Catches up with the owner: replays what this mirror missed, renews the lease.
    fn catch_up(&mut self, ctx: &mut Context<Self>) {
        let asked = self.ask_owner(self.position());
        ctx.wait(asked.into_actor(self).map(|answer, act, ctx| match answer {
            Ok(WatchAnswer::Live(frames)) => {
                let frames = frames.into_iter().map(Frame::from_wire).collect();
                if !act.absorb(frames, ctx) {
                    tracing::warn!(order_id = %act.order, "owner's replay has a gap; asking again");
                }
            }
            Ok(WatchAnswer::Ended(view)) => {
                act.absorb(vec![Frame::encode(view, FrameKind::Update, false)], ctx);
            }
            Ok(WatchAnswer::NotFound) => ctx.stop(),
            Err(error) => {
                tracing::debug!(order_id = %act.order, %error, "owner unreachable; watchers wait");
            }
        }));
    }
}

impl Actor for RemoteOrder {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(RENEW_EVERY, |act, ctx| {
            if act.stream.as_ref().is_some_and(Fanout::has_watchers) {
                act.catch_up(ctx);
            }
        });
        ctx.run_interval(IDLE_LINGER, |act, ctx| {
            if !act.stream.as_ref().is_some_and(Fanout::has_watchers) {
                ctx.stop();
            }
        });
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        let cluster = self.cluster.clone();
        let owner = self.owner.clone();
        let note = UnwatchNote {
            order: self.order.clone(),
            node: cluster.node().to_string(),
        };
        actix_rt::spawn(async move { cluster.notify(&owner, Kind::Unwatch, &note).await });
    }
}

/// Gets in step with the owner; `Some` with the final state when the order has ended.
#[derive(Message)]
#[rtype(result = "Result<Option<OrderView>, OrderError>")]
struct Sync;

impl Handler<Sync> for RemoteOrder {
    type Result = AtomicResponse<Self, Result<Option<OrderView>, OrderError>>;

    fn handle(&mut self, _: Sync, _: &mut Context<Self>) -> Self::Result {
        let asked = self.ask_owner(self.position());
        AtomicResponse::new(Box::pin(asked.into_actor(self).map(
            |answer, act, ctx| match answer? {
                WatchAnswer::Live(frames) => {
                    let frames = frames.into_iter().map(Frame::from_wire).collect();
                    act.absorb(frames, ctx);
                    match &act.stream {
                        Some(stream) if stream.published().is_final => {
                            Ok(Some(stream.published().view.clone()))
                        }
                        Some(_) => Ok(None),
                        None => Err(OrderError::Internal("owner sent no state".into())),
                    }
                }
                WatchAnswer::Ended(view) => Ok(Some(view)),
                WatchAnswer::NotFound => Err(OrderError::NotFound(act.order.clone())),
            },
        )))
    }
}

impl Handler<Subscribe> for RemoteOrder {
    type Result = AtomicResponse<Self, Vec<Arc<Frame>>>;

    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) -> Self::Result {
        let Some(stream) = self.stream.as_mut() else {
            return AtomicResponse::new(Box::pin(fut::ready(Vec::new())));
        };
        // What the mirror can answer itself (a snapshot, or a resume it still buffers).
        let local = match &msg.resume {
            None => Some(stream.first_frames(None)),
            Some(resume) => stream.replay_for(resume),
        };
        if let Some(first) = local {
            stream.add(msg.watcher_id, msg.watcher);
            return AtomicResponse::new(Box::pin(fut::ready(first)));
        }
        // An older resume: only the owner's buffer can say what the watcher missed.
        let asked = self.ask_owner(msg.resume.clone());
        AtomicResponse::new(Box::pin(asked.into_actor(self).map(
            move |answer, act, ctx| {
                let first: Vec<Arc<Frame>> = match answer {
                    Ok(WatchAnswer::Live(frames)) => {
                        frames.into_iter().map(Frame::from_wire).collect()
                    }
                    Ok(WatchAnswer::Ended(view)) => {
                        vec![Frame::encode(view, FrameKind::Snapshot, false)]
                    }
                    Ok(WatchAnswer::NotFound) | Err(_) => Vec::new(),
                };
                // The owner may be ahead of the mirror: what it sent is news for everyone here.
                act.absorb(first.clone(), ctx);
                let Some(stream) = act.stream.as_mut() else {
                    return first;
                };
                let through = first.last().map_or(0, |f| f.view.offset);
                let newer = stream.frames_after(through).unwrap_or_default();
                stream.add(msg.watcher_id, msg.watcher);
                first.into_iter().chain(newer).collect()
            },
        )))
    }
}

impl Handler<Unsubscribe> for RemoteOrder {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _: &mut Context<Self>) {
        if let Some(stream) = self.stream.as_mut() {
            stream.remove(msg.watcher_id);
        }
    }
}

impl Handler<Arrived> for RemoteOrder {
    type Result = ();

    fn handle(&mut self, msg: Arrived, ctx: &mut Context<Self>) {
        if self.stream.is_none() {
            return;
        }
        if !self.absorb(vec![Frame::from_wire(msg.frame)], ctx) {
            // A frame is missing in between: get the owner to replay it (queued updates wait).
            self.catch_up(ctx);
        }
    }
}
