//! The mock's rate limiter: named limits keyed by token, client, org or globally, counted in
//! fixed or sliding windows or metered by a token bucket or nginx's leaky bucket,
//! all-or-nothing across the limits a request matches.
//!
//! The buckets keep a level per key in integer "request-window" units: a request adds
//! `window_us`, each microsecond drains `limit`, so one request weighs exactly `window / limit`
//! of time at the rate and no rounding accumulates. The token bucket refuses a request that
//! would take the level above `burst` requests. The leaky bucket is nginx's `limit_req`: its
//! `excess` is clamped at zero after adding the request (`excess = max(0, excess - drained +
//! 1)`), so a key at rest takes `burst + 1` requests back to back, and a request it accepts
//! within the burst is delayed by `excess / rate` unless `nodelay`.
//!
//! Beside enforcing, every limit keeps a witness of what clients actually did: per key, the
//! largest number of requests offered and accepted in ANY window of the limit's length (a
//! deque of recent timestamps). Tests use it to prove a client never exceeded a limit, which
//! fixed-window counters alone cannot show.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::config::{Algorithm, HeadersConfig, LimitConfig, LimitKey, TokenRateLimit};

/// Keys whose window statistics are kept per limit; requests of later keys are still limited
/// and counted in the totals, only not itemized.
const MAX_TRACKED_KEYS: usize = 1024;
/// Timestamps the witnesses of one limit keep in all (32 MiB). Beyond it a key's oldest
/// timestamps still inside the window are dropped, making its maxima lower bounds, flagged by
/// `truncated`. Only a long window at a high rate gets there (e.g. 24 h at 50 requests/s).
/// (Small under test, to exercise the cap quickly.)
const MAX_TRACKED_EVENTS: usize = if cfg!(test) { 1 << 12 } else { 1 << 22 };
/// Enforcement states are pruned of idle keys when their number reaches this (then doubles).
const MIN_PRUNE_AT: usize = 4096;

const US_PER_SEC: u64 = 1_000_000;

/// A limit ready to be matched against requests.
#[derive(Debug, Clone)]
struct Rule {
    name: String,
    key: LimitKey,
    limit: u64,
    window_us: u64,
    /// Upper-cased.
    methods: Option<Vec<String>>,
    path_prefix: Option<String>,
    algorithm: Algorithm,
    meter: Meter,
    /// Whether a refusal carries `Retry-After`.
    retry_after: bool,
    /// Status of a refusal.
    status: u16,
    /// Header families of this limit; the global ones when `None`.
    headers: Option<HeadersConfig>,
}

/// How a rule decides, with the parameters of its algorithm.
#[derive(Debug, Clone, Copy)]
enum Meter {
    Fixed,
    Sliding,
    /// At most `capacity` requests back to back.
    TokenBucket {
        capacity: u64,
    },
    /// nginx's `burst` and `nodelay`.
    LeakyBucket {
        burst: u64,
        nodelay: bool,
    },
}

impl Meter {
    fn of(l: &LimitConfig) -> Meter {
        match l.algorithm {
            Algorithm::Fixed => Meter::Fixed,
            Algorithm::Sliding => Meter::Sliding,
            Algorithm::TokenBucket => Meter::TokenBucket {
                capacity: l.burst.unwrap_or(l.limit),
            },
            Algorithm::LeakyBucket => Meter::LeakyBucket {
                burst: l.burst.unwrap_or(0),
                nodelay: l.nodelay,
            },
        }
    }
}

impl Rule {
    fn matches(&self, method: &str, path: &str) -> bool {
        let method_ok = self
            .methods
            .as_ref()
            .is_none_or(|ms| ms.iter().any(|m| m.eq_ignore_ascii_case(method)));
        let path_ok = self
            .path_prefix
            .as_ref()
            .is_none_or(|p| path.starts_with(p.as_str()));
        method_ok && path_ok
    }
}

/// Who a request is from, as the limits key it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Identity<'a> {
    /// A label of the token (never the token itself).
    pub token: &'a str,
    pub client: &'a str,
    pub org: &'a str,
}

impl Identity<'_> {
    fn key(&self, k: LimitKey) -> &str {
        match k {
            LimitKey::Token => self.token,
            LimitKey::Client => self.client,
            LimitKey::Org => self.org,
            LimitKey::Global => "global",
        }
    }
}

