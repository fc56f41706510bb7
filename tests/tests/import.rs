//! `pacer import` end to end: each .jmx (and the .har) of crates/pacer-import/tests/data is
//! imported by the real binary, the plan it writes is run by the real binary against the
//! mock API on loopback, and the server counts the requests the JMeter plan implies
//! (threads x loops x samplers; a throughput timer's rate x duration), and a CSV Data Set's
//! lines (its file written beside the imported plan). Runs are a few seconds each.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::PathBuf;
use std::time::Duration;

use pacer_mock::LatencyConfig;
use pacer_tests::*;

fn data(name: &str) -> PathBuf {
    workspace_root()
        .join("crates/pacer-import/tests/data")
        .join(name)
}

/// `pacer import KIND FILE -o plan.yaml`: (the plan's text, the command's stdout).
fn import(kind: &str, file: &std::path::Path, dir: &std::path::Path) -> (String, String) {
    let out_path = dir.join("imported.yaml");
    let out = pacer(
        &[
            "import",
            kind,
            file.to_str().unwrap(),
            "-o",
            out_path.to_str().unwrap(),
        ],
        &[],
        Duration::from_secs(30),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    (std::fs::read_to_string(&out_path).unwrap(), stdout(&out))
}

struct Ran {
    summary: serde_json::Value,
    stats: pacer_mock::StatsView,
    stdout: String,
}

/// Import `file` and run the plan against a fresh mock (no auth, no limits, 1 ms latency).
async fn import_and_run(kind: &str, file: &str, edit: impl Fn(String) -> String) -> (String, Ran) {
    let mock = start_mock(plain_mock_config(LatencyConfig::Fixed {
        value: Duration::from_millis(1),
    }))
    .await;
    let target = format!("http://{}", mock.addr());
    let dir = tempfile::tempdir().unwrap();
    let (plan, listing) = import(kind, &data(file), dir.path());
    let plan = edit(plan);
    let r = run_summary(
        dir.path(),
        &plan,
        &[],
        &[("PACER_TARGET", &target)],
        Duration::from_secs(90),
    )
    .await;
    assert_eq!(r.code, 0, "{plan}\n{}\n{}", r.stdout, r.stderr);
    let stats = mock.stats();
    mock.shutdown().await;
    assert_eq!(
        stats.requests.total,
        r.summary["totals"]["http_reqs"].as_u64().unwrap(),
        "the server and pacer count the same requests"
    );
    (
        listing,
        Ran {
            summary: r.summary,
            stats,
            stdout: r.stdout,
        },
    )
}

fn iterations(s: &serde_json::Value, scenario: &str) -> u64 {
    s["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == scenario)
        .unwrap_or_else(|| panic!("no scenario {scenario}: {s}"))["iterations"]
        .as_u64()
        .unwrap()
}

fn request<'a>(s: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    s["requests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["request"] == name)
        .unwrap_or_else(|| panic!("no request {name}: {s}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thread_groups_run_their_threads_times_loops() {
    let (listing, ran) = import_and_run("jmeter", "thread_groups.jmx", |p| p).await;
    assert!(
        listing.contains("Thread groups / off <ThreadGroup> (disabled)"),
        "{listing}"
    );
    // 3 threads x 4 loops, 2 samplers each.
    assert_eq!(iterations(&ran.summary, "fixed"), 12);
    assert_eq!(request(&ran.summary, "get me")["http_reqs"], 12);
    assert_eq!(request(&ran.summary, "create order")["http_reqs"], 12);
    // 2 threads for 2 s (a 1 s ramp-up): a closed loop against a 1 ms server.
    assert!(iterations(&ran.summary, "timed") > 10, "{}", ran.stdout);
    assert_eq!(
        ran.stats.requests.by_status.get(&200).copied(),
        Some(ran.stats.requests.total)
    );
}

/// The CSV Data Set of csv_headers.jmx (no header row, `;`, each line once) is a `data:`
/// source: with its file beside the imported plan, each iteration takes the next line, and
/// every line's value reaches the server once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_data_sets_feed_each_line_to_the_server() {
    let mut config = plain_mock_config(LatencyConfig::Fixed {
        value: Duration::from_millis(1),
    });
    config.record_arrivals = true;
    let mock = start_mock(config).await;
    let target = format!("http://{}", mock.addr());
    let dir = tempfile::tempdir().unwrap();
    let (plan, listing) = import("jmeter", &data("csv_headers.jmx"), dir.path());
    assert!(!listing.contains("CSVDataSet"), "{listing}");
    assert!(
        listing.contains("its data files, which `pacer run` reads relative to it: users.csv"),
        "{listing}"
    );
    assert!(!listing.contains("abc123"));
    assert!(
        plan.contains("path: \"/api/v2/users/{{data.users.user}}\""),
        "{plan}"
    );
    // 2 threads x 5 loops: 10 iterations, 10 lines (a quoted password holds the delimiter).
    const LINES: usize = 10;
    let lines: String = (0..LINES)
        .map(|i| format!("user{i};\"pw;{i}\"\n"))
        .collect();
    std::fs::write(dir.path().join("users.csv"), lines).unwrap();
    let r = run_summary(
        dir.path(),
        &plan,
        &[],
        &[("PACER_TARGET", &target)],
        Duration::from_secs(90),
    )
    .await;
    assert_eq!(r.code, 0, "{plan}\n{}\n{}", r.stdout, r.stderr);
    assert_eq!(iterations(&r.summary, "login"), LINES as u64);
    let paths: Vec<String> = mock
        .control()
        .arrivals()
        .arrivals
        .into_iter()
        .filter_map(|a| a.path)
        .collect();
    mock.shutdown().await;
    assert_eq!(paths.len(), 2 * LINES, "{paths:?}");
    let mut users: Vec<&str> = paths
        .iter()
        .filter_map(|p| p.strip_prefix("/api/v2/users/"))
        .collect();
    users.sort_unstable();
    let mut expected: Vec<String> = (0..LINES).map(|i| format!("user{i}")).collect();
    expected.sort_unstable();
    assert_eq!(users, expected, "each line once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_timers_set_the_arrival_rate() {
    let (_, ran) = import_and_run("jmeter", "throughput.jmx", |p| p).await;
    // 600/min for 3 s: 30 iterations of one sampler, exactly (the open model's count).
    assert_eq!(iterations(&ran.summary, "constant"), 30);
    // 20 samples/s over 2 samplers: 10 iterations/s, for the 5 threads x 2 loops = 10.
    assert_eq!(iterations(&ran.summary, "precise"), 10);
    assert_eq!(request(&ran.summary, "b2")["http_reqs"], 10);
    // 1 thread x 3 loops with a 100 ms think time.
    assert_eq!(iterations(&ran.summary, "think"), 3);
    assert_eq!(ran.stats.requests.total, 30 + 20 + 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assertions_and_extractors_check_and_extract() {
    let (listing, ran) = import_and_run("jmeter", "assertions_extractors.jmx", |p| p).await;
    assert!(
        listing.contains("<RegexExtractor> (not translated)"),
        "{listing}"
    );
    let login = request(&ran.summary, "Login - post login");
    assert_eq!(login["http_reqs"], 3);
    // Each login: status, $.ok == true, $.path exists: 3 checks, all passed.
    assert_eq!(login["checks_passed"], 9, "{login}");
    assert_eq!(login["checks_failed"], 0);
    // The extracted method went into the next request's path.
    let routes = &ran.stats.requests.by_route;
    assert_eq!(ran.stats.requests.total, 6, "{routes:?}");
    assert_eq!(request(&ran.summary, "items")["checks_failed"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_elements_are_listed_and_the_rest_runs() {
    let (listing, ran) = import_and_run("jmeter", "unsupported.jmx", |p| p).await;
    for element in [
        "<CookieManager> (not translated)",
        "<ResultCollector> (not translated)",
        "<JSR223Sampler> (not translated)",
        "<JSR223PostProcessor> (not translated)",
        "<DebugSampler> (not translated)",
        "<IfController> (approximated)",
    ] {
        assert!(listing.contains(element), "{element}:\n{listing}");
    }
    // 1 thread x 2 loops x the 2 HTTP samplers.
    assert_eq!(ran.stats.requests.total, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_story_example_runs() {
    // The imported 50-thread plan, shortened from 20 s to 2 s.
    let mock = start_mock(plain_mock_config(LatencyConfig::Fixed {
        value: Duration::from_millis(5),
    }))
    .await;
    let target = format!("http://{}", mock.addr());
    let plan = std::fs::read_to_string(workspace_root().join("examples/jmeter/user-story.yaml"))
        .unwrap()
        .replace("duration: \"20s\"", "duration: \"2s\"");
    assert!(plan.contains("duration: \"2s\""), "{plan}");
    let dir = tempfile::tempdir().unwrap();
    let r = run_summary(
        dir.path(),
        &plan,
        &[],
        &[("PACER_TARGET", &target)],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let stats = mock.stats();
    mock.shutdown().await;
    assert!(stats.requests.total > 50, "{}", r.stdout);
    assert_eq!(
        stats.requests.total,
        r.summary["totals"]["http_reqs"].as_u64().unwrap()
    );
    assert_eq!(request(&r.summary, "details query")["checks_failed"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn har_recordings_replay_in_order_without_their_secrets() {
    let (listing, ran) = import_and_run("har", "recording.har", |p| p).await;
    assert!(
        listing.contains("3 requests for static assets"),
        "{listing}"
    );
    assert!(!listing.contains("recorded-secret-token-42"));
    assert_eq!(ran.stats.requests.total, 4);
    assert_eq!(iterations(&ran.summary, "recording"), 1);
}

#[test]
fn import_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(dir.path(), "bad.jmx", "<html/>");
    let out = pacer(
        &["import", "jmeter", bad.to_str().unwrap()],
        &[],
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("the root element is <html>, expected <jmeterTestPlan>"),
        "{}",
        stderr(&out)
    );
    let out = pacer(
        &["import", "har", "/nonexistent.har"],
        &[],
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(2));
    // Without -o the plan is on stdout and the list on stderr.
    let out = pacer(
        &[
            "import",
            "jmeter",
            data("unsupported.jmx").to_str().unwrap(),
        ],
        &[],
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).starts_with("# Imported by `pacer import jmeter`"));
    assert!(
        stderr(&out).contains("not translated: 6"),
        "{}",
        stderr(&out)
    );
}
