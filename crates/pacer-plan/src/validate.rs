//! From a well-formed [`PlanSpec`] to a runnable [`Plan`]: every rule that types cannot say,
//! each broken rule reported with its field path, all of them at once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::error::FieldError;
use crate::model::*;
use crate::spec::*;
use crate::template::Template;
use crate::threshold::{self, Threshold};
use crate::{HumanDuration, Rate, ramp::RampSchedule};

/// Collects errors while building the plan.
struct Checker {
    errors: Vec<FieldError>,
}

impl Checker {
    fn err(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        self.errors.push(FieldError::new(path, msg));
    }

    fn template(&mut self, path: &str, src: &str) -> Template {
        match Template::parse(src) {
            Ok(t) => t,
            Err(e) => {
                self.err(path, e.to_string());
                Template::default()
            }
        }
    }

    fn name(&mut self, path: &str, name: &str) {
        if name.trim().is_empty() {
            self.err(path, "must not be empty");
        } else if name.len() > 128
            || name
                .chars()
                .any(|c| c.is_control() || c == '{' || c == '}' || c == ',')
        {
            self.err(
                path,
                "must be at most 128 characters, without control characters, braces or commas",
            );
        }
    }
}

/// Validate a spec. `source` is the document before references were resolved (kept for reports).
pub fn validate(spec: PlanSpec, source: serde_json::Value) -> Result<Plan, Vec<FieldError>> {
    // Every number within its bound first (crate::bounds), so nothing below or after
    // validation computes with a value no test needs.
    let mut c = Checker {
        errors: crate::bounds::check(&spec),
    };
    c.errors.extend(crate::budget::check(&spec));

    c.name("name", &spec.name);
    let target = match url::Url::parse(&spec.target) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Some(u),
        Ok(u) => {
            c.err(
                "target",
                format!(
                    "must be an http:// or https:// URL with a host, got scheme {:?}",
                    u.scheme()
                ),
            );
            None
        }
        Err(e) => {
            c.err("target", format!("not a URL ({e}): {:?}", spec.target));
            None
        }
    };
    if spec.workers == Some(0) {
        c.err("workers", "must be at least 1");
    }

    let http = http_options(&mut c, spec.http.as_ref());

    // auth
    let mut auth = Vec::new();
    let mut auth_names = BTreeMap::new();
    for (i, a) in spec.auth.iter().enumerate() {
        let p = format!("auth[{i}]");
        c.name(&format!("{p}.name"), &a.name);
        if a.name == "none" {
            c.err(
                format!("{p}.name"),
                "`none` is reserved (it means: send no credential)",
            );
        }
        if auth_names.insert(a.name.clone(), i).is_some() {
            c.err(
                format!("{p}.name"),
                format!("duplicate credential name {:?}", a.name),
            );
        }
        let mut token_url = None;
        match a.kind {
            AuthKind::OAuth2ClientCredentials => {
                match a.token_url.as_deref() {
                    None => c.err(
                        format!("{p}.tokenUrl"),
                        "required for oauth2-clientCredentials",
                    ),
                    Some(u) => match join_url(target.as_ref(), u) {
                        Ok(u) => token_url = Some(u),
                        Err(e) => c.err(format!("{p}.tokenUrl"), e),
                    },
                }
                for (field, v) in [
                    ("clientId", &a.client_id),
                    ("clientSecret", &a.client_secret),
                ] {
                    if v.as_deref().is_none_or(str::is_empty) {
                        c.err(
                            format!("{p}.{field}"),
                            "required for oauth2-clientCredentials (use ${env:NAME})",
                        );
                    }
                }
                if a.token.is_some() {
                    c.err(format!("{p}.token"), "only for type bearer");
                }
            }
            AuthKind::Bearer => {
                if a.token.as_deref().is_none_or(str::is_empty) {
                    c.err(
                        format!("{p}.token"),
                        "required for type bearer (use ${env:NAME})",
                    );
                }
                for (field, set) in [
                    ("tokenUrl", a.token_url.is_some()),
                    ("clientId", a.client_id.is_some()),
                    ("clientSecret", a.client_secret.is_some()),
                    ("scope", a.scope.is_some()),
                ] {
                    if set {
                        c.err(
                            format!("{p}.{field}"),
                            "only for type oauth2-clientCredentials",
                        );
                    }
                }
            }
        }
        if let Some(t) = &a.token
            && t.chars().any(|ch| ch.is_control() || ch == ' ')
        {
            c.err(
                format!("{p}.token"),
                "contains spaces or control characters",
            );
        }
        auth.push(Auth {
            name: a.name.clone(),
            kind: a.kind,
            token_url,
            client_id: a.client_id.clone(),
            client_secret: a.client_secret.clone(),
            scope: a.scope.clone(),
            refresh_before: a
                .refresh_before
                .map_or(defaults::REFRESH_BEFORE, HumanDuration::get),
            token: a.token.clone(),
            share: a.share,
        });
    }

    // limits
    let mut limits = Vec::new();
    let mut limit_names = BTreeSet::new();
    for (i, l) in spec.limits.iter().enumerate() {
        let p = format!("limits[{i}]");
        c.name(&format!("{p}.name"), &l.name);
        if !limit_names.insert(l.name.clone()) {
            c.err(
                format!("{p}.name"),
                format!("duplicate limit name {:?}", l.name),
            );
        }
        if l.limit.is_zero() {
            c.err(format!("{p}.limit"), "must be above zero");
        }
        let burst = l.burst.unwrap_or(1);
        if burst == 0 {
            c.err(format!("{p}.burst"), "must be at least 1");
        }
        crate::shape::check(l)
            .into_iter()
            .for_each(|(f, m)| c.err(format!("{p}.{f}"), m));
        let window = l.window.map_or(l.limit.per(), HumanDuration::get);
        if window.is_zero() {
            c.err(format!("{p}.window"), "must be above zero");
        }
        let m = l.matches.clone().unwrap_or_default();
        for (j, meth) in m.method_in.iter().enumerate() {
            if !is_token(meth) {
                c.err(
                    format!("{p}.match.methodIn[{j}]"),
                    format!("{meth:?} is not an HTTP method"),
                );
            }
        }
        if let Some(pp) = &m.path_prefix
            && !pp.starts_with('/')
        {
            c.err(format!("{p}.match.pathPrefix"), "must start with `/`");
        }
        limits.push(Limit {
            name: l.name.clone(),
            limit: l.limit,
            shape: l.shape,
            burst,
            window,
            scope: l.scope,
            method_in: m.method_in.iter().map(|s| s.to_ascii_uppercase()).collect(),
            path_prefix: m.path_prefix.clone(),
            request_in: m.request_in.clone(),
            adaptive: l.adaptive,
            spread: l.spread.map(HumanDuration::get),
        });
    }

    let retry = retry_policy(&mut c, spec.retry.as_ref());

    // scenarios
    if spec.scenarios.is_empty() {
        c.err("scenarios", "at least one scenario is required");
    }
    let mut scenarios = Vec::new();
    let mut scenario_names = BTreeSet::new();
    let mut request_names: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (i, s) in spec.scenarios.iter().enumerate() {
        let p = format!("scenarios[{i}]");
        c.name(&format!("{p}.name"), &s.name);
        if !scenario_names.insert(s.name.clone()) {
            c.err(
                format!("{p}.name"),
                format!("duplicate scenario name {:?}", s.name),
            );
        }
        let executor = executor(&mut c, &p, s, spec.duration);
        let auth_idx = match s.auth.as_deref() {
            None => None,
            Some(name) => match auth_names.get(name) {
                Some(i) => Some(*i),
                None => {
                    c.err(
                        format!("{p}.auth"),
                        format!("no credential named {name:?} in `auth`"),
                    );
                    None
                }
            },
        };
        if s.weight == Some(0) {
            c.err(format!("{p}.weight"), "must be at least 1");
        }
        if s.requests.is_empty() {
            c.err(format!("{p}.requests"), "at least one request is required");
        }
        let extracted: BTreeSet<&str> = s
            .requests
            .iter()
            .flat_map(|r| r.extract.keys().map(String::as_str))
            .collect();
        let names = request_names.entry(s.name.clone()).or_default();
        let mut requests = Vec::new();
        for (j, r) in s.requests.iter().enumerate() {
            let rp = format!("{p}.requests[{j}]");
            c.name(&format!("{rp}.name"), &r.name);
            if !names.insert(r.name.clone()) {
                c.err(
                    format!("{rp}.name"),
                    format!("duplicate request name {:?} in this scenario", r.name),
                );
            }
            let req = request(&mut c, &rp, r, &auth_names);
            literal_path_origin(&mut c, &rp, &req.path, target.as_ref(), &http);
            for (field, t) in std::iter::once(("path".to_string(), &req.path))
                .chain(req.query.iter().map(|(k, t)| (format!("query.{k}"), t)))
                .chain(req.headers.iter().map(|(k, t)| (format!("headers.{k}"), t)))
                .chain(match &req.body {
                    Some(Body::Text(t)) => Some(("body".to_string(), t)),
                    _ => None,
                })
            {
                for v in t.vars() {
                    if !spec.variables.contains_key(v) && !extracted.contains(v) {
                        c.err(
                            format!("{rp}.{field}"),
                            format!("{{{{vars.{v}}}}} is neither in `variables` nor extracted by a request of this scenario"),
                        );
                    }
                }
            }
            requests.push(req);
        }
        scenarios.push(Scenario {
            name: s.name.clone(),
            executor,
            start_time: s.start_time.map_or(Duration::ZERO, HumanDuration::get),
            graceful_stop: s
                .graceful_stop
                .map_or(defaults::GRACEFUL_STOP, HumanDuration::get),
            auth: auth_idx,
            think_time: s.think_time.map_or(Duration::ZERO, HumanDuration::get),
            weight: s.weight.unwrap_or(1),
            requests,
        });
    }

    // thresholds
    let mut thresholds = Vec::new();
    for (key, list) in &spec.thresholds {
        let p = format!("thresholds.{key}");
        let (metric, tags) = match threshold::parse_metric_key(key) {
            Ok(x) => x,
            Err(e) => {
                c.err(&p, e);
                continue;
            }
        };
        if let Some(sc) = &tags.scenario
            && !scenario_names.contains(sc)
        {
            c.err(&p, format!("no scenario named {sc:?}"));
        }
        if let Some(rq) = &tags.request {
            let known = match &tags.scenario {
                Some(sc) => request_names.get(sc).is_some_and(|n| n.contains(rq)),
                None => request_names.values().any(|n| n.contains(rq)),
            };
            if !known {
                c.err(&p, format!("no request named {rq:?}"));
            }
        }
        if list.is_empty() {
            c.err(&p, "give at least one expression, e.g. [\"p(95)<800ms\"]");
        }
        for (j, t) in list.iter().enumerate() {
            let expr = t.expression();
            match threshold::parse_expr(metric, expr) {
                Ok((aggregation, op, value)) => {
                    let (abort_on_fail, delay) = match t {
                        ThresholdSpec::Expr(_) => (false, Duration::ZERO),
                        ThresholdSpec::Full(f) => (
                            f.abort_on_fail,
                            f.delay_abort_eval
                                .map_or(Duration::ZERO, HumanDuration::get),
                        ),
                    };
                    thresholds.push(Threshold {
                        key: key.clone(),
                        metric,
                        tags: tags.clone(),
                        expr: expr.to_string(),
                        aggregation,
                        op,
                        value,
                        abort_on_fail,
                        delay_abort_eval: delay,
                    });
                }
                Err(e) => c.err(format!("{p}[{j}]"), e),
            }
        }
    }

    if !c.errors.is_empty() {
        return Err(c.errors);
    }
    let Some(target) = target else {
        return Err(vec![FieldError::new("target", "invalid")]);
    };
    Ok(Plan {
        name: spec.name.clone(),
        target,
        workers: spec.workers.unwrap_or(1),
        on_worker_loss: spec.on_worker_loss.unwrap_or_default(),
        variables: spec.variables.clone(),
        http,
        auth,
        limits,
        retry,
        scenarios,
        thresholds,
        source,
        spec,
    })
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn join_url(base: Option<&url::Url>, u: &str) -> Result<url::Url, String> {
    match url::Url::parse(u) {
        Ok(abs) if matches!(abs.scheme(), "http" | "https") => Ok(abs),
        Ok(abs) => Err(format!(
            "must be http:// or https://, got scheme {:?}",
            abs.scheme()
        )),
        Err(url::ParseError::RelativeUrlWithoutBase) => match base {
            Some(b) => b
                .join(u)
                .map_err(|e| format!("cannot join {u:?} to target: {e}")),
            None => Err("is relative but `target` is invalid".into()),
        },
        Err(e) => Err(format!("not a URL ({e})")),
    }
}

