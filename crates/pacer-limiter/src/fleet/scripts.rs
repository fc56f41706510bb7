//! The Lua scripts (in `lua/`, compiled in) and strict parsers of their replies. Redis replies
//! are untrusted input: a reply of the wrong shape is an error naming Redis, never a panic.

use std::sync::LazyLock;
use std::time::Duration;

use redis::{Script, Value};

use super::FleetError;

/// Grants leases (see `lua/lease.lua`).
pub(crate) static LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/state.lua"),
        include_str!("lua/lease.lua")
    ))
});
/// Fleet-wide pauses on a server's Retry-After (see `lua/feedback.lua`).
pub(crate) static FEEDBACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/state.lua"),
        include_str!("lua/feedback.lua")
    ))
});
/// An adaptive limit's counters and learner, and the learned rate (see `lua/learn.lua`).
pub(crate) static LEARN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/state.lua"),
        include_str!("lua/learn.lua")
    ))
});
pub(crate) static HEARTBEAT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/heartbeat.lua")));
pub(crate) static LEAVE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/leave.lua")));
pub(crate) static TOKEN_PUT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/token_put.lua")));
/// Records or compares a budget's limit definitions (see `lua/declare.lua`).
pub(crate) static DECLARE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/declare.lua")));
/// Adds slots granted to `<tag>:granted` (see `lua/granted.lua`, `notes.rs`).
pub(crate) static GRANTED: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/granted.lua")));
/// Records the fleet's last 429 (see `lua/last429.lua`, `notes.rs`).
pub(crate) static LAST_429: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/last429.lua")));
/// Reads a budget's status (see `lua/status.lua`, `status.rs`).
pub(crate) static STATUS: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/status.lua")));
pub(crate) static COMPARE_AND_DELETE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/compare_and_delete.lua")));

/// What `lease.lua` answered.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct LeaseReply {
    /// Slots granted, each as a delay from the moment Redis decided.
    pub offsets: Vec<Duration>,
    /// Nothing granted: ask again after this.
    pub wait: Duration,
    /// Per limit of the request: how long its Retry-After pause still holds (then nothing is
    /// granted).
    pub pauses: Vec<Duration>,
    /// Per limit of the request: the share of the ceiling paced at and the share measured to
    /// pass, as the fleet's learner wrote them (declared limits: 1, 0).
    pub factors: Vec<f64>,
    pub sustained: Vec<f64>,
    /// Per limit of the request: the slots the whole fleet (or budget) was granted on it before
    /// this lease's, which are the next ones of its schedule (`fleet/server.rs` tells the
    /// fleet's own use from others' traffic with it).
    pub before: Vec<u64>,
}

/// What `feedback.lua` answered: per limit, the remaining pause.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct FeedbackReply {
    pub pauses: Vec<Duration>,
}

/// The longest encoded learner accepted from Redis (one is about 150 bytes).
pub(crate) const MAX_LEARNER_TEXT: usize = 1024;

/// What `learn.lua` answered.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct LearnReply {
    /// This process is the fleet's learner for the limit now (the rest is empty otherwise).
    pub learner: bool,
    /// Redis' clock (microseconds): the fleet's one clock for the learner.
    pub now_us: u64,
    /// The version of the stored learner.
    pub version: u64,
    /// The fleet's answers since the learner's last turn.
    pub accepted: u64,
    pub refused: u64,
    /// A server's Retry-After paused the limit since.
    pub paused: bool,
    /// The rate a server stated last since (per second).
    pub stated: Option<f64>,
    /// The caller's learner is the one stored last: it continues with it.
    pub in_step: bool,
    /// Otherwise the stored learner to continue from (`None`: none stored).
    pub stored: Option<String>,
}

fn malformed(op: &'static str, what: impl Into<String>) -> FleetError {
    FleetError::Reply {
        op,
        what: what.into(),
    }
}

fn int(op: &'static str, v: &Value, field: &str) -> Result<i64, FleetError> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| malformed(op, format!("{field} is not an integer"))),
        _ => Err(malformed(op, format!("{field} is not an integer"))),
    }
}

