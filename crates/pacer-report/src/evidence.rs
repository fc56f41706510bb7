//! The evidence ledger in the HTML report: the counts of 429s, 5xx, timeouts and transport
//! errors, and the first [`LEDGER_ROWS`] attempts with what a support desk asks for (the
//! correlation id sent, the server's request id, the limit it named). The whole bounded ledger
//! is `--out ledger=FILE`.

use maud::{Markup, html};
use pacer_stats::ledger::Ledger;

use crate::html::utc;

/// Rows shown: enough to copy a few ids into a ticket, few enough that a run full of 429s
/// keeps the report light (the ledger itself holds up to `LEDGER_CAPACITY`).
pub const LEDGER_ROWS: usize = 100;

/// The `#ledger` section; nothing when the ledger is empty.
pub(crate) fn ledger_section(ledger: Option<&Ledger>) -> Markup {
    let Some(l) = ledger.filter(|l| l.total() > 0) else {
        return html! {};
    };
    html! {
        section #ledger {
            h2 { "Evidence: 429s, 5xx, timeouts and transport errors" }
            p.note {
                @for (i, (cause, n)) in l.counts.iter().enumerate() {
                    @if i > 0 { ", " }
                    (n) " " (cause.as_str())
                }
                ". The first " (l.entries.len().min(LEDGER_ROWS)) " of " (l.total())
                " attempts, in time order"
                @if l.dropped() > 0 { " (" (l.dropped()) " beyond the ledger's bound are counted only)" }
                "; all kept ones with " code { "--out ledger=FILE" } "."
            }
            table #table-ledger {
                tr {
                    @for h in ["time (UTC)", "scenario / request", "attempt", "status", "correlation id", "server request id", "limit", "Retry-After", "worker"] {
                        th { (h) }
                    }
                }
                @for e in l.entries.iter().take(LEDGER_ROWS) {
                    tr {
                        td { (utc(e.at_unix_ms)) }
                        td { (e.scenario) " / " (e.request) }
                        td.n { (e.attempt) }
                        td { @if let Some(s) = e.status { (s) } @else if let Some(k) = e.error { (k.as_str()) } }
                        td { code { (e.correlation_id.as_deref().unwrap_or("-")) } }
                        td {
                            @if let Some(id) = &e.server_request_id {
                                code { (id) } " (" (e.server_request_id_header.as_deref().unwrap_or("")) ")"
                            } @else { "-" }
                        }
                        td { (e.server_limit.as_deref().unwrap_or("-")) }
                        td.n { @if let Some(ms) = e.retry_after_ms { (format!("{:.1} s", ms as f64 / 1000.0)) } @else { "-" } }
                        td { (e.worker.as_deref().unwrap_or("-")) }
                    }
                }
            }
        }
    }
}
