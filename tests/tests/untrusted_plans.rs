//! Plans from people trusted less than the machine that reads them (issue 15, items 1 and 2),
//! through the real `pacer` binary: a LoadTest manifest never reads a file for its author
//! and no error echoes a resolved value; a number no test needs is refused by `pacer
//! validate` and `pacer run` with the field named (exit 2), never a panic (exit 101).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use pacer_tests::*;

const LIMIT: Duration = Duration::from_secs(30);

/// A plan with one scenario; `{TARGET}` and `{DURATION}` are filled in by each test.
const PLAN: &str = r#"name: t
target: "{TARGET}"
duration: {DURATION}
scenarios:
  - name: s
    executor: constant-arrival-rate
    rate: 10/s
    requests:
      - name: r
        path: /x
"#;

fn plan(target: &str, duration: &str) -> String {
    PLAN.replace("{TARGET}", target)
        .replace("{DURATION}", duration)
}

fn manifest(plan: &str) -> String {
    format!(
        "apiVersion: pacer.dev/v1alpha1\nkind: LoadTest\nmetadata: {{name: x}}\nspec:\n  plan:\n{}",
        plan.lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    )
}

fn both(out: &std::process::Output) -> String {
    format!("{}{}", stdout(out), stderr(out))
}

/// A file holding a canary where a target should be: a LoadTest's plan that references it is
/// refused, in the plain and the escaped-then-concatenated forms, and the canary appears in
/// nothing `pacer validate` prints.
#[test]
fn a_loadtest_referencing_a_file_is_refused_and_the_canary_appears_nowhere() {
    let dir = tempfile::tempdir().unwrap();
    let canary = "CANARY-7f3a9c-not-a-url";
    let secret = write(dir.path(), "token", &format!("{canary}\n"));
    let secret = secret.to_str().unwrap();
    for (form, target) in [
        ("plain", format!("${{file:{secret}}}")),
        (
            "escaped, then concatenated",
            format!("$${{file:a}}${{file:{secret}}}"),
        ),
        (
            "behind an env fallback",
            format!("${{env:NOPE:-x}}${{file:{secret}}}"),
        ),
    ] {
        let p = write(dir.path(), "lt.yaml", &manifest(&plan(&target, "1s")));
        let out = pacer(&["validate", p.to_str().unwrap()], &[], LIMIT);
        let text = both(&out);
        assert_eq!(out.status.code(), Some(2), "{form}: {text}");
        assert!(!text.contains(canary), "{form}: the canary leaked:\n{text}");
        assert!(
            text.contains("spec.plan.target: ") && text.contains("cannot be used in a LoadTest"),
            "{form}: {text}"
        );
        // `pacer run` of the manifest reads it as a LoadTest's too.
        let out = pacer(&["run", "-q", p.to_str().unwrap()], &[], LIMIT);
        let text = both(&out);
        assert_eq!(out.status.code(), Some(2), "{form} (run): {text}");
        assert!(
            !text.contains(canary),
            "{form} (run): the canary leaked:\n{text}"
        );
    }
}

/// On the user's own machine (`pacer validate` of a plain plan) a file may be read, but an
/// error about the field it filled names the reference, never the content.
#[test]
fn a_local_plan_error_names_the_reference_not_the_files_content() {
    let dir = tempfile::tempdir().unwrap();
    let canary = "CANARY-51be-secret token";
    let secret = write(dir.path(), "token", canary);
    let target = format!("${{file:{}}}", secret.to_str().unwrap());
    let p = write(dir.path(), "plan.yaml", &plan(&target, "1s"));
    let out = pacer(&["validate", p.to_str().unwrap()], &[], LIMIT);
    let text = both(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        !text.contains("CANARY-51be"),
        "the file's content leaked:\n{text}"
    );
    assert!(text.contains("target: the value of ${file:"), "{text}");
}

/// `${file:/dev/zero}` is refused without reading (it would never end).
#[test]
fn a_device_is_not_read_by_a_file_reference() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "plan.yaml", &plan("${file:/dev/zero}", "1s"));
    let out = pacer(&["validate", p.to_str().unwrap()], &[], LIMIT);
    let text = both(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("not a regular file"), "{text}");
}

