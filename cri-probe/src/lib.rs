//! One CRI `RuntimeService/Status` call over a container runtime's unix socket, with no
//! dependencies beyond std (`thiserror` only derives): gRPC here is a single unary call
//! over HTTP/2 cleartext, written out by hand (`h2.rs`, `hpack.rs`, `proto.rs`). Used by
//! the `cairn-cri-probe` binary in the image and by `cairnd`'s `cri` health check.
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

mod h2;
mod hpack;
mod huffman;
mod proto;

use std::io;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub use proto::Condition;

/// containerd's socket on the image.
pub const DEFAULT_SOCKET: &str = "/run/containerd/containerd.sock";

/// CRI v1 first; containerd 1.6 serves both, runtimes before it only v1alpha2.
pub const STATUS_METHODS: [&str; 2] = [
    "/runtime.v1.RuntimeService/Status",
    "/runtime.v1alpha2.RuntimeService/Status",
];

/// gRPC's UNIMPLEMENTED: the runtime does not serve that API version.
const UNIMPLEMENTED: u32 = 12;

/// Why a CRI call gave no answer. The socket is not part of the message: callers name it.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("cannot connect: {0}")]
    Connect(#[source] io::Error),
    #[error("{method}: no reply within {}s", timeout.as_secs_f32())]
    Timeout { method: String, timeout: Duration },
    #[error("{method}: {source}")]
    Io {
        method: String,
        #[source]
        source: io::Error,
    },
    #[error("{method}: HTTP/2: {message}")]
    Protocol { method: String, message: String },
    #[error("{method}: gRPC status {code} ({}): {message}", grpc_code_name(*code))]
    Grpc {
        method: String,
        code: u32,
        message: String,
    },
    #[error("{method}: malformed reply message: {message}")]
    Decode { method: String, message: String },
}

/// The runtime's conditions (RuntimeReady, NetworkReady, ...) as it reports them, asking
/// CRI v1 and, if the runtime does not implement it, v1alpha2. `timeout` bounds the whole
/// call: connecting, every write and every read.
pub fn status(socket: &Path, timeout: Duration) -> Result<Vec<Condition>, CriError> {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    for method in STATUS_METHODS {
        // An empty StatusRequest (verbose = false) is an empty protobuf message.
        match call_until(socket, method, &[], deadline, timeout) {
            Ok(reply) => {
                return proto::parse_status_response(&reply).map_err(|message| CriError::Decode {
                    method: method.into(),
                    message,
                })
            }
            Err(e @ CriError::Grpc { code, .. }) if code == UNIMPLEMENTED => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.expect("at least one method was tried"))
}

/// One gRPC unary call on a fresh connection to `socket`: `request` is the encoded
/// protobuf message, the result the encoded reply message.
pub fn unary_call(
    socket: &Path,
    method: &str,
    request: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, CriError> {
    call_until(socket, method, request, Instant::now() + timeout, timeout)
}

fn call_until(
    socket: &Path,
    method: &str,
    request: &[u8],
    deadline: Instant,
    timeout: Duration,
) -> Result<Vec<u8>, CriError> {
    let timed_out = || CriError::Timeout {
        method: method.into(),
        timeout,
    };
    let mut stream = match connect(socket, deadline) {
        Ok(stream) => stream,
        Err(None) => return Err(timed_out()),
        Err(Some(e)) => return Err(CriError::Connect(e)),
    };
    h2::unary_call(&mut stream, method, request, deadline).map_err(|e| match e {
        h2::CallError::Timeout => timed_out(),
        h2::CallError::Io(source) => CriError::Io {
            method: method.into(),
            source,
        },
        h2::CallError::Protocol(message) => CriError::Protocol {
            method: method.into(),
            message,
        },
        h2::CallError::Grpc { code, message } => CriError::Grpc {
            method: method.into(),
            code,
            message,
        },
    })
}

/// A unix-socket connect normally returns at once, but blocks while the listener's
/// backlog is full (a wedged runtime): std has no connect timeout for unix sockets, so
/// the connect runs on a helper thread (left to finish on its own if it never does).
/// `Err(None)` is a timeout.
fn connect(socket: &Path, deadline: Instant) -> Result<UnixStream, Option<io::Error>> {
    let (tx, rx) = mpsc::channel();
    let path = socket.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(UnixStream::connect(path));
    });
    let left = deadline.saturating_duration_since(Instant::now());
    match rx.recv_timeout(left) {
        Ok(result) => result.map_err(Some),
        Err(_) => Err(None),
    }
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
