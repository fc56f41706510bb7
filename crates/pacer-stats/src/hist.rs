//! The one histogram configuration pacer uses, and its wire format.
//!
//! Every histogram is an auto-resizing `hdrhistogram::Histogram<u64>` with 3 significant
//! digits and a lowest discernible value of 1, so any two can be added or subtracted exactly.
//! Durations are microseconds (Retry-After values are milliseconds), clamped at one hour.
//!
//! On the wire a histogram is the HDR V2 deflate encoding, base64 inside JSON. Snapshots arrive
//! from other processes, so decoding checks the header before `hdrhistogram` sees it: the
//! stock deserializer trusts the declared payload length and bounds, which would let a few
//! hostile bytes make us allocate gigabytes.
//!
//! A histogram without samples allocates nothing: an HDR counts array is at least 2048
//! entries (16 KiB) even when empty, and a snapshot has 7 histograms per request, so a
//! 30-request plan's empty snapshot was 3.3 MiB. A controller keeps snapshots per worker
//! (docs/benchmarks.md "Controller at scale": 8.5 MiB per expected worker before any
//! report); empty ones now cost a few bytes each, and compare, merge and encode as before.

use std::cell::Cell;
use std::fmt;
use std::io::Read;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2DeflateSerializer};

/// Significant decimal digits kept by every histogram.
pub const SIGFIG: u8 = 3;
/// Durations longer than an hour are recorded as an hour: such a request is hung, and an
/// unbounded maximum would grow every histogram it is merged into.
pub const MAX_MICROS: u64 = 3_600_000_000;
/// The same clamp for histograms in milliseconds.
pub const MAX_MILLIS: u64 = 3_600_000;

/// The largest "highest trackable value" accepted from the wire. Our own histograms stay below
/// 2^32 because of the clamp; the bound caps one decoded histogram at about 200 kB.
const MAX_WIRE_HIGH: u64 = 1 << 33;
/// Encoded (base64) and decompressed size caps; a legitimate histogram is far smaller.
const MAX_ENCODED_LEN: usize = 2 << 20;
const MAX_DECOMPRESSED_LEN: usize = 1 << 20;
/// The V2 encoding stores counts as zig-zag i64, so a count above this could not be sent.
/// Honest runs never get near it; capping merged totals keeps `to_json` infallible.
pub(crate) const MAX_TOTAL_COUNT: u64 = 1 << 62;

const V2_COOKIE: u32 = 0x1c84_9303 | 0x10;
const V2_COMPRESSED_COOKIE: u32 = 0x1c84_9304 | 0x10;
/// cookie, payload length, normalizing offset, digits (4 bytes each), low, high, ratio (8 each).
const V2_HEADER_LEN: usize = 40;

/// A latency histogram (see the module docs for its configuration). `None` until the first
/// sample: no counts array is allocated for an empty one.
#[derive(Clone, Default)]
pub struct Hist(Option<Histogram<u64>>);

/// The histogram every empty [`Hist`] reads as (one, shared).
fn empty_histogram() -> &'static Histogram<u64> {
    static EMPTY: std::sync::OnceLock<Histogram<u64>> = std::sync::OnceLock::new();
    EMPTY.get_or_init(new_histogram)
}

/// A histogram of the one configuration.
fn new_histogram() -> Histogram<u64> {
    // Auto-resize with 3 digits and low = 1 is a valid configuration: creation cannot fail.
    match Histogram::new(SIGFIG) {
        Ok(h) => h,
        Err(e) => unreachable!("histogram configuration rejected: {e}"),
    }
}

impl Hist {
    /// An empty histogram (nothing allocated until the first sample).
    pub fn new() -> Self {
        Hist(None)
    }

    /// Wrap a histogram of this configuration; an empty one is kept as nothing.
    fn of(h: Histogram<u64>) -> Self {
        Hist((!h.is_empty()).then_some(h))
    }

    /// The histogram, allocated now if it had no sample.
    fn get_mut(&mut self) -> &mut Histogram<u64> {
        self.0.get_or_insert_with(new_histogram)
    }

    /// Record a raw value (in this histogram's unit), clamped to [`MAX_MICROS`].
    pub fn record(&mut self, value: u64) {
        let value = value.min(MAX_MICROS);
        let h = self.get_mut();
        if h.record(value).is_err() {
            // Only a resize overflowing usize fails, which the clamp rules out; saturating
            // keeps the sample rather than losing it.
            h.saturating_record(value);
        }
    }

