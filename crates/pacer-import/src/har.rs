//! A HAR recording (a browser's or a proxy's "save all as HAR") to a pacer plan: one scenario
//! whose iteration replays the recorded API calls in order.
//!
//! - Static assets are left out: by the path's extension ([`STATIC_EXTENSIONS`]) or the
//!   response's type (images, fonts, CSS, JavaScript), and anything not http(s).
//! - Headers: hop-by-hop and connection headers, `Host`, `Content-Length`, HTTP/2 pseudo
//!   headers, the browser's own (`sec-*`, `Accept-Encoding`, caching validators) are dropped.
//!   Credentials (`Authorization`, `Cookie`, anything named like a token, a secret, an API key
//!   or a session) are never copied: each becomes `{{vars.NAME}}`, set from an environment
//!   variable (see [`crate::secret_names`]).
//! - Bodies: JSON as `json`, anything else as `body`.

use std::collections::BTreeSet;

use serde::Deserialize;
use serde_json::Value;

use crate::yaml::{self, Item, Map, Node};
use crate::{Import, ImportError, Note, NoteKind};

/// Path extensions of static assets (a page's, not an API's).
pub const STATIC_EXTENSIONS: &[&str] = &[
    "css", "js", "mjs", "map", "png", "jpg", "jpeg", "gif", "svg", "ico", "webp", "avif", "bmp",
    "woff", "woff2", "ttf", "otf", "eot", "mp4", "webm", "mp3", "wav", "html", "htm",
];

/// Headers never copied: hop-by-hop (RFC 9110 7.6.1), set by the client itself, or the
/// browser's own.
const DROPPED_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "host",
    "content-length",
    "accept-encoding",
    "if-none-match",
    "if-modified-since",
    "cache-control",
    "pragma",
    "priority",
];

#[derive(Deserialize)]
struct Har {
    log: Log,
}

#[derive(Deserialize)]
struct Log {
    entries: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    request: Request,
    #[serde(default)]
    response: Option<Response>,
}

#[derive(Deserialize)]
struct Request {
    method: String,
    url: String,
    #[serde(default)]
    headers: Vec<NameValue>,
    #[serde(default, rename = "postData")]
    post_data: Option<PostData>,
}

#[derive(Deserialize)]
struct NameValue {
    name: String,
    #[serde(default)]
    value: String,
}

#[derive(Deserialize)]
struct PostData {
    #[serde(default, rename = "mimeType")]
    mime_type: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    params: Vec<NameValue>,
}

#[derive(Deserialize)]
struct Response {
    #[serde(default)]
    status: i64,
    #[serde(default)]
    content: Option<Content>,
}

#[derive(Deserialize)]
struct Content {
    #[serde(default, rename = "mimeType")]
    mime_type: String,
}

