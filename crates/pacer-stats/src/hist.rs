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
//!
//! A histogram decoded from the wire stays PACKED: the counts as the V2 payload holds them
//! (zig-zag varints, a run of zeros as one negative number), about 2 bytes per recorded
//! bucket instead of 8 bytes for every bucket of the range. A controller decodes a report
//! from every worker every second and keeps each worker's latest: decoding a 10-minute
//! worker's snapshot into dense arrays took ~3 ms and ~20 MiB, and subtracting two of them
//! ~5 ms (docs/benchmarks.md "Controller at scale"). Packed histograms subtract and add by
//! walking both payloads, add into a dense one bucket by bucket, and turn dense (once, kept)
//! when something reads their values. A merge that grows past [`PACKED_MAX_BYTES`] turns
//! dense: a running total takes many small additions, which a dense array does in place.

use std::cell::Cell;
use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hdrhistogram::Histogram;

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

/// A latency histogram (see the module docs for its configuration and its forms).
#[derive(Clone, Default)]
pub struct Hist(Repr);

#[derive(Clone, Default)]
enum Repr {
    /// No sample: nothing allocated.
    #[default]
    Empty,
    /// An HDR counts array over the whole range (what recording and running totals use).
    Dense(Histogram<u64>),
    /// The counts as a V2 payload (what decoding gives).
    Packed(Packed),
}

/// A packed histogram grows dense when a merge would make its payload longer than this. A
/// merge of packed payloads rewrites both, where a dense one adds each bucket in place; a
/// dense array of the usual latency range (tens of microseconds to seconds) is 60-100 KB. The
/// sums that take many merges (a controller's total, the merged deltas of a second: a report
/// from each worker) must go dense early: at 4 KiB, rewriting the second's sums was a tenth of
/// a controller's CPU at 1000 workers; a sum that stays small (a 429's Retry-After, a rare
/// error) stays packed.
pub const PACKED_MAX_BYTES: usize = 512;

/// Counts as the V2 payload encodes them: in index order, a zig-zag varint per bucket, a run
/// of `n >= 2` empty buckets as `-n`. Never empty (`total > 0`).
struct Packed {
    payload: Box<[u8]>,
    total: u64,
    /// The dense form, built when a value is first read (percentiles, min, max, mean).
    dense: std::sync::OnceLock<Histogram<u64>>,
}

impl Packed {
    /// The dense form, unpacked on first use and kept.
    fn dense(&self) -> &Histogram<u64> {
        self.dense.get_or_init(|| unpack(&self.payload))
    }

    /// The dense form, by value (the kept one, or unpacked now).
    fn into_dense(self) -> Histogram<u64> {
        let Packed { payload, dense, .. } = self;
        dense.into_inner().unwrap_or_else(|| unpack(&payload))
    }
}