    /// Record a duration in microseconds.
    pub fn record_micros(&mut self, d: Duration) {
        self.record(micros(d));
    }

    /// Record a duration in milliseconds, clamped to [`MAX_MILLIS`].
    pub fn record_millis(&mut self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.record(ms.min(MAX_MILLIS));
    }

    /// The underlying histogram, read-only so the configuration invariants hold.
    pub fn histogram(&self) -> &Histogram<u64> {
        self.0.as_ref().unwrap_or_else(|| empty_histogram())
    }

    pub fn count(&self) -> u64 {
        self.0.as_ref().map_or(0, Histogram::len)
    }

    pub fn is_empty(&self) -> bool {
        self.count() == 0
    }

    /// The value at percentile `p` (0..=100); `None` without samples.
    pub fn percentile(&self, p: f64) -> Option<u64> {
        if self.is_empty() || !p.is_finite() {
            return None;
        }
        Some(
            self.histogram()
                .value_at_quantile((p / 100.0).clamp(0.0, 1.0)),
        )
    }

    pub fn min(&self) -> Option<u64> {
        (!self.is_empty()).then(|| self.histogram().min())
    }

    pub fn max(&self) -> Option<u64> {
        (!self.is_empty()).then(|| self.histogram().max())
    }

    pub fn mean(&self) -> Option<f64> {
        let m = self.histogram().mean();
        (!self.is_empty() && m.is_finite()).then_some(m)
    }

    /// Exact merge. Fails only if the result could no longer be serialized.
    pub(crate) fn add(&mut self, other: &Hist) -> Result<(), String> {
        self.fits(other)?;
        self.add_unchecked(other)
    }

    /// Whether [`Hist::add`] of `other` stays serializable (changes nothing).
    pub(crate) fn fits(&self, other: &Hist) -> Result<(), String> {
        if self.count().saturating_add(other.count()) > MAX_TOTAL_COUNT {
            return Err(format!("more than {MAX_TOTAL_COUNT} samples"));
        }
        Ok(())
    }

    /// Merge without the serializability cap (for totals that are only displayed).
    pub(crate) fn add_unchecked(&mut self, other: &Hist) -> Result<(), String> {
        match &other.0 {
            Some(o) if !o.is_empty() => self.get_mut().add(o).map_err(|e| e.to_string()),
            _ => Ok(()),
        }
    }

    /// Exact subtraction; fails if `other` holds a sample this histogram does not.
    /// May leave `self` half-subtracted on error: callers work on a copy.
    pub(crate) fn subtract(&mut self, other: &Hist) -> Result<(), String> {
        let Some(o) = other.0.as_ref().filter(|o| !o.is_empty()) else {
            return Ok(());
        };
        let Some(h) = self.0.as_mut() else {
            return Err("cannot subtract samples from an empty histogram".to_string());
        };
        h.subtract(o).map_err(|e| e.to_string())?;
        if h.is_empty() {
            // Back to nothing: its memory is released.
            self.0 = None;
        }
        Ok(())
    }
}

/// Durations as whole microseconds, saturating (for sums).
pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Equal when the same samples were recorded; the size the counts array happened to grow to
/// (which depends on the merge order) does not matter.
impl PartialEq for Hist {
    fn eq(&self, other: &Self) -> bool {
        let samples = |h: &Histogram<u64>| {
            h.iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect::<Vec<_>>()
        };
        self.count() == other.count() && samples(self.histogram()) == samples(other.histogram())
    }
}

/// Short form: the counts array is thousands of entries long.
impl fmt::Debug for Hist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hist")
            .field("count", &self.count())
            .field("min", &self.min())
            .field("max", &self.max())
            .finish()
    }
}

thread_local! {
    /// Counts-array entries that decoding may still allocate on this thread (`None`: no limit).
    /// Set by [`with_decode_budget`] around a whole snapshot, because each histogram alone is
    /// bounded but a snapshot can hold any number of them.
    static DECODE_BUDGET: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Run `f` with at most `entries` histogram counts-array entries decodable on this thread.
pub(crate) fn with_decode_budget<R>(entries: u64, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<u64>);
    impl Drop for Restore {
        fn drop(&mut self) {
            DECODE_BUDGET.with(|b| b.set(self.0));
        }
    }
    let _restore = Restore(DECODE_BUDGET.with(|b| b.replace(Some(entries))));
    f()
}

