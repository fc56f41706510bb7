//! `reserve:` on a limit: headroom pacer leaves unused for everyone else on the same server
//! limit (an organisation's production integrations), as a share (`10%`) or a rate (`2/s`).
//! pacer paces to what the limit allows less the reserve, and where the server reports what is
//! left (rate-limit headers) to what is left after others' traffic less the reserve
//! (`pacer_limiter::headroom`, docs/rate-limiting.md "Headroom").
//!
//! Kept exact (a share in parts per million, a rate as its fraction) so that two declarations
//! of one budget compare equal when they say the same thing ([`crate::budget::definition`]).

use std::fmt;
use std::str::FromStr;

use crate::Rate;

/// Parts per million in a whole: a share is kept in ppm so `12.5%` stays exact.
const PPM: u32 = 1_000_000;
/// The most decimals a share may have (`12.5%`, `0.001%`): ppm is 4 decimals of a percent.
const SHARE_DECIMALS: usize = 4;

/// Headroom pacer leaves unused on a limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reserve {
    /// A share of the declared limit, in parts per million (`10%` is 100 000).
    Share(u32),
    /// A rate of the declared limit's kind (`2/s`).
    Rate(Rate),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "expected a share of the limit (e.g. 10% or 12.5%, below 100%) or a rate (e.g. 2/s), got {0:?}"
)]
pub struct ReserveError(pub String);

impl Reserve {
    /// The reserve as a rate (per second) of a limit declared at `declared` per second.
    pub fn per_sec(&self, declared: f64) -> f64 {
        match self {
            Reserve::Share(ppm) => declared * f64::from(*ppm) / f64::from(PPM),
            Reserve::Rate(r) => r.as_per_sec(),
        }
    }

    /// Why this reserve leaves nothing of a limit of `declared` per second, if it does.
    pub fn problem(&self, declared: f64) -> Option<String> {
        match self {
            Reserve::Share(0) | Reserve::Rate(_) if self.per_sec(declared) <= 0.0 => {
                Some("a reserve of nothing: remove `reserve` instead".into())
            }
            Reserve::Share(_) => None,
            Reserve::Rate(_) if self.per_sec(declared) >= declared => Some(format!(
                "{self} is all of the limit ({declared:.3}/s) or more: nothing would be left for \
                 pacer; reserve less (a share such as 10%, or a rate below the limit)"
            )),
            Reserve::Rate(_) => None,
        }
    }
}

impl FromStr for Reserve {
    type Err = ReserveError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ReserveError(s.to_string());
        let t = s.trim();
        if let Some(pct) = t.strip_suffix('%') {
            let pct = pct.trim();
            let (whole, frac) = pct.split_once('.').unwrap_or((pct, ""));
            if whole.is_empty()
                || whole.len() > 2
                || frac.len() > SHARE_DECIMALS
                || !whole
                    .bytes()
                    .chain(frac.bytes())
                    .all(|b| b.is_ascii_digit())
            {
                return Err(err());
            }
            let whole: u32 = whole.parse().map_err(|_| err())?;
            let mut frac_ppm = 0u32;
            for (i, b) in frac.bytes().enumerate() {
                // 4 decimals of a percent: the first is 1000 ppm, the fourth 1 ppm.
                let place = 10u32.pow(3 - i as u32);
                frac_ppm += u32::from(b - b'0') * place;
            }
            return Ok(Reserve::Share(whole * 10_000 + frac_ppm));
        }
        t.parse::<Rate>().map(Reserve::Rate).map_err(|_| err())
    }
}

impl fmt::Display for Reserve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reserve::Share(ppm) => {
                let (whole, frac) = (ppm / 10_000, ppm % 10_000);
                if frac == 0 {
                    write!(f, "{whole}%")
                } else {
                    let digits = format!("{frac:04}");
                    write!(f, "{whole}.{}%", digits.trim_end_matches('0'))
                }
            }
            Reserve::Rate(r) => write!(f, "{r}"),
        }
    }
}

