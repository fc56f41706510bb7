//! JMeter's `${...}` expressions to pacer templates (`crates/pacer-plan/src/template.rs`).
//!
//! `${name}` is a variable (`{{vars.name}}`); `${__P(name,default)}` a property (`-Jname=`),
//! which becomes a plan variable read from the environment (`${env:name:-default}`), the
//! plan's way to take a value from the command line; `${__Random(a,b)}`, `${__UUID()}`,
//! `${__time()}` and `${__threadNum}` have template equivalents. Any other function is kept as
//! literal text (`$${__fn(..)}`, which pacer sends as written) and reported.
//!
//! Literal text is escaped for the plan's reference syntax (`${` -> `$${`), so a recorded or
//! written `${` is never read as `${env:..}`. pacer's templates have no escape for `{{`: text
//! containing one is flagged for the caller to report.

/// A converted string: the template text and what it needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Converted {
    /// The template (references escaped).
    pub text: String,
    /// Variables it reads (`{{vars.NAME}}`), as written in the template.
    pub vars: Vec<String>,
    /// JMeter properties it reads: (variable name, property name, default).
    pub props: Vec<Property>,
    /// Functions kept as literal text (e.g. `__groovy`).
    pub unsupported: Vec<String>,
    /// The literal text contains `{{`, which a template would read as a placeholder.
    pub has_braces: bool,
}

/// A JMeter property read with `${__P(name,default)}` or `${__property(name,,default)}`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Property {
    /// The plan variable that stands for it.
    pub var: String,
    pub name: String,
    pub default: String,
}

/// JMeter's value for `${__P(name)}` when the property is unset and no default is given.
const PROPERTY_DEFAULT: &str = "1";

/// A name as a template variable (`{{vars.NAME}}`: letters, digits, `_`, `-`).
pub fn var_name(raw: &str) -> String {
    let s: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() { "_".into() } else { s }
}

/// Escape literal text for a plan string: `${` is written `$${`.
pub fn escape_literal(s: &str) -> String {
    s.replace("${", "$${")
}

/// Convert a JMeter string.
pub fn convert(raw: &str) -> Converted {
    let mut c = Converted::default();
    let mut rest = raw;
    while let Some(i) = rest.find("${") {
        push_literal(&mut c, &rest[..i]);
        let after = &rest[i + 2..];
        let Some(end) = closing_brace(after) else {
            // No closing brace: literal text.
            push_literal(&mut c, &rest[i..]);
            rest = "";
            break;
        };
        let inner = &after[..end];
        expression(&mut c, inner);
        rest = &after[end + 1..];
    }
    push_literal(&mut c, rest);
    c
}

fn push_literal(c: &mut Converted, s: &str) {
    if s.contains("{{") || (c.text.ends_with('{') && s.starts_with('{')) {
        c.has_braces = true;
    }
    c.text.push_str(&escape_literal(s));
}

/// The index of the `}` closing an expression opened just before `s` (nested `${..}` and
/// parentheses allowed).
fn closing_brace(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, ch) in s.char_indices() {
        match ch {
            '{' => depth = depth.checked_add(1)?,
            '}' if depth == 0 => return Some(i),
            '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

fn expression(c: &mut Converted, inner: &str) {
    let trimmed = inner.trim();
    let Some(call) = trimmed.strip_prefix("__") else {
        let name = var_name(trimmed);
        c.text.push_str(&format!("{{{{vars.{name}}}}}"));
        c.vars.push(name);
        return;
    };
    let (fname, args) = match call.split_once('(') {
        Some((f, a)) => (f.trim(), split_args(a.strip_suffix(')').unwrap_or(a))),
        None => (call.trim(), Vec::new()),
    };
    let arg = |i: usize| args.get(i).map(|s| s.trim()).unwrap_or("");
    match fname {
        "P" | "property" => {
            let name = arg(0);
            // __property(name, var, default): the default is the third argument. An omitted
            // default is JMeter's "1"; an empty one (`${__P(token,)}`) is empty.
            let at = if fname == "P" { 1 } else { 2 };
            let default = match args.get(at) {
                Some(d) => d.trim(),
                None => PROPERTY_DEFAULT,
            };
            if name.is_empty() {
                return unsupported(c, inner);
            }
            let var = var_name(name);
            c.text.push_str(&format!("{{{{vars.{var}}}}}"));
            c.vars.push(var.clone());
            c.props.push(Property {
                var,
                name: name.to_string(),
                default: default.to_string(),
            });
        }
        "Random" => match (arg(0).parse::<i64>(), arg(1).parse::<i64>()) {
            (Ok(lo), Ok(hi)) if lo <= hi && args.len() <= 2 => {
                c.text.push_str(&format!("{{{{randInt {lo} {hi}}}}}"))
            }
            _ => unsupported(c, inner),
        },
        "UUID" if args.iter().all(|a| a.trim().is_empty()) => c.text.push_str("{{uuid}}"),
        "time" if args.iter().all(|a| a.trim().is_empty()) => c.text.push_str("{{epochMs}}"),
        "threadNum" if args.iter().all(|a| a.trim().is_empty()) => c.text.push_str("{{vu}}"),
        _ => unsupported(c, inner),
    }
}

fn unsupported(c: &mut Converted, inner: &str) {
    c.unsupported.push(format!("${{{inner}}}"));
    c.text.push_str(&escape_literal(&format!("${{{inner}}}")));
    if inner.contains("{{") {
        c.has_braces = true;
    }
}

/// Split a function's arguments at top-level commas (`\,` is a literal comma, as in JMeter).
fn split_args(s: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut depth = 0usize;
    let mut chars = s.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '\\' if chars.peek() == Some(&',') => {
                chars.next();
                push_char(&mut out, ',');
            }
            '(' | '{' => {
                depth = depth.saturating_add(1);
                push_char(&mut out, ch);
            }
            ')' | '}' => {
                depth = depth.saturating_sub(1);
                push_char(&mut out, ch);
            }
            ',' if depth == 0 => out.push(String::new()),
            _ => push_char(&mut out, ch),
        }
    }
    out
}

fn push_char(out: &mut [String], ch: char) {
    if let Some(last) = out.last_mut() {
        last.push(ch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_properties_and_functions() {
        let c = convert("/api/${version}/users/${__P(user,42)}?n=${__Random(1,10)}&id=${__UUID()}");
        assert_eq!(
            c.text,
            "/api/{{vars.version}}/users/{{vars.user}}?n={{randInt 1 10}}&id={{uuid}}"
        );
        assert_eq!(c.vars, vec!["version", "user"]);
        assert_eq!(c.props[0].default, "42");
        assert_eq!(convert("${__P(a)}").props[0].default, "1");
        assert_eq!(convert("${__P(a,)}").props[0].default, "");
        assert!(c.unsupported.is_empty());
        assert!(pacer_plan::Template::parse(&c.text).is_ok());
    }

    #[test]
    fn unknown_functions_and_stray_dollars_stay_literal() {
        let c = convert("a ${__groovy(1+1)} b ${ c $x");
        assert_eq!(c.text, "a $${__groovy(1+1)} b $${ c $x");
        assert_eq!(c.unsupported, vec!["${__groovy(1+1)}"]);
        assert!(!convert("x").has_braces);
        assert!(convert("{{x}}").has_braces);
    }

    #[test]
    fn nested_expressions() {
        let c = convert("${__P(host,${default})}");
        assert_eq!(c.props[0].default, "${default}");
        assert_eq!(c.text, "{{vars.host}}");
    }
}
