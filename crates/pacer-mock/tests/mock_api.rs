//! The mock API over real HTTP on 127.0.0.1: tokens, limits (windows and buckets) and their
//! headers, faults, stalls, latency, statistics, and hostile input. Time is scaled down (1 s windows) to stay fast.

// The helpers below are test code too; a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use pacer_mock::{
    Algorithm, AuthMode, HeadersConfig, LatencyConfig, LimitConfig, LimitKey, MockConfig,
    MockServer, ResetFormat, RetryAfterFormat, StallConfig, StatsView, TokenRateLimit,
    UnavailableConfig, serve,
};
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};

const QUERY: &str = "/api/v2/analytics/conversations/details/query";
const JOBS: &str = "/api/v2/analytics/conversations/details/jobs";

/// A quiet, fast config: no latency, no limits unless a test adds them.
fn base() -> MockConfig {
    MockConfig {
        latency: LatencyConfig::None,
        limits: Vec::new(),
        ..MockConfig::default()
    }
}

fn limit(name: &str, key: LimitKey, n: u64, window: Duration) -> LimitConfig {
    LimitConfig {
        name: name.into(),
        key,
        limit: n,
        window,
        methods: None,
        path_prefix: None,
        algorithm: Default::default(),
        ..LimitConfig::default()
    }
}

struct Mock {
    server: MockServer,
    http: Client,
}

impl Mock {
    async fn start(config: MockConfig) -> Mock {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = serve(config, listener).await.unwrap();
        let http = Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        Mock { server, http }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.server.addr())
    }

    async fn token_basic(&self, id: &str, secret: &str) -> Response {
        self.http
            .post(self.url("/oauth/token"))
            .basic_auth(id, Some(secret))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials")
            .send()
            .await
            .unwrap()
    }

    async fn token(&self) -> String {
        let r = self.token_basic("pacer-demo", "demo-secret").await;
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = r.json().await.unwrap();
        v["access_token"].as_str().unwrap().to_owned()
    }

    async fn query(&self, token: &str) -> Response {
        self.http
            .post(self.url(QUERY))
            .bearer_auth(token)
            .json(&json!({"interval": "2026-01-01T00:00:00Z/2026-01-02T00:00:00Z"}))
            .send()
            .await
            .unwrap()
    }

    async fn get(&self, path: &str, token: &str) -> Response {
        self.http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    async fn stats_http(&self) -> StatsView {
        let r = self
            .http
            .get(self.url("/_mock/stats"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.unwrap()
    }
}

fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).map(|v| v.to_str().unwrap())
}

