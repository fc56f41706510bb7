//! One session: one gRPC stream to the controller, from Hello to its end. A fresh worker is
//! assigned its shard and prepares it (`start`); a resuming one checks the controller still
//! means the same shard; both then stream reports (`report`). How a session ends ([`End`])
//! is decided here, in one place, from what the controller said ([`classify`]); the worker's
//! loop (`run` in lib.rs) acts on it.

use std::time::Duration;

use pacer_proto::v1::coordinator_client::CoordinatorClient;
use pacer_proto::{
    Assign, ControllerMessage, Hello, PROTOCOL_VERSION, Resume, WorkerMessage,
    controller_message::Body as In, worker_message::Body as Out,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status, Streaming};

use std::sync::Arc;

use crate::report::{Running, stream_reports};
use crate::served::{Hub, Inbound};
use crate::{WorkerConfig, WorkerError};

/// How long a controller has to answer Hello with Assign: it does so at once, unless it is
/// not a pacer controller at all.
const ASSIGN_WITHIN: Duration = Duration::from_secs(10);

/// Messages queued for the controller: a report a second plus heartbeats never come near it;
/// the room is for the Ping burst and a Finished right behind a Report.
const OUTBOX: usize = 64;

/// The floor of the controller's silence timeout: an unset (0) or tiny `peer_timeout_ms`
/// would declare the controller gone between two of its heartbeats.
const MIN_PEER_TIMEOUT: Duration = Duration::from_secs(1);

/// How a session (one stream) ended.
#[derive(Debug)]
pub(crate) enum End {
    /// Final results delivered: the worker is done.
    Delivered,
    /// The stream broke or went silent: reconnect.
    Retry(String),
    /// Do not reconnect.
    Fatal(WorkerError),
}

/// What a status from the controller means for this worker. Its message is the other side's
/// text: it is capped and its control characters escaped (`pacer_proto::peer_text`) before it
/// goes into an error or a log line.
pub(crate) fn classify(status: &Status) -> End {
    let text = pacer_proto::peer_text(status.message());
    match status.code() {
        Code::Unauthenticated
        | Code::PermissionDenied
        | Code::InvalidArgument
        | Code::ResourceExhausted => {
            End::Fatal(WorkerError::Refused(format!("{:?}: {text}", status.code())))
        }
        _ if pacer_proto::Refusal::of(status) == Some(pacer_proto::Refusal::AlreadyFinished) => {
            // The controller has our final report; the close that said so was lost.
            End::Delivered
        }
        Code::FailedPrecondition => End::Fatal(WorkerError::Refused(text)),
        _ => End::Retry(format!("{:?}: {text}", status.code())),
    }
}

pub(crate) type Tx = mpsc::Sender<WorkerMessage>;

pub(crate) async fn send(tx: &Tx, body: Out) -> Result<(), End> {
    tx.send(WorkerMessage { body: Some(body) })
        .await
        .map_err(|_| End::Retry("the stream closed".into()))
}

/// Next message from the controller within `timeout`.
pub(crate) async fn next(inbound: &mut Inbound, timeout: Duration) -> Result<In, End> {
    match tokio::time::timeout(timeout, inbound.message()).await {
        Err(_) => Err(End::Retry(format!(
            "no message from the controller for {timeout:?}"
        ))),
        Ok(Err(status)) => Err(classify(&status)),
        Ok(Ok(None)) => Err(End::Retry("the controller closed the stream".into())),
        Ok(Ok(Some(m))) => m.body.ok_or_else(|| {
            End::Fatal(WorkerError::Protocol(format!(
                "ControllerMessage.body: not set or of a kind this worker does not know (it speaks protocol {PROTOCOL_VERSION})"
            )))
        }),
    }
}

/// Run one session to its end. `attempt` (the reconnect backoff's count) is reset once the
/// controller has answered with an Assign.
pub(crate) async fn session(
    cfg: &WorkerConfig,
    endpoint: &Endpoint,
    running: &mut Option<Running>,
    cancel: &CancellationToken,
    attempt: &mut u32,
    hub: &Arc<Hub>,
) -> End {
    match session_inner(cfg, endpoint, running, cancel, attempt, hub).await {
        Ok(()) => End::Delivered,
        Err(end) => end,
    }
}