fn http_options(c: &mut Checker, h: Option<&HttpSpec>) -> HttpOptions {
    let h = h.cloned().unwrap_or_default();
    let timeout = h.timeout.map_or(defaults::HTTP_TIMEOUT, HumanDuration::get);
    if timeout.is_zero() {
        c.err("http.timeout", "must be above zero");
    }
    let connect_timeout = h
        .connect_timeout
        .map_or(defaults::CONNECT_TIMEOUT, HumanDuration::get);
    if connect_timeout.is_zero() {
        c.err("http.connectTimeout", "must be above zero");
    }
    for k in h.headers.keys() {
        if !is_token(k) {
            c.err(format!("http.headers.{k}"), "not a valid header name");
        }
    }
    let (allow_hosts, max_body_bytes) = http_trust(c, &h);
    HttpOptions {
        allow_hosts,
        max_body_bytes,
        timeout,
        connect_timeout,
        max_idle_per_host: h.max_idle_per_host,
        http2_only: h.http2.unwrap_or(false),
        insecure_skip_verify: h.insecure_skip_verify.unwrap_or(false),
        headers: h.headers.into_iter().collect(),
    }
}

fn retry_policy(c: &mut Checker, r: Option<&RetrySpec>) -> RetryPolicy {
    let d = RetryPolicy::default();
    let Some(r) = r else { return d };
    let on_status = r.on.clone().unwrap_or(d.on_status);
    for (i, s) in on_status.iter().enumerate() {
        if !(100..=599).contains(s) {
            c.err(
                format!("retry.on[{i}]"),
                format!("{s} is not an HTTP status code"),
            );
        }
    }
    let max_attempts = r
        .max_attempts
        .unwrap_or(defaults::RETRY_ATTEMPTS_WHEN_ENABLED);
    if max_attempts == 0 {
        c.err("retry.maxAttempts", "must be at least 1 (1 means no retry)");
    } else if max_attempts > 100 {
        c.err("retry.maxAttempts", "at most 100");
    }
    let b = r.backoff.clone().unwrap_or_default();
    let backoff_base = b.base.map_or(d.backoff_base, HumanDuration::get);
    let backoff_max = b.max.map_or(d.backoff_max, HumanDuration::get);
    if backoff_max < backoff_base {
        c.err("retry.backoff.max", "must not be below retry.backoff.base");
    }
    let retry_after_max = r
        .retry_after_max
        .map_or(d.retry_after_max, HumanDuration::get);
    if retry_after_max.is_zero() {
        c.err("retry.retryAfterMax", "must be above zero");
    }
    RetryPolicy {
        on_status,
        on_transport_error: r.on_transport_error.unwrap_or(true),
        max_attempts,
        backoff_base,
        backoff_max,
        jitter: b.jitter.unwrap_or_default(),
        honor_retry_after: r.honor_retry_after.unwrap_or(true),
        retry_after_max,
        retry_after_default: r
            .retry_after_default
            .map_or(d.retry_after_default, HumanDuration::get),
        pause_scope_on_429: r.pause_scope_on429.unwrap_or(true),
    }
}

