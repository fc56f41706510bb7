//! Rates as users write them: `40/s`, `300/min`, `2/h`, and `600/10s` for a server's window.
//!
//! A rate is kept as an exact fraction (count per period) so that splitting and scheduling never
//! accumulate rounding error.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// `count` events per `per`. Both are exact; `per` is never zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    count: u64,
    per: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected N/s, N/min, N/h or N/<duration> (e.g. 600/10s), got {0:?}")]
pub struct RateError(pub String);

impl Rate {
    pub fn new(count: u64, per: Duration) -> Option<Self> {
        (!per.is_zero()).then_some(Self { count, per })
    }

    pub fn per_second(count: u64) -> Self {
        Self {
            count,
            per: Duration::from_secs(1),
        }
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The period the count is stated over (the server's window for `600/10s`).
    pub fn per(&self) -> Duration {
        self.per
    }

    pub fn as_per_sec(&self) -> f64 {
        self.count as f64 / self.per.as_secs_f64()
    }

    pub fn is_zero(&self) -> bool {
        self.count == 0
    }

    /// The interval between two events at this rate, in nanoseconds (exact fraction `per/count`).
    pub fn interval_nanos(&self) -> Option<(u128, u128)> {
        (self.count > 0).then_some((self.per.as_nanos(), self.count as u128))
    }

    /// How many events happen in `[0, d)` when the first is at 0: `ceil(d * count / per)`.
    pub fn events_in(&self, d: Duration) -> u64 {
        if self.count == 0 {
            return 0;
        }
        // Saturating: a plan within crate::bounds never comes near; anything else (a spec
        // not yet validated) gets "too many" rather than a panic.
        let Some(num) = d.as_nanos().checked_mul(u128::from(self.count)) else {
            return u64::MAX;
        };
        let den = self.per.as_nanos();
        let n = num.div_ceil(den);
        u64::try_from(n).unwrap_or(u64::MAX)
    }
}

impl FromStr for Rate {
    type Err = RateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || RateError(s.to_string());
        let (n, unit) = s.trim().split_once('/').ok_or_else(err)?;
        let count: u64 = n.trim().replace('_', "").parse().map_err(|_| err())?;
        let unit = unit.trim();
        let per = match unit {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => {
                let d = humantime::parse_duration(unit).map_err(|_| err())?;
                if d.is_zero() {
                    return Err(err());
                }
                d
            }
        };
        Ok(Self { count, per })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.per.as_secs() {
            1 if self.per.subsec_nanos() == 0 => write!(f, "{}/s", self.count),
            60 if self.per.subsec_nanos() == 0 => write!(f, "{}/min", self.count),
            3600 if self.per.subsec_nanos() == 0 => write!(f, "{}/h", self.count),
            _ => write!(f, "{}/{}", self.count, humantime::format_duration(self.per)),
        }
    }
}

impl serde::Serialize for Rate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Rate;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a rate such as 40/s, 300/min or 600/10s")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Rate, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Rate, E> {
                Err(E::custom(format!(
                    "expected N/s, N/min, N/h or N/<duration>, got the bare number {v}: add a unit, e.g. \"{v}/s\""
                )))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Rate, E> {
                self.visit_i64(v as i64)
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Rate, E> {
                Err(E::custom(format!(
                    "expected N/s, N/min, N/h or N/<duration>, got the bare number {v}"
                )))
            }
        }
        d.deserialize_any(V)
    }
}

impl schemars::JsonSchema for Rate {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Rate".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            // Counts of at most 15 digits: crate::bounds says the fastest rate allowed.
            "pattern": r"^\s*[0-9_]{1,15}\s*/\s*[0-9a-z ]+$",
            "maxLength": 64,
            "description": "N/s, N/min, N/h, or N/<duration> for a window (e.g. 600/10s)"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!("40/s".parse::<Rate>().unwrap().as_per_sec(), 40.0);
        assert_eq!("300/min".parse::<Rate>().unwrap().as_per_sec(), 5.0);
        assert_eq!("3600/h".parse::<Rate>().unwrap().as_per_sec(), 1.0);
        let w: Rate = "600/10s".parse().unwrap();
        assert_eq!(w.per(), Duration::from_secs(10));
        assert_eq!(w.as_per_sec(), 60.0);
        assert_eq!(w.to_string(), "600/10s");
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "fast",
            "10",
            "/s",
            "-3/s",
            "1.5/s",
            "10/0s",
            "10/parsec",
            "",
        ] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }

    #[test]
    fn counts_events_exactly() {
        let r: Rate = "200/s".parse().unwrap();
        assert_eq!(r.events_in(Duration::from_secs(10)), 2000);
        let r: Rate = "3/s".parse().unwrap();
        assert_eq!(r.events_in(Duration::from_millis(1001)), 4);
        assert_eq!(r.events_in(Duration::from_secs(1)), 3);
    }
}
