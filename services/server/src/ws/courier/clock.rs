//! The estimate of how far one connection's device clock is off the server's, from its frames.
//!
//! Each frame gives one sample: the server's receive time minus the device time of the frame's
//! newest fix. Network delay, a slow radio and an upload of buffered fixes only ever make a
//! sample *later* (larger) than the true offset, never earlier; so the lowest of a run of
//! agreeing samples is the estimate, and a sample clearly earlier than the offset in use proves
//! the device clock itself moved.
//!
//! An offset is only applied once it is consistent: [`SETTLE_FRAMES`] frames in a row agree on
//! it. A clock that runs behind must also have held for [`SETTLE_BEHIND_MS`] of server time,
//! because a buffered upload (old fixes from a phone whose clock is right, flushed after a
//! tunnel) looks like a clock behind for the few frames of the flush: those go out within
//! moments, and the next live frame breaks the run, so a flush is never "corrected". A clock
//! ahead cannot be imitated by delay and needs no wait beyond the frames.
//!
//! Offsets within the time bounds are never applied: the bounds absorb them, as before.

/// Samples that differ by at most this much are taken as the same clock offset (network jitter;
/// a jump of the device clock, or a buffer flush, moves a sample by far more).
pub const AGREE_MS: i64 = 10_000;
/// How many frames in a row must agree before their offset is applied.
pub const SETTLE_FRAMES: u32 = 3;
/// How long (server time) a run of samples behind the offset in use must last before it is
/// applied: longer than a buffer flush takes to arrive, short enough that a phone whose clock is
/// behind has its corrected position shown within seconds.
pub const SETTLE_BEHIND_MS: i64 = 5_000;

/// Consecutive samples that agree with each other within [`AGREE_MS`].
#[derive(Debug, Clone, Copy)]
struct Run {
    /// Server time of the run's first sample.
    since_ms: i64,
    count: u32,
    min: i64,
    max: i64,
}

impl Run {
    fn start(sample: i64, now_ms: i64) -> Self {
        Self {
            since_ms: now_ms,
            count: 1,
            min: sample,
            max: sample,
        }
    }

    /// Takes `sample` into the run, or says it does not belong (the run then starts afresh).
    fn extend(&mut self, sample: i64) -> bool {
        let (min, max) = (self.min.min(sample), self.max.max(sample));
        if max - min > AGREE_MS {
            return false;
        }
        (self.min, self.max) = (min, max);
        self.count += 1;
        true
    }
}

/// One courier connection's estimate of its device clock's offset. Fixed size: observing a frame
/// allocates nothing.
#[derive(Debug, Clone)]
pub struct ClockEstimator {
    /// An offset of at most this much (either way) is left to the time bounds.
    bound_ms: i64,
    /// The offset added to device times (0: the device's own clock is used).
    in_use_ms: i64,
    run: Option<Run>,
}

impl ClockEstimator {
    /// An estimator that corrects only offsets beyond `bound_ms` either way (the future bound:
    /// a clock further off than a fix may be ahead is off, not jittery).
    pub fn new(bound_ms: i64) -> Self {
        Self {
            bound_ms: bound_ms.max(AGREE_MS),
            in_use_ms: 0,
            run: None,
        }
    }

    /// The offset currently added to device times, milliseconds (0: none).
    pub fn offset_ms(&self) -> i64 {
        self.in_use_ms
    }

