//! `http`: timeouts, the plan's default headers, and what the servers are trusted with (the
//! hosts a request may go to besides the target, the largest body read).

use super::{Checker, is_token};
use crate::HumanDuration;
use crate::model::{HttpOptions, defaults};
use crate::origin::{AllowedHost, MAX_ALLOW_HOSTS};
use crate::spec::{CorrelationIdSpec, HttpSpec};

pub(super) fn options(c: &mut Checker, h: Option<&HttpSpec>) -> HttpOptions {
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
    let (allow_hosts, max_body_bytes) = trust(c, &h);
    let correlation_header = correlation_header(c, h.correlation_id.as_ref());
    HttpOptions {
        correlation_header,
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

/// `http.allowHosts` (parsed, at most [`MAX_ALLOW_HOSTS`]) and `http.maxBodyBytes` (1 byte to
/// [`defaults::MAX_BODY_BYTES_LIMIT`]).
fn trust(c: &mut Checker, h: &HttpSpec) -> (Vec<AllowedHost>, u64) {
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

/// `http.correlationId`: the header name (lower case), the default when absent or `true`,
/// `None` when `false`.
fn correlation_header(c: &mut Checker, spec: Option<&CorrelationIdSpec>) -> Option<String> {
    match spec {
        None | Some(CorrelationIdSpec::Enabled(true)) => {
            Some(defaults::CORRELATION_HEADER.to_string())
        }
        Some(CorrelationIdSpec::Enabled(false)) => None,
        Some(CorrelationIdSpec::Header(name)) => {
            if !is_token(name) || name.len() > MAX_CORRELATION_HEADER_LEN {
                c.err(
                    "http.correlationId",
                    format!(
                        "not a valid header name (true, false, or a header name of at most \
                         {MAX_CORRELATION_HEADER_LEN} characters)"
                    ),
                );
                return None;
            }
            let lower = name.to_ascii_lowercase();
            if [
                "authorization",
                "cookie",
                "proxy-authorization",
                "host",
                "content-length",
            ]
            .contains(&lower.as_str())
            {
                c.err(
                    "http.correlationId",
                    format!("{name} cannot carry the correlation id"),
                );
                return None;
            }
            Some(lower)
        }
    }
}

/// The longest `http.correlationId` header name: far above any real one (`ININ-Correlation-Id`
/// is 19), small enough to stay out of the way of header size limits.
const MAX_CORRELATION_HEADER_LEN: usize = 64;
