//! The snapshot decoder on hostile input: a worker (or anyone holding a session token) sends
//! the controller JSON with base64 HDR V2 deflate histograms inside. Whatever the bytes, the
//! decoder returns a snapshot or an error naming the field, never panics, and what it accepts
//! is usable (merges, encodes, evaluates).

use std::io::{Read as _, Write as _};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use pacer_stats::{
    Attempt, Layout, Recorder, RequestOutcome, ScenarioLayout, Snapshot, StatsError,
};
use proptest::prelude::*;

fn layout() -> Layout {
    Layout {
        scenarios: vec![ScenarioLayout {
            name: "s".into(),
            requests: vec!["a".into(), "b".into()],
        }],
    }
}

/// A recorder's snapshot with samples in every histogram of request `a`.
fn valid() -> Snapshot {
    let rec = Recorder::new(layout());
    for i in 0..40u64 {
        rec.record_attempt(
            0,
            0,
            &Attempt {
                status: Some(if i % 5 == 0 { 429 } else { 200 }),
                service_time: Duration::from_micros(100 + i * 997),
                retry_after: (i % 5 == 0).then(|| Duration::from_millis(i * 10)),
                ..Default::default()
            },
        );
        rec.record_request(
            0,
            0,
            &RequestOutcome {
                duration: Duration::from_micros(200 + i * 7919),
                limiter_wait: Duration::from_micros(i * 13),
                paused: Duration::from_micros(i * 3),
                backoff: Duration::from_micros(i),
                send_lag: Some(Duration::from_micros(i * 5)),
                attempts: 1,
                ..Default::default()
            },
        );
    }
    rec.snapshot()
}

/// Whatever decoded must behave like any snapshot: merge, subtract, summarize, round-trip.
fn exercise(s: &Snapshot) {
    let mut merged = Snapshot::empty(&s.layout());
    let _ = merged.merge(s);
    let _ = s.delta(&merged);
    let _ = pacer_stats::summarize("p", s, Duration::from_secs(1), &[], &[]);
    let _ = Snapshot::from_json(&s.to_json());
}

/// The histogram text of `stats.<field>` of request `a` in a snapshot's JSON.
fn hist_text(v: &serde_json::Value, field: &str) -> String {
    v["scenarios"][0]["requests"][0]["stats"][field]
        .as_str()
        .expect("a histogram is a string")
        .to_string()
}

/// The uncompressed HDR V2 bytes inside a wire histogram (cookie and length stripped).
fn inflate(text: &str) -> Vec<u8> {
    let wire = STANDARD.decode(text).expect("base64");
    let mut raw = Vec::new();
    flate2::read::ZlibDecoder::new(&wire[8..])
        .read_to_end(&mut raw)
        .expect("deflate");
    raw
}

/// Wrap raw HDR V2 bytes back into the wire form, with a correct compressed length.
fn deflate(raw: &[u8]) -> String {
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(raw).expect("in memory");
    let z = z.finish().expect("in memory");
    let mut wire = (0x1c84_9304u32 | 0x10).to_be_bytes().to_vec();
    wire.extend_from_slice(&u32::try_from(z.len()).expect("small").to_be_bytes());
    wire.extend_from_slice(&z);
    STANDARD.encode(wire)
}

