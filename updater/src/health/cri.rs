//! The CRI `RuntimeService/Status` call, spoken as gRPC over HTTP/2 on the runtime's
//! unix socket. Only this one call is needed, so instead of generated stubs the two
//! messages are declared by hand (field numbers from Kubernetes' `api.proto`).

use std::path::Path;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};

#[derive(Clone, PartialEq, prost::Message)]
struct StatusResponse {
    #[prost(message, optional, tag = "1")]
    status: Option<RuntimeStatus>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RuntimeStatus {
    #[prost(message, repeated, tag = "1")]
    conditions: Vec<RuntimeCondition>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RuntimeCondition {
    #[prost(string, tag = "1")]
    r#type: String,
    #[prost(bool, tag = "2")]
    status: bool,
    #[prost(string, tag = "3")]
    reason: String,
    #[prost(string, tag = "4")]
    message: String,
}

/// containerd 1.6 serves both; newer runtimes only v1.
const SERVICES: [&str; 2] = [
    "runtime.v1.RuntimeService",
    "runtime.v1alpha2.RuntimeService",
];

pub fn runtime_ready(socket: &Path, timeout: Duration) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let mut last = String::new();
    for service in SERVICES {
        let call = tokio::time::timeout(timeout, status(socket, service));
        match rt.block_on(call) {
            Err(_) => return Err(format!("CRI Status on {} timed out", socket.display())),
            Ok(Ok(conditions)) => return judge(&conditions),
            Ok(Err(e)) => last = e,
        }
    }
    Err(last)
}

/// Ready means both RuntimeReady and NetworkReady are reported true.
fn judge(conditions: &[RuntimeCondition]) -> Result<(), String> {
    let mut problems = Vec::new();
    for wanted in ["RuntimeReady", "NetworkReady"] {
        match conditions.iter().find(|c| c.r#type == wanted) {
            Some(c) if c.status => {}
            Some(c) => problems.push(format!("{wanted}=false ({}: {})", c.reason, c.message)),
            None => problems.push(format!("{wanted} not reported")),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "container runtime not ready: {}",
            problems.join("; ")
        ))
    }
}

async fn status(socket: &Path, service: &str) -> Result<Vec<RuntimeCondition>, String> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| format!("connect {}: {e}", socket.display()))?;
    let (client, connection) = h2::client::handshake(stream)
        .await
        .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.map_err(|e| e.to_string())?;
    let request = http::Request::post(format!("http://localhost/{service}/Status"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .map_err(|e| e.to_string())?;
    let (response, mut send) = client
        .send_request(request, false)
        .map_err(|e| e.to_string())?;
    // StatusRequest{verbose: false} encodes to zero bytes: frame = uncompressed flag + length 0.
    send.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .map_err(|e| e.to_string())?;
    let response = response
        .await
        .map_err(|e| format!("{service}/Status: {e}"))?;
    grpc_ok(response.headers())?;
    let mut body = response.into_body();
    let mut data = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    if let Some(trailers) = body.trailers().await.map_err(|e| e.to_string())? {
        grpc_ok(&trailers)?;
    }
    if data.len() < 5 {
        return Err(format!("{service}/Status: empty response"));
    }
    let mut frame = data.freeze();
    let compressed = frame.get_u8();
    let len = frame.get_u32() as usize;
    if compressed != 0 || frame.len() < len {
        return Err(format!("{service}/Status: malformed gRPC frame"));
    }
    let msg = <StatusResponse as prost::Message>::decode(frame.slice(..len))
        .map_err(|e| e.to_string())?;
    Ok(msg.status.map(|s| s.conditions).unwrap_or_default())
}

fn grpc_ok(headers: &http::HeaderMap) -> Result<(), String> {
    match headers.get("grpc-status").and_then(|v| v.to_str().ok()) {
        None | Some("0") => Ok(()),
        Some(code) => {
            let msg = headers
                .get("grpc-message")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            Err(format!("gRPC status {code}: {msg}"))
        }
    }
}