/// Where one matching limit stands after a request.
#[derive(Debug, Clone)]
pub(crate) struct LimitStatus {
    pub name: String,
    /// Most requests the key may send at once: the window's limit, or the bucket's capacity.
    pub limit: u64,
    /// Requests counted (`limit - remaining`), including this one when accepted.
    pub count: u64,
    /// Requests the key may still send at once, counting every client sharing the key.
    pub remaining: u64,
    /// Whole seconds (rounded up) until `remaining` is back at `limit`: the window's end, or
    /// a bucket at rest.
    pub reset_secs: u64,
    /// The limit as declared, `quota` per `window_secs` (the IETF policy's `q` and `w`).
    pub quota: u64,
    pub window_secs: u64,
    /// Header families to report this limit in; the global ones when `None`.
    pub headers: Option<HeadersConfig>,
}

/// The verdict on one request.
#[derive(Debug)]
pub(crate) enum Decision {
    /// Counted against every matching limit (possibly none); to be answered after `delay_us`
    /// (a leaky bucket without `nodelay`: the request's turn).
    Allowed {
        statuses: Vec<LimitStatus>,
        delay_us: u64,
    },
    /// Counted against none; `limit` is the refusing limit that frees last, and its settings
    /// shape the answer.
    Rejected {
        limit: String,
        key: String,
        retry_after_secs: u64,
        statuses: Vec<LimitStatus>,
        /// HTTP status of the refusal.
        status: u16,
        /// Whether to send `Retry-After`.
        retry_after: bool,
    },
}

/// Window state used to decide.
#[derive(Debug, Default)]
struct WindowState {
    fixed_start: u64,
    fixed_count: u64,
    /// Accepted timestamps (sliding algorithm only).
    log: VecDeque<u64>,
    /// A bucket's level at `last`, in request-window units (module doc).
    level: i128,
    /// When the bucket last took a request; `None`: never, a bucket at rest.
    last: Option<u64>,
}

/// `ceil(n / d)` for `d > 0`, as microseconds (0 when `n <= 0`).
fn ceil_div_us(n: i128, d: i128) -> u64 {
    if n <= 0 || d <= 0 {
        return 0;
    }
    u64::try_from((n + d - 1) / d).unwrap_or(u64::MAX)
}

impl WindowState {
    /// Drops what has left the window at `now`.
    fn roll(&mut self, rule: &Rule, now: u64) {
        match rule.meter {
            Meter::Fixed => {
                if self.fixed_count > 0 && now >= self.fixed_start.saturating_add(rule.window_us) {
                    self.fixed_count = 0;
                }
            }
            Meter::Sliding => {
                while self
                    .log
                    .front()
                    .is_some_and(|&t| t.saturating_add(rule.window_us) <= now)
                {
                    self.log.pop_front();
                }
            }
            // A bucket drains lazily, from `last`.
            Meter::TokenBucket { .. } | Meter::LeakyBucket { .. } => {}
        }
    }

    /// A bucket's level drained to `now`; below zero when it has been at rest longer than
    /// needed to empty.
    fn drained(&self, rule: &Rule, now: u64) -> i128 {
        let Some(last) = self.last else {
            // Never used: as low as a bucket can get (nginx: a new key has excess 0).
            return i128::from(rule.window_us).saturating_neg();
        };
        let elapsed = i128::from(now.saturating_sub(last));
        self.level
            .saturating_sub(elapsed.saturating_mul(i128::from(rule.limit)))
    }

    /// The level a bucket would hold after one more request at `now`.
    fn level_after(&self, rule: &Rule, now: u64) -> i128 {
        let d = self.drained(rule, now);
        let w = i128::from(rule.window_us);
        match rule.meter {
            Meter::LeakyBucket { .. } => d.saturating_add(w).max(0),
            _ => d.max(0).saturating_add(w),
        }
    }

    /// Most requests a key may send at once.
    fn capacity(rule: &Rule) -> u64 {
        match rule.meter {
            Meter::Fixed | Meter::Sliding => rule.limit,
            Meter::TokenBucket { capacity } => capacity,
            Meter::LeakyBucket { burst, .. } => burst.saturating_add(1),
        }
    }