async fn session_inner(
    cfg: &WorkerConfig,
    endpoint: &Endpoint,
    running: &mut Option<Running>,
    cancel: &CancellationToken,
    attempt: &mut u32,
    hub: &Arc<Hub>,
) -> Result<(), End> {
    let hello = hello(cfg, running.as_ref());
    let link = Link::open(cfg, endpoint, hello, running.is_some()).await?;
    // The served budget's messages go to the hub; the rest is read here as before.
    hub.attach(&link.tx);
    let mut inbound = Inbound::new(link.inbound, hub.clone());
    let assign = await_assign(&mut inbound).await?;
    // The session is established: the next loss starts a new backoff.
    *attempt = 0;
    let peer_timeout =
        MIN_PEER_TIMEOUT.max(Duration::from_millis(u64::from(assign.peer_timeout_ms)));
    match running {
        None => {
            let prepared = crate::start::prepare(
                cfg,
                &assign,
                &link.tx,
                &mut inbound,
                cancel,
                peer_timeout,
                hub,
            )
            .await?;
            let Some(r) = prepared else {
                return Err(End::Fatal(WorkerError::NotStarted));
            };
            *running = Some(r);
        }
        Some(r) => {
            resume(&assign, r)?;
            r.heard();
        }
    }
    let Some(r) = running.as_mut() else {
        return Err(End::Fatal(WorkerError::NotStarted));
    };
    r.peer_timeout = peer_timeout;
    r.detail_max = crate::report::detail_max(&assign);
    stream_reports(r, &link.tx, &mut inbound, cancel).await
}

/// An open stream: what goes to the controller, what comes from it, and the client that
/// holds the connection (kept for as long as the stream is used).
struct Link {
    inbound: Streaming<ControllerMessage>,
    tx: Tx,
    _client: CoordinatorClient<Channel>,
}