fn header_u64(r: &Response, name: &str) -> u64 {
    header(r, name)
        .unwrap_or_else(|| panic!("no {name}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn token_flow_basic_and_form() {
    let m = Mock::start(base()).await;

    let r = m.token_basic("pacer-demo", "demo-secret").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "cache-control"), Some("no-store"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["token_type"], "bearer");
    assert_eq!(v["expires_in"], 3600);
    let basic = v["access_token"].as_str().unwrap().to_owned();

    let r = m
        .http
        .post(m.url("/oauth/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "pacer-demo"),
            ("client_secret", "demo-secret"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let form: Value = r.json().await.unwrap();
    assert_ne!(form["access_token"].as_str().unwrap(), basic);

    let r = m.get("/api/v2/users/me", &basic).await;
    assert_eq!(r.status(), StatusCode::OK);
    let me: Value = r.json().await.unwrap();
    assert_eq!(me["organization"]["id"], "demo-org");

    let r = m.token_basic("pacer-demo", "wrong").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_client");
    let r = m.token_basic("nobody", "demo-secret").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    let r = m
        .http
        .post(m.url("/oauth/token"))
        .basic_auth("pacer-demo", Some("demo-secret"))
        .body("grant_type=password")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        "unsupported_grant_type"
    );
    let r = m
        .http
        .post(m.url("/oauth/token"))
        .basic_auth("pacer-demo", Some("demo-secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    let s = m.server.stats();
    assert_eq!(s.tokens.issued, 2);
    assert_eq!(s.tokens.by_client["pacer-demo"], 2);
    assert_eq!(s.tokens.invalid_client, 2);
    assert_eq!(s.tokens.invalid_request, 2);
    assert_eq!(s.tokens.live, 2);
    assert_eq!(s.requests.by_route["POST /oauth/token"], 6);
    m.server.shutdown().await;
}

#[tokio::test]
async fn tokens_expire_and_force401_revokes() {
    let m = Mock::start(MockConfig {
        token_lifetime: Duration::from_millis(400),
        ..base()
    })
    .await;
    let r = m.token_basic("pacer-demo", "demo-secret").await;
    assert_eq!(r.json::<Value>().await.unwrap()["expires_in"], 1);

    let t = m.token().await;
    assert_eq!(m.query(&t).await.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(450)).await;
    let r = m.query(&t).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        header(&r, "www-authenticate")
            .unwrap()
            .starts_with("Bearer")
    );
    assert_eq!(
        m.query("never-issued").await.status(),
        StatusCode::UNAUTHORIZED
    );

    let t = m.token().await;
    m.server.control().force_401(1);
    let r = m.query(&t).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // The token stays revoked after the forced 401 is spent: the client must refresh.
    assert_eq!(m.query(&t).await.status(), StatusCode::UNAUTHORIZED);
    let fresh = m.token().await;
    assert_eq!(m.query(&fresh).await.status(), StatusCode::OK);

    let s = m.server.stats();
    assert_eq!(s.auth.expired, 1);
    assert_eq!(s.auth.unknown, 1);
    assert_eq!(s.auth.forced, 1);
    assert_eq!(s.auth.revoked, 1);
    assert_eq!(s.faults.forced401_us.len(), 1);
    assert_eq!(s.faults.pending401, 0);
    m.server.shutdown().await;
}

#[tokio::test]
async fn per_token_limit_with_headers_and_witness() {
    let mut cfg = base();
    cfg.limits = vec![limit(
        "token.rate.per.minute",
        LimitKey::Token,
        5,
        Duration::from_secs(1),
    )];
    cfg.headers.x_rate_limit = true;
    cfg.headers.ietf = true;
    let m = Mock::start(cfg).await;
    let t = m.token().await;

    for i in 1..=5 {
        let r = m.query(&t).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header_u64(&r, "inin-ratelimit-count"), i);
        assert_eq!(header_u64(&r, "inin-ratelimit-allowed"), 5);
        assert!((1..=1).contains(&header_u64(&r, "inin-ratelimit-reset")));
        assert_eq!(header_u64(&r, "x-ratelimit-remaining"), 5 - i);
        assert_eq!(
            header(&r, "ratelimit-policy"),
            Some("\"token.rate.per.minute\";q=5;w=1")
        );
        assert_eq!(
            header(&r, "ratelimit").unwrap(),
            format!("\"token.rate.per.minute\";r={};t=1", 5 - i)
        );
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["totalHits"], 25);
        assert_eq!(body["conversations"].as_array().unwrap().len(), 5);
        assert!(body["conversations"][0]["participants"].is_array());
    }
    let r = m.query(&t).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header_u64(&r, "retry-after"), 1);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["limit"], "token.rate.per.minute");
    assert_eq!(body["code"], "too.many.requests");
    assert_eq!(body["key"], "token:token#1");
    assert_eq!(body["retryAfterSeconds"], 1);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("[limit: token.rate.per.minute]")
    );

    // A second token has its own budget.
    let other = m.token().await;
    assert_eq!(m.query(&other).await.status(), StatusCode::OK);

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = m.query(&t).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header_u64(&r, "inin-ratelimit-count"), 1);

    let s = m.stats_http().await;
    assert_eq!(s, {
        let mut local = m.server.stats();
        local.uptime_us = s.uptime_us;
        local
    });
    let l = &s.limits[0];
    assert_eq!((l.accepted, l.rejected, l.exceeded), (7, 1, 1));
    assert_eq!(l.max_offered_in_window, 6);
    assert_eq!(l.max_accepted_in_window, 5);
    assert_eq!(l.keys["token#1"].max_offered_in_window, 6);
    assert_eq!(l.keys["token#2"].max_accepted_in_window, 1);
    assert_eq!(s.requests.by_status[&429], 1);
    // 7 API answers and 2 tokens.
    assert_eq!(s.requests.by_status[&200], 9);
    m.server.shutdown().await;
}

#[tokio::test]
async fn org_limit_is_shared_by_tokens_and_token_endpoint_is_limited() {
    let mut cfg = base();
    let mut analytics = limit("analytics.org", LimitKey::Org, 3, Duration::from_secs(5));
    analytics.path_prefix = Some("/api/v2/analytics/".into());
    analytics.methods = Some(vec!["POST".into()]);
    cfg.limits = vec![analytics];
    cfg.token_rate_limit = Some(TokenRateLimit {
        name: "client.credentials.token.rate.per.minute".into(),
        limit: 3,
        window: Duration::from_secs(5),
    });
    let m = Mock::start(cfg).await;
    let (a, b) = (m.token().await, m.token().await);
    assert_eq!(m.query(&a).await.status(), StatusCode::OK);
    assert_eq!(m.query(&b).await.status(), StatusCode::OK);
    assert_eq!(m.query(&a).await.status(), StatusCode::OK);
    let r = m.query(&b).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.json::<Value>().await.unwrap()["key"], "org:demo-org");
    // GET is not matched by the POST-only limit.
    assert_eq!(m.get("/api/v2/users/me", &a).await.status(), StatusCode::OK);

    let _third = m.token().await;
    let r = m.token_basic("pacer-demo", "demo-secret").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(header_u64(&r, "retry-after") >= 1);
    assert_eq!(
        r.json::<Value>().await.unwrap()["limit"],
        "client.credentials.token.rate.per.minute"
    );
    let s = m.server.stats();
    assert_eq!(s.tokens.rate_limited, 1);
    assert_eq!(s.tokens.issued, 3);
    assert_eq!(s.token_limit.as_ref().unwrap().max_offered_in_window, 4);
    m.server.shutdown().await;
}

