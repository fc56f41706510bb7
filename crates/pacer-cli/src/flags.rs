//! Value parsers shared by the subcommands' flags, so that a duration flag means the same
//! thing, and is bounded the same way, in `run`, `controller` and `worker`.

use std::time::Duration;

/// The longest duration a flag takes: every duration flag is a timeout or a period of a
/// process that talks to others, and a day is longer than any of them needs; the bound keeps
/// `Instant + Duration` from overflowing.
pub const MAX_FLAG_DURATION: Duration = Duration::from_secs(24 * 3600);

/// `500ms`, `5s`, `2m`, `1h30m`: at most [`MAX_FLAG_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d =
        pacer_plan::duration::parse(s).map_err(|e| format!("{s:?}: {e} (e.g. 500ms, 5s, 2m)"))?;
    if d > MAX_FLAG_DURATION {
        return Err(format!("{s:?}: at most 24h"));
    }
    Ok(d)
}

/// `pacer worker --lost-after`: a duration within the worker's bounds
/// (`pacer_worker::check_lost_after`).
pub fn parse_lost_after(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    pacer_worker::check_lost_after("--lost-after", d).map_err(|e| e.to_string())
}

/// `--weight`: a test's weight on its budget, by the plan's rule for `weight:`.
pub fn parse_weight(s: &str) -> Result<f64, String> {
    let w: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: not a number (e.g. 1, 3, 0.5)"))?;
    match pacer_plan::budget::weight_problem(w) {
        Some(p) => Err(p),
        None => Ok(w),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_after_is_a_bounded_duration() {
        assert_eq!(parse_lost_after("30s"), Ok(Duration::from_secs(30)));
        assert!(parse_lost_after("1s").unwrap_err().contains("--lost-after"));
        assert!(parse_lost_after("2h").is_err());
        assert!(parse_lost_after("soon").is_err());
    }

    #[test]
    fn weights_are_bounded_numbers() {
        assert_eq!(parse_weight("3"), Ok(3.0));
        assert_eq!(parse_weight(" 0.5"), Ok(0.5));
        for bad in ["0", "-1", "1001", "NaN", "inf", "heavy", ""] {
            assert!(parse_weight(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_are_bounded() {
        assert_eq!(parse_duration(" 5s"), Ok(Duration::from_secs(5)));
        assert!(parse_duration("25h").unwrap_err().contains("at most 24h"));
        assert!(parse_duration("18446744073709551615s").is_err());
        assert!(parse_duration("soon").unwrap_err().contains("e.g."));
    }
}
