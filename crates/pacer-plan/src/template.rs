//! Request templates: `{{uuid}}`, `{{randInt 1 10}}`, `{{isoNow -1h}}`, `{{epochMs}}`,
//! `{{vars.NAME}}`, `{{data.SOURCE.COLUMN}}`, `{{iteration}}`, `{{vu}}`, `{{scenario}}`,
//! `{{worker}}`, `{{attempt}}`.
//!
//! Templates are parsed once, when the plan is validated, so a typo is a plan error with a field
//! path and not a failure in the middle of a test. Rendering (which needs randomness and the
//! clock) is the engine's job.

use std::fmt;
use std::time::Duration;

/// A parsed template: literal text and placeholders.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    Lit(String),
    /// A random UUID v4.
    Uuid,
    /// A random integer in `[lo, hi]`.
    RandInt(i64, i64),
    /// The current UTC time in RFC 3339 with milliseconds, shifted by the signed offset.
    IsoNow {
        offset: Duration,
        negative: bool,
    },
    /// Milliseconds since the Unix epoch.
    EpochMs,
    /// A plan variable or a value extracted earlier in the iteration.
    Var(String),
    /// A column of the row the iteration took from a `data:` source.
    Data {
        source: String,
        column: String,
    },
    /// The iteration number within the scenario on this worker (0-based).
    Iteration,
    /// The VU number (1-based; 0 in arrival-rate executors, which have no VUs).
    Vu,
    Scenario,
    /// The worker index (0 when running alone).
    Worker,
    /// The attempt number of the logical request (1, then 2 for its first retry, ...): a
    /// request that uses it is rendered again for each attempt.
    Attempt,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} at column {column}")]
pub struct TemplateError {
    pub message: String,
    /// 1-based column (in characters) where the bad placeholder starts.
    pub column: usize,
}

impl Template {
    pub fn parse(src: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = src;
        let mut offset = 0usize;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Lit(rest[..open].to_string()));
            }
            let column = src[..offset + open].chars().count() + 1;
            let after = &rest[open + 2..];
            let close = after.find("}}").ok_or_else(|| TemplateError {
                message: "unclosed `{{`".into(),
                column,
            })?;
            let inner = after[..close].trim();
            parts.push(
                parse_placeholder(inner).map_err(|message| TemplateError { message, column })?,
            );
            let consumed = open + 2 + close + 2;
            offset += consumed;
            rest = &rest[consumed..];
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.to_string()));
        }
        Ok(Self { parts })
    }

    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// The template has no placeholders.
    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Lit(_)))
    }

    /// Does the template use `{{attempt}}` (so it is rendered again for each attempt)?
    pub fn uses_attempt(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Attempt))
    }

    /// The `(source, column)` of each `{{data.SOURCE.COLUMN}}`.
    pub fn data_refs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.parts.iter().filter_map(|p| match p {
            Part::Data { source, column } => Some((source.as_str(), column.as_str())),
            _ => None,
        })
    }

    /// Variables this template reads.
    pub fn vars(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(v) => Some(v.as_str()),
            _ => None,
        })
    }
}

