//! `http`: timeouts, the plan's default headers, and what the servers are trusted with (the
//! hosts a request may go to besides the target, the largest body read).

use super::{Checker, is_token};
use crate::HumanDuration;
use crate::model::{HttpOptions, defaults};
use crate::origin::{AllowedHost, MAX_ALLOW_HOSTS};
use crate::spec::HttpSpec;

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
