//! A LoadTest's results as data, stored when it ends so that `pacer report NAME` can render
//! the same HTML report, series files and text summary `pacer run` writes: the fleet's exact
//! merged snapshot, the per-second series of the fleet and of each worker (kept by the
//! coordinator during the run, `pacer_report::fleet`), each worker's snapshot, and what the
//! summary is computed from (thresholds as written, limit names, the limits table).
//!
//! Where: ConfigMaps, since the API server allows nothing else everywhere (no volume to
//! assume). The data is JSON, deflated, cut into chunks of [`CHUNK_BYTES`] each in its own
//! ConfigMap `<name>-report-data-<i>` (`binaryData`, under a ConfigMap's 1 MiB), at most
//! [`MAX_CHUNKS`]. A run too large for that loses its per-worker detail first (snapshots and
//! series; `workersOmitted` says so), then is not stored at all (the summary ConfigMap still
//! is). Every chunk names its test and the count, and decoding is bounded
//! ([`MAX_DECODED_BYTES`]): whoever may write ConfigMaps in the namespace cannot make `pacer
//! report` allocate without bound.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::time::Duration;

use flate2::Compression;
use flate2::read::DeflateDecoder;
use flate2::write::DeflateEncoder;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::{Patch, PatchParams};
use pacer_controller::FleetOutcome;
use pacer_plan::Plan;
use pacer_plan::threshold::{self, Threshold};
use pacer_report::{FleetSeriesOutput, WorkerRow};
use pacer_stats::{LimitPacing, Snapshot, Summary};
use serde::{Deserialize, Serialize};

use crate::crd::LoadTest;
use crate::resources;

/// The layout of [`RunData`]; a reader refuses another.
pub const RUN_DATA_FORMAT: u32 = 1;
/// One chunk's bytes (compressed): a ConfigMap holds at most 1 MiB, and its request body
/// carries `binaryData` as base64 (4/3 larger) under etcd's 1.5 MiB.
pub const CHUNK_BYTES: usize = 900 * 1024;
/// Chunks at most: 7.2 MiB compressed, hours of series and hundreds of workers' snapshots.
/// The cap keeps a LoadTest's namespace from filling with ConfigMaps.
pub const MAX_CHUNKS: usize = 8;
/// The decompressed JSON at most, when reading (deflate packs JSON ~10x; this is well above
/// what [`MAX_CHUNKS`] of honest data inflate to).
pub const MAX_DECODED_BYTES: usize = 256 << 20;
/// The `binaryData` key of a chunk.
pub const CHUNK_KEY: &str = "run.json.deflate";
/// `data` keys beside it: this chunk's index, the count, the test.
pub const INDEX_KEY: &str = "index";
pub const COUNT_KEY: &str = "chunks";
pub const TEST_ID_KEY: &str = "testId";

/// A threshold as written (the summary evaluates it again on the stored snapshot, with the
/// same function as the run).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredThreshold {
    pub key: String,
    pub expr: String,
    pub abort_on_fail: bool,
    pub delay_abort_eval_ms: u64,
}

/// One worker's final numbers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerData {
    /// `<index> <name>`, as the report's worker table shows it.
    pub label: String,
    /// Its own final results (`None`: it did not finish, or they were left out).
    pub snapshot: Option<Snapshot>,
    /// Its limits table with that snapshot.
    #[serde(default)]
    pub limits: Vec<LimitPacing>,
}

/// Everything a LoadTest's report files are made of.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunData {
    pub format: u32,
    /// The plan's name.
    pub name: String,
    /// The test's length (its longest worker's), seconds.
    pub elapsed_secs: f64,
    pub thresholds: Vec<StoredThreshold>,
    /// The plan's limits by index (the summary's 429s by declared limit).
    pub limit_names: Vec<String>,
    pub allowed_hosts: Vec<String>,
    /// The workers' limits tables, merged (the summary's limits table).
    pub limits: Vec<LimitPacing>,
    /// The fleet's merged snapshot (exact).
    pub snapshot: Snapshot,
    /// The fleet's series and each worker's.
    pub series: FleetSeriesOutput,
    pub workers: Vec<WorkerData>,
    /// Per-worker snapshots and series were left out to fit [`MAX_CHUNKS`], or some
    /// workers' own results were over their share of the controller's room for them
    /// (`FleetOutcome::workers_omitted`).
    #[serde(default)]
    pub workers_omitted: bool,
    /// The plan as written (`Plan::source`: references unresolved, no secret).
    pub plan_source: serde_json::Value,
    pub abort_reason: Option<String>,
    pub failure: Option<String>,
}

