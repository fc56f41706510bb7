//! Test data (feeders, docs/plan-format.md "Test data"), end to end: the real `pacer` binary
//! against `pacer mock`, whose arrival log keeps every request's path, so each test checks
//! the values the server received. `unique` rows are used exactly once by one process, by
//! `pacer run --workers 3` and by `pacer controller` with 3 `pacer worker`s (also from a file
//! without a header row, named by the plan's `columns`); rows running out
//! end the run, failed, with the reason; `cycle` and `random` rows; every request of one
//! iteration sees the same row.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use pacer_tests::{
    pacer_async, pacer_spawn, plain_mock_config, start_mock, stderr, stdout, wait_bounded, write,
};

/// Rows of the users file.
const ROWS: usize = 30;

/// `id,email` rows `0..n`.
fn users(n: usize) -> String {
    let mut s = String::from("id,email\n");
    for i in 0..n {
        s.push_str(&format!("{i},user{i}@example.com\n"));
    }
    s
}

/// A plan whose one scenario sends two requests per iteration, both naming the row and the
/// iteration: `/a/<id>/<iteration>` and `/b/<email>/<iteration>`.
fn plan(target: &str, mode: &str, executor: &str) -> String {
    plan_with(target, mode, executor, "")
}

/// [`plan`] with more lines for the source (`extra`, each indented by 4 and ending in `\n`).
fn plan_with(target: &str, mode: &str, executor: &str, extra: &str) -> String {
    format!(
        "name: data\ntarget: {target}\ndata:\n  users:\n    file: data/users.csv\n    mode: {mode}\n{extra}scenarios:\n  - name: s\n    {executor}\n    gracefulStop: 2s\n    requests:\n      - {{ name: a, path: \"/a/{{{{data.users.id}}}}/{{{{iteration}}}}\" }}\n      - {{ name: b, path: \"/b/{{{{data.users.email}}}}/{{{{iteration}}}}\" }}\n"
    )
}

/// The paths the mock received.
fn paths(mock: &pacer_mock::MockServer) -> Vec<String> {
    mock.control()
        .arrivals()
        .arrivals
        .into_iter()
        .filter_map(|a| a.path)
        .collect()
}

/// The row ids of the `/a/` requests, and a check that each iteration's `/b/` request has the
/// same row's email.
fn rows_used(paths: &[String]) -> Vec<usize> {
    let mut by_iteration: BTreeMap<String, (Option<usize>, Option<String>)> = BTreeMap::new();
    for p in paths {
        let parts: Vec<&str> = p.split('/').collect();
        match parts.as_slice() {
            ["", "a", id, it] => {
                by_iteration.entry(it.to_string()).or_default().0 = id.parse().ok()
            }
            ["", "b", email, it] => {
                by_iteration.entry(it.to_string()).or_default().1 = Some(email.to_string())
            }
            _ => panic!("unexpected path {p}"),
        }
    }
    let mut ids = Vec::new();
    for (it, (id, email)) in by_iteration {
        let id = id.unwrap_or_else(|| panic!("iteration {it} sent no /a/"));
        assert_eq!(
            email.as_deref(),
            Some(format!("user{id}@example.com").as_str()),
            "iteration {it}: both requests see the same row"
        );
        ids.push(id);
    }
    ids
}

fn setup(dir: &Path, target: &str, mode: &str, executor: &str, rows: usize) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("data")).unwrap();
    write(&dir.join("data"), "users.csv", &users(rows));
    write(dir, "plan.yaml", &plan(target, mode, executor))
}

/// `pacer mock` without auth or limits, keeping the arrival log, and a directory for the plan.
/// The run exited with `code`; its output says why when it did not.
fn assert_exit(out: &std::process::Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{}{}",
        stdout(out),
        stderr(out)
    );
}

async fn recording_mock() -> (pacer_mock::MockServer, tempfile::TempDir) {
    let mut config = plain_mock_config(pacer_mock::LatencyConfig::None);
    config.record_arrivals = true;
    (start_mock(config).await, tempfile::tempdir().unwrap())
}

async fn run(args: &[&str]) -> std::process::Output {
    pacer_async(
        args.iter().map(|s| s.to_string()).collect(),
        Vec::new(),
        Duration::from_secs(60),
    )
    .await
}

