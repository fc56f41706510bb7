//! Reports from a real run: the real `pacer` binary against the mock API (in-process on
//! 127.0.0.1:0), with an OAuth2 secret from `${env:..}` and a forced 429. One run writes the
//! HTML report, the per-second series (JSON Lines and CSV) and serves `/metrics`, which the
//! test scrapes while the run goes. Every wait is bounded.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use pacer_mock::{
    Algorithm, ClientConfig, LatencyConfig, LimitConfig, LimitKey, MockConfig, MockServer,
};
use pacer_tests::*;
use serde_json::Value;

/// The client secret: only the mock and the environment of `pacer` know it.
const SECRET: &str = "Zq9-report-e2e-5f1c0de";
const SECRET_ENV: &str = "PACER_REPORT_E2E_SECRET";

fn mock_config() -> MockConfig {
    MockConfig {
        clients: vec![ClientConfig {
            id: "report-client".into(),
            secret: SECRET.into(),
            org: "report-org".into(),
        }],
        token_rate_limit: None,
        // A generous limit, so every response carries rate-limit headers.
        limits: vec![LimitConfig {
            name: "token.rate.per.minute".into(),
            key: LimitKey::Token,
            limit: 6000,
            window: Duration::from_secs(60),
            methods: None,
            path_prefix: None,
            algorithm: Algorithm::Fixed,
            ..LimitConfig::default()
        }],
        latency: LatencyConfig::Uniform {
            min: Duration::from_millis(2),
            max: Duration::from_millis(10),
        },
        ..MockConfig::default()
    }
}

fn plan(target: &str) -> String {
    format!(
        r#"name: report-e2e
target: {target}
auth:
  - name: api
    type: oauth2-clientCredentials
    tokenUrl: /oauth/token
    clientId: report-client
    clientSecret: ${{env:{SECRET_ENV}}}
limits:
  - {{ name: per-token, limit: 100/s, burst: 5 }}
retry: {{ maxAttempts: 4, backoff: {{ base: 50ms, max: 500ms }} }}
scenarios:
  - name: api
    executor: constant-arrival-rate
    rate: 20/s
    duration: 4s
    maxInFlight: 200
    gracefulStop: 5s
    auth: api
    requests:
      - {{ name: me, path: /api/v2/users/me, expect: {{ status: [200] }} }}
thresholds:
  http_req_failed: ["rate<0.01"]
  http_req_duration: ["p(95)<5000ms"]
"#
    )
}

async fn start(config: MockConfig) -> MockServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    pacer_mock::serve(config, listener).await.unwrap()
}

/// `GET /metrics` over a raw TCP connection; returns the body.
fn scrape(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    body.to_string()
}

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A strict-enough parser of the text exposition format: every sample line must parse, and
/// every sample must belong to a family declared by `# TYPE`.
fn parse_prometheus(text: &str) -> (BTreeMap<String, String>, Vec<Sample>) {
    let mut types = BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert!(
                types.insert(name.to_string(), kind.to_string()).is_none(),
                "family {name} declared twice"
            );
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment {line}");
        let (name, rest) = match line.find('{') {
            Some(i) => (&line[..i], &line[i..]),
            None => line.split_at(line.find(' ').unwrap()),
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                && name.starts_with("pacer_"),
            "metric name {name}"
        );
        let mut labels = BTreeMap::new();
        let value_text = if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices().peekable();
            let end;
            loop {
                let (start, c) = chars.next().unwrap();
                if c == '}' {
                    end = start;
                    break;
                }
                if c == ',' {
                    continue;
                }
                let mut key = String::from(c);
                for (_, c) in chars.by_ref() {
                    if c == '=' {
                        break;
                    }
                    key.push(c);
                }
                assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line}");
                let mut value = String::new();
                loop {
                    let (_, c) = chars.next().unwrap();
                    match c {
                        '\\' => match chars.next().unwrap().1 {
                            'n' => value.push('\n'),
                            other => value.push(other),
                        },
                        '"' => break,
                        c => value.push(c),
                    }
                }
                labels.insert(key, value);
            }
            body[end + 1..].trim()
        } else {
            rest.trim()
        };
        let value: f64 = value_text.parse().unwrap_or_else(|e| panic!("{line}: {e}"));
        assert!(value.is_finite() && value >= 0.0, "{line}");
        let family = [
            name,
            name.trim_end_matches("_bucket"),
            name.trim_end_matches("_sum"),
            name.trim_end_matches("_count"),
        ]
        .into_iter()
        .find(|f| types.contains_key(*f))
        .unwrap_or_else(|| panic!("{name} has no # TYPE"));
        if family != name {
            assert_eq!(types[family], "histogram", "{line}");
        }
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    (types, samples)
}