#[tokio::test]
async fn retry_after_formats() {
    let m = Mock::start(base()).await;
    let t = m.token().await;
    let c = m.server.control();

    c.set_retry_after_format(RetryAfterFormat::HttpDate);
    c.force_429(1, 3);
    let r = m.query(&t).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let at = httpdate::parse_http_date(header(&r, "retry-after").unwrap()).unwrap();
    let wait = at.duration_since(std::time::SystemTime::now()).unwrap();
    assert!(
        wait > Duration::from_secs(2) && wait <= Duration::from_secs(4),
        "{wait:?}"
    );
    assert_eq!(r.json::<Value>().await.unwrap()["limit"], "forced");

    c.set_retry_after_format(RetryAfterFormat::Missing);
    c.force_429(1, 3);
    let r = m.query(&t).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().get("retry-after").is_none());

    c.set_retry_after_format(RetryAfterFormat::Malformed);
    c.force_429(3, 3);
    let mut seen = Vec::new();
    for _ in 0..3 {
        let r = m.query(&t).await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        seen.push(header(&r, "retry-after").unwrap().to_owned());
    }
    assert_eq!(seen, ["soon", "-5", "99999999999"]);
    assert_eq!(m.query(&t).await.status(), StatusCode::OK);

    // Over HTTP, and applied to 503s too.
    let r = m
        .http
        .post(m.url("/_mock/faults"))
        .json(&json!({"retryAfterFormat": "seconds", "unavailable": {"for": "300ms", "retryAfter": 2}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let view: Value = r.json().await.unwrap();
    assert_eq!(view["unavailableNow"], true);
    let r = m.query(&t).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(&r, "retry-after"), Some("2"));

    let s = m.server.stats();
    assert_eq!(s.faults.forced429_us.len(), 5);
    assert_eq!(s.faults.unavailable503, 1);
    m.server.shutdown().await;
}

#[tokio::test]
async fn unavailable_periods() {
    let m = Mock::start(MockConfig {
        unavailable: Some(UnavailableConfig {
            start: Duration::ZERO,
            duration: Duration::from_millis(300),
            retry_after: 1,
        }),
        ..base()
    })
    .await;
    // The token endpoint stays up during an outage of the API.
    let t = m.token().await;
    let r = m.query(&t).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(&r, "retry-after"), Some("1"));
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "service.unavailable"
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(m.query(&t).await.status(), StatusCode::OK);

    m.server
        .control()
        .set_unavailable(Duration::from_millis(200), 1);
    assert_eq!(m.query(&t).await.status(), StatusCode::SERVICE_UNAVAILABLE);
    m.server.control().clear_unavailable();
    assert_eq!(m.query(&t).await.status(), StatusCode::OK);
    assert_eq!(m.server.stats().faults.unavailable503, 2);
    m.server.shutdown().await;
}

#[tokio::test]
async fn stall_holds_responses_until_the_window_ends() {
    let m = Mock::start(MockConfig {
        auth: AuthMode::Off,
        stall: Some(StallConfig {
            every: Duration::from_millis(1000),
            duration: Duration::from_millis(400),
        }),
        ..base()
    })
    .await;
    // Aim at 100 ms into the first stall window.
    let uptime = m.server.control().uptime();
    tokio::time::sleep(Duration::from_millis(1100).saturating_sub(uptime)).await;
    let sent = Instant::now();
    let r = m.get("/anything", "").await;
    let took = sent.elapsed();
    let done = m.server.control().uptime();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(done >= Duration::from_millis(1400), "{done:?}");
    assert!(took >= Duration::from_millis(200), "{took:?}");
    // Outside a window responses are immediate.
    let sent = Instant::now();
    m.get("/anything", "").await;
    assert!(sent.elapsed() < Duration::from_millis(300));
    assert_eq!(m.server.stats().faults.stalled, 1);
    m.server.shutdown().await;
}