fn executor(
    c: &mut Checker,
    p: &str,
    s: &ScenarioSpec,
    default_duration: Option<HumanDuration>,
) -> Executor {
    use ExecutorKind as K;
    let kind = s.executor;
    // Fields that do not belong to this executor are errors, not silently ignored.
    let fields: [(&str, bool, &[K]); 11] = [
        ("rate", s.rate.is_some(), &[K::ConstantArrivalRate]),
        (
            "startRate",
            s.start_rate.is_some(),
            &[K::RampingArrivalRate],
        ),
        (
            "maxInFlight",
            s.max_in_flight.is_some(),
            &[K::ConstantArrivalRate, K::RampingArrivalRate],
        ),
        (
            "preAllocatedVUs",
            s.pre_allocated_vus.is_some(),
            &[K::ConstantArrivalRate, K::RampingArrivalRate],
        ),
        (
            "vus",
            s.vus.is_some(),
            &[K::ConstantVus, K::PerVuIterations, K::SharedIterations],
        ),
        ("startVUs", s.start_vus.is_some(), &[K::RampingVus]),
        (
            "iterations",
            s.iterations.is_some(),
            &[K::PerVuIterations, K::SharedIterations],
        ),
        (
            "maxDuration",
            s.max_duration.is_some(),
            &[K::PerVuIterations, K::SharedIterations],
        ),
        (
            "stages",
            !s.stages.is_empty(),
            &[K::RampingArrivalRate, K::RampingVus],
        ),
        (
            "gracefulRampDown",
            s.graceful_ramp_down.is_some(),
            &[K::RampingVus],
        ),
        (
            "duration",
            s.duration.is_some(),
            &[K::ConstantArrivalRate, K::ConstantVus],
        ),
    ];
    for (name, set, allowed) in fields {
        if set && !allowed.contains(&kind) {
            c.err(
                format!("{p}.{name}"),
                format!("not used by executor {}", kind.name()),
            );
        }
    }
    let duration = || s.duration.or(default_duration).map(HumanDuration::get);
    let need_duration = |c: &mut Checker| -> Duration {
        match duration() {
            Some(d) if !d.is_zero() => d,
            Some(_) => {
                c.err(format!("{p}.duration"), "must be above zero");
                Duration::ZERO
            }
            None => {
                c.err(
                    format!("{p}.duration"),
                    "required (here or as the plan's `duration`)",
                );
                Duration::ZERO
            }
        }
    };
    let max_in_flight = |c: &mut Checker| {
        let m = s.max_in_flight.unwrap_or(defaults::MAX_IN_FLIGHT);
        if m == 0 {
            c.err(format!("{p}.maxInFlight"), "must be at least 1");
        }
        if let Some(pre) = s.pre_allocated_vus
            && pre > m
        {
            c.err(
                format!("{p}.preAllocatedVUs"),
                format!("{pre} is above maxInFlight ({m})"),
            );
        }
        m
    };
    let vus = |c: &mut Checker, required: bool| {
        match s.vus {
            Some(0) => c.err(format!("{p}.vus"), "must be at least 1"),
            None if required => c.err(
                format!("{p}.vus"),
                format!("required by executor {}", kind.name()),
            ),
            _ => {}
        }
        s.vus.unwrap_or(1)
    };
    let max_duration = s
        .max_duration
        .map_or(defaults::MAX_DURATION, HumanDuration::get);
    match kind {
        K::ConstantArrivalRate => {
            let rate = match s.rate {
                Some(r) if !r.is_zero() => r,
                Some(_) => {
                    c.err(format!("{p}.rate"), "must be above zero");
                    Rate::per_second(0)
                }
                None => {
                    c.err(
                        format!("{p}.rate"),
                        "required by executor constant-arrival-rate (e.g. 40/s)",
                    );
                    Rate::per_second(0)
                }
            };
            Executor::ConstantArrivalRate {
                rate,
                duration: need_duration(c),
                max_in_flight: max_in_flight(c),
            }
        }
        K::RampingArrivalRate => {
            let start_rate = s.start_rate.unwrap_or(Rate::per_second(0));
            if s.stages.is_empty() {
                c.err(
                    format!("{p}.stages"),
                    "required by executor ramping-arrival-rate",
                );
            }
            let mut stages = Vec::new();
            for (j, st) in s.stages.iter().enumerate() {
                let sp = format!("{p}.stages[{j}].target");
                let target = match &st.target {
                    serde_json::Value::String(t) => match t.parse::<Rate>() {
                        Ok(r) => r,
                        Err(e) => {
                            c.err(&sp, e.to_string());
                            Rate::per_second(0)
                        }
                    },
                    other => {
                        c.err(
                            &sp,
                            format!("expected a rate such as \"40/s\", got {other}"),
                        );
                        Rate::per_second(0)
                    }
                };
                stages.push(RateStage {
                    target,
                    duration: st.duration.get(),
                });
            }
            let sched = RampSchedule::new(start_rate, &stages);
            if !s.stages.is_empty() && sched.total() == 0 {
                c.err(
                    format!("{p}.stages"),
                    "the stages start no iteration at all",
                );
            }
            Executor::RampingArrivalRate {
                start_rate,
                stages,
                max_in_flight: max_in_flight(c),
            }
        }
        K::ConstantVus => Executor::ConstantVus {
            vus: vus(c, true),
            duration: need_duration(c),
        },
        K::RampingVus => {
            if s.stages.is_empty() {
                c.err(format!("{p}.stages"), "required by executor ramping-vus");
            }
            let mut stages = Vec::new();
            for (j, st) in s.stages.iter().enumerate() {
                let sp = format!("{p}.stages[{j}].target");
                let target = match st.target.as_u64().map(u32::try_from) {
                    Some(Ok(t)) => t,
                    _ => {
                        c.err(
                            &sp,
                            format!("expected a VU count (a whole number), got {}", st.target),
                        );
                        0
                    }
                };
                stages.push(VuStage {
                    target,
                    duration: st.duration.get(),
                });
            }
            if stages.iter().all(|s| s.target == 0)
                && s.start_vus.unwrap_or(0) == 0
                && !stages.is_empty()
            {
                c.err(
                    format!("{p}.stages"),
                    "every stage has 0 VUs: nothing would run",
                );
            }
            Executor::RampingVus {
                start_vus: s.start_vus.unwrap_or(0),
                stages,
                graceful_ramp_down: s
                    .graceful_ramp_down
                    .map_or(defaults::GRACEFUL_RAMP_DOWN, HumanDuration::get),
            }
        }
        K::PerVuIterations | K::SharedIterations => {
            let vus = vus(c, false);
            let iterations = match s.iterations {
                Some(0) => {
                    c.err(format!("{p}.iterations"), "must be at least 1");
                    0
                }
                Some(n) => n,
                None => {
                    c.err(
                        format!("{p}.iterations"),
                        format!("required by executor {}", kind.name()),
                    );
                    0
                }
            };
            if kind == K::SharedIterations && u64::from(vus) > iterations && iterations > 0 {
                c.err(
                    format!("{p}.vus"),
                    format!("{vus} VUs for {iterations} iterations: some would never run"),
                );
            }
            if kind == K::PerVuIterations {
                Executor::PerVuIterations {
                    vus,
                    iterations,
                    max_duration,
                }
            } else {
                Executor::SharedIterations {
                    vus,
                    iterations,
                    max_duration,
                }
            }
        }
    }
}