fn sum_of(samples: &[Sample], name: &str) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum()
}

/// A sample's labels but `le`, in order.
type Labels = Vec<(String, String)>;

/// Histograms: buckets cumulative (non-decreasing in `le`), `+Inf` equals `_count`.
/// Returns how many histograms were checked.
fn check_histograms(types: &BTreeMap<String, String>, samples: &[Sample]) -> usize {
    let mut checked = 0;
    for (family, _) in types.iter().filter(|(_, k)| *k == "histogram") {
        let mut by_series: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
        for s in samples
            .iter()
            .filter(|s| s.name == format!("{family}_bucket"))
        {
            let le = s.labels["le"].clone();
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            let key: Labels = s
                .labels
                .iter()
                .filter(|(k, _)| *k != "le")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            by_series.entry(key).or_default().push((bound, s.value));
        }
        for (key, mut buckets) in by_series {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            assert!(
                buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                "{family} {key:?} buckets not cumulative: {buckets:?}"
            );
            let inf = buckets.last().unwrap();
            assert!(inf.0.is_infinite(), "{family} {key:?} has no +Inf bucket");
            let count = samples
                .iter()
                .find(|s| {
                    s.name == format!("{family}_count")
                        && s.labels
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect::<Vec<_>>()
                            == key
                })
                .unwrap_or_else(|| panic!("{family} {key:?} has no _count"));
            assert_eq!(inf.1, count.value, "{family} {key:?}: +Inf bucket != count");
            checked += 1;
        }
    }
    checked
}

