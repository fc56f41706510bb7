//! The engine does not trust the servers it talks to (issue 15, items 5 and 6), shown against
//! real servers on 127.0.0.1: a URL a response hands back (`Location`, extracted into
//! `{{vars.location}}`) never takes the test's credentials to another origin, and is refused
//! unless the plan names its host in `http.allowHosts`; response bodies are capped by
//! `http.maxBodyBytes` (a hostile endless body included) and drained when nothing reads them;
//! a token endpoint's answer is capped too. Every run is bounded (a few iterations).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use pacer_engine::{HttpClient, Outgoing};
use pacer_limiter::Unlimited;
use pacer_plan::{Refs, load_str};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;

/// The bearer token of the plans below: it must reach the target and nothing else.
const CANARY: &str = "canary-token-5f1d";
/// A cookie in the plan's `http.headers`: a credential too.
const COOKIE_CANARY: &str = "session=canary-cookie-77";

/// One request a server received: its path, `Authorization` and `Cookie`.
type Received = (String, Option<String>, Option<String>);

/// What one server received.
#[derive(Default)]
struct Seen {
    requests: Mutex<Vec<Received>>,
}

impl Seen {
    fn count(&self) -> usize {
        self.requests.lock().len()
    }

    /// Did any request carry a credential (the token or the cookie)?
    fn any_credential(&self) -> bool {
        self.requests
            .lock()
            .iter()
            .any(|(_, a, c)| a.is_some() || c.is_some())
    }

    fn all_carry_the_token(&self) -> bool {
        self.requests
            .lock()
            .iter()
            .all(|(_, a, _)| a.as_deref() == Some(&format!("Bearer {CANARY}")))
    }
}

/// A server on 127.0.0.1 that records what it received and answers with `respond(path)`:
/// (status, extra headers, body).
async fn serve(
    respond: impl Fn(&str) -> (u16, Vec<(&'static str, String)>, Bytes) + Send + Sync + 'static,
) -> (SocketAddr, Arc<Seen>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let respond = Arc::new(respond);
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (s, respond) = (s.clone(), respond.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<_>| {
                    let header = |n: &str| {
                        req.headers()
                            .get(n)
                            .map(|v| v.to_str().unwrap_or("?").to_string())
                    };
                    s.requests.lock().push((
                        req.uri().path().to_string(),
                        header("authorization"),
                        header("cookie"),
                    ));
                    let (status, headers, body) = respond(req.uri().path());
                    let mut resp = hyper::Response::new(Full::new(body));
                    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                    for (k, v) in headers {
                        resp.headers_mut().insert(k, v.parse().unwrap());
                    }
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
                let io = hyper_util::rt::TokioIo::new(tcp);
                common::serve_connection(io, false, svc).await;
            });
        }
    });
    (addr, seen)
}

/// A target whose `/start` answers `Location: <location>`.
async fn target_redirecting_to(location: String) -> (SocketAddr, Arc<Seen>) {
    serve(move |path| match path {
        "/start" => (201, vec![("location", location.clone())], Bytes::new()),
        _ => (200, vec![], Bytes::from_static(b"ok")),
    })
    .await
}

