//! Snapshots: exact merging across recorders, deltas, the wire format against garbage, and
//! recording from many threads.

use std::sync::Arc;
use std::time::Duration;

use pacer_stats::{
    Attempt, ErrorKind, Hist, IterationOutcome, Layout, Recorder, RequestOutcome, RetryOutcome,
    ScenarioLayout, ServerLimitHeaders, Snapshot, StatsError,
};
use proptest::prelude::*;

fn layout() -> Layout {
    Layout {
        scenarios: vec![
            ScenarioLayout {
                name: "browse".into(),
                requests: vec!["list".into(), "get".into()],
            },
            ScenarioLayout {
                name: "buy".into(),
                requests: vec!["pay".into()],
            },
        ],
    }
}

/// Record one sample everywhere a sample can go, so merges and deltas exercise every field.
fn record_everything(rec: &Recorder, i: u64, us: u64) {
    let (scenario, request) = [(0, 0), (0, 1), (1, 0)][(i % 3) as usize];
    let status = [200, 201, 429, 503][(i % 4) as usize];
    rec.record_attempt(
        scenario,
        request,
        &Attempt {
            service_time: Duration::from_micros(us),
            status: (!i.is_multiple_of(7)).then_some(status),
            error: i
                .is_multiple_of(7)
                .then_some(ErrorKind::ALL[(i % 8) as usize]),
            bytes_sent: i,
            bytes_received: 2 * i,
            retry_after: (status == 429).then(|| Duration::from_millis(us / 1000)),
            retry_after_malformed: i.is_multiple_of(11),
            limits: i % 16,
            server_limit: i.is_multiple_of(3).then(|| format!("server-{}", i % 2)),
        },
    );
    rec.record_request(
        scenario,
        request,
        &RequestOutcome {
            duration: Duration::from_micros(us * 2),
            limiter_wait: Duration::from_micros(us / 3),
            paused: Duration::from_micros(us / 5),
            backoff: Duration::from_micros(us / 7),
            send_lag: (!i.is_multiple_of(4)).then(|| Duration::from_micros(us / 11)),
            attempts: (i % 3) as u32 + 1,
            failed: i.is_multiple_of(5),
            checks_passed: 2,
            checks_failed: (i % 2) as u32,
            retry_outcome: [
                RetryOutcome::NotRetried,
                RetryOutcome::SucceededAfterRetry,
                RetryOutcome::GaveUp,
                RetryOutcome::NotRetryable,
            ][(i % 4) as usize],
        },
    );
    rec.record_iteration(
        scenario,
        &IterationOutcome {
            duration: Duration::from_micros(us * 3),
            failed: i.is_multiple_of(9),
            interrupted: i.is_multiple_of(13),
        },
    );
    if i.is_multiple_of(10) {
        rec.record_dropped(scenario, 2);
        rec.record_token_fetch(
            if i.is_multiple_of(20) { "a" } else { "b" },
            Duration::from_micros(us),
        );
    }
}

fn headers(at: u64) -> ServerLimitHeaders {
    ServerLimitHeaders {
        at_unix_ms: at,
        source: "x-ratelimit".into(),
        limit: Some(100),
        remaining: Some(at % 100),
        count: None,
        reset_secs: Some(1.5),
        policy: Some("100;w=60".into()),
    }
}

