//! Malformed plans: each is refused with exit code 2 and a message that names the field.
//! None may panic (a panic would exit 101).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use pacer_tests::*;

const GOOD: &str = r#"name: t
target: http://127.0.0.1:9
duration: 1s
scenarios:
  - name: s
    executor: constant-arrival-rate
    rate: 10/s
    requests:
      - name: r
        path: /x
thresholds:
  http_req_duration: ["p(95)<800ms"]
"#;

/// (description, plan text, field path the message must name, words it must contain)
fn cases() -> Vec<(&'static str, String, &'static str, &'static str)> {
    let r = |from: &str, to: &str| GOOD.replace(from, to);
    vec![
        (
            "bad rate",
            r("rate: 10/s", "rate: fast"),
            "scenarios[0].rate",
            "expected N/s",
        ),
        (
            "negative rate",
            r("rate: 10/s", "rate: -5/s"),
            "scenarios[0].rate",
            "expected N/s",
        ),
        (
            "zero rate",
            r("rate: 10/s", "rate: 0/s"),
            "scenarios[0].rate",
            "above zero",
        ),
        (
            "bare number rate",
            r("rate: 10/s", "rate: 10"),
            "scenarios[0].rate",
            "add a unit",
        ),
        (
            "bad duration",
            r("duration: 1s", "duration: soon"),
            "duration",
            "expected a duration",
        ),
        (
            "unknown executor",
            r("constant-arrival-rate", "constant-arival-rate"),
            "scenarios[0].executor",
            "unknown value",
        ),
        (
            "wrong type",
            r("name: s\n", "name: [s]\n"),
            "scenarios[0].name",
            "wrong type",
        ),
        (
            "unknown field",
            r("    rate: 10/s", "    rate: 10/s\n    rps: 5"),
            "scenarios[0].rps",
            "unknown field `rps`",
        ),
        (
            "field of another executor",
            r("    rate: 10/s", "    rate: 10/s\n    vus: 3"),
            "scenarios[0].vus",
            "not used by executor",
        ),
        (
            "missing target",
            r("target: http://127.0.0.1:9\n", ""),
            "",
            "missing field `target`",
        ),
        (
            "target not a URL",
            r("http://127.0.0.1:9", "127.0.0.1:9"),
            "target",
            "URL",
        ),
        (
            "bad threshold expression",
            r("p(95)<800ms", "p(95)<<800ms"),
            "thresholds.http_req_duration[0]",
            "not a duration",
        ),
        (
            "unknown threshold metric",
            r("http_req_duration:", "http_req_duratoin:"),
            "thresholds.http_req_duratoin",
            "unknown metric",
        ),
        (
            "threshold aggregation",
            r("p(95)<800ms", "rate<0.1"),
            "thresholds.http_req_duration[0]",
            "has no \"rate\"",
        ),
        (
            "unknown template function",
            r("path: /x", "path: /x/{{nope}}"),
            "scenarios[0].requests[0].path",
            "unknown template function",
        ),
        (
            "undefined variable",
            r("path: /x", "path: /x/{{vars.id}}"),
            "scenarios[0].requests[0].path",
            "vars.id",
        ),
        (
            "no scenarios",
            r("scenarios:\n", "scenarios: []\nx:\n")
                .replace("x:\n  - name: s", "unused:\n  - name: s"),
            "",
            "unknown field `unused`",
        ),
        (
            "empty requests",
            r(
                "    requests:\n      - name: r\n        path: /x\n",
                "    requests: []\n",
            ),
            "scenarios[0].requests",
            "at least one",
        ),
        (
            "missing duration",
            r("duration: 1s\n", ""),
            "scenarios[0].duration",
            "required",
        ),
        (
            "unknown credential",
            r("    rate: 10/s", "    rate: 10/s\n    auth: nobody"),
            "scenarios[0].auth",
            "no credential named",
        ),
        (
            "bad method",
            r("path: /x", "path: /x\n        method: \"GE T\""),
            "scenarios[0].requests[0].method",
            "not an HTTP method",
        ),
        (
            "missing env reference",
            r("http://127.0.0.1:9", "${env:PACER_TEST_SURELY_UNSET}"),
            "target",
            "PACER_TEST_SURELY_UNSET is not set",
        ),
        (
            "not a mapping",
            "- just\n- a list\n".to_string(),
            "",
            "mapping",
        ),
        (
            "not YAML",
            "name: [unclosed\n".to_string(),
            "",
            "not valid YAML",
        ),
        (
            "stage of ramping rate",
            r("    rate: 10/s", "    stages: [{target: 7, duration: 1s}]")
                .replace("constant-arrival-rate", "ramping-arrival-rate"),
            "scenarios[0].stages[0].target",
            "rate",
        ),
        (
            "limit burst above limit",
            r(
                "scenarios:",
                "limits: [{name: l, limit: 5/s, burst: 50}]\nscenarios:",
            ),
            "limits[0].burst",
            "more than the limit",
        ),
    ]
}

