//! The mock's rate limiter: named limits keyed by token, client, org or globally, counted in
//! fixed or sliding windows, all-or-nothing across the limits a request matches.
//!
//! Beside enforcing, every limit keeps a witness of what clients actually did: per key, the
//! largest number of requests offered and accepted in ANY window of the limit's length (a
//! deque of recent timestamps). Tests use it to prove a client never exceeded a limit, which
//! fixed-window counters alone cannot show.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::config::{Algorithm, LimitConfig, LimitKey, TokenRateLimit};

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
    pub limit: u64,
    /// Requests counted in the current window (including this one when accepted).
    pub count: u64,
    pub remaining: u64,
    /// Whole seconds (rounded up) until the window frees capacity.
    pub reset_secs: u64,
    pub window_secs: u64,
}

/// The verdict on one request.
#[derive(Debug)]
pub(crate) enum Decision {
    /// Counted against every matching limit (possibly none).
    Allowed(Vec<LimitStatus>),
    /// Counted against none; `limit` is the refusing limit that frees last.
    Rejected {
        limit: String,
        key: String,
        retry_after_secs: u64,
        statuses: Vec<LimitStatus>,
    },
}

/// Window state used to decide.
#[derive(Debug, Default)]
struct WindowState {
    fixed_start: u64,
    fixed_count: u64,
    /// Accepted timestamps (sliding algorithm only).
    log: VecDeque<u64>,
}

impl WindowState {
    /// Drops what has left the window at `now`.
    fn roll(&mut self, rule: &Rule, now: u64) {
        match rule.algorithm {
            Algorithm::Fixed => {
                if self.fixed_count > 0 && now >= self.fixed_start.saturating_add(rule.window_us) {
                    self.fixed_count = 0;
                }
            }
            Algorithm::Sliding => {
                while self
                    .log
                    .front()
                    .is_some_and(|&t| t.saturating_add(rule.window_us) <= now)
                {
                    self.log.pop_front();
                }
            }
        }
    }

    fn count(&self, rule: &Rule) -> u64 {
        match rule.algorithm {
            Algorithm::Fixed => self.fixed_count,
            Algorithm::Sliding => self.log.len() as u64,
        }
    }

    /// Microseconds until one more request would fit (0 when it fits now).
    fn wait_us(&self, rule: &Rule, now: u64) -> u64 {
        if self.count(rule) < rule.limit {
            return 0;
        }
        match rule.algorithm {
            Algorithm::Fixed => (self.fixed_start + rule.window_us).saturating_sub(now),
            Algorithm::Sliding => {
                // The entry whose expiry brings the count below the limit.
                let idx = self.log.len() - rule.limit as usize;
                self.log
                    .get(idx)
                    .map_or(0, |&t| (t + rule.window_us).saturating_sub(now))
            }
        }
    }

    fn commit(&mut self, rule: &Rule, now: u64) {
        match rule.algorithm {
            Algorithm::Fixed => {
                if self.fixed_count == 0 {
                    self.fixed_start = now;
                }
                self.fixed_count += 1;
            }
            Algorithm::Sliding => self.log.push_back(now),
        }
    }

    /// Microseconds until the current window ends (what `*-reset` headers report).
    fn reset_us(&self, rule: &Rule, now: u64) -> u64 {
        match rule.algorithm {
            Algorithm::Fixed if self.fixed_count > 0 => {
                (self.fixed_start + rule.window_us).saturating_sub(now)
            }
            Algorithm::Sliding => self.log.front().map_or(rule.window_us, |&t| {
                (t + rule.window_us).saturating_sub(now)
            }),
            Algorithm::Fixed => rule.window_us,
        }
    }

    fn idle(&self, rule: &Rule, now: u64) -> bool {
        match rule.algorithm {
            Algorithm::Fixed => {
                self.fixed_count == 0 || now >= self.fixed_start.saturating_add(rule.window_us)
            }
            Algorithm::Sliding => self
                .log
                .back()
                .is_none_or(|&t| t.saturating_add(rule.window_us) <= now),
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
        let (count, reset_us) = self.windows.map.get(key).map_or((0, rule.window_us), |w| {
            (w.count(rule), w.reset_us(rule, now))
        });
        LimitStatus {
            name: rule.name.clone(),
            limit: rule.limit,
            count,
            remaining: rule.limit.saturating_sub(count),
            reset_secs: ceil_secs(reset_us),
            window_secs: ceil_secs(rule.window_us),
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
                })
            })
            .collect();
        LimitEngine { rules }
    }

    /// The per-client limit of the token endpoint, as an engine of one limit.
    pub(crate) fn for_token_endpoint(t: Option<&TokenRateLimit>) -> Self {
        let limits: Vec<LimitConfig> = t
            .map(|t| LimitConfig {
                name: t.name.clone(),
                key: LimitKey::Client,
                limit: t.limit,
                window: t.window,
                methods: None,
                path_prefix: None,
                algorithm: Algorithm::Fixed,
            })
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
            if w.count(&r.rule) >= r.rule.limit {
                refusing.push((i, w.wait_us(&r.rule, now)));
            }
        }
        let accepted = refusing.is_empty();
        for &i in &matching {
            let r = &mut self.rules[i];
            let key = id.key(r.rule.key);
            if accepted {
                r.windows.get(&r.rule, key, now).commit(&r.rule, now);
            }
            let exceeded = refusing.iter().any(|&(j, _)| j == i);
            r.witness(key, now, accepted, exceeded);
        }
        let statuses = matching
            .iter()
            .map(|&i| self.rules[i].status(id.key(self.rules[i].rule.key), now))
            .collect();
        match refusing.iter().max_by_key(|&&(_, wait)| wait) {
            None => Decision::Allowed(statuses),
            Some(&(i, wait)) => {
                let r = &self.rules[i];
                Decision::Rejected {
                    limit: r.rule.name.clone(),
                    key: format!("{}:{}", r.rule.key.as_str(), id.key(r.rule.key)),
                    retry_after_secs: ceil_secs(wait).max(1),
                    statuses,
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
            name: name.into(),
            key,
            limit: n,
            window: Duration::from_millis(window_ms),
            methods: None,
            path_prefix: None,
            algorithm: algo,
        }
    }

    const ID: Identity = Identity {
        token: "token#1",
        client: "c",
        org: "o",
    };

    fn allowed(d: &Decision) -> bool {
        matches!(d, Decision::Allowed(_))
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
}
