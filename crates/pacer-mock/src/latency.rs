//! Service time of the mock: sampling the configured latency distribution, and the periodic
//! stall windows that hold every response (to show coordinated omission in clients).

use std::str::FromStr;
use std::time::Duration;

use rand::Rng;

use crate::config::{LatencyConfig, StallConfig, parse_duration};

/// z-score of the 99th percentile of the standard normal distribution.
const Z_P99: f64 = 2.326_347_874_040_841;
/// No sample exceeds this, whatever the tail of the distribution says.
const MAX_SAMPLE_SECS: f64 = 60.0;

impl LatencyConfig {
    /// Draws one service time.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> Duration {
        match self {
            LatencyConfig::None => Duration::ZERO,
            LatencyConfig::Fixed { value } => *value,
            LatencyConfig::Uniform { min, max } => {
                if min >= max {
                    *min
                } else {
                    rng.random_range(*min..=*max)
                }
            }
            LatencyConfig::Normal { mean, stddev } => {
                secs(mean.as_secs_f64() + stddev.as_secs_f64() * standard_normal(rng))
            }
            LatencyConfig::Lognormal { median, p99 } => {
                let m = median.as_secs_f64();
                if m <= 0.0 {
                    return Duration::ZERO;
                }
                let sigma = (p99.as_secs_f64() / m).ln() / Z_P99;
                secs(m * (sigma * standard_normal(rng)).exp())
            }
            LatencyConfig::Exponential { mean } => {
                // 1 - u is in (0, 1], so the logarithm is finite.
                let u: f64 = 1.0 - rng.random::<f64>();
                secs(-mean.as_secs_f64() * u.ln())
            }
        }
    }

    pub(crate) fn is_none(&self) -> bool {
        matches!(self, LatencyConfig::None)
            || matches!(self, LatencyConfig::Fixed { value } if value.is_zero())
    }
}

/// Box-Muller: one standard normal sample from two uniform ones.
fn standard_normal<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Seconds to a duration, clamped to `[0, 60 s]` so no distribution tail can panic or hang.
fn secs(v: f64) -> Duration {
    if !v.is_finite() || v <= 0.0 {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(v.min(MAX_SAMPLE_SECS))
}

/// `none`, `fixed:10ms`, `uniform:5ms:50ms`, `normal:MEAN:STDDEV`, `lognormal:MEDIAN:P99`,
/// `exponential:MEAN`; a bare duration (`20ms`) means fixed.
impl FromStr for LatencyConfig {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.trim().split(':').collect();
        let d = |i: usize| -> Result<Duration, String> {
            parts
                .get(i)
                .ok_or_else(|| format!("{s:?}: missing parameter {i}"))
                .and_then(|p| parse_duration(p))
        };
        let want = |n: usize| -> Result<(), String> {
            if parts.len() == n {
                Ok(())
            } else {
                Err(format!("{s:?}: {} takes {} parameter(s)", parts[0], n - 1))
            }
        };
        let l = match parts[0].to_ascii_lowercase().as_str() {
            "none" | "off" | "0" => {
                want(1)?;
                LatencyConfig::None
            }
            "fixed" => {
                want(2)?;
                LatencyConfig::Fixed { value: d(1)? }
            }
            "uniform" => {
                want(3)?;
                LatencyConfig::Uniform {
                    min: d(1)?,
                    max: d(2)?,
                }
            }
            "normal" => {
                want(3)?;
                LatencyConfig::Normal {
                    mean: d(1)?,
                    stddev: d(2)?,
                }
            }
            "lognormal" => {
                want(3)?;
                LatencyConfig::Lognormal {
                    median: d(1)?,
                    p99: d(2)?,
                }
            }
            "exponential" => {
                want(2)?;
                LatencyConfig::Exponential { mean: d(1)? }
            }
            _ if parts.len() == 1 => LatencyConfig::Fixed {
                value: parse_duration(parts[0]).map_err(|_| {
                    format!(
                        "{s:?}: expected none, fixed:D, uniform:MIN:MAX, normal:MEAN:SD, \
                         lognormal:MEDIAN:P99, exponential:MEAN or a duration"
                    )
                })?,
            },
            other => return Err(format!("{s:?}: unknown distribution {other:?}")),
        };
        crate::config::validate_latency("latency", &l).map_err(|e| e.to_string())?;
        Ok(l)
    }
}

