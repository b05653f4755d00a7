//! Byte layouts of the history store: keys, the compact fix block, and an order's progress.
//!
//! A fix block holds fixes of one order sorted by time then seq. Each field is the difference
//! from the fix before (zigzag varints), so a courier's fix every few seconds costs two bytes
//! of time, one of seq and two or three per coordinate. Accuracy, speed and heading are kept
//! exactly: as whole hundredths (a varint) when the `f32` is one, else as the `f32` itself, and
//! an accuracy equal to the previous fix's costs nothing.

use prost::encoding::{decode_varint, encode_varint};
use trackline_proto::{from_e7, to_e7};

use crate::fix::{Fix, LatLon};
use crate::ids::OrderId;
use crate::order::{Eta, OrderRecord, Position};

/// Why bytes did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

impl From<prost::DecodeError> for DecodeError {
    fn from(e: prost::DecodeError) -> Self {
        DecodeError(e.to_string())
    }
}

/// The first byte of a compact block: its layout version.
const BLOCK_V1: u8 = 1;

pub fn order_prefix(order: &OrderId) -> Vec<u8> {
    let mut key = Vec::with_capacity(order.as_str().len() + 17);
    key.extend_from_slice(order.as_str().as_bytes());
    key.push(0);
    key
}

/// `order_id 0x00 time seq`: ids never contain 0x00 and the time is big-endian with its sign bit
/// flipped, so one order's keys are one contiguous range in time order.
pub fn fix_key(order: &OrderId, time_ms: i64, seq: u64) -> Vec<u8> {
    let mut key = order_prefix(order);
    key.extend_from_slice(&((time_ms as u64) ^ (1 << 63)).to_be_bytes());
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The key of a block: that of its first fix.
pub fn block_key(order: &OrderId, fixes: &[Fix]) -> Vec<u8> {
    fix_key(order, fixes[0].time_ms, fixes[0].seq)
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

pub(crate) fn put_u64(buf: &mut Vec<u8>, v: u64) {
    encode_varint(v, buf);
}

pub(crate) fn put_i64(buf: &mut Vec<u8>, v: i64) {
    encode_varint(zigzag(v), buf);
}

pub(crate) fn put_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    put_u64(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

/// A cursor over encoded bytes.
pub(crate) struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(decode_varint(&mut self.0)?)
    }

    pub fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(unzigzag(self.u64()?))
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        let (&first, rest) = self
            .0
            .split_first()
            .ok_or_else(|| DecodeError("unexpected end".into()))?;
        self.0 = rest;
        Ok(first)
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError(format!(
                "{n} bytes wanted, {} left",
                self.0.len()
            )));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    pub fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u64()?;
        let n = usize::try_from(n).map_err(|_| DecodeError("length overflows".into()))?;
        self.take(n)
    }

    fn f32(&mut self) -> Result<f32, DecodeError> {
        // unwrap: take(4) returned exactly 4 bytes
        Ok(f32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }

    fn f64(&mut self) -> Result<f64, DecodeError> {
        // unwrap: take(8) returned exactly 8 bytes
        Ok(f64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Per-fix flags of a block: which optional fields follow and how. Bit `i` (0 accuracy, 1
/// speed, 2 heading) says the field is present.
mod flag {
    /// The accuracy equals the previous fix's: nothing follows for it.
    pub const SAME_ACCURACY: u8 = 1 << 3;
    /// Shifted by the field's index (0 accuracy, 1 speed, 2 heading): stored as its `f32` bits,
    /// not as whole hundredths.
    pub const RAW: u8 = 1 << 4;
}

/// `v` as whole hundredths when that is exact (decodes to the same `f32`).
fn hundredths(v: f32) -> Option<u64> {
    let q = (f64::from(v) * 100.0).round();
    ((0.0..=f64::from(u32::MAX)).contains(&q) && (q as f32) / 100.0 == v).then_some(q as u64)
}

fn put_f32(buf: &mut Vec<u8>, v: f32, exact: Option<u64>) {
    match exact {
        Some(q) => put_u64(buf, q),
        None => buf.extend_from_slice(&v.to_le_bytes()),
    }
}

/// Encodes fixes (sorted by time then seq, as a block is) compactly.
pub fn encode_block(fixes: &[Fix]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(2 + fixes.len() * 16);
    buf.push(BLOCK_V1);
    put_u64(&mut buf, fixes.len() as u64);
    let (mut time, mut seq, mut lat, mut lon) = (0i64, 0u64, 0i32, 0i32);
    let mut accuracy: Option<f32> = None;
    for fix in fixes {
        let (fix_lat, fix_lon) = (to_e7(fix.pos.lat), to_e7(fix.pos.lon));
        let optional = [fix.accuracy_m, fix.speed_mps, fix.heading_deg];
        let exact = optional.map(|v| v.and_then(hundredths));
        let mut flags = 0;
        for (i, v) in optional.iter().enumerate() {
            if v.is_some() {
                flags |= 1 << i;
                if exact[i].is_none() {
                    flags |= flag::RAW << i;
                }
            }
        }
        let same_accuracy = fix.accuracy_m.is_some() && fix.accuracy_m == accuracy;
        if same_accuracy {
            flags |= flag::SAME_ACCURACY;
        }
        buf.push(flags);
        put_i64(&mut buf, fix.time_ms.wrapping_sub(time));
        put_i64(&mut buf, fix.seq.wrapping_sub(seq) as i64);
        put_i64(&mut buf, i64::from(fix_lat) - i64::from(lat));
        put_i64(&mut buf, i64::from(fix_lon) - i64::from(lon));
        for (i, v) in optional.iter().enumerate() {
            if let Some(v) = v {
                if !(i == 0 && same_accuracy) {
                    put_f32(&mut buf, *v, exact[i]);
                }
            }
        }
        (time, seq, lat, lon) = (fix.time_ms, fix.seq, fix_lat, fix_lon);
        accuracy = fix.accuracy_m;
    }
    buf
}

/// Decodes a block made by [`encode_block`].
///
/// # Errors
/// When the bytes are not such a block (truncated, another version).
pub fn decode_block(bytes: &[u8]) -> Result<Vec<Fix>, DecodeError> {
    let mut r = Reader(bytes);
    let version = r.u8()?;
    if version != BLOCK_V1 {
        return Err(DecodeError(format!("unknown block version {version}")));
    }
    let n = r.u64()?;
    // Each fix takes at least five bytes: a corrupt count must not reserve gigabytes.
    let mut fixes = Vec::with_capacity((n as usize).min(bytes.len() / 5));
    let (mut time, mut seq, mut lat, mut lon) = (0i64, 0u64, 0i64, 0i64);
    let mut accuracy: Option<f32> = None;
    for _ in 0..n {
        let flags = r.u8()?;
        time = time.wrapping_add(r.i64()?);
        seq = seq.wrapping_add(r.i64()? as u64);
        lat += r.i64()?;
        lon += r.i64()?;
        let mut optional = [None; 3];
        for (i, slot) in optional.iter_mut().enumerate() {
            if flags & (1 << i) == 0 {
                continue;
            }
            *slot = Some(if i == 0 && flags & flag::SAME_ACCURACY != 0 {
                accuracy.ok_or_else(|| DecodeError("repeated accuracy without one".into()))?
            } else if flags & (flag::RAW << i) != 0 {
                r.f32()?
            } else {
                r.u64()? as f32 / 100.0
            });
        }
        let coordinate = |v: i64| {
            i32::try_from(v).map_err(|_| DecodeError(format!("coordinate {v} out of range")))
        };
        fixes.push(Fix {
            seq,
            time_ms: time,
            pos: LatLon::new(from_e7(coordinate(lat)?), from_e7(coordinate(lon)?)),
            accuracy_m: optional[0],
            speed_mps: optional[1],
            heading_deg: optional[2],
        });
        accuracy = optional[0];
    }
    Ok(fixes)
}

/// What changes in an order's record with every fix: kept apart from the record (which is
/// rewritten only when its status, courier or counts change), and laid over it when read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    pub offset: u64,
    pub last_seq: u64,
    pub updated_at_ms: i64,
    pub position: Option<Position>,
    pub eta: Option<Eta>,
    /// The ETA of the pickup ahead, when the order has one.
    pub pickup_eta: Option<Eta>,
}

/// Bits of the progress's flags byte: what follows it.
const HAS_POSITION: u8 = 1;
const HAS_ETA: u8 = 1 << 1;
const HAS_WINDOW: u8 = 1 << 2;
const HAS_PICKUP_ETA: u8 = 1 << 3;

impl Progress {
    pub fn of(record: &OrderRecord) -> Self {
        Self {
            offset: record.offset,
            last_seq: record.last_seq,
            updated_at_ms: record.updated_at_ms,
            position: record.position,
            eta: record.eta,
            pickup_eta: record.pickup_eta,
        }
    }

    /// Lays this over `record` when it is at least as new (offsets grow with every change).
    pub fn apply_to(&self, record: &mut OrderRecord) {
        if self.offset >= record.offset {
            record.offset = self.offset;
            record.last_seq = self.last_seq;
            record.updated_at_ms = self.updated_at_ms;
            record.position = self.position;
            record.eta = self.eta;
            record.pickup_eta = self.pickup_eta;
        }
    }

    pub fn encode(&self, buf: &mut Vec<u8>) {
        put_u64(buf, self.offset);
        put_u64(buf, self.last_seq);
        put_i64(buf, self.updated_at_ms);
        let window = self.eta.and_then(|e| e.window);
        let flag = |present: bool, bit: u8| if present { bit } else { 0 };
        let flags = flag(self.position.is_some(), HAS_POSITION)
            | flag(self.eta.is_some(), HAS_ETA)
            | flag(window.is_some(), HAS_WINDOW)
            | flag(self.pickup_eta.is_some(), HAS_PICKUP_ETA);
        buf.push(flags);
        if let Some(p) = &self.position {
            buf.extend_from_slice(&p.lat.to_le_bytes());
            buf.extend_from_slice(&p.lon.to_le_bytes());
            put_i64(buf, p.time_ms);
            for v in [p.speed_mps, p.heading_deg, p.accuracy_m] {
                match v {
                    Some(v) => {
                        buf.push(1);
                        buf.extend_from_slice(&v.to_le_bytes());
                    }
                    None => buf.push(0),
                }
            }
        }
        if let Some(e) = &self.eta {
            put_i64(buf, e.seconds);
            put_i64(buf, e.arrive_at_ms);
        }
        if let Some(w) = window {
            put_i64(buf, w.earliest_ms);
            put_i64(buf, w.latest_ms);
        }
        if let Some(e) = &self.pickup_eta {
            put_i64(buf, e.seconds);
            put_i64(buf, e.arrive_at_ms);
        }
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let offset = r.u64()?;
        let last_seq = r.u64()?;
        let updated_at_ms = r.i64()?;
        let flags = r.u8()?;
        let position = if flags & HAS_POSITION != 0 {
            let (lat, lon, time_ms) = (r.f64()?, r.f64()?, r.i64()?);
            let mut optional = [None; 3];
            for slot in &mut optional {
                if r.u8()? != 0 {
                    *slot = Some(r.f32()?);
                }
            }
            Some(Position {
                lat,
                lon,
                time_ms,
                speed_mps: optional[0],
                heading_deg: optional[1],
                accuracy_m: optional[2],
            })
        } else {
            None
        };
        // An ETA as stored: seconds, then the arrival time (fields are read in this order).
        let read_eta = |r: &mut Reader<'_>| -> Result<Eta, DecodeError> {
            Ok(Eta {
                seconds: r.i64()?,
                arrive_at_ms: r.i64()?,
                window: None,
            })
        };
        let mut eta = (flags & HAS_ETA != 0).then(|| read_eta(r)).transpose()?;
        if flags & HAS_WINDOW != 0 {
            let window = crate::stops::EtaWindow {
                earliest_ms: r.i64()?,
                latest_ms: r.i64()?,
            };
            if let Some(eta) = &mut eta {
                eta.window = Some(window);
            }
        }
        let pickup_eta = (flags & HAS_PICKUP_ETA != 0)
            .then(|| read_eta(r))
            .transpose()?;
        Ok(Self {
            offset,
            last_seq,
            updated_at_ms,
            position,
            eta,
            pickup_eta,
        })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(64);
        self.encode(&mut buf);
        buf
    }

    /// # Errors
    /// When the bytes are not a progress record.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        Self::decode(&mut Reader(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fix(seq: u64, time_ms: i64, lat: f64, lon: f64) -> Fix {
        Fix {
            seq,
            time_ms,
            pos: LatLon::new(lat, lon),
            accuracy_m: Some(5.0),
            speed_mps: Some(8.37),
            heading_deg: Some(91.123_45),
        }
    }

    #[test]
    fn a_block_round_trips_every_field_exactly() {
        let mut fixes = vec![
            fix(1, 1_795_498_377_731, 45.273_518_9, 13.714_21),
            fix(2, 1_795_498_378_731, 45.273_413_3, 13.714_188_5),
            fix(3, 1_795_498_378_731, -33.9, -151.2),
            fix(u64::MAX, i64::MAX, 90.0, 180.0),
        ];
        fixes[1].accuracy_m = Some(4.2);
        fixes[1].speed_mps = None;
        fixes[2].accuracy_m = None;
        fixes[2].heading_deg = Some(f32::MIN_POSITIVE);
        fixes[3].speed_mps = Some(1e9);
        let back = decode_block(&encode_block(&fixes)).unwrap();
        assert_eq!(back, fixes);
        assert_eq!(decode_block(&encode_block(&[])).unwrap(), vec![]);
    }

    #[test]
    fn a_fix_every_few_seconds_costs_a_dozen_or_two_bytes() {
        // A courier at ~10 m/s, one fix every 2 s, speed and heading with a phone's decimals.
        let fixes: Vec<Fix> = (0..60)
            .map(|i| {
                // Positions as validation makes them: from the wire's E7.
                let mut f = fix(
                    100 + i,
                    1_795_498_377_731 + i as i64 * 2000,
                    from_e7(452_700_000 + i as i32 * 1_800),
                    from_e7(137_100_000 + i as i32 * 700),
                );
                f.speed_mps = Some(9.0 + (i as f32 * 0.37).sin());
                f
            })
            .collect();
        let bytes = encode_block(&fixes);
        let per_fix = bytes.len() as f64 / fixes.len() as f64;
        assert!(per_fix <= 20.0, "{per_fix} bytes per fix");
        assert_eq!(decode_block(&bytes).unwrap(), fixes);
    }

    #[test]
    fn truncated_or_foreign_bytes_are_an_error_not_a_panic() {
        let bytes = encode_block(&[fix(1, 10, 1.0, 2.0), fix(2, 20, 1.0, 2.0)]);
        for cut in 0..bytes.len() {
            assert!(decode_block(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode_block(&[9, 0]).is_err());
        assert!(decode_block(&[1, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
    }

    #[test]
    fn progress_round_trips_and_lays_over_only_older_records() {
        let progress = Progress {
            offset: 7,
            last_seq: 99,
            updated_at_ms: -5,
            position: Some(Position {
                lat: 45.123_456_789,
                lon: -13.5,
                time_ms: 1000,
                speed_mps: Some(3.5),
                heading_deg: None,
                accuracy_m: Some(4.0),
            }),
            eta: Some(Eta {
                seconds: 60,
                arrive_at_ms: 61_000,
                window: Some(crate::stops::EtaWindow {
                    earliest_ms: 40_000,
                    latest_ms: 100_000,
                }),
            }),
            pickup_eta: Some(Eta::arriving(1000, 31_000)),
        };
        assert_eq!(
            Progress::from_bytes(&progress.to_bytes()).unwrap(),
            progress
        );
        let bare = Progress {
            position: None,
            eta: None,
            pickup_eta: None,
            ..progress
        };
        assert_eq!(Progress::from_bytes(&bare.to_bytes()).unwrap(), bare);

        let mut record = OrderRecord::new(
            OrderId::new("o").unwrap(),
            LatLon::new(1.0, 2.0),
            None,
            None,
            None,
            0,
        );
        record.offset = 9;
        progress.apply_to(&mut record);
        assert_eq!(record.last_seq, 0, "an older progress changes nothing");
        record.offset = 3;
        progress.apply_to(&mut record);
        assert_eq!((record.offset, record.last_seq), (7, 99));
        assert_eq!(record.position, progress.position);
    }
}
