//! The evidence ledger: one entry per attempt that ended in a 429, a 5xx, a timeout or a
//! transport error, with what an API vendor's support desk asks for (when, which request and
//! attempt, the correlation id pacer sent, the server's own request id, the limit the server
//! named, its Retry-After and rate-limit headers, which worker). Successes are not recorded.
//!
//! The ledger travels inside the [`crate::Snapshot`] (so a fleet's workers ship it to the
//! controller with the rest), which bounds it: the entries kept are the [`LEDGER_CAPACITY`]
//! first by [`LedgerEntry::key`] (time first), and the counts are exact beyond that. Keeping the
//! N smallest of a total order is what makes the merge exact: the first N of a union are the
//! first N of the union of each side's first N, whatever the order of the merges.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::record::ErrorKind;
use crate::snapshot::ServerLimitHeaders;

/// Entries kept per process and per merge. Each entry is at most ~1 KB of JSON (every text
/// field is cut at [`MAX_LEDGER_TEXT`]), so a snapshot carries at most ~1 MB of ledger, far under
/// the 16 MiB a worker's report may take, sent once a second; a thousand is more evidence
/// than a support ticket reads, and the counts stay exact past it.
pub const LEDGER_CAPACITY: usize = 1000;

/// The longest text kept in an entry (correlation ids, server request ids, limit names, a
/// header's name): a `traceparent` is 55, a UUID 36; a hostile server's longer value is cut.
pub const MAX_LEDGER_TEXT: usize = 128;

/// Why an attempt is in the ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LedgerCause {
    /// 429 Too Many Requests.
    Throttled,
    /// Any 5xx.
    ServerError,
    /// No answer within `http.timeout`.
    Timeout,
    /// Connect, TLS, protocol or body failure.
    Transport,
}

impl LedgerCause {
    /// Whether an answer with this status belongs in the ledger, and why.
    pub fn of_status(status: u16) -> Option<LedgerCause> {
        match status {
            429 => Some(LedgerCause::Throttled),
            500..=599 => Some(LedgerCause::ServerError),
            _ => None,
        }
    }

    /// Whether a transport failure of this kind belongs in the ledger (failures pacer made
    /// itself, before sending or at the end of the test, do not).
    pub fn of_error(kind: ErrorKind) -> Option<LedgerCause> {
        match kind {
            ErrorKind::Timeout => Some(LedgerCause::Timeout),
            ErrorKind::Connect
            | ErrorKind::Tls
            | ErrorKind::Protocol
            | ErrorKind::Body
            | ErrorKind::BodyTooLarge
            | ErrorKind::Other => Some(LedgerCause::Transport),
            ErrorKind::Auth
            | ErrorKind::Limiter
            | ErrorKind::Interrupted
            | ErrorKind::OffOrigin => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LedgerCause::Throttled => "throttled",
            LedgerCause::ServerError => "server-error",
            LedgerCause::Timeout => "timeout",
            LedgerCause::Transport => "transport",
        }
    }
}

/// One attempt's evidence (a line of `--out ledger=FILE`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LedgerEntry {
    /// When the attempt ended, Unix milliseconds.
    pub at_unix_ms: u64,
    pub scenario: String,
    pub request: String,
    /// 1 for the first attempt of the logical request, 2 for its first retry, ...
    pub attempt: u32,
    pub cause: LedgerCause,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The transport failure, for timeouts and transport errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorKind>,
    /// The id pacer sent (`http.correlationId`), the same on every attempt of the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The server's own id for the exchange, and the header it came in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_request_id_header: Option<String>,
    /// The limit the server named (a 429's body or headers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_limit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// The rate-limit headers of the answer, as parsed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<ServerLimitHeaders>,
    /// The worker that sent it (a fleet run), as the worker names itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
}

impl LedgerEntry {
    /// The total order the ledger keeps the first [`LEDGER_CAPACITY`] of: time, then fields
    /// that tell two entries of one millisecond apart.
    fn key(&self) -> (u64, &Option<String>, &Option<String>, u32, &str, &str) {
        (
            self.at_unix_ms,
            &self.worker,
            &self.correlation_id,
            self.attempt,
            &self.scenario,
            &self.request,
        )
    }

    fn cmp_key(&self, other: &LedgerEntry) -> Ordering {
        self.key().cmp(&other.key())
    }