fn parse_placeholder(inner: &str) -> Result<Part, String> {
    let mut words = inner.split_whitespace();
    let head = words.next().ok_or("empty placeholder `{{}}`")?;
    let args: Vec<&str> = words.collect();
    let no_args = |p: Part| {
        if args.is_empty() {
            Ok(p)
        } else {
            Err(format!("`{head}` takes no arguments"))
        }
    };
    match head {
        "uuid" => no_args(Part::Uuid),
        "epochMs" => no_args(Part::EpochMs),
        "iteration" => no_args(Part::Iteration),
        "vu" => no_args(Part::Vu),
        "scenario" => no_args(Part::Scenario),
        "worker" => no_args(Part::Worker),
        "attempt" => no_args(Part::Attempt),
        "randInt" => {
            let [lo, hi] = args.as_slice() else {
                return Err("`randInt` takes two integers, e.g. {{randInt 1 10}}".into());
            };
            let lo: i64 = lo
                .parse()
                .map_err(|_| format!("`randInt`: {lo:?} is not an integer"))?;
            let hi: i64 = hi
                .parse()
                .map_err(|_| format!("`randInt`: {hi:?} is not an integer"))?;
            if lo > hi {
                return Err(format!(
                    "`randInt {lo} {hi}`: the low bound is above the high bound"
                ));
            }
            Ok(Part::RandInt(lo, hi))
        }
        "isoNow" => match args.as_slice() {
            [] => Ok(Part::IsoNow {
                offset: Duration::ZERO,
                negative: false,
            }),
            [off] => {
                let (negative, d) = match off.strip_prefix('-') {
                    Some(d) => (true, d),
                    None => (false, off.strip_prefix('+').unwrap_or(off)),
                };
                let offset = humantime::parse_duration(d)
                    .map_err(|_| format!("`isoNow`: {off:?} is not an offset like -1h or +30m"))?;
                if offset > crate::bounds::MAX_TIME_OFFSET {
                    return Err(format!(
                        "`isoNow`: the offset {off} is more than the {} allowed",
                        humantime::format_duration(crate::bounds::MAX_TIME_OFFSET)
                    ));
                }
                Ok(Part::IsoNow { offset, negative })
            }
            _ => Err("`isoNow` takes at most one offset, e.g. {{isoNow -1h}}".into()),
        },
        _ => {
            if let Some(rest) = head.strip_prefix("data.") {
                let Some((source, column)) = rest.split_once('.') else {
                    return Err(format!(
                        "`data.{rest}`: name a source and a column, e.g. {{{{data.users.email}}}}"
                    ));
                };
                let good = |s: &str| {
                    !s.is_empty()
                        && s.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                };
                if !good(source) || !good(column) {
                    return Err(format!(
                        "bad data reference `data.{rest}` (names use A-Z a-z 0-9 _ -)"
                    ));
                }
                return no_args(Part::Data {
                    source: source.to_string(),
                    column: column.to_string(),
                });
            }
            if let Some(name) = head.strip_prefix("vars.") {
                if name.is_empty()
                    || !name
                        .chars()
                        .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
                {
                    return Err(format!("bad variable name {name:?}"));
                }
                return no_args(Part::Var(name.to_string()));
            }
            Err(format!(
                "unknown template function `{head}` (known: uuid, randInt, isoNow, epochMs, vars.NAME, data.SOURCE.COLUMN, iteration, vu, scenario, worker, attempt)"
            ))
        }
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.parts {
            match p {
                Part::Lit(s) => f.write_str(s)?,
                Part::Uuid => f.write_str("{{uuid}}")?,
                Part::RandInt(a, b) => write!(f, "{{{{randInt {a} {b}}}}}")?,
                Part::IsoNow { offset, negative } => {
                    if offset.is_zero() {
                        f.write_str("{{isoNow}}")?
                    } else {
                        let sign = if *negative { "-" } else { "+" };
                        write!(
                            f,
                            "{{{{isoNow {sign}{}}}}}",
                            humantime::format_duration(*offset)
                        )?
                    }
                }
                Part::EpochMs => f.write_str("{{epochMs}}")?,
                Part::Attempt => f.write_str("{{attempt}}")?,
                Part::Var(v) => write!(f, "{{{{vars.{v}}}}}")?,
                Part::Data { source, column } => write!(f, "{{{{data.{source}.{column}}}}}")?,
                Part::Iteration => f.write_str("{{iteration}}")?,
                Part::Vu => f.write_str("{{vu}}")?,
                Part::Scenario => f.write_str("{{scenario}}")?,
                Part::Worker => f.write_str("{{worker}}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_functions() {
        let t = Template::parse(
            "a{{uuid}}b{{ randInt 1 10 }}{{isoNow -1h}}{{isoNow}}{{vars.x}}{{iteration}}{{vu}}{{epochMs}}",
        )
        .unwrap();
        assert_eq!(t.parts().len(), 10);
        assert_eq!(t.vars().collect::<Vec<_>>(), vec!["x"]);
        assert_eq!(Template::parse(&t.to_string()).unwrap(), t);
    }

    #[test]
    fn errors_point_at_the_placeholder() {
        let e = Template::parse("abc {{nope}}").unwrap_err();
        assert_eq!(e.column, 5);
        assert!(e.message.contains("unknown template function `nope`"));
        assert!(Template::parse("{{randInt 5 1}}").is_err());
        assert!(Template::parse("{{randInt x 1}}").is_err());
        assert!(Template::parse("{{uuid").is_err());
        assert!(Template::parse("{{isoNow yesterday}}").is_err());
        assert!(Template::parse("{{}}").is_err());
        assert!(Template::parse("{{isoNow +18446744073709551615s}}").is_err());
        assert!(Template::parse("{{isoNow -36500d}}").is_ok());
    }

    #[test]
    fn data_references() {
        let t = Template::parse("/u/{{data.users.email}}?d={{ data.days.from }}").unwrap();
        assert_eq!(
            t.data_refs().collect::<Vec<_>>(),
            vec![("users", "email"), ("days", "from")]
        );
        assert_eq!(Template::parse(&t.to_string()).unwrap(), t);
        assert!(Template::parse("{{data.users}}").is_err());
        assert!(Template::parse("{{data..x}}").is_err());
        assert!(Template::parse("{{data.users.a.b}}").is_err());
        assert!(Template::parse("{{data.users.email 1}}").is_err());
    }

    #[test]
    fn literal_only() {
        let t = Template::parse("/api/v2/users/me").unwrap();
        assert!(t.is_literal());
    }
}