    /// Requests the key may still send at once.
    fn remaining(&self, rule: &Rule, now: u64) -> u64 {
        // Windows are validated >= 1 ms; never divide by zero all the same.
        let w = i128::from(rule.window_us).max(1);
        let cap = i128::from(Self::capacity(rule));
        let d = self.drained(rule, now);
        let n = match rule.meter {
            Meter::Fixed | Meter::Sliding => {
                return rule.limit.saturating_sub(self.count(rule));
            }
            Meter::TokenBucket { .. } => cap.saturating_mul(w).saturating_sub(d.max(0)) / w,
            // At rest (d <= -w) the next request is free (nginx clamps excess at 0).
            Meter::LeakyBucket { .. } if d.saturating_add(w) <= 0 => cap,
            Meter::LeakyBucket { burst, .. } => {
                i128::from(burst).saturating_mul(w).saturating_sub(d) / w
            }
        };
        u64::try_from(n.clamp(0, cap)).unwrap_or(0)
    }

    /// Requests in a window (a bucket has a level instead).
    fn count(&self, rule: &Rule) -> u64 {
        match rule.meter {
            Meter::Fixed => self.fixed_count,
            Meter::Sliding => self.log.len() as u64,
            Meter::TokenBucket { .. } | Meter::LeakyBucket { .. } => 0,
        }
    }

    /// Whether one more request is accepted at `now`.
    fn fits(&self, rule: &Rule, now: u64) -> bool {
        let w = i128::from(rule.window_us);
        match rule.meter {
            Meter::Fixed | Meter::Sliding => self.count(rule) < rule.limit,
            Meter::TokenBucket { capacity } => {
                self.level_after(rule, now) <= i128::from(capacity).saturating_mul(w)
            }
            Meter::LeakyBucket { burst, .. } => {
                self.level_after(rule, now) <= i128::from(burst).saturating_mul(w)
            }
        }
    }

    /// Microseconds until one more request would fit (0 when it fits now).
    fn wait_us(&self, rule: &Rule, now: u64) -> u64 {
        if self.fits(rule, now) {
            return 0;
        }
        let w = i128::from(rule.window_us);
        let l = i128::from(rule.limit);
        match rule.meter {
            Meter::Fixed => (self.fixed_start + rule.window_us).saturating_sub(now),
            Meter::Sliding => {
                // The entry whose expiry brings the count below the limit.
                let idx = self.log.len() - rule.limit as usize;
                self.log
                    .get(idx)
                    .map_or(0, |&t| (t + rule.window_us).saturating_sub(now))
            }
            // Both fit once the drained level is at most (room - 1) requests; a leaky
            // bucket's room is `burst` (the request itself may be free), a token bucket's
            // its capacity.
            Meter::TokenBucket { capacity: room } | Meter::LeakyBucket { burst: room, .. } => {
                let target = (i128::from(room) - 1).saturating_mul(w);
                ceil_div_us(self.drained(rule, now).saturating_sub(target), l)
            }
        }
    }

    /// Counts an accepted request; returns how long to hold its answer (a leaky bucket
    /// without `nodelay`: until its turn, `excess / rate`, as nginx).
    fn commit(&mut self, rule: &Rule, now: u64) -> u64 {
        match rule.meter {
            Meter::Fixed => {
                if self.fixed_count == 0 {
                    self.fixed_start = now;
                }
                self.fixed_count += 1;
                0
            }
            Meter::Sliding => {
                self.log.push_back(now);
                0
            }
            Meter::TokenBucket { .. } | Meter::LeakyBucket { .. } => {
                self.level = self.level_after(rule, now);
                self.last = Some(now);
                match rule.meter {
                    Meter::LeakyBucket { nodelay: false, .. } => {
                        ceil_div_us(self.level, i128::from(rule.limit))
                    }
                    _ => 0,
                }
            }
        }
    }

    /// Microseconds until the current window ends or the bucket is at rest (what `*-reset`
    /// headers report).
    fn reset_us(&self, rule: &Rule, now: u64) -> u64 {
        let l = i128::from(rule.limit);
        match rule.meter {
            Meter::Fixed if self.fixed_count > 0 => {
                (self.fixed_start + rule.window_us).saturating_sub(now)
            }
            Meter::Fixed => rule.window_us,
            Meter::Sliding => self.log.front().map_or(rule.window_us, |&t| {
                (t + rule.window_us).saturating_sub(now)
            }),
            Meter::TokenBucket { .. } => ceil_div_us(self.drained(rule, now), l),
            Meter::LeakyBucket { .. } => ceil_div_us(
                self.drained(rule, now)
                    .saturating_add(i128::from(rule.window_us)),
                l,
            ),
        }
    }