fn non_negative_us(op: &'static str, v: &Value, field: &str) -> Result<Duration, FleetError> {
    let i = int(op, v, field)?;
    u64::try_from(i)
        .map(Duration::from_micros)
        .map_err(|_| malformed(op, format!("{field} is negative")))
}

fn array<'a>(op: &'static str, v: &'a Value, field: &str) -> Result<&'a [Value], FleetError> {
    match v {
        Value::Array(a) => Ok(a),
        // Lua's empty table comes back as an empty array or (RESP3) nil-like; accept nil as empty.
        Value::Nil => Ok(&[]),
        _ => Err(malformed(op, format!("{field} is not an array"))),
    }
}

fn factors(op: &'static str, v: &Value, field: &str, n: usize) -> Result<Vec<f64>, FleetError> {
    let a = array(op, v, field)?;
    if a.len() != n {
        return Err(malformed(
            op,
            format!("{field} has {} entries for {n} limits", a.len()),
        ));
    }
    a.iter()
        .map(|x| {
            let ppm = int(op, x, field)?;
            if !(0..=1_000_000).contains(&ppm) {
                return Err(malformed(op, format!("{field} {ppm} ppm is out of range")));
            }
            Ok(ppm as f64 / 1e6)
        })
        .collect()
}

/// Parse `lease.lua`'s reply for a request of `n` limits that asked for `want` tokens, no slot
/// later than `max_ahead`.
pub(crate) fn parse_lease(
    v: &Value,
    n: usize,
    want: u32,
    max_ahead: Duration,
) -> Result<LeaseReply, FleetError> {
    const OP: &str = "the lease script";
    let a = array(OP, v, "the reply")?;
    if a.len() != 7 {
        return Err(malformed(OP, format!("{} fields instead of 7", a.len())));
    }
    let granted = int(OP, &a[0], "granted")?;
    if granted < 0 || granted > i64::from(want) {
        return Err(malformed(
            OP,
            format!("granted {granted} of {want} tokens asked"),
        ));
    }
    let wait = non_negative_us(OP, &a[1], "wait")?;
    let p = array(OP, &a[2], "pauses")?;
    if p.len() != n {
        return Err(malformed(OP, format!("{} pauses for {n} limits", p.len())));
    }
    let pauses = p
        .iter()
        .map(|x| non_negative_us(OP, x, "a pause"))
        .collect::<Result<Vec<_>, _>>()?;
    let factors_v = factors(OP, &a[3], "factors", n)?;
    let sustained = factors(OP, &a[4], "sustained", n)?;
    let offs = array(OP, &a[5], "offsets")?;
    if offs.len() as i64 != granted {
        return Err(malformed(
            OP,
            format!("{} slots for {granted} tokens", offs.len()),
        ));
    }
    let mut offsets = Vec::with_capacity(offs.len());
    let mut last = Duration::ZERO;
    for o in offs {
        let d = non_negative_us(OP, o, "a slot")?;
        if d > max_ahead + Duration::from_millis(1) || d < last {
            return Err(malformed(
                OP,
                "a slot is out of order or beyond the lease horizon",
            ));
        }
        last = d;
        offsets.push(d);
    }
    let b = array(OP, &a[6], "before")?;
    if b.len() != n {
        return Err(malformed(OP, format!("{} counts for {n} limits", b.len())));
    }
    let before = b
        .iter()
        .map(|x| {
            u64::try_from(int(OP, x, "a count")?).map_err(|_| malformed(OP, "a count is negative"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(LeaseReply {
        offsets,
        wait,
        pauses,
        factors: factors_v,
        sustained,
        before,
    })
}

pub(crate) fn parse_feedback(v: &Value, n: usize) -> Result<FeedbackReply, FleetError> {
    const OP: &str = "the feedback script";
    let p = array(OP, v, "the reply")?;
    if p.len() != n {
        return Err(malformed(OP, format!("{} pauses for {n} limits", p.len())));
    }
    let pauses = p
        .iter()
        .map(|x| non_negative_us(OP, x, "a pause"))
        .collect::<Result<_, _>>()?;
    Ok(FeedbackReply { pauses })
}

fn count(op: &'static str, v: &Value, field: &str) -> Result<u64, FleetError> {
    u64::try_from(int(op, v, field)?).map_err(|_| malformed(op, format!("{field} is negative")))
}

/// Parse `learn.lua`'s reply.
pub(crate) fn parse_learn(v: &Value) -> Result<LearnReply, FleetError> {
    const OP: &str = "the learner script";
    let a = array(OP, v, "the reply")?;
    let [
        learner,
        now,
        version,
        acc,
        refused,
        paused,
        stated,
        in_step,
        stored,
    ] = a
    else {
        return Err(malformed(OP, format!("{} fields instead of 9", a.len())));
    };
    let flag = |v: &Value, field: &str| match int(OP, v, field)? {
        0 => Ok(false),
        1 => Ok(true),
        x => Err(malformed(OP, format!("{field} is {x}, not 0 or 1"))),
    };
    let stated = text(OP, stated, "the stated rate")?;
    let stated = if stated.is_empty() {
        None
    } else {
        Some(
            stated
                .parse::<f64>()
                .ok()
                .filter(|r| r.is_finite() && *r > 0.0)
                .ok_or_else(|| malformed(OP, "the stated rate is not a positive number"))?,
        )
    };
    let stored = text(OP, stored, "the stored learner")?;
    if stored.len() > MAX_LEARNER_TEXT {
        return Err(malformed(
            OP,
            format!("the stored learner is {} bytes long", stored.len()),
        ));
    }
    Ok(LearnReply {
        learner: flag(learner, "learner")?,
        now_us: count(OP, now, "the clock")?,
        version: count(OP, version, "the version")?,
        accepted: count(OP, acc, "accepted")?,
        refused: count(OP, refused, "refused")?,
        paused: flag(paused, "paused")?,
        stated,
        in_step: flag(in_step, "in_step")?,
        stored: (!stored.is_empty()).then_some(stored),
    })
}

pub(crate) fn parse_count(op: &'static str, v: &Value) -> Result<u64, FleetError> {
    let i = int(op, v, "the count")?;
    u64::try_from(i).map_err(|_| malformed(op, "the count is negative"))
}

fn text(op: &'static str, v: &Value, field: &str) -> Result<String, FleetError> {
    match v {
        Value::BulkString(b) => {
            String::from_utf8(b.clone()).map_err(|_| malformed(op, format!("{field} is not UTF-8")))
        }
        Value::SimpleString(s) => Ok(s.clone()),
        _ => Err(malformed(op, format!("{field} is not a string"))),
    }
}

/// Parse `declare.lua`'s reply for `n` limits: `None` when all agree, or the index (0-based)
/// of the first that disagrees, the definition the budget recorded and the test that did.
pub(crate) fn parse_declare(
    v: &Value,
    n: usize,
) -> Result<Option<(usize, String, String)>, FleetError> {
    const OP: &str = "the budget's declaration script";
    let a = array(OP, v, "the reply")?;
    match a {
        [] => Ok(None),
        [i, def, by] => {
            let i = int(OP, i, "the limit's index")?;
            let i = usize::try_from(i)
                .ok()
                .and_then(|i| i.checked_sub(1))
                .filter(|i| *i < n)
                .ok_or_else(|| malformed(OP, format!("limit index {i} of {n}")))?;
            Ok(Some((
                i,
                text(OP, def, "the definition")?,
                text(OP, by, "the test")?,
            )))
        }
        _ => Err(malformed(
            OP,
            format!("{} fields instead of 0 or 3", a.len()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declare_replies_are_checked() {
        let s = |t: &str| Value::BulkString(t.as_bytes().to_vec());
        assert_eq!(parse_declare(&Value::Array(vec![]), 2).unwrap(), None);
        let r = Value::Array(vec![Value::Int(2), s("10/s"), s("t-a")]);
        assert_eq!(
            parse_declare(&r, 2).unwrap(),
            Some((1, "10/s".into(), "t-a".into()))
        );
        let out_of_range = Value::Array(vec![Value::Int(3), s("10/s"), s("t-a")]);
        assert!(parse_declare(&out_of_range, 2).is_err());
        let zero = Value::Array(vec![Value::Int(0), s("10/s"), s("t-a")]);
        assert!(parse_declare(&zero, 2).is_err());
        assert!(parse_declare(&Value::Array(vec![Value::Int(1)]), 2).is_err());
        assert!(parse_declare(&Value::Int(1), 2).is_err());
    }

    #[test]
    fn learn_replies_are_checked() {
        let s = |t: &str| Value::BulkString(t.as_bytes().to_vec());
        let reply = |learner: i64, acc: i64, stated: &str, stored: &str| {
            Value::Array(vec![
                Value::Int(learner),
                Value::Int(1_700_000_000_000_000),
                Value::Int(3),
                Value::Int(acc),
                Value::Int(2),
                Value::Int(0),
                s(stated),
                Value::Int(0),
                s(stored),
            ])
        };
        let r = parse_learn(&reply(1, 10, "", "learn1 x")).unwrap();
        assert!(r.learner && !r.paused);
        assert_eq!((r.accepted, r.refused, r.version), (10, 2, 3));
        assert_eq!(r.stated, None);
        assert_eq!(r.stored.as_deref(), Some("learn1 x"));
        let r = parse_learn(&reply(0, 0, "47.5", "")).unwrap();
        assert_eq!((r.learner, r.stated, r.stored), (false, Some(47.5), None));
        for bad in [
            reply(2, 0, "", ""),
            reply(1, -1, "", ""),
            reply(1, 0, "nan", ""),
            reply(1, 0, "-3", ""),
            reply(1, 0, "", &"x".repeat(MAX_LEARNER_TEXT + 1)),
            Value::Array(vec![Value::Int(1)]),
            Value::Int(1),
        ] {
            let e = parse_learn(&bad).unwrap_err();
            assert!(e.to_string().contains("learner script"), "{e}");
        }
    }

    fn ints(v: &[i64]) -> Value {
        Value::Array(v.iter().map(|i| Value::Int(*i)).collect())
    }

    #[test]
    fn lease_replies_are_checked() {
        let ok = Value::Array(vec![
            Value::Int(2),
            Value::Int(0),
            ints(&[0]),
            ints(&[1_000_000]),
            ints(&[0]),
            ints(&[0, 1000]),
            ints(&[41]),
        ]);
        let r = parse_lease(&ok, 1, 2, Duration::from_secs(1)).unwrap();
        assert_eq!(r.offsets, vec![Duration::ZERO, Duration::from_micros(1000)]);
        assert_eq!(r.factors, vec![1.0]);
        assert_eq!(r.before, vec![41]);

        let bad = [
            Value::Nil,
            Value::Int(3),
            // more granted than asked
            Value::Array(vec![
                Value::Int(3),
                Value::Int(0),
                ints(&[0]),
                ints(&[1]),
                ints(&[0]),
                ints(&[0, 1, 2]),
                ints(&[0]),
            ]),
            // slots out of order
            Value::Array(vec![
                Value::Int(2),
                Value::Int(0),
                ints(&[0]),
                ints(&[1]),
                ints(&[0]),
                ints(&[5, 1]),
                ints(&[0]),
            ]),
            // negative wait
            Value::Array(vec![
                Value::Int(0),
                Value::Int(-1),
                ints(&[0]),
                ints(&[1]),
                ints(&[0]),
                ints(&[]),
                ints(&[0]),
            ]),
            // factor out of range
            Value::Array(vec![
                Value::Int(0),
                Value::Int(0),
                ints(&[0]),
                ints(&[2_000_000]),
                ints(&[0]),
                ints(&[]),
                ints(&[0]),
            ]),
            // a negative count
            Value::Array(vec![
                Value::Int(0),
                Value::Int(0),
                ints(&[0]),
                ints(&[1]),
                ints(&[0]),
                ints(&[]),
                ints(&[-1]),
            ]),
            // wrong number of limits
            Value::Array(vec![
                Value::Int(0),
                Value::Int(0),
                ints(&[0]),
                ints(&[1, 1]),
                ints(&[0]),
                ints(&[]),
                ints(&[0]),
            ]),
        ];
        for b in &bad {
            let e = parse_lease(b, 1, 2, Duration::from_secs(1)).unwrap_err();
            assert!(e.to_string().contains("Redis"), "{e}");
        }
    }
}