const HIST_FIELDS: [&str; 7] = [
    "duration",
    "service_time",
    "limiter_wait",
    "paused",
    "backoff",
    "send_lag",
    "retry_after_ms",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(s) = Snapshot::from_json_bytes(&bytes) {
            exercise(&s);
        }
    }

    /// Arbitrary base64 in a histogram field: refused with the field's path, or usable.
    #[test]
    fn arbitrary_histogram_text_is_refused_by_field(
        field in prop::sample::select(HIST_FIELDS.to_vec()),
        bytes in prop::collection::vec(any::<u8>(), 0..256),
        as_base64 in any::<bool>(),
    ) {
        let mut v: serde_json::Value = serde_json::from_str(&valid().to_json()).expect("json");
        let text = if as_base64 {
            STANDARD.encode(&bytes)
        } else {
            String::from_utf8_lossy(&bytes).into_owned()
        };
        v["scenarios"][0]["requests"][0]["stats"][field] = text.into();
        match Snapshot::from_json(&v.to_string()) {
            Ok(s) => exercise(&s),
            Err(StatsError::InvalidSnapshot(m)) => {
                let path = format!("scenarios[0].requests[0].stats.{field}");
                prop_assert!(m.starts_with(&path), "{m:?} does not name {path}");
            }
            Err(other) => prop_assert!(false, "unexpected error kind {other:?}"),
        }
    }

    /// A valid histogram with bytes changed INSIDE the deflate stream (so the HDR parser sees
    /// them: header fields, varint counts) and recompressed with a correct envelope.
    #[test]
    fn mutated_histogram_payloads_never_panic(
        field in prop::sample::select(HIST_FIELDS.to_vec()),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut v: serde_json::Value = serde_json::from_str(&valid().to_json()).expect("json");
        let mut raw = inflate(&hist_text(&v, field));
        for (at, b) in flips {
            let i = at.index(raw.len());
            raw[i] = b;
        }
        if truncate {
            raw.truncate(cut.index(raw.len()));
        }
        v["scenarios"][0]["requests"][0]["stats"][field] = deflate(&raw).into();
        match Snapshot::from_json(&v.to_string()) {
            Ok(s) => exercise(&s),
            Err(e) => prop_assert!(e.to_string().contains(field), "{e} does not name {field}"),
        }
    }

    /// Valid snapshot JSON with bytes overwritten anywhere (structure, numbers, base64).
    #[test]
    fn mutated_snapshot_json_never_panics(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut bytes = valid().to_json().into_bytes();
        for (at, b) in flips {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        if let Ok(s) = Snapshot::from_json_bytes(&bytes) {
            exercise(&s);
        }
    }
}

#[test]
fn a_decode_error_names_the_field_and_what_was_wrong() {
    let mut v: serde_json::Value = serde_json::from_str(&valid().to_json()).expect("json");
    v["scenarios"][0]["requests"][1]["stats"]["service_time"] = "%%%".into();
    let e = Snapshot::from_json(&v.to_string()).expect_err("bad base64");
    assert!(
        e.to_string().starts_with(
            "invalid snapshot: scenarios[0].requests[1].stats.service_time: bad base64: \
             Invalid symbol 37"
        ),
        "{e}"
    );

    let mut v: serde_json::Value = serde_json::from_str(&valid().to_json()).expect("json");
    v["scenarios"][0]["stats"]["iterations"] = (-1).into();
    let e = Snapshot::from_json(&v.to_string()).expect_err("negative count");
    assert!(
        e.to_string()
            .contains("scenarios[0].stats.iterations: invalid value"),
        "{e}"
    );
    // Trailing bytes after the document.
    let e = Snapshot::from_json(&format!("{} x", valid().to_json())).expect_err("trailing");
    assert!(e.to_string().contains("trailing"), "{e}");
}

/// A histogram whose header declares the widest range still decodes into bounded memory, and
/// many of them in one snapshot run out of the snapshot's budget instead of memory.
#[test]
fn histogram_sizes_are_capped_per_histogram_and_per_snapshot() {
    let valid = valid();
    let mut v: serde_json::Value = serde_json::from_str(&valid.to_json()).expect("json");
    // The largest range the wire accepts, one sample at its top.
    let mut raw = inflate(&hist_text(&v, "duration"));
    raw[24..32].copy_from_slice(&(1u64 << 33).to_be_bytes());
    v["scenarios"][0]["requests"][0]["stats"]["duration"] = deflate(&raw).into();
    assert!(Snapshot::from_json(&v.to_string()).is_ok());
    // One step wider is refused, naming the range.
    raw[24..32].copy_from_slice(&((1u64 << 33) + 1).to_be_bytes());
    v["scenarios"][0]["requests"][0]["stats"]["duration"] = deflate(&raw).into();
    let e = Snapshot::from_json(&v.to_string()).expect_err("too wide");
    assert!(e.to_string().contains("range"), "{e}");

    // A snapshot of thousands of requests, each with full-range histograms.
    raw[24..32].copy_from_slice(&(1u64 << 33).to_be_bytes());
    let wide = deflate(&raw);
    let mut request = v["scenarios"][0]["requests"][0].clone();
    for field in HIST_FIELDS {
        request["stats"][field] = wide.clone().into();
    }
    let many: Vec<serde_json::Value> = (0..2000)
        .map(|i| {
            let mut r = request.clone();
            r["name"] = format!("r{i}").into();
            r
        })
        .collect();
    v["scenarios"][0]["requests"] = many.into();
    let e = Snapshot::from_json(&v.to_string()).expect_err("over the budget");
    assert!(
        e.to_string().contains("more histogram data than allowed"),
        "{e}"
    );
}
