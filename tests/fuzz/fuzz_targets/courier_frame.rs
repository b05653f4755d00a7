//! One courier-stream frame, as the server handles it: protobuf `CourierFrame` decoding, then per
//! fix the seq check of the session, `validate`, the GPS filter and, for fixes the filter lets
//! through, the ETA estimator of an order (destination and planned route taken from the frame's
//! own valid fixes, so the fuzzer steers the geometry too).
//!
//! Checked beyond "no panic, no overflow": decoding then re-encoding is stable; an accepted fix
//! has every field inside the ranges the protocol promises and re-validates to itself; a refused
//! one carries a validation code and a reason; a shown position is a valid coordinate; an ETA is
//! never negative nor before the fix.

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use trackline_core::eta::{EtaConfig, EtaEstimator};
use trackline_core::filter::{FilterConfig, GpsFilter, Verdict};
use trackline_core::fix::{validate, RejectCode, TimeBounds};
use trackline_core::LatLon;
use trackline_proto::v1::CourierFrame;

/// A fixed "server clock", so that a crash replays exactly.
const NOW_MS: i64 = 1_700_000_000_000;

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = CourierFrame::decode(data) else {
        return;
    };
    let encoded = frame.encode_to_vec();
    let again = CourierFrame::decode(encoded.as_slice()).expect("a re-encoded frame decodes");
    assert_eq!(again.encode_to_vec(), encoded, "re-encoding is stable");

    let bounds = TimeBounds::default();
    let mut filter = GpsFilter::new(FilterConfig::default());
    let mut last_seq = 0;
    let mut valid = Vec::new();
    for raw in &frame.fixes {
        if raw.seq <= last_seq {
            continue; // the session rejects it (seq_not_increasing) before validation
        }
        last_seq = raw.seq;
        match validate(raw, NOW_MS, bounds) {
            Ok(fix) => {
                assert!(fix.pos.is_valid(), "{fix:?}");
                assert!(fix
                    .accuracy_m
                    .is_none_or(|a| a.is_finite() && a > 0.0 && a <= 10_000.0));
                assert!(fix
                    .speed_mps
                    .is_none_or(|s| s.is_finite() && (0.0..=85.0).contains(&s)));
                assert!(fix
                    .heading_deg
                    .is_none_or(|h| h.is_finite() && (0.0..360.0).contains(&h)));
                assert!(fix.time_ms >= NOW_MS - bounds.max_age_ms);
                assert!(fix.time_ms <= NOW_MS + bounds.max_future_ms);
                let back =
                    validate(&fix.to_proto(), NOW_MS, bounds).expect("a valid fix re-validates");
                assert_eq!(back, fix, "validation is idempotent");
                valid.push(fix);
            }
            Err(rejection) => {
                assert!(!rejection.reason.is_empty());
                assert!(!matches!(
                    rejection.code,
                    RejectCode::SeqNotIncreasing
                        | RejectCode::ImpossibleSpeed
                        | RejectCode::NoActiveOrder
                ));
            }
        }
    }
    let Some(last) = valid.last() else {
        return;
    };
    let destination = last.pos;
    let route: Vec<LatLon> = valid.iter().take(4).map(|f| f.pos).collect();
    let route = (route.len() >= 2).then_some(route);
    let mut eta = EtaEstimator::new(destination, route, EtaConfig::default());
    for fix in &valid {
        if let Verdict::Live(shown) = filter.assess(fix) {
            assert!(shown.is_valid(), "shown at {shown:?} for {fix:?}");
            let estimate = eta.update(fix, shown);
            assert!(estimate.seconds >= 0, "{estimate:?}");
            assert!(estimate.arrive_at_ms >= fix.time_ms, "{estimate:?}");
            assert!(
                estimate.remaining_m.is_finite() && estimate.remaining_m >= 0.0,
                "{estimate:?}"
            );
        }
    }
});
