//! Serving bundles from the blob directory, with HTTP Range support (devices read the
//! header first, then only the payloads they need). Only names the server itself gives
//! blobs (`<sha256>.cairn`) are served, so uploads still being verified never are.

use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::Response;
use http_body_util::BodyExt as _;
use tower_http::services::ServeFile;

use crate::app::Shared;
use crate::error::{ApiError, ApiResult};

pub fn is_blob_name(name: &str) -> bool {
    name.strip_suffix(".cairn").is_some_and(|hash| {
        hash.len() == 64 && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

pub async fn serve(
    State(s): State<Shared>,
    Path(name): Path<String>,
    request: Request,
) -> ApiResult<Response> {
    if !is_blob_name(&name) {
        return Err(ApiError::not_found(
            "unknown-blob",
            format!("no bundle {name}"),
        ));
    }
    let response = ServeFile::new(s.config.blobs.join(&name))
        .try_call(request)
        .await
        .map_err(|e| anyhow::anyhow!("serving {name}: {e}"))?;
    // Counted as each piece of the body is handed to the connection: what a device was
    // sent, not what the file or the Range asked for (a cut connection stops the count).
    let state = s.clone();
    Ok(response.map(|body| {
        Body::new(body.map_frame(move |frame| {
            if let Some(data) = frame.data_ref() {
                state
                    .metrics
                    .bundle_bytes_served
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
            }
            frame
        }))
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_content_addressed_names_are_blobs() {
        let hash = "ab".repeat(32);
        assert!(super::is_blob_name(&format!("{hash}.cairn")));
        assert!(!super::is_blob_name(".upload-0011223344556677"));
        assert!(!super::is_blob_name(&format!("../{hash}.cairn")));
        assert!(!super::is_blob_name(&format!("{}.cairn", "AB".repeat(32))));
    }
}