impl Clone for Packed {
    /// A copy of the counts; the dense form is rebuilt if the copy is read.
    fn clone(&self) -> Self {
        Packed {
            payload: self.payload.clone(),
            total: self.total,
            dense: std::sync::OnceLock::new(),
        }
    }
}

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
        Hist(Repr::Empty)
    }

    /// Wrap a histogram of this configuration; an empty one is kept as nothing.
    #[cfg(test)]
    fn of(h: Histogram<u64>) -> Self {
        Hist(if h.is_empty() {
            Repr::Empty
        } else {
            Repr::Dense(h)
        })
    }

    /// Packed counts; an empty payload is kept as nothing.
    fn from_payload(payload: Vec<u8>, total: u64) -> Self {
        Hist(if total == 0 {
            Repr::Empty
        } else {
            Repr::Packed(Packed {
                payload: payload.into_boxed_slice(),
                total,
                dense: std::sync::OnceLock::new(),
            })
        })
    }

    /// The same samples in the compact form: a dense histogram's counts written as the V2
    /// payload (about 2 bytes per recorded bucket instead of 8 bytes for every bucket of its
    /// range: a latency histogram's array is 60-100 KB), what a decoded one holds. For a
    /// snapshot kept a while as the base of later deltas (a worker keeps those of its reports
    /// the controller has not yet counted): subtracting it from another packed one walks both
    /// payloads and unpacks neither. An empty histogram stays empty and a packed one is
    /// copied. A dense one whose counts the wire could not hold (a display-only sum past
    /// [`MAX_TOTAL_COUNT`], which [`Hist::add`] refuses) is copied dense rather than lost.
    pub fn packed(&self) -> Hist {
        match &self.0 {
            Repr::Empty => Hist::new(),
            Repr::Packed(p) => Hist(Repr::Packed(p.clone())),
            Repr::Dense(h) => {
                let mut out = PayloadWriter::with_capacity(64);
                for (i, n) in dense_buckets(h) {
                    if out.push(i, n).is_err() {
                        return self.clone();
                    }
                }
                let (payload, total) = out.finish();
                Hist::from_payload(payload, total)
            }
        }
    }

    /// Whether the samples are held packed (for tests of the forms).
    #[cfg(test)]
    pub(crate) fn is_packed(&self) -> bool {
        matches!(self.0, Repr::Packed(_))
    }

    /// The histogram, dense (allocated now if it had no sample, unpacked if packed).
    fn get_mut(&mut self) -> &mut Histogram<u64> {
        if !matches!(self.0, Repr::Dense(_)) {
            let dense = std::mem::take(self).into_histogram();
            self.0 = Repr::Dense(dense);
        }
        match &mut self.0 {
            Repr::Dense(h) => h,
            _ => unreachable!("made dense above"),
        }
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

    /// The underlying histogram, read-only so the configuration invariants hold (a packed one
    /// is unpacked once and kept).
    pub fn histogram(&self) -> &Histogram<u64> {
        match &self.0 {
            Repr::Empty => empty_histogram(),
            Repr::Dense(h) => h,
            Repr::Packed(p) => p.dense(),
        }
    }

    /// The histogram by value, dense (a new empty one if it has no sample).
    fn into_histogram(self) -> Histogram<u64> {
        match self.0 {
            Repr::Empty => new_histogram(),
            Repr::Dense(h) => h,
            Repr::Packed(p) => p.into_dense(),
        }
    }

    pub fn count(&self) -> u64 {
        match &self.0 {
            Repr::Empty => 0,
            Repr::Dense(h) => h.len(),
            Repr::Packed(p) => p.total,
        }
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

    /// `(bucket index, count)` of every recorded bucket, ascending.
    fn buckets(&self) -> Vec<(usize, u64)> {
        match &self.0 {
            Repr::Empty => Vec::new(),
            Repr::Dense(h) => dense_buckets(h).collect(),
            Repr::Packed(p) => PayloadIter::new(&p.payload).collect(),
        }
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
        match (&mut self.0, &other.0) {
            (_, Repr::Empty) => Ok(()),
            (Repr::Empty, _) => {
                *self = other.clone();
                Ok(())
            }
            (Repr::Dense(h), Repr::Dense(o)) => h.add(o).map_err(|e| e.to_string()),
            (Repr::Dense(h), Repr::Packed(o)) => add_payload(h, &o.payload),
            (Repr::Packed(p), Repr::Packed(o))
                if p.payload.len() + o.payload.len() <= PACKED_MAX_BYTES =>
            {
                let (payload, total) = combine_payloads(&p.payload, &o.payload, false)?;
                *self = Hist::from_payload(payload, total);
                Ok(())
            }
            (Repr::Packed(_), Repr::Packed(o)) => add_payload(self.get_mut(), &o.payload),
            (Repr::Packed(_), Repr::Dense(o)) => self.get_mut().add(o).map_err(|e| e.to_string()),
        }
    }

    /// Exact subtraction; fails if `other` holds a sample this histogram does not.
    /// May leave `self` half-subtracted on error: callers work on a copy.
    pub(crate) fn subtract(&mut self, other: &Hist) -> Result<(), String> {
        if other.is_empty() {
            return Ok(());
        }
        match (&mut self.0, &other.0) {
            (Repr::Empty, _) => {
                return Err("cannot subtract samples from an empty histogram".to_string());
            }
            // The same payload (no sample since): nothing left, without a walk.
            (Repr::Packed(p), Repr::Packed(o)) if p.payload == o.payload => {
                self.0 = Repr::Empty;
                return Ok(());
            }
            (Repr::Packed(p), Repr::Packed(o)) => {
                let (payload, total) = combine_payloads(&p.payload, &o.payload, true)?;
                *self = Hist::from_payload(payload, total);
                return Ok(());
            }
            (Repr::Dense(h), Repr::Dense(o)) => h.subtract(o).map_err(|e| e.to_string())?,
            (Repr::Dense(h), Repr::Packed(o)) => {
                h.subtract(o.dense()).map_err(|e| e.to_string())?;
            }
            (Repr::Packed(_), Repr::Dense(o)) => {
                self.get_mut().subtract(o).map_err(|e| e.to_string())?;
            }
            (_, Repr::Empty) => {}
        }
        if self.is_empty() {
            // Back to nothing: its memory is released.
            self.0 = Repr::Empty;
        }
        Ok(())
    }
}

// The bucket layout of the one configuration (3 significant digits, lowest value 1): index
// `i` below 2048 holds the value `i`; above, each run of 1024 indices doubles the width of
// its buckets. Written out because `hdrhistogram` keeps it private; the tests check it
// against the crate's own iteration.
/// log2 of half the sub-buckets per bucket (2048 sub-buckets for 3 digits).
const SUB_BUCKET_HALF_MAGNITUDE: u32 = 10;
const SUB_BUCKET_HALF: u64 = 1 << SUB_BUCKET_HALF_MAGNITUDE;
const SUB_BUCKET_MASK: u64 = (SUB_BUCKET_HALF << 1) - 1;

/// The lowest value of bucket `index`, and the bucket's width.
fn bucket_value(index: usize) -> (u64, u64) {
    let i = index as u64;
    let bucket = (i >> SUB_BUCKET_HALF_MAGNITUDE).saturating_sub(1);
    let sub = if i < SUB_BUCKET_HALF << 1 {
        i
    } else {
        (i & (SUB_BUCKET_HALF - 1)) + SUB_BUCKET_HALF
    };
    (sub << bucket, 1 << bucket)
}

/// The bucket index that holds `value`.
fn bucket_index(value: u64) -> usize {
    let pow2ceiling = 64 - (value | SUB_BUCKET_MASK).leading_zeros();
    let bucket = pow2ceiling - (SUB_BUCKET_HALF_MAGNITUDE + 1);
    let sub = value >> bucket;
    (((u64::from(bucket) + 1) << SUB_BUCKET_HALF_MAGNITUDE) + sub - SUB_BUCKET_HALF) as usize
}

/// A dense histogram's recorded buckets, `(index, count)` ascending.
fn dense_buckets(h: &Histogram<u64>) -> impl Iterator<Item = (usize, u64)> + '_ {
    h.iter_recorded()
        .map(|v| (bucket_index(v.value_iterated_to()), v.count_at_value()))
}