fn assert_same_distribution(merged: &Hist, reference: &Hist) {
    assert_eq!(merged.count(), reference.count());
    assert_eq!(merged.min(), reference.min());
    assert_eq!(merged.max(), reference.max());
    for p in [0.0, 50.0, 90.0, 99.0, 99.9, 100.0] {
        assert_eq!(merged.percentile(p), reference.percentile(p), "p{p}");
    }
    assert_eq!(merged, reference);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn merged_snapshots_equal_one_histogram_of_all_samples(
        (workers, samples) in (1usize..=8).prop_flat_map(|n| {
            (Just(n), prop::collection::vec((0..n, 0u64..5_000_000_000), 0..400))
        })
    ) {
        let recorders: Vec<Recorder> = (0..workers).map(|_| Recorder::new(layout())).collect();
        let mut reference_service = Hist::new();
        let mut reference_duration = Hist::new();
        let mut reference_lag = Hist::new();
        for (i, &(worker, us)) in samples.iter().enumerate() {
            record_everything(&recorders[worker], i as u64, us);
            reference_service.record(us);
            reference_duration.record(us * 2);
            if !(i as u64).is_multiple_of(4) {
                reference_lag.record(us / 11);
            }
        }
        let mut merged = Snapshot::empty(&layout());
        for r in &recorders {
            // Through the wire format, as the controller will see it.
            let shipped = Snapshot::from_json(&r.snapshot().to_json()).unwrap();
            merged.merge(&shipped).unwrap();
        }
        let total = merged.total();
        assert_same_distribution(&total.service_time, &reference_service);
        assert_same_distribution(&total.duration, &reference_duration);
        assert_same_distribution(&total.send_lag, &reference_lag);
        prop_assert_eq!(total.attempts, samples.len() as u64);
        prop_assert_eq!(total.requests, samples.len() as u64);

        // Merging in one process gives the same as merging shipped copies.
        let mut direct = Snapshot::empty(&layout());
        for r in &recorders {
            direct.merge(&r.snapshot()).unwrap();
        }
        prop_assert_eq!(&direct, &merged);

        let round_trip = Snapshot::from_json(&merged.to_json()).unwrap();
        prop_assert_eq!(&round_trip, &merged);
    }

    #[test]
    fn from_json_never_panics_on_arbitrary_text(text in ".{0,200}") {
        let _ = Snapshot::from_json(&text);
    }

    #[test]
    fn from_json_never_panics_on_corrupted_snapshots(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)
    ) {
        let rec = Recorder::new(layout());
        for i in 0..50 {
            record_everything(&rec, i, i * 1_000 + 7);
        }
        let mut bytes = rec.snapshot().to_json().into_bytes();
        for (at, b) in flips {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        let _ = Snapshot::from_json_bytes(&bytes);
    }
}

#[test]
fn delta_is_what_was_recorded_in_between() {
    let whole = Recorder::new(layout());
    let between = Recorder::new(layout());
    for i in 0..300 {
        record_everything(&whole, i, i * 997 % 2_000_000);
    }
    whole.record_server_limits(headers(1));
    let t1 = whole.snapshot();
    for i in 300..700 {
        record_everything(&whole, i, i * 7919 % 3_000_000_000);
        record_everything(&between, i, i * 7919 % 3_000_000_000);
    }
    whole.record_server_limits(headers(2));
    between.record_server_limits(headers(2));
    let t2 = whole.snapshot();

    let delta = t2.delta(&t1).unwrap();
    assert_eq!(delta, between.snapshot());
    // A delta also survives the wire.
    assert_eq!(Snapshot::from_json(&delta.to_json()).unwrap(), delta);
    // Nothing recorded: the delta is empty (server headers aside, which are the latest).
    let mut nothing = t2.delta(&t2).unwrap();
    nothing.server_limits = None;
    assert_eq!(nothing, Snapshot::empty(&layout()));

    match t1.delta(&t2) {
        Err(StatsError::NotAPrefix(msg)) => assert!(msg.contains("browse"), "{msg}"),
        other => panic!("expected NotAPrefix, got {other:?}"),
    }
    let other_run = Recorder::new(Layout {
        scenarios: vec![ScenarioLayout {
            name: "browse".into(),
            requests: vec!["list".into()],
        }],
    });
    assert!(matches!(
        t2.delta(&other_run.snapshot()),
        Err(StatsError::LayoutMismatch(_))
    ));
}

fn valid_json() -> serde_json::Value {
    let rec = Recorder::new(layout());
    for i in 0..20 {
        record_everything(&rec, i, 1000 + i);
    }
    serde_json::from_str(&rec.snapshot().to_json()).expect("a recorder snapshot is valid JSON")
}