fn charge_budget(entries: u64) -> Result<(), String> {
    DECODE_BUDGET.with(|b| match b.get() {
        None => Ok(()),
        Some(left) if left >= entries => {
            b.set(Some(left - entries));
            Ok(())
        }
        Some(_) => Err("snapshot holds more histogram data than allowed".to_string()),
    })
}

fn be_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes(b.try_into().ok()?))
}

fn be_u64(bytes: &[u8], at: usize) -> Option<u64> {
    let b = bytes.get(at..at.checked_add(8)?)?;
    Some(u64::from_be_bytes(b.try_into().ok()?))
}

/// Encode as base64 of the HDR V2 deflate format.
pub fn encode(h: &Histogram<u64>) -> Result<String, String> {
    let mut buf = Vec::new();
    V2DeflateSerializer::new()
        .serialize(h, &mut buf)
        .map_err(|e| e.to_string())?;
    Ok(STANDARD.encode(buf))
}

/// Decode what [`encode`] produced, rejecting anything else without panicking or allocating
/// more than the caps allow.
pub fn decode(text: &str) -> Result<Histogram<u64>, String> {
    if text.len() > MAX_ENCODED_LEN {
        return Err(format!(
            "encoded histogram longer than {MAX_ENCODED_LEN} bytes"
        ));
    }
    let bytes = STANDARD
        .decode(text)
        .map_err(|e| format!("bad base64: {e}"))?;
    if be_u32(&bytes, 0) != Some(V2_COMPRESSED_COOKIE) {
        return Err("not an HDR V2 deflate histogram".to_string());
    }
    let compressed_len = be_u32(&bytes, 4).ok_or("truncated header")?;
    let compressed = &bytes[8..];
    if usize::try_from(compressed_len).ok() != Some(compressed.len()) {
        return Err("compressed length does not match the data".to_string());
    }
    let mut raw = Vec::new();
    flate2::read::ZlibDecoder::new(compressed)
        .take(MAX_DECOMPRESSED_LEN as u64 + 1)
        .read_to_end(&mut raw)
        .map_err(|e| format!("bad deflate data: {e}"))?;
    if raw.len() > MAX_DECOMPRESSED_LEN {
        return Err("histogram decompresses to more than allowed".to_string());
    }
    check_v2_header(&raw)?;
    check_v2_payload(&raw[V2_HEADER_LEN..])?;
    let mut h: Histogram<u64> = Deserializer::new()
        .deserialize(&mut raw.as_slice())
        .map_err(|e| e.to_string())?;
    charge_budget(h.distinct_values() as u64)?;
    if h.len() > MAX_TOTAL_COUNT {
        return Err(format!("more than {MAX_TOTAL_COUNT} samples"));
    }
    // Deserialized histograms come back with auto-resize off; merging needs it on.
    h.auto(true);
    Ok(h)
}

fn check_v2_header(raw: &[u8]) -> Result<(), String> {
    let truncated = || "truncated histogram header".to_string();
    if be_u32(raw, 0) != Some(V2_COOKIE) {
        return Err("not an HDR V2 histogram inside the deflate stream".to_string());
    }
    let payload_len = be_u32(raw, 4).ok_or_else(truncated)?;
    let normalizing_offset = be_u32(raw, 8).ok_or_else(truncated)?;
    let digits = be_u32(raw, 12).ok_or_else(truncated)?;
    let low = be_u64(raw, 16).ok_or_else(truncated)?;
    let high = be_u64(raw, 24).ok_or_else(truncated)?;
    let ratio = be_u64(raw, 32).ok_or_else(truncated)?;
    if usize::try_from(payload_len).ok() != raw.len().checked_sub(V2_HEADER_LEN) {
        return Err("payload length does not match the data".to_string());
    }
    if normalizing_offset != 0 || ratio != 1.0f64.to_bits() {
        return Err("unsupported histogram features".to_string());
    }
    if digits != u32::from(SIGFIG) || low != 1 {
        return Err(format!(
            "histogram must have {SIGFIG} significant digits and lowest value 1 \
             (got {digits} digits, lowest {low})"
        ));
    }
    if !(2..=MAX_WIRE_HIGH).contains(&high) {
        return Err(format!(
            "histogram range {high} is outside 2..={MAX_WIRE_HIGH}"
        ));
    }
    Ok(())
}