    /// Every text field within [`MAX_LEDGER_TEXT`] (what a decoded snapshot must hold).
    fn check(&self) -> Result<(), String> {
        let texts = [
            ("correlationId", self.correlation_id.as_deref()),
            ("serverRequestId", self.server_request_id.as_deref()),
            (
                "serverRequestIdHeader",
                self.server_request_id_header.as_deref(),
            ),
            ("serverLimit", self.server_limit.as_deref()),
            ("worker", self.worker.as_deref()),
        ];
        for (name, t) in texts {
            if t.is_some_and(|t| t.len() > MAX_LEDGER_TEXT) {
                return Err(format!("{name}: longer than {MAX_LEDGER_TEXT} bytes"));
            }
        }
        Ok(())
    }
}

/// Text from a server or a plan made fit for the ledger: printable ASCII only (other
/// characters dropped: a hostile server's control characters never reach a terminal or a
/// report), cut at [`MAX_LEDGER_TEXT`]. `None` when nothing printable is left.
pub fn ledger_text(raw: &[u8]) -> Option<String> {
    let s: String = raw
        .iter()
        .filter(|b| (0x20..0x7f).contains(*b))
        .take(MAX_LEDGER_TEXT)
        .map(|&b| char::from(b))
        .collect();
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// The bounded ledger: the first [`LEDGER_CAPACITY`] entries and exact counts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ledger {
    /// In [`LedgerEntry::key`] order once [`Ledger::sorted`]; at most [`LEDGER_CAPACITY`].
    #[serde(default)]
    pub entries: Vec<LedgerEntry>,
    /// Every recorded attempt by cause (kept or not).
    #[serde(default)]
    pub counts: BTreeMap<LedgerCause, u64>,
}

impl Ledger {
    /// Attempts recorded (kept or not).
    pub fn total(&self) -> u64 {
        self.counts.values().fold(0, |a, b| a.saturating_add(*b))
    }

    /// Attempts counted but not kept.
    pub fn dropped(&self) -> u64 {
        self.total().saturating_sub(self.entries.len() as u64)
    }

    /// Record one entry: counted always, kept if among the first [`LEDGER_CAPACITY`].
    pub fn push(&mut self, e: LedgerEntry) {
        let n = self.counts.entry(e.cause).or_default();
        *n = n.saturating_add(1);
        if self.entries.len() < LEDGER_CAPACITY {
            self.entries.push(e);
            if self.entries.len() == LEDGER_CAPACITY {
                // Full from now on: kept in order, so the largest is the last.
                self.entries.sort_by(LedgerEntry::cmp_key);
            }
            return;
        }
        // Full, so in order (this and `merge` keep a full ledger sorted): the new one replaces
        // the largest, the last, if it comes before it. Entries mostly come in time order, so
        // this is one comparison per dropped entry.
        if self
            .entries
            .last()
            .is_some_and(|last| e.cmp_key(last) == Ordering::Less)
        {
            self.entries.pop();
            let at = self
                .entries
                .partition_point(|x| x.cmp_key(&e) != Ordering::Greater);
            self.entries.insert(at, e);
        }
    }

    /// The entries in order.
    pub fn sorted(mut self) -> Ledger {
        self.entries.sort_by(LedgerEntry::cmp_key);
        self
    }

    /// Add `other` (another worker's ledger): counts add, the first [`LEDGER_CAPACITY`] of
    /// both are kept. Exact and order-independent (see the module doc).
    pub fn merge(&mut self, other: &Ledger) {
        for (cause, n) in &other.counts {
            let m = self.counts.entry(*cause).or_default();
            *m = m.saturating_add(*n);
        }
        self.entries.extend(other.entries.iter().cloned());
        self.entries.sort_by(LedgerEntry::cmp_key);
        self.entries.truncate(LEDGER_CAPACITY);
    }

