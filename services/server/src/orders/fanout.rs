//! An order's stream as its watchers see it: the published frames, the resume buffer, and the
//! delivery to each watcher with conflation and eviction of slow ones.
//!
//! Shared by the order's own actor (on the node that owns the order) and, in broker mode, by the
//! mirror of a remote order on every other node that has watchers of it, so a watcher gets the
//! same frames, the same resume and the same slow-watcher treatment wherever it is connected.
//!
//! The resume buffer ([`crate::orders::resume_buffer`]) keeps what changes between updates, not
//! the frames: the frames of a replay are rebuilt (and encoded) only when a watcher resumes, which
//! is rare.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::orders::frames::{Frame, FrameKind};
use crate::orders::resume_buffer::{ResumeBuffer, ResumeLimits};

/// How often the latest state is offered again to watchers that were too slow to take it.
const RETRY_SLOW_EVERY: Duration = Duration::from_millis(200);
/// The close code of a watcher that stopped reading.
pub const CLOSE_TOO_SLOW: u16 = 4008;

/// What a stream sends a watcher that is an actor of its own (a broker outlet; watch sessions
/// have a [`WatchQueue`]).
#[derive(Message)]
#[rtype(result = "()")]
pub enum Push {
    /// The next frame to send on.
    Frame(Arc<Frame>),
    /// The watcher fell too far behind: stop.
    Evict,
}

/// Start watching; the reply is what to send first (a snapshot, or the replay of a resume).
#[derive(Message)]
#[rtype(result = "Vec<Arc<Frame>>")]
pub struct Subscribe {
    /// Unique per watcher; [`Unsubscribe`] names it.
    pub watcher_id: u64,
    /// Where the stream's frames go.
    pub watcher: Sink,
    /// Where the watcher left off, when it reconnects.
    pub resume: Option<Resume>,
}

/// A watcher's last seen position in the stream.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Resume {
    /// The offset of the last update the watcher saw.
    pub since: u64,
    /// The epoch of that update.
    pub epoch: String,
}

/// Stop watching.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unsubscribe {
    /// The id it subscribed with.
    pub watcher_id: u64,
}

/// Where a watcher's frames go.
#[derive(Clone)]
pub enum Sink {
    /// An actor's mailbox, bounded by its capacity (a broker outlet).
    Mailbox(Recipient<Push>),
    /// A watch session's [`WatchQueue`].
    Queue(Arc<WatchQueue>),
}

impl Sink {
    /// Tells the watcher to close with `code` once it has written what is queued for it.
    pub fn evict(&self, code: u16, reason: String) {
        match self {
            // do_send ignores the full mailbox: the eviction comes after what is already queued.
            Sink::Mailbox(recipient) => recipient.do_send(Push::Evict),
            Sink::Queue(queue) => queue.evict(code, reason),
        }
    }
}

/// Tells a watch session that its [`WatchQueue`] has something for it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Wake;

/// The frames waiting for one watch session, bounded (`--watcher-queue`).
///
/// A queued frame is a shared pointer here, 8 bytes; in an actix mailbox each message costs two
/// allocations of about 80 bytes, so a watcher that stopped reading held 80 bytes per queued
/// frame (20 KiB at the default queue of 256). The session's mailbox holds at most one [`Wake`],
/// sent when the queue gets something and the session was not already told.
pub struct WatchQueue {
    state: Mutex<QueueState>,
    capacity: usize,
    wake: Recipient<Wake>,
}

struct QueueState {
    frames: VecDeque<Arc<Frame>>,
    /// The close the session writes once `frames` is empty.
    evict: Option<(u16, String)>,
    /// A [`Wake`] is on its way or the session is draining: no other is sent.
    woken: bool,
    /// The session has stopped.
    closed: bool,
}

/// What a watch session writes next.
pub enum Queued {
    Frame(Arc<Frame>),
    /// Close with this code and reason.
    Evict(u16, String),
}

enum Offered {
    Taken,
    Full(Arc<Frame>),
    Closed,
}