impl StallConfig {
    /// How long a response ready at `since_start` must still be held, if it falls in a stall
    /// window `[k*every, k*every + for)` with k >= 1.
    pub(crate) fn hold(&self, since_start: Duration) -> Option<Duration> {
        let every = self.every.as_nanos();
        if every == 0 || self.duration.is_zero() {
            return None;
        }
        let now = since_start.as_nanos();
        let k = now / every;
        if k == 0 {
            return None;
        }
        let into = now - k * every;
        let len = self.duration.as_nanos();
        if into < len {
            // Both values are below `every`, which came from a Duration: the cast is lossless.
            Some(Duration::from_nanos((len - into) as u64))
        } else {
            None
        }
    }
}

/// `EVERY:FOR`, e.g. `10s:1s`.
impl FromStr for StallConfig {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (every, dur) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?}: expected EVERY:FOR, e.g. 10s:1s"))?;
        let st = StallConfig {
            every: parse_duration(every)?,
            duration: parse_duration(dur)?,
        };
        crate::config::validate_stall("stall", &st).map_err(|e| e.to_string())?;
        Ok(st)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mean_ms(l: &LatencyConfig, n: usize) -> f64 {
        let mut rng = rand::rng();
        let total: f64 = (0..n).map(|_| l.sample(&mut rng).as_secs_f64()).sum();
        total / n as f64 * 1000.0
    }

    #[test]
    fn distributions_have_the_configured_centre() {
        let ms = Duration::from_millis;
        let u = LatencyConfig::Uniform {
            min: ms(10),
            max: ms(30),
        };
        assert!((mean_ms(&u, 20_000) - 20.0).abs() < 1.0);
        let n = LatencyConfig::Normal {
            mean: ms(50),
            stddev: ms(5),
        };
        assert!((mean_ms(&n, 20_000) - 50.0).abs() < 1.0);
        let e = LatencyConfig::Exponential { mean: ms(20) };
        assert!((mean_ms(&e, 40_000) - 20.0).abs() < 1.5);
        let ln = LatencyConfig::Lognormal {
            median: ms(10),
            p99: ms(100),
        };
        let mut rng = rand::rng();
        let mut v: Vec<Duration> = (0..20_000).map(|_| ln.sample(&mut rng)).collect();
        v.sort();
        let median = v[10_000].as_secs_f64() * 1000.0;
        let p99 = v[19_800].as_secs_f64() * 1000.0;
        assert!((median - 10.0).abs() < 1.0, "median {median}");
        assert!((p99 - 100.0).abs() < 20.0, "p99 {p99}");
    }

    #[test]
    fn parses_specs() {
        assert_eq!("none".parse::<LatencyConfig>(), Ok(LatencyConfig::None));
        assert_eq!(
            "uniform:5ms:50ms".parse::<LatencyConfig>(),
            Ok(LatencyConfig::Uniform {
                min: Duration::from_millis(5),
                max: Duration::from_millis(50)
            })
        );
        assert_eq!(
            "20ms".parse::<LatencyConfig>(),
            Ok(LatencyConfig::Fixed {
                value: Duration::from_millis(20)
            })
        );
        assert!("uniform:50ms:5ms".parse::<LatencyConfig>().is_err());
        assert!("gamma:1s".parse::<LatencyConfig>().is_err());
        assert!("fixed".parse::<LatencyConfig>().is_err());
        assert!("".parse::<LatencyConfig>().is_err());
    }

    #[test]
    fn stall_windows() {
        let s: StallConfig = "10s:1s".parse().unwrap();
        let at = Duration::from_millis;
        assert_eq!(s.hold(at(500)), None);
        assert_eq!(s.hold(at(9_999)), None);
        assert_eq!(s.hold(at(10_000)), Some(at(1000)));
        assert_eq!(s.hold(at(10_400)), Some(at(600)));
        assert_eq!(s.hold(at(11_000)), None);
        assert_eq!(s.hold(at(20_900)), Some(at(100)));
        assert!("1s:1s".parse::<StallConfig>().is_err());
    }
}