/// Every `http://` or `https://` in the report must be the target's text inside the plan
/// listing; nothing outside it may point anywhere (no src, href, url(), imports, scripts).
fn check_self_contained(html: &str, target: &str) {
    let open = r#"<pre id="plan-source">"#;
    let start = html.find(open).expect("plan listing");
    let end = start + html[start..].find("</pre>").expect("plan listing ends");
    let listing = &html[start + open.len()..end];
    let outside = format!("{}{}", &html[..start], &html[end..]);
    let lower = outside.to_ascii_lowercase();
    for bad in [
        "http:", "https:", "ftp:", "//", " src=", " href=", "srcset", "url(", "@import", "<link",
        "<script", "<iframe", "<img", "<object", "<embed", "<base", "xlink:",
    ] {
        // "//" may only appear inside the CSP / comments we do not write: there are none.
        assert!(!lower.contains(bad), "{bad:?} outside the plan listing");
    }
    assert!(
        html.contains(r#"http-equiv="Content-Security-Policy" content="default-src 'none'"#),
        "no CSP"
    );
    // Inside the listing, each URL is the target as written in the plan.
    let lower = listing.to_ascii_lowercase();
    let urls: Vec<usize> = ["http://", "https://"]
        .iter()
        .flat_map(|scheme| lower.match_indices(scheme).map(|(i, _)| i))
        .collect();
    assert!(!urls.is_empty(), "the target is listed");
    for i in urls {
        assert!(
            listing[i..].starts_with(target),
            "unexpected URL in the listing: {}",
            &listing[i..(i + 60).min(listing.len())]
        );
    }
}

/// `data-value` of the element with this id.
fn data_value(html: &str, id: &str) -> f64 {
    let at = html
        .find(&format!(r#"id="{id}""#))
        .unwrap_or_else(|| panic!("no #{id}"));
    let rest = &html[at..];
    let v = rest.find("data-value=\"").unwrap() + "data-value=\"".len();
    let end = rest[v..].find('"').unwrap();
    rest[v..v + end].parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn html_report_series_and_metrics_from_one_real_run() {
    let mock = start(mock_config()).await;
    let target = format!("http://{}", mock.addr());
    let dir = tempfile::tempdir().unwrap();
    let plan_path = write(dir.path(), "plan.yaml", &plan(&target));
    let (html_path, jsonl_path, csv_path, sj) = (
        dir.path().join("report.html"),
        dir.path().join("series.jsonl"),
        dir.path().join("series.csv"),
        dir.path().join("summary.json"),
    );
    let bin = pacer_bin(); // built before the clock starts
    let started = Instant::now();
    let mut child = Command::new(bin)
        .args([
            "run",
            "-q",
            plan_path.to_str().unwrap(),
            "--summary-json",
            sj.to_str().unwrap(),
            "--report",
            html_path.to_str().unwrap(),
            "--out",
            &format!("json={}", jsonl_path.display()),
            "--out",
            &format!("csv={}", csv_path.display()),
            "--metrics",
            "127.0.0.1:0",
        ])
        .env_remove("PACER_LOG")
        .env(SECRET_ENV, SECRET)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // stderr, line by line, from a thread (pacer prints the metrics address there).
    let (tx, rx) = mpsc::channel::<String>();
    let stderr_pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr_pipe).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let control = mock.control().clone();
    let (scrapes, metrics_addr, mut stderr_lines) = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr: SocketAddr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no metrics address on stderr: {lines:?}"));
            if let Some(url) = line.split("serving metrics on http://").nth(1) {
                break url.trim_end_matches("/metrics").parse().unwrap();
            }
            lines.push(line);
        };
        assert!(addr.ip().is_loopback());
        // The next 3 API requests get 429 with Retry-After: 1 (each pauses the scope).
        std::thread::sleep(Duration::from_millis(500));
        control.force_429(3, 1);
        let mut scrapes = Vec::new();
        for wait in [1000, 1200] {
            std::thread::sleep(Duration::from_millis(wait));
            scrapes.push(scrape(addr));
        }
        (scrapes, addr, (rx, lines))
    })
    .await
    .unwrap();
    let out = tokio::task::spawn_blocking(move || wait_bounded(child, Duration::from_secs(20)))
        .await
        .unwrap();
    let elapsed = started.elapsed();
    reader.join().unwrap();
    stderr_lines.1.extend(stderr_lines.0.try_iter());
    let text = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}\n{}",
        stderr_lines.1.join("\n")
    );
    assert!(elapsed < Duration::from_secs(15), "took {elapsed:?}");
    // The server is gone with the run.
    assert!(TcpStream::connect_timeout(&metrics_addr, Duration::from_millis(500)).is_err());

    let s = summary(&sj);
    let http_reqs = s["totals"]["http_reqs"].as_u64().unwrap();
    let throttled = s["totals"]["throttled"].as_u64().unwrap();
    let p95 = s["totals"]["duration_ms"]["p95"].as_f64().unwrap();
    // 80 arrivals (none dropped), 3 of them answered 429 once and retried after the pause.
    assert_eq!(throttled, 3, "{text}");
    assert_eq!(http_reqs, 83, "{text}");
    assert_eq!(s["totals"]["failed"], 0, "{text}");
    assert_eq!(s["scenario_totals"]["dropped_iterations"], 0, "{text}");
    assert!(s["limits"][0]["pauses"].as_u64().unwrap() >= 1, "{text}");
    // the server saw every attempt, and the one token request
    let stats = mock.stats();
    assert_eq!(stats.tokens.issued, 1);
    assert_eq!(stats.requests.total, http_reqs + 1);

    // ---- the HTML report
    let html = std::fs::read_to_string(&html_path).unwrap();
    for id in [
        "verdict",
        "tiles",
        "table-thresholds",
        "chart-rate",
        "chart-status",
        "chart-duration",
        "chart-service-time",
        "chart-time",
        "time-share",
        "chart-ratelimit",
        "table-limits",
        "table-throttled",
        "table-requests",
        "table-tokens",
        "plan-source",
    ] {
        assert!(html.contains(&format!(r#"id="{id}""#)), "no #{id}");
    }
    for title in [
        "Achieved vs planned rate",
        "Responses by status, 429s and Retry-After pauses",
        "Latency from the intended start (http_req_duration)",
        "Server service time (http_req_service_time)",
        "Where the time went",
        "The server's rate-limit headers",
        "The plan that ran",
    ] {
        assert!(html.contains(title), "no chart titled {title:?}");
    }
    assert!(html.contains(r#"id="verdict" class="verdict pass" data-passed="true""#));
    assert_eq!(data_value(&html, "tile-http-reqs"), http_reqs as f64);
    assert_eq!(data_value(&html, "tile-throttled"), throttled as f64);
    assert_eq!(data_value(&html, "tile-duration-p95"), p95);
    let row = html
        .find(r#"data-scenario="api" data-request="me""#)
        .expect("request row");
    assert!(
        html[row..].contains(&format!(r#"data-value="{http_reqs}""#)),
        "request row count"
    );
    assert!(
        html.contains(r#"class="band""#),
        "no Retry-After pause shaded"
    );
    assert!(html.contains("✓"), "thresholds marked");
    assert!(html.contains("per-token"), "limit listed");
    assert!(!html.contains("NaN") && !html.contains("inf\""));
    check_self_contained(&html, &target);
    assert!(html.contains("&lt;redacted&gt;"), "clientSecret redacted");

    // ---- the series
    let jsonl = std::fs::read_to_string(&jsonl_path).unwrap();
    let rows: Vec<Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let elapsed_secs = s["elapsed_secs"].as_f64().unwrap();
    let n = rows.len();
    assert!(
        (elapsed_secs.floor() as usize..=elapsed_secs.ceil() as usize + 1).contains(&n),
        "{n} rows for {elapsed_secs:.2}s"
    );
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r["t"].as_u64().unwrap(), i as u64 + 1, "one row per second");
        let secs = r["secs"].as_f64().unwrap();
        assert!(secs > 0.0 && secs < 1.5, "row {i}: {secs}s");
    }
    let total = |key: &str| rows.iter().map(|r| r[key].as_u64().unwrap()).sum::<u64>();
    assert_eq!(total("attempts"), http_reqs);
    assert_eq!(total("throttled"), throttled);
    let status_429: u64 = rows
        .iter()
        .filter_map(|r| r["status"]["429"].as_u64())
        .sum();
    assert_eq!(status_429, throttled);
    assert!(
        rows.iter()
            .any(|r| r["active_pauses"].as_u64().unwrap() > 0)
    );
    assert!(
        rows.iter()
            .any(|r| r["ratelimit_limit"].as_u64() == Some(6000))
    );
    // the plan asks for 20/s during its 4 s
    for r in &rows[1..3] {
        assert_eq!(r["planned_rate"].as_f64(), Some(20.0), "{r}");
    }
    let csv = std::fs::read_to_string(&csv_path).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), n + 1, "a header and one line per second");
    let header: Vec<&str> = lines[0].split(',').collect();
    assert!(header.contains(&"status_200") && header.contains(&"status_429"));
    let attempts_col = header.iter().position(|c| *c == "attempts").unwrap();
    let csv_attempts: u64 = lines[1..]
        .iter()
        .map(|l| {
            let cells: Vec<&str> = l.split(',').collect();
            assert_eq!(cells.len(), header.len(), "{l}");
            cells[attempts_col].parse::<u64>().unwrap()
        })
        .sum();
    assert_eq!(csv_attempts, http_reqs);

    // ---- the metrics scraped during the run
    let mut previous_reqs = 0.0;
    for (k, body) in scrapes.iter().enumerate() {
        let (types, samples) = parse_prometheus(body);
        assert_eq!(types["pacer_http_reqs_total"], "counter");
        assert_eq!(types["pacer_http_req_duration_seconds"], "histogram");
        assert_eq!(types["pacer_http_reqs_throttled_total"], "counter");
        assert!(
            check_histograms(&types, &samples) >= 6,
            "histograms checked"
        );
        let reqs = sum_of(&samples, "pacer_http_reqs_total");
        assert!(
            reqs > previous_reqs && reqs <= http_reqs as f64,
            "scrape {k}: {reqs} requests (before {previous_reqs}, final {http_reqs})"
        );
        previous_reqs = reqs;
        // one snapshot per scrape: the histogram counts match the counters exactly
        assert_eq!(
            sum_of(&samples, "pacer_http_req_service_time_seconds_count"),
            reqs
        );
        assert_eq!(
            sum_of(&samples, "pacer_http_req_duration_seconds_count"),
            sum_of(&samples, "pacer_requests_total")
        );
        assert_eq!(sum_of(&samples, "pacer_token_fetches_total"), 1.0);
        assert!(samples.iter().any(|s| s.name == "pacer_limit_pacing_rate"
            && s.labels.get("limit").map(String::as_str) == Some("per-token")));
    }
    let (_, last) = parse_prometheus(scrapes.last().unwrap());
    let throttled_seen = sum_of(&last, "pacer_http_reqs_throttled_total");
    assert!(throttled_seen >= 1.0, "the forced 429 is counted by then");
    assert!(
        last.iter()
            .any(|s| s.name == "pacer_http_reqs_throttled_total"
                && s.labels.get("limit").map(String::as_str) == Some("forced"))
    );

    // ---- the secret is nowhere
    for (what, text) in [
        ("report", &html),
        ("jsonl", &jsonl),
        ("csv", &csv),
        ("metrics", &scrapes.join("\n")),
        ("stdout", &text),
    ] {
        assert!(!text.contains(SECRET), "the secret leaked into the {what}");
    }
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_model_series_has_no_planned_rate_and_bad_out_flags_are_refused() {
    let mut config = plain_mock_config(LatencyConfig::Fixed {
        value: Duration::from_millis(5),
    });
    config.headers.inin = false;
    let mock = start(config).await;
    let target = format!("http://{}", mock.addr());
    let dir = tempfile::tempdir().unwrap();
    let plan = format!(
        "name: vus\ntarget: {target}\nscenarios:\n  - {{name: s, executor: constant-vus, vus: 2, duration: 2s, requests: [{{name: r, path: /api/v2/users/me}}]}}\n"
    );
    let csv = dir.path().join("s.csv");
    let html = dir.path().join("r.html");
    let extra = [
        "--out".to_string(),
        format!("csv={}", csv.display()),
        "--report".to_string(),
        html.display().to_string(),
    ];
    let r = run_summary(dir.path(), &plan, &extra, &[], Duration::from_secs(20)).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let s = r.summary;
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let header: Vec<&str> = lines[0].split(',').collect();
    let planned = header.iter().position(|c| *c == "planned_rate").unwrap();
    let attempts = header.iter().position(|c| *c == "attempts").unwrap();
    assert!((2..=4).contains(&(lines.len() - 1)), "{text}");
    let mut sum = 0;
    for l in &lines[1..] {
        let cells: Vec<&str> = l.split(',').collect();
        assert_eq!(cells[planned], "", "VU executors have no planned rate: {l}");
        sum += cells[attempts].parse::<u64>().unwrap();
    }
    assert_eq!(sum, s["totals"]["http_reqs"].as_u64().unwrap());
    let report = std::fs::read_to_string(&html).unwrap();
    assert!(report.contains("the server sent no rate-limit headers"));
    assert!(
        !report.contains(r#"id="table-workers""#),
        "one process: no worker table"
    );
    mock.shutdown().await;

    let p = dir.path().join("plan.yaml"); // written by run_summary
    let bad = pacer(
        &["run", p.to_str().unwrap(), "--out", "xml=x.xml"],
        &[],
        Duration::from_secs(10),
    );
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(
        stderr(&bad).contains("unknown output format \"xml\": use json, csv or ledger"),
        "{}",
        stderr(&bad)
    );
}
