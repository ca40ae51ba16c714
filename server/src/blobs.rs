//! Serving bundles from the blob directory, with HTTP Range support (devices read the
//! header first, then only the payloads they need). Only names the server itself gives
//! blobs (`<sha256>.cairn`) are served, so uploads still being verified never are.

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::Response;
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
    Ok(response.map(Body::new))
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
