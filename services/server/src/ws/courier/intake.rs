//! What a courier frame amounts to, before anything is sent anywhere: the rate limit, the frame's
//! size in fixes, each fix's seq against the connection's last one, the device clock's offset
//! ([`ClockEstimator`]) and the validation of each fix. Pure: no actor, no socket, no clock of
//! its own (the caller passes the time), so every outcome is unit-tested here.

use std::time::Instant;

use trackline_core::fix::{validate, Fix, RejectCode, Rejection, TimeBounds};
use trackline_proto::v1::CourierFrame;

use crate::ws::courier::clock::ClockEstimator;
use crate::ws::session::RateLimit;

/// The limits a courier connection's frames are held to.
#[derive(Debug, Clone, Copy)]
pub struct IntakeLimits {
    /// `--max-frames-per-s`: the average rate; bursts of twice that pass.
    pub max_frames_per_s: f64,
    /// `--max-fixes-per-frame`.
    pub max_fixes_per_frame: usize,
    /// How old or how far ahead of the server's clock a fix's device time may be.
    pub time_bounds: TimeBounds,
}

/// A frame that ends the connection (after the answers to the frames before it).
#[derive(Debug)]
pub enum Refusal {
    /// More frames per second than the limit.
    RateLimited { max_frames_per_s: f64 },
    /// Not a `CourierFrame`.
    Malformed(prost::DecodeError),
    /// More fixes than one frame may carry.
    TooManyFixes { count: usize, max: usize },
}

impl Refusal {
    /// The WebSocket close code the connection ends with: 1008 (policy), 1002 (protocol error)
    /// or 1009 (too big).
    pub fn close_code(&self) -> u16 {
        match self {
            Refusal::RateLimited { .. } => 1008,
            Refusal::Malformed(_) => 1002,
            Refusal::TooManyFixes { .. } => 1009,
        }
    }

    /// The close reason the app sees.
    pub fn reason(&self) -> String {
        match self {
            Refusal::RateLimited { max_frames_per_s } => {
                format!("rate limit: more than {max_frames_per_s} frames per second")
            }
            Refusal::Malformed(e) => format!("malformed CourierFrame: {e}"),
            Refusal::TooManyFixes { count, max } => {
                format!("{count} fixes in one frame, at most {max}")
            }
        }
    }
}

/// What one accepted frame amounts to.
#[derive(Debug, Default, PartialEq)]
pub struct Intake {
    /// The fixes that passed, in frame order, to route to the courier's orders.
    pub valid: Vec<Fix>,
    /// Why each other fix was refused, in frame order (the orders count them).
    pub invalid: Vec<RejectCode>,
    /// The refused fixes with their reasons, to answer the app with.
    pub rejected: Vec<(u64, Rejection)>,
    /// The highest seq in the frame, acked once the frame is durable (0: none).
    pub ack: u64,
    /// Added to the device time of every fix in `valid` (0: the device's own clock was used),
    /// because the device clock is consistently off; the device time is `time_ms` minus this.
    pub clock_offset_ms: i64,
}

impl Intake {
    /// How many fixes the frame carried.
    pub fn received(&self) -> usize {
        self.valid.len() + self.invalid.len()
    }

    /// A frame without fixes: nothing to store, answered in its turn like any other.
    pub fn is_empty(&self) -> bool {
        self.received() == 0
    }
}

/// One connection's frame intake: its limits, its rate budget, and the highest seq it has seen
/// (seqs must increase within a connection).
#[derive(Debug)]
pub struct FrameIntake {
    limits: IntakeLimits,
    rate: RateLimit,
    last_seq: u64,
    clock: ClockEstimator,
}

impl FrameIntake {
    pub fn new(limits: IntakeLimits, now: Instant) -> Self {
        let rate = RateLimit::new_at(limits.max_frames_per_s, 2.0 * limits.max_frames_per_s, now);
        Self {
            clock: ClockEstimator::new(limits.time_bounds.max_future_ms),
            limits,
            rate,
            last_seq: 0,
        }
    }

    /// Takes one frame's share of the rate budget (before the frame is even decoded).
    ///
    /// # Errors
    /// [`Refusal::RateLimited`] when the connection sends frames faster than allowed.
    pub fn admit(&mut self, now: Instant) -> Result<(), Refusal> {
        if self.rate.allow_at(now) {
            Ok(())
        } else {
            Err(Refusal::RateLimited {
                max_frames_per_s: self.limits.max_frames_per_s,
            })
        }
    }

