//! The controller/worker protocol (`proto/pacer/v1/coordinator.proto`): generated prost
//! messages, the tonic client and server, and the limits both sides enforce.
//!
//! The message order and rules are documented in the `.proto` file and in
//! docs/distributed.md; this crate only adds names for the constants and small helpers that
//! keep both sides agreeing.

#![allow(clippy::all)] // generated code

/// Generated from `proto/pacer/v1/coordinator.proto`.
pub mod v1 {
    tonic::include_proto!("pacer.v1");
}

pub use v1::{
    Abort, Assign, ControllerMessage, Finished, Heartbeat, Hello, Ping, Pong, Ready, Report,
    Resume, Start, Stop, WorkerMessage, controller_message, worker_message,
};

/// The protocol version this build speaks (`Hello.protocol_version`, `Assign.protocol_version`).
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest gRPC message either side accepts (a snapshot of a large plan is a few hundred kB;
/// this leaves room without letting a peer make us buffer without bound).
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// Largest `Report.limits_json` accepted.
pub const MAX_LIMITS_BYTES: usize = 64 << 10;

/// Largest `Report.snapshot_json` accepted.
pub const MAX_SNAPSHOT_BYTES: usize = MAX_MESSAGE_BYTES - 4096 - MAX_LIMITS_BYTES;

/// Default period of heartbeats and reports.
pub const DEFAULT_INTERVAL_MS: u32 = 1000;

impl worker_message::Body {
    /// The message kind, for errors about order ("Ready before Assign").
    pub fn kind(&self) -> &'static str {
        match self {
            worker_message::Body::Hello(_) => "Hello",
            worker_message::Body::Ready(_) => "Ready",
            worker_message::Body::Report(_) => "Report",
            worker_message::Body::Finished(_) => "Finished",
            worker_message::Body::Heartbeat(_) => "Heartbeat",
            worker_message::Body::Ping(_) => "Ping",
        }
    }
}

impl controller_message::Body {
    /// The message kind, for errors about order.
    pub fn kind(&self) -> &'static str {
        match self {
            controller_message::Body::Assign(_) => "Assign",
            controller_message::Body::Start(_) => "Start",
            controller_message::Body::Stop(_) => "Stop",
            controller_message::Body::Abort(_) => "Abort",
            controller_message::Body::Heartbeat(_) => "Heartbeat",
            controller_message::Body::Pong(_) => "Pong",
        }
    }
}

impl From<worker_message::Body> for WorkerMessage {
    fn from(body: worker_message::Body) -> Self {
        WorkerMessage { body: Some(body) }
    }
}

impl From<controller_message::Body> for ControllerMessage {
    fn from(body: controller_message::Body) -> Self {
        ControllerMessage { body: Some(body) }
    }
}