fn expect(c: &mut Checker, p: &str, e: &ExpectSpec) -> Expect {
    for (i, s) in e.status.iter().enumerate() {
        if !(100..=599).contains(s) {
            c.err(
                format!("{p}.status[{i}]"),
                format!("{s} is not an HTTP status code"),
            );
        }
    }
    let json = e
        .json
        .iter()
        .enumerate()
        .filter_map(|(i, j)| {
            let jp = format!("{p}.json[{i}]");
            if !(j.pointer.is_empty() || j.pointer.starts_with('/')) {
                c.err(
                    format!("{jp}.pointer"),
                    "a JSON pointer starts with `/` (e.g. /state)",
                );
            }
            let set = [j.equals.is_some(), j.one_of.is_some(), j.exists.is_some()];
            if set.iter().filter(|x| **x).count() != 1 {
                c.err(&jp, "give exactly one of equals, oneOf, exists");
                return None;
            }
            let test = if let Some(v) = &j.equals {
                JsonTest::Equals(v.clone())
            } else if let Some(v) = &j.one_of {
                JsonTest::OneOf(v.clone())
            } else {
                JsonTest::Exists(j.exists.unwrap_or(true))
            };
            Some(JsonCheck {
                pointer: j.pointer.clone(),
                test,
            })
        })
        .collect();
    Expect {
        status: e.status.clone(),
        json,
    }
}

