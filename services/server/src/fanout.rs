//! An order's stream as its watchers see it: the published frames, the resume buffer, and the
//! delivery to each watcher with conflation and eviction of slow ones.
//!
//! Shared by the order's own actor (on the node that owns the order) and, in broker mode, by the
//! mirror of a remote order on every other node that has watchers of it, so a watcher gets the
//! same frames, the same resume and the same slow-watcher treatment wherever it is connected.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::frames::{Frame, FrameKind};

/// How often the latest state is offered again to watchers that were too slow to take it.
const RETRY_SLOW_EVERY: Duration = Duration::from_millis(200);
/// The close code of a watcher that stopped reading.
pub const CLOSE_TOO_SLOW: u16 = 4008;

/// What a stream sends its watchers.
#[derive(Message)]
#[rtype(result = "()")]
pub enum Push {
    /// The next frame to write.
    Frame(Arc<Frame>),
    /// Close with `code`: the watcher stopped reading.
    Evict { code: u16, reason: String },
}

/// Start watching; the reply is what to send first (a snapshot, or the replay of a resume).
#[derive(Message)]
#[rtype(result = "Vec<Arc<Frame>>")]
pub struct Subscribe {
    pub watcher_id: u64,
    pub watcher: Recipient<Push>,
    pub resume: Option<Resume>,
}

/// A watcher's last seen position in the stream.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Resume {
    pub since: u64,
    pub epoch: String,
}

/// Stop watching.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unsubscribe {
    pub watcher_id: u64,
}

/// One watcher of the stream.
///
/// A watcher's session is driven by its socket: while the peer does not read, the session does
/// not run and its mailbox (bounded, `--watcher-queue`) fills. A full mailbox is the signal that
/// the watcher is slow; from then on it is offered only the latest state (conflation) until it
/// takes one, and after the slow-watcher timeout it is dropped and told to close with 4008. So the
/// memory a slow watcher costs is its mailbox, never a queue that grows with the stream.
struct Watcher {
    recipient: Recipient<Push>,
    lagging: Option<Lag>,
}

/// The newest frame a slow watcher has not been able to take, and since when it is slow.
struct Lag {
    since: Instant,
    latest: Arc<Frame>,
}

enum Offer {
    Taken,
    Lagging,
    Gone,
}

impl Watcher {
    fn offer(&mut self, frame: Arc<Frame>) -> Offer {
        use actix::dev::SendError;
        match self.recipient.try_send(Push::Frame(frame)) {
            Ok(()) => {
                self.lagging = None;
                Offer::Taken
            }
            Err(SendError::Full(Push::Frame(frame))) => {
                let since = self
                    .lagging
                    .as_ref()
                    .map_or_else(Instant::now, |lag| lag.since);
                if self.lagging.is_none() {
                    metrics::counter!("trackline_watchers_conflated_total").increment(1);
                }
                self.lagging = Some(Lag {
                    since,
                    latest: frame,
                });
                Offer::Lagging
            }
            Err(SendError::Full(Push::Evict { .. }) | SendError::Closed(_)) => Offer::Gone,
        }
    }
}

/// An actor that serves a stream.
pub trait Streams: Actor<Context = Context<Self>> {
    fn fanout(&mut self) -> &mut Fanout;
}

/// The watchers and recent frames of one order's stream.
pub struct Fanout {
    watchers: HashMap<u64, Watcher>,
    /// A retry of slow watchers is scheduled.
    retry_scheduled: bool,
    /// Published frames, newest last, for watchers that resume.
    replay: VecDeque<Arc<Frame>>,
    /// The last published state.
    published: Arc<Frame>,
    resume_buffer: usize,
    slow_watcher_timeout: Duration,
}

impl Fanout {
    pub fn new(
        published: Arc<Frame>,
        resume_buffer: usize,
        slow_watcher_timeout: Duration,
    ) -> Self {
        Self {
            watchers: HashMap::new(),
            retry_scheduled: false,
            replay: VecDeque::new(),
            published,
            resume_buffer: resume_buffer.max(1),
            slow_watcher_timeout,
        }
    }

    /// The last published state.
    pub fn published(&self) -> &Arc<Frame> {
        &self.published
    }

    pub fn has_watchers(&self) -> bool {
        !self.watchers.is_empty()
    }

