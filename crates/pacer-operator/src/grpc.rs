//! One gRPC listener for every test the operator runs (one Service port in the chart): each
//! worker stream is routed to its test's `Coordinator` by the `test_id` of its first message
//! (Hello). The listener is `pacer_controller::listener`'s: its gate reads that one message
//! (at most `pacer_proto::MAX_HELLO_BYTES`, within the Hello timeout, under the limits on
//! connections, streams and unauthenticated streams), asks [`Routes`] for the test's
//! coordinator, has it check the session token, and only then hands the request, first message
//! included and untouched, to the test's own tonic service. Workers need nothing special:
//! `pacer worker --test-id ID`. With TLS (on by default in the chart) the handshake comes
//! first, under the listener's bounds on handshakes (`pacer_controller::listener`).

use std::collections::HashMap;
use std::sync::Arc;

use pacer_controller::Coordinator;
use pacer_controller::listener::{self, ListenerLimits, Sessions, Transport};
use parking_lot::RwLock;
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// The tests this operator runs now, by test id.
#[derive(Clone, Default)]
pub struct Routes {
    inner: Arc<RwLock<HashMap<String, Coordinator>>>,
}

impl Routes {
    pub fn insert(&self, test_id: &str, coordinator: &Coordinator) {
        self.inner
            .write()
            .insert(test_id.to_string(), coordinator.clone());
    }

    pub fn remove(&self, test_id: &str) {
        self.inner.write().remove(test_id);
    }

    pub fn get(&self, test_id: &str) -> Option<Coordinator> {
        self.inner.read().get(test_id).cloned()
    }

    /// Workers of every test routed now (the listener's connection limit grows with them).
    pub fn workers(&self) -> usize {
        self.inner
            .read()
            .values()
            .map(|c| c.config().weights.len())
            .sum()
    }

    pub fn len(&self) -> usize {
        self.inner.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The gate asks the routes for a Hello's test.
impl Sessions for Routes {
    fn coordinator(&self, test_id: &str) -> Result<Coordinator, Status> {
        if test_id.is_empty() {
            return Err(Status::invalid_argument(
                "hello.test_id: required: this controller runs several tests (start the worker with --test-id)",
            ));
        }
        // Unavailable: the worker retries (within its --connect-for), which covers a test
        // whose coordinator is not registered yet.
        self.get(test_id).ok_or_else(|| {
            Status::unavailable(format!(
                "hello.test_id: no test {:?} runs on this controller",
                pacer_proto::peer_text(test_id)
            ))
        })
    }

    fn workers(&self) -> usize {
        Routes::workers(self)
    }
}

/// Serve the routes on `listener` over `transport` with the default limits until `shutdown`.
pub fn serve(
    routes: Routes,
    listener: tokio::net::TcpListener,
    transport: Transport,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<Result<(), tonic::transport::Error>> {
    tokio::spawn(listener::serve_with(
        routes,
        listener,
        ListenerLimits::default(),
        transport,
        shutdown,
    ))
}

/// Serve the routes on `listener` in plaintext with `limits` until `shutdown` (tests use
/// short timeouts).
pub fn serve_with(
    routes: Routes,
    listener: tokio::net::TcpListener,
    limits: ListenerLimits,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<Result<(), tonic::transport::Error>> {
    tokio::spawn(listener::serve(routes, listener, limits, shutdown))
}
