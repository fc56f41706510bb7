//! A scenario's requests: method, path (a literal one must stay on the target's origin or an
//! allowed host), query, headers, body, credential, checks, extraction and polling, each
//! template parsed and every `{{vars.*}}` it uses defined.

use std::collections::{BTreeMap, BTreeSet};

use super::{Checker, is_token};
use crate::HumanDuration;
use crate::model::{
    AuthRef, Body, Expect, Extract, ExtractFrom, HttpOptions, JsonCheck, JsonTemplate, JsonTest,
    Poll, Request, defaults,
};
use crate::spec::{ExpectSpec, ExtractSpec, PollSpec, RequestSpec};
use crate::template::{Part, Template};

/// What a request is checked against: the parts of the plan it may name or reach.
pub(super) struct Context<'a> {
    /// Each credential's index by name.
    pub(super) auth_names: &'a BTreeMap<String, usize>,
    /// `None` when the target is invalid (then literal paths are not checked).
    pub(super) target: Option<&'a url::Url>,
    pub(super) http: &'a HttpOptions,
    /// The plan's `variables`.
    pub(super) variables: &'a BTreeMap<String, serde_json::Value>,
    /// The variables some request of the scenario extracts.
    pub(super) extracted: &'a BTreeSet<&'a str>,
}

/// Request `r` (at path `p`), checked.
pub(super) fn request(c: &mut Checker, p: &str, r: &RequestSpec, cx: &Context<'_>) -> Request {
    let method = r.method.to_ascii_uppercase();
    if !is_token(&method) {
        c.err(
            format!("{p}.method"),
            format!("{:?} is not an HTTP method", r.method),
        );
    }
    let path = path(c, p, &r.path);
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
    let auth = auth_ref(c, p, r.auth.as_deref(), cx.auth_names);
    let exp = r
        .expect
        .as_ref()
        .map(|e| expect(c, &format!("{p}.expect"), e))
        .unwrap_or_default();
    let extract = r
        .extract
        .iter()
        .filter_map(|(name, e)| extract(c, &format!("{p}.extract.{name}"), name, e))
        .collect();
    let poll = r.poll.as_ref().map(|pl| poll(c, &format!("{p}.poll"), pl));
    let req = Request {
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
    };
    literal_path_origin(c, p, &req.path, cx.target, cx.http);
    defined_vars(c, p, &req, cx);
    req
}

/// `path`: relative to the target (`/…`), an http(s) URL, or a template that renders one.
fn path(c: &mut Checker, p: &str, path: &str) -> Template {
    if path.is_empty() {
        c.err(format!("{p}.path"), "must not be empty");
    } else if !(path.starts_with('/')
        || path.starts_with("http://")
        || path.starts_with("https://")
        || path.starts_with("{{"))
    {
        c.err(
            format!("{p}.path"),
            "must start with `/` (relative to target) or be an http(s):// URL",
        );
    }
    c.template(&format!("{p}.path"), path)
}

/// A request's `auth`: the scenario's (unset), none (`none`), or a credential by name.
fn auth_ref(
    c: &mut Checker,
    p: &str,
    auth: Option<&str>,
    names: &BTreeMap<String, usize>,
) -> AuthRef {
    match auth {
        None => AuthRef::Inherit,
        Some("none") => AuthRef::None,
        Some(name) => match names.get(name) {
            Some(i) => AuthRef::Named(*i),
            None => {
                c.err(
                    format!("{p}.auth"),
                    format!("no credential named {name:?} in `auth` (or `none`)"),
                );
                AuthRef::None
            }
        },
    }
}

/// A JSON body whose string values are templates.
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

/// `expect` (and a poll's `until`): status codes, and JSON conditions with one test each.
fn expect(c: &mut Checker, p: &str, e: &ExpectSpec) -> Expect {
    for (i, s) in e.status.iter().enumerate() {
        c.status(format!("{p}.status[{i}]"), *s);
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

/// One `extract` entry (at path `ep`): a variable name, and one source (a JSON pointer or a
/// header). `None` when it has no valid source.
fn extract(c: &mut Checker, ep: &str, name: &str, e: &ExtractSpec) -> Option<(String, Extract)> {
    if name.is_empty()
        || !name
            .chars()
            .all(|ch| ch.is_alphanumeric() || ch == '_' || ch == '-')
    {
        c.err(ep, "variable names use letters, digits, `_` and `-`");
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
            c.err(ep, "give exactly one of json (a JSON pointer) or header");
            return None;
        }
    };
    Some((
        name.to_string(),
        Extract {
            from,
            required: e.required.unwrap_or(true),
        },
    ))
}

/// `poll` (at path `pp`): a condition to stop on, a timeout above zero, at least one attempt.
fn poll(c: &mut Checker, pp: &str, pl: &PollSpec) -> Poll {
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
}

/// A literal `path` must resolve to the target's origin or an allowed host (rendered paths
/// are checked by the engine on every request, with the same [`crate::origin::resolve`]).
fn literal_path_origin(
    c: &mut Checker,
    p: &str,
    path: &Template,
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
            Part::Lit(s) => Some(s.as_str()),
            _ => None,
        })
        .collect();
    if let Err(e) = crate::origin::resolve(target, &http.allow_hosts, &lit) {
        c.err(format!("{p}.path"), e.to_string());
    }
}

/// Every `{{vars.*}}` of the path, query, headers and text body is in `variables` or
/// extracted by a request of the scenario.
fn defined_vars(c: &mut Checker, p: &str, req: &Request, cx: &Context<'_>) {
    for (field, t) in std::iter::once(("path".to_string(), &req.path))
        .chain(req.query.iter().map(|(k, t)| (format!("query.{k}"), t)))
        .chain(req.headers.iter().map(|(k, t)| (format!("headers.{k}"), t)))
        .chain(match &req.body {
            Some(Body::Text(t)) => Some(("body".to_string(), t)),
            _ => None,
        })
    {
        for v in t.vars() {
            if !cx.variables.contains_key(v) && !cx.extracted.contains(v) {
                c.err(
                    format!("{p}.{field}"),
                    format!(
                        "{{{{vars.{v}}}}} is neither in `variables` nor extracted by a request of this scenario"
                    ),
                );
            }
        }
    }
}
