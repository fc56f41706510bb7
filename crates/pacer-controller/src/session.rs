//! One worker's gRPC stream, message by message. Every message is checked against the
//! protocol (proto/pacer/v1/coordinator.proto): a wrong version, token or test id, a message
//! out of order, a message kind this controller does not know, or a snapshot that does not
//! decode or does not fit the plan ends the stream with a status naming the field. Nothing a
//! worker sends can panic the controller.

use std::sync::Arc;
use std::time::Duration;

use pacer_proto::v1::coordinator_server::Coordinator;
use pacer_proto::{
    ControllerMessage, Hello, PROTOCOL_VERSION, Report, WorkerMessage, controller_message,
    worker_message::Body,
};
use pacer_stats::{LimitPacing, Snapshot};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::fleet::{Conn, Decoded, WorkerState, detail_share};
use crate::{Inner, check_hello, msg};

/// The tonic service: a task per stream.
pub struct SessionService {
    pub(crate) inner: Arc<Inner>,
}

type Tx = mpsc::Sender<Result<ControllerMessage, Status>>;

#[tonic::async_trait]
impl Coordinator for SessionService {
    type SessionStream = ReceiverStream<Result<ControllerMessage, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<WorkerMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let peer = request
            .remote_addr()
            .map_or_else(|| "?".to_string(), |a| a.to_string());
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let inner = self.inner.clone();
        tokio::spawn(async move {
            if let Err(status) = serve_stream(&inner, &mut inbound, &tx).await {
                tracing::warn!(
                    "worker stream from {peer} refused: {}",
                    pacer_proto::peer_text(status.message())
                );
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// What the stream loop does after a message.
enum Next {
    Continue,
    /// The worker finished: close the stream (the worker takes the close as the receipt).
    Close,
}

async fn serve_stream(
    inner: &Arc<Inner>,
    inbound: &mut Streaming<WorkerMessage>,
    tx: &Tx,
) -> Result<(), Status> {
    let first = tokio::time::timeout(inner.cfg.hello_timeout, inbound.message())
        .await
        .map_err(|_| {
            Status::deadline_exceeded(format!(
                "no Hello within {:?} of opening the stream",
                inner.cfg.hello_timeout
            ))
        })??;
    let Some(first) = first else {
        return Ok(());
    };
    let hello = match first.body {
        Some(Body::Hello(h)) => h,
        Some(other) => {
            return Err(Status::failed_precondition(format!(
                "{} before Hello: the first message of a stream must be Hello",
                other.kind()
            )));
        }
        None => return Err(unknown_body()),
    };
    let (index, conn_id, resuming) = admit(inner, &hello, tx)?;
    let shard = &inner.shards[index as usize];
    // The worker's next report continues this one (nothing can be counted for its index
    // until that report: any older stream of it no longer holds the slot).
    let counted_seq = inner.fleet.lock().counted_seq(index);
    let interval_ms = |d: Duration| d.as_millis().clamp(1, u128::from(u32::MAX)) as u32;
    let assign = controller_message::Body::Assign(pacer_proto::Assign {
        protocol_version: PROTOCOL_VERSION,
        test_id: inner.cfg.test_id.clone(),
        worker_index: index,
        weights: shard.weights().to_vec(),
        plan_spec_json: inner.plan_spec_json.clone(),
        plan_source_json: inner.plan_source_json.clone(),
        send_worker_header: inner.cfg.send_worker_header,
        report_interval_ms: interval_ms(inner.cfg.report_interval),
        heartbeat_interval_ms: interval_ms(inner.cfg.heartbeat_interval),
        peer_timeout_ms: interval_ms(inner.cfg.lost_after),
        served_limits: inner.served.as_ref().is_some_and(|s| s.serves_limits()),
        served_credentials: inner
            .served
            .as_ref()
            .map_or_else(Vec::new, |s| s.served_credentials()),
        data: data_files(&inner.plan),
        counted_seq,
        detail_max_bytes: detail_share(inner.shards.len()) as u64,
    });
    tx.send(msg(assign))
        .await
        .map_err(|_| Status::cancelled("stream closed"))?;
    tracing::info!(
        "worker {index} ({}) {}",
        pacer_proto::peer_text(&hello.name),
        if resuming { "resumed" } else { "assigned" }
    );
    // A worker that was away when the fleet was stopped hears it now.
    let pending = resuming.then(|| inner.fleet.lock().halt_for_resumed());
    if let Some(body) = pending.flatten() {
        tx.send(msg(body))
            .await
            .map_err(|_| Status::cancelled("stream closed"))?;
    }
    let heartbeats = tokio::spawn(heartbeat(
        inner.clone(),
        index,
        tx.clone(),
        inner.cfg.heartbeat_interval,
    ));
    let result = loop {
        let m = match inbound.message().await {
            Ok(Some(m)) => m,
            Ok(None) => break Ok(()),
            Err(status) => {
                tracing::debug!("worker {index}: stream ended: {status}");
                break Ok(());
            }
        };
        match on_message(inner, index, conn_id, m, tx).await {
            Ok(Next::Continue) => {}
            Ok(Next::Close) => break Ok(()),
            Err(status) => break Err(status),
        }
    };
    heartbeats.abort();
    disconnect(inner, index, conn_id);
    result
}

/// The plan's data files as the controller read them, for every worker's Assign (each takes
/// its own rows: docs/distributed.md, "Test data").
fn data_files(plan: &pacer_plan::Plan) -> Vec<pacer_proto::v1::DataFile> {
    plan.data
        .iter()
        .filter_map(|d| {
            Some(pacer_proto::v1::DataFile {
                name: d.name.clone(),
                text: d.text.as_deref()?.to_string(),
            })
        })
        .collect()
}

fn unknown_body() -> Status {
    Status::invalid_argument(format!(
        "WorkerMessage.body: not set or of a kind this controller does not know (it speaks protocol {PROTOCOL_VERSION}, pacer {})",
        env!("CARGO_PKG_VERSION")
    ))
}

/// The controller's heartbeats to worker `index`, each with the last report of it counted
/// (the worker then forgets the state of older ones).
async fn heartbeat(inner: Arc<Inner>, index: u32, tx: Tx, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let counted_seq = inner.fleet.lock().counted_seq(index);
        let body = controller_message::Body::Heartbeat(pacer_proto::Heartbeat {
            sent_us: inner.epoch.elapsed().as_micros() as u64,
            counted_seq,
        });
        if tx.send(msg(body)).await.is_err() {
            return;
        }
    }
}

/// Check a Hello and register the stream in its slot ([`crate::fleet::Fleet::admit`]):
/// `(index, connection id, resuming)`.
fn admit(inner: &Inner, h: &Hello, tx: &Tx) -> Result<(u32, u64, bool), Status> {
    // The gate (crate::listener) checked this Hello already; the session checks it again so
    // the service is sound whoever mounts it.
    check_hello(&inner.cfg, h)?;
    if inner.served.is_some() && !h.takes_served_budget {
        // Such a worker would pace its share on its own and fetch its own tokens.
        return Err(Status::failed_precondition(
            "hello.takes_served_budget: this controller serves the fleet's limits and tokens over the session, and this worker does not take them (upgrade it to this controller's pacer version)",
        ));
    }
    let id = inner.conn_id();
    let conn = Conn { id, tx: tx.clone() };
    let now = Instant::now();
    let (index, resuming) = inner.fleet.lock().admit(&inner.cfg.test_id, h, conn, now)?;
    inner.changed.notify_waiters();
    Ok((index, id, resuming))
}

/// The refusal of a message that comes out of the protocol's order.
fn out_of_order(what: &str, index: u32, state: WorkerState) -> Status {
    Status::failed_precondition(format!(
        "{what} while worker {index} is {state}: the order is Hello, Assign, Ready, Start, Report..., Finished"
    ))
}

async fn on_message(
    inner: &Arc<Inner>,
    index: u32,
    conn: u64,
    m: WorkerMessage,
    tx: &Tx,
) -> Result<Next, Status> {
    let body = m.body.ok_or_else(unknown_body)?;
    if matches!(
        body,
        Body::LeaseRequest(_) | Body::Throttled(_) | Body::TokenRequest(_)
    ) {
        return on_served(inner, index, conn, body, tx).await;
    }
    if let Body::Ping(p) = &body {
        let pong = controller_message::Body::Pong(pacer_proto::Pong {
            sent_us: p.sent_us,
            controller_us: inner.epoch.elapsed().as_micros() as u64,
        });
        tx.send(msg(pong))
            .await
            .map_err(|_| Status::cancelled("stream closed"))?;
    }
    // Order first (a misplaced report is refused as such), then decode outside the lock:
    // snapshots can be large.
    // A worker that cannot run at all says so with a Finished carrying an error, before Ready.
    let cannot_run = matches!(&body, Body::Finished(fin) if !fin.error.is_empty());
    if matches!(body, Body::Report(_) | Body::Finished(_)) {
        let state = inner.fleet.lock().state(index);
        let early_failure =
            cannot_run && matches!(state, WorkerState::Assigned | WorkerState::Ready);
        if state != WorkerState::Running && !early_failure {
            return Err(out_of_order(body.kind(), index, state));
        }
    }
    let decoded = match &body {
        Body::Report(r) => Some(decode_report(inner, r, "report")?),
        Body::Finished(fin) => match &fin.report {
            Some(r) => Some(decode_report(inner, r, "finished.report")?),
            None => None,
        },
        _ => None,
    };
    let (detail, detail_left_out) = match &body {
        Body::Finished(fin) => own_results(inner, index, fin)?,
        _ => (None, false),
    };
    let mut f = inner.fleet.lock();
    let state = f.heard(index, conn, Instant::now())?;
    let order = |what: &str| out_of_order(what, index, state);
    let mut next = Next::Continue;
    match body {
        Body::Hello(_) => return Err(order("a second Hello")),
        Body::LeaseRequest(_) | Body::Throttled(_) | Body::TokenRequest(_) => {}
        Body::Ping(_) | Body::Heartbeat(_) => {}
        Body::Ready(_) => {
            if state != WorkerState::Assigned {
                return Err(order("Ready"));
            }
            f.ready(index);
        }
        Body::Report(_) => {
            if state != WorkerState::Running {
                return Err(order("Report"));
            }
            if let Some(report) = decoded {
                f.accept_report(index, report);
            }
        }
        Body::Finished(fin) => {
            if state != WorkerState::Running && !cannot_run {
                return Err(order("Finished"));
            }
            let error = (!fin.error.is_empty()).then(|| pacer_proto::peer_text(&fin.error));
            match &error {
                None => tracing::info!("worker {index} finished"),
                Some(e) => tracing::warn!("worker {index} failed: {e}"),
            }
            f.finish(
                index,
                decoded,
                detail,
                detail_left_out,
                fin.stopped_early,
                error,
            );
            next = Next::Close;
        }
    }
    drop(f);
    inner.changed.notify_waiters();
    Ok(next)
}

/// Worker `index`'s own results from its Finished (for its row in reports), and whether they
/// were left out for their size. Decoded only when they fit its share of the room for them
/// (`Assign.detail_max_bytes`): a worker that sends larger ones anyway is not trusted to
/// bound the controller's memory.
fn own_results(
    inner: &Inner,
    index: u32,
    fin: &pacer_proto::Finished,
) -> Result<(Option<Snapshot>, bool), Status> {
    let share = detail_share(inner.shards.len());
    if fin.snapshot_json.len() > share {
        tracing::warn!(
            "worker {index}: its own results ({} bytes) are over its share of the room for them ({share} bytes): not kept",
            fin.snapshot_json.len()
        );
        return Ok((None, true));
    }
    if fin.snapshot_json.is_empty() {
        return Ok((None, fin.detail_left_out));
    }
    let snapshot =
        decode_snapshot_bytes(&inner.layout, &fin.snapshot_json, "finished.snapshot_json")?;
    Ok((Some(snapshot), fin.detail_left_out))
}

/// A message of the served budget (`crate::served`): a lease answered on this stream, a pause
/// told to every worker, a token answered here or handed to everyone once fetched.
async fn on_served(
    inner: &Arc<Inner>,
    index: u32,
    conn: u64,
    body: Body,
    tx: &Tx,
) -> Result<Next, Status> {
    let Some(served) = &inner.served else {
        return Err(Status::failed_precondition(format!(
            "{}: this controller serves neither limits nor tokens (the Assign said so)",
            body.kind()
        )));
    };
    inner.fleet.lock().heard(index, conn, Instant::now())?;
    let reply = match body {
        Body::LeaseRequest(r) => Some(controller_message::Body::LeaseGrant(served.lease(&r)?)),
        Body::Throttled(t) => {
            let pause = served.throttled(&t)?;
            inner
                .fleet
                .lock()
                .broadcast(controller_message::Body::Pause(pause));
            None
        }
        Body::TokenRequest(r) => served
            .token_request(inner, r.credential, r.failed_generation)?
            .map(controller_message::Body::TokenGrant),
        _ => None,
    };
    if let Some(body) = reply {
        tx.send(msg(body))
            .await
            .map_err(|_| Status::cancelled("stream closed"))?;
    }
    Ok(Next::Continue)
}

fn decode_report(inner: &Inner, r: &Report, field: &str) -> Result<Decoded, Status> {
    Ok(Decoded {
        seq: r.seq,
        since_seq: r.since_seq,
        elapsed_us: r.elapsed_us,
        snapshot: decode_snapshot(&inner.layout, r, field)?,
        limits: decode_limits(inner.plan.limits.len(), r, field)?,
    })
}

/// A worker's limits table: at most [`pacer_proto::MAX_LIMITS_BYTES`], one row per limit of
/// the plan (or none).
pub fn decode_limits(
    plan_limits: usize,
    r: &Report,
    field: &str,
) -> Result<Vec<LimitPacing>, Status> {
    if r.limits_json.is_empty() {
        return Ok(Vec::new());
    }
    if r.limits_json.len() > pacer_proto::MAX_LIMITS_BYTES {
        return Err(Status::invalid_argument(format!(
            "{field}.limits_json: {} bytes is more than the {} allowed",
            r.limits_json.len(),
            pacer_proto::MAX_LIMITS_BYTES
        )));
    }
    let rows: Vec<LimitPacing> = serde_json::from_slice(&r.limits_json)
        .map_err(|e| Status::invalid_argument(format!("{field}.limits_json: {e}")))?;
    if !rows.is_empty() && rows.len() != plan_limits {
        return Err(Status::invalid_argument(format!(
            "{field}.limits_json: {} limits, the plan has {plan_limits}",
            rows.len()
        )));
    }
    Ok(rows)
}

/// Validate and decode a worker's report: at most [`pacer_proto::MAX_SNAPSHOT_BYTES`], a
/// snapshot pacer can read, laid out like the plan. `field` names the report in errors.
pub fn decode_snapshot(
    layout: &pacer_stats::Layout,
    r: &Report,
    field: &str,
) -> Result<Snapshot, Status> {
    decode_snapshot_bytes(layout, &r.snapshot_json, &format!("{field}.snapshot_json"))
}

/// [`decode_snapshot`] of a snapshot's JSON bytes; `field` names them in errors.
fn decode_snapshot_bytes(
    layout: &pacer_stats::Layout,
    json: &[u8],
    field: &str,
) -> Result<Snapshot, Status> {
    if json.len() > pacer_proto::MAX_SNAPSHOT_BYTES {
        return Err(Status::invalid_argument(format!(
            "{field}: {} bytes is more than the {} allowed",
            json.len(),
            pacer_proto::MAX_SNAPSHOT_BYTES
        )));
    }
    let snap = Snapshot::from_json_bytes(json)
        .map_err(|e| Status::invalid_argument(format!("{field}: {e}")))?;
    let got = snap.layout();
    if &got != layout {
        return Err(Status::invalid_argument(format!(
            "{field}: its scenarios and requests are not the plan's ({} scenarios, plan has {})",
            got.scenarios.len(),
            layout.scenarios.len()
        )));
    }
    Ok(snap)
}

fn disconnect(inner: &Inner, index: u32, conn: u64) {
    inner.fleet.lock().disconnect(index, conn);
    inner.changed.notify_waiters();
}
