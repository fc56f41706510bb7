//! One gRPC listener for every test the operator runs (one Service port in the chart): each
//! worker stream is routed to its test's `Coordinator` by the `test_id` of its first message
//! (Hello). The router reads that one message from the HTTP/2 body, then hands the request,
//! first message included and untouched, to the test's own tonic service; the response goes
//! back as that service wrote it. Workers need nothing special: `pacer worker --test-id ID`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures::StreamExt;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, BodyStream, StreamBody};
use pacer_controller::session::SessionService;
use pacer_proto::v1::coordinator_server::CoordinatorServer;
use pacer_proto::{WorkerMessage, worker_message};
use parking_lot::RwLock;
use prost::Message;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::body::Body;
use tonic::server::NamedService;
use tower::Service;

/// How long a new stream may take to send its Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

type Server = CoordinatorServer<SessionService>;

/// The tests this operator runs now, by test id.
#[derive(Clone, Default)]
pub struct Routes {
    inner: Arc<RwLock<HashMap<String, Server>>>,
}

impl Routes {
    pub fn insert(&self, test_id: &str, server: Server) {
        self.inner.write().insert(test_id.to_string(), server);
    }

    pub fn remove(&self, test_id: &str) {
        self.inner.write().remove(test_id);
    }

    pub fn get(&self, test_id: &str) -> Option<Server> {
        self.inner.read().get(test_id).cloned()
    }

    pub fn len(&self) -> usize {
        self.inner.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The tonic service of the shared listener (it answers for `pacer.v1.Coordinator`).
#[derive(Clone)]
pub struct Router {
    routes: Routes,
}

impl Router {
    pub fn new(routes: Routes) -> Self {
        Self { routes }
    }
}

impl NamedService for Router {
    const NAME: &'static str = "pacer.v1.Coordinator";
}

impl Service<http::Request<Body>> for Router {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let routes = self.routes.clone();
        Box::pin(async move { Ok(route(routes, req).await) })
    }
}

async fn route(routes: Routes, req: http::Request<Body>) -> http::Response<Body> {
    let (parts, mut body) = req.into_parts();
    let mut buf = BytesMut::new();
    let len = match tokio::time::timeout(HELLO_TIMEOUT, first_message(&mut body, &mut buf)).await {
        Ok(Ok(len)) => len,
        Ok(Err(status)) => return status.into_http(),
        Err(_) => {
            return Status::deadline_exceeded(format!(
                "no Hello within {HELLO_TIMEOUT:?} of opening the stream"
            ))
            .into_http();
        }
    };
    let test_id = match WorkerMessage::decode(&buf[5..5 + len]) {
        Ok(WorkerMessage {
            body: Some(worker_message::Body::Hello(h)),
        }) => h.test_id,
        Ok(_) => {
            return Status::failed_precondition("the first message of a stream must be Hello")
                .into_http();
        }
        Err(e) => return Status::invalid_argument(format!("WorkerMessage: {e}")).into_http(),
    };
    if test_id.is_empty() {
        return Status::invalid_argument(
            "hello.test_id: required: this controller runs several tests (start the worker with --test-id)",
        )
        .into_http();
    }
    let Some(mut server) = routes.get(&test_id) else {
        // Unavailable: the worker retries (within its --connect-for), which covers a test
        // whose coordinator is not registered yet.
        return Status::unavailable(format!(
            "hello.test_id: no test {test_id:?} runs on this controller"
        ))
        .into_http();
    };
    let first = buf.freeze();
    let rest = BodyStream::new(body).map(|frame| frame.map_err(|e| Status::from_error(e.into())));
    let stream =
        futures::stream::once(async move { Ok(http_body::Frame::data(first)) }).chain(rest);
    let req = http::Request::from_parts(parts, Body::new(StreamBody::new(stream)));
    match server.call(req).await {
        Ok(resp) => resp,
        Err(never) => match never {},
    }
}

/// Read the body until it holds one whole gRPC message; its length.
async fn first_message(body: &mut Body, buf: &mut BytesMut) -> Result<usize, Status> {
    loop {
        if buf.len() >= 5 {
            let compressed = buf[0];
            let len = (&buf[1..5]).get_u32() as usize;
            if compressed != 0 {
                return Err(Status::unimplemented(
                    "compressed messages are not supported by this controller",
                ));
            }
            if len > pacer_proto::MAX_MESSAGE_BYTES {
                return Err(Status::resource_exhausted(format!(
                    "a message of {len} bytes is more than the {} allowed",
                    pacer_proto::MAX_MESSAGE_BYTES
                )));
            }
            if buf.len() >= 5 + len {
                return Ok(len);
            }
        }
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                }
            }
            Some(Err(e)) => return Err(Status::cancelled(format!("the stream broke: {e}"))),
            None => return Err(Status::cancelled("the stream ended before its Hello")),
        }
    }
}

/// Serve the router on `listener` until `shutdown`.
pub fn serve(
    routes: Routes,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<Result<(), String>> {
    tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(Router::new(routes))
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
            .await
            .map_err(|e| e.to_string())
    })
}
