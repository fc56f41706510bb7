//! The server's own rate-limit headers, read so the report can show what the server said and
//! the limiter can steer by what is left ([`server_report`]): Genesys `inin-ratelimit-*`,
//! GitHub-style `X-RateLimit-*`, and the IETF `RateLimit` / `RateLimit-Policy` fields. Malformed values are ignored field by field, and every value
//! that is kept is bounded (a hostile server's headers cannot make the report hold infinities,
//! absurd numbers or long strings).

use std::time::Duration;

use pacer_limiter::headroom::{MAX_RESET, ServerReport};
use pacer_stats::ServerLimitHeaders;
use reqwest::header::HeaderMap;

fn num(h: &HeaderMap, name: &str) -> Option<u64> {
    h.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// The largest reset a header may state, in seconds: a reset is a delay (seconds), or with
/// some APIs (GitHub) a Unix time, which stays below this until the year 2286.
pub(crate) const MAX_RESET_SECS: f64 = 1e10;

/// The longest `RateLimit-Policy` kept, in characters.
pub(crate) const MAX_POLICY_CHARS: usize = 200;

/// A finite, non-negative number of at most [`MAX_RESET_SECS`] (larger ones are clamped).
fn reset(v: &str) -> Option<f64> {
    let v: f64 = v.trim().parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some(v.min(MAX_RESET_SECS))
}

fn float(h: &HeaderMap, name: &str) -> Option<f64> {
    reset(h.get(name)?.to_str().ok()?)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `"default";r=50;t=30` -> (r, t), each bounded like a reset ([`MAX_RESET_SECS`]).
fn ietf_params(v: &str, keys: [&str; 2]) -> [Option<f64>; 2] {
    let mut out = [None, None];
    for part in v.split(';').skip(1) {
        if let Some((k, val)) = part.trim().split_once('=') {
            for (i, key) in keys.iter().enumerate() {
                if k.trim() == *key {
                    out[i] = reset(val);
                }
            }
        }
    }
    out
}

pub(crate) fn parse(h: &HeaderMap) -> Option<ServerLimitHeaders> {
    if h.contains_key("inin-ratelimit-allowed") || h.contains_key("inin-ratelimit-count") {
        let limit = num(h, "inin-ratelimit-allowed");
        let count = num(h, "inin-ratelimit-count");
        return Some(ServerLimitHeaders {
            at_unix_ms: now_ms(),
            source: "inin-ratelimit".into(),
            limit,
            remaining: limit.zip(count).map(|(l, c)| l.saturating_sub(c)),
            count,
            reset_secs: float(h, "inin-ratelimit-reset"),
            policy: None,
        });
    }
    if h.contains_key("x-ratelimit-limit") || h.contains_key("x-ratelimit-remaining") {
        return Some(ServerLimitHeaders {
            at_unix_ms: now_ms(),
            source: "x-ratelimit".into(),
            limit: num(h, "x-ratelimit-limit"),
            remaining: num(h, "x-ratelimit-remaining"),
            count: None,
            reset_secs: float(h, "x-ratelimit-reset"),
            policy: None,
        });
    }
    if let Some(v) = h.get("ratelimit").and_then(|v| v.to_str().ok()) {
        let [r, t] = ietf_params(v, ["r", "t"]);
        let policy = h.get("ratelimit-policy").and_then(|v| v.to_str().ok());
        let q = policy.and_then(|p| ietf_params(p, ["q", "w"])[0]);
        return Some(ServerLimitHeaders {
            at_unix_ms: now_ms(),
            source: "ratelimit".into(),
            limit: q.map(|x| x as u64),
            remaining: r.map(|x| x as u64),
            count: None,
            reset_secs: t,
            policy: policy.map(|p| p.chars().take(MAX_POLICY_CHARS).collect()),
        });
    }
    None
}

/// A reset larger than this many seconds is a Unix time, not a delay (2001-09-09: no server
/// states a delay of 31 years; GitHub's `X-RateLimit-Reset` is an epoch, others' a delay).
pub(crate) const EPOCH_RESET_ABOVE: f64 = 1e9;

/// What the limiter steers by ([`pacer_limiter::headroom`]): remaining, the reset as a delay
/// from now (an epoch converted with this machine's clock, one in the past as no delay, each
/// at most [`pacer_limiter::headroom::MAX_RESET`]), and the limit the server states. `None`
/// without a remaining count (the one number the limiter cannot do without).
pub(crate) fn server_report(h: &HeaderMap) -> Option<ServerReport> {
    let p = parse(h)?;
    let remaining = p.remaining?;
    let reset = p.reset_secs.map(|secs| {
        let delay = if secs > EPOCH_RESET_ABOVE {
            secs - now_ms() as f64 / 1000.0
        } else {
            secs
        };
        // Finite (parse bounds it), so from_secs_f64 cannot panic once clamped.
        Duration::from_secs_f64(delay.clamp(0.0, MAX_RESET.as_secs_f64()))
    });
    Some(ServerReport {
        remaining,
        reset,
        limit: p.limit,
    })
}

/// The rate (per second) the server states it enforces: the first `RateLimit-Policy` item's
/// `q` requests per `w` seconds (IETF draft). `None` without one, or when either is missing,
/// zero or absurd (a hostile server cannot state an infinite or negative rate).
pub(crate) fn policy_rate(h: &HeaderMap) -> Option<f64> {
    let policy = h.get("ratelimit-policy")?.to_str().ok()?;
    let first = policy.split(',').next()?;
    let [q, w] = ietf_params(first, ["q", "w"]);
    let (q, w) = (q?, w?);
    (q > 0.0 && w > 0.0)
        .then(|| q / w)
        .filter(|r| r.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_states_q_per_w_seconds() {
        let mut h = HeaderMap::new();
        h.insert(
            "ratelimit-policy",
            "\"hidden\";q=50;w=1, \"daily\";q=1000;w=86400"
                .parse()
                .unwrap(),
        );
        assert_eq!(policy_rate(&h), Some(50.0));
        h.insert("ratelimit-policy", "\"x\";q=0;w=1".parse().unwrap());
        assert_eq!(policy_rate(&h), None);
        h.insert("ratelimit-policy", "\"x\";q=10".parse().unwrap());
        assert_eq!(policy_rate(&h), None);
        assert_eq!(policy_rate(&HeaderMap::new()), None);
    }

    #[test]
    fn a_report_has_the_reset_as_a_bounded_delay_an_epoch_converted() {
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-limit", "5000".parse().unwrap());
        h.insert("x-ratelimit-remaining", "4990".parse().unwrap());
        let in_a_minute = now_ms() / 1000 + 60;
        h.insert(
            "x-ratelimit-reset",
            in_a_minute.to_string().parse().unwrap(),
        );
        let r = server_report(&h).unwrap();
        assert_eq!((r.remaining, r.limit), (4990, Some(5000)));
        let d = r.reset.unwrap().as_secs_f64();
        assert!((58.0..=61.0).contains(&d), "{d}");
        // In the past: no delay. Absurd: at most a day.
        h.insert("x-ratelimit-reset", "1000000001".parse().unwrap());
        assert_eq!(server_report(&h).unwrap().reset, Some(Duration::ZERO));
        h.insert("x-ratelimit-reset", "999999999".parse().unwrap());
        assert_eq!(server_report(&h).unwrap().reset, Some(MAX_RESET));
        h.insert("x-ratelimit-reset", "2.5".parse().unwrap());
        assert_eq!(
            server_report(&h).unwrap().reset,
            Some(Duration::from_millis(2500))
        );
        // No remaining: nothing to steer by.
        h.remove("x-ratelimit-remaining");
        assert_eq!(server_report(&h), None);
    }

    #[test]
    fn reads_each_style() {
        let mut h = HeaderMap::new();
        h.insert("inin-ratelimit-count", "1".parse().unwrap());
        h.insert("inin-ratelimit-allowed", "180".parse().unwrap());
        h.insert("inin-ratelimit-reset", "61".parse().unwrap());
        let p = parse(&h).unwrap();
        assert_eq!(
            (p.limit, p.remaining, p.reset_secs),
            (Some(180), Some(179), Some(61.0))
        );

        let mut h = HeaderMap::new();
        h.insert("ratelimit", "\"default\";r=50;t=30".parse().unwrap());
        h.insert(
            "ratelimit-policy",
            "\"default\";q=100;w=60".parse().unwrap(),
        );
        let p = parse(&h).unwrap();
        assert_eq!(
            (p.limit, p.remaining, p.reset_secs),
            (Some(100), Some(50), Some(30.0))
        );

        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-limit", "garbage".parse().unwrap());
        h.insert("x-ratelimit-remaining", "4".parse().unwrap());
        let p = parse(&h).unwrap();
        assert_eq!((p.limit, p.remaining), (None, Some(4)));
        assert!(parse(&HeaderMap::new()).is_none());
    }
}

/// Which limit a 429 was about, as the server says it: a JSON body's `limit` field, a
/// `[limit: NAME]` in its `message` (Genesys style), or the first `RateLimit-Policy` name.
/// Sanitized: printable, at most 64 characters.
pub(crate) fn server_limit_name(h: &HeaderMap, body: &[u8]) -> Option<String> {
    let clean = |s: &str| -> Option<String> {
        let s: String = s
            .trim()
            .chars()
            .filter(|c| !c.is_control())
            .take(64)
            .collect();
        (!s.is_empty()).then_some(s)
    };
    let json = (body.first() == Some(&b'{') && body.len() <= 64 * 1024)
        .then(|| serde_json::from_slice::<serde_json::Value>(body).ok())
        .flatten();
    if let Some(v) = json {
        if let Some(name) = v.get("limit").and_then(|l| l.as_str()).and_then(clean) {
            return Some(name);
        }
        // Genesys Cloud: "Rate limit exceeded the maximum. [limit: token.rate.per.minute]"
        let bracketed = v
            .get("message")
            .and_then(|m| m.as_str())
            .and_then(|msg| msg.split_once("[limit:"))
            .and_then(|(_, rest)| rest.split_once(']'))
            .and_then(|(name, _)| clean(name));
        if bracketed.is_some() {
            return bracketed;
        }
    }
    let policy = h.get("ratelimit-policy")?.to_str().ok()?;
    let first = policy.split([';', ',']).next()?;
    clean(first.trim().trim_matches('"'))
}

#[cfg(test)]
mod server_limit_tests {
    use super::*;

    #[test]
    fn names_the_limit_from_body_message_or_policy() {
        let h = HeaderMap::new();
        assert_eq!(
            server_limit_name(&h, br#"{"limit":"token.rate.per.minute"}"#).as_deref(),
            Some("token.rate.per.minute")
        );
        assert_eq!(
            server_limit_name(&h, br#"{"message":"Rate limit exceeded the maximum. [limit: client.credentials.token.rate.per.minute]"}"#)
                .as_deref(),
            Some("client.credentials.token.rate.per.minute")
        );
        let mut h = HeaderMap::new();
        h.insert("ratelimit-policy", "\"burst\";q=100;w=60".parse().unwrap());
        assert_eq!(server_limit_name(&h, b"not json").as_deref(), Some("burst"));
        assert_eq!(
            server_limit_name(&HeaderMap::new(), b"{\"limit\": 5}"),
            None
        );
        assert_eq!(server_limit_name(&HeaderMap::new(), b"\xff\xfe"), None);
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;
    use reqwest::header::HeaderValue;

    /// The header names the parser reads.
    const NAMES: [&str; 9] = [
        "inin-ratelimit-allowed",
        "inin-ratelimit-count",
        "inin-ratelimit-reset",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "ratelimit",
        "ratelimit-policy",
        "retry-after",
    ];

    /// A header value as a server may send it: numbers of any size, parameters, garbage
    /// (any bytes a header value may hold).
    fn value() -> impl Strategy<Value = HeaderValue> {
        prop_oneof![
            any::<u64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|f| f.to_string()),
            r#""[a-z]{0,8}";(r|t|q|w)=-?[0-9.eE+]{0,12}(;(r|t|q|w)=[0-9.eE+-]{0,400})?"#,
            "[ -~]{0,300}",
        ]
        .prop_filter_map("a valid header value", |s| HeaderValue::from_str(&s).ok())
        .boxed()
        .prop_union(
            proptest::collection::vec(any::<u8>(), 0..64)
                .prop_filter_map("a valid header value", |b| HeaderValue::from_bytes(&b).ok())
                .boxed(),
        )
    }

    fn headers() -> impl Strategy<Value = HeaderMap> {
        proptest::collection::vec((0..NAMES.len(), value()), 0..8).prop_map(|pairs| {
            let mut h = HeaderMap::new();
            for (i, v) in pairs {
                h.insert(NAMES[i], v);
            }
            h
        })
    }

    proptest! {
        #[test]
        fn arbitrary_rate_limit_headers_never_panic_and_stay_bounded(h in headers()) {
            if let Some(p) = parse(&h) {
                prop_assert!(["inin-ratelimit", "x-ratelimit", "ratelimit"].contains(&p.source.as_str()));
                if let Some(r) = p.reset_secs {
                    prop_assert!(r.is_finite() && (0.0..=MAX_RESET_SECS).contains(&r), "{r}");
                }
                if let (Some(l), Some(r)) = (p.limit, p.remaining)
                    && p.source == "inin-ratelimit"
                {
                    prop_assert!(r <= l);
                }
                prop_assert!(p.policy.as_ref().is_none_or(|s| s.chars().count() <= MAX_POLICY_CHARS));
                // What is kept serializes (no infinities in the report's JSON).
                prop_assert!(serde_json::to_string(&p).is_ok());
            }
            if let Some(r) = server_report(&h) {
                prop_assert!(r.reset.is_none_or(|d| d <= MAX_RESET));
            }
        }

        #[test]
        fn a_429_limit_name_is_short_and_printable_whatever_the_server_sends(
            h in headers(),
            body in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..512),
                "[ -~]{0,300}".prop_map(|s| format!(r#"{{"limit":{s:?},"message":"x [limit: {s}]"}}"#).into_bytes()),
            ],
        ) {
            if let Some(name) = server_limit_name(&h, &body) {
                prop_assert!(!name.is_empty() && name.chars().count() <= 64);
                prop_assert!(!name.chars().any(char::is_control), "{name:?}");
            }
        }
    }
}
