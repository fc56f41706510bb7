//! `${env:NAME}`, `${env:NAME:-fallback}` and `${file:PATH}` references in plan strings,
//! resolved when the plan is loaded so that secrets stay out of plan files. `$${` writes a
//! literal `${`.
//!
//! Who wrote the plan decides what its references may read, and that is one type, [`Refs`]:
//! the operator of this machine (`pacer run`, `pacer controller`) may read its environment
//! and its files; a `LoadTest`'s author (the Kubernetes operator, `pacer validate`/`pacer
//! submit` of a manifest, the worker pods) may only name the variables the LoadTest itself
//! provides, and `${file:}` is refused by this parser before anything is read. The one parser
//! below sees every form (escaped, concatenated), so no substring check can be fooled.
//!
//! Resolved values never reach an error: the resolver keeps what it resolved (a [`Redactor`])
//! and [`crate::load`] puts every error of the plan through it, so a field whose value came
//! from a reference says "the value of ${env:NAME}" instead of echoing the value.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::FieldError;

/// Reads one environment variable: `None` when it is not there.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The largest file a `${file:}` reference may read. Credentials and certificates are a few
/// KiB; 1 MiB leaves room for a bundle while a mistaken `${file:/dev/zero}` or a log file
/// cannot fill the memory.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// The most text all the references of one plan may add up to. A plan is held by every
/// worker and sent to each of them; 8 MiB is far above any real plan's secrets and well
/// below what would strain a process.
pub const MAX_RESOLVED_BYTES: usize = 8 * 1024 * 1024;

/// Environment names that start with this are set by the Kubernetes operator for itself
/// (session token, Redis URL, worker name): a LoadTest's plan may not read them...
pub const RESERVED_ENV_PREFIX: &str = "PACER_";
/// ...except the credentials the LoadTest asked for (`spec.credentials`), which the operator
/// gives the workers as `PACER_AUTH_<AUTH>_<WHAT>`.
pub const CREDENTIAL_ENV_PREFIX: &str = "PACER_AUTH_";

/// Values shorter than this are redacted only where they stand quoted or alone in a
/// message: a one-letter value is in every sentence, and hides nothing worth hiding.
const MIN_REDACTED_CHARS: usize = 4;

/// What the references of a plan may read, by who wrote the plan.
pub enum Refs<'a> {
    /// The plan was written by whoever runs this process (`pacer run`, `pacer controller`):
    /// `${env:}` reads `env`, `${file:}` reads files (relative paths from `base_dir`), at most
    /// [`MAX_FILE_BYTES`] of a regular file.
    Local {
        env: EnvLookup<'a>,
        /// Base directory of relative `${file:}` paths (the plan file's directory).
        base_dir: PathBuf,
    },
    /// The plan is a LoadTest's (the operator, `pacer validate`/`pacer submit` of a manifest,
    /// a worker pod): `${file:}` is refused before anything is read, and `${env:NAME}` only
    /// resolves names `provided` answers for (the LoadTest's credentials and
    /// `workerTemplate.env`).
    Remote { provided: EnvLookup<'a> },
}

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// A worker pod's environment as a LoadTest's plan may see it: every variable but the
/// operator's own (`PACER_…`, except the credentials `PACER_AUTH_…`).
fn pod_env(name: &str) -> Option<String> {
    if is_reserved_env(name) {
        return None;
    }
    std::env::var(name).ok()
}

/// Set by the operator for itself: never readable by a LoadTest's plan.
pub fn is_reserved_env(name: &str) -> bool {
    name.starts_with(RESERVED_ENV_PREFIX) && !name.starts_with(CREDENTIAL_ENV_PREFIX)
}

impl Default for Refs<'_> {
    /// This process's environment and files, relative to the current directory.
    fn default() -> Self {
        Refs::Local {
            env: &process_env,
            base_dir: PathBuf::from("."),
        }
    }
}