/// Walk the payload's varints (LEB128, at most 9 bytes, the 9th taken whole) the way the
/// stock decoder will. The encoding that zig-zag decodes to `i64::MIN` makes it negate
/// `i64::MIN`, which panics when overflow checks are on; nothing legitimate produces it.
fn check_v2_payload(payload: &[u8]) -> Result<(), String> {
    let mut at = 0;
    while at < payload.len() {
        let mut value: u64 = 0;
        let mut len = 0;
        loop {
            let b = *payload
                .get(at + len)
                .ok_or_else(|| "truncated count in histogram".to_string())?;
            if len == 8 {
                value |= u64::from(b) << 56;
                len += 1;
                break;
            }
            value |= u64::from(b & 0x7f) << (7 * len);
            len += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        if value == u64::MAX {
            return Err("invalid count encoding in histogram".to_string());
        }
        at += len;
    }
    Ok(())
}

/// On the wire: base64 of HDR V2 deflate (an empty histogram as the empty one encodes, so
/// peers of earlier versions read it).
impl serde::Serialize for Hist {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        base64_v2::serialize(self.histogram(), s)
    }
}

impl<'de> serde::Deserialize<'de> for Hist {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        base64_v2::deserialize(d).map(Hist::of)
    }
}

/// `#[serde(with = "base64_v2")]` for `Histogram<u64>`: base64 of HDR V2 deflate.
pub mod base64_v2 {
    use hdrhistogram::Histogram;
    use serde::{Deserialize, Deserializer, Serializer, de, ser};

    pub fn serialize<S: Serializer>(h: &Histogram<u64>, s: S) -> Result<S::Ok, S::Error> {
        let text = super::encode(h).map_err(ser::Error::custom)?;
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Histogram<u64>, D::Error> {
        let text = String::deserialize(d)?;
        super::decode(&text).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist_of(values: &[u64]) -> Hist {
        let mut h = Hist::new();
        for &v in values {
            h.record(v);
        }
        h
    }

    /// An empty histogram holds no counts array, reads and encodes as an empty HDR histogram
    /// does (peers of earlier versions read it), and one emptied by a subtraction lets its
    /// array go.
    #[test]
    fn an_empty_histogram_allocates_nothing_and_reads_as_empty() {
        let empty = Hist::new();
        assert!(empty.0.is_none());
        assert_eq!(empty, Hist::of(new_histogram()));
        assert_eq!(
            serde_json::to_string(&empty).unwrap(),
            serde_json::to_string(&encode(&new_histogram()).unwrap()).unwrap()
        );
        let back: Hist = serde_json::from_str(&serde_json::to_string(&empty).unwrap()).unwrap();
        assert!(back.0.is_none(), "an empty one decodes to nothing");
        assert_eq!(
            (empty.count(), empty.min(), empty.percentile(99.0)),
            (0, None, None)
        );

        let mut h = hist_of(&[3, 40]);
        let mut sum = Hist::new();
        sum.add(&empty).unwrap();
        assert!(sum.0.is_none(), "adding nothing allocates nothing");
        sum.add(&h).unwrap();
        assert_eq!(sum, h);
        h.subtract(&sum).unwrap();
        assert!(h.0.is_none() && h.is_empty());
        assert!(
            Hist::new().subtract(&sum).is_err(),
            "samples it does not hold"
        );
    }

    #[test]
    fn round_trips_and_compares_by_samples() {
        let h = hist_of(&[0, 1, 5, 999, 12_345, 3_000_000_000]);
        let text = encode(h.histogram()).unwrap();
        let back = Hist::of(decode(&text).unwrap());
        assert_eq!(back, h);
        assert!(back.histogram().is_auto_resize());
        // An empty histogram equals one that grew and shrank back to nothing.
        let mut grown = hist_of(&[10_000_000]);
        grown.subtract(&hist_of(&[10_000_000])).unwrap();
        assert_eq!(grown, Hist::new());
    }

    #[test]
    fn clamps_instead_of_growing_without_bound() {
        let h = hist_of(&[u64::MAX]);
        assert!(h.max().unwrap() >= MAX_MICROS && h.max().unwrap() < MAX_WIRE_HIGH);
        let mut ms = Hist::new();
        ms.record_millis(Duration::from_secs(100_000));
        assert!(ms.max().unwrap() < MAX_MILLIS + MAX_MILLIS / 500);
    }

    #[test]
    fn rejects_foreign_and_hostile_encodings() {
        let mut buf = Vec::new();
        let wide = Histogram::<u64>::new_with_bounds(1, u64::MAX, 3).unwrap();
        V2DeflateSerializer::new()
            .serialize(&wide, &mut buf)
            .unwrap();
        assert!(
            decode(&STANDARD.encode(&buf))
                .unwrap_err()
                .contains("range")
        );

        let mut buf = Vec::new();
        let precise = Histogram::<u64>::new(5).unwrap();
        V2DeflateSerializer::new()
            .serialize(&precise, &mut buf)
            .unwrap();
        assert!(decode(&STANDARD.encode(&buf)).is_err());

        // A header that declares a 4 GB payload in a tiny stream.
        let mut raw = Vec::new();
        raw.extend_from_slice(&V2_COOKIE.to_be_bytes());
        raw.extend_from_slice(&u32::MAX.to_be_bytes());
        raw.extend_from_slice(&0u32.to_be_bytes());
        raw.extend_from_slice(&3u32.to_be_bytes());
        raw.extend_from_slice(&1u64.to_be_bytes());
        raw.extend_from_slice(&2048u64.to_be_bytes());
        raw.extend_from_slice(&1.0f64.to_bits().to_be_bytes());
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut z, &raw).unwrap();
        let z = z.finish().unwrap();
        let mut wire = V2_COMPRESSED_COOKIE.to_be_bytes().to_vec();
        wire.extend_from_slice(&(z.len() as u32).to_be_bytes());
        wire.extend_from_slice(&z);
        assert!(
            decode(&STANDARD.encode(&wire))
                .unwrap_err()
                .contains("payload length")
        );
    }

    /// Wrap a raw V2 payload (the varint counts) in a valid header and the deflate envelope.
    fn wire_with_payload(payload: &[u8]) -> String {
        let mut raw = Vec::new();
        raw.extend_from_slice(&V2_COOKIE.to_be_bytes());
        raw.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        raw.extend_from_slice(&0u32.to_be_bytes());
        raw.extend_from_slice(&3u32.to_be_bytes());
        raw.extend_from_slice(&1u64.to_be_bytes());
        raw.extend_from_slice(&2048u64.to_be_bytes());
        raw.extend_from_slice(&1.0f64.to_bits().to_be_bytes());
        raw.extend_from_slice(payload);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut z, &raw).unwrap();
        let z = z.finish().unwrap();
        let mut wire = V2_COMPRESSED_COOKIE.to_be_bytes().to_vec();
        wire.extend_from_slice(&(z.len() as u32).to_be_bytes());
        wire.extend_from_slice(&z);
        STANDARD.encode(&wire)
    }