/// The dense histogram a (validated) payload encodes.
fn unpack(payload: &[u8]) -> Histogram<u64> {
    let mut h = new_histogram();
    // Validated payloads only: the additions cannot overflow (total <= MAX_TOTAL_COUNT) and
    // the values are within the wire's range.
    let _ = add_payload(&mut h, payload);
    h
}

/// Add a (validated) payload's counts into a dense histogram, bucket by bucket.
fn add_payload(h: &mut Histogram<u64>, payload: &[u8]) -> Result<(), String> {
    for (i, n) in PayloadIter::new(payload) {
        h.record_n(bucket_value(i).0, n)
            .map_err(|e| format!("{e:?}"))?;
    }
    Ok(())
}

/// Walk two payloads in index order into a third: `a + b`, or `a - b` (which fails if `b`
/// holds a sample `a` does not). Returns the payload and its total.
fn combine_payloads(a: &[u8], b: &[u8], subtract: bool) -> Result<(Vec<u8>, u64), String> {
    let mut out = PayloadWriter::with_capacity(if subtract {
        a.len() / 4
    } else {
        a.len() + b.len()
    });
    let not_held =
        |i: usize, m: u64| format!("{m} samples in bucket {i} that the histogram does not hold");
    let (mut ai, mut bi) = (PayloadIter::new(a), PayloadIter::new(b));
    let (mut x, mut y) = (ai.next(), bi.next());
    loop {
        match (x, y) {
            (None, None) => break,
            (Some((i, n)), None) => {
                out.push(i, n)?;
                x = ai.next();
            }
            (Some((i, n)), Some((j, _))) if i < j => {
                out.push(i, n)?;
                x = ai.next();
            }
            (None, Some((j, m))) | (Some(_), Some((j, m))) if subtract => {
                let Some((i, n)) = x.filter(|(i, _)| *i == j) else {
                    return Err(not_held(j, m));
                };
                let c = n.checked_sub(m).ok_or_else(|| {
                    format!("{m} samples in bucket {i} where the histogram holds {n}")
                })?;
                out.push(i, c)?;
                (x, y) = (ai.next(), bi.next());
            }
            (Some((i, n)), Some((j, m))) if i == j => {
                let c = n
                    .checked_add(m)
                    .ok_or_else(|| format!("bucket {i} overflows"))?;
                out.push(i, c)?;
                (x, y) = (ai.next(), bi.next());
            }
            (_, Some((j, m))) => {
                out.push(j, m)?;
                y = bi.next();
            }
        }
    }
    Ok(out.finish())
}

