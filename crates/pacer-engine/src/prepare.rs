//! A request rendered into what goes on the wire, once per logical request (its retries resend
//! the same thing: the same correlation id, the same body). What the plan fixes before the run
//! is done once: a path without placeholders is resolved and parsed once ([`static_urls`]), and
//! a request with nothing to render at all is prepared on first use and reused
//! ([`static_requests`]).

use std::sync::OnceLock;

use pacer_plan::origin::{self, Destination, Refusal};
use pacer_plan::{Body, Part, Plan, Request};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

use crate::iteration::{Shared, WORKER_HEADER};
use crate::render::RenderCtx;

/// A request URL known before the run: parsed, as a request `Uri` when nothing (no query) is
/// added to it per request, and where it goes.
pub(crate) type StaticUrl = (url::Url, Option<hyper::Uri>, Destination);

/// A request with nothing to render, prepared once (or the reason it cannot be sent).
pub(crate) type StaticRequest = OnceLock<Result<Prepared, NotPrepared>>;

/// Why a request could not be prepared.
#[derive(Clone, Debug)]
pub(crate) enum NotPrepared {
    /// Its rendered path would leave the target (or is not a path): refused, and counted.
    Refused(Refusal),
    /// A template or a value failed (the message leaves out query strings and header values).
    Invalid(String),
}

impl From<String> for NotPrepared {
    fn from(msg: String) -> Self {
        NotPrepared::Invalid(msg)
    }
}

/// The URL of each request whose path has no placeholder, by scenario and request (`None`:
/// rendered per request, or refused then).
pub(crate) fn static_urls(plan: &Plan) -> Vec<Vec<Option<StaticUrl>>> {
    plan.scenarios
        .iter()
        .map(|sc| {
            sc.requests
                .iter()
                .map(|req| {
                    let path: Option<String> = req
                        .path
                        .parts()
                        .iter()
                        .map(|p| match p {
                            Part::Lit(s) => Some(s.as_str()),
                            _ => None,
                        })
                        .collect();
                    let (url, dest) =
                        origin::resolve(&plan.target, &plan.http.allow_hosts, &path?).ok()?;
                    let uri = req
                        .query
                        .is_empty()
                        .then(|| url.as_str().parse::<hyper::Uri>().ok())
                        .flatten();
                    Some((url, uri, dest))
                })
                .collect()
        })
        .collect()
}

/// A cell for each request with nothing to render (URL, headers and body all literal), by
/// scenario and request.
pub(crate) fn static_requests(
    plan: &Plan,
    urls: &[Vec<Option<StaticUrl>>],
) -> Vec<Vec<Option<StaticRequest>>> {
    plan.scenarios
        .iter()
        .zip(urls)
        .map(|(sc, urls)| {
            sc.requests
                .iter()
                .zip(urls)
                .map(|(req, url)| {
                    let literal = matches!(url, Some((_, Some(_), _)))
                        && req.headers.iter().all(|(_, t)| t.is_literal())
                        && match &req.body {
                            None => true,
                            Some(Body::Text(t)) => t.is_literal(),
                            Some(Body::Json(_)) => false,
                        };
                    literal.then(OnceLock::new)
                })
                .collect()
        })
        .collect()
}

/// The prepared form of request `ri` of scenario `sc` for this iteration: a literal request's
/// (prepared once for the run), or `req` rendered now with `ctx` into `owned`. `owned` is a box:
/// it is kept by the request's future while the request is in flight, and an inline
/// `Prepared` (256 bytes) would be held by every request in flight, literal ones included.
pub(crate) fn prepared<'a>(
    sh: &'a Shared,
    sc: usize,
    ri: usize,
    req: &Request,
    ctx: &RenderCtx<'_>,
    owned: &'a mut Option<Box<Prepared>>,
) -> Result<&'a Prepared, NotPrepared> {
    let static_url = sh.static_urls.get(sc).and_then(|r| r.get(ri)?.as_ref());
    match sh.static_requests.get(sc).and_then(|r| r.get(ri)?.as_ref()) {
        Some(cell) => cell
            .get_or_init(|| prepare(sh, req, static_url, ctx))
            .as_ref()
            .map_err(NotPrepared::clone),
        None => prepare(sh, req, static_url, ctx).map(|p| &**owned.insert(Box::new(p))),
    }
}