    fn idle(&self, rule: &Rule, now: u64) -> bool {
        match rule.meter {
            Meter::Fixed => {
                self.fixed_count == 0 || now >= self.fixed_start.saturating_add(rule.window_us)
            }
            Meter::Sliding => self
                .log
                .back()
                .is_none_or(|&t| t.saturating_add(rule.window_us) <= now),
            Meter::TokenBucket { .. } | Meter::LeakyBucket { .. } => self.reset_us(rule, now) == 0,
        }
    }
}

/// The witness of one key: maxima over every window of the limit's length.
#[derive(Debug, Default)]
struct Witness {
    offered: VecDeque<u64>,
    accepted_log: VecDeque<u64>,
    max_offered: u64,
    max_accepted: u64,
    accepted: u64,
    rejected: u64,
    exceeded: u64,
    truncated: bool,
}

impl Witness {
    /// Records one request; returns the change in the number of timestamps kept. When
    /// `may_grow` is false the witness keeps no more timestamps than it had.
    fn record(
        &mut self,
        window_us: u64,
        now: u64,
        accepted: bool,
        exceeded: bool,
        may_grow: bool,
    ) -> isize {
        let before = self.offered.len() + self.accepted_log.len();
        let (n, t) = push_in_window(&mut self.offered, window_us, now, may_grow);
        self.max_offered = self.max_offered.max(n);
        self.truncated |= t;
        if accepted {
            self.accepted += 1;
            let (n, t) = push_in_window(&mut self.accepted_log, window_us, now, may_grow);
            self.max_accepted = self.max_accepted.max(n);
            self.truncated |= t;
        } else {
            self.rejected += 1;
        }
        if exceeded {
            self.exceeded += 1;
        }
        let after = self.offered.len() + self.accepted_log.len();
        after as isize - before as isize
    }
}

/// Adds `now` and drops timestamps outside `(now - window, now]`; returns the count in the
/// window and whether a timestamp still inside it had to be dropped (no room to grow).
fn push_in_window(q: &mut VecDeque<u64>, window_us: u64, now: u64, may_grow: bool) -> (u64, bool) {
    while q
        .front()
        .is_some_and(|&t| t.saturating_add(window_us) <= now)
    {
        q.pop_front();
    }
    let mut truncated = false;
    if !may_grow && !q.is_empty() {
        q.pop_front();
        truncated = true;
    }
    q.push_back(now);
    (q.len() as u64, truncated)
}

/// Enforcement windows of every key of one limit.
#[derive(Debug)]
struct Windows {
    map: HashMap<String, WindowState>,
    prune_at: usize,
}

impl Default for Windows {
    fn default() -> Self {
        Windows {
            map: HashMap::new(),
            prune_at: MIN_PRUNE_AT,
        }
    }
}

impl Windows {
    /// The (rolled) window of `key`, pruning idle keys when the map has grown, so memory
    /// follows the number of active keys rather than of keys ever seen.
    fn get(&mut self, rule: &Rule, key: &str, now: u64) -> &mut WindowState {
        if self.map.len() >= self.prune_at && !self.map.contains_key(key) {
            self.map.retain(|_, w| !w.idle(rule, now));
            self.prune_at = (self.map.len() * 2).max(MIN_PRUNE_AT);
        }
        let w = self.map.entry(key.to_owned()).or_default();
        w.roll(rule, now);
        w
    }
}

#[derive(Debug)]
struct RuleState {
    rule: Rule,
    windows: Windows,
    witnesses: HashMap<String, Witness>,
    /// Timestamps held by all witnesses (bounded by `MAX_TRACKED_EVENTS`).
    tracked_events: usize,
    untracked_requests: u64,
    accepted: u64,
    rejected: u64,
    exceeded: u64,
    /// Accepted requests whose answer was held for their turn.
    delayed: u64,
}

impl RuleState {
    fn new(rule: Rule) -> Self {
        RuleState {
            rule,
            windows: Windows::default(),
            witnesses: HashMap::new(),
            tracked_events: 0,
            untracked_requests: 0,
            accepted: 0,
            rejected: 0,
            exceeded: 0,
            delayed: 0,
        }
    }

