//! The server's own rate-limit headers, read so the report can show what the server said:
//! Genesys `inin-ratelimit-*`, GitHub-style `X-RateLimit-*`, and the IETF `RateLimit` /
//! `RateLimit-Policy` fields. Malformed values are ignored field by field.

use pacer_stats::ServerLimitHeaders;
use reqwest::header::HeaderMap;

fn num(h: &HeaderMap, name: &str) -> Option<u64> {
    h.get(name)?.to_str().ok()?.trim().parse().ok()
}

fn float(h: &HeaderMap, name: &str) -> Option<f64> {
    let v: f64 = h.get(name)?.to_str().ok()?.trim().parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some(v)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `"default";r=50;t=30` -> (r, t)
fn ietf_params(v: &str, keys: [&str; 2]) -> [Option<f64>; 2] {
    let mut out = [None, None];
    for part in v.split(';').skip(1) {
        if let Some((k, val)) = part.trim().split_once('=') {
            for (i, key) in keys.iter().enumerate() {
                if k.trim() == *key {
                    out[i] = val
                        .trim()
                        .parse::<f64>()
                        .ok()
                        .filter(|x| x.is_finite() && *x >= 0.0);
                }
            }
        }
    }
    out
}

pub fn parse(h: &HeaderMap) -> Option<ServerLimitHeaders> {
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
            policy: policy.map(|p| p.chars().take(200).collect()),
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

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
pub fn server_limit_name(h: &HeaderMap, body: &[u8]) -> Option<String> {
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
