//! k6 threshold syntax: `http_req_duration{request:query}: ["p(95)<800ms"]`.
//!
//! Parsing lives here (the plan is validated before anything runs); evaluation is in
//! `pacer-stats`, which owns the numbers.

use std::fmt;

/// What a metric measures decides which aggregations it has (as in k6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    /// A distribution of durations (milliseconds in expressions).
    Trend,
    /// A share of events: `rate<0.01`.
    Rate,
    /// A count, and its rate per second.
    Counter,
}

/// Every metric a threshold can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Metric {
    /// From the intended start to the end of the final response (includes our own throttle,
    /// backoff and retries: what the user of the API would wait).
    HttpReqDuration,
    /// From the actual send to the end of the response, per attempt (server + network).
    HttpReqServiceTime,
    /// Time spent waiting on pacer's own limiter.
    HttpReqLimiterWait,
    IterationDuration,
    HttpReqFailed,
    HttpReqsThrottled,
    Checks,
    HttpReqs,
    HttpReqRetries,
    Iterations,
    DroppedIterations,
    DataSent,
    DataReceived,
}

impl Metric {
    pub const ALL: [Metric; 13] = [
        Metric::HttpReqDuration,
        Metric::HttpReqServiceTime,
        Metric::HttpReqLimiterWait,
        Metric::IterationDuration,
        Metric::HttpReqFailed,
        Metric::HttpReqsThrottled,
        Metric::Checks,
        Metric::HttpReqs,
        Metric::HttpReqRetries,
        Metric::Iterations,
        Metric::DroppedIterations,
        Metric::DataSent,
        Metric::DataReceived,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Metric::HttpReqDuration => "http_req_duration",
            Metric::HttpReqServiceTime => "http_req_service_time",
            Metric::HttpReqLimiterWait => "http_req_limiter_wait",
            Metric::IterationDuration => "iteration_duration",
            Metric::HttpReqFailed => "http_req_failed",
            Metric::HttpReqsThrottled => "http_reqs_throttled",
            Metric::Checks => "checks",
            Metric::HttpReqs => "http_reqs",
            Metric::HttpReqRetries => "http_req_retries",
            Metric::Iterations => "iterations",
            Metric::DroppedIterations => "dropped_iterations",
            Metric::DataSent => "data_sent",
            Metric::DataReceived => "data_received",
        }
    }

    pub fn kind(self) -> MetricKind {
        match self {
            Metric::HttpReqDuration
            | Metric::HttpReqServiceTime
            | Metric::HttpReqLimiterWait
            | Metric::IterationDuration => MetricKind::Trend,
            Metric::HttpReqFailed | Metric::HttpReqsThrottled | Metric::Checks => MetricKind::Rate,
            Metric::HttpReqs
            | Metric::HttpReqRetries
            | Metric::Iterations
            | Metric::DroppedIterations
            | Metric::DataSent
            | Metric::DataReceived => MetricKind::Counter,
        }
    }

    /// Metrics counted per scenario only (no `request` tag).
    pub fn per_scenario_only(self) -> bool {
        matches!(
            self,
            Metric::Iterations | Metric::DroppedIterations | Metric::IterationDuration
        )
    }

    fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == s)
    }
}

/// A tag filter on a threshold's metric.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct TagFilter {
    pub scenario: Option<String>,
    pub request: Option<String>,
}