    fn witness(&mut self, key: &str, now: u64, accepted: bool, exceeded: bool) {
        if accepted {
            self.accepted += 1;
        } else {
            self.rejected += 1;
        }
        if exceeded {
            self.exceeded += 1;
        }
        let window_us = self.rule.window_us;
        let may_grow = self.tracked_events < MAX_TRACKED_EVENTS;
        let delta = if let Some(w) = self.witnesses.get_mut(key) {
            w.record(window_us, now, accepted, exceeded, may_grow)
        } else if self.witnesses.len() < MAX_TRACKED_KEYS {
            let mut w = Witness::default();
            let delta = w.record(window_us, now, accepted, exceeded, may_grow);
            self.witnesses.insert(key.to_owned(), w);
            delta
        } else {
            self.untracked_requests += 1;
            0
        };
        self.tracked_events = self.tracked_events.saturating_add_signed(delta);
    }

    fn status(&self, key: &str, now: u64) -> LimitStatus {
        let rule = &self.rule;
        let capacity = WindowState::capacity(rule);
        let (remaining, reset_us) = match self.windows.map.get(key) {
            Some(w) => (w.remaining(rule, now), w.reset_us(rule, now)),
            None => (capacity, 0),
        };
        LimitStatus {
            name: rule.name.clone(),
            limit: capacity,
            count: capacity.saturating_sub(remaining),
            remaining,
            reset_secs: ceil_secs(reset_us),
            quota: rule.limit,
            window_secs: ceil_secs(rule.window_us),
            headers: rule.headers,
        }
    }

    fn stats(&self) -> LimitStats {
        let keys = self
            .witnesses
            .iter()
            .map(|(k, w)| {
                (
                    k.clone(),
                    KeyStats {
                        accepted: w.accepted,
                        rejected: w.rejected,
                        exceeded: w.exceeded,
                        max_offered_in_window: w.max_offered,
                        max_accepted_in_window: w.max_accepted,
                        truncated: w.truncated,
                    },
                )
            })
            .collect::<BTreeMap<_, _>>();
        LimitStats {
            name: self.rule.name.clone(),
            key: self.rule.key,
            limit: self.rule.limit,
            window_ms: self.rule.window_us / 1000,
            algorithm: self.rule.algorithm,
            burst: match self.rule.meter {
                Meter::TokenBucket { capacity } => Some(capacity),
                Meter::LeakyBucket { burst, .. } => Some(burst),
                Meter::Fixed | Meter::Sliding => None,
            },
            delayed: self.delayed,
            accepted: self.accepted,
            rejected: self.rejected,
            exceeded: self.exceeded,
            max_offered_in_window: keys
                .values()
                .map(|k| k.max_offered_in_window)
                .max()
                .unwrap_or(0),
            max_accepted_in_window: keys
                .values()
                .map(|k| k.max_accepted_in_window)
                .max()
                .unwrap_or(0),
            untracked_requests: self.untracked_requests,
            keys,
        }
    }
}

/// Whole seconds, rounded up.
pub(crate) fn ceil_secs(us: u64) -> u64 {
    us.div_ceil(US_PER_SEC)
}

/// A set of limits and their state.
#[derive(Debug)]
pub(crate) struct LimitEngine {
    rules: Vec<RuleState>,
}

impl LimitEngine {
    pub(crate) fn new(limits: &[LimitConfig]) -> Self {
        let rules = limits
            .iter()
            .map(|l| {
                RuleState::new(Rule {
                    name: l.name.clone(),
                    key: l.key,
                    limit: l.limit,
                    window_us: duration_us(l.window),
                    methods: l
                        .methods
                        .as_ref()
                        .map(|ms| ms.iter().map(|m| m.to_ascii_uppercase()).collect()),
                    path_prefix: l.path_prefix.clone(),
                    algorithm: l.algorithm,
                    meter: Meter::of(l),
                    retry_after: l.retry_after,
                    status: l.status,
                    headers: l.headers,
                })
            })
            .collect();
        LimitEngine { rules }
    }

    /// The per-client limit of the token endpoint, as an engine of one limit.
    pub(crate) fn for_token_endpoint(t: Option<&TokenRateLimit>) -> Self {
        let limits: Vec<LimitConfig> = t
            .map(|t| LimitConfig::new(t.name.clone(), LimitKey::Client, t.limit, t.window))
            .into_iter()
            .collect();
        LimitEngine::new(&limits)
    }