/// Why stored run data cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum RunDataError {
    #[error(
        "no stored run data (ConfigMap {0} is missing): the test ended before this was kept, or it was too large"
    )]
    Missing(String),
    #[error("ConfigMap {name}: {what}")]
    Chunk { name: String, what: String },
    #[error("the stored run data is larger than {MAX_DECODED_BYTES} bytes decompressed")]
    TooLarge,
    #[error("the stored run data cannot be decompressed")]
    Inflate(#[source] std::io::Error),
    #[error("the stored run data is not pacer's run data")]
    Json(#[source] serde_json::Error),
    #[error("the stored run data is format {0}; this pacer reads format {RUN_DATA_FORMAT}")]
    Format(u32),
    #[error("stored threshold {key:?}: {why}")]
    Threshold { key: String, why: String },
    #[error(
        "the run data does not fit in {MAX_CHUNKS} ConfigMaps of {CHUNK_BYTES} bytes even without its per-worker detail ({0} bytes compressed)"
    )]
    DoesNotFit(usize),
    #[error("no worker {index} in the stored run data: {why}")]
    NoWorker { index: usize, why: String },
    #[error("cannot compress the run data")]
    Deflate(#[source] std::io::Error),
}

impl RunData {
    /// The data of a finished fleet run of `plan`.
    pub fn from_outcome(plan: &Plan, outcome: &FleetOutcome) -> Self {
        RunData {
            format: RUN_DATA_FORMAT,
            name: plan.name.clone(),
            elapsed_secs: outcome.elapsed.as_secs_f64(),
            thresholds: plan
                .thresholds
                .iter()
                .map(|t| StoredThreshold {
                    key: t.key.clone(),
                    expr: t.expr.clone(),
                    abort_on_fail: t.abort_on_fail,
                    delay_abort_eval_ms: u64::try_from(t.delay_abort_eval.as_millis())
                        .unwrap_or(u64::MAX),
                })
                .collect(),
            limit_names: plan.limits.iter().map(|l| l.name.clone()).collect(),
            allowed_hosts: plan
                .http
                .allow_hosts
                .iter()
                .map(|h| h.to_string())
                .collect(),
            limits: pacer_stats::merge_limit_pacing(&outcome.worker_limits),
            snapshot: outcome.merged.clone(),
            series: outcome.series.clone(),
            workers: outcome
                .workers
                .iter()
                .enumerate()
                .map(|(i, w)| WorkerData {
                    label: outcome.worker_label(w),
                    snapshot: outcome.worker_snapshots.get(i).cloned().flatten(),
                    limits: outcome.worker_limits.get(i).cloned().unwrap_or_default(),
                })
                .collect(),
            workers_omitted: outcome.workers_omitted,
            plan_source: plan.source.clone(),
            abort_reason: outcome.abort_reason.clone(),
            failure: outcome.failure.clone(),
        }
    }

    fn elapsed(&self) -> Duration {
        if self.elapsed_secs.is_finite() && self.elapsed_secs > 0.0 {
            Duration::try_from_secs_f64(self.elapsed_secs).unwrap_or(Duration::ZERO)
        } else {
            Duration::ZERO
        }
    }

    /// The summary, computed as the run computed it (`FleetOutcome::summary`): the same
    /// function over the same snapshot, thresholds, limits and test time.
    pub fn summary(&self) -> Result<Summary, RunDataError> {
        let thresholds = self
            .thresholds
            .iter()
            .map(parse_threshold)
            .collect::<Result<Vec<_>, _>>()?;
        let mut summary = pacer_stats::summarize(
            &self.name,
            &self.snapshot,
            self.elapsed(),
            &thresholds,
            &self.limit_names,
        );
        summary.allowed_hosts = self.allowed_hosts.clone();
        summary.limits = self.limits.clone();
        Ok(summary)
    }