    /// Takes one frame's sample (`receive_ms - newest device time`, received at server time
    /// `now_ms`) and answers the offset to add to the frame's device times.
    pub fn observe(&mut self, sample_ms: i64, now_ms: i64) -> i64 {
        let run = self
            .run
            .and_then(|mut run| run.extend(sample_ms).then_some(run))
            .unwrap_or_else(|| Run::start(sample_ms, now_ms));
        self.run = Some(run);
        let earlier = sample_ms < self.in_use_ms - AGREE_MS;
        if earlier {
            // No delay makes a sample early: the device clock moved ahead of the offset in use,
            // which would now push fixes into the future. Back to the device's own clock until
            // a new offset settles (at once, if that clock is right).
            self.in_use_ms = 0;
        }
        let ahead_of_use = run.min < self.in_use_ms - AGREE_MS;
        let settled = run.count >= SETTLE_FRAMES
            && (ahead_of_use || now_ms - run.since_ms >= SETTLE_BEHIND_MS);
        if settled {
            // The lowest sample is the one least delayed, so the closest to the true offset.
            let settled_ms = if run.min.abs() <= self.bound_ms {
                0
            } else {
                run.min
            };
            // Once applied, an offset stays while the samples agree with it: refining it by the
            // milliseconds of a less delayed sample would step stored times backwards (and log
            // a new offset for nothing).
            if self.in_use_ms == 0 || (settled_ms - self.in_use_ms).abs() > AGREE_MS {
                self.in_use_ms = settled_ms;
            }
        }
        self.in_use_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_780_000_000_000;
    const HOUR: i64 = 3_600_000;
    const MIN: i64 = 60_000;

    /// Feeds one frame a second with `sample(i)`, starting at `t0`; the offsets answered.
    fn feed(
        est: &mut ClockEstimator,
        t0: i64,
        frames: i64,
        sample: impl Fn(i64) -> i64,
    ) -> Vec<i64> {
        (0..frames)
            .map(|i| est.observe(sample(i), t0 + i * 1000))
            .collect()
    }

    /// Network delay of 100-900 ms, varying from frame to frame.
    fn delay(i: i64) -> i64 {
        100 + (i * 337) % 800
    }

    #[test]
    fn a_right_clock_is_never_corrected() {
        let mut est = ClockEstimator::new(MIN);
        assert!(feed(&mut est, NOW, 60, delay).iter().all(|&o| o == 0));
    }

    #[test]
    fn a_clock_behind_is_corrected_once_it_has_held_and_by_the_least_delayed_sample() {
        let mut est = ClockEstimator::new(MIN);
        let offsets = feed(&mut est, NOW, 10, |i| 2 * HOUR + delay(i));
        // Frames 0..=4 are within the settling time; from frame 5 (5 s on) the offset applies.
        assert_eq!(offsets[..5], [0; 5]);
        let least = (0..6).map(|i| 2 * HOUR + delay(i)).min().unwrap();
        assert_eq!(offsets[5], least);
        assert!(offsets[5..].iter().all(|&o| o == least), "one offset, kept");
    }

    #[test]
    fn a_clock_ahead_is_corrected_after_three_frames() {
        let mut est = ClockEstimator::new(MIN);
        let offsets = feed(&mut est, NOW, 5, |i| -37 * MIN + delay(i));
        assert_eq!(offsets[..2], [0, 0]);
        assert!(offsets[2..].iter().all(|&o| (o + 37 * MIN).abs() < 1000));
    }

    #[test]
    fn a_buffered_flush_from_a_right_clock_is_not_corrected() {
        let mut est = ClockEstimator::new(MIN);
        feed(&mut est, NOW, 20, delay);
        // Five frames of fixes from a 10-minute tunnel, all flushed within a few hundred ms,
        // then live again.
        for k in 0..5 {
            let oldest = 10 * MIN - k * 2 * MIN;
            assert_eq!(est.observe(oldest, NOW + 20_000 + k * 50), 0);
        }
        assert!(feed(&mut est, NOW + 21_000, 20, delay)
            .iter()
            .all(|&o| o == 0));
    }

    #[test]
    fn a_buffered_flush_keeps_the_offset_in_use() {
        let mut est = ClockEstimator::new(MIN);
        feed(&mut est, NOW, 10, |i| 2 * HOUR + delay(i));
        let in_use = est.offset_ms();
        assert_ne!(in_use, 0);
        // Old fixes of the same (behind) clock: later samples, no reason to change.
        assert_eq!(est.observe(2 * HOUR + 10 * MIN, NOW + 10_000), in_use);
        assert_eq!(est.observe(2 * HOUR + 300, NOW + 11_000), in_use);
    }

    #[test]
    fn a_clock_that_jumps_right_is_followed_at_once() {
        let mut est = ClockEstimator::new(MIN);
        feed(&mut est, NOW, 10, |i| 2 * HOUR + delay(i));
        assert_ne!(est.offset_ms(), 0);
        // The phone syncs its clock: the very next sample is far earlier than possible.
        assert_eq!(est.observe(400, NOW + 10_000), 0);
        assert!(feed(&mut est, NOW + 11_000, 10, delay)
            .iter()
            .all(|&o| o == 0));
    }

    #[test]
    fn a_clock_that_jumps_behind_mid_trip_is_followed_after_settling() {
        let mut est = ClockEstimator::new(MIN);
        feed(&mut est, NOW, 10, delay);
        let offsets = feed(&mut est, NOW + 10_000, 10, |i| 2 * HOUR + delay(i));
        assert_eq!(offsets[..5], [0; 5]);
        assert!(offsets[5..].iter().all(|&o| (o - 2 * HOUR).abs() < 1000));
    }

    #[test]
    fn a_clock_ahead_that_turns_right_is_followed_after_settling() {
        let mut est = ClockEstimator::new(MIN);
        feed(&mut est, NOW, 5, |i| -37 * MIN + delay(i));
        assert!(est.offset_ms() < -30 * MIN);
        // Samples now lie later than the offset in use: a delay could do that, so they must hold.
        let offsets = feed(&mut est, NOW + 5000, 10, delay);
        assert!(offsets[..5].iter().all(|&o| o < -30 * MIN));
        assert!(offsets[5..].iter().all(|&o| o == 0));
    }

    #[test]
    fn one_wild_sample_does_not_move_the_estimate() {
        let mut est = ClockEstimator::new(MIN);
        feed(&mut est, NOW, 10, |i| 2 * HOUR + delay(i));
        let in_use = est.offset_ms();
        // A fix stamped 5 h late in one frame, then the clock as before.
        assert_eq!(est.observe(7 * HOUR, NOW + 10_000), in_use);
        assert_eq!(est.observe(2 * HOUR + 500, NOW + 11_000), in_use);
    }
}