fn json_template(c: &mut Checker, p: &str, v: &serde_json::Value) -> JsonTemplate {
    match v {
        serde_json::Value::String(s) => {
            let t = c.template(p, s);
            if t.is_literal() {
                JsonTemplate::Literal(v.clone())
            } else {
                JsonTemplate::String(t)
            }
        }
        serde_json::Value::Array(a) => JsonTemplate::Array(
            a.iter()
                .enumerate()
                .map(|(i, x)| json_template(c, &format!("{p}[{i}]"), x))
                .collect(),
        ),
        serde_json::Value::Object(o) => JsonTemplate::Object(
            o.iter()
                .map(|(k, x)| (k.clone(), json_template(c, &format!("{p}.{k}"), x)))
                .collect(),
        ),
        other => JsonTemplate::Literal(other.clone()),
    }
}

fn request(
    c: &mut Checker,
    p: &str,
    r: &RequestSpec,
    auth_names: &BTreeMap<String, usize>,
) -> Request {
    let method = r.method.to_ascii_uppercase();
    if !is_token(&method) {
        c.err(
            format!("{p}.method"),
            format!("{:?} is not an HTTP method", r.method),
        );
    }
    if r.path.is_empty() {
        c.err(format!("{p}.path"), "must not be empty");
    } else if !(r.path.starts_with('/')
        || r.path.starts_with("http://")
        || r.path.starts_with("https://")
        || r.path.starts_with("{{"))
    {
        c.err(
            format!("{p}.path"),
            "must start with `/` (relative to target) or be an http(s):// URL",
        );
    }
    let path = c.template(&format!("{p}.path"), &r.path);
    let query = r
        .query
        .iter()
        .map(|(k, v)| (k.clone(), c.template(&format!("{p}.query.{k}"), v)))
        .collect();
    let headers = r
        .headers
        .iter()
        .map(|(k, v)| {
            if !is_token(k) {
                c.err(format!("{p}.headers.{k}"), "not a valid header name");
            }
            (k.clone(), c.template(&format!("{p}.headers.{k}"), v))
        })
        .collect();
    let body = match (&r.body, &r.json) {
        (Some(_), Some(_)) => {
            c.err(format!("{p}.json"), "give either body or json, not both");
            None
        }
        (Some(b), None) => Some(Body::Text(c.template(&format!("{p}.body"), b))),
        (None, Some(j)) => Some(Body::Json(json_template(c, &format!("{p}.json"), j))),
        (None, None) => None,
    };
    let auth = match r.auth.as_deref() {
        None => AuthRef::Inherit,
        Some("none") => AuthRef::None,
        Some(name) => match auth_names.get(name) {
            Some(i) => AuthRef::Named(*i),
            None => {
                c.err(
                    format!("{p}.auth"),
                    format!("no credential named {name:?} in `auth` (or `none`)"),
                );
                AuthRef::None
            }
        },
    };
    let exp = r
        .expect
        .as_ref()
        .map(|e| expect(c, &format!("{p}.expect"), e))
        .unwrap_or_default();
    let extract = r
        .extract
        .iter()
        .filter_map(|(name, e)| {
            let ep = format!("{p}.extract.{name}");
            if name.is_empty()
                || !name
                    .chars()
                    .all(|ch| ch.is_alphanumeric() || ch == '_' || ch == '-')
            {
                c.err(&ep, "variable names use letters, digits, `_` and `-`");
            }
            let from = match (&e.json, &e.header) {
                (Some(j), None) => {
                    if !(j.is_empty() || j.starts_with('/')) {
                        c.err(
                            format!("{ep}.json"),
                            "a JSON pointer starts with `/` (e.g. /id)",
                        );
                    }
                    ExtractFrom::JsonPointer(j.clone())
                }
                (None, Some(h)) => ExtractFrom::Header(h.to_ascii_lowercase()),
                _ => {
                    c.err(&ep, "give exactly one of json (a JSON pointer) or header");
                    return None;
                }
            };
            Some((
                name.clone(),
                Extract {
                    from,
                    required: e.required.unwrap_or(true),
                },
            ))
        })
        .collect();
    let poll = r.poll.as_ref().map(|pl| {
        let pp = format!("{p}.poll");
        let until = expect(c, &format!("{pp}.until"), &pl.until);
        if until.status.is_empty() && until.json.is_empty() {
            c.err(
                format!("{pp}.until"),
                "give a status or json condition to stop on",
            );
        }
        let timeout = pl
            .timeout
            .map_or(defaults::POLL_TIMEOUT, HumanDuration::get);
        if timeout.is_zero() {
            c.err(format!("{pp}.timeout"), "must be above zero");
        }
        if pl.max_attempts == Some(0) {
            c.err(format!("{pp}.maxAttempts"), "must be at least 1");
        }
        Poll {
            until,
            interval: pl
                .interval
                .map_or(defaults::POLL_INTERVAL, HumanDuration::get),
            timeout,
            max_attempts: pl.max_attempts,
        }
    });
    Request {
        name: r.name.clone(),
        method,
        path,
        query,
        headers,
        body,
        auth,
        expect: exp,
        extract,
        poll,
    }
}