/// 30 iterations over 3 VUs use each of the 30 rows once, and both requests of an iteration
/// see the same row.
const SHARED_30: &str = "executor: shared-iterations\n    vus: 3\n    iterations: 30";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_rows_are_used_once_by_one_process() {
    let (mock, dir) = recording_mock().await;
    let p = setup(
        dir.path(),
        &format!("http://{}", mock.addr()),
        "unique",
        SHARED_30,
        ROWS,
    );
    let out = run(&["run", "-q", p.to_str().unwrap()]).await;
    assert_exit(&out, 0);
    let mut ids = rows_used(&paths(&mock));
    ids.sort_unstable();
    assert_eq!(ids, (0..ROWS).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_rows_are_split_across_run_workers_with_none_twice_and_none_skipped() {
    let (mock, dir) = recording_mock().await;
    let p = setup(
        dir.path(),
        &format!("http://{}", mock.addr()),
        "unique",
        SHARED_30,
        ROWS,
    );
    let out = run(&["run", "-q", p.to_str().unwrap(), "--workers", "3"]).await;
    assert_exit(&out, 0);
    let mut ids = rows_used(&paths(&mock));
    ids.sort_unstable();
    assert_eq!(ids, (0..ROWS).collect::<Vec<_>>(), "every row exactly once");
}

/// An arrival-rate plan: 10/s for 3 s is 30 arrivals over `pacer controller` and 3 `pacer
/// worker` processes; each arrival takes a row of its worker's block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_rows_are_split_across_controller_workers() {
    let (mock, dir) = recording_mock().await;
    let p = setup(
        dir.path(),
        &format!("http://{}", mock.addr()),
        "unique",
        "executor: constant-arrival-rate\n    rate: 10/s\n    duration: 3s",
        ROWS,
    );
    let out = controller_and_3_workers(&p).await;
    assert_exit(&out, 0);
    let mut ids = rows_used(&paths(&mock));
    ids.sort_unstable();
    assert_eq!(ids, (0..ROWS).collect::<Vec<_>>(), "every row exactly once");
}

/// `pacer controller` with the plan `p` and 3 `pacer worker`s on loopback: the controller's
/// output.
async fn controller_and_3_workers(p: &Path) -> std::process::Output {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let session = "data-session-0123456789";
    let controller = pacer_spawn(&[
        "controller",
        "--plan",
        p.to_str().unwrap(),
        "--expect-workers",
        "3",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--insecure-plaintext",
        "--test-id",
        "t-data",
        "--session-token",
        session,
        "-q",
    ]);
    let workers: Vec<_> = (0..3)
        .map(|_| {
            pacer_spawn(&[
                "worker",
                "--connect",
                &format!("127.0.0.1:{port}"),
                "--insecure-plaintext",
                "--test-id",
                "t-data",
                "--session-token",
                session,
                "--connect-for",
                "20s",
            ])
        })
        .collect();
    let out =
        tokio::task::spawn_blocking(move || wait_bounded(controller, Duration::from_secs(60)))
            .await
            .unwrap();
    for w in workers {
        let _ = tokio::task::spawn_blocking(move || wait_bounded(w, Duration::from_secs(10))).await;
    }
    out
}

/// A file without a header row, split on `;` and with a first line to skip: the plan's
/// `columns`, `skipFirstLine` and `delimiter` reach the workers with the plan, which parse the
/// file's text the controller sends them as it did: every row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_without_header_reaches_controller_workers_with_its_columns() {
    let (mock, dir) = recording_mock().await;
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let mut rows = String::from("ID;EMAIL\n");
    for i in 0..ROWS {
        rows.push_str(&format!("{i};user{i}@example.com\n"));
    }
    write(&dir.path().join("data"), "users.csv", &rows);
    let p = write(
        dir.path(),
        "plan.yaml",
        &plan_with(
            &format!("http://{}", mock.addr()),
            "unique",
            "executor: constant-arrival-rate\n    rate: 10/s\n    duration: 3s",
            "    columns: [id, email]\n    skipFirstLine: true\n    delimiter: \";\"\n",
        ),
    );
    let out = controller_and_3_workers(&p).await;
    assert_exit(&out, 0);
    let mut ids = rows_used(&paths(&mock));
    ids.sort_unstable();
    assert_eq!(ids, (0..ROWS).collect::<Vec<_>>(), "every row exactly once");
}