    /// Publishes the next frame of the stream: into the resume buffer and to every watcher.
    /// After a final frame the watchers are let go (their sessions close on it).
    pub fn publish<A: Streams>(&mut self, frame: Arc<Frame>, ctx: &mut Context<A>) {
        self.fan_out(&frame, ctx);
        if self.replay.len() >= self.resume_buffer {
            self.replay.pop_front();
        }
        self.replay.push_back(frame.clone());
        self.published = frame;
        if self.published.is_final {
            self.watchers.clear();
        }
    }

    /// What a new watcher gets first: the frames after its resume point when the stream can
    /// still replay them, else a snapshot of the current state.
    pub fn first_frames(&self, resume: Option<&Resume>) -> Vec<Arc<Frame>> {
        resume
            .and_then(|resume| self.replay_for(resume))
            .unwrap_or_else(|| {
                let current = &self.published;
                vec![Frame::encode(
                    current.view.clone(),
                    FrameKind::Snapshot,
                    false,
                )]
            })
    }

    /// The frames a watcher resuming at `resume` missed, marked as replayed; `None` when the
    /// stream cannot replay them (another epoch, or no longer buffered).
    pub fn replay_for(&self, resume: &Resume) -> Option<Vec<Arc<Frame>>> {
        let current = &self.published.view;
        if resume.epoch != current.epoch || resume.since > current.offset {
            return None;
        }
        self.frames_after(resume.since)
            .map(|frames| frames.iter().map(|f| f.replayed()).collect())
    }

    /// The published frames after `offset`, in order; `None` when some are no longer buffered.
    pub fn frames_after(&self, offset: u64) -> Option<Vec<Arc<Frame>>> {
        if offset >= self.published.view.offset {
            return Some(Vec::new());
        }
        let oldest = self.replay.front()?.view.offset;
        (offset + 1 >= oldest).then(|| {
            self.replay
                .iter()
                .filter(|f| f.view.offset > offset)
                .cloned()
                .collect()
        })
    }

    /// Adds (or replaces) a watcher; nothing is added once the stream has ended.
    pub fn add(&mut self, watcher_id: u64, recipient: Recipient<Push>) {
        if !self.published.is_final {
            let watcher = Watcher {
                recipient,
                lagging: None,
            };
            self.watchers.insert(watcher_id, watcher);
        }
    }

    pub fn remove(&mut self, watcher_id: u64) {
        self.watchers.remove(&watcher_id);
    }

    /// Offers `frame` to every watcher; a slow one keeps it as its latest instead.
    fn fan_out<A: Streams>(&mut self, frame: &Arc<Frame>, ctx: &mut Context<A>) {
        let mut lagging = false;
        self.watchers.retain(|_, watcher| {
            // A slow watcher is offered every new frame too: the moment its queue has room it is
            // back in step, and while it has none the new frame replaces the one it did not take.
            let offer = watcher.offer(frame.clone());
            lagging |= matches!(offer, Offer::Lagging);
            !matches!(offer, Offer::Gone)
        });
        if lagging {
            self.schedule_retry(ctx);
        }
    }

    fn schedule_retry<A: Streams>(&mut self, ctx: &mut Context<A>) {
        if !self.retry_scheduled {
            self.retry_scheduled = true;
            ctx.run_later(RETRY_SLOW_EVERY, |act, ctx| {
                let fanout = act.fanout();
                fanout.retry_scheduled = false;
                fanout.retry_slow(ctx);
            });
        }
    }

    /// Offers slow watchers their latest frame again; drops those slow for too long.
    fn retry_slow<A: Streams>(&mut self, ctx: &mut Context<A>) {
        let timeout = self.slow_watcher_timeout;
        let mut still_lagging = false;
        self.watchers.retain(|id, watcher| {
            let Some(lag) = &watcher.lagging else {
                return true;
            };
            if lag.since.elapsed() > timeout {
                tracing::warn!(
                    watcher_id = id,
                    lag_ms = lag.since.elapsed().as_millis() as u64,
                    "watcher too slow, closing"
                );
                metrics::counter!("trackline_watchers_evicted_total").increment(1);
                // do_send ignores the full mailbox: the close is the next thing the watcher sees
                // once it reads again; until then it costs only what is already queued.
                let reason = format!("too slow: not reading for {} s", timeout.as_secs());
                watcher.recipient.do_send(Push::Evict {
                    code: CLOSE_TOO_SLOW,
                    reason,
                });
                return false;
            }
            let latest = lag.latest.clone();
            match watcher.offer(latest) {
                Offer::Taken => true,
                Offer::Lagging => {
                    still_lagging = true;
                    true
                }
                Offer::Gone => false,
            }
        });
        if still_lagging {
            self.schedule_retry(ctx);
        }
    }
}