/// `http.allowHosts` (parsed, at most [`crate::origin::MAX_ALLOW_HOSTS`]) and
/// `http.maxBodyBytes` (1 byte to [`defaults::MAX_BODY_BYTES_LIMIT`]).
fn http_trust(c: &mut Checker, h: &HttpSpec) -> (Vec<crate::origin::AllowedHost>, u64) {
    use crate::origin::{AllowedHost, MAX_ALLOW_HOSTS};
    if h.allow_hosts.len() > MAX_ALLOW_HOSTS {
        c.err(
            "http.allowHosts",
            format!("at most {MAX_ALLOW_HOSTS} hosts"),
        );
    }
    let mut allow = Vec::new();
    for (i, e) in h.allow_hosts.iter().enumerate() {
        match AllowedHost::parse(e) {
            Ok(a) => allow.push(a),
            Err(why) => c.err(format!("http.allowHosts[{i}]"), why),
        }
    }
    let max = h.max_body_bytes.unwrap_or(defaults::MAX_BODY_BYTES);
    if !(1..=defaults::MAX_BODY_BYTES_LIMIT).contains(&max) {
        c.err(
            "http.maxBodyBytes",
            format!(
                "must be from 1 to {} (1 GiB)",
                defaults::MAX_BODY_BYTES_LIMIT
            ),
        );
    }
    (allow, max)
}

/// A literal `path` must resolve to the target's origin or an allowed host (rendered paths
/// are checked by the engine on every request, with the same [`crate::origin::resolve`]).
fn literal_path_origin(
    c: &mut Checker,
    p: &str,
    path: &crate::Template,
    target: Option<&url::Url>,
    http: &HttpOptions,
) {
    let (Some(target), true) = (target, path.is_literal()) else {
        return;
    };
    let lit: String = path
        .parts()
        .iter()
        .filter_map(|part| match part {
            crate::Part::Lit(s) => Some(s.as_str()),
            _ => None,
        })
        .collect();
    if let Err(e) = crate::origin::resolve(target, &http.allow_hosts, &lit) {
        c.err(format!("{p}.path"), e.to_string());
    }
}
