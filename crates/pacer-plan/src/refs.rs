//! `${env:NAME}`, `${env:NAME:-fallback}` and `${file:PATH}` references in plan strings, resolved when the plan is
//! loaded so that secrets stay out of plan files. `$${` writes a literal `${`.
//!
//! The resolved values are never echoed in errors: a missing variable is named, its would-be
//! value is not.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::FieldError;

/// Where references are resolved from. Tests pass their own environment.
pub struct RefResolver<'a> {
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// Base directory for relative `${file:...}` paths (the plan file's directory).
    pub base_dir: PathBuf,
}

impl RefResolver<'_> {
    /// Replace references in every string of `v`; errors carry the field path.
    pub fn resolve(&self, v: &mut Value, path: &str, errors: &mut Vec<FieldError>) {
        match v {
            Value::String(s) if s.contains("${") => match self.resolve_str(s) {
                Ok(r) => *s = r,
                Err(msg) => errors.push(FieldError::new(path, msg)),
            },
            Value::Array(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    self.resolve(item, &format!("{path}[{i}]"), errors);
                }
            }
            Value::Object(map) => {
                for (k, item) in map.iter_mut() {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    self.resolve(item, &p, errors);
                }
            }
            _ => {}
        }
    }

    fn resolve_str(&self, s: &str) -> Result<String, String> {
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
            let (kind, arg) = reference.split_once(':').ok_or_else(|| {
                format!("bad reference `${{{reference}}}`: use ${{env:NAME}} or ${{file:PATH}}")
            })?;
            match kind {
                "env" => {
                    // `${env:NAME:-fallback}` uses the fallback when NAME is unset or empty.
                    let (name, fallback) = match arg.split_once(":-") {
                        Some((n, f)) => (n, Some(f)),
                        None => (arg, None),
                    };
                    let v = match ((self.env)(name).filter(|v| !v.is_empty()), fallback) {
                        (Some(v), _) => v,
                        (None, Some(f)) => f.to_string(),
                        (None, None) => {
                            return Err(format!("environment variable {name} is not set"));
                        }
                    };
                    out.push_str(&v);
                }
                "file" => {
                    let p = Path::new(arg);
                    let p = if p.is_absolute() {
                        p.to_path_buf()
                    } else {
                        self.base_dir.join(p)
                    };
                    let v = std::fs::read_to_string(&p)
                        .map_err(|e| format!("cannot read file {}: {e}", p.display()))?;
                    out.push_str(v.trim_end_matches(['\n', '\r']));
                }
                other => {
                    return Err(format!(
                        "unknown reference kind {other:?} in `${{{reference}}}`: use env or file"
                    ));
                }
            }
            rest = &body[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        (k == "SECRET").then(|| "s3cr3t".to_string())
    }

    #[test]
    fn resolves_env_and_escapes() {
        let r = RefResolver {
            env: &env,
            base_dir: PathBuf::from("."),
        };
        let mut v = serde_json::json!({"a": "x-${env:SECRET}-y", "b": ["$${env:SECRET}"], "c": "$5", "d": "${env:NOPE:-http://127.0.0.1:1}"});
        let mut errs = vec![];
        r.resolve(&mut v, "", &mut errs);
        assert!(errs.is_empty());
        assert_eq!(v["a"], "x-s3cr3t-y");
        assert_eq!(v["b"][0], "${env:SECRET}");
        assert_eq!(v["c"], "$5");
        assert_eq!(v["d"], "http://127.0.0.1:1");
    }

    #[test]
    fn missing_env_names_field_not_value() {
        let r = RefResolver {
            env: &env,
            base_dir: PathBuf::from("."),
        };
        let mut v = serde_json::json!({"auth": [{"clientSecret": "${env:NOPE}"}]});
        let mut errs = vec![];
        r.resolve(&mut v, "", &mut errs);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path, "auth[0].clientSecret");
        assert!(errs[0].message.contains("NOPE"));
    }
}