    /// What was recorded after `earlier` (an earlier state of the same ledger): counts
    /// subtract (never below zero), entries are those not already in `earlier`.
    pub fn delta(&self, earlier: &Ledger) -> Ledger {
        let counts = self
            .counts
            .iter()
            .filter_map(|(c, n)| {
                let d = n.saturating_sub(earlier.counts.get(c).copied().unwrap_or(0));
                (d > 0).then_some((*c, d))
            })
            .collect();
        let sorted = |l: &Ledger| l.entries.is_sorted_by(|a, b| a.cmp_key(b).is_le());
        let entries = if sorted(self) && sorted(earlier) {
            // Both in key order (as snapshots and merges keep them): one walk, not a search
            // per entry (the series takes a delta every second).
            let mut out = Vec::new();
            let mut old = earlier.entries.iter().peekable();
            for e in &self.entries {
                while old.next_if(|o| o.cmp_key(e) == Ordering::Less).is_some() {}
                let mut seen = false;
                while let Some(o) = old.next_if(|o| o.cmp_key(e) == Ordering::Equal) {
                    if o == e {
                        seen = true;
                        break;
                    }
                }
                if !seen {
                    out.push(e.clone());
                }
            }
            out
        } else {
            self.entries
                .iter()
                .filter(|e| !earlier.entries.contains(e))
                .cloned()
                .collect()
        };
        Ledger { entries, counts }
    }

    /// [`Ledger::delta`] for a ledger that must continue `earlier` as one recorder's does, so
    /// that merging the result into a merge that held `earlier` is exactly the merge holding
    /// this ledger instead (a controller's running fleet total). A recorder's counts never go
    /// down, and its entries leave only when the bound pushes them out: the ledger is full and
    /// what left sorts after every entry kept, so it could not be among the first
    /// [`LEDGER_CAPACITY`] of any merge holding this ledger. The error names what broke that.
    /// (Entries of one key that differ elsewhere are kept in the order they came, by any
    /// merge; at the bound, which of them stays may then depend on the order of the merges.)
    pub fn delta_continuing(&self, earlier: &Ledger) -> Result<Ledger, String> {
        let mut counts = BTreeMap::new();
        for (cause, &n) in &earlier.counts {
            let now = self.counts.get(cause).copied().unwrap_or(0);
            if now < n {
                return Err(format!(
                    "counts.{}: {now} is below the {n} reported before",
                    cause.as_str()
                ));
            }
        }
        for (cause, &n) in &self.counts {
            let d = n - earlier.counts.get(cause).copied().unwrap_or(0).min(n);
            if d > 0 {
                counts.insert(*cause, d);
            }
        }
        fn sorted(l: &Ledger) -> Vec<&LedgerEntry> {
            let mut v: Vec<&LedgerEntry> = l.entries.iter().collect();
            if !v.is_sorted_by(|a, b| a.cmp_key(b).is_le()) {
                v.sort_by(|a, b| a.cmp_key(b));
            }
            v
        }
        let (now, before) = (sorted(self), sorted(earlier));
        let (mut added, mut gone) = (Vec::new(), Vec::new());
        let (mut i, mut j) = (0, 0);
        while i < now.len() && j < before.len() {
            match now[i].cmp_key(before[j]) {
                Ordering::Less => {
                    added.push(now[i].clone());
                    i += 1;
                }
                Ordering::Greater => {
                    gone.push(before[j]);
                    j += 1;
                }
                Ordering::Equal => {
                    // A run of one key on each side: match equal entries one to one.
                    let end_i = i + now[i..].partition_point(|e| e.cmp_key(now[i]).is_eq());
                    let end_j = j + before[j..].partition_point(|e| e.cmp_key(before[j]).is_eq());
                    let mut matched = vec![false; end_i - i];
                    for old in &before[j..end_j] {
                        let found = (i..end_i).find(|&k| !matched[k - i] && now[k] == *old);
                        match found {
                            Some(k) => matched[k - i] = true,
                            None => gone.push(old),
                        }
                    }
                    for (k, m) in matched.iter().enumerate() {
                        if !m {
                            added.push(now[i + k].clone());
                        }
                    }
                    (i, j) = (end_i, end_j);
                }
            }
        }
        added.extend(now[i..].iter().map(|e| (*e).clone()));
        gone.extend(&before[j..]);
        if let Some(first_gone) = gone.first() {
            let full = self.entries.len() >= LEDGER_CAPACITY;
            let last_kept = now.last();
            if !full || last_kept.is_some_and(|l| first_gone.cmp_key(l).is_lt()) {
                return Err(format!(
                    "entries: an entry reported before (at {} ms) is gone while the ledger {}",
                    first_gone.at_unix_ms,
                    if full { "keeps later ones" } else { "has room" }
                ));
            }
        }
        Ok(Ledger {
            entries: added,
            counts,
        })
    }