    /// Decides one request and records it; all-or-nothing across the matching limits.
    pub(crate) fn check(&mut self, method: &str, path: &str, id: &Identity, now: u64) -> Decision {
        let matching: Vec<usize> = (0..self.rules.len())
            .filter(|&i| self.rules[i].rule.matches(method, path))
            .collect();
        // Limits that refuse, with how long until they would accept.
        let mut refusing: Vec<(usize, u64)> = Vec::new();
        for &i in &matching {
            let r = &mut self.rules[i];
            let w = r.windows.get(&r.rule, id.key(r.rule.key), now);
            if !w.fits(&r.rule, now) {
                refusing.push((i, w.wait_us(&r.rule, now)));
            }
        }
        let accepted = refusing.is_empty();
        // The longest of the holds (nginx holds a request for its slowest limit).
        let mut delay_us = 0;
        for &i in &matching {
            let r = &mut self.rules[i];
            let key = id.key(r.rule.key);
            if accepted {
                let hold = r.windows.get(&r.rule, key, now).commit(&r.rule, now);
                if hold > 0 {
                    r.delayed += 1;
                }
                delay_us = delay_us.max(hold);
            }
            let exceeded = refusing.iter().any(|&(j, _)| j == i);
            r.witness(key, now, accepted, exceeded);
        }
        let statuses = matching
            .iter()
            .map(|&i| self.rules[i].status(id.key(self.rules[i].rule.key), now))
            .collect();
        match refusing.iter().max_by_key(|&&(_, wait)| wait) {
            None => Decision::Allowed { statuses, delay_us },
            Some(&(i, wait)) => {
                let r = &self.rules[i];
                Decision::Rejected {
                    limit: r.rule.name.clone(),
                    key: format!("{}:{}", r.rule.key.as_str(), id.key(r.rule.key)),
                    retry_after_secs: ceil_secs(wait).max(1),
                    statuses,
                    status: r.rule.status,
                    retry_after: r.rule.retry_after,
                }
            }
        }
    }

    pub(crate) fn stats(&self) -> Vec<LimitStats> {
        self.rules.iter().map(RuleState::stats).collect()
    }

    /// Forgets all windows and statistics.
    pub(crate) fn reset(&mut self) {
        for r in &mut self.rules {
            *r = RuleState::new(r.rule.clone());
        }
    }
}