impl TagFilter {
    pub fn is_empty(&self) -> bool {
        self.scenario.is_none() && self.request.is_none()
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Aggregation {
    /// Percentile, 0..=100.
    Percentile(f64),
    Avg,
    Min,
    Max,
    Med,
    Count,
    Rate,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl Op {
    pub fn holds(self, lhs: f64, rhs: f64) -> bool {
        match self {
            Op::Lt => lhs < rhs,
            Op::Le => lhs <= rhs,
            Op::Gt => lhs > rhs,
            Op::Ge => lhs >= rhs,
            Op::Eq => lhs == rhs,
            Op::Ne => lhs != rhs,
        }
    }
    fn as_str(self) -> &'static str {
        match self {
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Eq => "==",
            Op::Ne => "!=",
        }
    }
}

/// One parsed threshold expression on one metric.
#[derive(Clone, Debug, PartialEq)]
pub struct Threshold {
    /// The key as written, e.g. `http_req_duration{request:query}`.
    pub key: String,
    pub metric: Metric,
    pub tags: TagFilter,
    /// The expression as written, e.g. `p(95)<800ms`.
    pub expr: String,
    pub aggregation: Aggregation,
    pub op: Op,
    /// Milliseconds for trends; a share for rates; a count or per-second rate for counters.
    pub value: f64,
    pub abort_on_fail: bool,
    pub delay_abort_eval: std::time::Duration,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parse `metric{tag:value,...}`.
pub fn parse_metric_key(key: &str) -> Result<(Metric, TagFilter), String> {
    let key = key.trim();
    let (name, tags) = match key.find('{') {
        Some(i) => {
            let rest = &key[i + 1..];
            let inner = rest
                .strip_suffix('}')
                .ok_or_else(|| format!("{key:?}: tag filter must end with `}}`"))?;
            (&key[..i], Some(inner))
        }
        None => (key, None),
    };
    let metric = Metric::from_name(name.trim()).ok_or_else(|| {
        let known: Vec<_> = Metric::ALL.iter().map(|m| m.name()).collect();
        format!("unknown metric {name:?} (known: {})", known.join(", "))
    })?;
    let mut filter = TagFilter::default();
    if let Some(tags) = tags {
        for pair in tags.split(',') {
            let (k, v) = pair
                .split_once(':')
                .ok_or_else(|| format!("tag filter {pair:?}: expected NAME:VALUE"))?;
            let v = v.trim().trim_matches('"').to_string();
            if v.is_empty() {
                return Err(format!("tag filter {pair:?}: empty value"));
            }
            match k.trim() {
                "scenario" => filter.scenario = Some(v),
                "request" | "name" => {
                    if metric.per_scenario_only() {
                        return Err(format!(
                            "{} is counted per scenario; filter it by `scenario`, not `{}`",
                            metric.name(),
                            k.trim()
                        ));
                    }
                    filter.request = Some(v)
                }
                other => {
                    return Err(format!(
                        "unknown tag {other:?} (thresholds can filter by `scenario` and `request`)"
                    ));
                }
            }
        }
    }
    Ok((metric, filter))
}

/// Parse one expression for a metric. Errors say what was expected at which column.
pub fn parse_expr(metric: Metric, expr: &str) -> Result<(Aggregation, Op, f64), String> {
    let s = expr.trim();
    let op_pos = s
        .find(['<', '>', '=', '!'])
        .ok_or_else(|| format!("{expr:?}: expected AGGREGATION OP VALUE, e.g. p(95)<800ms"))?;
    let (lhs, rest) = s.split_at(op_pos);
    let (op, rhs) = if let Some(r) = rest.strip_prefix("<=") {
        (Op::Le, r)
    } else if let Some(r) = rest.strip_prefix(">=") {
        (Op::Ge, r)
    } else if let Some(r) = rest.strip_prefix("==") {
        (Op::Eq, r)
    } else if let Some(r) = rest.strip_prefix("!=") {
        (Op::Ne, r)
    } else if let Some(r) = rest.strip_prefix('<') {
        (Op::Lt, r)
    } else if let Some(r) = rest.strip_prefix('>') {
        (Op::Gt, r)
    } else {
        return Err(format!(
            "{expr:?}: bad operator at column {} (use <, <=, >, >=, == or !=)",
            op_pos + 1
        ));
    };
    let lhs = lhs.trim();
    let aggregation = match lhs {
        "avg" => Aggregation::Avg,
        "min" => Aggregation::Min,
        "max" => Aggregation::Max,
        "med" => Aggregation::Med,
        "count" => Aggregation::Count,
        "rate" => Aggregation::Rate,
        _ => {
            let p = lhs
                .strip_prefix("p(")
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| {
                    format!("{expr:?}: unknown aggregation {lhs:?} (use p(N), avg, min, max, med, count or rate)")
                })?;
            let p: f64 = p
                .trim()
                .parse()
                .map_err(|_| format!("{expr:?}: percentile {p:?} is not a number"))?;
            if !(0.0..=100.0).contains(&p) {
                return Err(format!("{expr:?}: percentile {p} is outside 0..100"));
            }
            Aggregation::Percentile(p)
        }
    };
    let allowed = match (metric.kind(), aggregation) {
        (MetricKind::Trend, Aggregation::Count | Aggregation::Rate) => false,
        (MetricKind::Trend, _) => true,
        (MetricKind::Rate, Aggregation::Rate) => true,
        (MetricKind::Rate, _) => false,
        (MetricKind::Counter, Aggregation::Count | Aggregation::Rate) => true,
        (MetricKind::Counter, _) => false,
    };
    if !allowed {
        let ok = match metric.kind() {
            MetricKind::Trend => "p(N), avg, min, max, med",
            MetricKind::Rate => "rate",
            MetricKind::Counter => "count, rate",
        };
        return Err(format!(
            "{expr:?}: {} has no {lhs:?}; it supports {ok}",
            metric.name()
        ));
    }
    let rhs = rhs.trim();
    let value = if metric.kind() == MetricKind::Trend {
        parse_millis(rhs).ok_or_else(|| {
            format!(
                "{expr:?}: {rhs:?} is not a duration (e.g. 800, 800ms, 1.5s; a bare number is ms)"
            )
        })?
    } else {
        let v: f64 = rhs
            .parse()
            .map_err(|_| format!("{expr:?}: {rhs:?} is not a number"))?;
        if !v.is_finite() {
            return Err(format!("{expr:?}: {rhs:?} is not a finite number"));
        }
        v
    };
    Ok((aggregation, op, value))
}

/// `800` (ms), `800ms`, `1.5s`, `250us`, `2m`.
fn parse_millis(s: &str) -> Option<f64> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let factor = match unit.trim() {
        "" | "ms" => 1.0,
        "us" | "µs" => 0.001,
        "s" => 1000.0,
        "m" | "min" => 60_000.0,
        _ => return None,
    };
    let v = n * factor;
    v.is_finite().then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_k6_syntax() {
        let (m, t) = parse_metric_key("http_req_duration{request:query}").unwrap();
        assert_eq!(m, Metric::HttpReqDuration);
        assert_eq!(t.request.as_deref(), Some("query"));
        assert_eq!(
            parse_expr(m, "p(95)<800ms").unwrap(),
            (Aggregation::Percentile(95.0), Op::Lt, 800.0)
        );
        assert_eq!(
            parse_expr(m, "p(99.9) <= 2s").unwrap(),
            (Aggregation::Percentile(99.9), Op::Le, 2000.0)
        );
        assert_eq!(parse_expr(m, "avg<200").unwrap().2, 200.0);
        let (m, _) = parse_metric_key("http_req_failed").unwrap();
        assert_eq!(
            parse_expr(m, "rate<0.01").unwrap(),
            (Aggregation::Rate, Op::Lt, 0.01)
        );
        let (m, _) = parse_metric_key("http_reqs").unwrap();
        assert_eq!(
            parse_expr(m, "count>=10").unwrap(),
            (Aggregation::Count, Op::Ge, 10.0)
        );
    }

    #[test]
    fn rejects_nonsense() {
        assert!(parse_metric_key("http_req_duratio").is_err());
        assert!(parse_metric_key("http_req_duration{color:red}").is_err());
        assert!(parse_metric_key("iterations{request:x}").is_err());
        let m = Metric::HttpReqDuration;
        for bad in [
            "p95<1",
            "p(95)",
            "p(101)<1",
            "p(95)<fast",
            "rate<0.1",
            "p(95)=<1",
            "count<3",
        ] {
            assert!(parse_expr(m, bad).is_err(), "{bad}");
        }
        assert!(parse_expr(Metric::HttpReqFailed, "p(95)<1").is_err());
    }
}