    /// A decoded ledger holds what a recorder can: at most [`LEDGER_CAPACITY`] entries, each
    /// text within [`MAX_LEDGER_TEXT`].
    pub fn check(&self) -> Result<(), String> {
        if self.entries.len() > LEDGER_CAPACITY {
            return Err(format!(
                "entries: {} is more than {LEDGER_CAPACITY}",
                self.entries.len()
            ));
        }
        for (i, e) in self.entries.iter().enumerate() {
            e.check().map_err(|why| format!("entries[{i}].{why}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(t: u64, id: &str) -> LedgerEntry {
        LedgerEntry {
            at_unix_ms: t,
            scenario: "s".into(),
            request: "r".into(),
            attempt: 1,
            cause: LedgerCause::Throttled,
            status: Some(429),
            error: None,
            correlation_id: Some(id.into()),
            server_request_id: None,
            server_request_id_header: None,
            server_limit: Some("per-token".into()),
            retry_after_ms: Some(1000),
            rate_limit: None,
            worker: None,
        }
    }

    #[test]
    fn keeps_the_first_entries_and_counts_all() {
        let mut l = Ledger::default();
        for t in (0..LEDGER_CAPACITY as u64 + 10).rev() {
            l.push(entry(t, &format!("id{t}")));
        }
        let l = l.sorted();
        assert_eq!(l.entries.len(), LEDGER_CAPACITY);
        assert_eq!(l.total(), LEDGER_CAPACITY as u64 + 10);
        assert_eq!(l.dropped(), 10);
        assert_eq!(l.entries[0].at_unix_ms, 0);
        assert_eq!(
            l.entries.last().map(|e| e.at_unix_ms),
            Some(LEDGER_CAPACITY as u64 - 1)
        );
    }

    #[test]
    fn merge_is_order_independent_and_bounded() {
        let side = |from: u64| {
            let mut l = Ledger::default();
            for t in (from..from + 700).map(|t| t * 3) {
                l.push(entry(t, &format!("side{from}")));
            }
            l
        };
        let (a, b, c) = (side(0), side(100), side(1000));
        let mut ab_c = a.clone();
        ab_c.merge(&b);
        ab_c.merge(&c);
        let mut c_ba = c.clone();
        c_ba.merge(&b);
        c_ba.merge(&a);
        assert_eq!(ab_c, c_ba);
        assert_eq!(ab_c.entries.len(), LEDGER_CAPACITY);
        assert_eq!(ab_c.total(), 2100);
        let d = ab_c.delta(&a);
        assert_eq!(d.total(), 1400);
        // The walk over sorted ledgers and the search over unsorted ones agree.
        let a = a.sorted();
        let walked = ab_c.delta(&a);
        let mut shuffled = a.clone();
        shuffled.entries.reverse();
        assert_eq!(walked, ab_c.delta(&shuffled));
        assert_eq!(
            walked.entries.len(),
            ab_c.entries
                .iter()
                .filter(|e| !a.entries.contains(e))
                .count()
        );
    }

    #[test]
    fn server_text_is_printable_and_bounded() {
        assert_eq!(ledger_text(b"abc\x1b[31m\r\n"), Some("abc[31m".into()));
        assert_eq!(
            ledger_text(&[b'a'; 500]).map(|s| s.len()),
            Some(MAX_LEDGER_TEXT)
        );
        assert_eq!(ledger_text("é\x00".as_bytes()), None);
        let mut e = entry(1, "x");
        e.worker = Some("w".repeat(MAX_LEDGER_TEXT + 1));
        let l = Ledger {
            entries: vec![e],
            counts: BTreeMap::new(),
        };
        assert!(l.check().unwrap_err().contains("entries[0].worker"));
        // A worker's snapshot carrying it is refused, naming the field.
        let mut snap = crate::Snapshot::empty(&crate::Layout::default());
        snap.ledger = l;
        let e = crate::Snapshot::from_json(&snap.to_json()).unwrap_err();
        assert!(e.to_string().contains("ledger.entries[0].worker"), "{e}");
        snap.ledger = Ledger {
            entries: vec![entry(1, "x"); LEDGER_CAPACITY + 1],
            counts: BTreeMap::new(),
        };
        let e = crate::Snapshot::from_json(&snap.to_json()).unwrap_err();
        assert!(e.to_string().contains("more than 1000"), "{e}");
    }
}
