//! Servers trusted less than the test (issue 15, items 5 and 6), through the real `pacer`
//! binary against `pacer mock` on loopback: a rendered URL to another origin is refused
//! (`off-origin` in the summary) and never receives the bearer token; with `http.allowHosts`
//! it is called without the token, and the summary lists the allowed host.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pacer_mock::LatencyConfig;
use pacer_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(60);

/// The bearer token of the plans: it may reach the mock (the target) and nothing else.
const CANARY: &str = "canary-bearer-9c2e";

/// A server on 127.0.0.1 that records the head of every request it receives and answers 200.
async fn recorder() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let s = s.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                s.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&head).into_owned());
                let _ = tcp
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    (addr, seen)
}

/// Three iterations of one request to `{{vars.next}}` (= `next`), with the bearer token.
fn plan(target: &str, next: &str, http: &str) -> String {
    format!(
        r#"name: untrusted-servers
target: {target}
http: {http}
variables: {{ next: "{next}" }}
auth:
  - {{ name: api, type: bearer, token: "{CANARY}" }}
scenarios:
  - name: s
    executor: shared-iterations
    vus: 1
    iterations: 3
    auth: api
    requests:
      - {{ name: follow, path: "{{{{vars.next}}}}" }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rendered_url_to_another_origin_is_refused_and_the_token_stays_home() {
    let mock = start_mock(plain_mock_config(LatencyConfig::Fixed {
        value: Duration::from_millis(1),
    }))
    .await;
    let (other, seen) = recorder().await;
    let dir = tempfile::tempdir().unwrap();
    let text = plan(
        &format!("http://{}", mock.addr()),
        &format!("http://{other}/steal"),
        "{}",
    );
    let r = run_summary(dir.path(), &text, &[], &[], LIMIT).await;
    let errors = &r.summary["totals"]["errors"];
    assert_eq!(errors["off-origin"], 3, "{}\n{}", r.stdout, r.stderr);
    assert!(
        seen.lock().unwrap().is_empty(),
        "the other origin was called"
    );
    assert!(r.summary.get("allowed_hosts").is_none());
    for out in [&r.stdout, &r.stderr] {
        assert!(
            !out.contains(CANARY),
            "the token appeared in pacer's output"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_host_is_called_without_the_token_and_the_summary_lists_it() {
    let mock = start_mock(plain_mock_config(LatencyConfig::Fixed {
        value: Duration::from_millis(1),
    }))
    .await;
    let (other, seen) = recorder().await;
    let dir = tempfile::tempdir().unwrap();
    let text = plan(
        &format!("http://{}", mock.addr()),
        &format!("http://{other}/next"),
        &format!("{{ allowHosts: [\"{other}\"] }}"),
    );
    let p = write(dir.path(), "plan.yaml", &text);
    let sj = dir.path().join("summary.json");
    let args = [
        "run",
        p.to_str().unwrap(),
        "--summary-json",
        sj.to_str().unwrap(),
    ];
    let out = pacer_async(
        args.iter().map(|a| a.to_string()).collect(),
        Vec::new(),
        LIMIT,
    )
    .await;
    let (o, e) = (stdout(&out), stderr(&out));
    let s = summary(&sj);
    assert_eq!(s["totals"]["status"]["200"], 3, "{o}\n{e}");
    assert_eq!(s["allowed_hosts"][0], other.to_string(), "{o}");
    assert!(
        o.contains("also allowed besides the target") && o.contains(&other.to_string()),
        "{o}"
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    for head in seen.iter() {
        assert!(
            !head.to_ascii_lowercase().contains("authorization") && !head.contains(CANARY),
            "a credential went to the allowed host:\n{head}"
        );
    }
}