/// Reads a validated payload: `(index, count)` of every non-empty bucket, ascending.
struct PayloadIter<'a> {
    bytes: &'a [u8],
    at: usize,
    index: usize,
}

impl<'a> PayloadIter<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        PayloadIter {
            bytes,
            at: 0,
            index: 0,
        }
    }
}

impl Iterator for PayloadIter<'_> {
    type Item = (usize, u64);

    fn next(&mut self) -> Option<(usize, u64)> {
        loop {
            let (zz, len) = read_varint(self.bytes.get(self.at..)?)?;
            self.at += len;
            let v = zig_zag(zz);
            if v < 0 {
                self.index = self.index.saturating_add(v.unsigned_abs() as usize);
            } else {
                let index = self.index;
                self.index = self.index.saturating_add(1);
                if v > 0 {
                    return Some((index, v as u64));
                }
            }
        }
    }
}

/// Writes a payload from `(index, count)` pairs in ascending index order.
struct PayloadWriter {
    bytes: Vec<u8>,
    /// The next index the payload is at.
    index: usize,
    total: u64,
}

impl PayloadWriter {
    fn with_capacity(n: usize) -> Self {
        PayloadWriter {
            bytes: Vec::with_capacity(n),
            index: 0,
            total: 0,
        }
    }

    fn push(&mut self, index: usize, count: u64) -> Result<(), String> {
        if count == 0 {
            return Ok(());
        }
        let count = i64::try_from(count).map_err(|_| format!("bucket {index} overflows"))?;
        self.total = self
            .total
            .checked_add(count as u64)
            .filter(|t| *t <= MAX_TOTAL_COUNT)
            .ok_or_else(|| format!("more than {MAX_TOTAL_COUNT} samples"))?;
        match index - self.index {
            0 => {}
            1 => write_varint(&mut self.bytes, 0),
            gap => write_varint(&mut self.bytes, un_zig_zag(-(gap as i64))),
        }
        write_varint(&mut self.bytes, un_zig_zag(count));
        self.index = index + 1;
        Ok(())
    }

    fn finish(self) -> (Vec<u8>, u64) {
        (self.bytes, self.total)
    }
}

fn zig_zag(n: u64) -> i64 {
    ((n >> 1) as i64) ^ -((n & 1) as i64)
}

fn un_zig_zag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// The V2 varint: LEB128 of at most 9 bytes, the 9th taken whole. `None` when truncated.
#[inline]
fn read_varint(bytes: &[u8]) -> Option<(u64, usize)> {
    // Most counts and zero runs of a latency histogram fit one byte.
    match bytes.first() {
        Some(&b) if b < 0x80 => Some((u64::from(b), 1)),
        _ => read_long_varint(bytes),
    }
}

fn read_long_varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value: u64 = 0;
    for len in 0..9 {
        let b = *bytes.get(len)?;
        if len == 8 {
            return Some((value | (u64::from(b) << 56), 9));
        }
        value |= u64::from(b & 0x7f) << (7 * len);
        if b & 0x80 == 0 {
            return Some((value, len + 1));
        }
    }
    None
}

