//! `cairn-cri-probe [SOCKET]`: one CRI `RuntimeService/Status` call over the runtime's unix
//! socket; prints each condition (`RuntimeReady=true`, ...) and exits 0 only when
//! RuntimeReady is true. It ships in the image for operators and the QEMU tests, so it
//! has no dependencies: gRPC here is a single unary call over HTTP/2 cleartext, written
//! out by hand (see `h2.rs`, `proto.rs`).

mod h2;
mod proto;

use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

const DEFAULT_SOCKET: &str = "/run/containerd/containerd.sock";
/// CRI v1 first; containerd 1.6 also still serves v1alpha2.
const METHODS: &[&str] = &[
    "/runtime.v1.RuntimeService/Status",
    "/runtime.v1alpha2.RuntimeService/Status",
];

fn main() -> ExitCode {
    let socket = std::env::args()
        .nth(1)
        .unwrap_or_else(|| DEFAULT_SOCKET.into());
    let mut last_error = String::new();
    for method in METHODS {
        match status(&socket, method) {
            Ok(conditions) => {
                let mut ready = false;
                for c in &conditions {
                    println!("{}={} {} {}", c.kind, c.status, c.reason, c.message);
                    if c.kind == "RuntimeReady" && c.status {
                        ready = true;
                    }
                }
                return if ready {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                };
            }
            Err(e) => last_error = format!("{method}: {e}"),
        }
    }
    eprintln!("cairn-cri-probe: {socket}: {last_error}");
    ExitCode::from(2)
}

fn status(socket: &str, method: &str) -> Result<Vec<proto::Condition>, String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    // An empty StatusRequest (verbose = false) is an empty protobuf message.
    let reply = h2::unary_call(&mut stream, method, &[]).map_err(|e| e.to_string())?;
    proto::parse_status_response(&reply)
}