pub(crate) fn duration_us(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Statistics of one limit.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LimitStats {
    pub name: String,
    pub key: LimitKey,
    pub limit: u64,
    pub window_ms: u64,
    pub algorithm: Algorithm,
    /// Buckets: the token bucket's capacity, or the leaky bucket's `burst` (nginx's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// Accepted requests a leaky bucket without `nodelay` held until their turn.
    #[serde(default)]
    pub delayed: u64,
    /// Requests that matched this limit and were accepted.
    pub accepted: u64,
    /// Requests that matched this limit and were rejected (by this or another limit).
    pub rejected: u64,
    /// Requests this limit refused itself.
    pub exceeded: u64,
    /// Largest number of requests offered (accepted + rejected) by one key in any window.
    pub max_offered_in_window: u64,
    /// Largest number of requests accepted for one key in any window.
    pub max_accepted_in_window: u64,
    /// Per key (up to 1024 keys); token keys are labels like `token#3`, never tokens.
    pub keys: BTreeMap<String, KeyStats>,
    /// Requests from keys beyond the itemized ones.
    pub untracked_requests: u64,
}

/// Statistics of one key of one limit.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KeyStats {
    pub accepted: u64,
    pub rejected: u64,
    pub exceeded: u64,
    pub max_offered_in_window: u64,
    pub max_accepted_in_window: u64,
    /// The limit's witnesses ran out of room (millions of requests in one window): the maxima
    /// of this key are lower bounds.
    pub truncated: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limit(name: &str, key: LimitKey, n: u64, window_ms: u64, algo: Algorithm) -> LimitConfig {
        LimitConfig {
            algorithm: algo,
            ..LimitConfig::new(name, key, n, Duration::from_millis(window_ms))
        }
    }

    const ID: Identity = Identity {
        token: "token#1",
        client: "c",
        org: "o",
    };

    fn allowed(d: &Decision) -> bool {
        matches!(d, Decision::Allowed { .. })
    }

    #[test]
    fn fixed_window_counts_and_resets() {
        let mut e = LimitEngine::new(&[limit("t", LimitKey::Token, 3, 1000, Algorithm::Fixed)]);
        for i in 0..3 {
            assert!(allowed(&e.check("GET", "/x", &ID, 100 + i)));
        }
        match e.check("GET", "/x", &ID, 500_000) {
            Decision::Rejected {
                limit,
                key,
                retry_after_secs,
                ..
            } => {
                assert_eq!(limit, "t");
                assert_eq!(key, "token:token#1");
                assert_eq!(retry_after_secs, 1);
            }
            d => panic!("{d:?}"),
        }
        assert!(allowed(&e.check("GET", "/x", &ID, 1_000_100)));
        let s = &e.stats()[0];
        assert_eq!((s.accepted, s.rejected, s.exceeded), (4, 1, 1));
        assert_eq!(s.max_offered_in_window, 4);
        assert_eq!(s.max_accepted_in_window, 3);
    }

    #[test]
    fn sliding_window_is_exact() {
        let mut e = LimitEngine::new(&[limit("s", LimitKey::Global, 2, 1000, Algorithm::Sliding)]);
        assert!(allowed(&e.check("GET", "/", &ID, 0)));
        assert!(allowed(&e.check("GET", "/", &ID, 600_000)));
        match e.check("GET", "/", &ID, 900_000) {
            Decision::Rejected {
                retry_after_secs, ..
            } => assert_eq!(retry_after_secs, 1),
            d => panic!("{d:?}"),
        }
        // The first request left the window; the second has not.
        assert!(allowed(&e.check("GET", "/", &ID, 1_000_000)));
        assert!(!allowed(&e.check("GET", "/", &ID, 1_500_000)));
        assert_eq!(e.stats()[0].max_accepted_in_window, 2);
    }

    #[test]
    fn a_rejected_request_counts_against_no_limit() {
        let mut big = limit("big", LimitKey::Token, 100, 1000, Algorithm::Fixed);
        big.methods = Some(vec!["post".into()]);
        let mut small = limit("small", LimitKey::Org, 1, 1000, Algorithm::Fixed);
        small.path_prefix = Some("/api/".into());
        let mut e = LimitEngine::new(&[big, small]);
        assert!(allowed(&e.check("POST", "/api/a", &ID, 0)));
        assert!(!allowed(&e.check("POST", "/api/a", &ID, 1)));
        // Matches only "big", which still has room.
        assert!(allowed(&e.check("POST", "/other", &ID, 2)));
        // Matches neither.
        assert!(allowed(&e.check("GET", "/other", &ID, 3)));
        let s = e.stats();
        assert_eq!((s[0].accepted, s[0].rejected, s[0].exceeded), (2, 1, 0));
        assert_eq!((s[1].accepted, s[1].rejected, s[1].exceeded), (1, 1, 1));
        match e.check("POST", "/api/a", &ID, 4) {
            Decision::Rejected { statuses, .. } => {
                // "big" was not charged for the rejected requests.
                assert_eq!(statuses[0].count, 2);
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn witness_memory_is_bounded() {
        let mut e = LimitEngine::new(&[limit(
            "g",
            LimitKey::Global,
            u64::MAX,
            3_600_000,
            Algorithm::Fixed,
        )]);
        let n = MAX_TRACKED_EVENTS as u64;
        for i in 0..n {
            e.check("GET", "/", &ID, i);
        }
        let s = &e.stats()[0];
        assert_eq!(s.max_offered_in_window, n / 2);
        assert!(s.keys["global"].truncated);
        assert!(e.rules[0].tracked_events <= MAX_TRACKED_EVENTS + 2);
    }

    #[test]
    fn idle_keys_are_pruned() {
        let mut e = LimitEngine::new(&[limit("t", LimitKey::Token, 1, 1, Algorithm::Fixed)]);
        for i in 0..(MIN_PRUNE_AT as u64 * 3) {
            let token = format!("token#{i}");
            let id = Identity {
                token: &token,
                ..ID
            };
            e.check("GET", "/", &id, i * 10_000);
        }
        assert!(e.rules[0].windows.map.len() <= MIN_PRUNE_AT + 1);
        assert_eq!(e.rules[0].witnesses.len(), MAX_TRACKED_KEYS);
        assert!(e.stats()[0].untracked_requests > 0);
    }

    fn bucket(algo: Algorithm, burst: Option<u64>, nodelay: bool) -> LimitConfig {
        LimitConfig {
            burst,
            nodelay,
            ..limit("b", LimitKey::Global, 5, 1000, algo)
        }
    }

    /// Accepted requests and their holds, sending `n` at `now`.
    fn burst_at(e: &mut LimitEngine, n: usize, now: u64) -> Vec<Option<u64>> {
        (0..n)
            .map(|_| match e.check("GET", "/", &ID, now) {
                Decision::Allowed { delay_us, .. } => Some(delay_us),
                Decision::Rejected { .. } => None,
            })
            .collect()
    }

    #[test]
    fn token_bucket_takes_its_burst_then_refills_at_the_rate() {
        let mut e = LimitEngine::new(&[bucket(Algorithm::TokenBucket, Some(5), false)]);
        let t0 = 1_000_000;
        assert_eq!(
            burst_at(&mut e, 6, t0),
            [Some(0); 5].into_iter().chain([None]).collect::<Vec<_>>()
        );
        // One token per 200 ms.
        assert_eq!(burst_at(&mut e, 2, t0 + 199_999), [None, None]);
        assert_eq!(burst_at(&mut e, 2, t0 + 200_000), [Some(0), None]);
        match e.check("GET", "/", &ID, t0 + 250_000) {
            Decision::Rejected {
                retry_after_secs,
                statuses,
                ..
            } => {
                assert_eq!(retry_after_secs, 1);
                let s = &statuses[0];
                assert_eq!((s.limit, s.remaining, s.count), (5, 0, 5));
                assert_eq!((s.quota, s.window_secs), (5, 1));
                // Full again 1 s after the last take (at 200 ms).
                assert_eq!(s.reset_secs, 1);
            }
            d => panic!("{d:?}"),
        }
        // At rest: the whole burst again.
        assert_eq!(
            burst_at(&mut e, 6, t0 + 5_000_000).iter().flatten().count(),
            5
        );
        let s = &e.stats()[0];
        assert_eq!((s.accepted, s.burst), (11, Some(5)));
    }

    #[test]
    fn token_bucket_burst_defaults_to_the_limit() {
        let mut e = LimitEngine::new(&[bucket(Algorithm::TokenBucket, None, false)]);
        assert_eq!(burst_at(&mut e, 7, 0).iter().flatten().count(), 5);
    }

    #[test]
    fn leaky_bucket_nodelay_is_nginx_burst_plus_one() {
        // nginx `rate=5r/s burst=5 nodelay`: excess 0 for the first request, +1 each, refused
        // above 5.
        let mut e = LimitEngine::new(&[bucket(Algorithm::LeakyBucket, Some(5), true)]);
        let got = burst_at(&mut e, 7, 0);
        assert_eq!(got[..6], [Some(0); 6]);
        assert_eq!(got[6], None);
        // 200 ms drains one request of excess.
        assert_eq!(burst_at(&mut e, 2, 200_000), [Some(0), None]);
        let s = &e.stats()[0];
        assert_eq!((s.accepted, s.rejected, s.delayed), (7, 2, 0));
    }

    #[test]
    fn leaky_bucket_without_burst_takes_one_per_interval() {
        let mut e = LimitEngine::new(&[bucket(Algorithm::LeakyBucket, None, true)]);
        assert_eq!(burst_at(&mut e, 2, 0), [Some(0), None]);
        assert_eq!(burst_at(&mut e, 1, 199_000), [None]);
        assert_eq!(burst_at(&mut e, 2, 200_000), [Some(0), None]);
    }

    #[test]
    fn leaky_bucket_without_nodelay_holds_each_request_until_its_turn() {
        let mut e = LimitEngine::new(&[bucket(Algorithm::LeakyBucket, Some(5), false)]);
        let got = burst_at(&mut e, 7, 0);
        let holds: Vec<u64> = (0..6).map(|i| i * 200_000).collect();
        assert_eq!(
            got[..6],
            holds.iter().map(|&h| Some(h)).collect::<Vec<_>>()[..]
        );
        assert_eq!(got[6], None);
        assert_eq!(e.stats()[0].delayed, 5);
    }

    #[test]
    fn a_refusal_carries_the_limit_status_and_retry_after_choice() {
        let mut l = bucket(Algorithm::LeakyBucket, None, true);
        l.status = 503;
        l.retry_after = false;
        let mut e = LimitEngine::new(&[l]);
        e.check("GET", "/", &ID, 0);
        match e.check("GET", "/", &ID, 0) {
            Decision::Rejected {
                status,
                retry_after,
                ..
            } => assert_eq!((status, retry_after), (503, false)),
            d => panic!("{d:?}"),
        }
    }
}
