//! The one CRI client: Kubernetes' Container Runtime Interface over a container runtime's
//! unix socket, through the generated `k8s-cri` types and tonic clients. Blocking: every
//! call runs on a small current-thread tokio runtime the [`Client`] owns, so synchronous
//! callers (`cairnd`'s health checks, the `cairn-cri-probe` binary, tests) need no async.
//!
//! Every answer is bounded: each call (connecting included) gives up after the client's
//! timeout, and no reply message may exceed [`MAX_REPLY_BYTES`].
//!
//! ```no_run
//! # use std::{path::Path, time::Duration};
//! let conditions = cairn_cri_probe::status(
//!     Path::new("/run/containerd/containerd.sock"),
//!     Duration::from_secs(10),
//! )?;
//! for c in &conditions {
//!     println!("{}={} {} {}", c.kind, c.status, c.reason, c.message);
//! }
//! # Ok::<(), cairn_cri_probe::CriError>(())
//! ```

mod client;
pub mod pod;

use std::io;
use std::path::Path;
use std::time::Duration;

pub use client::Client;
/// The CRI v1 messages (requests, replies, configs), as generated from Kubernetes' cri-api
/// `api.proto` by the `k8s-cri` crate.
pub use k8s_cri::v1;

/// containerd's socket on the image.
pub const DEFAULT_SOCKET: &str = "/run/containerd/containerd.sock";

/// The largest reply message a client accepts (tonic's default, said out loud): a node's
/// image, sandbox and container lists stay far below it.
pub const MAX_REPLY_BYTES: usize = 4 << 20;

/// One of the runtime's conditions (RuntimeReady, NetworkReady, ...), as `Status` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Condition {
    pub kind: String,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

/// Why a CRI call gave no answer. The socket is not part of the message: callers name it.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("cannot start the client's runtime: {0}")]
    Runtime(#[source] io::Error),
    #[error("cannot connect: {0}")]
    Connect(#[source] io::Error),
    #[error("{method}: no reply within {}s", timeout.as_secs_f32())]
    Timeout { method: String, timeout: Duration },
    /// The runtime answered with an error status, or the connection failed mid-call (tonic
    /// reports transport failures as a status too, with the cause in `message`).
    #[error("{method}: gRPC status {code} ({}): {message}", grpc_code_name(*code))]
    Grpc {
        method: String,
        code: u32,
        message: String,
    },
    #[error("{method}: malformed reply: {message}")]
    Decode { method: String, message: String },
}

impl CriError {
    /// gRPC's UNIMPLEMENTED: the runtime does not serve that method (or API version).
    pub fn is_unimplemented(&self) -> bool {
        matches!(self, CriError::Grpc { code: 12, .. })
    }

    /// gRPC's NOT_FOUND: no such sandbox, container or image.
    pub fn is_not_found(&self) -> bool {
        matches!(self, CriError::Grpc { code: 5, .. })
    }
}

/// The runtime's conditions as it reports them, asking CRI v1 and, if the runtime does not
/// implement it, v1alpha2. `timeout` bounds the whole call: connecting and each request.
pub fn status(socket: &Path, timeout: Duration) -> Result<Vec<Condition>, CriError> {
    Client::connect(socket, timeout)?.status()
}

fn grpc_code_name(code: u32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES.get(code as usize).copied().unwrap_or("unknown code")
}