    /// The report's row per worker.
    pub fn worker_rows(&self) -> Vec<WorkerRow> {
        let elapsed = self.elapsed();
        self.workers
            .iter()
            .filter_map(|w| {
                w.snapshot
                    .as_ref()
                    .map(|s| WorkerRow::from_snapshot(&w.label, s, elapsed))
            })
            .collect()
    }

    /// Worker `index`'s own run: its snapshot, series and limits table in place of the
    /// fleet's (`pacer report NAME --worker N`).
    pub fn worker(&self, index: usize) -> Result<RunData, RunDataError> {
        let missing = |why: &str| RunDataError::NoWorker {
            index,
            why: why.to_string(),
        };
        let w = self
            .workers
            .get(index)
            .ok_or_else(|| missing(&format!("the run had {} workers", self.workers.len())))?;
        let snapshot = w.snapshot.clone().ok_or_else(|| {
            missing(if self.workers_omitted {
                "its own results were left out to fit (the stored run data's room, or its share of the controller's room for workers' own results), or it sent none"
            } else {
                "it sent no final results (it never reported, or was lost or failed before it finished)"
            })
        })?;
        let series = self.series.workers.get(index).cloned().unwrap_or_default();
        Ok(RunData {
            snapshot,
            limits: w.limits.clone(),
            series: FleetSeriesOutput {
                fleet: series,
                workers: Vec::new(),
                started_unix_ms: self.series.started_unix_ms,
                // This worker's rows (as `fleet`) end early if the workers' rows did.
                workers_truncated: self.series.workers_truncated,
            },
            workers: Vec::new(),
            ..self.clone()
        })
    }

    /// Compressed and cut into chunks of at most [`CHUNK_BYTES`], at most [`MAX_CHUNKS`] of
    /// them: the per-worker detail is left out first when the whole does not fit.
    pub fn encode(&self) -> Result<Vec<Vec<u8>>, RunDataError> {
        let packed = deflate(self)?;
        let packed = if packed.len() > CHUNK_BYTES * MAX_CHUNKS {
            let mut slim = self.clone();
            slim.workers_omitted = true;
            for w in &mut slim.workers {
                w.snapshot = None;
            }
            slim.series.workers.clear();
            let packed = deflate(&slim)?;
            if packed.len() > CHUNK_BYTES * MAX_CHUNKS {
                return Err(RunDataError::DoesNotFit(packed.len()));
            }
            packed
        } else {
            packed
        };
        Ok(packed.chunks(CHUNK_BYTES).map(<[u8]>::to_vec).collect())
    }

    /// From the chunks, in order.
    pub fn decode(chunks: &[Vec<u8>]) -> Result<Self, RunDataError> {
        Self::decode_at_most(chunks, MAX_DECODED_BYTES)
    }

    fn decode_at_most(chunks: &[Vec<u8>], max: usize) -> Result<Self, RunDataError> {
        let joined: Vec<u8> = chunks.concat();
        let mut json = Vec::new();
        DeflateDecoder::new(joined.as_slice())
            .take(u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1))
            .read_to_end(&mut json)
            .map_err(RunDataError::Inflate)?;
        if json.len() > max {
            return Err(RunDataError::TooLarge);
        }
        // The format first, so another layout is named as such, not as broken JSON.
        #[derive(Deserialize)]
        struct Head {
            format: u32,
        }
        let head: Head = serde_json::from_slice(&json).map_err(RunDataError::Json)?;
        if head.format != RUN_DATA_FORMAT {
            return Err(RunDataError::Format(head.format));
        }
        serde_json::from_slice(&json).map_err(RunDataError::Json)
    }
}

fn deflate(data: &RunData) -> Result<Vec<u8>, RunDataError> {
    let json = serde_json::to_vec(data).map_err(RunDataError::Json)?;
    let mut enc = DeflateEncoder::new(Vec::new(), Compression::default());
    enc.write_all(&json).map_err(RunDataError::Deflate)?;
    enc.finish().map_err(RunDataError::Deflate)
}