impl Refs<'_> {
    /// A worker pod of a LoadTest: its own environment, the operator's variables excepted;
    /// never a file.
    pub fn worker_pod() -> Refs<'static> {
        Refs::Remote { provided: &pod_env }
    }

    /// The policy for a LoadTest manifest's plan read here: its author is not this machine's
    /// operator, so files are refused whatever `self` allowed; names resolve as before.
    pub fn for_manifest(&self) -> Refs<'_> {
        match self {
            Refs::Local { env, .. } => Refs::Remote { provided: *env },
            Refs::Remote { provided } => Refs::Remote {
                provided: *provided,
            },
        }
    }

    /// The same policy, borrowed.
    pub fn reborrow(&self) -> Refs<'_> {
        match self {
            Refs::Local { env, base_dir } => Refs::Local {
                env: *env,
                base_dir: base_dir.clone(),
            },
            Refs::Remote { provided } => Refs::Remote {
                provided: *provided,
            },
        }
    }

    /// Replace references in every string of `v`. Errors carry the field path; the
    /// [`Redactor`] knows what was resolved, to keep it out of later errors.
    pub fn resolve(&self, v: &mut Value) -> (Redactor, Vec<FieldError>) {
        let mut r = Resolution::default();
        self.walk(v, String::new(), &mut r);
        (Redactor { refs: r.resolved }, r.errors)
    }

    fn walk(&self, v: &mut Value, path: String, r: &mut Resolution) {
        match v {
            Value::String(s) if s.contains('$') => match self.resolve_str(s, &path, r) {
                Ok(out) => *s = out,
                Err(msg) => r.errors.push(FieldError::new(path, msg)),
            },
            Value::Array(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    self.walk(item, format!("{path}[{i}]"), r);
                }
            }
            Value::Object(map) => {
                for (k, item) in map.iter_mut() {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    self.walk(item, p, r);
                }
            }
            _ => {}
        }
    }

    /// The one parser of references: `$${` is a literal `${`, `${kind:arg}` a reference,
    /// any other `$` itself.
    fn resolve_str(&self, s: &str, path: &str, r: &mut Resolution) -> Result<String, String> {
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            let tail = &rest[i..];
            if let Some(t) = tail.strip_prefix("$${") {
                out.push_str("${");
                rest = t;
                continue;
            }
            let Some(body) = tail.strip_prefix("${") else {
                out.push('$');
                rest = &tail[1..];
                continue;
            };
            let end = body
                .find('}')
                .ok_or("unclosed `${` (write `$${` for a literal `${`)")?;
            let reference = &body[..end];
            let written = format!("${{{reference}}}");
            let value = match reference.split_once(':') {
                Some(("env", arg)) => self.env_value(arg)?,
                Some(("file", arg)) => self.file_value(arg, &written)?,
                Some((other, _)) => {
                    return Err(format!(
                        "unknown reference kind {other:?} in `{written}`: use env or file"
                    ));
                }
                None => {
                    return Err(format!(
                        "bad reference `{written}`: use ${{env:NAME}} or ${{file:PATH}}"
                    ));
                }
            };
            r.total_bytes = r.total_bytes.saturating_add(value.len());
            if r.total_bytes > MAX_RESOLVED_BYTES {
                return Err(format!(
                    "`{written}`: the plan's references add up to more than {MAX_RESOLVED_BYTES} bytes"
                ));
            }
            out.push_str(&value);
            r.resolved.push(Resolved {
                path: path.to_string(),
                reference: written,
                value,
            });
            rest = &body[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// `NAME` or `NAME:-fallback` (the fallback when NAME is unset or empty).
    fn env_value(&self, arg: &str) -> Result<String, String> {
        let (name, fallback) = match arg.split_once(":-") {
            Some((n, f)) => (n, Some(f)),
            None => (arg, None),
        };
        if !is_env_name(name) {
            return Err(format!(
                "`${{env:{name}}}`: an environment variable name uses letters, digits, `_`, `.` and `-`"
            ));
        }
        let found = match self {
            Refs::Local { env, .. } => env(name),
            Refs::Remote { provided } => provided(name),
        };
        match (found.filter(|v| !v.is_empty()), fallback) {
            (Some(v), _) => Ok(v),
            (None, Some(f)) => Ok(f.to_string()),
            (None, None) => Err(match self {
                Refs::Local { .. } => format!("environment variable {name} is not set"),
                Refs::Remote { .. } => format!(
                    "environment variable {name} is not set in the worker pods: a LoadTest gives its plan only the variables of spec.credentials (PACER_AUTH_<AUTH>_CLIENT_ID, _CLIENT_SECRET, _TOKEN) and spec.workerTemplate.env"
                ),
            }),
        }
    }

    fn file_value(&self, arg: &str, written: &str) -> Result<String, String> {
        let base_dir = match self {
            Refs::Local { base_dir, .. } => base_dir,
            Refs::Remote { .. } => {
                return Err(format!(
                    "`{written}`: ${{file:}} references cannot be used in a LoadTest (nothing was read): give the value with spec.credentials or spec.workerTemplate.env and use ${{env:NAME}}"
                ));
            }
        };
        let p = Path::new(arg);
        let p = if p.is_absolute() {
            p.to_path_buf()
        } else {
            base_dir.join(p)
        };
        read_capped(&p).map_err(|why| format!("cannot read file {}: {why}", p.display()))
    }
}

/// A regular file of at most [`MAX_FILE_BYTES`], as UTF-8 text, trailing newlines trimmed.
/// The type is checked on the opened file (not the path), so a swap after the check reads
/// nothing else; devices and FIFOs are refused before a byte is read.
fn read_capped(p: &Path) -> Result<String, String> {
    let file = std::fs::File::open(p).map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!("larger than {MAX_FILE_BYTES} bytes"));
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("larger than {MAX_FILE_BYTES} bytes"));
    }
    let text = String::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

