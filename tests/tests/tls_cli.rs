//! `pacer controller --tls-cert/--tls-key` and `pacer worker --ca` as a user runs them: real
//! processes on 127.0.0.1, certificates made by rcgen, the mock API in process. The channel's
//! own properties (nothing readable on the wire, rotation, the handshake's bounds) are tested in
//! crates/pacer-controller/tests/tls.rs; here: the flags, their errors, and that a run over TLS
//! ends as one in plaintext does.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pacer_mock::LatencyConfig;
use pacer_tests::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

const TOKEN: &str = "tls-cli-session-token-0123456789";

/// A CA (its own name) and a serving certificate for `localhost`, written to `dir`: the CA's
/// path, and the serving pair's.
fn pki(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, format!("pacer test CA {name}"));
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let ca_path = write(dir, &format!("{name}-ca.pem"), &ca_cert.pem());
    let cert_path = write(dir, &format!("{name}-cert.pem"), &cert.pem());
    let key_path = write(dir, &format!("{name}-key.pem"), &key.serialize_pem());
    (ca_path, cert_path, key_path)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_and_a_worker_over_tls_run_the_plan() {
    let mock = start_mock(plain_mock_config(LatencyConfig::Fixed {
        value: Duration::from_millis(1),
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = pki(dir.path(), "good");
    let plan = write(
        dir.path(),
        "plan.yaml",
        &format!(
            "name: tls\ntarget: http://{}\nscenarios:\n  - {{name: s, executor: per-vu-iterations, vus: 1, iterations: 20, requests: [{{name: r, path: /api/v2/users/me}}]}}\n",
            mock.addr()
        ),
    );
    let port = free_port();
    let summary_path = dir.path().join("summary.json");
    let controller = pacer_spawn(&[
        "controller",
        "--plan",
        &s(&plan),
        "--expect-workers",
        "1",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--tls-cert",
        &s(&cert),
        "--tls-key",
        &s(&key),
        "--test-id",
        "t-tls",
        "--session-token",
        TOKEN,
        "-q",
        "--summary-json",
        &s(&summary_path),
    ]);
    let worker = pacer_spawn(&[
        "worker",
        "--connect",
        &format!("localhost:{port}"),
        "--ca",
        &s(&ca),
        "--test-id",
        "t-tls",
        "--session-token",
        TOKEN,
        "--connect-for",
        "30s",
    ]);
    let (c, w) = tokio::task::spawn_blocking(move || {
        let w = wait_bounded(worker, Duration::from_secs(60));
        let c = wait_bounded(controller, Duration::from_secs(30));
        (c, w)
    })
    .await
    .unwrap();
    assert_eq!(w.status.code(), Some(0), "worker: {}", stderr(&w));
    assert_eq!(c.status.code(), Some(0), "controller: {}", stderr(&c));
    let summary = summary(&summary_path);
    assert_eq!(
        summary["totals"]["http_reqs"].as_u64(),
        Some(20),
        "{summary}"
    );
    assert_eq!(mock.stats().requests.total, 20);
}

#[test]
fn without_a_certificate_or_the_insecure_flag_neither_side_starts() {
    let dir = tempfile::tempdir().unwrap();
    let plan = write(
        dir.path(),
        "plan.yaml",
        "name: p\ntarget: http://127.0.0.1:9\nscenarios:\n  - {name: s, executor: per-vu-iterations, vus: 1, iterations: 1, requests: [{name: r, path: /}]}\n",
    );
    let controller = pacer(
        &["controller", "--plan", &s(&plan), "--listen", "127.0.0.1:0"],
        &[("PACER_SESSION_TOKEN", TOKEN)],
        Duration::from_secs(20),
    );
    let worker = pacer(
        &["worker", "--connect", "127.0.0.1:9"],
        &[("PACER_SESSION_TOKEN", TOKEN)],
        Duration::from_secs(20),
    );
    for (what, out, want) in [
        (
            "controller",
            controller,
            "--tls-cert FILE and --tls-key FILE",
        ),
        ("worker", worker, "--ca FILE"),
    ] {
        let text = format!("{}{}", stdout(&out), stderr(&out));
        assert_eq!(out.status.code(), Some(2), "{what}: {text}");
        assert!(text.contains(want), "{what}: {text}");
        assert!(text.contains("--insecure-plaintext"), "{what}: {text}");
        assert!(!text.contains(TOKEN), "{what}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_given_another_ca_exits_at_once_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (_, cert, key) = pki(dir.path(), "good");
    let (other_ca, _, _) = pki(dir.path(), "other");
    let plan = write(
        dir.path(),
        "plan.yaml",
        "name: p\ntarget: http://127.0.0.1:9\nscenarios:\n  - {name: s, executor: per-vu-iterations, vus: 1, iterations: 1, requests: [{name: r, path: /}]}\n",
    );
    let port = free_port();
    let controller = pacer_spawn(&[
        "controller",
        "--plan",
        &s(&plan),
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--tls-cert",
        &s(&cert),
        "--tls-key",
        &s(&key),
        "--session-token",
        TOKEN,
        "--wait-for-workers",
        "20s",
    ]);
    let started = Instant::now();
    let worker = tokio::task::spawn_blocking({
        let args = [
            "worker".to_string(),
            "--connect".into(),
            format!("localhost:{port}"),
            "--ca".into(),
            s(&other_ca),
            "--connect-for".into(),
            "30s".into(),
        ];
        move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            pacer(
                &args,
                &[("PACER_SESSION_TOKEN", TOKEN)],
                Duration::from_secs(40),
            )
        }
    })
    .await
    .unwrap();
    let took = started.elapsed();
    let text = stderr(&worker);
    assert_eq!(worker.status.code(), Some(1), "{text}");
    assert!(
        took < Duration::from_secs(20),
        "not after --connect-for: {took:?}"
    );
    assert!(text.contains("not trusted"), "{text}");
    assert!(text.contains(&s(&other_ca)), "names the CA: {text}");
    assert!(!text.contains(TOKEN), "{text}");
    let _ = wait_bounded(controller, Duration::from_millis(100));
}