#[test]
fn every_malformed_plan_exits_2_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "good.yaml", GOOD);
    let out = pacer(
        &["validate", good.to_str().unwrap()],
        &[],
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let cases = cases();
    assert!(cases.len() >= 15);
    for (i, (what, text, path, words)) in cases.iter().enumerate() {
        let p = write(dir.path(), &format!("bad{i}.yaml"), text);
        for cmd in ["validate", "run"] {
            let out = pacer(&[cmd, p.to_str().unwrap()], &[], Duration::from_secs(30));
            let err = stderr(&out);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{what} ({cmd}): exit {:?}\n{err}",
                out.status.code()
            );
            assert!(!err.contains("panicked"), "{what}: panic\n{err}");
            if !path.is_empty() {
                assert!(
                    err.contains(&format!("{path}: ")),
                    "{what}: no path {path:?} in\n{err}"
                );
            }
            assert!(err.contains(words), "{what}: no {words:?} in\n{err}");
        }
    }
}

#[test]
fn every_semantic_error_is_listed_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let text = GOOD
        .replace("rate: 10/s", "rate: 0/s\n    vus: 2")
        .replace("p(95)<800ms", "p(95)<<800ms")
        .replace("path: /x", "path: x");
    let p = write(dir.path(), "bad.yaml", &text);
    let out = pacer(
        &["validate", p.to_str().unwrap()],
        &[],
        Duration::from_secs(30),
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2));
    for path in [
        "scenarios[0].rate",
        "scenarios[0].vus",
        "thresholds.http_req_duration[0]",
        "scenarios[0].requests[0].path",
    ] {
        assert!(err.contains(path), "{path} missing in\n{err}");
    }
}

#[test]
fn a_loadtest_manifest_runs_its_spec_plan() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = format!(
        "apiVersion: pacer.dev/v1alpha1\nkind: LoadTest\nmetadata: {{name: x}}\nspec:\n  plan:\n{}",
        GOOD.lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    );
    let p = write(dir.path(), "lt.yaml", &manifest);
    let out = pacer(
        &["validate", p.to_str().unwrap()],
        &[],
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let bad = write(
        dir.path(),
        "lt-bad.yaml",
        &manifest.replace("rate: 10/s", "rate: x"),
    );
    let out = pacer(
        &["validate", bad.to_str().unwrap()],
        &[],
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("spec.plan.scenarios[0].rate: "),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_arguments_exit_2() {
    let out = pacer(&["run"], &[], Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(2));
    let out = pacer(
        &["run", "/nonexistent/plan.yaml"],
        &[],
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("/nonexistent/plan.yaml"));
    let out = pacer(&["--help"], &[], Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("run"));
}

/// `pacer validate plans/*.yaml | head`: the reader goes away after one line. The rest of the
/// output is dropped and the command ends with its own verdict, not a panic on the closed pipe
/// (exit 101). 500 copies of one plan (150 KB) print more than a pipe's 64 KiB buffer.
#[test]
fn a_reader_that_closes_the_pipe_early_is_no_panic() {
    use std::io::{BufRead as _, BufReader, Read as _};
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("p.yaml");
    std::fs::write(&plan, GOOD).unwrap();
    let plan = plan.to_str().unwrap().to_string();
    let args: Vec<&str> = std::iter::once("validate")
        .chain(std::iter::repeat_n(plan.as_str(), 500))
        .collect();
    let mut child = Command::new(pacer_bin())
        .args(&args)
        .env_remove("PACER_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains(": ok: "), "{first}");
    // The read end is closed here (the reader is dropped); pacer goes on writing into it.
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
}