/// 30 iterations for 10 rows: the run stops after the 10th, fails (exit 1) and says why; no
/// row is used twice. With 3 workers, each stops when its block is used, and the fleet fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_running_out_end_the_run_with_the_reason() {
    let (mock, dir) = recording_mock().await;
    let p = setup(
        dir.path(),
        &format!("http://{}", mock.addr()),
        "unique",
        SHARED_30,
        10,
    );
    // pacer validate says so before the run
    let out = run(&["validate", p.to_str().unwrap()]).await;
    assert!(
        stdout(&out).contains(
            "data users: 10 rows, unique; the plan starts 30 iterations that take a row: the run will stop, failed, after 10"
        ),
        "{}",
        stdout(&out)
    );
    let out = run(&["run", "-q", p.to_str().unwrap()]).await;
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("test data `users` ran out: all 10 rows"),
        "{text}"
    );
    let mut ids = rows_used(&paths(&mock));
    ids.sort_unstable();
    assert_eq!(ids, (0..10).collect::<Vec<_>>());

    mock.control().reset();
    let out = run(&["run", "-q", p.to_str().unwrap(), "--workers", "3"]).await;
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert_ne!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("test data `users` ran out"), "{text}");
    let mut ids = rows_used(&paths(&mock));
    ids.sort_unstable();
    assert_eq!(
        ids,
        (0..10).collect::<Vec<_>>(),
        "each row once across the fleet"
    );
}

/// `cycle`: 30 iterations over 7 rows take rows 0..7 round and round (each 4 or 5 times);
/// `random`: every row taken is one of the file's. Both requests of an iteration see the same
/// row in both modes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cycle_and_random_rows() {
    let (mock, dir) = recording_mock().await;
    let target = format!("http://{}", mock.addr());
    let p = setup(dir.path(), &target, "cycle", SHARED_30, 7);
    let out = run(&["run", "-q", p.to_str().unwrap()]).await;
    assert_exit(&out, 0);
    let ids = rows_used(&paths(&mock));
    assert_eq!(ids.len(), 30);
    let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
    for id in ids {
        *counts.entry(id).or_default() += 1;
    }
    assert_eq!(
        counts.keys().copied().collect::<Vec<_>>(),
        (0..7).collect::<Vec<_>>()
    );
    assert!(counts.values().all(|&n| n == 4 || n == 5), "{counts:?}");

    mock.control().reset();
    let p = setup(dir.path(), &target, "random", SHARED_30, 7);
    let out = run(&["run", "-q", p.to_str().unwrap()]).await;
    assert_exit(&out, 0);
    let ids = rows_used(&paths(&mock));
    assert_eq!(ids.len(), 30);
    let distinct: BTreeSet<usize> = ids.iter().copied().collect();
    assert!(distinct.iter().all(|&i| i < 7), "{distinct:?}");
    // 30 draws of 7 rows: fewer than 3 distinct has a probability below 1e-17.
    assert!(distinct.len() >= 3, "{distinct:?}");
}

/// A template naming a column the file does not have is a plan error naming the field, and
/// nothing is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_column_is_a_plan_error() {
    let (mock, dir) = recording_mock().await;
    let p = setup(
        dir.path(),
        &format!("http://{}", mock.addr()),
        "unique",
        SHARED_30,
        3,
    );
    write(&dir.path().join("data"), "users.csv", "id,mail\n1,a\n");
    let out = run(&["run", "-q", p.to_str().unwrap()]).await;
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("scenarios[0].requests[1].path: {{data.users.email}}: data/users.csv has no column `email`"),
        "{text}"
    );
    assert!(paths(&mock).is_empty());
}

/// examples/user-story-data.yaml as written, against the mock's demo defaults (OAuth2, 300
/// requests per minute per token): each of the CSV's 24 rows is one query, every query is
/// answered 200 (the mock checks that `pageNumber` is an integer: the CSV's `types`), none
/// throttled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_story_data_example_runs_as_written() {
    let mock = start_mock(pacer_mock::MockConfig {
        record_arrivals: true,
        ..Default::default()
    })
    .await;
    let example = pacer_tests::workspace_root().join("examples/user-story-data.yaml");
    let out = pacer_async(
        vec!["run".into(), "-q".into(), example.display().to_string()],
        vec![("TARGET".into(), format!("http://{}", mock.addr()))],
        Duration::from_secs(60),
    )
    .await;
    assert_exit(&out, 0);
    let stats = mock.stats();
    let queries = paths(&mock)
        .iter()
        .filter(|p| p.as_str() == "/api/v2/analytics/conversations/details/query")
        .count();
    assert_eq!(queries, 24);
    // 24 queries and 1 token request, every one answered 200.
    assert_eq!(
        stats.requests.by_status.into_iter().collect::<Vec<_>>(),
        [(200, 25)]
    );
    assert_eq!(stats.tokens.issued, 1);
}
