//! What a support desk asks for when an API throttles or fails: the correlation id each
//! logical request carries (`http.correlationId`, the same on every retry) and the ledger
//! entry of each attempt that ended in a 429, a 5xx, a timeout or a transport error
//! ([`pacer_stats::ledger`]), with the server's own request id when it sent one.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};
use pacer_stats::ledger::{LedgerCause, LedgerEntry, ledger_text};
use pacer_stats::{ErrorKind, Recorder};

/// Headers in which servers send their own id for a request, in the order looked for:
/// Genesys Cloud's, the common de-facto ones, the cloud vendors', then W3C trace context.
pub(crate) const SERVER_REQUEST_ID_HEADERS: [&str; 8] = [
    "inin-correlation-id",
    "x-request-id",
    "x-amzn-requestid",
    "x-amz-request-id",
    "x-ms-request-id",
    "x-github-request-id",
    "cf-ray",
    "traceparent",
];

/// The correlation id of one logical request: the header it goes in (`None`: the plan turned
/// it off) and its value. A request that sets the header itself keeps its own value. Held by
/// every request in flight: the header's name is the run's (parsed once, [`Shared`]'s), not a
/// copy.
///
/// [`Shared`]: crate::iteration::Shared
pub(crate) struct Correlation<'a> {
    pub(crate) header: Option<&'a HeaderName>,
    /// `Some` when pacer adds the header (the request does not set it).
    pub(crate) added: Option<HeaderValue>,
    /// The id as the ledger shows it.
    pub(crate) id: Option<String>,
}

impl<'a> Correlation<'a> {
    /// A new id for a request whose prepared headers are `headers`, under the plan's
    /// `http.correlationId` header (`None`: turned off).
    pub(crate) fn new(header: Option<&'a HeaderName>, headers: &HeaderMap) -> Correlation<'a> {
        let Some(name) = header else {
            return Correlation {
                header: None,
                added: None,
                id: None,
            };
        };
        if let Some(own) = headers.get(name) {
            return Correlation {
                id: ledger_text(own.as_bytes()),
                header: Some(name),
                added: None,
            };
        }
        // A v4 UUID from the thread's generator: no system call per request.
        let id = uuid::Builder::from_random_bytes(rand::random())
            .into_uuid()
            .to_string();
        Correlation {
            added: HeaderValue::from_str(&id).ok(),
            id: Some(id),
            header: Some(name),
        }
    }
}

impl Correlation<'_> {
    /// For a request rendered again on each attempt (`{{attempt}}`): its own header, if it
    /// sets one, would render anew, so pacer sends the first attempt's id on every attempt.
    pub(crate) fn for_retries(mut self, rendered_again: bool) -> Self {
        if rendered_again && self.added.is_none() {
            self.added = self
                .id
                .as_deref()
                .and_then(|id| HeaderValue::from_str(id).ok());
        }
        self
    }
}

/// The server's own id for the exchange: the first of [`SERVER_REQUEST_ID_HEADERS`] present
/// with something printable in it, `(value, header)`.
pub(crate) fn server_request_id(h: &HeaderMap) -> Option<(String, String)> {
    SERVER_REQUEST_ID_HEADERS.iter().find_map(|name| {
        let v = ledger_text(h.get(*name)?.as_bytes())?;
        Some((v, (*name).to_string()))
    })
}

/// Who sent the attempt: where it is recorded and what identifies it.
pub(crate) struct Sent<'a> {
    pub(crate) recorder: &'a Recorder,
    pub(crate) scenario: &'a str,
    pub(crate) request: &'a str,
    pub(crate) attempt: u32,
    pub(crate) correlation_id: Option<&'a str>,
}

impl Sent<'_> {
    fn entry(&self, cause: LedgerCause) -> LedgerEntry {
        LedgerEntry {
            at_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            scenario: self.scenario.to_string(),
            request: self.request.to_string(),
            attempt: self.attempt,
            cause,
            status: None,
            error: None,
            correlation_id: self.correlation_id.map(str::to_string),
            server_request_id: None,
            server_request_id_header: None,
            server_limit: None,
            retry_after_ms: None,
            rate_limit: None,
            worker: None,
        }
    }

    /// An answer: recorded if its status is a 429 or a 5xx.
    pub(crate) fn answered(
        &self,
        status: u16,
        headers: &HeaderMap,
        body: &[u8],
        retry_after: Option<Duration>,
    ) {
        let Some(cause) = LedgerCause::of_status(status) else {
            return;
        };
        let mut e = self.entry(cause);
        e.status = Some(status);
        if let Some((id, header)) = server_request_id(headers) {
            e.server_request_id = Some(id);
            e.server_request_id_header = Some(header);
        }
        e.server_limit = crate::ratelimit_headers::server_limit_name(headers, body)
            .and_then(|n| ledger_text(n.as_bytes()));
        e.retry_after_ms = retry_after.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        e.rate_limit = crate::ratelimit_headers::parse(headers);
        self.recorder.record_ledger(e);
    }

    /// A transport failure: recorded unless pacer caused it itself.
    pub(crate) fn failed(&self, kind: ErrorKind) {
        let Some(cause) = LedgerCause::of_error(kind) else {
            return;
        };
        let mut e = self.entry(cause);
        e.error = Some(kind);
        self.recorder.record_ledger(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_keeps_its_own_correlation_header() {
        let mut h = HeaderMap::new();
        let name = HeaderName::from_static("x-correlation-id");
        let c = Correlation::new(Some(&name), &h);
        assert!(c.added.is_some() && c.id.as_deref().is_some_and(|i| i.len() == 36));
        h.insert("x-correlation-id", HeaderValue::from_static("mine"));
        let c = Correlation::new(Some(&name), &h);
        assert!(c.added.is_none());
        assert_eq!(c.id.as_deref(), Some("mine"));
        let c = Correlation::new(None, &h);
        assert!(c.header.is_none() && c.id.is_none());
    }

    #[test]
    fn the_servers_request_id_is_printable_and_bounded() {
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        );
        h.insert(
            "x-request-id",
            HeaderValue::from_bytes(&[b'a'; 300]).unwrap(),
        );
        let (id, header) = server_request_id(&h).unwrap();
        assert_eq!(header, "x-request-id");
        assert_eq!(id.len(), pacer_stats::ledger::MAX_LEDGER_TEXT);
        h.insert("x-request-id", HeaderValue::from_bytes(b"\t \xff").unwrap());
        assert_eq!(server_request_id(&h).unwrap().1, "traceparent");
    }
}
