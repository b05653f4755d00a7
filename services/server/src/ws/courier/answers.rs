//! A courier connection's frames that are read and not yet answered, oldest first, each with the
//! routing of its fixes: they come out strictly in the order they went in, however their routings
//! finish, so a frame's refusals and its ack never overtake an earlier frame's.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use actix::MailboxError;
use futures_util::stream::{FuturesOrdered, StreamExt};
use trackline_core::fix::Rejection;

use crate::orders::messages::IngestReport;

/// Where a frame's fixes went: one report per order, known once durable.
pub type Routed = Pin<Box<dyn Future<Output = Result<Vec<IngestReport>, MailboxError>>>>;

/// A frame read but not yet answered.
pub struct Unanswered {
    /// Fixes refused by validation, in frame order, held back until earlier frames are answered.
    pub rejected: Vec<(u64, Rejection)>,
    /// The seq to ack once the frame is durable (0: none).
    pub ack: u64,
}

/// The frames in flight and their routings, in the order they were read.
#[derive(Default)]
pub struct InOrder {
    unanswered: VecDeque<Unanswered>,
    /// Yields the routings in the order they were pushed. Made at the first frame: an idle
    /// connection does not pay for its allocations.
    routed: Option<FuturesOrdered<Routed>>,
}

impl InOrder {
    /// Queues a frame behind every frame read before it.
    pub fn push(&mut self, frame: Unanswered, routed: Routed) {
        self.unanswered.push_back(frame);
        self.routed
            .get_or_insert_with(FuturesOrdered::new)
            .push_back(routed);
    }

    /// How many frames wait for their answer.
    pub fn len(&self) -> usize {
        self.unanswered.len()
    }

    pub fn is_empty(&self) -> bool {
        self.unanswered.is_empty()
    }

    /// The oldest frame with what became of its fixes, once its routing is done; `None` while it
    /// is not (`task` is woken when it is) or when nothing waits.
    pub fn next_ready(
        &mut self,
        task: &mut Context<'_>,
    ) -> Option<(Unanswered, Result<Vec<IngestReport>, MailboxError>)> {
        let Poll::Ready(Some(reports)) = self.routed.as_mut()?.poll_next_unpin(task) else {
            return None;
        };
        // unwrap: one Unanswered is pushed with every routing, and popped with its result
        let frame = self.unanswered.pop_front().unwrap();
        Some((frame, reports))
    }
}

#[cfg(test)]
mod tests {
    use futures_util::task::noop_waker_ref;
    use tokio::sync::oneshot;

    use super::*;

    /// A routing that finishes when `done` is sent on, storing `stored` fixes.
    fn routed_when(done: oneshot::Receiver<()>, stored: usize) -> Routed {
        Box::pin(async move {
            let _ = done.await;
            Ok(vec![IngestReport {
                stored,
                ..Default::default()
            }])
        })
    }

    fn frame(ack: u64) -> Unanswered {
        Unanswered {
            rejected: Vec::new(),
            ack,
        }
    }

    #[test]
    fn a_later_frame_that_finishes_first_waits_for_the_earlier_one() {
        let mut task = Context::from_waker(noop_waker_ref());
        let mut in_order = InOrder::default();
        assert!(in_order.next_ready(&mut task).is_none(), "nothing queued");
        let (first_done, first) = oneshot::channel();
        let (second_done, second) = oneshot::channel();
        in_order.push(frame(1), routed_when(first, 10));
        in_order.push(frame(2), routed_when(second, 20));
        second_done.send(()).unwrap();
        assert!(
            in_order.next_ready(&mut task).is_none(),
            "frame 1 is not durable yet"
        );
        assert_eq!(in_order.len(), 2);
        first_done.send(()).unwrap();
        let answered: Vec<_> = std::iter::from_fn(|| in_order.next_ready(&mut task))
            .map(|(frame, reports)| (frame.ack, reports.unwrap()[0].stored))
            .collect();
        assert_eq!(answered, [(1, 10), (2, 20)]);
        assert!(in_order.is_empty());
    }
}