#[tokio::test]
async fn latency_is_applied_and_changeable_at_runtime() {
    let m = Mock::start(MockConfig {
        auth: AuthMode::Off,
        latency: LatencyConfig::Fixed {
            value: Duration::from_millis(60),
        },
        ..base()
    })
    .await;
    let sent = Instant::now();
    assert_eq!(m.get("/x", "").await.status(), StatusCode::OK);
    assert!(sent.elapsed() >= Duration::from_millis(60));

    m.server
        .control()
        .set_latency(LatencyConfig::Uniform {
            min: Duration::from_millis(10),
            max: Duration::from_millis(30),
        })
        .unwrap();
    let n = 20;
    let sent = Instant::now();
    let mut min = Duration::MAX;
    for _ in 0..n {
        let one = Instant::now();
        m.get("/x", "").await;
        min = min.min(one.elapsed());
    }
    let mean = sent.elapsed() / n;
    assert!(min >= Duration::from_millis(10), "{min:?}");
    assert!(
        mean >= Duration::from_millis(15) && mean < Duration::from_millis(60),
        "{mean:?}"
    );
    assert!(
        m.server
            .control()
            .set_latency(LatencyConfig::Uniform {
                min: Duration::from_millis(30),
                max: Duration::from_millis(10),
            })
            .is_err()
    );
    m.server.shutdown().await;
}