fn parse_threshold(t: &StoredThreshold) -> Result<Threshold, RunDataError> {
    let bad = |why: String| RunDataError::Threshold {
        key: t.key.clone(),
        why,
    };
    let (metric, tags) = threshold::parse_metric_key(&t.key).map_err(bad)?;
    let (aggregation, op, value) = threshold::parse_expr(metric, &t.expr).map_err(bad)?;
    Ok(Threshold {
        key: t.key.clone(),
        metric,
        tags,
        expr: t.expr.clone(),
        aggregation,
        op,
        value,
        abort_on_fail: t.abort_on_fail,
        delay_abort_eval: Duration::from_millis(t.delay_abort_eval_ms),
    })
}

/// The name of chunk `index` of LoadTest `name`'s run data.
pub fn chunk_name(name: &str, index: usize) -> String {
    format!("{}-report-data-{index}", resources::short(name, 230))
}

/// The ConfigMap holding chunk `index` of `count`.
pub fn chunk_config_map(
    lt: &LoadTest,
    test_id: &str,
    index: usize,
    count: usize,
    bytes: Vec<u8>,
) -> ConfigMap {
    let name = lt.metadata.name.as_deref().unwrap_or("loadtest");
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(chunk_name(name, index)),
            namespace: lt.metadata.namespace.clone(),
            labels: Some(resources::labels(lt, test_id)),
            owner_references: resources::owner(lt).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([
            (INDEX_KEY.to_string(), index.to_string()),
            (COUNT_KEY.to_string(), count.to_string()),
            (TEST_ID_KEY.to_string(), test_id.to_string()),
        ])),
        binary_data: Some(BTreeMap::from([(CHUNK_KEY.to_string(), ByteString(bytes))])),
        ..ConfigMap::default()
    }
}

/// Store a finished test's run data in its chunk ConfigMaps (server-side apply). Data that
/// does not fit is logged and not stored (the summary ConfigMap is, apart); the number of
/// chunks stored.
pub async fn store(
    cms: &Api<ConfigMap>,
    lt: &LoadTest,
    test_id: &str,
    data: &RunData,
) -> Result<usize, kube::Error> {
    let chunks = match data.encode() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(
                loadtest = %lt.metadata.name.as_deref().unwrap_or_default(),
                "the run data is not stored: {e}"
            );
            return Ok(0);
        }
    };
    let count = chunks.len();
    for (i, bytes) in chunks.into_iter().enumerate() {
        let cm = chunk_config_map(lt, test_id, i, count, bytes);
        let name = cm.metadata.name.clone().unwrap_or_default();
        let mut body = serde_json::to_value(&cm).map_err(kube::Error::SerdeError)?;
        if let Some(o) = body.as_object_mut() {
            // Server-side apply needs the kind.
            o.insert("apiVersion".into(), serde_json::json!("v1"));
            o.insert("kind".into(), serde_json::json!("ConfigMap"));
        }
        cms.patch(
            &name,
            &PatchParams::apply(crate::controller::MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await?;
    }
    Ok(count)
}

/// Read LoadTest `name`'s run data back (`pacer report`), checking that every chunk is of
/// test `test_id` and of the same count.
pub async fn load(cms: &Api<ConfigMap>, name: &str, test_id: &str) -> Result<RunData, LoadError> {
    let first_name = chunk_name(name, 0);
    let first = cms
        .get_opt(&first_name)
        .await
        .map_err(LoadError::Kube)?
        .ok_or_else(|| RunDataError::Missing(first_name.clone()))?;
    let (count, bytes) = chunk_of(&first, &first_name, 0, None, test_id)?;
    let mut chunks = vec![bytes];
    for i in 1..count {
        let n = chunk_name(name, i);
        let cm = cms
            .get_opt(&n)
            .await
            .map_err(LoadError::Kube)?
            .ok_or_else(|| RunDataError::Missing(n.clone()))?;
        chunks.push(chunk_of(&cm, &n, i, Some(count), test_id)?.1);
    }
    Ok(RunData::decode(&chunks)?)
}

/// A chunk's count and bytes, checked against what the first chunk said.
fn chunk_of(
    cm: &ConfigMap,
    name: &str,
    index: usize,
    count: Option<usize>,
    test_id: &str,
) -> Result<(usize, Vec<u8>), RunDataError> {
    let bad = |what: String| RunDataError::Chunk {
        name: name.to_string(),
        what,
    };
    let data = cm.data.clone().unwrap_or_default();
    let field = |k: &str| data.get(k).cloned().unwrap_or_default();
    if field(TEST_ID_KEY) != test_id {
        return Err(bad(format!(
            "{TEST_ID_KEY} is not this run's ({test_id}): a leftover of another run"
        )));
    }
    if field(INDEX_KEY).parse::<usize>().ok() != Some(index) {
        return Err(bad(format!("{INDEX_KEY}: expected {index}")));
    }
    let n = field(COUNT_KEY)
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=MAX_CHUNKS).contains(n))
        .ok_or_else(|| bad(format!("{COUNT_KEY}: expected 1 to {MAX_CHUNKS}")))?;
    if count.is_some_and(|c| c != n) {
        return Err(bad(format!(
            "{COUNT_KEY}: {n}, the first chunk said {count:?}"
        )));
    }
    let bytes = cm
        .binary_data
        .as_ref()
        .and_then(|b| b.get(CHUNK_KEY))
        .map(|b| b.0.clone())
        .ok_or_else(|| bad(format!("no binaryData key {CHUNK_KEY}")))?;
    if bytes.len() > CHUNK_BYTES {
        return Err(bad(format!("a chunk is at most {CHUNK_BYTES} bytes")));
    }
    Ok((n, bytes))
}