#[derive(Default)]
struct Resolution {
    resolved: Vec<Resolved>,
    errors: Vec<FieldError>,
    total_bytes: usize,
}

/// One reference resolved: where, as written, and to what.
struct Resolved {
    path: String,
    reference: String,
    value: String,
}

/// Keeps resolved values out of error messages: an error on a field that holds a reference
/// names the reference ("the value of ${env:TOKEN}"), and any resolved value met in any
/// message is replaced by its reference's name.
#[derive(Default)]
pub struct Redactor {
    refs: Vec<Resolved>,
}

impl Redactor {
    /// Nothing was resolved.
    pub fn is_empty(&self) -> bool {
        self.refs.is_empty()
    }

    pub fn redact(&self, mut e: FieldError) -> FieldError {
        if self.refs.is_empty() {
            return e;
        }
        let mut here: Vec<&str> = Vec::new();
        // Longest first, so a value holding another is replaced whole.
        let mut refs: Vec<&Resolved> = self.refs.iter().collect();
        refs.sort_by_key(|r| std::cmp::Reverse(r.value.len()));
        for r in refs {
            let same_field = r.path == e.path;
            if same_field && !here.contains(&r.reference.as_str()) {
                here.push(&r.reference);
            }
            e.message = hide(&e.message, &r.value, &r.reference);
        }
        if !here.is_empty() {
            e.message = format!("the value of {}: {}", here.join(" and "), e.message);
        }
        e
    }
}