#[tokio::test]
async fn worker_tally_and_arrival_log() {
    let m = Mock::start(MockConfig {
        record_arrivals: true,
        max_arrivals: 40,
        ..base()
    })
    .await;
    let t = m.token().await;
    for round in 0..5 {
        for w in ["w-0", "w-1", "w-2"] {
            let r = m
                .http
                .post(m.url(QUERY))
                .bearer_auth(&t)
                .header("x-pacer-worker", w)
                .body("{}")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK, "round {round}");
        }
    }
    // The pause after a forced 429, as a client honouring Retry-After would make it.
    m.server.control().force_429(1, 1);
    let r = m.query(&t).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(m.query(&t).await.status(), StatusCode::OK);

    let s = m.server.stats();
    assert_eq!(s.workers.len(), 3);
    for w in s.workers.values() {
        assert_eq!(w.count, 5);
        assert!(w.first_us < w.last_us);
    }
    assert!(s.workers["w-0"].first_us < s.workers["w-2"].first_us);
    assert_eq!(s.arrivals.recorded, 17);

    let a: pacer_mock::ArrivalsView = m
        .http
        .get(m.url("/_mock/arrivals"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(a.enabled);
    assert_eq!(a.arrivals.len(), 17);
    assert_eq!(a.arrivals[0].worker.as_deref(), Some("w-0"));
    assert_eq!(a.arrivals[16].worker, None);
    assert!(a.arrivals.windows(2).all(|p| p[0].t_us <= p[1].t_us));
    let forced_at = s.faults.forced429_us[0];
    let i = a.arrivals.iter().position(|x| x.status == 429).unwrap();
    let gap = a.arrivals[i + 1].t_us - forced_at;
    assert!(gap >= 250_000, "gap {gap}");
    assert!(a.arrivals[i].t_us <= forced_at);

    // Reset clears counters, limits and the log; tokens stay valid.
    let r = m.http.post(m.url("/_mock/reset")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let s = m.stats_http().await;
    assert_eq!(s.requests.total, 0);
    assert!(s.workers.is_empty());
    assert_eq!(s.arrivals.recorded, 0);
    assert_eq!(m.query(&t).await.status(), StatusCode::OK);
    m.server.shutdown().await;
}

#[tokio::test]
async fn analytics_jobs_api() {
    let mut cfg = base();
    cfg.endpoints.job_delay = Duration::from_millis(300);
    cfg.endpoints.job_pages = 3;
    let m = Mock::start(cfg).await;
    let t = m.token().await;
    let r = m
        .http
        .post(m.url(JOBS))
        .bearer_auth(&t)
        .json(&json!({"interval": "2026-01-01T00:00:00Z/2026-01-02T00:00:00Z"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let id = r.json::<Value>().await.unwrap()["jobId"]
        .as_str()
        .unwrap()
        .to_owned();
    let status = |v: Value| v["state"].as_str().unwrap().to_owned();
    let s = status(
        m.get(&format!("{JOBS}/{id}"), &t)
            .await
            .json()
            .await
            .unwrap(),
    );
    assert!(s == "QUEUED" || s == "PENDING", "{s}");
    tokio::time::sleep(Duration::from_millis(320)).await;
    let s = status(
        m.get(&format!("{JOBS}/{id}"), &t)
            .await
            .json()
            .await
            .unwrap(),
    );
    assert_eq!(s, "FULFILLED");

    let mut path = format!("{JOBS}/{id}/results");
    let mut pages = 0;
    loop {
        let r = m.get(&path, &t).await;
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = r.json().await.unwrap();
        pages += 1;
        assert_eq!(v["conversations"].as_array().unwrap().len(), 5);
        match v["cursor"].as_str() {
            Some(c) => path = format!("{JOBS}/{id}/results?cursor={c}"),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(
        m.get(&format!("{JOBS}/nope"), &t).await.status(),
        StatusCode::NOT_FOUND
    );
    let s = m.server.stats();
    assert_eq!(
        s.requests.by_route["GET /api/v2/analytics/conversations/details/jobs/{jobId}/results"],
        3
    );
    m.server.shutdown().await;
}

#[tokio::test]
async fn hostile_input_gets_answers_not_panics() {
    let mut cfg = base();
    cfg.max_workers = 4;
    let m = Mock::start(cfg).await;
    let t = m.token().await;

    for auth in [
        &b"Bearer"[..],
        b"Bearer ",
        b"bearer a b c",
        b"Basic Zm9vOmJhcg==",
        b"\xff\xfe\xfd",
        b"Bearer \x80\x81",
        b"Token abc",
    ] {
        let r = m
            .http
            .get(m.url("/api/v2/users/me"))
            .header(
                "authorization",
                reqwest::header::HeaderValue::from_bytes(auth).unwrap(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(r.json::<Value>().await.unwrap()["status"], 401);
    }
    let long = format!("Bearer {}", "a".repeat(8000));
    let r = m
        .http
        .get(m.url("/api/v2/users/me"))
        .header("authorization", long)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        m.get("/api/v2/users/me", "").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let r = m.http.get(m.url("/api/v2/users/me")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "authentication.required"
    );

    // Garbage on the token endpoint.
    for auth in [&b"Basic !!!"[..], b"Basic", b"\xff", b"Basic Zm9vYmFy"] {
        let r = m
            .http
            .post(m.url("/oauth/token"))
            .header(
                "authorization",
                reqwest::header::HeaderValue::from_bytes(auth).unwrap(),
            )
            .body("grant_type=client_credentials")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{auth:?}");
    }
    let r = m
        .http
        .post(m.url("/oauth/token"))
        .body(vec![0xffu8, 0x00, b'&', b'=', b'%', b'z'])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Bodies the query endpoint cannot read.
    for body in [
        &b"not json"[..],
        b"{\"paging\": {\"pageSize\": \"ten\"}}",
        b"[]",
        b"\x00\xff",
        b"{\"paging\": {\"pageSize\": 100000}}",
    ] {
        let r = m
            .http
            .post(m.url(QUERY))
            .bearer_auth(&t)
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body:?}");
        assert_eq!(header(&r, "content-type"), Some("application/json"));
        assert_eq!(r.json::<Value>().await.unwrap()["code"], "bad.request");
    }
    let r = m
        .http
        .post(m.url(QUERY))
        .bearer_auth(&t)
        .body(vec![b' '; 2 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // Odd worker ids: too long, not visible ASCII, and more distinct ids than the cap.
    let send_worker = |v: reqwest::header::HeaderValue| {
        m.http
            .get(m.url("/x"))
            .bearer_auth(&t)
            .header("x-pacer-worker", v)
            .send()
    };
    use reqwest::header::HeaderValue as HV;
    assert_eq!(
        send_worker(HV::from_str(&"w".repeat(10_000)).unwrap())
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        send_worker(HV::from_bytes(b"\xffw\x80").unwrap())
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    for i in 0..6 {
        send_worker(HV::from_str(&format!("w{i}")).unwrap())
            .await
            .unwrap();
    }

    // Bad control requests.
    let r = m
        .http
        .post(m.url("/_mock/faults"))
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = m
        .http
        .post(m.url("/_mock/faults"))
        .json(&json!({"stall": {"every": "1s", "for": "2s"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(
        r.json::<Value>().await.unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("stall.for")
    );
    let r = m.http.get(m.url("/_mock/nothing")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    let s = m.server.stats();
    assert_eq!(s.invalid_worker_ids, 2);
    assert_eq!(s.workers.len(), 4);
    assert_eq!(s.workers_overflow, 2);
    assert_eq!(s.auth.malformed, 8);
    assert_eq!(s.auth.missing, 1);
    assert_eq!(s.auth.unknown, 1);
    // The server is still fine.
    assert_eq!(m.query(&t).await.status(), StatusCode::OK);
    m.server.shutdown().await;
}

#[tokio::test]
async fn catch_all_can_be_disabled_and_auth_turned_off() {
    let mut cfg = base();
    cfg.auth = AuthMode::Off;
    cfg.limits = vec![limit(
        "global",
        LimitKey::Global,
        100,
        Duration::from_secs(1),
    )];
    let m = Mock::start(cfg.clone()).await;
    let r = m
        .http
        .delete(m.url("/api/v2/anything/else"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header_u64(&r, "inin-ratelimit-count"), 1);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["method"].as_str(), v["path"].as_str()),
        (Some("DELETE"), Some("/api/v2/anything/else"))
    );
    assert_eq!(m.server.stats().limits[0].keys["global"].accepted, 1);
    m.server.shutdown().await;

    cfg.endpoints.catch_all = false;
    let m = Mock::start(cfg).await;
    let r = m.http.get(m.url("/api/v2/anything")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(m.server.stats().requests.by_route["not-found"], 1);
    m.server.shutdown().await;
}

#[tokio::test]
async fn static_mode_counts_only() {
    let m = Mock::start(MockConfig {
        static_mode: true,
        ..MockConfig::default()
    })
    .await;
    for path in ["/", "/api/v2/users/me", "/oauth/token", "/a/b/c?x=1"] {
        let r = m.http.get(m.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.text().await.unwrap(), "{\"ok\":true}");
    }
    let r = m.http.post(m.url("/oauth/token")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let s = m.stats_http().await;
    assert!(s.static_mode);
    assert_eq!(s.requests.total, 5);
    assert_eq!(m.server.stats().requests.total, 5);
    m.server.shutdown().await;
}

#[tokio::test]
async fn static_body_is_the_files_bytes_and_a_bad_one_is_named() {
    let dir = std::env::temp_dir().join(format!("pacer-mock-static-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let body = format!(
        "{{\"totalHits\":3,\"conversations\":[{}]}}",
        ["{\"id\":\"c\"}"; 3].join(",")
    );
    let file = dir.join("page.json");
    std::fs::write(&file, &body).unwrap();
    let m = Mock::start(MockConfig {
        static_mode: true,
        static_body: Some(file.clone()),
        ..MockConfig::default()
    })
    .await;
    for path in ["/", "/api/v2/analytics/conversations/details/query"] {
        let r = m.http.post(m.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], "application/json");
        assert_eq!(r.text().await.unwrap(), body);
    }
    m.server.shutdown().await;

    let start = |config: MockConfig| async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        serve(config, listener)
            .await
            .expect_err("must not start")
            .to_string()
    };
    // Without static mode the body would be silently unused.
    let e = start(MockConfig {
        static_body: Some(file.clone()),
        ..MockConfig::default()
    })
    .await;
    assert!(
        e.contains("staticBody") && e.contains("static: true"),
        "{e}"
    );
    // A missing file names the field and the path, with the OS's reason.
    let missing = dir.join("missing.json");
    let e = start(MockConfig {
        static_mode: true,
        static_body: Some(missing.clone()),
        ..MockConfig::default()
    })
    .await;
    assert!(
        e.contains("staticBody") && e.contains(&*missing.to_string_lossy()),
        "{e}"
    );
    // A file over the cap is refused whole, never truncated.
    let big = dir.join("big.json");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(pacer_mock::MAX_STATIC_BODY + 1)
        .unwrap();
    let e = start(MockConfig {
        static_mode: true,
        static_body: Some(big),
        ..MockConfig::default()
    })
    .await;
    assert!(e.contains("staticBody") && e.contains("larger than"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn shutdown_and_drop_stop_the_server() {
    let m = Mock::start(base()).await;
    let addr = m.server.addr();
    m.server.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());

    let m = Mock::start(base()).await;
    let addr = m.server.addr();
    drop(m);
    let deadline = Instant::now() + Duration::from_secs(2);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still listening after drop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn invalid_config_is_refused() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut cfg = base();
    cfg.limits = vec![limit("", LimitKey::Token, 1, Duration::from_secs(1))];
    let err = serve(cfg, listener).await.unwrap_err();
    assert!(err.to_string().contains("limits[0].name"), "{err}");
}

/// A bucket limit on every request, for `auth: off`.
fn bucket(algorithm: Algorithm, burst: u64) -> LimitConfig {
    LimitConfig {
        algorithm,
        burst: Some(burst),
        ..LimitConfig::new("bucket", LimitKey::Global, 5, Duration::from_secs(1))
    }
}

fn open(limits: Vec<LimitConfig>) -> MockConfig {
    MockConfig {
        auth: AuthMode::Off,
        limits,
        ..base()
    }
}

impl Mock {
    async fn open_get(&self) -> Response {
        self.http.get(self.url("/x")).send().await.unwrap()
    }

    /// Statuses of `n` requests sent one after the other.
    async fn back_to_back(&self, n: usize) -> Vec<u16> {
        let mut got = Vec::with_capacity(n);
        for _ in 0..n {
            got.push(self.open_get().await.status().as_u16());
        }
        got
    }
}

#[tokio::test]
async fn token_bucket_5_per_s_burst_5_accepts_5_at_once_then_5_per_second() {
    let m = Mock::start(open(vec![bucket(Algorithm::TokenBucket, 5)])).await;
    let start = Instant::now();
    let first = m.back_to_back(8).await;
    assert_eq!(first, [200, 200, 200, 200, 200, 429, 429, 429]);
    // Then one request every 50 ms for 2 s: the bucket gives one token per 200 ms.
    let mut accepted = 0u64;
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    while start.elapsed() < Duration::from_secs(2) {
        tick.tick().await;
        sent += 1;
        if m.open_get().await.status() == StatusCode::OK {
            accepted += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    // Tokens refilled since the burst: 5/s of the time that passed, give or take the ones
    // still refilling at the ends (generous: the machine is shared).
    let expected = 5.0 * secs;
    assert!(
        (accepted as f64) <= expected + 1.0 && (accepted as f64) >= expected - 3.0,
        "{accepted} accepted in {secs:.2} s"
    );
    let s = &m.stats_http().await.limits[0];
    assert_eq!((s.algorithm, s.burst), (Algorithm::TokenBucket, Some(5)));
    assert_eq!(s.accepted, 5 + accepted);
    assert_eq!(s.rejected, 3 + sent - accepted);
    m.server.shutdown().await;
}

#[tokio::test]
async fn leaky_bucket_nodelay_takes_burst_plus_one_then_refuses_with_503_and_no_retry_after() {
    // nginx `limit_req zone=z rate=5r/s burst=5 nodelay` with its default limit_req_status:
    // measured against nginx 1.22 on loopback, 6 answered 200, the 7th 503 without Retry-After.
    let mut l = bucket(Algorithm::LeakyBucket, 5);
    l.nodelay = true;
    l.status = 503;
    l.retry_after = false;
    let m = Mock::start(open(vec![l])).await;
    let start = Instant::now();
    let got = m.back_to_back(6).await;
    assert_eq!(got, [200; 6]);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "nodelay answers at once"
    );
    let r = m.open_get().await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(&r, "retry-after"), None);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        (body["status"].as_u64(), body["limit"].as_str()),
        (Some(503), Some("bucket"))
    );
    let s = &m.server.stats().limits[0];
    assert_eq!((s.accepted, s.rejected, s.delayed), (6, 1, 0));
    m.server.shutdown().await;
}

#[tokio::test]
async fn leaky_bucket_without_nodelay_delays_each_request_until_its_turn() {
    let m = Mock::start(open(vec![bucket(Algorithm::LeakyBucket, 2)])).await;
    // Four at once: three fit (burst 2 + the free one), answered 0, 200 and 400 ms later;
    // the fourth is refused at once, with Retry-After by default.
    let sends = (0..4).map(|_| {
        let http = m.http.clone();
        let url = m.url("/x");
        tokio::spawn(async move {
            let t = Instant::now();
            let r = http.get(url).send().await.unwrap();
            (
                r.status().as_u16(),
                header(&r, "retry-after").is_some(),
                t.elapsed(),
            )
        })
    });
    let mut got = Vec::new();
    for s in sends.collect::<Vec<_>>() {
        got.push(s.await.unwrap());
    }
    got.sort_by_key(|&(_, _, t)| t);
    let ok: Vec<Duration> = got.iter().filter(|g| g.0 == 200).map(|g| g.2).collect();
    let refused: Vec<_> = got.iter().filter(|g| g.0 == 429).collect();
    assert_eq!((ok.len(), refused.len()), (3, 1), "{got:?}");
    assert!(refused[0].1, "Retry-After on the refusal");
    // The server holds them at least this long; upper bounds are generous.
    assert!(ok[1] >= Duration::from_millis(190), "{ok:?}");
    assert!(ok[2] >= Duration::from_millis(390), "{ok:?}");
    assert!(ok[2] < Duration::from_secs(3), "{ok:?}");
    let s = &m.server.stats().limits[0];
    assert_eq!((s.accepted, s.rejected, s.delayed), (3, 1, 2));
    m.server.shutdown().await;
}

#[tokio::test]
async fn a_window_limit_can_refuse_without_retry_after() {
    let mut l = LimitConfig::new("quiet", LimitKey::Global, 1, Duration::from_secs(5));
    l.retry_after = false;
    let m = Mock::start(open(vec![l])).await;
    assert_eq!(m.back_to_back(2).await, [200, 429]);
    let r = m.open_get().await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&r, "retry-after"), None);
    m.server.shutdown().await;
}

/// The parameters of the IETF fields' items: `"name";k=v;k=v, ...` -> (name, [(k, v)]).
fn ietf_items(v: &str) -> Vec<(String, Vec<(String, u64)>)> {
    v.split(", ")
        .map(|item| {
            let mut parts = item.split(';');
            let name = parts.next().unwrap().trim_matches('"').to_owned();
            let params = parts
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap();
                    (k.to_owned(), v.parse().unwrap())
                })
                .collect();
            (name, params)
        })
        .collect()
}

#[tokio::test]
async fn each_header_style_is_present_and_parseable_with_the_right_numbers() {
    let mut cfg = base();
    // Globally none; each limit chooses its family.
    cfg.headers = HeadersConfig {
        inin: false,
        ..HeadersConfig::default()
    };
    let only = |inin, x_rate_limit, x_rate_limit_reset, ietf| {
        Some(HeadersConfig {
            inin,
            x_rate_limit,
            x_rate_limit_reset,
            ietf,
        })
    };
    cfg.limits = vec![
        // Shared by the org: remaining counts every token's use.
        LimitConfig {
            algorithm: Algorithm::TokenBucket,
            burst: Some(10),
            headers: only(false, true, ResetFormat::Seconds, false),
            ..LimitConfig::new("bucket.org", LimitKey::Org, 10, Duration::from_secs(1))
        },
        LimitConfig {
            headers: only(false, false, ResetFormat::Epoch, true),
            ..LimitConfig::new("window.org", LimitKey::Org, 20, Duration::from_secs(10))
        },
        LimitConfig {
            algorithm: Algorithm::Sliding,
            headers: only(true, false, ResetFormat::Epoch, false),
            ..LimitConfig::new(
                "sliding.token",
                LimitKey::Token,
                50,
                Duration::from_secs(60),
            )
        },
        // No family at all (the global none), on its own path.
        LimitConfig {
            path_prefix: Some("/silent/".into()),
            ..LimitConfig::new("silent", LimitKey::Global, 50, Duration::from_secs(60))
        },
    ];
    let m = Mock::start(cfg).await;
    let (a, b) = (m.token().await, m.token().await);
    m.get("/x", &a).await;
    m.get("/x", &a).await;
    let r = m.get("/x", &b).await;
    assert_eq!(r.status(), StatusCode::OK);

    // X-RateLimit-* of the token bucket: 3 of 10 taken by the org, full again within 1 s.
    assert_eq!(header_u64(&r, "x-ratelimit-limit"), 10);
    assert_eq!(header_u64(&r, "x-ratelimit-remaining"), 7);
    assert_eq!(header_u64(&r, "x-ratelimit-reset"), 1);
    // IETF fields of the window only.
    let policy = ietf_items(header(&r, "ratelimit-policy").unwrap());
    let q_w = vec![("q".to_owned(), 20), ("w".to_owned(), 10)];
    assert_eq!(policy, [("window.org".to_owned(), q_w)]);
    let current = ietf_items(header(&r, "ratelimit").unwrap());
    assert_eq!(current.len(), 1);
    assert_eq!(current[0].0, "window.org");
    assert_eq!(current[0].1[0], ("r".to_owned(), 17));
    let t = current[0].1[1].1;
    assert!(
        current[0].1[1].0 == "t" && (1..=10).contains(&t),
        "{current:?}"
    );
    // inin-* of the per-token sliding window: token b's first request.
    assert_eq!(header_u64(&r, "inin-ratelimit-count"), 1);
    assert_eq!(header_u64(&r, "inin-ratelimit-allowed"), 50);
    assert!((1..=60).contains(&header_u64(&r, "inin-ratelimit-reset")));

    // The silent limit counts this request too but is reported in no family.
    let r = m.get("/silent/x", &a).await;
    assert_eq!(header_u64(&r, "x-ratelimit-remaining"), 6);
    assert!(!header(&r, "ratelimit").unwrap().contains("silent"));

    m.server.shutdown().await;
}

#[tokio::test]
async fn x_ratelimit_reset_is_an_epoch_by_default_and_none_sends_nothing() {
    let mut cfg = open(vec![LimitConfig::new(
        "w",
        LimitKey::Global,
        5,
        Duration::from_secs(10),
    )]);
    cfg.headers.x_rate_limit = true;
    let m = Mock::start(cfg).await;
    let r = m.open_get().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let reset = header_u64(&r, "x-ratelimit-reset");
    assert!(
        reset >= now + 8 && reset <= now + 12,
        "{reset} vs now {now}"
    );
    assert_eq!(header_u64(&r, "x-ratelimit-remaining"), 4);
    m.server.shutdown().await;

    let mut cfg = open(vec![LimitConfig::new(
        "w",
        LimitKey::Global,
        5,
        Duration::from_secs(10),
    )]);
    cfg.headers.inin = false;
    let m = Mock::start(cfg).await;
    let r = m.open_get().await;
    let names: Vec<&str> = r.headers().keys().map(|k| k.as_str()).collect();
    assert!(
        !names
            .iter()
            // (inin-correlation-id is the mock's request id, on every answer)
            .any(|n| n.contains("ratelimit")
                || (n.starts_with("inin") && *n != "inin-correlation-id")),
        "{names:?}"
    );
    m.server.shutdown().await;
}