impl serde::Serialize for Reserve {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Reserve {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Reserve;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a share such as 10% or a rate such as 2/s")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Reserve, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Reserve, E> {
                Err(E::custom(format!(
                    "got the bare number {v}: say a share (\"{v}%\") or a rate (\"{v}/s\")"
                )))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Reserve, E> {
                Err(E::custom(format!(
                    "got the bare number {v}: say a share (e.g. \"10%\") or a rate (e.g. \"2/s\")"
                )))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Reserve, E> {
                Err(E::custom(format!(
                    "got the bare number {v}: say a share (e.g. \"10%\") or a rate (e.g. \"2/s\")"
                )))
            }
        }
        d.deserialize_any(V)
    }
}

impl schemars::JsonSchema for Reserve {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Reserve".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": r"^\s*([0-9]{1,2}(\.[0-9]{1,4})?\s*%|[0-9_]{1,15}\s*/\s*[0-9a-z ]+)\s*$",
            "maxLength": 64,
            "description": "headroom left unused: a share of the limit (10%) or a rate (2/s)"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn shares_and_rates_parse_exactly() {
        assert_eq!("10%".parse(), Ok(Reserve::Share(100_000)));
        assert_eq!(" 12.5 %".parse(), Ok(Reserve::Share(125_000)));
        assert_eq!("0.0001%".parse(), Ok(Reserve::Share(1)));
        assert_eq!("2/s".parse::<Reserve>().map(|r| r.per_sec(10.0)), Ok(2.0));
        assert!((Reserve::Share(100_000).per_sec(50.0) - 5.0).abs() < 1e-12);
        for bad in [
            "",
            "%",
            "100%",
            "-5%",
            "1e3%",
            "10.00001%",
            "ten%",
            "5",
            "5/",
            "x/s",
        ] {
            assert!(bad.parse::<Reserve>().is_err(), "{bad:?}");
        }
        assert_eq!(Reserve::Share(125_000).to_string(), "12.5%");
        assert_eq!(Reserve::Share(100_000).to_string(), "10%");
    }

    #[test]
    fn a_reserve_of_all_or_nothing_is_a_problem() {
        assert!(Reserve::Share(0).problem(10.0).is_some());
        assert!("10/s".parse::<Reserve>().unwrap().problem(10.0).is_some());
        assert!("0/s".parse::<Reserve>().unwrap().problem(10.0).is_some());
        assert!("9/s".parse::<Reserve>().unwrap().problem(10.0).is_none());
        assert!(Reserve::Share(999_999).problem(10.0).is_none());
    }

    fn load(reserve: &str) -> Result<crate::Plan, String> {
        let src = format!(
            "name: t\ntarget: http://127.0.0.1:1\nlimits:\n- {{name: org, limit: 10/s, reserve: {reserve}}}\n\
             scenarios:\n- {{name: s, executor: constant-vus, vus: 1, duration: 1s, \
             requests: [{{name: r, path: /}}]}}\n"
        );
        crate::load_str(&src, "test.yaml", &crate::Refs::default()).map_err(|e| e.to_string())
    }

    #[test]
    fn a_plan_names_the_field_of_a_bad_reserve() {
        let plan = load("'10%'").expect("a valid reserve");
        assert_eq!(plan.limits[0].reserve, Some(Reserve::Share(100_000)));
        for (bad, words) in [
            ("'0%'", "a reserve of nothing"),
            ("10/s", "all of the limit"),
            ("'150%'", "expected a share of the limit"),
            ("10", "bare number"),
            ("1/0s", "expected a share"),
        ] {
            let err = load(bad).expect_err(bad);
            assert!(err.contains("limits[0].reserve"), "{bad}: {err}");
            assert!(err.contains(words), "{bad}: {err}");
        }
        // A rate's period is bounded like a limit's.
        let err = load("1/1000h").expect_err("a period beyond the bounds");
        assert!(err.contains("limits[0].reserve"), "{err}");
    }

    proptest! {
        #[test]
        fn display_parses_back(ppm in 0u32..1_000_000) {
            let r = Reserve::Share(ppm);
            prop_assert_eq!(r.to_string().parse::<Reserve>(), Ok(r));
        }

        #[test]
        fn any_text_parses_or_errs_without_panic(s in "[ -~]{0,20}") {
            let _ = s.parse::<Reserve>();
        }
    }
}