    #[test]
    fn rejects_hostile_payloads() {
        // A count of 2 at index 5 decodes.
        let ok = decode(&wire_with_payload(&[0x09, 0x04])).unwrap();
        assert_eq!(ok.len(), 2);
        // The varint that zig-zag decodes to i64::MIN, which the stock decoder negates.
        for prefix in [&[][..], &[0x02; 12][..]] {
            let mut payload = prefix.to_vec();
            payload.extend_from_slice(&[0xff; 9]);
            assert!(decode(&wire_with_payload(&payload)).is_err());
        }
        // Truncated varint, and a zero run pointing past the counts array.
        assert!(decode(&wire_with_payload(&[0x80])).is_err());
        assert!(decode(&wire_with_payload(&[0xfd, 0xff, 0xff, 0x0f, 0x02])).is_err());
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_payloads_never_panics(
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            biased in proptest::collection::vec(
                proptest::sample::select(vec![0x00u8, 0x01, 0x7f, 0x80, 0xfe, 0xff]),
                0..40,
            ),
        ) {
            for p in [&payload, &biased] {
                if let Ok(h) = decode(&wire_with_payload(p)) {
                    // Whatever decodes must be usable: merge, subtract, quantiles, encode.
                    let mut a = Hist::new();
                    let b = Hist::of(h);
                    let _ = a.add(&b);
                    let _ = a.subtract(&b);
                    let _ = (b.percentile(99.0), b.mean(), b.min(), b.max());
                    let _ = encode(b.histogram());
                }
            }
        }
    }

    #[test]
    fn budget_limits_a_whole_snapshot() {
        let text = encode(hist_of(&[3_000_000_000]).histogram()).unwrap();
        let entries = decode(&text).unwrap().distinct_values() as u64;
        with_decode_budget(entries * 2, || {
            assert!(decode(&text).is_ok());
            assert!(decode(&text).is_ok());
            assert!(decode(&text).is_err());
        });
        assert!(decode(&text).is_ok(), "budget is restored afterwards");
    }
}