#[test]
fn from_json_rejects_garbage() {
    for text in [
        "",
        "null",
        "{}",
        "[]",
        "\"snapshot\"",
        "{\"format\": 1}",
        "{\"format\": 1, \"scenarios\": 3}",
        "{{{{{{{{{{{{",
        "\u{0}\u{1}\u{2}",
        &"[".repeat(100_000),
    ] {
        assert!(Snapshot::from_json(text).is_err(), "{text:.40}");
    }
    assert!(Snapshot::from_json_bytes(&[0xff, 0xfe, 0x00, 0x7b]).is_err());

    let mut v = valid_json();
    v["format"] = 2.into();
    let e = Snapshot::from_json(&v.to_string()).unwrap_err();
    assert!(e.to_string().contains("format"), "{e}");

    let mut v = valid_json();
    v["scenarios"][0]["requests"][0]["stats"]["attempts"] = (-1).into();
    assert!(Snapshot::from_json(&v.to_string()).is_err());
}

#[test]
fn from_json_rejects_broken_histograms() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let good = valid_json()["scenarios"][0]["requests"][0]["stats"]["duration"]
        .as_str()
        .unwrap()
        .to_string();
    let raw = b64.decode(&good).unwrap();
    let mut bad_length = raw.clone();
    bad_length[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
    let mut bad_cookie = raw.clone();
    bad_cookie[0] ^= 0xff;
    let mut bad_deflate = raw.clone();
    for b in bad_deflate.iter_mut().skip(10) {
        *b = b.wrapping_mul(31).wrapping_add(7);
    }
    let cases = [
        good[..good.len() / 2].to_string(),       // truncated base64
        format!("{}!!", &good[..good.len() - 4]), // invalid base64
        "not base64 at all".to_string(),
        String::new(),
        b64.encode(&raw[..raw.len() - 3]), // truncated stream
        b64.encode(&raw[..6]),             // truncated header
        b64.encode(bad_length),
        b64.encode(bad_cookie),
        b64.encode(bad_deflate),
        b64.encode([0u8; 64]),
        "A".repeat(4 << 20), // too long
    ];
    for case in cases {
        let mut v = valid_json();
        v["scenarios"][0]["requests"][0]["stats"]["duration"] = case.clone().into();
        let err = Snapshot::from_json(&v.to_string());
        assert!(
            matches!(err, Err(StatsError::InvalidSnapshot(_))),
            "{:.40}: {err:?}",
            case
        );
    }
    let mut v = valid_json();
    v["scenarios"][1]["stats"]["iteration_duration"] = 12.into();
    assert!(Snapshot::from_json(&v.to_string()).is_err());
}

#[test]
fn concurrent_recording_counts_exactly() {
    const THREADS: u64 = 8;
    const PER_THREAD: u64 = 12_500;
    let rec = Arc::new(Recorder::new(layout()));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let rec = Arc::clone(&rec);
            std::thread::spawn(move || {
                for i in 0..PER_THREAD {
                    let n = t * PER_THREAD + i;
                    let (s, r) = [(0, 0), (0, 1), (1, 0)][(n % 3) as usize];
                    rec.record_attempt(
                        s,
                        r,
                        &Attempt {
                            service_time: Duration::from_micros(n % 50_000),
                            status: Some(if n.is_multiple_of(10) { 429 } else { 200 }),
                            bytes_received: 1,
                            limits: 1,
                            server_limit: None,
                            ..Default::default()
                        },
                    );
                    if i.is_multiple_of(100) {
                        // Snapshots taken while recording must not disturb the counts.
                        let _ = rec.snapshot();
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let snap = rec.snapshot();
    let total = snap.total();
    let n = THREADS * PER_THREAD;
    assert_eq!(total.attempts, n);
    assert_eq!(total.service_time.count(), n);
    assert_eq!(total.bytes_received, n);
    assert_eq!(total.throttled, n / 10);
    assert_eq!(total.status[&200] + total.status[&429], n);
    assert_eq!(total.throttled_by_limit[&0], n / 10);
    let per_entry: Vec<u64> = snap
        .scenarios
        .iter()
        .flat_map(|s| s.requests.iter().map(|r| r.stats.attempts))
        .collect();
    assert_eq!(per_entry, vec![33_334, 33_333, 33_333]);
}