fn write_varint(out: &mut Vec<u8>, mut n: u64) {
    for _ in 0..8 {
        if n < 0x80 {
            out.push(n as u8);
            return;
        }
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Durations as whole microseconds, saturating (for sums).
pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Equal when the same samples were recorded; the form (dense, packed) and the size the
/// counts array happened to grow to (which depends on the merge order) do not matter.
impl PartialEq for Hist {
    fn eq(&self, other: &Self) -> bool {
        self.count() == other.count() && self.buckets() == other.buckets()
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

/// The deflate level histograms are encoded with: the stock serializer's (zlib's default).
/// Measured on a simulated worker's snapshot (3 x 10 requests) ten minutes in (`worker_sim
/// --measure-reports` of crates/pacer-controller/examples, built with each level): level 6 makes
/// 122 KB that a controller decodes in 1.35 ms, level 1 171 KB in 1.09 ms, stored (0) 240 KB
/// in 0.76 ms. Every worker sends one a second, so the bytes cost the network (1000 workers at
/// level 6: ~1 Gbit/s into the controller) more than the decode gains.
pub const DEFLATE_LEVEL: u32 = 6;

/// Encode as base64 of the HDR V2 deflate format, as `hdrhistogram`'s serializer writes it
/// (the same header and payload; the tests compare them), from the counts directly: a packed
/// histogram is encoded without being unpacked.
pub fn encode(h: &Histogram<u64>) -> Result<String, String> {
    let mut payload = PayloadWriter::with_capacity(64);
    for (i, n) in dense_buckets(h) {
        payload.push(i, n)?;
    }
    Ok(encode_payload(&payload.finish().0, h.high()))
}

/// The wire form of a packed histogram, without unpacking it: its highest trackable value is
/// the top of its last bucket.
fn encode_packed(payload: &[u8]) -> String {
    let last = PayloadIter::new(payload).last().map_or(0, |(i, _)| i);
    let (low, width) = bucket_value(last);
    encode_payload(payload, (low + width - 1).max(2))
}

fn encode_payload(payload: &[u8], high: u64) -> String {
    // An empty histogram's payload is the one empty bucket at index 0, as the stock one writes.
    let payload = if payload.is_empty() {
        &[0u8][..]
    } else {
        payload
    };
    let mut raw = Vec::with_capacity(V2_HEADER_LEN + payload.len());
    raw.extend_from_slice(&V2_COOKIE.to_be_bytes());
    // A payload longer than 4 GiB cannot exist: it would take more samples than a count holds.
    raw.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    raw.extend_from_slice(&0u32.to_be_bytes());
    raw.extend_from_slice(&u32::from(SIGFIG).to_be_bytes());
    raw.extend_from_slice(&1u64.to_be_bytes());
    raw.extend_from_slice(&high.to_be_bytes());
    raw.extend_from_slice(&1.0f64.to_bits().to_be_bytes());
    raw.extend_from_slice(payload);
    let mut z = flate2::write::ZlibEncoder::new(
        Vec::with_capacity(raw.len() / 2 + 16),
        flate2::Compression::new(DEFLATE_LEVEL),
    );
    // Writing into a Vec cannot fail.
    let _ = std::io::Write::write_all(&mut z, &raw);
    let z = z.finish().unwrap_or_default();
    let mut wire = Vec::with_capacity(8 + z.len());
    wire.extend_from_slice(&V2_COMPRESSED_COOKIE.to_be_bytes());
    wire.extend_from_slice(&u32::try_from(z.len()).unwrap_or(u32::MAX).to_be_bytes());
    wire.extend_from_slice(&z);
    STANDARD.encode(wire)
}

/// Decode what [`encode`] produced, rejecting anything else without panicking or allocating
/// more than the caps allow.
pub fn decode(text: &str) -> Result<Histogram<u64>, String> {
    Ok(decode_packed(text)?.into_histogram())
}

thread_local! {
    /// One inflater per thread, reset for each histogram: a new one allocates and clears
    /// ~40 KB of state, and a snapshot holds hundreds of histograms.
    static INFLATE: std::cell::RefCell<flate2::Decompress> =
        std::cell::RefCell::new(flate2::Decompress::new(true));
}

/// Inflate a zlib stream of at most [`MAX_DECOMPRESSED_LEN`] bytes.
fn inflate(compressed: &[u8]) -> Result<Vec<u8>, String> {
    INFLATE.with(|z| {
        let mut z = z.borrow_mut();
        z.reset(true);
        let mut raw = Vec::with_capacity((compressed.len() * 4).min(MAX_DECOMPRESSED_LEN + 1));
        loop {
            if raw.len() == raw.capacity() {
                if raw.len() > MAX_DECOMPRESSED_LEN {
                    return Err("histogram decompresses to more than allowed".to_string());
                }
                raw.reserve((raw.len()).clamp(64, MAX_DECOMPRESSED_LEN + 1 - raw.len()));
            }
            let consumed = usize::try_from(z.total_in()).unwrap_or(usize::MAX);
            let input = compressed.get(consumed..).unwrap_or_default();
            let before = (z.total_in(), z.total_out());
            let status = z
                .decompress_vec(input, &mut raw, flate2::FlushDecompress::None)
                .map_err(|e| format!("bad deflate data: {e}"))?;
            if raw.len() > MAX_DECOMPRESSED_LEN {
                return Err("histogram decompresses to more than allowed".to_string());
            }
            match status {
                flate2::Status::StreamEnd => return Ok(raw),
                _ if (z.total_in(), z.total_out()) == before && raw.len() < raw.capacity() => {
                    return Err("bad deflate data: truncated stream".to_string());
                }
                _ => {}
            }
        }
    })
}

/// Decode the wire form into a packed histogram: the counts stay as the payload holds them,
/// checked (every varint, every index within the declared range, the total) but not spread
/// into a counts array.
fn decode_packed(text: &str) -> Result<Hist, String> {
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
    let mut raw = inflate(compressed)?;
    let high = check_v2_header(&raw)?;
    let len = counts_len(high);
    let total = check_v2_payload(&raw[V2_HEADER_LEN..], len)?;
    // Charged what reading it may allocate (its dense form), though packed it holds less.
    charge_budget(len as u64)?;
    if total > MAX_TOTAL_COUNT {
        return Err(format!("more than {MAX_TOTAL_COUNT} samples"));
    }
    raw.drain(..V2_HEADER_LEN);
    Ok(Hist::from_payload(raw, total))
}

/// The length of the counts array `hdrhistogram` gives a histogram of the one configuration
/// whose highest trackable value is `high` (a payload may not reach past it).
fn counts_len(high: u64) -> usize {
    let mut buckets: u64 = 1;
    let mut smallest_untrackable = SUB_BUCKET_HALF << 1;
    while smallest_untrackable <= high {
        if smallest_untrackable > u64::MAX / 2 {
            buckets += 1;
            break;
        }
        smallest_untrackable <<= 1;
        buckets += 1;
    }
    ((buckets + 1) * SUB_BUCKET_HALF) as usize
}

/// Check the header; returns the declared highest trackable value.
fn check_v2_header(raw: &[u8]) -> Result<u64, String> {
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
    Ok(high)
}

/// Walk the payload's varints (LEB128, at most 9 bytes, the 9th taken whole) as the stock
/// decoder would, refusing what it would refuse or panic on: a truncated varint, a bucket
/// past the declared range (`len` buckets), the encoding that zig-zag decodes to `i64::MIN`
/// (the stock decoder negates it), a total that overflows. Returns the total count.
fn check_v2_payload(payload: &[u8], len: usize) -> Result<u64, String> {
    let (mut at, mut index, mut total) = (0usize, 0usize, 0u64);
    while at < payload.len() {
        let (zz, n) = read_varint(&payload[at..])
            .ok_or_else(|| "truncated count in histogram".to_string())?;
        at += n;
        if zz == u64::MAX {
            return Err("invalid count encoding in histogram".to_string());
        }
        let v = zig_zag(zz);
        if v < 0 {
            index = index.saturating_add(usize::try_from(v.unsigned_abs()).unwrap_or(usize::MAX));
            continue;
        }
        if v > 0 {
            if index >= len {
                return Err(format!(
                    "histogram counts reach past its range ({len} buckets)"
                ));
            }
            total = total
                .checked_add(v as u64)
                .ok_or_else(|| "histogram total overflows".to_string())?;
        }
        index = index.saturating_add(1);
    }
    Ok(total)
}

/// On the wire: base64 of HDR V2 deflate (an empty histogram as the empty one encodes, so
/// peers of earlier versions read it).
impl serde::Serialize for Hist {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Repr::Packed(p) => s.serialize_str(&encode_packed(&p.payload)),
            _ => base64_v2::serialize(self.histogram(), s),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Hist {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(d)?;
        decode_packed(&text).map_err(serde::de::Error::custom)
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
    use hdrhistogram::serialization::{Serializer as _, V2DeflateSerializer};

    /// The raw V2 bytes (header and payload) inside a wire form.
    fn inflated(text: &str) -> Vec<u8> {
        let bytes = STANDARD.decode(text).unwrap();
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::ZlibDecoder::new(&bytes[8..]), &mut raw)
            .unwrap();
        raw
    }

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
        assert!(matches!(empty.0, Repr::Empty));
        assert_eq!(empty, Hist::of(new_histogram()));
        assert_eq!(
            serde_json::to_string(&empty).unwrap(),
            serde_json::to_string(&encode(&new_histogram()).unwrap()).unwrap()
        );
        let back: Hist = serde_json::from_str(&serde_json::to_string(&empty).unwrap()).unwrap();
        assert!(
            matches!(back.0, Repr::Empty),
            "an empty one decodes to nothing"
        );
        assert_eq!(
            (empty.count(), empty.min(), empty.percentile(99.0)),
            (0, None, None)
        );

        let mut h = hist_of(&[3, 40]);
        let mut sum = Hist::new();
        sum.add(&empty).unwrap();
        assert!(
            matches!(sum.0, Repr::Empty),
            "adding nothing allocates nothing"
        );
        sum.add(&h).unwrap();
        assert_eq!(sum, h);
        h.subtract(&sum).unwrap();
        assert!(matches!(h.0, Repr::Empty) && h.is_empty());
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
    /// The bucket layout written out here is `hdrhistogram`'s: every index of a histogram
    /// spanning the wire's whole range, in the crate's own iteration order.
    #[test]
    fn the_bucket_layout_is_hdrhistograms() {
        let mut h = new_histogram();
        h.record(MAX_WIRE_HIGH - 1).unwrap();
        for (i, v) in h.iter_all().enumerate() {
            let (low, width) = bucket_value(i);
            assert_eq!(low + width - 1, v.value_iterated_to(), "index {i}");
            assert_eq!(h.lowest_equivalent(v.value_iterated_to()), low, "index {i}");
            assert_eq!(bucket_index(low), i);
            assert_eq!(bucket_index(low + width - 1), i);
        }
        assert_eq!(counts_len(h.high()), h.distinct_values());
    }

    fn packed_of(values: &[u64]) -> Hist {
        let text = encode(hist_of(values).histogram()).unwrap();
        let h = decode_packed(&text).unwrap();
        assert!(values.is_empty() || matches!(h.0, Repr::Packed(_)));
        h
    }

    /// A histogram decodes packed, reads as the dense one does, and packed arithmetic is the
    /// dense arithmetic, whatever mix of forms meets.
    #[test]
    fn packed_histograms_read_add_and_subtract_as_dense_ones() {
        let a_values = [0u64, 1, 5, 999, 2047, 2048, 12_345, 12_346, 3_000_000_000];
        let b_values = [5u64, 12_345, 77, 77, 4_000_000];
        let (a, b) = (hist_of(&a_values), hist_of(&b_values));
        let (pa, pb) = (packed_of(&a_values), packed_of(&b_values));
        assert_eq!(pa, a);
        for q in [0.0, 1.0, 50.0, 99.0, 99.9, 100.0] {
            assert_eq!(pa.percentile(q), a.percentile(q));
        }
        assert_eq!(
            (pa.min(), pa.max(), pa.mean()),
            (a.min(), a.max(), a.mean())
        );
        assert_eq!(pa.count(), a.count());

        let mut sum = a.clone();
        sum.add(&b).unwrap();
        for (x, y) in [(&pa, &pb), (&a, &pb), (&pa, &b)] {
            let mut s = x.clone();
            s.add(y).unwrap();
            assert_eq!(s, sum);
            s.subtract(y).unwrap();
            assert_eq!(s, a);
        }
        let mut psum = pa.clone();
        psum.add(&pb).unwrap();
        assert!(
            matches!(psum.0, Repr::Packed(_)),
            "a small merge stays packed"
        );
        let mut d = psum.clone();
        d.subtract(&pa).unwrap();
        assert_eq!(d, b);
        d.subtract(&pb).unwrap();
        assert!(matches!(d.0, Repr::Empty));
        assert!(
            pb.clone().subtract(&pa).is_err(),
            "samples it does not hold"
        );
        let mut wire = serde_json::to_string(&psum).unwrap();
        assert_eq!(serde_json::from_str::<Hist>(&wire).unwrap(), sum);
        wire = serde_json::to_string(&Hist::new()).unwrap();
        assert!(serde_json::from_str::<Hist>(&wire).unwrap().is_empty());
    }

    /// A merge past [`PACKED_MAX_BYTES`] turns dense, with the same samples.
    #[test]
    fn a_large_merge_turns_dense() {
        let wide: Vec<u64> = (0..5_000u64).map(|i| i * 7).collect();
        let (a, b) = (packed_of(&wide), packed_of(&[3, 4]));
        let mut s = b.clone();
        s.add(&a).unwrap();
        assert!(matches!(s.0, Repr::Dense(_)));
        let mut dense = hist_of(&wide);
        dense.add(&hist_of(&[3, 4])).unwrap();
        assert_eq!(s, dense);
    }

    proptest::proptest! {
        /// Whatever the stock decoder reads, the packed decoder reads the same samples; what
        /// it refuses, the packed decoder refuses too (the stock one never panics here: the
        /// payload check runs first).
        #[test]
        fn the_packed_decoder_agrees_with_the_stock_one(
            payload in proptest::collection::vec(
                proptest::sample::select(vec![0x00u8, 0x01, 0x02, 0x03, 0x04, 0x7f, 0x80, 0x81, 0xfe, 0xff]),
                0..48,
            ),
        ) {
            let text = wire_with_payload(&payload);
            let ours = decode_packed(&text);
            let bytes = STANDARD.decode(&text).unwrap();
            let mut raw = Vec::new();
            std::io::Read::read_to_end(
                &mut flate2::read::ZlibDecoder::new(&bytes[8..]),
                &mut raw,
            ).unwrap();
            let stock = if check_v2_payload(&raw[V2_HEADER_LEN..], usize::MAX).is_ok() {
                hdrhistogram::serialization::Deserializer::new()
                    .deserialize::<u64, _>(&mut raw.as_slice())
                    .ok()
            } else {
                None
            };
            match (ours, stock) {
                (Ok(h), Some(s)) => proptest::prop_assert_eq!(h, Hist(if s.is_empty() { Repr::Empty } else { Repr::Dense(s) })),
                (Err(_), None) => {}
                (Ok(h), None) => proptest::prop_assert!(false, "ours took what the stock decoder refused: {h:?}"),
                (Err(e), Some(s)) => proptest::prop_assert!(false, "ours refused ({e}) what the stock decoder read: {} samples", s.len()),
            }
        }

        /// Packed subtraction and addition give the dense results for random histograms.
        #[test]
        fn packed_arithmetic_is_dense_arithmetic(
            a in proptest::collection::vec(0u64..5_000_000, 0..200),
            b in proptest::collection::vec(0u64..5_000_000, 0..200),
        ) {
            let mut both = a.clone();
            both.extend_from_slice(&b);
            let (pa, pboth) = (packed_of(&a), packed_of(&both));
            let mut d = pboth.clone();
            d.subtract(&pa).unwrap();
            proptest::prop_assert_eq!(&d, &hist_of(&b));
            let mut s = pa.clone();
            s.add(&packed_of(&b)).unwrap();
            proptest::prop_assert_eq!(&s, &hist_of(&both));
            let mut dense = hist_of(&a);
            dense.add(&d).unwrap();
            proptest::prop_assert_eq!(&dense, &hist_of(&both));
        }
    }
    proptest::proptest! {
        /// `packed` keeps the samples (and the wire form's meaning), whatever form it starts
        /// from, and turns a dense histogram packed.
        #[test]
        fn packing_keeps_the_samples(
            values in proptest::collection::vec(0u64..5_000_000_000, 0..300),
        ) {
            let dense = hist_of(&values);
            let packed = dense.packed();
            proptest::prop_assert_eq!(&packed, &dense);
            proptest::prop_assert_eq!(packed.is_packed(), !values.is_empty());
            proptest::prop_assert_eq!(packed.is_empty(), values.is_empty());
            proptest::prop_assert_eq!(packed.packed(), dense.clone());
            proptest::prop_assert_eq!(Hist::new().packed(), Hist::new());
            let back: Hist = serde_json::from_str(&serde_json::to_string(&packed).unwrap()).unwrap();
            proptest::prop_assert_eq!(&back, &dense);
            proptest::prop_assert_eq!(packed.percentile(99.0), dense.percentile(99.0));
        }
    }
    proptest::proptest! {
        /// The encoder writes what `hdrhistogram`'s serializer writes, byte for byte once
        /// inflated, and the stock deserializer reads it, packed or dense.
        #[test]
        fn the_encoding_is_the_stock_one(
            values in proptest::collection::vec(0u64..5_000_000_000, 0..300),
        ) {
            let h = hist_of(&values);
            let mut stock = Vec::new();
            V2DeflateSerializer::new().serialize(h.histogram(), &mut stock).unwrap();
            let ours = encode(h.histogram()).unwrap();
            proptest::prop_assert_eq!(inflated(&ours), inflated(&STANDARD.encode(&stock)));
            let packed = decode_packed(&ours).unwrap();
            let again = serde_json::to_string(&packed).unwrap();
            for text in [ours, again.trim_matches('"').to_string()] {
                let raw = STANDARD.decode(&text).unwrap();
                let back: Histogram<u64> = hdrhistogram::serialization::Deserializer::new()
                    .deserialize(&mut raw.as_slice())
                    .unwrap();
                proptest::prop_assert_eq!(Hist::of(back), h.clone());
            }
        }
    }
}
