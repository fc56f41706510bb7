//! Durations as users write them (`250ms`, `2m`, `1h30m`), via humantime. Any duration
//! humantime reads is accepted here; how long each field may be is [`crate::bounds`]'.

use std::fmt;
use std::time::Duration;

/// `250ms`, `30s`, `2m`, `1h30m`: the one reading of a duration a user writes, for plan
/// fields, LoadTest fields (`spec.startTimeout`) and the CLI's flags. Unbounded here (an
/// overflowing number is an error, never a wrap): each use states its own bounds.
pub fn parse(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s.trim())
}

/// A duration read from a humantime string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub fn get(self) -> Duration {
        self.0
    }
}

impl From<Duration> for HumanDuration {
    fn from(d: Duration) -> Self {
        Self(d)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl serde::Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 250ms, 30s or 2m")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                parse(v).map(HumanDuration).map_err(|e| {
                    E::custom(format!(
                        "expected a duration like 250ms, 30s or 2m, got {v:?} ({e})"
                    ))
                })
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<HumanDuration, E> {
                Err(E::custom(format!(
                    "expected a duration with a unit (e.g. \"{v}s\" or \"{v}ms\"), got the bare number {v}"
                )))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<HumanDuration, E> {
                self.visit_i64(v as i64)
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<HumanDuration, E> {
                Err(E::custom(format!(
                    "expected a duration with a unit (e.g. \"1500ms\"), got the bare number {v}"
                )))
            }
        }
        d.deserialize_any(V)
    }
}

impl schemars::JsonSchema for HumanDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            // At most 9 digits a number and 6 parts: what the API server can refuse before
            // pacer's own bounds (crate::bounds) say the rest.
            "pattern": r"^\s*([0-9]{1,9}\s*[a-zµ]+\s*){1,6}$",
            "maxLength": 64,
            "description": "a duration such as 250ms, 30s, 2m or 1h30m"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_reads_what_users_write_and_never_wraps() {
        use std::time::Duration;
        assert_eq!(parse(" 90s").ok(), Some(Duration::from_secs(90)));
        assert_eq!(parse("1m30s").ok(), Some(Duration::from_secs(90)));
        assert_eq!(parse("500ms").ok(), Some(Duration::from_millis(500)));
        for bad in [
            "5x",
            "",
            "s",
            "18446744073709551615s1s",
            "18446744073709551615h",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