impl Link {
    /// Connect (over `cfg`'s transport), open the session stream and say `hello` first.
    /// `started`: a shard runs (an untrusted certificate is then retried, not fatal).
    async fn open(
        cfg: &WorkerConfig,
        endpoint: &Endpoint,
        hello: Hello,
        started: bool,
    ) -> Result<Link, End> {
        let channel: Channel = crate::tls::dial(endpoint, &cfg.transport, started).await?;
        let mut client = CoordinatorClient::new(channel)
            .max_decoding_message_size(pacer_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(pacer_proto::MAX_MESSAGE_BYTES);
        let (tx, rx) = mpsc::channel::<WorkerMessage>(OUTBOX);
        send(&tx, Out::Hello(hello)).await?;
        let inbound = client
            .session(ReceiverStream::new(rx))
            .await
            .map_err(|s| classify(&s))?
            .into_inner();
        Ok(Link {
            inbound,
            tx,
            _client: client,
        })
    }
}

/// The Hello: who this worker is and, when it already runs a shard, where that shard stands
/// (so a restarted controller takes it back).
fn hello(cfg: &WorkerConfig, running: Option<&Running>) -> Hello {
    Hello {
        protocol_version: PROTOCOL_VERSION,
        test_id: running
            .map(|r| r.test_id.clone())
            .or_else(|| cfg.test_id.clone())
            .unwrap_or_default(),
        worker_index: running.map(|r| r.index).or(cfg.index),
        version: env!("CARGO_PKG_VERSION").to_string(),
        session_token: cfg.session_token.clone(),
        name: cfg.name.clone(),
        resume: running.map(|r| Resume {
            elapsed_us: r.elapsed_us(),
            finished: r.done().is_some(),
        }),
        takes_served_budget: true,
    }
}

/// The controller's answer to Hello, which must be an Assign in this worker's protocol.
async fn await_assign(inbound: &mut Inbound) -> Result<Assign, End> {
    let assign = match next(inbound, ASSIGN_WITHIN).await? {
        In::Assign(a) => a,
        other => {
            return Err(End::Fatal(WorkerError::Protocol(format!(
                "{} before Assign: the controller must answer Hello with Assign",
                other.kind()
            ))));
        }
    };
    if assign.protocol_version != PROTOCOL_VERSION {
        return Err(End::Fatal(WorkerError::Protocol(format!(
            "assign.protocol_version: {} is not {PROTOCOL_VERSION}",
            assign.protocol_version
        ))));
    }
    Ok(assign)
}

/// Take a resumed session's Assign: the same shard, and the reports continue from the one
/// this controller counted last (`Assign.counted_seq`; none: from the start). A report this
/// worker cannot continue exactly is fatal: resuming would lose or double-count results.
fn resume(assign: &Assign, r: &mut Running) -> Result<(), End> {
    same_shard(assign, r)?;
    r.resume_from(assign.counted_seq)
        .map_err(|m| End::Fatal(WorkerError::Protocol(m)))
}

/// A resumed session must be assigned the shard this worker already runs.
fn same_shard(assign: &Assign, r: &Running) -> Result<(), End> {
    if assign.worker_index != r.index || assign.weights != r.weights || assign.test_id != r.test_id
    {
        return Err(End::Fatal(WorkerError::Protocol(format!(
            "assign: the controller now says worker {} of {:?} in test {:?}, but this worker runs {} of {:?} in {:?}",
            assign.worker_index, assign.weights, assign.test_id, r.index, r.weights, r.test_id
        ))));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(end: End) -> String {
        match end {
            End::Fatal(WorkerError::Refused(m)) => m,
            other => panic!("not a refusal: {other:?}"),
        }
    }

    #[test]
    fn a_refused_hello_is_fatal_and_names_the_code() {
        for status in [
            Status::unauthenticated("hello.session_token: wrong"),
            Status::permission_denied("no"),
            Status::invalid_argument("hello.test_id: required when resuming"),
            Status::resource_exhausted("all 2 worker slots are taken"),
        ] {
            let m = refused(classify(&status));
            assert!(m.starts_with(&format!("{:?}: ", status.code())), "{m}");
            assert!(m.contains(status.message()), "{m}");
        }
    }

    /// The controller has the final report already: the close that said so was lost, and
    /// the worker is done rather than failed.
    #[test]
    fn already_finished_means_delivered() {
        let status =
            pacer_proto::Refusal::AlreadyFinished.to_status("worker 1 has already finished");
        assert!(matches!(classify(&status), End::Delivered));
        // The words alone are the controller's text, not its meaning.
        let words = Status::failed_precondition("worker 1 has already finished");
        assert!(matches!(classify(&words), End::Fatal(_)));
    }

    #[test]
    fn another_failed_precondition_is_fatal() {
        let m = refused(classify(&Status::failed_precondition("the test is over")));
        assert_eq!(m, "the test is over");
    }

    #[test]
    fn a_broken_or_replaced_stream_is_retried() {
        for status in [
            Status::unavailable("connection reset"),
            Status::aborted("declared lost"),
            Status::internal("h2 protocol error"),
            Status::cancelled("replaced"),
        ] {
            match classify(&status) {
                End::Retry(reason) => {
                    assert!(reason.contains(status.message()), "{reason}");
                    assert!(
                        reason.starts_with(&format!("{:?}", status.code())),
                        "{reason}"
                    );
                }
                other => panic!("{:?} is not retried: {other:?}", status.code()),
            }
        }
    }

    #[test]
    fn a_fresh_hello_asks_for_what_the_config_says_and_a_resumed_one_for_its_shard() {
        let mut cfg = WorkerConfig::new("c:1", "session-token-0123456789");
        cfg.test_id = Some("asked".into());
        cfg.index = Some(7);
        let fresh = hello(&cfg, None);
        assert_eq!(fresh.protocol_version, PROTOCOL_VERSION);
        assert_eq!(
            (fresh.test_id.as_str(), fresh.worker_index),
            ("asked", Some(7))
        );
        assert_eq!(fresh.session_token, cfg.session_token);
        assert!(fresh.resume.is_none());
        let (r, _ended) = crate::report::idle_running(1, "running", vec![1, 2]);
        let resumed = hello(&cfg, Some(&r));
        assert_eq!(
            (resumed.test_id.as_str(), resumed.worker_index),
            ("running", Some(1))
        );
        assert!(resumed.resume.is_some_and(|r| !r.finished));
    }

    #[test]
    fn a_resumed_session_must_be_assigned_the_same_shard() {
        let (r, _ended) = crate::report::idle_running(1, "t", vec![1, 2]);
        let assign = |index: u32, weights: Vec<u32>, test_id: &str| Assign {
            worker_index: index,
            weights,
            test_id: test_id.into(),
            ..Default::default()
        };
        assert!(same_shard(&assign(1, vec![1, 2], "t"), &r).is_ok());
        for other in [
            assign(0, vec![1, 2], "t"),
            assign(1, vec![1, 1], "t"),
            assign(1, vec![1, 2], "u"),
        ] {
            match same_shard(&other, &r) {
                Err(End::Fatal(WorkerError::Protocol(m))) => {
                    assert!(m.contains("but this worker runs 1 of [1, 2]"), "{m}")
                }
                other => panic!("{other:?}"),
            }
        }
    }

    /// A resumed session continues the report its controller counted, or fails by name when
    /// the worker cannot.
    #[test]
    fn a_resumed_session_continues_the_counted_report_or_fails() {
        let (mut r, _ended) = crate::report::idle_running(1, "t", vec![1, 2]);
        let assign = |counted_seq: u64| Assign {
            worker_index: 1,
            weights: vec![1, 2],
            test_id: "t".into(),
            counted_seq,
            ..Default::default()
        };
        assert!(resume(&assign(0), &mut r).is_ok());
        match resume(&assign(5), &mut r) {
            Err(End::Fatal(WorkerError::Protocol(m))) => {
                assert!(m.starts_with("assign.counted_seq: 5 "), "{m}")
            }
            other => panic!("{other:?}"),
        }
    }

    /// The controller's text reaches the error escaped: no forged log line, no terminal
    /// escape.
    #[test]
    fn the_controllers_text_is_escaped() {
        let m = refused(classify(&Status::failed_precondition(
            "no\nINFO forged line \u{1b}[31m",
        )));
        assert!(!m.contains('\n') && !m.contains('\u{1b}'), "{m:?}");
    }
}