/// Import a HAR document. `source_name` names it in the plan's header and in errors.
pub fn import(text: &str, source_name: &str) -> Result<Import, ImportError> {
    if text.len() > crate::MAX_HAR_BYTES {
        return Err(ImportError::TooLarge {
            size: text.len(),
            max: crate::MAX_HAR_BYTES,
        });
    }
    let har: Har = match serde_json::from_str(text) {
        Ok(h) => h,
        Err(source) => {
            // Say which field when it is JSON but not a HAR.
            if let Ok(v) = serde_json::from_str::<Value>(text) {
                let field = if v.get("log").is_none() {
                    "log"
                } else if v["log"].get("entries").is_none() {
                    "log.entries"
                } else {
                    "log.entries[]"
                };
                return Err(ImportError::Har {
                    field: field.into(),
                    message: format!("missing or not what a HAR has there ({source})"),
                });
            }
            return Err(ImportError::Json { source });
        }
    };
    let mut notes = Vec::new();
    let mut variables = Map::new();
    let mut requests = Vec::new();
    let mut names = BTreeSet::new();
    let mut target: Option<url::Url> = None;
    let mut allow = BTreeSet::new();
    let mut skipped_static = 0usize;
    let mut top_lines = Vec::new();
    for (i, e) in har.log.entries.iter().enumerate() {
        let loc = format!("entries[{i}]");
        let mut lines = Vec::new();
        let Ok(u) = url::Url::parse(&e.request.url) else {
            note(
                &mut notes,
                &mut top_lines,
                NoteKind::Untranslated,
                &loc,
                "request.url",
                "not a URL: left out".into(),
            );
            continue;
        };
        if !matches!(u.scheme(), "http" | "https") {
            continue;
        }
        if requests.len() >= crate::MAX_REQUESTS {
            note(
                &mut notes,
                &mut top_lines,
                NoteKind::Untranslated,
                &loc,
                "request",
                format!(
                    "more than {} requests: the rest is left out",
                    crate::MAX_REQUESTS
                ),
            );
            break;
        }
        let method = e.request.method.trim().to_ascii_uppercase();
        if method.is_empty() || !method.chars().all(|c| c.is_ascii_alphabetic()) {
            return Err(ImportError::Har {
                field: format!("{loc}.request.method"),
                message: format!("{:?} is not an HTTP method", e.request.method),
            });
        }
        // Only what a page loads (GET) is an asset; a POST answered with HTML is an API call.
        if method == "GET" && is_static(&u, e.response.as_ref()) {
            skipped_static += 1;
            continue;
        }
        let origin = u.origin().ascii_serialization();
        let t = target.get_or_insert_with(|| u.clone());
        let mut path = u.path().to_string();
        if let Some(q) = u.query() {
            path = format!("{path}?{q}");
        }
        let path = crate::text::escape_literal(&path);
        let path = if t.origin().ascii_serialization() == origin {
            path
        } else {
            let host = u.host_str().unwrap_or("");
            let port = u.port_or_known_default().unwrap_or(80);
            allow.insert(format!("{host}:{port}"));
            format!("{origin}{path}")
        };
        if path.contains("{{") {
            note(
                &mut notes,
                &mut top_lines,
                NoteKind::Untranslated,
                &loc,
                "request.url",
                "contains `{{`, which pacer reads as a template placeholder: left out".into(),
            );
            continue;
        }
        let mut r = Map::new();
        let name = crate::plan_name(
            &format!("{:02} {method} {}", requests.len() + 1, u.path()),
            "request",
        );
        r.set("name", crate::unique(name, &mut names));
        r.set("method", method.as_str());
        r.set("path", path);

        let mut headers = Map::new();
        let mut content_type = None;
        for h in &e.request.headers {
            let lower = h.name.to_ascii_lowercase();
            if lower.starts_with(':')
                || lower.starts_with("sec-")
                || DROPPED_HEADERS.contains(&lower.as_str())
            {
                continue;
            }
            if lower == "content-type" {
                content_type = Some(h.value.clone());
            }
            if crate::secret_header(&h.name) {
                let (var, env) = crate::secret_names(&h.name);
                if variables.get(&var).is_none() {
                    variables
                        .set(&var, format!("${{env:{env}:-}}"))
                        .comment(format!(
                            "the recording's {} header is a credential: not copied; set {env}",
                            h.name
                        ));
                    note(
                        &mut notes,
                        &mut top_lines,
                        NoteKind::Approximated,
                        "log.entries",
                        &h.name,
                        format!(
                            "a credential: its recorded value is not copied; requests send {{{{vars.{var}}}}}, from the environment variable {env}"
                        ),
                    );
                }
                headers.set(&h.name, format!("{{{{vars.{var}}}}}"));
                continue;
            }
            if h.value.contains("{{") || h.name.contains(['{', '}']) {
                note(
                    &mut notes,
                    &mut lines,
                    NoteKind::Untranslated,
                    &loc,
                    &h.name,
                    "contains `{{`, which pacer reads as a template placeholder: left out".into(),
                );
                continue;
            }
            headers.set(&h.name, crate::text::escape_literal(&h.value));
        }
        if let Some(pd) = &e.request.post_data {
            let text = match (&pd.text, pd.params.is_empty()) {
                (Some(t), _) => Some(t.clone()),
                (None, false) => Some(
                    url::form_urlencoded::Serializer::new(String::new())
                        .extend_pairs(pd.params.iter().map(|p| (&p.name, &p.value)))
                        .finish(),
                ),
                (None, true) => None,
            };
            let is_json = pd.mime_type.to_ascii_lowercase().contains("json")
                || content_type
                    .as_deref()
                    .is_some_and(|c| c.to_ascii_lowercase().contains("json"));
            if let Some(text) = text.filter(|t| !t.is_empty()) {
                let json = is_json
                    .then(|| serde_json::from_str::<Value>(&text).ok())
                    .flatten();
                match json {
                    Some(v) if !json_has_braces(&v) => {
                        headers
                            .0
                            .retain(|h| !h.key.eq_ignore_ascii_case("content-type"));
                        r.set("json", Node::from(escape_json(v)));
                    }
                    _ if text.contains("{{") => {
                        note(&mut notes, &mut lines, NoteKind::Untranslated, &loc, "postData", "the body contains `{{`, which pacer reads as a template placeholder: the request has no body".into());
                    }
                    _ => {
                        r.set("body", crate::text::escape_literal(&text));
                    }
                }
            }
        }
        if !headers.is_empty() {
            r.set("headers", headers);
        }
        let mut item = Item::new(r);
        if let Some(resp) = &e.response {
            lines.insert(
                0,
                format!("recorded: {} {} -> {}", method, u.path(), resp.status),
            );
        }
        item.comments = lines;
        requests.push(item);
    }
    if skipped_static > 0 {
        note(
            &mut notes,
            &mut top_lines,
            NoteKind::Untranslated,
            "log.entries",
            "static assets",
            format!(
                "{skipped_static} requests for static assets (scripts, styles, images, fonts, pages) left out: pacer tests the API"
            ),
        );
    }
    let Some(target) = target else {
        return Err(ImportError::Empty(
            "the HAR has no http(s) request that is not a static asset".into(),
        ));
    };
    let mut doc = Map::new();
    doc.set("name", crate::plan_name(source_name, "imported-har"));
    doc.set(
        "target",
        format!(
            "${{env:PACER_TARGET:-{}}}",
            target.origin().ascii_serialization()
        ),
    )
    .comment("The recorded server; PACER_TARGET overrides it.");
    if !variables.is_empty() {
        doc.set("variables", variables);
    }
    if !allow.is_empty() {
        let mut http = Map::new();
        http.set(
            "allowHosts",
            allow
                .iter()
                .map(|h| Item::new(h.as_str()))
                .collect::<Vec<_>>(),
        )
        .comment("Other servers the recording called (sent without credentials).");
        doc.set("http", http);
    }
    let mut s = Map::new();
    s.set("name", "recording");
    s.set("executor", "per-vu-iterations")
        .comment("The recording replayed once, in order; change the executor for load.");
    s.set("vus", 1u64);
    s.set("iterations", 1u64);
    s.set("requests", requests);
    doc.set("scenarios", vec![Item::new(s)]);
    let mut header = vec![
        format!("Imported by `pacer import har` from {source_name}."),
        "Comments starting with \"pacer import:\" mark what was approximated or not translated."
            .to_string(),
    ];
    if !top_lines.is_empty() {
        header.push(String::new());
        header.extend(top_lines);
    }
    let yaml = yaml::write(&header, &doc);
    crate::validate(&yaml, source_name)?;
    Ok(Import {
        yaml,
        notes,
        data_files: Vec::new(),
    })
}