/// Five iterations of: `start` on the target (with the bearer token), then `follow` to
/// `{{vars.location}}` from its `Location` header.
fn follow_plan(target: SocketAddr, http: &str) -> String {
    format!(
        r#"
name: follow
target: http://{target}
http: {http}
auth:
  - {{ name: api, type: bearer, token: "{CANARY}" }}
scenarios:
  - name: s
    executor: shared-iterations
    vus: 1
    iterations: 5
    auth: api
    requests:
      - name: start
        method: POST
        path: /start
        extract:
          location: {{ header: Location }}
      - name: follow
        path: "{{{{vars.location}}}}"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_location_to_another_origin_is_refused_and_never_gets_the_token() {
    let (other, other_seen) = serve(|_| (200, vec![], Bytes::from_static(b"stolen"))).await;
    let (target, target_seen) = target_redirecting_to(format!("http://{other}/steal")).await;
    let plan = follow_plan(
        target,
        &format!("{{ headers: {{ Cookie: \"{COOKIE_CANARY}\" }} }}"),
    );
    let t = common::run_plan(&plan, Arc::new(Unlimited)).await;
    assert_eq!(other_seen.count(), 0, "the other origin was called");
    assert_eq!(t.errors.get("off-origin"), Some(&5), "{:?}", t.errors);
    assert_eq!(t.status.get(&201), Some(&5), "{:?}", t.status);
    assert_eq!(target_seen.count(), 5);
    assert!(target_seen.all_carry_the_token());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_allow_hosts_the_other_origin_is_called_without_credentials() {
    let (other, other_seen) = serve(|_| (200, vec![], Bytes::from_static(b"fine"))).await;
    let (target, target_seen) = target_redirecting_to(format!("http://{other}/next")).await;
    let plan = follow_plan(
        target,
        &format!("{{ allowHosts: [\"{other}\"], headers: {{ Cookie: \"{COOKIE_CANARY}\" }} }}"),
    );
    let t = common::run_plan(&plan, Arc::new(Unlimited)).await;
    assert_eq!(t.errors.get("off-origin"), None, "{:?}", t.errors);
    assert_eq!(t.status.get(&200), Some(&5), "{:?}", t.status);
    assert_eq!(other_seen.count(), 5);
    assert!(
        !other_seen.any_credential(),
        "a credential went to the allowed host: {:?}",
        other_seen.requests.lock()
    );
    // The target itself still gets both.
    assert!(target_seen.all_carry_the_token());
    assert!(
        target_seen
            .requests
            .lock()
            .iter()
            .all(|(_, _, c)| c.as_deref() == Some(COOKIE_CANARY))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rendered_path_naming_another_host_is_refused() {
    let (other, other_seen) = serve(|_| (200, vec![], Bytes::new())).await;
    let (target, target_seen) = serve(|_| (200, vec![], Bytes::new())).await;
    for (i, p) in [
        format!("//{other}/x"),
        format!("http://{other}/x"),
        format!("/\\{other}/x"),
        "/x\r\nX-Injected: 1".to_string(),
        "x".to_string(),
    ]
    .into_iter()
    .enumerate()
    {
        let plan = format!(
            "name: t\ntarget: http://{target}\nvariables: {{ p: {} }}\nscenarios:\n  - name: s\n    executor: shared-iterations\n    vus: 1\n    iterations: 3\n    requests:\n      - {{ name: a, path: \"{{{{vars.p}}}}\" }}\n",
            serde_json::to_string(&p).unwrap()
        );
        let t = common::run_plan(&plan, Arc::new(Unlimited)).await;
        assert_eq!(
            t.errors.get("off-origin"),
            Some(&3),
            "case {i}: {:?}",
            t.errors
        );
        assert_eq!(t.failed, 3, "case {i}");
    }
    assert_eq!(other_seen.count(), 0);
    assert_eq!(target_seen.count(), 0);
}

#[test]
fn a_literal_path_to_another_host_fails_validation_naming_the_field() {
    for (path, http) in [
        ("//evil:1/x", "{}"),
        ("http://evil:1/x", "{}"),
        ("http://evil:1/x", "{ allowHosts: [\"evil:2\"] }"),
    ] {
        let yaml = format!(
            "name: t\ntarget: http://127.0.0.1:9\nhttp: {http}\nscenarios:\n  - name: s\n    executor: shared-iterations\n    iterations: 1\n    requests:\n      - {{ name: a, path: \"{path}\" }}\n"
        );
        let e = load_str(&yaml, "plan.yaml", &Refs::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("scenarios[0].requests[0].path") && e.contains("allowHosts"),
            "{path}: {e}"
        );
    }
    let ok = "name: t\ntarget: http://127.0.0.1:9\nhttp: { allowHosts: [\"evil:1\"] }\nscenarios:\n  - name: s\n    executor: shared-iterations\n    iterations: 1\n    requests:\n      - { name: a, path: \"http://evil:1/x\" }\n";
    load_str(ok, "plan.yaml", &Refs::default()).unwrap();
}

#[test]
fn allow_hosts_and_max_body_bytes_are_validated_with_their_field() {
    for (http, field) in [
        ("{ allowHosts: [\"http://evil\"] }", "http.allowHosts[0]"),
        ("{ allowHosts: [\"ok\", \"*.evil\"] }", "http.allowHosts[1]"),
        ("{ maxBodyBytes: 0 }", "http.maxBodyBytes"),
        ("{ maxBodyBytes: 2000000000000 }", "http.maxBodyBytes"),
    ] {
        let yaml = format!(
            "name: t\ntarget: http://127.0.0.1:9\nhttp: {http}\nscenarios:\n  - name: s\n    executor: shared-iterations\n    iterations: 1\n    requests:\n      - {{ name: a, path: /x }}\n"
        );
        let e = load_str(&yaml, "plan.yaml", &Refs::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains(field), "{http}: {e}");
    }
}

/// `n` bytes of `x`.
fn big(n: usize) -> Bytes {
    Bytes::from(vec![b'x'; n])
}

const MIB: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_max_body_bytes_is_an_error_kind_and_the_run_goes_on() {
    let (target, _) = serve(|path| match path {
        "/big" => (200, vec![], big(2 * MIB)),
        _ => (200, vec![], Bytes::from_static(b"{}")),
    })
    .await;
    let plan = format!(
        "name: t\ntarget: http://{target}\nhttp: {{ maxBodyBytes: {MIB} }}\nretry: {{ maxAttempts: 3, backoff: {{ base: 1ms, max: 2ms }} }}\nscenarios:\n  - name: s\n    executor: shared-iterations\n    vus: 2\n    iterations: 6\n    requests:\n      - {{ name: big, path: /big }}\n      - {{ name: small, path: /small }}\n"
    );
    let t = common::run_plan(&plan, Arc::new(Unlimited)).await;
    // Not retried: the same body would be too large again.
    assert_eq!(t.errors.get("body-too-large"), Some(&6), "{:?}", t.errors);
    assert_eq!(t.status.get(&200), Some(&6), "{:?}", t.status);
    assert_eq!(t.attempts, 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_answer_announcing_a_big_body_is_not_too_large() {
    // hyper answers HEAD with the Content-Length of the body it would send, and no body.
    let (target, _) = serve(|_| (200, vec![], big(2 * MIB))).await;
    let plan = format!(
        "name: t\ntarget: http://{target}\nhttp: {{ maxBodyBytes: {MIB} }}\nscenarios:\n  - name: s\n    executor: shared-iterations\n    iterations: 3\n    requests:\n      - {{ name: head, method: HEAD, path: /big }}\n      - {{ name: get, path: /big }}\n"
    );
    let t = common::run_plan(&plan, Arc::new(Unlimited)).await;
    assert_eq!(t.status.get(&200), Some(&3), "{:?}", t.errors);
    assert_eq!(t.errors.get("body-too-large"), Some(&3), "{:?}", t.errors);
}

/// A hostile server: answers every connection with a chunked body that never ends (bounded
/// here at `limit` bytes so the test ends whatever the engine does).
async fn endless_body_server(limit: usize) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tcp.read(&mut buf).await;
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                    .await;
                let chunk = format!("10000\r\n{}\r\n", "y".repeat(0x10000));
                let mut sent = 0;
                while sent < limit && tcp.write_all(chunk.as_bytes()).await.is_ok() {
                    sent += 0x10000;
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_body_stops_at_max_body_bytes_long_before_the_timeout() {
    let addr = endless_body_server(1024 * MIB).await;
    let plan = format!(
        "name: t\ntarget: http://{addr}\nhttp: {{ maxBodyBytes: {}, timeout: 60s }}\nscenarios:\n  - name: s\n    executor: shared-iterations\n    vus: 1\n    iterations: 2\n    requests:\n      - {{ name: a, path: /a, expect: {{ json: [ {{ pointer: /x, exists: true }} ] }} }}\n",
        4 * MIB
    );
    let started = std::time::Instant::now();
    let t = tokio::time::timeout(
        Duration::from_secs(50),
        common::run_plan(&plan, Arc::new(Unlimited)),
    )
    .await
    .expect("the run ended within 50 s (the 60 s request timeout was not what ended it)");
    assert_eq!(t.errors.get("body-too-large"), Some(&2), "{:?}", t.errors);
    assert!(started.elapsed() < Duration::from_secs(50));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_body_nothing_reads_is_drained_and_counted_not_kept() {
    let (target, _) = serve(|_| (200, vec![], big(5 * MIB))).await;
    // Through a run: counted in full.
    let plan = format!(
        "name: t\ntarget: http://{target}\nscenarios:\n  - name: s\n    executor: shared-iterations\n    vus: 2\n    iterations: 4\n    requests:\n      - {{ name: a, path: /a, expect: {{ status: [200] }} }}\n"
    );
    let t = common::run_plan(&plan, Arc::new(Unlimited)).await;
    assert_eq!(t.status.get(&200), Some(&4), "{:?}", t.errors);
    assert!(
        t.bytes_received >= 4 * 5 * MIB as u64,
        "{}",
        t.bytes_received
    );
    // Through the client: drained (counted, not kept) unless the request keeps it.
    let plan = load_str(&plan, "plan.yaml", &Refs::default()).unwrap();
    let client = HttpClient::new(&plan.http, 1).unwrap();
    let uri: http::Uri = format!("http://{target}/a").parse().unwrap();
    for keep in [false, true] {
        let resp = client
            .send(Outgoing {
                method: &http::Method::GET,
                uri: &uri,
                headers: &http::HeaderMap::new(),
                authorization: None,
                body: None,
                keep_body: keep,
                correlation: None,
            })
            .await
            .ok()
            .unwrap();
        assert_eq!(resp.body_len, 5 * MIB as u64);
        assert_eq!(
            resp.body.len(),
            if keep { 5 * MIB } else { 0 },
            "keep {keep}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_token_response_fails_the_credential_and_the_target_is_not_called() {
    // 1 MiB of "JSON" from the token endpoint: above the 64 KiB a token response may take.
    let (idp, idp_seen) = serve(|_| {
        let mut body = b"{\"access_token\":\"".to_vec();
        body.extend(std::iter::repeat_n(b'a', MIB));
        body.extend(b"\"}");
        (
            200,
            vec![("content-type", "application/json".into())],
            Bytes::from(body),
        )
    })
    .await;
    let (target, target_seen) = serve(|_| (200, vec![], Bytes::new())).await;
    let plan = format!(
        r#"
name: t
target: http://{target}
auth:
  - name: idp
    type: oauth2-clientCredentials
    tokenUrl: http://{idp}/token
    clientId: id
    clientSecret: secret
scenarios:
  - name: s
    executor: shared-iterations
    vus: 1
    iterations: 3
    auth: idp
    requests:
      - {{ name: a, path: /a }}
"#
    );
    let t = common::run_plan(&plan, Arc::new(Unlimited)).await;
    assert_eq!(t.errors.get("auth"), Some(&3), "{:?}", t.errors);
    assert_eq!(target_seen.count(), 0);
    assert!(idp_seen.count() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_request_does_not_follow_a_redirect_to_another_origin() {
    let (elsewhere, elsewhere_seen) =
        serve(|_| (200, vec![], Bytes::from_static(br#"{"access_token":"x"}"#))).await;
    let (idp, idp_seen) = serve(move |_| {
        (
            307,
            vec![("location", format!("http://{elsewhere}/token"))],
            Bytes::new(),
        )
    })
    .await;
    let (target, target_seen) = serve(|_| (200, vec![], Bytes::new())).await;
    let plan = format!(
        "name: t\ntarget: http://{target}\nhttp: {{ headers: {{ Cookie: \"{COOKIE_CANARY}\" }} }}\nauth:\n  - {{ name: idp, type: oauth2-clientCredentials, tokenUrl: \"http://{idp}/token\", clientId: id, clientSecret: secret }}\nscenarios:\n  - name: s\n    executor: shared-iterations\n    iterations: 2\n    auth: idp\n    requests:\n      - {{ name: a, path: /a }}\n"
    );
    let t = common::run_plan(&plan, Arc::new(Unlimited)).await;
    assert_eq!(t.errors.get("auth"), Some(&2), "{:?}", t.errors);
    assert_eq!(
        elsewhere_seen.count(),
        0,
        "the client secret followed a redirect"
    );
    assert_eq!(target_seen.count(), 0);
    // The plan's `http.headers` credentials are the target's, not the token endpoint's.
    assert!(idp_seen.count() >= 1);
    assert!(idp_seen.requests.lock().iter().all(|(_, _, c)| c.is_none()));
}