/// `msg` without `value` in any of the forms a message prints it in (Rust-debug or JSON
/// quoted, in backticks, and, for values of [`MIN_REDACTED_CHARS`] or more, as is or
/// escaped inside other text).
fn hide(msg: &str, value: &str, reference: &str) -> String {
    if value.is_empty() {
        return msg.to_string();
    }
    let label = format!("<the value of {reference}>");
    let json = serde_json::to_string(value).unwrap_or_default();
    let mut out = msg.to_string();
    for quoted in [format!("{value:?}"), json.clone(), format!("`{value}`")] {
        out = out.replace(&quoted, &label);
    }
    if value.chars().count() >= MIN_REDACTED_CHARS {
        let json_inner = json
            .strip_prefix('"')
            .and_then(|j| j.strip_suffix('"'))
            .unwrap_or(value)
            .to_string();
        for form in [
            value.escape_debug().to_string(),
            json_inner,
            value.to_string(),
        ] {
            out = out.replace(&form, &label);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        (k == "SECRET").then(|| "s3cr3t-value".to_string())
    }

    fn local() -> Refs<'static> {
        Refs::Local {
            env: &env,
            base_dir: PathBuf::from("."),
        }
    }

    #[test]
    fn resolves_env_and_escapes() {
        let mut v = serde_json::json!({"a": "x-${env:SECRET}-y", "b": ["$${env:SECRET}"], "c": "$5", "d": "${env:NOPE:-http://127.0.0.1:1}"});
        let (_, errs) = local().resolve(&mut v);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(v["a"], "x-s3cr3t-value-y");
        assert_eq!(v["b"][0], "${env:SECRET}");
        assert_eq!(v["c"], "$5");
        assert_eq!(v["d"], "http://127.0.0.1:1");
    }

    #[test]
    fn missing_env_names_field_not_value() {
        let mut v = serde_json::json!({"auth": [{"clientSecret": "${env:NOPE}"}]});
        let (_, errs) = local().resolve(&mut v);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path, "auth[0].clientSecret");
        assert!(errs[0].message.contains("NOPE"));
    }

    #[test]
    fn remote_refuses_files_in_every_form_before_reading() {
        let provided = |_: &str| None;
        let remote = Refs::Remote {
            provided: &provided,
        };
        for s in [
            "${file:/etc/hostname}",
            "$${file:a}${file:/etc/hostname}",
            "x${env:NOPE:-y}${file:/dev/zero}",
        ] {
            let mut v = serde_json::json!({ "target": s });
            let (_, errs) = remote.resolve(&mut v);
            assert_eq!(errs.len(), 1, "{s}");
            assert!(
                errs[0].message.contains("cannot be used in a LoadTest"),
                "{s}"
            );
        }
        // The escaped form alone is a literal, not a reference.
        let mut v = serde_json::json!({ "target": "$${file:/etc/hostname}" });
        let (_, errs) = remote.resolve(&mut v);
        assert!(errs.is_empty());
        assert_eq!(v["target"], "${file:/etc/hostname}");
    }

    #[test]
    fn remote_env_names_only_what_is_provided() {
        let provided = |n: &str| (n == "GIVEN").then(|| "v".to_string());
        let remote = Refs::Remote {
            provided: &provided,
        };
        let mut v = serde_json::json!({ "a": "${env:GIVEN}", "b": "${env:HOME}" });
        let (_, errs) = remote.resolve(&mut v);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path, "b");
        assert!(errs[0].message.contains("spec.workerTemplate.env"));
        assert_eq!(v["a"], "v");
    }

    #[test]
    fn worker_pods_never_read_the_operators_variables() {
        assert!(is_reserved_env("PACER_SESSION_TOKEN"));
        assert!(is_reserved_env("PACER_REDIS_URL"));
        assert!(!is_reserved_env("PACER_AUTH_API_TOKEN"));
        assert!(!is_reserved_env("API_TOKEN"));
    }

    #[test]
    fn devices_and_big_files_are_refused() {
        let e = read_capped(Path::new("/dev/zero")).unwrap_err();
        assert_eq!(e, "not a regular file");
        let dir = std::env::temp_dir().join(format!("pacer-refs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big = dir.join("big");
        std::fs::write(&big, vec![b'a'; MAX_FILE_BYTES as usize + 1]).unwrap();
        assert!(read_capped(&big).unwrap_err().contains("larger than"));
        let ok = dir.join("ok");
        std::fs::write(&ok, "token\n").unwrap();
        assert_eq!(read_capped(&ok).unwrap(), "token");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn redaction_names_the_reference_not_the_value() {
        let mut v = serde_json::json!({ "target": "${env:SECRET}" });
        let (red, errs) = local().resolve(&mut v);
        assert!(errs.is_empty());
        let e = red.redact(FieldError::new(
            "target",
            "not a URL (relative URL without a base): \"s3cr3t-value\"",
        ));
        assert!(!e.message.contains("s3cr3t"), "{}", e.message);
        assert!(
            e.message.starts_with("the value of ${env:SECRET}"),
            "{}",
            e.message
        );
        let other = red.redact(FieldError::new("name", "duplicate name s3cr3t-value"));
        assert!(!other.message.contains("s3cr3t"), "{}", other.message);
    }
}