impl WatchQueue {
    /// An empty queue of at most `capacity` frames; `wake` is the session's.
    pub fn new(capacity: usize, wake: Recipient<Wake>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(QueueState {
                frames: VecDeque::new(),
                evict: None,
                woken: false,
                closed: false,
            }),
            capacity: capacity.max(1),
            wake,
        })
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // Every change under the lock is a single push, pop or flag: a panic leaves it consistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Wakes the session unless it was already told; called with the lock held, so a session
    /// that finds the queue empty (and clears `woken`) cannot miss what comes next.
    fn wake(&self, state: &mut QueueState) {
        if !state.woken {
            state.woken = true;
            self.wake.do_send(Wake);
        }
    }

    fn offer(&self, frame: Arc<Frame>) -> Offered {
        let mut state = self.lock();
        if state.closed {
            return Offered::Closed;
        }
        if state.frames.len() >= self.capacity || state.evict.is_some() {
            return Offered::Full(frame);
        }
        state.frames.push_back(frame);
        self.wake(&mut state);
        Offered::Taken
    }

    fn evict(&self, code: u16, reason: String) {
        let mut state = self.lock();
        if !state.closed && state.evict.is_none() {
            state.evict = Some((code, reason));
            self.wake(&mut state);
        }
    }

    /// The next thing to write, or `None` when there is nothing (the next offer wakes the
    /// session again).
    pub fn next(&self) -> Option<Queued> {
        let mut state = self.lock();
        if let Some(frame) = state.frames.pop_front() {
            return Some(Queued::Frame(frame));
        }
        match state.evict.take() {
            Some((code, reason)) => Some(Queued::Evict(code, reason)),
            None => {
                state.woken = false;
                None
            }
        }
    }

    /// The session has stopped: offers fail from now on, and what is queued is dropped.
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.frames = VecDeque::new();
    }
}

/// One watcher of the stream.
///
/// A watcher's session is driven by its socket: while the peer does not read, the session does
/// not run and its queue (bounded, `--watcher-queue`: a [`WatchQueue`], or a broker outlet's
/// mailbox) fills. A full queue is the signal that the watcher is slow; from then on it is
/// offered only the latest state (conflation) until it takes one, and after the slow-watcher
/// timeout it is dropped and told to close with 4008. So the memory a slow watcher costs is its
/// bounded queue, never one that grows with the stream.
struct Watcher {
    sink: Sink,
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
        let refused = match &self.sink {
            Sink::Mailbox(recipient) => match recipient.try_send(Push::Frame(frame)) {
                Ok(()) => None,
                Err(SendError::Full(Push::Frame(frame))) => Some(frame),
                Err(SendError::Full(Push::Evict) | SendError::Closed(_)) => return Offer::Gone,
            },
            Sink::Queue(queue) => match queue.offer(frame) {
                Offered::Taken => None,
                Offered::Full(frame) => Some(frame),
                Offered::Closed => return Offer::Gone,
            },
        };
        let Some(frame) = refused else {
            self.lagging = None;
            return Offer::Taken;
        };
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
}

/// An actor that serves a stream.
pub trait Streams: Actor<Context = Context<Self>> {
    /// The stream's fan-out, for the retries of slow watchers it schedules on the actor.
    fn fanout(&mut self) -> &mut Fanout;
}

/// The watchers and recent updates of one order's stream.
pub struct Fanout {
    watchers: HashMap<u64, Watcher>,
    /// A retry of slow watchers is scheduled.
    retry_scheduled: bool,
    /// The updates published recently, for watchers that resume.
    resume: ResumeBuffer,
    /// The last published state.
    published: Arc<Frame>,
    slow_watcher_timeout: Duration,
}

impl Fanout {
    /// A stream whose current state is `published`; nothing before it can be replayed.
    pub fn new(
        published: Arc<Frame>,
        limits: ResumeLimits,
        slow_watcher_timeout: Duration,
    ) -> Self {
        Self {
            watchers: HashMap::new(),
            retry_scheduled: false,
            resume: ResumeBuffer::new(limits),
            published,
            slow_watcher_timeout,
        }
    }

    /// The last published state.
    pub fn published(&self) -> &Arc<Frame> {
        &self.published
    }

    /// Someone watches the stream.
    pub fn has_watchers(&self) -> bool {
        !self.watchers.is_empty()
    }

    /// Publishes the next frame of the stream: to every watcher and into the resume buffer.
    /// After a final frame the watchers are let go (their sessions close on it).
    pub fn publish<A: Streams>(&mut self, frame: Arc<Frame>, ctx: &mut Context<A>) {
        self.fan_out(&frame, ctx);
        self.remember(frame);
        if self.published.is_final {
            self.watchers.clear();
        }
    }

