//! Request bodies: JSON parsed with an error that names what is wrong.

use axum::body::Bytes;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ApiResult};

/// Parses a JSON body with a message that names what is wrong.
pub fn parse_body<T: DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("bad-json", format!("request body: {e}")))
}