/// A note, and its comment line in `lines` (the place it came from).
fn note(
    notes: &mut Vec<Note>,
    lines: &mut Vec<String>,
    kind: NoteKind,
    loc: &str,
    element: &str,
    message: String,
) {
    lines.push(format!(
        "pacer import: {}: <{element}> {loc}: {message}",
        kind.label()
    ));
    notes.push(Note {
        kind,
        location: loc.to_string(),
        element: element.to_string(),
        message,
    });
}

fn is_static(u: &url::Url, resp: Option<&Response>) -> bool {
    let ext = u
        .path_segments()
        .and_then(|mut s| s.next_back())
        .and_then(|last| last.rsplit_once('.'))
        .map(|(_, e)| e.to_ascii_lowercase());
    if ext.is_some_and(|e| STATIC_EXTENSIONS.contains(&e.as_str())) {
        return true;
    }
    let mime = resp
        .and_then(|r| r.content.as_ref())
        .map(|c| c.mime_type.to_ascii_lowercase())
        .unwrap_or_default();
    mime.starts_with("image/")
        || mime.starts_with("font/")
        || mime.starts_with("text/css")
        || mime.starts_with("text/html")
        || mime.contains("javascript")
}

/// A JSON body's strings with `${` escaped (pacer resolves references in every plan string).
fn escape_json(v: Value) -> Value {
    match v {
        Value::String(s) => Value::String(crate::text::escape_literal(&s)),
        Value::Array(a) => Value::Array(a.into_iter().map(escape_json).collect()),
        Value::Object(o) => {
            Value::Object(o.into_iter().map(|(k, v)| (k, escape_json(v))).collect())
        }
        other => other,
    }
}

/// A string of the body contains `{{` (a template placeholder in a JSON body).
fn json_has_braces(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains("{{"),
        Value::Array(a) => a.iter().any(json_has_braces),
        Value::Object(o) => o
            .iter()
            .any(|(k, v)| k.contains("{{") || json_has_braces(v)),
        _ => false,
    }
}