/// Why [`load`] failed: the API server's answer or the data.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read the run data's ConfigMaps")]
    Kube(#[source] kube::Error),
    #[error(transparent)]
    Data(#[from] RunDataError),
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use pacer_report::{Series, SeriesPoint};
    use pacer_stats::{Layout, ScenarioLayout};

    fn data(workers: usize, rows: usize) -> RunData {
        let layout = Layout {
            scenarios: vec![ScenarioLayout {
                name: "s".into(),
                requests: vec!["r".into()],
            }],
        };
        let series = Series {
            points: (1..=rows as u64)
                .map(|t| SeriesPoint {
                    t,
                    attempts: t,
                    ..SeriesPoint::default()
                })
                .collect(),
            ..Series::default()
        };
        RunData {
            format: RUN_DATA_FORMAT,
            name: "n".into(),
            elapsed_secs: rows as f64,
            thresholds: vec![StoredThreshold {
                key: "http_req_duration".into(),
                expr: "p(95)<500ms".into(),
                abort_on_fail: false,
                delay_abort_eval_ms: 0,
            }],
            limit_names: vec![],
            allowed_hosts: vec![],
            limits: vec![],
            snapshot: Snapshot::empty(&layout),
            series: FleetSeriesOutput {
                fleet: series.clone(),
                workers: vec![series; workers],
                started_unix_ms: Some(1),
                workers_truncated: false,
            },
            workers: (0..workers)
                .map(|i| WorkerData {
                    label: format!("{i} w"),
                    snapshot: Some(Snapshot::empty(&layout)),
                    limits: Vec::new(),
                })
                .collect(),
            workers_omitted: false,
            plan_source: serde_json::json!({"name": "n"}),
            abort_reason: None,
            failure: None,
        }
    }

    #[test]
    fn run_data_round_trips_through_chunks() {
        let d = data(2, 60);
        let chunks = d.encode().unwrap();
        assert_eq!(chunks.len(), 1);
        assert_eq!(RunData::decode(&chunks).unwrap(), d);
        let s = d.summary().unwrap();
        assert_eq!(s.thresholds.len(), 1);
        assert_eq!(d.worker_rows().len(), 2);
        let one = d.worker(1).unwrap();
        assert_eq!(one.series.fleet, d.series.workers[1]);
        assert!(one.workers.is_empty() && one.worker_rows().is_empty());
        assert!(matches!(
            d.worker(2),
            Err(RunDataError::NoWorker { index: 2, .. })
        ));
    }

    #[test]
    fn large_data_is_chunked_and_every_chunk_fits() {
        // Rows that do not compress away: distinct numbers in every field.
        let mut d = data(1, 0);
        d.series.fleet.points = (1..=60_000u64)
            .map(|t| SeriesPoint {
                t,
                attempts: t.wrapping_mul(2_654_435_761) % 1_000_003,
                rate: (t as f64).sqrt(),
                unix_ms: t.wrapping_mul(7_919),
                ..SeriesPoint::default()
            })
            .collect();
        let chunks = d.encode().unwrap();
        assert!(chunks.len() > 1, "{} chunk(s)", chunks.len());
        assert!(chunks.iter().all(|c| c.len() <= CHUNK_BYTES));
        assert_eq!(
            RunData::decode(&chunks).unwrap().series.fleet.points.len(),
            60_000
        );
    }

    #[test]
    fn garbage_and_other_formats_are_named() {
        assert!(matches!(
            RunData::decode(&[b"not deflate".to_vec()]),
            Err(RunDataError::Inflate(_) | RunDataError::Json(_))
        ));
        let mut d = data(0, 1);
        d.format = 99;
        let chunks = vec![deflate(&d).unwrap()];
        assert!(matches!(
            RunData::decode(&chunks),
            Err(RunDataError::Format(99))
        ));
        // A bomb: more zeros than allowed (a small bound here; the real one is the same code).
        let mut enc = DeflateEncoder::new(Vec::new(), Compression::best());
        enc.write_all(&vec![0u8; 1 << 20]).unwrap();
        let bomb = enc.finish().unwrap();
        assert!(bomb.len() < 4096);
        assert!(matches!(
            RunData::decode_at_most(&[bomb], 1 << 16),
            Err(RunDataError::TooLarge)
        ));
    }

    #[test]
    fn a_bad_stored_threshold_is_named() {
        let mut d = data(0, 1);
        d.thresholds[0].expr = "p(95)<<".into();
        let e = d.summary().unwrap_err().to_string();
        assert!(e.contains("http_req_duration"), "{e}");
    }

    /// The one decision: the summary `pacer report` computes from the stored data is the
    /// one the run computed (`FleetOutcome::summary`), thresholds, limits and hosts included.
    #[test]
    fn the_stored_summary_is_the_runs() {
        use pacer_stats::{Attempt, Recorder, RequestOutcome};
        let doc = serde_json::json!({
            "name": "p", "target": "http://api",
            "http": {"allowHosts": ["other.example"]},
            "limits": [{"name": "per-token", "limit": "10/s"}],
            "scenarios": [{"name": "s", "executor": "constant-vus", "vus": 1, "duration": "1s",
                           "requests": [{"name": "q", "path": "/"}]}],
            "thresholds": {"http_req_duration{request:q}": ["p(95)<20ms", {"threshold": "p(99)<30ms", "abortOnFail": true, "delayAbortEval": "2s"}],
                           "http_reqs_throttled": ["rate<0.01"]}
        });
        let none = |_: &str| -> Option<String> { None };
        let plan = pacer_plan::load_value(doc, "p", &pacer_plan::Refs::Remote { provided: &none })
            .unwrap();
        let rec = Recorder::new(pacer_stats::Layout::of(&plan));
        for ms in [5u64, 10, 40] {
            let status = if ms == 40 { 429 } else { 200 };
            rec.record_attempt(
                0,
                0,
                &Attempt {
                    service_time: Duration::from_millis(ms),
                    status: Some(status),
                    ..Default::default()
                },
            );
            rec.record_request(
                0,
                0,
                &RequestOutcome {
                    duration: Duration::from_millis(ms),
                    attempts: 1,
                    ..Default::default()
                },
            );
        }
        let outcome = FleetOutcome {
            test_id: "t".into(),
            series: FleetSeriesOutput::default(),
            merged: rec.snapshot(),
            elapsed: Duration::from_millis(2_500),
            workers: Vec::new(),
            worker_snapshots: Vec::new(),
            workers_omitted: false,
            worker_limits: Vec::new(),
            abort_reason: None,
            failure: None,
            stopped_early: false,
            resumed: false,
        };
        let data = RunData::from_outcome(&plan, &outcome);
        let back = RunData::decode(&data.encode().unwrap()).unwrap();
        let stored = back.summary().unwrap();
        assert_eq!(stored, outcome.summary(&plan));
        assert_eq!(stored.thresholds.len(), 3);
        assert!(!stored.passed, "a 40 ms p95 and a 429 fail it");
    }

    #[test]
    fn chunk_names_stay_valid_for_the_longest_loadtest_names() {
        let long = "a".repeat(253);
        assert!(chunk_name(&long, MAX_CHUNKS - 1).len() <= 253);
    }
}