    /// Makes `frame` the current state and keeps its update for resumes.
    fn remember(&mut self, frame: Arc<Frame>) {
        self.resume.push(&frame.view, Instant::now());
        self.published = frame;
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
    /// stream cannot replay them (another epoch, a future offset, or no longer buffered).
    pub fn replay_for(&self, resume: &Resume) -> Option<Vec<Arc<Frame>>> {
        let current = &self.published.view;
        if resume.epoch != current.epoch || resume.since > current.offset {
            return None;
        }
        self.rebuild_after(resume.since, true)
    }

    /// The published frames after `offset`, in order, as they went out live; `None` when some
    /// are no longer buffered.
    pub fn frames_after(&self, offset: u64) -> Option<Vec<Arc<Frame>>> {
        self.rebuild_after(offset, false)
    }

    /// The updates after `offset` rebuilt as frames; `recovered` marks a replay.
    fn rebuild_after(&self, offset: u64, recovered: bool) -> Option<Vec<Arc<Frame>>> {
        let current = &self.published.view;
        if offset >= current.offset {
            return Some(Vec::new());
        }
        let views = self
            .resume
            .views_after(&current.epoch, offset, Instant::now())?;
        // The buffer takes every published update, so it ends at the current state; if it did
        // not, what it holds is not the stream the watcher saw.
        if views.last().map(|v| v.offset) != Some(current.offset) {
            return None;
        }
        Some(
            views
                .into_iter()
                .map(|view| Frame::encode(view, FrameKind::Update, recovered))
                .collect(),
        )
    }

    /// Adds (or replaces) a watcher; nothing is added once the stream has ended.
    pub fn add(&mut self, watcher_id: u64, sink: Sink) {
        if !self.published.is_final {
            let watcher = Watcher {
                sink,
                lagging: None,
            };
            self.watchers.insert(watcher_id, watcher);
        }
    }

    /// Takes the stream over in a new actor (the order moved): the retries of slow watchers that
    /// the old actor had scheduled go with it.
    pub fn adopt<A: Streams>(&mut self, ctx: &mut Context<A>) {
        self.retry_scheduled = false;
        if self.watchers.values().any(|w| w.lagging.is_some()) {
            self.schedule_retry(ctx);
        }
    }

    /// Drops a watcher (its session ended).
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
                // The close comes after what is already queued, once the watcher reads again;
                // until then it costs only that.
                let reason = format!("too slow: not reading for {} s", timeout.as_secs());
                watcher.sink.evict(CLOSE_TOO_SLOW, reason);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orders::resume_buffer::tests::{limits, view, EPOCH};

    #[test]
    fn an_active_order_holds_at_most_16_kib_of_stream_whatever_its_age() {
        const ORDERS: usize = 200;
        let _alone = crate::metrics::counting::measuring();
        let before = crate::metrics::counting::live_bytes();
        let mut orders: Vec<Fanout> = (0..ORDERS)
            .map(|_| {
                let first = Frame::encode(view(0), FrameKind::Update, false);
                Fanout::new(first, ResumeLimits::default(), Duration::from_secs(10))
            })
            .collect();
        let mut per_order = Vec::new();
        for offset in 1..=1000 {
            for fanout in &mut orders {
                fanout.remember(Frame::encode(view(offset), FrameKind::Update, false));
                // A watcher wrote it: its encodings are built and stay with the latest state.
                fanout.published().json();
                fanout.published().proto();
            }
            if offset % 250 == 0 {
                let bytes = crate::metrics::counting::live_bytes() - before;
                per_order.push(bytes / ORDERS as isize);
            }
        }
        eprintln!("bytes per order after 250, 500, 750, 1000 updates: {per_order:?}");
        assert!(per_order.iter().all(|&b| b <= 16 * 1024), "{per_order:?}");
        assert!(
            per_order.windows(2).all(|w| w[1] <= w[0] + 256),
            "does not grow with time: {per_order:?}"
        );
        drop(orders);
    }

    /// Counts the wake-ups a watch queue sends.
    struct Wakes(Arc<std::sync::atomic::AtomicUsize>);

    impl Actor for Wakes {
        type Context = Context<Self>;
    }

    impl Handler<Wake> for Wakes {
        type Result = ();

        fn handle(&mut self, _: Wake, _: &mut Context<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[actix_rt::test]
    async fn a_watch_queue_is_bounded_wakes_once_per_drain_and_closes_after_its_frames() {
        use std::sync::atomic::Ordering::SeqCst;
        let wakes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let queue = WatchQueue::new(2, Wakes(wakes.clone()).start().recipient());
        let mut watcher = Watcher {
            sink: Sink::Queue(queue.clone()),
            lagging: None,
        };
        let frame = |offset| Frame::encode(view(offset), FrameKind::Update, false);
        let settle = || tokio::time::sleep(Duration::from_millis(20));
        let next_offset = || match queue.next() {
            Some(Queued::Frame(frame)) => Some(frame.view.offset),
            Some(Queued::Evict(code, _)) => panic!("evicted ({code}) with frames left"),
            None => None,
        };

        assert!(matches!(watcher.offer(frame(1)), Offer::Taken));
        assert!(matches!(watcher.offer(frame(2)), Offer::Taken));
        // Full: the watcher is slow and keeps the newest frame as its latest.
        assert!(matches!(watcher.offer(frame(3)), Offer::Lagging));
        assert_eq!(
            watcher.lagging.as_ref().map(|l| l.latest.view.offset),
            Some(3)
        );
        settle().await;
        assert_eq!(
            wakes.load(SeqCst),
            1,
            "one wake-up until the session drains"
        );

        assert_eq!(next_offset(), Some(1));
        assert!(matches!(watcher.offer(frame(3)), Offer::Taken));
        assert!(watcher.lagging.is_none());
        assert_eq!(
            (next_offset(), next_offset(), next_offset()),
            (Some(2), Some(3), None)
        );
        settle().await;
        assert_eq!(wakes.load(SeqCst), 1, "no wake-up while the session drains");

        // Drained: the next frame wakes it again, and an eviction comes after the frames.
        assert!(matches!(watcher.offer(frame(4)), Offer::Taken));
        watcher.sink.evict(CLOSE_TOO_SLOW, "too slow".into());
        assert_eq!(next_offset(), Some(4));
        assert!(matches!(
            queue.next(),
            Some(Queued::Evict(CLOSE_TOO_SLOW, _))
        ));
        assert!(queue.next().is_none());
        settle().await;
        assert_eq!(wakes.load(SeqCst), 2);

        // The session stopped: the watcher is gone.
        queue.close();
        assert!(matches!(watcher.offer(frame(5)), Offer::Gone));
    }

    #[test]
    fn the_fanout_replays_marked_recovered_and_snapshots_what_it_cannot() {
        let first = Frame::encode(view(0), FrameKind::Update, false);
        let mut fanout = Fanout::new(first, limits(8, 60), Duration::from_secs(1));
        for offset in 1..=20 {
            fanout.remember(Frame::encode(view(offset), FrameKind::Update, false));
        }
        let resume = |since: u64, epoch: &str| Resume {
            since,
            epoch: epoch.into(),
        };
        let replay = fanout.first_frames(Some(&resume(14, EPOCH)));
        assert_eq!(
            replay.iter().map(|f| f.view.offset).collect::<Vec<_>>(),
            (15..=20).collect::<Vec<_>>()
        );
        for frame in &replay {
            assert_eq!(frame.kind(), FrameKind::Update);
            assert_eq!(
                frame.json(),
                Frame::encode(view(frame.view.offset), FrameKind::Update, true).json()
            );
        }
        assert!(fanout.first_frames(Some(&resume(20, EPOCH))).is_empty());
        let live = fanout.frames_after(18).unwrap();
        assert!(live
            .iter()
            .all(|f| !f.json().contains(r#""recovered":true"#)));
        for cannot in [resume(5, EPOCH), resume(14, "other"), resume(21, EPOCH)] {
            let first = fanout.first_frames(Some(&cannot));
            assert_eq!(first.len(), 1, "{cannot:?}");
            assert_eq!(first[0].kind(), FrameKind::Snapshot);
            assert_eq!(first[0].view, view(20));
            assert!(first[0].json().contains(r#""recovered":false"#));
        }
    }
}