/// Does `req` use `{{attempt}}` anywhere (path, query, headers, body)? Such a request is
/// rendered again for each attempt.
pub(crate) fn uses_attempt(req: &Request) -> bool {
    fn json(t: &pacer_plan::JsonTemplate) -> bool {
        match t {
            pacer_plan::JsonTemplate::Literal(_) => false,
            pacer_plan::JsonTemplate::String(t) => t.uses_attempt(),
            pacer_plan::JsonTemplate::Array(a) => a.iter().any(json),
            pacer_plan::JsonTemplate::Object(o) => o.iter().any(|(_, t)| json(t)),
        }
    }
    req.path.uses_attempt()
        || req.query.iter().any(|(_, t)| t.uses_attempt())
        || req.headers.iter().any(|(_, t)| t.uses_attempt())
        || match &req.body {
            None => false,
            Some(Body::Text(t)) => t.uses_attempt(),
            Some(Body::Json(j)) => json(j),
        }
}

/// A request rendered once per logical request (retries resend the same thing: the same
/// correlation id, the same body).
pub(crate) struct Prepared {
    pub(crate) method: ::http::Method,
    pub(crate) uri: hyper::Uri,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Option<bytes::Bytes>,
    pub(crate) approx_header_bytes: u64,
    /// The target's origin (credentials attached) or an allowed host (none).
    pub(crate) destination: Destination,
}

/// Render `req` (with the URL known before the run, if any) into what goes on the wire: the
/// URL resolved against the target's origin (or refused), the query, headers and body rendered,
/// the worker header and the client's default headers added (credentials only for the target).
fn prepare(
    sh: &Shared,
    req: &Request,
    static_url: Option<&StaticUrl>,
    ctx: &RenderCtx<'_>,
) -> Result<Prepared, NotPrepared> {
    let (uri, destination) = match static_url {
        Some((_, Some(uri), dest)) => (uri.clone(), *dest),
        _ => {
            let (mut url, dest) = match static_url {
                Some((url, _, dest)) => (url.clone(), *dest),
                None => origin::resolve(
                    &sh.plan.target,
                    &sh.plan.http.allow_hosts,
                    &ctx.render(&req.path).map_err(|e| e.to_string())?,
                )
                .map_err(NotPrepared::Refused)?,
            };
            if !req.query.is_empty() {
                let mut q = url.query_pairs_mut();
                for (k, t) in &req.query {
                    q.append_pair(k, &ctx.render(t).map_err(|e| e.to_string())?);
                }
            }
            // The message leaves the query out: it may carry secrets.
            let uri = url.as_str().parse::<hyper::Uri>().map_err(|e| {
                format!(
                    "URL {}://{}{} is not a valid request URI: {e}",
                    url.scheme(),
                    url.host_str().unwrap_or(""),
                    url.path()
                )
            })?;
            (uri, dest)
        }
    };
    let mut headers = HeaderMap::with_capacity(req.headers.len() + 4);
    let uri_len = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(1, |p| p.as_str().len());
    let mut approx = (req.method.len() + uri_len + 12) as u64;
    for (k, t) in &req.headers {
        let v = ctx.render(t).map_err(|e| e.to_string())?;
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| format!("header name {k:?} is invalid"))?;
        let value = HeaderValue::from_str(&v)
            .map_err(|_| format!("header {k}: rendered value is not a valid header value"))?;
        approx += (k.len() + v.len() + 4) as u64;
        headers.insert(name, value);
    }
    let body = match &req.body {
        None => None,
        Some(Body::Text(t)) => Some(bytes::Bytes::from(
            ctx.render(t).map_err(|e| e.to_string())?,
        )),
        Some(Body::Json(j)) => {
            let v = ctx.render_json(j).map_err(|e| e.to_string())?;
            if !headers.contains_key(CONTENT_TYPE) {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            }
            Some(bytes::Bytes::from(
                serde_json::to_vec(&v).map_err(|e| e.to_string())?,
            ))
        }
    };
    if let Some(w) = &sh.worker_header {
        headers.insert(HeaderName::from_static(WORKER_HEADER), w.clone());
    }
    sh.client
        .add_default_headers(&mut headers, destination.gets_credentials());
    let method = ::http::Method::from_bytes(req.method.as_bytes())
        .map_err(|_| format!("method {:?} is invalid", req.method))?;
    Ok(Prepared {
        method,
        uri,
        headers,
        body,
        approx_header_bytes: approx,
        destination,
    })
}