    /// Sorts a decoded frame's fixes, at server time `now_ms`, into those to route and those
    /// refused, and says what to ack.
    ///
    /// # Errors
    /// [`Refusal::Malformed`] and [`Refusal::TooManyFixes`]: the frame ends the connection.
    pub fn take(
        &mut self,
        decoded: Result<CourierFrame, prost::DecodeError>,
        now_ms: i64,
    ) -> Result<Intake, Refusal> {
        let frame = decoded.map_err(Refusal::Malformed)?;
        let max = self.limits.max_fixes_per_frame;
        if frame.fixes.len() > max {
            return Err(Refusal::TooManyFixes {
                count: frame.fixes.len(),
                max,
            });
        }
        // One sample a frame, from its newest fix: the one least likely to have waited in a
        // buffer on the phone.
        let newest = frame.fixes.iter().map(|raw| raw.time_ms).max();
        let offset = newest.map_or(self.clock.offset_ms(), |newest| {
            self.clock.observe(now_ms.saturating_sub(newest), now_ms)
        });
        let mut intake = Intake {
            valid: Vec::with_capacity(frame.fixes.len()),
            clock_offset_ms: offset,
            ..Intake::default()
        };
        for raw in &frame.fixes {
            intake.ack = intake.ack.max(raw.seq);
            if raw.seq <= self.last_seq {
                let why = format!(
                    "seq {} is not above {} sent before on this connection",
                    raw.seq, self.last_seq
                );
                intake
                    .rejected
                    .push((raw.seq, Rejection::new(RejectCode::SeqNotIncreasing, why)));
                intake.invalid.push(RejectCode::SeqNotIncreasing);
                continue;
            }
            self.last_seq = raw.seq;
            // Bounds checked in the device's time frame (the server clock shifted by the offset)
            // rather than on a shifted copy of the fix: the same check, nothing copied.
            match validate(raw, now_ms.saturating_sub(offset), self.limits.time_bounds) {
                Ok(mut fix) => {
                    fix.time_ms = fix.time_ms.saturating_add(offset);
                    intake.valid.push(fix);
                }
                Err(rejection) => {
                    intake.invalid.push(rejection.code);
                    intake.rejected.push((raw.seq, rejection));
                }
            }
        }
        Ok(intake)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prost::Message as _;
    use trackline_proto::v1;

    use super::*;

    const NOW_MS: i64 = 1_780_000_000_000;

    fn limits() -> IntakeLimits {
        IntakeLimits {
            max_frames_per_s: 10.0,
            max_fixes_per_frame: 4,
            time_bounds: TimeBounds::default(),
        }
    }

    /// A good fix `seq`, taken a second before the server's clock.
    fn raw(seq: u64) -> v1::Fix {
        v1::Fix {
            seq,
            time_ms: NOW_MS - 1000,
            lat_e7: 488_500_000,
            lon_e7: 23_500_000,
            accuracy_m: Some(5.0),
            speed_mps: Some(8.0),
            heading_deg: Some(34.0),
        }
    }

    fn frame(fixes: Vec<v1::Fix>) -> Result<CourierFrame, prost::DecodeError> {
        Ok(CourierFrame { fixes })
    }

    fn codes(intake: &Intake) -> Vec<(u64, &'static str)> {
        intake
            .rejected
            .iter()
            .map(|(seq, rejection)| (*seq, rejection.code.as_str()))
            .collect()
    }

    fn seqs(intake: &Intake) -> Vec<u64> {
        intake.valid.iter().map(|fix| fix.seq).collect()
    }

    #[test]
    fn good_fixes_pass_in_order_and_the_highest_seq_is_acked() {
        let mut intake = FrameIntake::new(limits(), Instant::now());
        let taken = intake
            .take(frame(vec![raw(1), raw(2), raw(5)]), NOW_MS)
            .unwrap();
        assert_eq!(
            seqs(&taken),
            [1, 2, 5],
            "a gap in seqs is no reason to refuse"
        );
        assert!(taken.rejected.is_empty() && taken.invalid.is_empty());
        assert_eq!((taken.ack, taken.received()), (5, 3));
        let valid = &taken.valid[0];
        assert_eq!((valid.time_ms, valid.speed_mps), (NOW_MS - 1000, Some(8.0)));
    }

    #[test]
    fn bad_fixes_are_refused_with_their_code_and_still_acked() {
        let mut intake = FrameIntake::new(limits(), Instant::now());
        let mut north_of_the_pole = raw(2);
        north_of_the_pole.lat_e7 = 910_000_000;
        let mut from_the_future = raw(3);
        from_the_future.time_ms = NOW_MS + 120_000;
        let mut too_old = raw(4);
        too_old.time_ms = NOW_MS - 25 * 3600 * 1000;
        let taken = intake
            .take(
                frame(vec![raw(1), north_of_the_pole, from_the_future, too_old]),
                NOW_MS,
            )
            .unwrap();
        assert_eq!(seqs(&taken), [1]);
        assert_eq!(
            codes(&taken),
            [(2, "lat_out_of_range"), (3, "in_future"), (4, "too_old")]
        );
        assert_eq!(
            taken.invalid,
            [
                RejectCode::LatOutOfRange,
                RejectCode::InFuture,
                RejectCode::TooOld
            ]
        );
        // The app may drop every one of them: the refusals say why, the ack that they were heard.
        assert_eq!(taken.ack, 4);
    }

    #[test]
    fn seqs_must_increase_within_a_connection() {
        let mut intake = FrameIntake::new(limits(), Instant::now());
        let first = intake.take(frame(vec![raw(5), raw(6)]), NOW_MS).unwrap();
        assert_eq!(seqs(&first), [5, 6]);
        // A resend of 6, then 4 (older), then 7: only 7 is new on this connection.
        let second = intake
            .take(frame(vec![raw(6), raw(4), raw(7)]), NOW_MS)
            .unwrap();
        assert_eq!(seqs(&second), [7]);
        assert_eq!(
            codes(&second),
            [(6, "seq_not_increasing"), (4, "seq_not_increasing")]
        );
        assert_eq!(
            second.rejected[0].1.reason,
            "seq 6 is not above 6 sent before on this connection"
        );
        assert_eq!(second.ack, 7);
        // A duplicate within one frame is refused too.
        let third = intake.take(frame(vec![raw(8), raw(8)]), NOW_MS).unwrap();
        assert_eq!(seqs(&third), [8]);
        assert_eq!(codes(&third), [(8, "seq_not_increasing")]);
    }

    #[test]
    fn a_refused_fix_still_moves_the_connections_seq() {
        let mut intake = FrameIntake::new(limits(), Instant::now());
        let mut bad = raw(3);
        bad.heading_deg = Some(400.0);
        let taken = intake.take(frame(vec![bad]), NOW_MS).unwrap();
        assert_eq!(codes(&taken), [(3, "bad_heading")]);
        let again = intake.take(frame(vec![raw(3)]), NOW_MS).unwrap();
        assert_eq!(codes(&again), [(3, "seq_not_increasing")]);
    }

    #[test]
    fn an_empty_frame_has_nothing_to_route_or_ack() {
        let mut intake = FrameIntake::new(limits(), Instant::now());
        let taken = intake.take(frame(Vec::new()), NOW_MS).unwrap();
        assert!(taken.is_empty());
        assert_eq!(taken, Intake::default());
    }

    #[test]
    fn too_many_fixes_or_a_malformed_frame_end_the_connection() {
        let mut intake = FrameIntake::new(limits(), Instant::now());
        let five = (1..=5).map(raw).collect();
        let refusal = intake.take(frame(five), NOW_MS).unwrap_err();
        assert_eq!(refusal.close_code(), 1009);
        assert_eq!(refusal.reason(), "5 fixes in one frame, at most 4");
        // None of that frame's seqs counted: the next frame may use them.
        assert_eq!(
            seqs(&intake.take(frame(vec![raw(1)]), NOW_MS).unwrap()),
            [1]
        );

        let garbage = CourierFrame::decode(&b"\xff\xff\xff"[..]);
        let refusal = intake.take(garbage, NOW_MS).unwrap_err();
        assert_eq!(refusal.close_code(), 1002);
        assert!(
            refusal.reason().starts_with("malformed CourierFrame: "),
            "{}",
            refusal.reason()
        );
    }

    #[test]
    fn a_clock_consistently_ahead_is_corrected_after_three_frames() {
        let mut intake = FrameIntake::new(limits(), Instant::now());
        let ahead = 37 * 60_000;
        let mut refused = Vec::new();
        let mut corrected = Vec::new();
        for seq in 1..=5 {
            let now = NOW_MS + seq as i64 * 1000;
            let mut fix = raw(seq);
            fix.time_ms = now + ahead - 200;
            let taken = intake.take(frame(vec![fix]), now).unwrap();
            refused.extend(codes(&taken));
            for valid in &taken.valid {
                assert_eq!(taken.clock_offset_ms, -ahead + 200);
                corrected.push((valid.seq, valid.time_ms - now));
            }
        }
        assert_eq!(refused, [(1, "in_future"), (2, "in_future")]);
        assert_eq!(corrected, [(3, 0), (4, 0), (5, 0)], "stored in server time");
    }

    #[test]
    fn the_rate_limit_lets_a_burst_through_then_the_rate() {
        let start = Instant::now();
        let mut intake = FrameIntake::new(limits(), start);
        // 10 frames a second on average, bursts of 20.
        let burst = (0..25).filter(|_| intake.admit(start).is_ok()).count();
        assert_eq!(burst, 20);
        let refusal = intake.admit(start).unwrap_err();
        assert_eq!(refusal.close_code(), 1008);
        assert_eq!(
            refusal.reason(),
            "rate limit: more than 10 frames per second"
        );
        assert!(intake.admit(start + Duration::from_millis(50)).is_err());
        assert!(intake.admit(start + Duration::from_millis(150)).is_ok());
    }
}