/// Numbers far beyond any test: refused with the field named by `validate` and by `run`
/// (which exits 2, never 101).
#[test]
fn extreme_numbers_are_refused_with_the_field_named_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let good = plan("http://127.0.0.1:9", "1s");
    // (field named, text replaced, replacement)
    let cases = [
        (
            "duration",
            "duration: 1s",
            "duration: 18446744073709551615s",
        ),
        ("duration", "duration: 1s", "duration: 32days"),
        (
            "scenarios[0].rate",
            "rate: 10/s",
            "rate: 18446744073709551615/s",
        ),
        (
            "scenarios[0].maxInFlight",
            "rate: 10/s",
            "rate: 10/s\n    maxInFlight: 4294967295",
        ),
        (
            "scenarios[0].startTime",
            "rate: 10/s",
            "rate: 10/s\n    startTime: 9999999999h",
        ),
        (
            "scenarios[0].gracefulStop",
            "rate: 10/s",
            "rate: 10/s\n    gracefulStop: 2h",
        ),
    ];
    for (field, from, to) in cases {
        let p = write(dir.path(), "plan.yaml", &good.replace(from, to));
        for cmd in ["validate", "run"] {
            let out = pacer(&[cmd, p.to_str().unwrap()], &[], LIMIT);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{to} ({cmd}): {err}");
            assert!(!err.contains("panicked"), "{to} ({cmd}): {err}");
            assert!(
                err.contains(&format!("{field}: ")),
                "{to} ({cmd}): no {field} in\n{err}"
            );
        }
    }
    let iso = good.replace(
        "path: /x",
        "path: \"/x?t={{isoNow +18446744073709551615s}}\"",
    );
    let p = write(dir.path(), "iso.yaml", &iso);
    let out = pacer(&["run", p.to_str().unwrap()], &[], LIMIT);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("scenarios[0].requests[0].path: "),
        "{}",
        stderr(&out)
    );
}

/// The LoadTest's own numbers (`spec.startTimeout`) are bounded and summed with checks.
#[test]
fn an_overflowing_start_timeout_is_refused_by_validate() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(&plan("http://127.0.0.1:9", "1s")).replace(
        "spec:\n",
        "spec:\n  startTimeout: 18446744073709551615s1s\n",
    );
    let p = write(dir.path(), "lt.yaml", &m);
    let out = pacer(&["validate", p.to_str().unwrap()], &[], LIMIT);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("spec.startTimeout: "), "{err}");
}

/// A plan with every number at (or near) its bound, short only where a run would otherwise
/// last: it validates, and `pacer run` ends with a verdict (0, 1 or 99), never a panic.
#[test]
fn a_plan_at_its_bounds_runs_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"name: bounds
target: http://127.0.0.1:9
http: {timeout: 1h, connectTimeout: 1h, maxIdlePerHost: 100000}
limits:
  - {name: l, limit: 1000000/s, burst: 1000, window: 1s, spread: 1h}
retry: {maxAttempts: 1, backoff: {base: 1h, max: 1h}, retryAfterMax: 1h, retryAfterDefault: 1h}
scenarios:
  - name: iters
    executor: per-vu-iterations
    vus: 1
    iterations: 1
    maxDuration: 744h
    gracefulStop: 1h
    requests:
      - name: r
        path: "/x?a={{isoNow +36500d}}&b={{isoNow -36500d}}&c={{randInt -9223372036854775808 9223372036854775807}}"
  - name: open
    executor: constant-arrival-rate
    rate: 1/744h
    duration: 1s
    maxInFlight: 1000000
    preAllocatedVUs: 1000000
    requests:
      - name: q
        path: /y
"#;
    let p = write(dir.path(), "bounds.yaml", text);
    let out = pacer(&["validate", p.to_str().unwrap()], &[], LIMIT);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = pacer(
        &["run", "-q", p.to_str().unwrap()],
        &[],
        Duration::from_secs(60),
    );
    let err = stderr(&out);
    assert!(
        matches!(out.status.code(), Some(0 | 1 | 99)),
        "exit {:?}: {err}",
        out.status.code()
    );
    assert!(!err.contains("panicked"), "{err}");
}
